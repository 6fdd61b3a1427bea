/*
 * payment: the SAGA coordinator (seed section 7).
 *
 *   POST /payments -> payment PENDING + payment-pending (one transaction)
 *   payment-result x4 (order, member, coupon, product)
 *     all success            -> COMPLETED + complete-order
 *     a failure, or timeout  -> COMPENSATING + a compensation command to each
 *                               participant that succeeded (cancel-order,
 *                               refund-balance, rollback-coupon,
 *                               restore-inventory); when each has answered
 *                               (order-canceled, balance-refunded,
 *                               coupon-rolledback, inventory-restored)
 *                               -> FAILED + payment-failed (once)
 *   a result after the decision (late, after a timeout): a success is
 *   compensated; a duplicate is ignored.
 *
 * All saga state is in this database (payments, saga_steps, saga_trace) and
 * every change to it is made in the transaction that consumes the event, so
 * a restarted coordinator resumes where it stopped.
 *
 * A saga whose compensation cannot be applied (a participant dead-lettered
 * it) stays COMPENSATING: it is counted in GET /stats ("sagas":
 * "compensatingOverdue") and warned about by the sweeper, and finishes when
 * the compensation is sent again (see the README's operations).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outboxd/common/log.h"
#include "outboxd/common/util.h"
#include "shop.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS payments ("
    " id text PRIMARY KEY,"
    " order_id bigint NOT NULL,"
    " member_id bigint NOT NULL,"
    " product_id bigint NOT NULL,"
    " quantity int NOT NULL,"
    " coupon_id bigint,"
    " amount bigint NOT NULL,"
    " discount bigint NOT NULL DEFAULT 0,"
    " status text NOT NULL CHECK (status IN ('PENDING', 'COMPENSATING', 'COMPLETED', 'FAILED')),"
    " reason text,"
    " created_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " deadline timestamptz NOT NULL,"
    " finished_at timestamptz);"
    "CREATE INDEX IF NOT EXISTS payments_pending ON payments (deadline) WHERE status = 'PENDING';"
    "CREATE TABLE IF NOT EXISTS saga_steps ("
    " payment_id text NOT NULL REFERENCES payments (id),"
    " service text NOT NULL,"
    " result text CHECK (result IN ('SUCCESS', 'FAIL', 'TIMEOUT')),"
    " reason text,"
    " late_result text,"
    " compensation text CHECK (compensation IN ('SENT', 'DONE')),"
    " PRIMARY KEY (payment_id, service));"
    /* When the compensation was sent (a database made by an older shop
     * gets the column here). */
    "ALTER TABLE saga_steps ADD COLUMN IF NOT EXISTS compensation_at timestamptz;"
    "CREATE INDEX IF NOT EXISTS saga_steps_sent ON saga_steps (payment_id) "
    "WHERE compensation = 'SENT';"
    "CREATE TABLE IF NOT EXISTS saga_trace ("
    " seq bigserial PRIMARY KEY,"
    " payment_id text NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " service text NOT NULL,"
    " step text NOT NULL,"
    " detail text);"
    "CREATE INDEX IF NOT EXISTS saga_trace_payment ON saga_trace (payment_id, seq);";

/* compensation command and its answer, per participant */
static const char *comp_topic(const char *service)
{
    if (strcmp(service, "order") == 0)
        return "cancel-order";
    if (strcmp(service, "member") == 0)
        return "refund-balance";
    if (strcmp(service, "coupon") == 0)
        return "rollback-coupon";
    return "restore-inventory";
}

static const char *done_service(const char *topic)
{
    if (strcmp(topic, "order-canceled") == 0)
        return "order";
    if (strcmp(topic, "balance-refunded") == 0)
        return "member";
    if (strcmp(topic, "coupon-rolledback") == 0)
        return "coupon";
    if (strcmp(topic, "inventory-restored") == 0)
        return "product";
    return NULL;
}

