/*
 * popular: top products by quantity over the last N days, fed by
 * complete-order, kept in Redis sorted sets as the seed says: one set per
 * UTC day (popular:<prefix>:<yyyymmdd>, expiring after 32 days), the window
 * read as their union.
 *
 * Idempotency: the inbox row is in this service's database, and the Redis
 * increment is guarded by a per-event marker set in the same Lua script, so
 * a redelivery after a crash between Redis and the commit adds nothing.
 * Redis away (or still loading) is waited out (OUTBOXD_SHOP_UNAVAILABLE):
 * a completed order is never dead-lettered for it.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "outboxd/common/log.h"
#include "shop.h"

static const char *incr_script = "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 2764800) then "
                                 "  redis.call('ZINCRBY', KEYS[2], ARGV[1], ARGV[2]) "
                                 "  redis.call('EXPIRE', KEYS[2], 2764800) "
                                 "  return 1 "
                                 "end "
                                 "return 0";

static redisContext *rconnect(shop_svc_t *svc, char *errstr, size_t errstr_size)
{
    struct timeval tv = {.tv_sec = 5};
    redisContext *r = redisConnectWithTimeout(svc->redis_host, svc->redis_port, tv);
    if (!r || r->err) {
        snprintf(errstr, errstr_size, "redis %s:%d: %s", svc->redis_host, svc->redis_port,
                 r ? r->errstr : "out of memory");
        if (r)
            redisFree(r);
        return NULL;
    }
    redisSetTimeout(r, tv);
    return r;
}

static bool redis_away(const char *err)
{
    /* loading its data, busy with a script, a replica without its master or
     * read-only after a failover, out of memory, a password not (yet) right:
     * none of them is the event's fault */
    static const char *const busy[] = {"LOADING",  "BUSY", "TRYAGAIN", "MASTERDOWN",
                                       "READONLY", "OOM",  "NOAUTH",   "WRONGPASS"};
    for (size_t i = 0; err && i < sizeof(busy) / sizeof(busy[0]); i++)
        if (strncmp(err, busy[i], strlen(busy[i])) == 0 &&
            !isalpha((unsigned char)err[strlen(busy[i])]))
            return true;
    return false;
}

static void day_key(shop_svc_t *svc, time_t t, char *out, size_t out_size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, out_size, "popular:%s:%04d%02d%02d", svc->conf.topic_prefix, tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday);
}

static int on_completed(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                        size_t errstr_size)
{
    (void)conn;
    shop_svc_t *svc = opaque;
    long long product, qty;
    if (!shop_jint(ev->payload, "productId", &product, errstr, errstr_size) ||
        !shop_jint(ev->payload, "quantity", &qty, errstr, errstr_size))
        return -1;
    redisContext *r = rconnect(svc, errstr, errstr_size);
    if (!r)
        return OUTBOXD_SHOP_UNAVAILABLE; /* Redis away: wait for it */
    char marker[300], key[128], q[32], pr[32];
    snprintf(marker, sizeof(marker), "popular:%sseen:%s", svc->conf.topic_prefix, ev->id);
    /* the day the order completed, from the event's time */
    json_int_t at_us = json_integer_value(json_object_get(ev->envelope, "occurred_at"));
    day_key(svc, at_us > 0 ? (time_t)(at_us / 1000000) : time(NULL), key, sizeof(key));
    snprintf(q, sizeof(q), "%lld", qty);
    snprintf(pr, sizeof(pr), "%lld", product);
    redisReply *rep = redisCommand(r, "EVAL %s 2 %s %s %s %s", incr_script, marker, key, q, pr);
    int rc = 0;
    if (!rep) {
        /* an I/O error or a timeout: Redis went away mid-command */
        snprintf(errstr, errstr_size, "redis EVAL: %s", r->err ? r->errstr : "no reply");
        rc = OUTBOXD_SHOP_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(errstr, errstr_size, "redis EVAL: %s", rep->str);
        rc = redis_away(rep->str) ? OUTBOXD_SHOP_UNAVAILABLE : OUTBOXD_SHOP_FAILED;
    }
    if (rep)
        freeReplyObject(rep);
    redisFree(r);
    return rc;
}

static const shop_consumer_def_t consumers[] = {
    {"completed", {"complete-order"}, on_completed},
};

static int start(shop_svc_t *svc, char *errstr, size_t errstr_size)
{
    redisContext *r = rconnect(svc, errstr, errstr_size);
    if (!r)
        return -1;
    redisFree(r);
    return 0;
}

/* GET /popular?days=N&limit=M */
static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    if (strcmp(req->method, "GET") != 0 || strcmp(req->path, "/popular") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    const char *d = outboxd_shop_req_query(req, "days");
    const char *l = outboxd_shop_req_query(req, "limit");
    int days = d ? atoi(d) : svc->popular_days;
    int limit = l ? atoi(l) : 5;
    if (days < 1 || days > 31 || limit < 1 || limit > 100)
        return outboxd_shop_error(status, 400, "days must be 1..31 and limit 1..100");
    char e[256];
    redisContext *r = rconnect(svc, e, sizeof(e));
    if (!r)
        return outboxd_shop_error(status, 503, "%s", e);
    const char *argv[40];
    char keys[31][128], nk[16];
    int argc = 0;
    argv[argc++] = "ZUNION";
    snprintf(nk, sizeof(nk), "%d", days);
    argv[argc++] = nk;
    time_t now = time(NULL);
    for (int i = 0; i < days; i++) {
        day_key(svc, now - (time_t)i * 86400, keys[i], sizeof(keys[i]));
        argv[argc++] = keys[i];
    }
    argv[argc++] = "WITHSCORES";
    redisReply *rep = redisCommandArgv(r, argc, argv, NULL);
    json_t *out;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        out = outboxd_shop_error(status, 503, "redis ZUNION: %s",
                                 rep && rep->str ? rep->str : "no reply");
    } else {
        /* ZUNION answers by ascending score: read it backwards. */
        json_t *top = json_array();
        for (ssize_t i = (ssize_t)rep->elements - 2; i >= 0 && (int)json_array_size(top) < limit;
             i -= 2) {
            json_array_append_new(
                top, json_pack("{s:I,s:I}", "productId",
                               (json_int_t)strtoll(rep->element[i]->str, NULL, 10), "quantity",
                               (json_int_t)strtod(rep->element[i + 1]->str, NULL)));
        }
        *status = 200;
        out = json_pack("{s:i,s:o}", "days", days, "top", top);
    }
    if (rep)
        freeReplyObject(rep);
    redisFree(r);
    return out;
}

const shop_service_def_t shop_popular_def = {
    .name = "popular",
    .schema_sql = "SELECT 1",
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
    .start = start,
};
