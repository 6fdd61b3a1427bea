/*
 * order: orders and their state machine
 *   CREATED -> PAYING (payment-pending accepted) -> COMPLETED (complete-order)
 *   PAYING -> CREATED (cancel-order: the payment's hold is released, the
 *   order can be paid again), CREATED -> CANCELED (by its member).
 * payment-failed is recorded on the order (last_failure).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS orders ("
    " id bigserial PRIMARY KEY,"
    " member_id bigint NOT NULL,"
    " product_id bigint NOT NULL,"
    " quantity int NOT NULL CHECK (quantity > 0),"
    " coupon_id bigint,"
    " amount bigint NOT NULL,"
    " discount bigint NOT NULL DEFAULT 0,"
    " status text NOT NULL DEFAULT 'CREATED'"
    "   CHECK (status IN ('CREATED', 'PAYING', 'COMPLETED', 'CANCELED')),"
    " payment_id text,"
    " last_failure text,"
    " updated_at timestamptz NOT NULL DEFAULT now());" SHOP_PAYMENT_OPS_SQL;

#define ORDER_COLS                                                                                 \
    "id, member_id AS \"memberId\", product_id AS \"productId\", quantity, coupon_id AS "          \
    "\"couponId\", amount, discount, status, payment_id AS \"paymentId\", last_failure AS "        \
    "\"lastFailure\""

static long long opt_int(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static int apply(shop_svc_t *svc, PGconn *conn, json_t *cmd, char *reason, size_t reason_size,
                 char *errstr, size_t errstr_size)
{
    (void)svc;
    long long order;
    const char *payment_id = shop_jstr(cmd, "paymentId", errstr, errstr_size);
    if (!payment_id || !shop_jint(cmd, "orderId", &order, errstr, errstr_size))
        return -1;
    char o[32];
    snprintf(o, sizeof(o), "%lld", order);
    const char *p[1] = {o};
    PGresult *res = outboxd_shop_query(conn,
                                       "SELECT status, member_id, product_id, quantity, "
                                       "coalesce(coupon_id, -1), amount, discount FROM orders "
                                       "WHERE id = $1 FOR UPDATE",
                                       1, p, errstr, errstr_size);
    if (!res)
        return -1;
    int ok = 0;
    /* Another member's order is "no order", as one that does not exist:
     * the reason is shown to the payer (GET /api/payments/{id}). */
    if (PQntuples(res) == 0 ||
        strtoll(PQgetvalue(res, 0, 1), NULL, 10) != opt_int(cmd, "memberId")) {
        snprintf(reason, reason_size, "no order %lld", order);
    } else if (strcmp(PQgetvalue(res, 0, 0), "CREATED") != 0) {
        snprintf(reason, reason_size, "order %lld is not payable (status %s)", order,
                 PQgetvalue(res, 0, 0));
    } else if (strtoll(PQgetvalue(res, 0, 2), NULL, 10) != opt_int(cmd, "productId") ||
               strtoll(PQgetvalue(res, 0, 3), NULL, 10) != opt_int(cmd, "quantity") ||
               strtoll(PQgetvalue(res, 0, 4), NULL, 10) != opt_int(cmd, "couponId") ||
               strtoll(PQgetvalue(res, 0, 5), NULL, 10) != opt_int(cmd, "amount")) {
        snprintf(reason, reason_size, "payment does not match order %lld", order);
    } else {
        ok = 1;
    }
    PQclear(res);
    if (!ok)
        return 0;
    const char *p2[2] = {o, payment_id};
    res = outboxd_shop_query(conn,
                             "UPDATE orders SET status = 'PAYING', payment_id = $2, updated_at = "
                             "now() WHERE id = $1",
                             2, p2, errstr, errstr_size);
    if (!res)
        return -1;
    PQclear(res);
    return 1;
}

