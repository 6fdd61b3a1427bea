/*
 * member: accounts, balances (charge, deduct, refund) and the gateway's
 * token check. Deducts on payment-pending, refunds on refund-balance.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS members ("
    " id bigserial PRIMARY KEY,"
    " name text NOT NULL,"
    " role text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),"
    " token text NOT NULL UNIQUE,"
    " balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),"
    " created_at timestamptz NOT NULL DEFAULT now());" SHOP_PAYMENT_OPS_SQL;

static int apply(shop_svc_t *svc, PGconn *conn, json_t *cmd, char *reason, size_t reason_size,
                 char *errstr, size_t errstr_size)
{
    (void)svc;
    long long member, amount;
    if (!shop_jint(cmd, "memberId", &member, errstr, errstr_size) ||
        !shop_jint(cmd, "amount", &amount, errstr, errstr_size))
        return -1;
    if (amount < 0) {
        snprintf(reason, reason_size, "negative amount %lld", amount);
        return 0;
    }
    char m[32], a[32], bal[32];
    snprintf(m, sizeof(m), "%lld", member);
    snprintf(a, sizeof(a), "%lld", amount);
    const char *p[2] = {m, a};
    bool err;
    if (shop_query_value(
            conn,
            "UPDATE members SET balance = balance - $2 WHERE id = $1 AND balance >= $2 "
            "RETURNING balance",
            2, p, bal, sizeof(bal), &err, errstr, errstr_size))
        return 1;
    if (err)
        return -1;
    if (shop_query_value(conn, "SELECT balance FROM members WHERE id = $1", 1, p, bal, sizeof(bal),
                         &err, errstr, errstr_size))
        snprintf(reason, reason_size, "insufficient balance: %s < %lld", bal, amount);
    else if (err)
        return -1;
    else
        snprintf(reason, reason_size, "no member %lld", member);
    return 0;
}

static int undo(shop_svc_t *svc, PGconn *conn, json_t *detail, char *errstr, size_t errstr_size)
{
    (void)svc;
    long long member, amount;
    if (!shop_jint(detail, "memberId", &member, errstr, errstr_size) ||
        !shop_jint(detail, "amount", &amount, errstr, errstr_size))
        return -1;
    char m[32], a[32];
    snprintf(m, sizeof(m), "%lld", member);
    snprintf(a, sizeof(a), "%lld", amount);
    const char *p[2] = {m, a};
    return outboxd_shop_command(conn, "UPDATE members SET balance = balance + $2 WHERE id = $1", 2,
                                p, errstr, errstr_size);
}

static int on_pending(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    return shop_participate(opaque, conn, ev, "member", apply, errstr, errstr_size);
}

static int on_refund(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                     size_t errstr_size)
{
    return shop_compensate(opaque, conn, ev, "member", undo, "balance-refunded", errstr,
                           errstr_size);
}

static const shop_consumer_def_t consumers[] = {
    {"pending", {"payment-pending"}, on_pending},
    {"refund", {"refund-balance"}, on_refund},
};

static int start(shop_svc_t *svc, char *errstr, size_t errstr_size)
{
    if (!svc->admin_token)
        return 0;
    PGconn *conn = outboxd_shop_pool_get(svc->pool, errstr, errstr_size);
    if (!conn)
        return -1;
    const char *p[1] = {svc->admin_token};
    PGresult *res = outboxd_shop_query(conn,
                                       "INSERT INTO members (name, role, token) VALUES ('admin', "
                                       "'admin', $1) ON CONFLICT (token) DO NOTHING",
                                       1, p, errstr, errstr_size);
    outboxd_shop_pool_put(svc->pool, conn);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    char buf[512], *seg[6];
    int n = outboxd_shop_path_split(req->path, buf, sizeof(buf), seg, 6);
    char e[256];
    bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;

    /* GET /auth/check[?role=admin]: nginx's auth_request. */
    if (get && n == 2 && strcmp(seg[0], "auth") == 0 && strcmp(seg[1], "check") == 0) {
        const char *auth = outboxd_shop_req_header(req, "Authorization");
        if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !auth[7])
            return outboxd_shop_error(status, 401, "missing bearer token");
        const char *p[1] = {auth + 7};
        json_t *rows =
            shop_http_rows(svc, "SELECT id, role FROM members WHERE token = $1", 1, p, status);
        if (!json_is_array(rows))
            return rows;
        if (json_array_size(rows) == 0) {
            json_decref(rows);
            return outboxd_shop_error(status, 401, "unknown token");
        }
        json_t *row = json_array_get(rows, 0);
        const char *role = json_string_value(json_object_get(row, "role"));
        char id[32];
        snprintf(id, sizeof(id), "%lld", (long long)json_integer_value(json_object_get(row, "id")));
        const char *want = outboxd_shop_req_query(req, "role");
        if (want && strcmp(want, role) != 0) {
            json_decref(rows);
            return outboxd_shop_error(status, 403, "role %s required", want);
        }
        outboxd_shop_resp_header(req, "X-Member-Id", id);
        outboxd_shop_resp_header(req, "X-Role", role);
        json_t *out = json_pack("{s:s,s:s}", "memberId", id, "role", role);
        json_decref(rows);
        *status = 200;
        return out;
    }
    if (n >= 1 && strcmp(seg[0], "members") == 0) {
        /* POST /members {name}: signs up a user and returns its token. */
        if (post && n == 1) {
            const char *name = shop_jstr(req->body, "name", e, sizeof(e));
            if (!name)
                return outboxd_shop_error(status, 400, "%s", e);
            long long initial = 0;
            if (json_object_get(req->body, "balance") &&
                !shop_jint(req->body, "balance", &initial, e, sizeof(e)))
                return outboxd_shop_error(status, 400, "%s", e);
            char b[32];
            snprintf(b, sizeof(b), "%lld", initial);
            const char *p[2] = {name, b};
            json_t *rows = shop_http_rows(
                svc,
                "INSERT INTO members (name, token, balance) VALUES ($1, "
                "replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), $2) "
                "RETURNING id, name, role, token, balance",
                2, p, status);
            if (!json_is_array(rows))
                return rows;
            json_t *o = json_incref(json_array_get(rows, 0));
            json_decref(rows);
            *status = 201;
            return o;
        }
        if (n >= 2) {
            char *end;
            long long id = strtoll(seg[1], &end, 10);
            if (*end)
                return outboxd_shop_error(status, 404, "no route %s", req->path);
            char sb[32];
            const char *scope = shop_scope(req, sb);
            if (scope && strtoll(scope, NULL, 10) != id)
                return outboxd_shop_error(status, 403, "member %lld is not the caller", id);
            char ids[32];
            snprintf(ids, sizeof(ids), "%lld", id);
            json_t *rows;
            if (get && n == 2) {
                const char *p[1] = {ids};
                rows = shop_http_rows(
                    svc, "SELECT id, name, role, balance FROM members WHERE id = $1", 1, p, status);
            } else if (post && n == 3 && strcmp(seg[2], "charge") == 0) {
                long long amount;
                if (!shop_jint(req->body, "amount", &amount, e, sizeof(e)))
                    return outboxd_shop_error(status, 400, "%s", e);
                if (amount <= 0)
                    return outboxd_shop_error(status, 400, "amount must be positive");
                char a[32];
                snprintf(a, sizeof(a), "%lld", amount);
                const char *p[2] = {ids, a};
                rows = shop_http_rows(svc,
                                      "UPDATE members SET balance = balance + $2 WHERE id = $1 "
                                      "RETURNING id, name, role, balance",
                                      2, p, status);
            } else {
                return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
            }
            if (!json_is_array(rows))
                return rows;
            if (json_array_size(rows) == 0) {
                json_decref(rows);
                return outboxd_shop_error(status, 404, "no member %lld", id);
            }
            json_t *o = json_incref(json_array_get(rows, 0));
            json_decref(rows);
            *status = 200;
            return o;
        }
        if (get && n == 1) {
            /* Every member and balance: the service's own port, or an
             * admin through the gateway. */
            char sb[32];
            if (shop_scope(req, sb))
                return outboxd_shop_error(status, 403, "only an admin lists the members");
            *status = 200;
            return shop_http_rows(svc, "SELECT id, name, role, balance FROM members ORDER BY id", 0,
                                  NULL, status);
        }
    }
    return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
}

const shop_service_def_t shop_member_def = {
    .name = "member",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
    .start = start,
};