static int trace(PGconn *conn, const char *payment_id, const char *service, const char *step,
                 const char *detail, char *errstr, size_t errstr_size)
{
    const char *p[4] = {payment_id, service, step, detail};
    return outboxd_shop_command(conn,
                                "INSERT INTO saga_trace (payment_id, service, step, detail) "
                                "VALUES ($1, $2, $3, $4)",
                                4, p, errstr, errstr_size);
}

/* The payment row as the saga's command payload (locks the row). */
static json_t *load_payment(PGconn *conn, const char *payment_id, char *status, size_t status_size,
                            char *errstr, size_t errstr_size)
{
    const char *p[1] = {payment_id};
    PGresult *res = outboxd_shop_query(
        conn,
        "SELECT id AS \"paymentId\", order_id AS \"orderId\", member_id AS \"memberId\", "
        "product_id AS \"productId\", quantity, coupon_id AS \"couponId\", amount, discount, "
        "status FROM payments WHERE id = $1 FOR UPDATE",
        1, p, errstr, errstr_size);
    if (!res)
        return NULL;
    if (PQntuples(res) == 0) {
        PQclear(res);
        snprintf(errstr, errstr_size, "no payment %s in this database", payment_id);
        return NULL;
    }
    json_t *rows = outboxd_shop_rows_json(res);
    PQclear(res);
    json_t *row = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    snprintf(status, status_size, "%s", json_string_value(json_object_get(row, "status")));
    json_object_del(row, "status");
    return row;
}

static int emit(shop_svc_t *svc, PGconn *conn, const char *topic, const char *payment_id,
                json_t *payload, char *errstr, size_t errstr_size)
{
    /* The payment id is the saga's trace id. */
    return outboxd_shop_outbox_write(conn, &svc->conf, topic, payment_id, topic, payload,
                                     payment_id, errstr, errstr_size);
}

static int send_compensation(shop_svc_t *svc, PGconn *conn, json_t *pay, const char *payment_id,
                             const char *service, char *errstr, size_t errstr_size)
{
    const char *topic = comp_topic(service);
    if (emit(svc, conn, topic, payment_id, pay, errstr, errstr_size) < 0)
        return -1;
    const char *p[2] = {payment_id, service};
    if (outboxd_shop_command(conn,
                             "UPDATE saga_steps SET compensation = 'SENT', compensation_at = "
                             "clock_timestamp() WHERE payment_id = $1 AND service = $2",
                             2, p, errstr, errstr_size) < 0)
        return -1;
    return trace(conn, payment_id, "payment", "compensate", topic, errstr, errstr_size);
}

static int finish_failed(shop_svc_t *svc, PGconn *conn, json_t *pay, const char *payment_id,
                         char *errstr, size_t errstr_size)
{
    const char *p[1] = {payment_id};
    PGresult *res = outboxd_shop_query(conn,
                                       "UPDATE payments SET status = 'FAILED', finished_at = "
                                       "clock_timestamp() WHERE id = $1 RETURNING reason",
                                       1, p, errstr, errstr_size);
    if (!res)
        return -1;
    json_t *out = json_deep_copy(pay);
    json_object_set_new(out, "status", json_string("FAILED"));
    json_object_set_new(out, "reason", json_string(PQgetvalue(res, 0, 0)));
    PQclear(res);
    int rc = emit(svc, conn, "payment-failed", payment_id, out, errstr, errstr_size);
    json_decref(out);
    if (rc < 0)
        return -1;
    LOG_INFO("payment", "payment %s FAILED", payment_id);
    return trace(conn, payment_id, "payment", "FAILED", "payment-failed sent", errstr, errstr_size);
}

