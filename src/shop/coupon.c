/*
 * coupon: coupons with a limited quantity issued first come first served,
 * used on payment-pending, rolled back on rollback-coupon.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS coupons ("
    " id bigserial PRIMARY KEY,"
    " name text NOT NULL,"
    " discount bigint NOT NULL CHECK (discount >= 0),"
    " total int NOT NULL CHECK (total >= 0),"
    " issued int NOT NULL DEFAULT 0,"
    " CHECK (issued <= total));"
    "CREATE TABLE IF NOT EXISTS member_coupons ("
    " coupon_id bigint NOT NULL REFERENCES coupons (id),"
    " member_id bigint NOT NULL,"
    " status text NOT NULL DEFAULT 'ISSUED' CHECK (status IN ('ISSUED', 'USED')),"
    " issued_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (coupon_id, member_id));" SHOP_PAYMENT_OPS_SQL;

static bool has_coupon(json_t *cmd)
{
    json_t *c = json_object_get(cmd, "couponId");
    return c && !json_is_null(c);
}

static int apply(shop_svc_t *svc, PGconn *conn, json_t *cmd, char *reason, size_t reason_size,
                 char *errstr, size_t errstr_size)
{
    (void)svc;
    long long member, coupon, discount = 0;
    if (!shop_jint(cmd, "memberId", &member, errstr, errstr_size))
        return -1;
    if (json_object_get(cmd, "discount") && !json_is_null(json_object_get(cmd, "discount")) &&
        !shop_jint(cmd, "discount", &discount, errstr, errstr_size))
        return -1;
    /* The discount is vouched for here alone (product only checks that
     * amount + discount is the price): none without a coupon. */
    if (!has_coupon(cmd)) {
        if (discount == 0)
            return 1; /* nothing to use: a success that undo leaves alone */
        snprintf(reason, reason_size, "discount %lld without a coupon", discount);
        return 0;
    }
    if (!shop_jint(cmd, "couponId", &coupon, errstr, errstr_size))
        return -1;
    char c[32], m[32];
    snprintf(c, sizeof(c), "%lld", coupon);
    snprintf(m, sizeof(m), "%lld", member);
    const char *p[2] = {c, m};
    PGresult *res = outboxd_shop_query(conn,
                                       "SELECT mc.status, c.discount FROM member_coupons mc JOIN "
                                       "coupons c ON c.id = mc.coupon_id WHERE mc.coupon_id = $1 "
                                       "AND mc.member_id = $2 FOR UPDATE OF mc",
                                       2, p, errstr, errstr_size);
    if (!res)
        return -1;
    int ok = 0;
    if (PQntuples(res) == 0) {
        snprintf(reason, reason_size, "coupon %lld was not issued to member %lld", coupon, member);
    } else if (strcmp(PQgetvalue(res, 0, 0), "USED") == 0) {
        snprintf(reason, reason_size, "coupon %lld already used by member %lld", coupon, member);
    } else if (strtoll(PQgetvalue(res, 0, 1), NULL, 10) != discount) {
        snprintf(reason, reason_size, "discount %lld does not match coupon %lld's %s", discount,
                 coupon, PQgetvalue(res, 0, 1));
    } else {
        ok = 1;
    }
    PQclear(res);
    if (!ok)
        return 0;
    res = outboxd_shop_query(conn,
                             "UPDATE member_coupons SET status = 'USED' WHERE coupon_id = $1 AND "
                             "member_id = $2",
                             2, p, errstr, errstr_size);
    if (!res)
        return -1;
    PQclear(res);
    return 1;
}

static int undo(shop_svc_t *svc, PGconn *conn, json_t *detail, char *errstr, size_t errstr_size)
{
    (void)svc;
    if (!has_coupon(detail))
        return 0;
    long long member, coupon;
    if (!shop_jint(detail, "memberId", &member, errstr, errstr_size) ||
        !shop_jint(detail, "couponId", &coupon, errstr, errstr_size))
        return -1;
    char c[32], m[32];
    snprintf(c, sizeof(c), "%lld", coupon);
    snprintf(m, sizeof(m), "%lld", member);
    const char *p[2] = {c, m};
    return outboxd_shop_command(conn,
                                "UPDATE member_coupons SET status = 'ISSUED' WHERE "
                                "coupon_id = $1 AND member_id = $2",
                                2, p, errstr, errstr_size);
}

static int on_pending(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    return shop_participate(opaque, conn, ev, "coupon", apply, errstr, errstr_size);
}

static int on_rollback(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                       size_t errstr_size)
{
    return shop_compensate(opaque, conn, ev, "coupon", undo, "coupon-rolledback", errstr,
                           errstr_size);
}

