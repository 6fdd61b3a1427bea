/*
 * product: the catalogue (price, stock). Deducts stock on payment-pending
 * (and checks the amount against the price), restores it on
 * restore-inventory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS products ("
    " id bigserial PRIMARY KEY,"
    " name text NOT NULL,"
    " price bigint NOT NULL CHECK (price >= 0),"
    " stock bigint NOT NULL CHECK (stock >= 0),"
    " created_at timestamptz NOT NULL DEFAULT now());" SHOP_PAYMENT_OPS_SQL;

static int apply(shop_svc_t *svc, PGconn *conn, json_t *cmd, char *reason, size_t reason_size,
                 char *errstr, size_t errstr_size)
{
    (void)svc;
    long long product, qty, amount, discount = 0;
    if (!shop_jint(cmd, "productId", &product, errstr, errstr_size) ||
        !shop_jint(cmd, "quantity", &qty, errstr, errstr_size) ||
        !shop_jint(cmd, "amount", &amount, errstr, errstr_size))
        return -1;
    if (json_object_get(cmd, "discount") && !json_is_null(json_object_get(cmd, "discount")) &&
        !shop_jint(cmd, "discount", &discount, errstr, errstr_size))
        return -1;
    char id[32];
    snprintf(id, sizeof(id), "%lld", product);
    const char *p[1] = {id};
    PGresult *res =
        outboxd_shop_query(conn, "SELECT price, stock FROM products WHERE id = $1 FOR UPDATE", 1, p,
                           errstr, errstr_size);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        snprintf(reason, reason_size, "no product %lld", product);
        return 0;
    }
    long long price = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    long long stock = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    if (qty <= 0) {
        snprintf(reason, reason_size, "quantity %lld is not positive", qty);
        return 0;
    }
    long long want, got;
    if (__builtin_mul_overflow(price, qty, &want) ||
        __builtin_add_overflow(amount, discount, &got) || want != got) {
        snprintf(reason, reason_size, "amount %lld + discount %lld != price %lld x %lld", amount,
                 discount, price, qty);
        return 0;
    }
    if (stock < qty) {
        snprintf(reason, reason_size, "out of stock: %lld left, %lld wanted", stock, qty);
        return 0;
    }
    char q[32];
    snprintf(q, sizeof(q), "%lld", qty);
    const char *p2[2] = {id, q};
    res = outboxd_shop_query(conn, "UPDATE products SET stock = stock - $2 WHERE id = $1", 2, p2,
                             errstr, errstr_size);
    if (!res)
        return -1;
    PQclear(res);
    return 1;
}

static int undo(shop_svc_t *svc, PGconn *conn, json_t *detail, char *errstr, size_t errstr_size)
{
    (void)svc;
    long long product, qty;
    if (!shop_jint(detail, "productId", &product, errstr, errstr_size) ||
        !shop_jint(detail, "quantity", &qty, errstr, errstr_size))
        return -1;
    char id[32], q[32];
    snprintf(id, sizeof(id), "%lld", product);
    snprintf(q, sizeof(q), "%lld", qty);
    const char *p[2] = {id, q};
    return outboxd_shop_command(conn, "UPDATE products SET stock = stock + $2 WHERE id = $1", 2, p,
                                errstr, errstr_size);
}

static int on_pending(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    return shop_participate(opaque, conn, ev, "product", apply, errstr, errstr_size);
}

static int on_restore(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    return shop_compensate(opaque, conn, ev, "product", undo, "inventory-restored", errstr,
                           errstr_size);
}

static const shop_consumer_def_t consumers[] = {
    {"pending", {"payment-pending"}, on_pending},
    {"restore", {"restore-inventory"}, on_restore},
};

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    char buf[512], *seg[6], e[256];
    int n = outboxd_shop_path_split(req->path, buf, sizeof(buf), seg, 6);
    bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
    if (n < 1 || strcmp(seg[0], "products") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    if (get && n == 1)
        return shop_http_rows(svc, "SELECT id, name, price, stock FROM products ORDER BY id", 0,
                              NULL, status);
    if (post && n == 1) {
        long long price, stock;
        const char *name = shop_jstr(req->body, "name", e, sizeof(e));
        if (!name || !shop_jint(req->body, "price", &price, e, sizeof(e)) ||
            !shop_jint(req->body, "stock", &stock, e, sizeof(e)))
            return outboxd_shop_error(status, 400, "%s", e);
        char pr[32], st[32];
        snprintf(pr, sizeof(pr), "%lld", price);
        snprintf(st, sizeof(st), "%lld", stock);
        const char *p[3] = {name, pr, st};
        return shop_http_first(
            shop_http_rows(svc,
                           "INSERT INTO products (name, price, stock) VALUES ($1, $2, $3) "
                           "RETURNING id, name, price, stock",
                           3, p, status),
            status, 201, 500, "insert returned nothing");
    }
    if (n >= 2) {
        char *end;
        strtoll(seg[1], &end, 10);
        if (*end)
            return outboxd_shop_error(status, 404, "no product %s", seg[1]);
        if (get && n == 2) {
            const char *p[1] = {seg[1]};
            return shop_http_first(
                shop_http_rows(svc, "SELECT id, name, price, stock FROM products WHERE id = $1", 1,
                               p, status),
                status, 200, 404, "product not found");
        }
        /* POST /products/{id}/stock {stock}: an admin sets the stock. */
        if (post && n == 3 && strcmp(seg[2], "stock") == 0) {
            long long stock;
            if (!shop_jint(req->body, "stock", &stock, e, sizeof(e)))
                return outboxd_shop_error(status, 400, "%s", e);
            char st[32];
            snprintf(st, sizeof(st), "%lld", stock);
            const char *p[2] = {seg[1], st};
            return shop_http_first(shop_http_rows(svc,
                                                  "UPDATE products SET stock = $2 WHERE id = $1 "
                                                  "RETURNING id, name, price, stock",
                                                  2, p, status),
                                   status, 200, 404, "product not found");
        }
    }
    return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
}

const shop_service_def_t shop_product_def = {
    .name = "product",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
};