/* Decides a PENDING saga (row locked): complete, or compensate what succeeded. */
static int decide(shop_svc_t *svc, PGconn *conn, json_t *pay, const char *payment_id,
                  bool timed_out, char *errstr, size_t errstr_size)
{
    const char *p[1] = {payment_id};
    PGresult *res = outboxd_shop_query(conn,
                                       "SELECT service, coalesce(result, ''), coalesce(reason, '') "
                                       "FROM saga_steps WHERE payment_id = $1 ORDER BY service",
                                       1, p, errstr, errstr_size);
    if (!res)
        return -1;
    int n = PQntuples(res), ok = 0;
    char reason[1024] = "";
    for (int i = 0; i < n; i++) {
        const char *r = PQgetvalue(res, i, 1);
        if (strcmp(r, "SUCCESS") == 0) {
            ok++;
        } else {
            size_t l = strlen(reason);
            snprintf(reason + l, sizeof(reason) - l, "%s%s: %s", l ? "; " : "",
                     PQgetvalue(res, i, 0),
                     *r ? PQgetvalue(res, i, 2) : "no result before the timeout");
        }
    }
    if (!timed_out && ok == 4) {
        PQclear(res);
        res = outboxd_shop_query(conn,
                                 "UPDATE payments SET status = 'COMPLETED', finished_at = "
                                 "clock_timestamp() WHERE id = $1",
                                 1, p, errstr, errstr_size);
        if (!res)
            return -1;
        PQclear(res);
        json_t *out = json_deep_copy(pay);
        json_object_set_new(out, "status", json_string("COMPLETED"));
        int rc = emit(svc, conn, "complete-order", payment_id, out, errstr, errstr_size);
        json_decref(out);
        if (rc < 0)
            return -1;
        LOG_INFO("payment", "payment %s COMPLETED", payment_id);
        return trace(conn, payment_id, "payment", "COMPLETED", "complete-order sent", errstr,
                     errstr_size);
    }
    const char *p2[2] = {payment_id, reason};
    PGresult *r2 = outboxd_shop_query(conn,
                                      "UPDATE payments SET status = 'COMPENSATING', reason = $2 "
                                      "WHERE id = $1",
                                      2, p2, errstr, errstr_size);
    if (!r2) {
        PQclear(res);
        return -1;
    }
    PQclear(r2);
    r2 = outboxd_shop_query(conn,
                            "UPDATE saga_steps SET result = 'TIMEOUT', reason = 'no result before "
                            "the timeout' WHERE payment_id = $1 AND result IS NULL",
                            1, p, errstr, errstr_size);
    if (!r2) {
        PQclear(res);
        return -1;
    }
    PQclear(r2);
    LOG_INFO("payment", "payment %s fails (%s); compensating %d participant(s)", payment_id, reason,
             ok);
    if (trace(conn, payment_id, "payment", timed_out ? "TIMEOUT" : "COMPENSATING", reason, errstr,
              errstr_size) < 0) {
        PQclear(res);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(PQgetvalue(res, i, 1), "SUCCESS") == 0 &&
            send_compensation(svc, conn, pay, payment_id, PQgetvalue(res, i, 0), errstr,
                              errstr_size) < 0) {
            PQclear(res);
            return -1;
        }
    }
    PQclear(res);
    if (ok == 0)
        return finish_failed(svc, conn, pay, payment_id, errstr, errstr_size);
    return 0;
}

