/*
 * Connection failure hints for PostgreSQL (libpq) and Kafka (librdkafka).
 * Matched on the libraries' message text: neither exposes TLS or SASL
 * failures as distinct codes (libpq has none; librdkafka's _SSL and
 * _AUTHENTICATION do not say which part failed).
 */
#include "outboxd/relay/connhint.h"

#include <stdio.h>
#include <string.h>

const char *outboxd_connhint_pg(const char *m)
{
    if (!m)
        return NULL;
    if (strstr(m, "certificate verify failed"))
        return "the server's certificate is not signed by the CA in sslrootcert; check "
               "sslrootcert in the dsn (the PEM file of the CA that signed the server's "
               "certificate)";
    if (strstr(m, "does not match host name"))
        return "with sslmode=verify-full the dsn's host must be a name or address in the "
               "server's certificate (subjectAltName); check host in the dsn or the certificate";
    if (strstr(m, "root certificate file"))
        return "check sslrootcert in the dsn: it must name a readable PEM file of the CA "
               "that signed the server's certificate";
    if (strstr(m, "server does not support SSL"))
        return "the server does not offer TLS (ssl = off); enable TLS on the server, or "
               "check sslmode in the dsn";
    /* libpq with sslmode=prefer tries TLS, then without, and reports both
     * attempts: a password refused in one of them is the answer then. */
    if (strstr(m, "password authentication failed") || strstr(m, "SCRAM authentication") ||
        strstr(m, "no password supplied"))
        return "check password_file (the role's password) and user in the dsn";
    /* Both refusals by pg_hba: TLS is not the answer. */
    if (strstr(m, "pg_hba.conf") && strstr(m, "SSL encryption") && strstr(m, "no encryption"))
        return "no pg_hba.conf line lets this user in from this host, over TLS or without; add "
               "one (host or hostssl, this database and user, this address) and reload "
               "PostgreSQL";
    if (strstr(m, "pg_hba.conf rejects") && strstr(m, "no encryption"))
        return "the server accepts this user only over TLS; set sslmode=verify-full and "
               "sslrootcert in the dsn";
    if (strstr(m, "pg_hba.conf") && strstr(m, "no encryption"))
        return "no pg_hba.conf line lets this user in from this host without TLS; add one (host, "
               "this database and user, this address) and reload PostgreSQL, or if the server "
               "takes it only over TLS (hostssl) set sslmode=verify-full and sslrootcert in the "
               "dsn";
    return NULL;
}

int outboxd_connhint_kafka(const char *r, char *out, size_t out_size)
{
    if (!r)
        return 0;
    const char *cause = NULL, *fix = NULL;
    if (strstr(r, "certificate verify failed")) {
        /* librdkafka says the same when the CA is wrong and when the
         * certificate does not name the host connected to. */
        cause = "TLS handshake failed: certificate verify failed";
        fix = "check ssl.ca.location (the PEM file of the CA that signed the broker's "
              "certificate), and that the certificate names the host in "
              "kafka.bootstrap_servers (subjectAltName)";
    } else if (strstr(r, "SSL handshake failed") || strstr(r, "SSL transport error")) {
        cause = "TLS handshake failed";
        fix = "check security.protocol (SSL or SASL_SSL for a TLS listener, PLAINTEXT or "
              "SASL_PLAINTEXT otherwise) and the ssl.* properties";
    } else if (strstr(r, "not supported by broker") || strstr(r, "Unsupported SASL mechanism")) {
        cause = "the broker does not enable this SASL mechanism";
        fix = "check sasl.mechanisms (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, ...) against the "
              "listener's sasl.enabled.mechanisms";
    } else if (strstr(r, "SASL authentication error") || strstr(r, "Authentication failed")) {
        cause = "SASL authentication failed";
        fix = "check sasl.username and sasl.password (kafka.secret_properties_file) and "
              "sasl.mechanisms";
    } else if (strstr(r, "incorrect security.protocol") ||
               strstr(r, "Disconnected while requesting ApiVersion") ||
               strstr(r, "Disconnected during SASL") || strstr(r, "SASL handshake")) {
        cause = "the broker closed the connection during the handshake";
        fix = "check security.protocol: it must match the listener (SSL, SASL_SSL, "
              "SASL_PLAINTEXT or PLAINTEXT) and sasl.mechanisms the ones it enables";
    }
    if (!cause)
        return 0;
    snprintf(out, out_size, "%s; %s", cause, fix);
    return 1;
}
