/*
 * Shared by the services: JSON field access, the participant side of the
 * SAGA (payment_ops), small query helpers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outboxd/common/log.h"
#include "outboxd/common/util.h"
#include "shop.h"

bool shop_jint(json_t *o, const char *key, long long *out, char *errstr, size_t errstr_size)
{
    json_t *v = json_is_object(o) ? json_object_get(o, key) : NULL;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_string(v)) {
        char *end;
        long long n = strtoll(json_string_value(v), &end, 10);
        if (*json_string_value(v) && !*end) {
            *out = n;
            return true;
        }
    }
    snprintf(errstr, errstr_size, "field \"%s\" %s", key, v ? "is not an integer" : "is missing");
    return false;
}

const char *shop_jstr(json_t *o, const char *key, char *errstr, size_t errstr_size)
{
    const char *s = json_is_object(o) ? json_string_value(json_object_get(o, key)) : NULL;
    if (!s)
        snprintf(errstr, errstr_size, "field \"%s\" is missing or not a string", key);
    return s;
}

bool shop_query_value(PGconn *conn, const char *sql, int n, const char *const *params, char *out,
                      size_t out_size, bool *err, char *errstr, size_t errstr_size)
{
    *err = false;
    PGresult *res = outboxd_shop_query(conn, sql, n, params, errstr, errstr_size);
    if (!res) {
        *err = true;
        return false;
    }
    bool found = PQntuples(res) > 0;
    if (found && out)
        snprintf(out, out_size, "%s", PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return found;
}

static int write_result(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                        const char *payment_id, json_t *cmd, const char *service, bool ok,
                        const char *reason, char *errstr, size_t errstr_size)
{
    json_t *p = json_object();
    json_object_set_new(p, "paymentId", json_string(payment_id));
    json_t *oid = json_object_get(cmd, "orderId");
    if (oid)
        json_object_set(p, "orderId", oid);
    json_object_set_new(p, "service", json_string(service));
    json_object_set_new(p, "success", json_boolean(ok));
    /* when the participant did its step, for the saga's trace */
    char at[64];
    int64_t us = outboxd_wall_us();
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(at, sizeof(at), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(us % 1000000 / 1000));
    json_object_set_new(p, "at", json_string(at));
    if (!ok)
        json_object_set_new(p, "reason", json_string(reason));
    int rc = outboxd_shop_outbox_write(conn, &svc->conf, "payment-result", payment_id,
                                       "PaymentResult", p, ev->trace_id, errstr, errstr_size);
    json_decref(p);
    return rc;
}

int shop_participate(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                     const char *service, shop_apply_fn apply, char *errstr, size_t errstr_size)
{
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    if (!payment_id)
        return -1;
    char state[32], reason[512] = "";
    bool err;
    const char *p1[1] = {payment_id};
    bool found =
        shop_query_value(conn, "SELECT state FROM payment_ops WHERE payment_id = $1 FOR UPDATE", 1,
                         p1, state, sizeof(state), &err, errstr, errstr_size);
    if (err)
        return -1;
    bool ok;
    if (found) {
        /* Seen before under another event id: answer as before, change nothing. A
         * compensation that came first leaves COMPENSATED: the step is refused. */
        ok = strcmp(state, "APPLIED") == 0;
        snprintf(reason, sizeof(reason), "%s",
                 strcmp(state, "COMPENSATED") == 0 ? "payment already compensated"
                                                   : "payment already handled");
    } else {
        int rc = apply(svc, conn, ev->payload, reason, sizeof(reason), errstr, errstr_size);
        if (rc < 0)
            return -1;
        ok = rc == 1;
        char *detail = json_dumps(ev->payload, JSON_COMPACT);
        const char *p[4] = {payment_id, ok ? "APPLIED" : "FAILED", ok ? NULL : reason, detail};
        PGresult *res = outboxd_shop_query(
            conn,
            "INSERT INTO payment_ops (payment_id, state, reason, detail) VALUES ($1, $2, $3, $4)",
            4, p, errstr, errstr_size);
        free(detail);
        if (!res)
            return -1;
        PQclear(res);
    }
    LOG_INFO(svc->conf.service, "payment %s: %s%s%s", payment_id, ok ? "success" : "failure",
             ok ? "" : ": ", ok ? "" : reason);
    return write_result(svc, conn, ev, payment_id, ev->payload, service, ok, reason, errstr,
                        errstr_size);
}