static int on_result(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                     size_t errstr_size)
{
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    const char *service =
        payment_id ? shop_jstr(ev->payload, "service", errstr, errstr_size) : NULL;
    json_t *succ = json_object_get(ev->payload, "success");
    if (!service)
        return -1;
    if (!json_is_boolean(succ)) {
        snprintf(errstr, errstr_size, "field \"success\" is missing or not a boolean");
        return -1;
    }
    bool ok = json_is_true(succ);
    const char *reason = json_string_value(json_object_get(ev->payload, "reason"));
    char status[32];
    json_t *pay = load_payment(conn, payment_id, status, sizeof(status), errstr, errstr_size);
    if (!pay)
        return -1;
    int rc = -1;
    const char *p[2] = {payment_id, service};
    PGresult *res = outboxd_shop_query(conn,
                                       "SELECT coalesce(result, ''), coalesce(late_result, '') "
                                       "FROM saga_steps WHERE payment_id = $1 AND service = $2 "
                                       "FOR UPDATE",
                                       2, p, errstr, errstr_size);
    if (!res)
        goto out;
    if (PQntuples(res) == 0) {
        PQclear(res);
        snprintf(errstr, errstr_size, "payment %s has no participant \"%s\"", payment_id, service);
        goto out;
    }
    char prev[16], late[16];
    snprintf(prev, sizeof(prev), "%s", PQgetvalue(res, 0, 0));
    snprintf(late, sizeof(late), "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    char detail[700];
    const char *at = json_string_value(json_object_get(ev->payload, "at"));
    /* "at" is a timestamp (its time of day from the 12th character on) as
     * our participants write it; another producer's may be anything. */
    const char *at_time = at && strlen(at) > 11 ? at + 11 : at;
    snprintf(detail, sizeof(detail), "%s%s%s%s%s%s", ok ? "success" : "failure", reason ? ": " : "",
             reason ? reason : "", at ? " (done at " : "", at ? at_time : "", at ? ")" : "");
    if (strcmp(prev, "SUCCESS") == 0 || strcmp(prev, "FAIL") == 0 || *late) {
        rc = trace(conn, payment_id, service, "duplicate result ignored", detail, errstr,
                   errstr_size);
        goto out;
    }
    if (strcmp(prev, "TIMEOUT") == 0) {
        /* After the decision: record it; a success must be undone. */
        const char *p3[3] = {payment_id, service, ok ? "SUCCESS" : "FAIL"};
        res = outboxd_shop_query(conn,
                                 "UPDATE saga_steps SET late_result = $3 WHERE payment_id = $1 "
                                 "AND service = $2",
                                 3, p3, errstr, errstr_size);
        if (!res)
            goto out;
        PQclear(res);
        if (trace(conn, payment_id, service, "late result", detail, errstr, errstr_size) < 0)
            goto out;
        if (ok && send_compensation(svc, conn, pay, payment_id, service, errstr, errstr_size) < 0)
            goto out;
        rc = 0;
        goto out;
    }
    const char *p4[4] = {payment_id, service, ok ? "SUCCESS" : "FAIL", reason};
    res = outboxd_shop_query(conn,
                             "UPDATE saga_steps SET result = $3, reason = $4 WHERE payment_id = $1 "
                             "AND service = $2",
                             4, p4, errstr, errstr_size);
    if (!res)
        goto out;
    PQclear(res);
    if (trace(conn, payment_id, service, "result", detail, errstr, errstr_size) < 0)
        goto out;
    if (strcmp(status, "PENDING") != 0) {
        rc = 0;
        goto out;
    }
    char n[16];
    bool err;
    if (!shop_query_value(conn,
                          "SELECT count(*) FROM saga_steps WHERE payment_id = $1 AND result IS "
                          "NOT NULL",
                          1, p, n, sizeof(n), &err, errstr, errstr_size))
        goto out;
    rc = atoi(n) == 4 ? decide(svc, conn, pay, payment_id, false, errstr, errstr_size) : 0;
out:
    json_decref(pay);
    return rc;
}

static int on_compensated(shop_svc_t *svc, PGconn *conn, const outboxd_shop_event_t *ev,
                          char *errstr, size_t errstr_size)
{
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    const char *service = done_service(ev->topic);
    if (!payment_id)
        return -1;
    char status[32];
    json_t *pay = load_payment(conn, payment_id, status, sizeof(status), errstr, errstr_size);
    if (!pay)
        return -1;
    int rc = -1;
    const char *p[2] = {payment_id, service};
    PGresult *res = outboxd_shop_query(conn,
                                       "UPDATE saga_steps SET compensation = 'DONE' WHERE "
                                       "payment_id = $1 AND service = $2 AND compensation = 'SENT'",
                                       2, p, errstr, errstr_size);
    if (!res)
        goto out;
    bool changed = atoi(PQcmdTuples(res)) > 0;
    PQclear(res);
    const char *outcome = json_string_value(json_object_get(ev->payload, "outcome"));
    if (trace(conn, payment_id, service, changed ? ev->topic : "duplicate compensation ignored",
              outcome, errstr, errstr_size) < 0)
        goto out;
    if (changed && strcmp(status, "COMPENSATING") == 0) {
        char n[16];
        bool err;
        if (!shop_query_value(conn,
                              "SELECT count(*) FROM saga_steps WHERE payment_id = $1 AND "
                              "compensation = 'SENT'",
                              1, p, n, sizeof(n), &err, errstr, errstr_size))
            goto out;
        if (atoi(n) == 0 && finish_failed(svc, conn, pay, payment_id, errstr, errstr_size) < 0)
            goto out;
    }
    rc = 0;
out:
    json_decref(pay);
    return rc;
}

static int on_saga_event(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                         size_t errstr_size)
{
    if (strcmp(ev->topic, "payment-result") == 0)
        return on_result(opaque, conn, ev, errstr, errstr_size);
    return on_compensated(opaque, conn, ev, errstr, errstr_size);
}

static const shop_consumer_def_t consumers[] = {
    {"saga",
     {"payment-result", "order-canceled", "balance-refunded", "coupon-rolledback",
      "inventory-restored"},
     on_saga_event},
};

/* ---------------------------------------------------------- timeouts */

typedef struct payment_priv {
    pthread_t sweeper;
    bool started;
} payment_priv_t;

/* COMPENSATING for longer than twice its saga timeout (the one it was
 * created with: deadline - created_at) since it started, or a compensation
 * sent longer ago than that and not answered, whatever the payment's status
 * (a late success is compensated after the payment FAILED). Compensations
 * take milliseconds; a participant whose database is away delays them, a
 * dead-lettered one stops them. A condition on payments (unaliased). */
#define OVERDUE_SQL                                                                                \
    "((status = 'COMPENSATING' AND deadline + (deadline - created_at) < clock_timestamp()) OR "    \
    "id IN (SELECT s.payment_id FROM saga_steps s JOIN payments p ON p.id = s.payment_id WHERE "   \
    "s.compensation = 'SENT' AND s.compensation_at + 2 * (p.deadline - p.created_at) < "           \
    "clock_timestamp()))"

/* How often the sweeper looks for overdue compensations and warns: the
 * saga timeout, within 1 to 30 s. */
static int64_t overdue_warn_every_us(const shop_svc_t *svc)
{
    int64_t ms = svc->saga_timeout_ms;
    return (ms < 1000 ? 1000 : ms > 30000 ? 30000 : ms) * 1000;
}

/* Warns about sagas whose compensation is overdue: the oldest, and how many. */
static void warn_overdue(PGconn *conn)
{
    char e[512];
    PGresult *res =
        outboxd_shop_query(conn,
                           "SELECT count(*) OVER (), id FROM payments WHERE " OVERDUE_SQL
                           " ORDER BY created_at LIMIT 1",
                           0, NULL, e, sizeof(e));
    if (!res) {
        LOG_WARN("payment", "timeout sweeper: %s", e);
        return;
    }
    if (PQntuples(res) > 0)
        LOG_WARN("payment",
                 "%s saga(s) COMPENSATING for longer than twice the saga timeout, the oldest %s: "
                 "a compensation is likely on a participant's .dlt (GET /api/payments/%s names "
                 "the participant whose compensation is SENT, not DONE; send it again once the "
                 "cause is fixed)",
                 PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 1));
    PQclear(res);
}

