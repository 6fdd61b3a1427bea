/*
 * Connection failures told in the operator's terms: the raw messages of
 * libpq and librdkafka about TLS and authentication turned into one cause and
 * the configuration key that fixes it. Used by check, run and status.
 */
#ifndef OUTBOXD_CONNHINT_H
#define OUTBOXD_CONNHINT_H

#include <stddef.h>

/*
 * For a libpq connection error message: a hint naming the dsn key or file to
 * fix ("check sslrootcert in the dsn ..."), or NULL when the message is not
 * about TLS or authentication. Static string.
 */
const char *outboxd_connhint_pg(const char *libpq_msg);

/*
 * For a librdkafka error reason (error_cb, or a failed request): writes
 * "<cause>; check <keys>" to out and returns 1 when the reason is a TLS,
 * SASL or security.protocol problem; returns 0 (out untouched) otherwise.
 * The broker's own wording is dropped: it repeats per broker and per retry.
 */
int outboxd_connhint_kafka(const char *reason, char *out, size_t out_size);

#endif
