/*
 * Connection failure hints: libpq's and librdkafka's own messages (as
 * libpq 15 and librdkafka 2.0 print them) map to the cause and the key to
 * fix; anything else is left alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "outboxd/relay/connhint.h"

static void pg_hints(void **state)
{
    (void)state;
    const char *h = outboxd_connhint_pg("connection to server at \"127.0.0.1\", port 5432 failed: "
                                        "SSL error: certificate verify failed");
    assert_non_null(h);
    assert_non_null(strstr(h, "check sslrootcert in the dsn"));
    h = outboxd_connhint_pg("server certificate for \"db.example\" does not match host name "
                            "\"127.0.0.1\"");
    assert_non_null(strstr(h, "check host in the dsn"));
    h = outboxd_connhint_pg("FATAL:  password authentication failed for user \"outboxd\"");
    assert_non_null(strstr(h, "check password_file"));
    h = outboxd_connhint_pg("FATAL:  pg_hba.conf rejects connection for host \"127.0.0.1\", "
                            "user \"u\", database \"d\", no encryption");
    assert_non_null(strstr(h, "only over TLS; set sslmode=verify-full"));
    /* sslmode=prefer: TLS was tried and refused too, so TLS is not the fix. */
    h = outboxd_connhint_pg("FATAL:  no pg_hba.conf entry for host \"10.0.0.5\", user \"u\", "
                            "database \"d\", SSL encryption\nFATAL:  no pg_hba.conf entry for "
                            "host \"10.0.0.5\", user \"u\", database \"d\", no encryption");
    assert_non_null(strstr(h, "over TLS or without; add one"));
    assert_null(strstr(h, "sslmode"));
    /* sslmode=prefer, hostnossl only, wrong password: the password is the cause. */
    h = outboxd_connhint_pg("FATAL:  no pg_hba.conf entry for host \"10.0.0.5\", user \"u\", "
                            "database \"d\", SSL encryption\nFATAL:  password authentication "
                            "failed for user \"u\"");
    assert_non_null(strstr(h, "check password_file"));
    h = outboxd_connhint_pg("FATAL:  no pg_hba.conf entry for host \"10.0.0.5\", user \"u\", "
                            "database \"d\", no encryption");
    assert_non_null(strstr(h, "without TLS; add one"));
    h = outboxd_connhint_pg("server does not support SSL, but SSL was required");
    assert_non_null(strstr(h, "ssl = off"));
    assert_null(outboxd_connhint_pg("connection to server at \"127.0.0.1\", port 1 failed: "
                                    "Connection refused"));
    assert_null(outboxd_connhint_pg(NULL));
}

static void kafka_hints(void **state)
{
    (void)state;
    char out[512] = "untouched";
    assert_int_equal(
        outboxd_connhint_kafka(
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL "
            "routines::certificate verify failed: broker certificate could not be verified, "
            "verify that ssl.ca.location is correctly configured or root CA certificates are "
            "installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)",
            out, sizeof(out)),
        1);
    assert_string_equal(out, "TLS handshake failed: certificate verify failed; check "
                             "ssl.ca.location (the PEM file of the CA that signed the broker's "
                             "certificate), and that the certificate names the host in "
                             "kafka.bootstrap_servers (subjectAltName)");
    assert_int_equal(
        outboxd_connhint_kafka("sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: "
                               "Authentication failed during authentication due to invalid "
                               "credentials with SASL mechanism SCRAM-SHA-512 (after 12ms in state "
                               "AUTH_REQ)",
                               out, sizeof(out)),
        1);
    assert_non_null(
        strstr(out, "SASL authentication failed; check sasl.username and sasl.password"));
    assert_int_equal(outboxd_connhint_kafka(
                         "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: "
                         "might be caused by incorrect security.protocol configuration "
                         "(connecting to a SSL listener?) or broker version is < 0.10",
                         out, sizeof(out)),
                     1);
    assert_non_null(strstr(out, "check security.protocol"));
    assert_int_equal(outboxd_connhint_kafka("sasl_ssl://h:1/bootstrap: SASL SCRAM-SHA-256 "
                                            "mechanism handshake failed: Broker: Unsupported "
                                            "SASL mechanism: broker's supported mechanisms: "
                                            "SCRAM-SHA-512",
                                            out, sizeof(out)),
                     1);
    assert_non_null(strstr(out, "check sasl.mechanisms"));
    strcpy(out, "untouched");
    assert_int_equal(outboxd_connhint_kafka("127.0.0.1:9092/bootstrap: Connect to "
                                            "ipv4#127.0.0.1:9092 failed: Connection refused",
                                            out, sizeof(out)),
                     0);
    assert_string_equal(out, "untouched");
    assert_int_equal(outboxd_connhint_kafka("1/1 brokers are down", out, sizeof(out)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pg_hints),
        cmocka_unit_test(kafka_hints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