/* Fails the PENDING sagas whose deadline passed, one transaction each. */
static int sweep_once(shop_svc_t *svc, PGconn *conn, char *errstr, size_t errstr_size)
{
    for (int i = 0; i < 100; i++) {
        if (outboxd_shop_exec(conn, "BEGIN", errstr, errstr_size) < 0)
            return -1;
        char id[64];
        bool err;
        if (!shop_query_value(conn,
                              "SELECT id FROM payments WHERE status = 'PENDING' AND deadline < "
                              "clock_timestamp() ORDER BY deadline LIMIT 1 FOR UPDATE SKIP LOCKED",
                              0, NULL, id, sizeof(id), &err, errstr, errstr_size)) {
            outboxd_shop_exec(conn, "ROLLBACK", errstr, errstr_size);
            return err ? -1 : 0;
        }
        char status[32];
        json_t *pay = load_payment(conn, id, status, sizeof(status), errstr, errstr_size);
        int rc = pay ? decide(svc, conn, pay, id, true, errstr, errstr_size) : -1;
        json_decref(pay);
        if (rc < 0 || outboxd_shop_exec(conn, "COMMIT", errstr, errstr_size) < 0) {
            char e2[128];
            outboxd_shop_exec(conn, "ROLLBACK", e2, sizeof(e2));
            return -1;
        }
    }
    return 0;
}