static const shop_consumer_def_t consumers[] = {
    {"pending", {"payment-pending"}, on_pending},
    {"rollback", {"rollback-coupon"}, on_rollback},
};

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    char buf[512], *seg[6], e[256];
    int n = outboxd_shop_path_split(req->path, buf, sizeof(buf), seg, 6);
    bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
    if (n < 1 || strcmp(seg[0], "coupons") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    if (get && n == 1)
        return shop_http_rows(svc,
                              "SELECT id, name, discount, total, issued FROM coupons ORDER BY id",
                              0, NULL, status);
    if (post && n == 1) {
        /* Coupons are made by an admin (/api/admin/coupons) or on the
         * service's own port; the gateway's /api/coupons/ route is for
         * users (issue, list), who must not mint discounts. */
        char sb[32];
        if (shop_scope(req, sb))
            return outboxd_shop_error(status, 403, "only an admin creates coupons");
        long long discount, total;
        const char *name = shop_jstr(req->body, "name", e, sizeof(e));
        if (!name || !shop_jint(req->body, "discount", &discount, e, sizeof(e)) ||
            !shop_jint(req->body, "total", &total, e, sizeof(e)))
            return outboxd_shop_error(status, 400, "%s", e);
        char d[32], t[32];
        snprintf(d, sizeof(d), "%lld", discount);
        snprintf(t, sizeof(t), "%lld", total);
        const char *p[3] = {name, d, t};
        return shop_http_first(
            shop_http_rows(svc,
                           "INSERT INTO coupons (name, discount, total) VALUES ($1, $2, "
                           "$3) RETURNING id, name, discount, total, issued",
                           3, p, status),
            status, 201, 500, "insert returned nothing");
    }
    if (n < 2)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    char *end;
    strtoll(seg[1], &end, 10);
    if (*end)
        return outboxd_shop_error(status, 404, "no coupon %s", seg[1]);
    if (get && n == 2) {
        const char *p[1] = {seg[1]};
        json_t *c =
            shop_http_first(shop_http_rows(svc,
                                           "SELECT id, name, discount, total, issued FROM coupons "
                                           "WHERE id = $1",
                                           1, p, status),
                            status, 200, 404, "no such coupon");
        if (*status != 200)
            return c;
        json_t *holders = shop_http_rows(svc,
                                         "SELECT member_id AS \"memberId\", status FROM "
                                         "member_coupons WHERE coupon_id = $1 ORDER BY member_id",
                                         1, p, status);
        *status = 200;
        json_object_set_new(c, "members", holders);
        return c;
    }
    /* POST /coupons/{id}/issue: first come first served. The conditional
     * UPDATE is the limit: issued never passes total, whatever the races. */
    if (post && n == 3 && strcmp(seg[2], "issue") == 0) {
        long long member;
        json_t *err;
        if (!shop_member_of(req, &member, &err, status))
            return err;
        char m[32];
        snprintf(m, sizeof(m), "%lld", member);
        PGconn *conn = outboxd_shop_pool_get(svc->pool, e, sizeof(e));
        if (!conn)
            return outboxd_shop_error(status, 503, "%s", e);
        const char *p[2] = {seg[1], m};
        json_t *out = NULL;
        bool dberr;
        char issued[32];
        if (outboxd_shop_exec(conn, "BEGIN", e, sizeof(e)) < 0) {
            out = outboxd_shop_error(status, 503, "%s", e);
        } else if (shop_query_value(conn,
                                    "SELECT 1 FROM member_coupons WHERE coupon_id = $1 AND "
                                    "member_id = $2",
                                    2, p, NULL, 0, &dberr, e, sizeof(e))) {
            out =
                outboxd_shop_error(status, 409, "coupon %s already issued to member %s", seg[1], m);
        } else if (dberr) {
            out = outboxd_shop_error(status, 500, "%s", e);
        } else if (!shop_query_value(conn,
                                     "UPDATE coupons SET issued = issued + 1 WHERE id = $1 AND "
                                     "issued < total RETURNING issued",
                                     1, p, issued, sizeof(issued), &dberr, e, sizeof(e))) {
            out = dberr
                      ? outboxd_shop_error(status, 500, "%s", e)
                      : outboxd_shop_error(status, 409, "coupon %s is sold out or unknown", seg[1]);
        } else {
            PGresult *res = outboxd_shop_query(conn,
                                               "INSERT INTO member_coupons (coupon_id, member_id) "
                                               "VALUES ($1, $2)",
                                               2, p, e, sizeof(e));
            if (!res) {
                /* two requests of one member raced: the PK refuses the second */
                out = outboxd_shop_error(status, 409, "%s", e);
            } else {
                PQclear(res);
                if (outboxd_shop_exec(conn, "COMMIT", e, sizeof(e)) < 0) {
                    out = outboxd_shop_error(status, 409, "%s", e);
                } else {
                    *status = 201;
                    out = json_pack("{s:I,s:I,s:s,s:i}", "couponId",
                                    (json_int_t)strtoll(seg[1], NULL, 10), "memberId",
                                    (json_int_t)member, "status", "ISSUED", "issued", atoi(issued));
                }
            }
        }
        if (PQtransactionStatus(conn) != PQTRANS_IDLE)
            outboxd_shop_exec(conn, "ROLLBACK", e, sizeof(e));
        outboxd_shop_pool_put(svc->pool, conn);
        return out;
    }
    return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
}

const shop_service_def_t shop_coupon_def = {
    .name = "coupon",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
};