int shop_compensate(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                    const char *service, shop_undo_fn undo, const char *done_topic, char *errstr,
                    size_t errstr_size)
{
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    if (!payment_id)
        return -1;
    const char *p1[1] = {payment_id};
    PGresult *res = outboxd_shop_query(
        conn, "SELECT state, detail FROM payment_ops WHERE payment_id = $1 FOR UPDATE", 1, p1,
        errstr, errstr_size);
    if (!res)
        return -1;
    bool undone = false;
    const char *outcome;
    if (PQntuples(res) == 0) {
        PQclear(res);
        /* Before (or instead of) the command: a tombstone refuses it later. */
        res = outboxd_shop_query(conn,
                                 "INSERT INTO payment_ops (payment_id, state, reason) VALUES ($1, "
                                 "'COMPENSATED', 'compensated before the command arrived')",
                                 1, p1, errstr, errstr_size);
        if (!res)
            return -1;
        outcome = "nothing to undo (command not seen yet)";
    } else if (strcmp(PQgetvalue(res, 0, 0), "APPLIED") == 0) {
        json_t *detail = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
        PQclear(res);
        res = NULL;
        int rc = detail ? undo(svc, conn, detail, errstr, errstr_size) : -1;
        if (!detail)
            snprintf(errstr, errstr_size, "payment_ops.detail of %s is not JSON", payment_id);
        json_decref(detail);
        if (rc < 0)
            return -1;
        res = outboxd_shop_query(conn,
                                 "UPDATE payment_ops SET state = 'COMPENSATED', updated_at = "
                                 "clock_timestamp() WHERE payment_id = $1",
                                 1, p1, errstr, errstr_size);
        if (!res)
            return -1;
        undone = true;
        outcome = "undone";
    } else {
        outcome = strcmp(PQgetvalue(res, 0, 0), "FAILED") == 0 ? "nothing to undo (step failed)"
                                                               : "already compensated";
    }
    PQclear(res);
    LOG_INFO(svc->conf.service, "payment %s compensation: %s", payment_id, outcome);
    json_t *p = json_object();
    json_object_set_new(p, "paymentId", json_string(payment_id));
    json_object_set_new(p, "service", json_string(service));
    json_object_set_new(p, "undone", json_boolean(undone));
    json_object_set_new(p, "outcome", json_string(outcome));
    int rc = outboxd_shop_outbox_write(conn, &svc->conf, done_topic, payment_id, done_topic, p,
                                       ev->trace_id, errstr, errstr_size);
    json_decref(p);
    return rc;
}

json_t *shop_http_rows(shop_svc_t *svc, const char *sql, int n, const char *const *params,
                       int *status)
{
    char errstr[512];
    PGconn *conn = outboxd_shop_pool_get(svc->pool, errstr, sizeof(errstr));
    if (!conn)
        return outboxd_shop_error(status, 503, "%s", errstr);
    PGresult *res = outboxd_shop_query(conn, sql, n, params, errstr, sizeof(errstr));
    json_t *out;
    if (!res) {
        /* the database away is not the request's fault */
        out = outboxd_shop_error(status, outboxd_shop_db_away(conn) ? 503 : 400, "%s", errstr);
    } else {
        out = outboxd_shop_rows_json(res);
        PQclear(res);
    }
    outboxd_shop_pool_put(svc->pool, conn);
    return out;
}

json_t *shop_http_first(json_t *rows, int *status, int ok_status, int empty_status,
                        const char *empty_msg)
{
    if (!json_is_array(rows))
        return rows;
    if (json_array_size(rows) == 0) {
        json_decref(rows);
        return outboxd_shop_error(status, empty_status, "%s", empty_msg);
    }
    json_t *o = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    *status = ok_status;
    return o;
}

const char *shop_scope(outboxd_shop_req_t *req, char *buf)
{
    const char *hdr = outboxd_shop_req_header(req, "X-Member-Id");
    const char *role = outboxd_shop_req_header(req, "X-Role");
    if (!hdr || !*hdr || (role && strcmp(role, "admin") == 0))
        return NULL;
    snprintf(buf, 32, "%lld", strtoll(hdr, NULL, 10));
    return buf;
}

bool shop_member_of(outboxd_shop_req_t *req, long long *member_id, json_t **err_body, int *status)
{
    const char *hdr = outboxd_shop_req_header(req, "X-Member-Id");
    long long body_id = 0;
    char e[128];
    bool has_body = req->body && shop_jint(req->body, "memberId", &body_id, e, sizeof(e));
    if (hdr && *hdr) {
        long long h = strtoll(hdr, NULL, 10);
        if (has_body && body_id != h) {
            *err_body = outboxd_shop_error(status, 403, "memberId %lld is not the caller (%lld)",
                                           body_id, h);
            return false;
        }
        *member_id = h;
        return true;
    }
    if (!has_body) {
        *err_body = outboxd_shop_error(status, 400, "memberId is missing");
        return false;
    }
    *member_id = body_id;
    return true;
}