static void *sweeper_main(void *arg)
{
    shop_svc_t *svc = arg;
    char errstr[512];
    PGconn *conn = NULL;
    int64_t next_warn = outboxd_now_us() + overdue_warn_every_us(svc);
    while (!atomic_load(&svc->stop)) {
        if (!conn || PQstatus(conn) != CONNECTION_OK) {
            if (conn)
                PQfinish(conn);
            conn = outboxd_shop_connect(svc->conf.dsn, errstr, sizeof(errstr));
            if (!conn)
                LOG_WARN("payment", "timeout sweeper: %s", errstr);
        }
        if (conn && sweep_once(svc, conn, errstr, sizeof(errstr)) < 0)
            LOG_WARN("payment", "timeout sweeper: %s", errstr);
        if (conn && PQstatus(conn) == CONNECTION_OK && outboxd_now_us() >= next_warn) {
            warn_overdue(conn);
            next_warn = outboxd_now_us() + overdue_warn_every_us(svc);
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200000000};
        nanosleep(&ts, NULL);
    }
    if (conn)
        PQfinish(conn);
    return NULL;
}

static int start(shop_svc_t *svc, char *errstr, size_t errstr_size)
{
    payment_priv_t *pp = calloc(1, sizeof(*pp));
    if (!pp) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    svc->priv = pp;
    if (pthread_create(&pp->sweeper, NULL, sweeper_main, svc) != 0) {
        snprintf(errstr, errstr_size, "cannot start the timeout thread");
        return -1;
    }
    pp->started = true;
    return 0;
}

static void stop(shop_svc_t *svc)
{
    payment_priv_t *pp = svc->priv;
    if (!pp)
        return;
    if (pp->started)
        pthread_join(pp->sweeper, NULL);
    free(pp);
    svc->priv = NULL;
}

/* ---------------------------------------------------------- HTTP */

/* GET /stats: the sagas not finished, and those whose compensation is
 * overdue (OVERDUE_SQL). */
static json_t *stats(shop_svc_t *svc)
{
    int status = 0;
    json_t *rows = shop_http_rows(svc,
                                  "SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending, "
                                  "count(*) FILTER (WHERE status = 'COMPENSATING') AS "
                                  "compensating, count(*) FILTER (WHERE " OVERDUE_SQL
                                  ") AS \"compensatingOverdue\" FROM payments WHERE status IN "
                                  "('PENDING', 'COMPENSATING') OR id IN (SELECT payment_id FROM "
                                  "saga_steps WHERE compensation = 'SENT')",
                                  0, NULL, &status);
    /* an aggregate: always one row, or the query's error */
    return json_pack("{s:o}", "sagas", shop_http_first(rows, &status, 200, 500, "no row"));
}

/* Payment id as JSON, with its participants; scope (shop_scope): only a
 * payment of that member, else "no payment", as one that does not exist. */
