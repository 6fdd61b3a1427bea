/*
 * What the shop's services share inside the outboxd-shop program: the
 * service descriptor main() runs, and the participant pattern of the SAGA.
 */
#ifndef OUTBOXD_SHOP_SHOP_H
#define OUTBOXD_SHOP_SHOP_H

#include <stdatomic.h>

#include "outboxd/shop/kit.h"

/* Process-wide settings and handles of one service. */
typedef struct shop_svc {
    outboxd_shop_conf_t conf;
    outboxd_shop_pool_t *pool; /* for HTTP handlers */
    const char *redis_host;
    int redis_port;
    int saga_timeout_ms;     /* payment: a saga without four results by then fails */
    const char *admin_token; /* member: the admin's token, created at start */
    int popular_days;        /* popular: default window */
    atomic_int stop;
    void *priv; /* the service's own state */
} shop_svc_t;

typedef struct shop_consumer_def {
    const char *name;
    const char *topics[6];
    outboxd_shop_handler_fn fn;
} shop_consumer_def_t;

typedef struct shop_service_def {
    const char *name;
    const char *schema_sql;
    const shop_consumer_def_t *consumers;
    size_t n_consumers;
    outboxd_shop_route_fn route;
    /* optional: extra work after the schema exists (threads, seeds) */
    int (*start)(shop_svc_t *svc, char *errstr, size_t errstr_size);
    void (*stop)(shop_svc_t *svc);
    /* optional: members added to GET /stats beside "consumers" (a new
     * reference; an {"error": ...} member when its query failed) */
    json_t *(*stats)(shop_svc_t *svc);
} shop_service_def_t;

extern const shop_service_def_t shop_member_def, shop_product_def, shop_coupon_def, shop_order_def,
    shop_payment_def, shop_popular_def, shop_notification_def, shop_platform_def;

/* Reads an integer member; false (errstr filled) when missing or not an integer. */
bool shop_jint(json_t *o, const char *key, long long *out, char *errstr, size_t errstr_size);
/* Reads a string member; NULL (errstr filled) when missing. */
const char *shop_jstr(json_t *o, const char *key, char *errstr, size_t errstr_size);

/* The participant side of the SAGA.
 *
 * apply runs the local step of a payment-pending command and returns 1 on
 * success, 0 on a business failure (reason filled), -1 on an error (errstr;
 * retried). undo reverses a successful step from the detail stored at apply
 * time. payment_ops (one row per payment) makes both idempotent and lets a
 * compensation arrive before, after or instead of the command. */
typedef int (*shop_apply_fn)(shop_svc_t *svc, PGconn *conn, json_t *cmd, char *reason,
                             size_t reason_size, char *errstr, size_t errstr_size);
typedef int (*shop_undo_fn)(shop_svc_t *svc, PGconn *conn, json_t *detail, char *errstr,
                            size_t errstr_size);

#define SHOP_PAYMENT_OPS_SQL                                                                       \
    "CREATE TABLE IF NOT EXISTS payment_ops ("                                                     \
    " payment_id text PRIMARY KEY,"                                                                \
    " state text NOT NULL CHECK (state IN ('APPLIED', 'FAILED', 'COMPENSATED')),"                  \
    " reason text,"                                                                                \
    " detail jsonb,"                                                                               \
    " updated_at timestamptz NOT NULL DEFAULT clock_timestamp());"

/* Handles payment-pending for participant `service`: apply, record, and
 * write payment-result. */
int shop_participate(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                     const char *service, shop_apply_fn apply, char *errstr, size_t errstr_size);
/* Handles a compensation command: undo when applied, and write done_topic. */
int shop_compensate(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                    const char *service, shop_undo_fn undo, const char *done_topic, char *errstr,
                    size_t errstr_size);

/* One-row helpers: runs the query and returns the first column of the first
 * row copied into out (false when no row; *err set on error). */
bool shop_query_value(PGconn *conn, const char *sql, int n, const char *const *params, char *out,
                      size_t out_size, bool *err, char *errstr, size_t errstr_size);

/* Runs a query for an HTTP handler on a pooled connection and returns its
 * rows as JSON (NULL with *status/err body set on failure). */
json_t *shop_http_rows(shop_svc_t *svc, const char *sql, int n, const char *const *params,
                       int *status);

/* The one row a handler returns: shop_http_rows' first row with *status =
 * ok_status; when there is none, an error body with empty_status and
 * empty_msg; an error body of shop_http_rows as it is. Takes rows. */
json_t *shop_http_first(json_t *rows, int *status, int ok_status, int empty_status,
                        const char *empty_msg);

/* The member id the gateway put in X-Member-Id, else body.memberId; fails
 * when both are present and differ. Returns false with *err_body set. */
bool shop_member_of(outboxd_shop_req_t *req, long long *member_id, json_t **err_body, int *status);

/* Whose rows a request may see: through the gateway (X-Member-Id set) a
 * user sees only their own, returned as text in buf (32 bytes) for a
 * "($N::bigint IS NULL OR member_id = $N)" parameter; NULL for an admin
 * (X-Role admin) and for a request to the service's own port, which only
 * the host reaches (tests, operators). */
const char *shop_scope(outboxd_shop_req_t *req, char *buf);

#endif