static int undo(shop_svc_t *svc, PGconn *conn, json_t *detail, char *errstr, size_t errstr_size)
{
    (void)svc;
    long long order;
    const char *payment_id = shop_jstr(detail, "paymentId", errstr, errstr_size);
    if (!payment_id || !shop_jint(detail, "orderId", &order, errstr, errstr_size))
        return -1;
    char o[32];
    snprintf(o, sizeof(o), "%lld", order);
    const char *p[2] = {o, payment_id};
    return outboxd_shop_command(conn,
                                "UPDATE orders SET status = 'CREATED', payment_id = NULL, "
                                "updated_at = now() WHERE id = $1 AND payment_id = $2 AND "
                                "status = 'PAYING'",
                                2, p, errstr, errstr_size);
}

static int on_pending(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    return shop_participate(opaque, conn, ev, "order", apply, errstr, errstr_size);
}

static int on_cancel(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                     size_t errstr_size)
{
    return shop_compensate(opaque, conn, ev, "order", undo, "order-canceled", errstr, errstr_size);
}

/* complete-order and payment-failed: the saga's outcome. */
static int on_outcome(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    (void)opaque;
    long long order;
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    if (!payment_id || !shop_jint(ev->payload, "orderId", &order, errstr, errstr_size))
        return -1;
    char o[32];
    snprintf(o, sizeof(o), "%lld", order);
    PGresult *res;
    if (strcmp(ev->topic, "complete-order") == 0) {
        const char *p[2] = {o, payment_id};
        res = outboxd_shop_query(conn,
                                 "UPDATE orders SET status = 'COMPLETED', updated_at = now() "
                                 "WHERE id = $1 AND payment_id = $2 AND status = 'PAYING'",
                                 2, p, errstr, errstr_size);
    } else {
        /* Only the payer's own order notes it: a payment naming another
         * member's order failed here ("no order") and is not that order's. */
        const char *reason = json_string_value(json_object_get(ev->payload, "reason"));
        char m[32];
        long long member = opt_int(ev->payload, "memberId");
        snprintf(m, sizeof(m), "%lld", member);
        const char *p[4] = {o, payment_id, reason ? reason : "payment failed",
                            member >= 0 ? m : NULL};
        res = outboxd_shop_query(conn,
                                 "UPDATE orders SET last_failure = $2 || ': ' || $3 WHERE id = $1 "
                                 "AND ($4::bigint IS NULL OR member_id = $4)",
                                 4, p, errstr, errstr_size);
    }
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

static const shop_consumer_def_t consumers[] = {
    {"pending", {"payment-pending"}, on_pending},
    {"cancel", {"cancel-order"}, on_cancel},
    {"outcome", {"complete-order", "payment-failed"}, on_outcome},
};

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    char buf[512], *seg[6], e[256];
    int n = outboxd_shop_path_split(req->path, buf, sizeof(buf), seg, 6);
    bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
    if (n < 1 || strcmp(seg[0], "orders") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    /* A user reads and cancels only their own orders (shop_scope); another's
     * is "no such order", as one that does not exist. */
    char sb[32];
    const char *scope = shop_scope(req, sb);
    if (get && n == 1) {
        const char *p[1] = {scope};
        return shop_http_rows(svc,
                              "SELECT " ORDER_COLS " FROM orders WHERE ($1::bigint IS NULL OR "
                              "member_id = $1) ORDER BY id",
                              1, p, status);
    }
    /* POST /orders {productId, quantity, couponId?, amount, discount?} */
    if (post && n == 1) {
        long long member, product, qty, amount, coupon = -1, discount = 0;
        json_t *err;
        if (!shop_member_of(req, &member, &err, status))
            return err;
        if (!shop_jint(req->body, "productId", &product, e, sizeof(e)) ||
            !shop_jint(req->body, "quantity", &qty, e, sizeof(e)) ||
            !shop_jint(req->body, "amount", &amount, e, sizeof(e)))
            return outboxd_shop_error(status, 400, "%s", e);
        json_t *cj = json_object_get(req->body, "couponId");
        if (cj && !json_is_null(cj) && !shop_jint(req->body, "couponId", &coupon, e, sizeof(e)))
            return outboxd_shop_error(status, 400, "%s", e);
        if (json_object_get(req->body, "discount") &&
            !shop_jint(req->body, "discount", &discount, e, sizeof(e)))
            return outboxd_shop_error(status, 400, "%s", e);
        if (qty <= 0)
            return outboxd_shop_error(status, 400, "quantity must be positive");
        if (amount < 0 || discount < 0)
            return outboxd_shop_error(status, 400, "amount and discount must not be negative");
        if (coupon < 0 && discount != 0)
            return outboxd_shop_error(status, 400, "discount %lld without a couponId", discount);
        char m[32], pr[32], q[32], c[32], a[32], d[32];
        snprintf(m, sizeof(m), "%lld", member);
        snprintf(pr, sizeof(pr), "%lld", product);
        snprintf(q, sizeof(q), "%lld", qty);
        snprintf(c, sizeof(c), "%lld", coupon);
        snprintf(a, sizeof(a), "%lld", amount);
        snprintf(d, sizeof(d), "%lld", discount);
        const char *p[6] = {m, pr, q, coupon >= 0 ? c : NULL, a, d};
        return shop_http_first(
            shop_http_rows(svc,
                           "INSERT INTO orders (member_id, product_id, quantity, "
                           "coupon_id, amount, discount) VALUES ($1, $2, $3, $4, $5, $6) "
                           "RETURNING " ORDER_COLS,
                           6, p, status),
            status, 201, 500, "insert returned nothing");
    }
    if (n >= 2) {
        char *end;
        strtoll(seg[1], &end, 10);
        if (*end)
            return outboxd_shop_error(status, 404, "no order %s", seg[1]);
        const char *p[2] = {seg[1], scope};
        if (get && n == 2)
            return shop_http_first(shop_http_rows(svc,
                                                  "SELECT " ORDER_COLS " FROM orders WHERE id = $1 "
                                                  "AND ($2::bigint IS NULL OR member_id = $2)",
                                                  2, p, status),
                                   status, 200, 404, "no such order");
        /* POST /orders/{id}/cancel: only an order not being paid; another
         * status is a conflict (409), another member's order is none (404).
         * One statement, so that a compensation moving the order between a
         * look and an update cannot give a wrong answer. */
        if (post && n == 3 && strcmp(seg[2], "cancel") == 0) {
            json_t *rows = shop_http_rows(
                svc,
                "WITH cur AS (SELECT id, status FROM orders WHERE id = $1 AND ($2::bigint IS "
                "NULL OR member_id = $2) FOR UPDATE), upd AS (UPDATE orders o SET status = "
                "'CANCELED', updated_at = now() FROM cur WHERE o.id = cur.id AND cur.status = "
                "'CREATED' RETURNING o.id) SELECT cur.status AS was, upd.id IS NOT NULL AS "
                "canceled FROM cur LEFT JOIN upd ON true",
                2, p, status);
            if (!json_is_array(rows))
                return rows;
            json_t *row = json_array_get(rows, 0);
            json_t *out;
            if (!row)
                out = outboxd_shop_error(status, 404, "no such order");
            else if (!json_is_true(json_object_get(row, "canceled")))
                out = outboxd_shop_error(status, 409,
                                         "order %s is %s: only a CREATED order can be canceled",
                                         seg[1], json_string_value(json_object_get(row, "was")));
            else
                out = shop_http_first(
                    shop_http_rows(svc, "SELECT " ORDER_COLS " FROM orders WHERE id = $1", 1, p,
                                   status),
                    status, 200, 404, "no such order");
            json_decref(rows);
            return out;
        }
    }
    return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
}

const shop_service_def_t shop_order_def = {
    .name = "order",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
};