static json_t *payment_json(shop_svc_t *svc, const char *id, const char *scope, int *status)
{
    const char *p[2] = {id, scope};
    json_t *rows = shop_http_rows(svc,
                                  "SELECT id AS \"paymentId\", order_id AS \"orderId\", member_id "
                                  "AS \"memberId\", product_id AS \"productId\", quantity, "
                                  "coupon_id AS \"couponId\", amount, discount, status, reason, "
                                  "created_at::text AS \"createdAt\", finished_at::text AS "
                                  "\"finishedAt\", (extract(epoch FROM finished_at - created_at) "
                                  "* 1000)::bigint AS \"elapsedMs\" FROM payments WHERE id = $1 "
                                  "AND ($2::bigint IS NULL OR member_id = $2)",
                                  2, p, status);
    if (!json_is_array(rows))
        return rows;
    if (json_array_size(rows) == 0) {
        json_decref(rows);
        return outboxd_shop_error(status, 404, "no payment %s", id);
    }
    json_t *o = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    json_object_set_new(o, "participants",
                        shop_http_rows(svc,
                                       "SELECT service, result, reason, late_result AS "
                                       "\"lateResult\", compensation FROM saga_steps WHERE "
                                       "payment_id = $1 ORDER BY service",
                                       1, p, status));
    *status = 200;
    return o;
}

static bool final(json_t *pay)
{
    const char *s = json_string_value(json_object_get(pay, "status"));
    return s && (strcmp(s, "COMPLETED") == 0 || strcmp(s, "FAILED") == 0);
}

/* "5s", "500ms", "5" (seconds) -> milliseconds; -1 when malformed. */
static long parse_wait(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        return (long)v;
    if (*end == '\0' || strcmp(end, "s") == 0)
        return (long)(v * 1000);
    return -1;
}

static json_t *create_payment(shop_svc_t *svc, outboxd_shop_req_t *req, int *status)
{
    char e[512];
    long long member, order, product, qty, amount, coupon = -1, discount = 0;
    json_t *err;
    if (!shop_member_of(req, &member, &err, status))
        return err;
    if (!shop_jint(req->body, "orderId", &order, e, sizeof(e)) ||
        !shop_jint(req->body, "productId", &product, e, sizeof(e)) ||
        !shop_jint(req->body, "quantity", &qty, e, sizeof(e)) ||
        !shop_jint(req->body, "amount", &amount, e, sizeof(e)))
        return outboxd_shop_error(status, 400, "%s", e);
    json_t *cj = json_object_get(req->body, "couponId");
    if (cj && !json_is_null(cj) && !shop_jint(req->body, "couponId", &coupon, e, sizeof(e)))
        return outboxd_shop_error(status, 400, "%s", e);
    if (json_object_get(req->body, "discount") &&
        !shop_jint(req->body, "discount", &discount, e, sizeof(e)))
        return outboxd_shop_error(status, 400, "%s", e);
    /* Refused here so that a client learns it at once; the participants
     * check the same (coupon: no discount without a coupon; product: the
     * price). */
    if (amount < 0 || discount < 0 || qty <= 0)
        return outboxd_shop_error(status, 400,
                                  "amount, discount and quantity must not be "
                                  "negative (quantity positive)");
    if (coupon < 0 && discount != 0)
        return outboxd_shop_error(status, 400, "discount %lld without a couponId", discount);
    long wait_ms = 0;
    const char *w = outboxd_shop_req_query(req, "wait");
    if (w && (wait_ms = parse_wait(w)) < 0)
        return outboxd_shop_error(status, 400, "wait=%s: use seconds (5s) or milliseconds (500ms)",
                                  w);
    if (wait_ms > 60000)
        wait_ms = 60000;

    PGconn *conn = outboxd_shop_pool_get(svc->pool, e, sizeof(e));
    if (!conn)
        return outboxd_shop_error(status, 503, "%s", e);
    char o[32], m[32], pr[32], q[32], c[32], a[32], d[32], t[32], id[64] = "";
    snprintf(o, sizeof(o), "%lld", order);
    snprintf(m, sizeof(m), "%lld", member);
    snprintf(pr, sizeof(pr), "%lld", product);
    snprintf(q, sizeof(q), "%lld", qty);
    snprintf(c, sizeof(c), "%lld", coupon);
    snprintf(a, sizeof(a), "%lld", amount);
    snprintf(d, sizeof(d), "%lld", discount);
    snprintf(t, sizeof(t), "%d", svc->saga_timeout_ms);
    const char *p[9] = {o, m, pr, q, coupon >= 0 ? c : NULL, a, d, t};
    json_t *out = NULL;
    bool dberr;
    json_t *pay = NULL;
    char st[32];
    if (outboxd_shop_exec(conn, "BEGIN", e, sizeof(e)) < 0 ||
        !shop_query_value(conn,
                          "INSERT INTO payments (id, order_id, member_id, product_id, quantity, "
                          "coupon_id, amount, discount, status, deadline) VALUES "
                          "(gen_random_uuid()::text, $1, $2, $3, $4, $5, $6, $7, 'PENDING', "
                          "clock_timestamp() + $8::int * interval '1 millisecond') RETURNING id",
                          8, p, id, sizeof(id), &dberr, e, sizeof(e))) {
        out = outboxd_shop_error(status, 500, "%s", e);
        goto done;
    }
    const char *pid[1] = {id};
    PGresult *res = outboxd_shop_query(conn,
                                       "INSERT INTO saga_steps (payment_id, service) SELECT $1, "
                                       "unnest(ARRAY['order', 'member', 'coupon', 'product'])",
                                       1, pid, e, sizeof(e));
    if (!res) {
        out = outboxd_shop_error(status, 500, "%s", e);
        goto done;
    }
    PQclear(res);
    pay = load_payment(conn, id, st, sizeof(st), e, sizeof(e));
    if (!pay || trace(conn, id, "payment", "PENDING", "payment-pending sent", e, sizeof(e)) < 0 ||
        emit(svc, conn, "payment-pending", id, pay, e, sizeof(e)) < 0 ||
        outboxd_shop_exec(conn, "COMMIT", e, sizeof(e)) < 0) {
        out = outboxd_shop_error(status, 500, "%s", e);
        goto done;
    }
done:
    json_decref(pay);
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        outboxd_shop_exec(conn, "ROLLBACK", e, sizeof(e));
    outboxd_shop_pool_put(svc->pool, conn);
    if (out)
        return out;
    /* ?wait=: hold the request until the saga ends (or the wait passes). */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        out = payment_json(svc, id, NULL, status);
        if (*status != 200 || final(out) || wait_ms == 0)
            break;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long el = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (el >= wait_ms)
            break;
        json_decref(out);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 20000000};
        nanosleep(&ts, NULL);
    }
    if (*status == 200)
        *status = final(out) ? 200 : 202;
    return out;
}

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    char buf[512], *seg[6];
    int n = outboxd_shop_path_split(req->path, buf, sizeof(buf), seg, 6);
    bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
    if (n < 1 || strcmp(seg[0], "payments") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    if (post && n == 1)
        return create_payment(svc, req, status);
    /* A user sees only their own payments (shop_scope). */
    char sb[32];
    const char *scope = shop_scope(req, sb);
    if (get && n == 1) {
        const char *p[1] = {scope};
        return shop_http_rows(svc,
                              "SELECT id AS \"paymentId\", order_id AS \"orderId\", member_id AS "
                              "\"memberId\", status, reason FROM payments WHERE ($1::bigint IS "
                              "NULL OR member_id = $1) ORDER BY created_at",
                              1, p, status);
    }
    if (get && n == 2)
        return payment_json(svc, seg[1], scope, status);
    if (get && n == 3 && strcmp(seg[2], "trace") == 0) {
        const char *p[2] = {seg[1], scope};
        json_t *steps = shop_http_rows(
            svc,
            "SELECT seq, to_char(at AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at, service, step, "
            "detail FROM saga_trace WHERE payment_id = $1 AND ($2::bigint IS NULL OR EXISTS "
            "(SELECT 1 FROM payments WHERE id = $1 AND member_id = $2)) ORDER BY seq",
            2, p, status);
        if (!json_is_array(steps))
            return steps;
        if (json_array_size(steps) == 0) {
            json_decref(steps);
            return outboxd_shop_error(status, 404, "no payment %s", seg[1]);
        }
        *status = 200;
        return json_pack("{s:s,s:o}", "paymentId", seg[1], "trace", steps);
    }
    return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
}

const shop_service_def_t shop_payment_def = {
    .name = "payment",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
    .start = start,
    .stop = stop,
    .stats = stats,
};
