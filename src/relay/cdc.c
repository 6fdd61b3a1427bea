/*
 * CDC mode: Debezium change events of plain tables (see cdc.h).
 *
 * Per relation (oid) the entry caches the resolved columns, the key
 * columns, the topic and the four schema texts (Avro key/value as
 * AvroConverter writes them, Connect key/value as JsonConverter writes them).
 * A relation whose columns differ from the cached ones (a new Relation
 * message after ALTER TABLE) gets new schemas; with a registry they are
 * registered (outboxd_registry_id, cached) before the event that uses them
 * is built, so no event is ever encoded with a stale schema.
 *
 * Values are converted from PostgreSQL's text output into a small tagged
 * value (val_t), which is then written as Avro binary or as JSON.
 */
#include "outboxd/relay/cdc.h"

#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/avro_json.h"
#include "outboxd/common/log.h"
#include "outboxd/common/registry.h"
#include "outboxd/relay/encoder.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/pgsetup.h"

#define UNAVAILABLE     "__debezium_unavailable_value"
#define UNAVAILABLE_LEN (sizeof(UNAVAILABLE) - 1)
/* Debezium's interval.handling.mode=numeric: a month is 365.25 / 12 days. */
#define MONTH_US 2629800000000LL
#define DAY_US   86400000000LL
/* Records of one change: at most delete + tombstone + create (a primary
 * key changed by an update), or one dead letter. */
#define MAX_RECS 3
/* Dead-letter values are cut to this many bytes each when the row does
 * not fit relay.max_event_bytes whole. */
#define DL_VALUE_CAP 1024

typedef struct col {
    char *name;
    char *avro_name; /* name sanitised for Avro ([A-Za-z_][A-Za-z0-9_]*) */
    uint32_t type_oid;
    int32_t typmod;
    bool is_key; /* as the relation says (replica identity) */
    /* resolved: */
    outboxd_cdc_kind_t kind;
    int32_t kmod; /* typmod of the (base / element) type */
    bool array;
    /* value filters (columns_include / _exclude, mask_hash / mask_null) */
    bool excluded;
    char mask; /* 0, 'h' hex SHA-256 of the text, 'n' always null */
} col_t;

typedef struct rel_entry {
    uint32_t oid;
    const outboxd_table_conf_t *tc;
    char replident;
    int ncols;
    col_t *cols;
    int *key; /* column indices of the Kafka key */
    int nkey;
    char *topic;
    char *ns; /* Avro namespace and Connect name base */
    char *avro_key, *avro_value;
    char *conn_key, *conn_value;
    unsigned char so_key[10], so_value[10]; /* single-object headers */
} rel_entry_t;

typedef struct type_entry {
    uint32_t oid;
    char typtype;
    char category;
    uint32_t base;
    int32_t base_typmod;
    uint32_t elem;
} type_entry_t;

typedef struct rec_slot {
    outboxd_record_t rec;
    outboxd_buf_t key, value;
    bool dead_letter;
} rec_slot_t;

struct outboxd_cdc {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    char *database;
    outboxd_encoder_t *enc; /* registry client and Avro dead letters */
    outboxd_registry_t *reg;
    PGconn *cat;      /* catalog look-ups; opened on first need */
    atomic_int *stop; /* the source's: cuts a look-up short */
    rel_entry_t *rels;
    size_t n_rels;
    type_entry_t *types;
    size_t n_types;
    rec_slot_t slots[MAX_RECS];
    size_t n_slots;
    outboxd_buf_t scratch, arr, subject, dl;
    outboxd_buf_t oldkey, newkey; /* __debezium.oldkey / newkey header text */
    char reason[1024];
    char lsnbuf[2][OUTBOXD_LSN_STRLEN];
    char xidbuf[16];
    outboxd_cdc_stats_t stats;
};

/* ---- type mapping -------------------------------------------------------- */

/* Built-in type oids (pg_type.dat). */
enum {
    T_BOOL = 16,
    T_BYTEA = 17,
    T_CHAR = 18,
    T_NAME = 19,
    T_INT8 = 20,
    T_INT2 = 21,
    T_INT4 = 23,
    T_TEXT = 25,
    T_OID = 26,
    T_JSON = 114,
    T_XML = 142,
    T_FLOAT4 = 700,
    T_FLOAT8 = 701,
    T_INET = 869,
    T_CIDR = 650,
    T_BPCHAR = 1042,
    T_VARCHAR = 1043,
    T_DATE = 1082,
    T_TIME = 1083,
    T_TIMESTAMP = 1114,
    T_TIMESTAMPTZ = 1184,
    T_INTERVAL = 1186,
    T_TIMETZ = 1266,
    T_NUMERIC = 1700,
    T_UUID = 2950,
    T_JSONB = 3802,
};

/* Array type oid -> element type oid, for built-ins (no catalog needed). */
static const uint32_t builtin_arrays[][2] = {
    {1000, T_BOOL},        {1001, T_BYTEA},    {1002, T_CHAR},   {1003, T_NAME},
    {1016, T_INT8},        {1005, T_INT2},     {1007, T_INT4},   {1009, T_TEXT},
    {1028, T_OID},         {199, T_JSON},      {143, T_XML},     {1021, T_FLOAT4},
    {1022, T_FLOAT8},      {1041, T_INET},     {651, T_CIDR},    {1014, T_BPCHAR},
    {1015, T_VARCHAR},     {1182, T_DATE},     {1183, T_TIME},   {1115, T_TIMESTAMP},
    {1185, T_TIMESTAMPTZ}, {1187, T_INTERVAL}, {1270, T_TIMETZ}, {1231, T_NUMERIC},
    {2951, T_UUID},        {3807, T_JSONB},
};

static bool is_builtin_scalar(uint32_t oid)
{
    switch (oid) {
    case T_BOOL:
    case T_BYTEA:
    case T_CHAR:
    case T_NAME:
    case T_INT8:
    case T_INT2:
    case T_INT4:
    case T_TEXT:
    case T_OID:
    case T_JSON:
    case T_XML:
    case T_FLOAT4:
    case T_FLOAT8:
    case T_INET:
    case T_CIDR:
    case T_BPCHAR:
    case T_VARCHAR:
    case T_DATE:
    case T_TIME:
    case T_TIMESTAMP:
    case T_TIMESTAMPTZ:
    case T_INTERVAL:
    case T_TIMETZ:
    case T_NUMERIC:
    case T_UUID:
    case T_JSONB:
        return true;
    default:
        return false;
    }
}

/* Declared precision of time/timestamp (typmod -1: 6, PostgreSQL's maximum). */
static int time_precision(int32_t typmod)
{
    return typmod < 0 ? 6 : typmod;
}

outboxd_cdc_kind_t outboxd_cdc_kind(uint32_t type_oid, int32_t typmod)
{
    switch (type_oid) {
    case T_INT2:
        return OUTBOXD_CDC_T_INT16;
    case T_INT4:
        return OUTBOXD_CDC_T_INT32;
    case T_INT8:
    case T_OID:
        return OUTBOXD_CDC_T_INT64;
    case T_FLOAT4:
        return OUTBOXD_CDC_T_FLOAT32;
    case T_FLOAT8:
        return OUTBOXD_CDC_T_FLOAT64;
    case T_BOOL:
        return OUTBOXD_CDC_T_BOOL;
    case T_BYTEA:
        return OUTBOXD_CDC_T_BYTES;
    case T_NUMERIC: {
        /* numeric(p,s): typmod = ((p << 16) | (s & 0x7ff)) + 4. A scale
         * outside [0, p] (PostgreSQL 15 allows it) has no Avro decimal. */
        if (typmod < 4)
            return OUTBOXD_CDC_T_VARDECIMAL;
        int32_t p = ((typmod - 4) >> 16) & 0xffff, s = (typmod - 4) & 0x7ff;
        if (s > 0x3ff)
            return OUTBOXD_CDC_T_VARDECIMAL;
        return s <= p ? OUTBOXD_CDC_T_DECIMAL : OUTBOXD_CDC_T_VARDECIMAL;
    }
    case T_DATE:
        return OUTBOXD_CDC_T_DATE;
    case T_TIME:
        return time_precision(typmod) <= 3 ? OUTBOXD_CDC_T_TIME_MILLIS : OUTBOXD_CDC_T_TIME_MICROS;
    case T_TIMESTAMP:
        return time_precision(typmod) <= 3 ? OUTBOXD_CDC_T_TS_MILLIS : OUTBOXD_CDC_T_TS_MICROS;
    case T_TIMETZ:
        return OUTBOXD_CDC_T_ZTIME;
    case T_TIMESTAMPTZ:
        return OUTBOXD_CDC_T_ZTIMESTAMP;
    case T_INTERVAL:
        return OUTBOXD_CDC_T_INTERVAL;
    case T_UUID:
        return OUTBOXD_CDC_T_UUID;
    case T_JSON:
    case T_JSONB:
        return OUTBOXD_CDC_T_JSON;
    default:
        return OUTBOXD_CDC_T_STRING;
    }
}

static void decimal_ps(int32_t typmod, int *p, int *s)
{
    *p = ((typmod - 4) >> 16) & 0xffff;
    *s = (typmod - 4) & 0x7ff;
}

/* Connect type, Connect/Debezium logical name (or NULL), Avro primitive. */
typedef struct kind_info {
    const char *connect;
    const char *name;
    const char *avro;
} kind_info_t;

static const kind_info_t kinfo[] = {
    [OUTBOXD_CDC_T_STRING] = {"string", NULL, "string"},
    [OUTBOXD_CDC_T_INT16] = {"int16", NULL, "int"},
    [OUTBOXD_CDC_T_INT32] = {"int32", NULL, "int"},
    [OUTBOXD_CDC_T_INT64] = {"int64", NULL, "long"},
    [OUTBOXD_CDC_T_FLOAT32] = {"float", NULL, "float"},
    [OUTBOXD_CDC_T_FLOAT64] = {"double", NULL, "double"},
    [OUTBOXD_CDC_T_BOOL] = {"boolean", NULL, "boolean"},
    [OUTBOXD_CDC_T_BYTES] = {"bytes", NULL, "bytes"},
    [OUTBOXD_CDC_T_DECIMAL] = {"bytes", "org.apache.kafka.connect.data.Decimal", "bytes"},
    [OUTBOXD_CDC_T_VARDECIMAL] = {"struct", "io.debezium.data.VariableScaleDecimal", NULL},
    [OUTBOXD_CDC_T_DATE] = {"int32", "io.debezium.time.Date", "int"},
    [OUTBOXD_CDC_T_TIME_MILLIS] = {"int32", "io.debezium.time.Time", "int"},
    [OUTBOXD_CDC_T_TIME_MICROS] = {"int64", "io.debezium.time.MicroTime", "long"},
    [OUTBOXD_CDC_T_TS_MILLIS] = {"int64", "io.debezium.time.Timestamp", "long"},
    [OUTBOXD_CDC_T_TS_MICROS] = {"int64", "io.debezium.time.MicroTimestamp", "long"},
    [OUTBOXD_CDC_T_ZTIME] = {"string", "io.debezium.time.ZonedTime", "string"},
    [OUTBOXD_CDC_T_ZTIMESTAMP] = {"string", "io.debezium.time.ZonedTimestamp", "string"},
    [OUTBOXD_CDC_T_INTERVAL] = {"int64", "io.debezium.time.MicroDuration", "long"},
    [OUTBOXD_CDC_T_UUID] = {"string", "io.debezium.data.Uuid", "string"},
    [OUTBOXD_CDC_T_JSON] = {"string", "io.debezium.data.Json", "string"},
};

static bool stringish(outboxd_cdc_kind_t k)
{
    return kinfo[k].avro && strcmp(kinfo[k].avro, "string") == 0;
}

/* ---- value conversion ---------------------------------------------------- */

typedef enum { V_NULL, V_LONG, V_FLOAT, V_DOUBLE, V_BOOL, V_STR, V_BYTES, V_VARDEC } vtag_t;

typedef struct val {
    vtag_t tag;
    int64_t l;
    double d;
    const char *s; /* V_STR, V_BYTES, V_VARDEC (unscaled bytes); V_FLOAT/V_DOUBLE: text */
    size_t n;
    int32_t scale; /* V_VARDEC */
} val_t;

static int bad(char *reason, size_t reason_size, const char *what, const char *text, size_t len)
{
    snprintf(reason, reason_size, "cannot read '%.*s' as %s", (int)(len > 80 ? 80 : len), text,
             what);
    return 1;
}

static bool parse_int(const char *s, size_t len, int64_t min, int64_t max, int64_t *out)
{
    char tmp[32];
    if (len == 0 || len >= sizeof(tmp))
        return false;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(tmp, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Reads n digits at *p. */
static bool digits(const char **p, const char *end, int n, int64_t *out)
{
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (*p >= end || (**p < '0' || **p > '9'))
            return false;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return true;
}

/* "YYYY-MM-DD" (year may have more digits); *p advanced. bc: the text
 * ends in " BC" (year y BC is astronomical year 1 - y). */
static bool parse_ymd(const char **p, const char *end, bool bc, int64_t *days)
{
    int64_t y = 0, m, d;
    int nd = 0;
    while (*p < end && **p >= '0' && **p <= '9' && nd < 9) {
        y = y * 10 + (**p - '0');
        (*p)++;
        nd++;
    }
    if (nd < 4 || *p >= end || **p != '-')
        return false;
    (*p)++;
    if (!digits(p, end, 2, &m) || *p >= end || **p != '-')
        return false;
    (*p)++;
    if (!digits(p, end, 2, &d) || m < 1 || m > 12 || d < 1 || d > 31)
        return false;
    *days = days_from_civil(bc ? 1 - y : y, (unsigned)m, (unsigned)d);
    return true;
}

static bool ends_bc(const char *s, size_t len)
{
    return len >= 3 && memcmp(s + len - 3, " BC", 3) == 0;
}

/* "HH:MM:SS[.ffffff]" -> microseconds; *p advanced. */
static bool parse_hms(const char **p, const char *end, int64_t *us)
{
    int64_t h, mi, se, frac = 0;
    if (!digits(p, end, 2, &h) || *p >= end || **p != ':')
        return false;
    (*p)++;
    if (!digits(p, end, 2, &mi) || *p >= end || **p != ':')
        return false;
    (*p)++;
    if (!digits(p, end, 2, &se))
        return false;
    if (*p < end && **p == '.') {
        (*p)++;
        int n = 0;
        while (*p < end && **p >= '0' && **p <= '9') {
            if (n < 6)
                frac = frac * 10 + (**p - '0');
            n++;
            (*p)++;
        }
        if (n == 0)
            return false;
        for (; n < 6; n++)
            frac *= 10;
    }
    if (h > 24 || mi > 59 || se > 60)
        return false;
    *us = ((h * 60 + mi) * 60 + se) * 1000000 + frac;
    return true;
}

/* "+HH[:MM[:SS]]" -> seconds east of UTC; *p advanced. */
static bool parse_offset(const char **p, const char *end, int64_t *secs)
{
    if (*p >= end || (**p != '+' && **p != '-'))
        return false;
    int sign = **p == '-' ? -1 : 1;
    (*p)++;
    int64_t h, m = 0, s = 0;
    if (!digits(p, end, 2, &h))
        return false;
    if (*p < end && **p == ':') {
        (*p)++;
        if (!digits(p, end, 2, &m))
            return false;
        if (*p < end && **p == ':') {
            (*p)++;
            if (!digits(p, end, 2, &s))
                return false;
        }
    }
    *secs = sign * (h * 3600 + m * 60 + s);
    return true;
}

/* A timestamp's text: micros since the epoch, with its offset applied when
 * with_zone. BC years count astronomically (1 BC is year 0). */
static bool parse_ts(const char *s, size_t len, bool with_zone, int64_t *us)
{
    bool bc = ends_bc(s, len);
    const char *p = s, *end = s + len - (bc ? 3 : 0);
    int64_t days, t;
    if (!parse_ymd(&p, end, bc, &days))
        return false;
    if (p >= end || (*p != ' ' && *p != 'T'))
        return false;
    p++;
    if (!parse_hms(&p, end, &t))
        return false;
    int64_t off = 0;
    if (with_zone && !parse_offset(&p, end, &off))
        return false;
    if (p != end)
        return false;
    *us = days * DAY_US + t - off * 1000000;
    return true;
}

static void fmt_frac(outboxd_buf_t *b, int64_t frac_us)
{
    if (frac_us == 0)
        return;
    char f[8];
    snprintf(f, sizeof(f), "%06lld", (long long)frac_us);
    int n = 6;
    while (n > 0 && f[n - 1] == '0')
        n--;
    outboxd_buf_printf(b, ".%.*s", n, f);
}

/* Micros since the epoch as ISO 8601 in UTC, as Debezium's ZonedTimestamp
 * writes a timestamptz column: exactly width fraction digits (the column's
 * precision, 6 when undeclared; Debezium 3.0 passes the column's length to
 * ZonedTimestamp.toIsoString, zeros included), or for width 0 Java's
 * ISO_OFFSET_DATE_TIME (no trailing zeros, no fraction when zero). */
static void fmt_utc_ts(outboxd_buf_t *b, int64_t us, int width)
{
    int64_t days = us / DAY_US, rem = us % DAY_US;
    if (rem < 0) {
        rem += DAY_US;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int64_t secs = rem / 1000000;
    if (y > 9999)
        outboxd_buf_printf(b, "+%lld", (long long)y);
    else if (y < 0)
        outboxd_buf_printf(b, "-%04lld", (long long)-y);
    else
        outboxd_buf_printf(b, "%04lld", (long long)y);
    outboxd_buf_printf(b, "-%02u-%02uT%02lld:%02lld:%02lld", m, d, (long long)(secs / 3600),
                       (long long)(secs / 60 % 60), (long long)(secs % 60));
    if (width >= 1 && width <= 6) {
        char f[8];
        snprintf(f, sizeof(f), "%06lld", (long long)(rem % 1000000));
        outboxd_buf_printf(b, ".%.*s", width, f);
    } else {
        fmt_frac(b, rem % 1000000);
    }
    outboxd_buf_append_str(b, "Z");
}

/* PostgreSQL's interval text (IntervalStyle postgres):
 * "1 year 2 mons -3 days +04:05:06.5", "@ ..." is not accepted. */
static bool parse_interval(const char *s, size_t len, int64_t *us)
{
    const char *p = s, *end = s + len;
    int64_t total = 0;
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        if (p >= end)
            break;
        const char *tok = p;
        int sign = 1;
        if (*p == '-' || *p == '+') {
            sign = *p == '-' ? -1 : 1;
            p++;
        }
        const char *num = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == num)
            return false;
        if (p < end && *p == ':') {
            const char *q = num;
            int64_t h = 0;
            while (q < end && *q != ':')
                h = h * 10 + (*q++ - '0');
            q++;
            int64_t mi, se, frac = 0;
            if (!digits(&q, end, 2, &mi) || q >= end || *q != ':')
                return false;
            q++;
            if (!digits(&q, end, 2, &se))
                return false;
            if (q < end && *q == '.') {
                q++;
                int n = 0;
                while (q < end && *q >= '0' && *q <= '9') {
                    if (n < 6)
                        frac = frac * 10 + (*q - '0');
                    n++;
                    q++;
                }
                for (; n < 6; n++)
                    frac *= 10;
            }
            total += sign * (((h * 60 + mi) * 60 + se) * 1000000 + frac);
            p = q;
            continue;
        }
        int64_t n;
        if (!parse_int(tok, (size_t)(p - tok), INT64_MIN / 2, INT64_MAX / 2, &n))
            return false;
        while (p < end && *p == ' ')
            p++;
        const char *unit = p;
        while (p < end && *p != ' ')
            p++;
        size_t ul = (size_t)(p - unit);
        if (ul >= 4 && memcmp(unit, "year", 4) == 0)
            total += n * 12 * MONTH_US;
        else if (ul >= 3 && memcmp(unit, "mon", 3) == 0)
            total += n * MONTH_US;
        else if (ul >= 3 && memcmp(unit, "day", 3) == 0)
            total += n * DAY_US;
        else
            return false;
    }
    *us = total;
    return true;
}

/*
 * numeric text -> two's-complement big-endian unscaled bytes with the given
 * scale (scale < 0: as many as the text has; *scale_out gets it). Returns
 * false when the text is not a plain number (NaN, Infinity) or on OOM.
 */
static bool parse_decimal(const char *s, size_t len, int scale, outboxd_buf_t *out,
                          int32_t *scale_out)
{
    size_t i = 0;
    bool neg = false;
    if (i < len && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    const char *dot = memchr(s + i, '.', len - i);
    size_t nfrac = dot ? (size_t)(s + len - dot - 1) : 0;
    if (scale < 0)
        scale = (int)nfrac;
    if (i >= len || (!(s[i] >= '0' && s[i] <= '9') && s[i] != '.'))
        return false;
    /* little-endian magnitude, built digit by digit */
    outboxd_buf_reset(out);
    size_t cap = len / 2 + 8 + (size_t)scale / 2;
    unsigned char *mag = calloc(cap, 1);
    if (!mag)
        return false;
    size_t n = 1;
    size_t taken_frac = 0;
    bool ok = true;
    for (; i < len; i++) {
        int dg;
        if (s[i] == '.')
            continue;
        if (s[i] < '0' || s[i] > '9') {
            ok = false;
            break;
        }
        if (dot && s + i > dot) {
            if (taken_frac >= (size_t)scale)
                continue; /* more digits than the scale: PostgreSQL never sends that */
            taken_frac++;
        }
        dg = s[i] - '0';
        unsigned carry = (unsigned)dg;
        for (size_t k = 0; k < n; k++) {
            unsigned v = mag[k] * 10u + carry;
            mag[k] = (unsigned char)v;
            carry = v >> 8;
        }
        if (carry) {
            if (n >= cap) {
                ok = false;
                break;
            }
            mag[n++] = (unsigned char)carry;
        }
    }
    for (; ok && taken_frac < (size_t)scale; taken_frac++) {
        unsigned carry = 0;
        for (size_t k = 0; k < n; k++) {
            unsigned v = mag[k] * 10u + carry;
            mag[k] = (unsigned char)v;
            carry = v >> 8;
        }
        if (carry) {
            if (n >= cap) {
                unsigned char *g = realloc(mag, cap * 2);
                if (!g) {
                    ok = false;
                    break;
                }
                memset(g + cap, 0, cap);
                mag = g;
                cap *= 2;
            }
            mag[n++] = (unsigned char)carry;
        }
    }
    if (!ok) {
        free(mag);
        return false;
    }
    while (n > 1 && mag[n - 1] == 0)
        n--;
    if (neg) {
        /* two's complement of the magnitude */
        unsigned carry = 1;
        for (size_t k = 0; k < n; k++) {
            unsigned v = (unsigned)(unsigned char)~mag[k] + carry;
            mag[k] = (unsigned char)v;
            carry = v >> 8;
        }
    }
    /* a sign byte when the top bit disagrees with the sign */
    bool top = (mag[n - 1] & 0x80) != 0;
    bool zero = n == 1 && mag[0] == 0;
    unsigned char ext = neg ? 0xff : 0x00;
    if (!zero && top != neg)
        ok = outboxd_buf_append(out, &ext, 1);
    /* drop redundant sign bytes of a negative number */
    while (ok && neg && n > 1 && mag[n - 1] == 0xff && (mag[n - 2] & 0x80))
        n--;
    for (size_t k = n; ok && k > 0; k--)
        ok = outboxd_buf_append(out, &mag[k - 1], 1);
    free(mag);
    *scale_out = scale;
    return ok;
}

static int convert(outboxd_cdc_kind_t kind, int32_t kmod, const char *s, size_t len,
                   outboxd_buf_t *scratch, val_t *v, char *reason, size_t reason_size)
{
    memset(v, 0, sizeof(*v));
    switch (kind) {
    case OUTBOXD_CDC_T_STRING:
    case OUTBOXD_CDC_T_UUID:
    case OUTBOXD_CDC_T_JSON:
        v->tag = V_STR;
        v->s = s;
        v->n = len;
        return 0;
    case OUTBOXD_CDC_T_INT16:
    case OUTBOXD_CDC_T_INT32:
    case OUTBOXD_CDC_T_INT64: {
        int64_t lo = kind == OUTBOXD_CDC_T_INT16   ? INT16_MIN
                     : kind == OUTBOXD_CDC_T_INT32 ? INT32_MIN
                                                   : INT64_MIN;
        int64_t hi = kind == OUTBOXD_CDC_T_INT16   ? INT16_MAX
                     : kind == OUTBOXD_CDC_T_INT32 ? INT32_MAX
                                                   : INT64_MAX;
        v->tag = V_LONG;
        if (!parse_int(s, len, lo, hi, &v->l))
            return bad(reason, reason_size, kinfo[kind].connect, s, len);
        return 0;
    }
    case OUTBOXD_CDC_T_FLOAT32:
    case OUTBOXD_CDC_T_FLOAT64: {
        char tmp[64];
        if (len == 0 || len >= sizeof(tmp))
            return bad(reason, reason_size, "a floating-point number", s, len);
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        char *end;
        v->d = strtod(tmp, &end);
        if (*end)
            return bad(reason, reason_size, "a floating-point number", s, len);
        v->tag = kind == OUTBOXD_CDC_T_FLOAT32 ? V_FLOAT : V_DOUBLE;
        v->s = s;
        v->n = len;
        return 0;
    }
    case OUTBOXD_CDC_T_BOOL:
        if (len != 1 || (s[0] != 't' && s[0] != 'f'))
            return bad(reason, reason_size, "boolean", s, len);
        v->tag = V_BOOL;
        v->l = s[0] == 't';
        return 0;
    case OUTBOXD_CDC_T_BYTES:
        if (!outboxd_bytea_parse(s, len, scratch))
            return bad(reason, reason_size, "bytea", s, len);
        v->tag = V_BYTES;
        v->s = scratch->data ? scratch->data : "";
        v->n = scratch->len;
        return 0;
    case OUTBOXD_CDC_T_DECIMAL:
    case OUTBOXD_CDC_T_VARDECIMAL: {
        /* NaN and +-Infinity have no Decimal form (decimal.handling.mode
         * precise): null, as Debezium emits them. */
        if ((len == 3 && memcmp(s, "NaN", 3) == 0) || (len == 8 && memcmp(s, "Infinity", 8) == 0) ||
            (len == 9 && memcmp(s, "-Infinity", 9) == 0)) {
            v->tag = V_NULL;
            return 0;
        }
        int p = 0, sc = -1;
        if (kind == OUTBOXD_CDC_T_DECIMAL)
            decimal_ps(kmod, &p, &sc);
        if (!parse_decimal(s, len, sc, scratch, &v->scale))
            return bad(reason, reason_size, "numeric", s, len);
        v->tag = kind == OUTBOXD_CDC_T_DECIMAL ? V_BYTES : V_VARDEC;
        v->s = scratch->data;
        v->n = scratch->len;
        return 0;
    }
    case OUTBOXD_CDC_T_DATE: {
        v->tag = V_LONG;
        if (len == 8 && memcmp(s, "infinity", 8) == 0) {
            v->l = INT32_MAX;
            return 0;
        }
        if (len == 9 && memcmp(s, "-infinity", 9) == 0) {
            v->l = INT32_MIN;
            return 0;
        }
        bool bc = ends_bc(s, len);
        const char *p = s, *end = s + len - (bc ? 3 : 0);
        int64_t days;
        if (!parse_ymd(&p, end, bc, &days) || p != end)
            return bad(reason, reason_size, "date", s, len);
        if (days < INT32_MIN || days > INT32_MAX)
            return bad(reason, reason_size, "date", s, len);
        v->l = days;
        return 0;
    }
    case OUTBOXD_CDC_T_TIME_MILLIS:
    case OUTBOXD_CDC_T_TIME_MICROS: {
        const char *p = s;
        int64_t us;
        if (!parse_hms(&p, s + len, &us) || p != s + len)
            return bad(reason, reason_size, "time", s, len);
        v->tag = V_LONG;
        v->l = kind == OUTBOXD_CDC_T_TIME_MILLIS ? us / 1000 : us;
        return 0;
    }
    case OUTBOXD_CDC_T_TS_MILLIS:
    case OUTBOXD_CDC_T_TS_MICROS: {
        v->tag = V_LONG;
        if (len == 8 && memcmp(s, "infinity", 8) == 0) {
            v->l = INT64_MAX;
            return 0;
        }
        if (len == 9 && memcmp(s, "-infinity", 9) == 0) {
            v->l = INT64_MIN;
            return 0;
        }
        int64_t us;
        if (!parse_ts(s, len, false, &us))
            return bad(reason, reason_size, "timestamp", s, len);
        /* floor division: before 1970 the millisecond is the one below */
        v->l = kind == OUTBOXD_CDC_T_TS_MICROS ? us : (us >= 0 ? us / 1000 : -((-us + 999) / 1000));
        return 0;
    }
    case OUTBOXD_CDC_T_ZTIMESTAMP: {
        v->tag = V_STR;
        if ((len == 8 && memcmp(s, "infinity", 8) == 0) ||
            (len == 9 && memcmp(s, "-infinity", 9) == 0)) {
            v->s = s;
            v->n = len;
            return 0;
        }
        int64_t us;
        if (!parse_ts(s, len, true, &us))
            return bad(reason, reason_size, "timestamptz", s, len);
        outboxd_buf_reset(scratch);
        fmt_utc_ts(scratch, us, time_precision(kmod));
        v->s = scratch->data;
        v->n = scratch->len;
        return 0;
    }
    case OUTBOXD_CDC_T_ZTIME: {
        const char *p = s, *end = s + len;
        int64_t us, off;
        if (!parse_hms(&p, end, &us) || !parse_offset(&p, end, &off) || p != end)
            return bad(reason, reason_size, "timetz", s, len);
        us -= off * 1000000;
        us %= DAY_US;
        if (us < 0)
            us += DAY_US;
        int64_t secs = us / 1000000;
        outboxd_buf_reset(scratch);
        outboxd_buf_printf(scratch, "%02lld:%02lld:%02lld", (long long)(secs / 3600),
                           (long long)(secs / 60 % 60), (long long)(secs % 60));
        fmt_frac(scratch, us % 1000000);
        outboxd_buf_append_str(scratch, "Z");
        v->tag = V_STR;
        v->s = scratch->data;
        v->n = scratch->len;
        return 0;
    }
    case OUTBOXD_CDC_T_INTERVAL:
        v->tag = V_LONG;
        if (!parse_interval(s, len, &v->l))
            return bad(reason, reason_size, "interval (IntervalStyle postgres)", s, len);
        return 0;
    }
    return bad(reason, reason_size, "a known type", s, len);
}

/* ---- SHA-256 (FIPS 180-4), for mask_hash ---------------------------------- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void outboxd_cdc_sha256_hex(const void *data, size_t len, char out[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t n = len;
    for (; n >= 64; n -= 64, p += 64)
        sha_block(h, p);
    unsigned char tail[128] = {0};
    if (n)
        memcpy(tail, p, n);
    tail[n] = 0x80;
    size_t tl = n + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - (size_t)i] = (unsigned char)(bits >> (8 * i));
    sha_block(h, tail);
    if (tl == 128)
        sha_block(h, tail + 64);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", h[i]);
}

/* ---- writers -------------------------------------------------------------- */

static bool json_str(outboxd_buf_t *b, const char *s, size_t n)
{
    if (!outboxd_buf_reserve(b, n + 2))
        return false;
    bool ok = outboxd_buf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        ok = outboxd_buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"':
            ok = ok && outboxd_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            ok = ok && outboxd_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            ok = ok && outboxd_buf_append(b, "\\n", 2);
            break;
        case '\t':
            ok = ok && outboxd_buf_append(b, "\\t", 2);
            break;
        case '\r':
            ok = ok && outboxd_buf_append(b, "\\r", 2);
            break;
        default:
            ok = ok && outboxd_buf_printf(b, "\\u%04x", c);
        }
    }
    return ok && outboxd_buf_append(b, s + run, n - run) && outboxd_buf_append(b, "\"", 1);
}

static bool json_base64(outboxd_buf_t *b, const char *s, size_t n)
{
    return outboxd_buf_append(b, "\"", 1) && outboxd_buf_base64(b, s, n) &&
           outboxd_buf_append(b, "\"", 1);
}

static bool json_val(outboxd_buf_t *b, const val_t *v)
{
    switch (v->tag) {
    case V_NULL:
        return outboxd_buf_append_str(b, "null");
    case V_LONG:
        return outboxd_buf_printf(b, "%lld", (long long)v->l);
    case V_BOOL:
        return outboxd_buf_append_str(b, v->l ? "true" : "false");
    case V_FLOAT:
    case V_DOUBLE:
        /* Jackson quotes non-finite numbers (QUOTE_NON_NUMERIC_NUMBERS). */
        if (isnan(v->d))
            return outboxd_buf_append_str(b, "\"NaN\"");
        if (isinf(v->d))
            return outboxd_buf_append_str(b, v->d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        /* PostgreSQL prints the shortest exact form, a valid JSON number. */
        return outboxd_buf_append(b, v->s, v->n);
    case V_STR:
        return json_str(b, v->s, v->n);
    case V_BYTES:
        return json_base64(b, v->s, v->n);
    case V_VARDEC:
        return outboxd_buf_printf(b, "{\"scale\":%d,\"value\":", v->scale) &&
               json_base64(b, v->s, v->n) && outboxd_buf_append_str(b, "}");
    }
    return false;
}

static bool avro_val(outboxd_buf_t *b, const val_t *v)
{
    switch (v->tag) {
    case V_NULL:
        return true;
    case V_LONG:
        return outboxd_avro_write_long(b, v->l);
    case V_BOOL: {
        char c = v->l ? 1 : 0;
        return outboxd_buf_append(b, &c, 1);
    }
    case V_FLOAT: {
        float f = (float)v->d;
        unsigned char o[4];
        uint32_t u;
        memcpy(&u, &f, 4);
        for (int i = 0; i < 4; i++)
            o[i] = (unsigned char)(u >> (8 * i));
        return outboxd_buf_append(b, o, 4);
    }
    case V_DOUBLE: {
        unsigned char o[8];
        uint64_t u;
        memcpy(&u, &v->d, 8);
        for (int i = 0; i < 8; i++)
            o[i] = (unsigned char)(u >> (8 * i));
        return outboxd_buf_append(b, o, 8);
    }
    case V_STR:
    case V_BYTES:
        return outboxd_avro_write_string(b, v->s, v->n);
    case V_VARDEC:
        return outboxd_avro_write_long(b, v->scale) && outboxd_avro_write_string(b, v->s, v->n);
    }
    return false;
}

/* ---- schemas -------------------------------------------------------------- */

/* Avro names allow [A-Za-z0-9_], not starting with a digit. */
static char *avro_ident(const char *s)
{
    size_t n = strlen(s);
    char *o = malloc(n + 2);
    if (!o)
        return NULL;
    size_t j = 0;
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        o[j++] = '_';
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        o[j++] =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '_';
    }
    o[j] = '\0';
    return o;
}

/* The Avro type of one column (without the null union), as AvroConverter
 * writes a Connect schema. *vsd_defined: VariableScaleDecimal is a named
 * type, defined at its first use and referenced by name afterwards. */
static bool avro_scalar_type(outboxd_buf_t *b, outboxd_cdc_kind_t k, int32_t kmod,
                             bool *vsd_defined)
{
    if (k == OUTBOXD_CDC_T_VARDECIMAL) {
        if (*vsd_defined)
            return outboxd_buf_append_str(b, "\"io.debezium.data.VariableScaleDecimal\"");
        *vsd_defined = true;
        return outboxd_buf_append_str(
            b, "{\"type\":\"record\",\"name\":\"VariableScaleDecimal\",\"namespace\":"
               "\"io.debezium.data\",\"fields\":[{\"name\":\"scale\",\"type\":\"int\"},"
               "{\"name\":\"value\",\"type\":\"bytes\"}],\"connect.doc\":\"Variable scaled "
               "decimal\",\"connect.version\":1,\"connect.name\":"
               "\"io.debezium.data.VariableScaleDecimal\"}");
    }
    if (k == OUTBOXD_CDC_T_DECIMAL) {
        int p, s;
        decimal_ps(kmod, &p, &s);
        return outboxd_buf_printf(
            b,
            "{\"type\":\"bytes\",\"scale\":%d,\"precision\":%d,\"connect.version\":1,"
            "\"connect.parameters\":{\"scale\":\"%d\",\"connect.decimal.precision\":\"%d\"},"
            "\"connect.name\":\"org.apache.kafka.connect.data.Decimal\",\"logicalType\":"
            "\"decimal\"}",
            s, p, s, p);
    }
    if (k == OUTBOXD_CDC_T_INT16)
        return outboxd_buf_append_str(b, "{\"type\":\"int\",\"connect.type\":\"int16\"}");
    if (kinfo[k].name)
        return outboxd_buf_printf(b,
                                  "{\"type\":\"%s\",\"connect.version\":1,\"connect.name\":\"%s\"}",
                                  kinfo[k].avro, kinfo[k].name);
    return outboxd_buf_printf(b, "\"%s\"", kinfo[k].avro);
}

static bool avro_col_type(outboxd_buf_t *b, const col_t *c, bool *vsd)
{
    if (!c->array)
        return avro_scalar_type(b, c->kind, c->kmod, vsd);
    return outboxd_buf_append_str(b, "{\"type\":\"array\",\"items\":[\"null\",") &&
           avro_scalar_type(b, c->kind, c->kmod, vsd) && outboxd_buf_append_str(b, "]}");
}

/* The Connect schema of one column as JsonConverter writes it. */
static bool connect_scalar(outboxd_buf_t *b, outboxd_cdc_kind_t k, int32_t kmod, bool optional)
{
    const char *opt = optional ? "true" : "false";
    if (k == OUTBOXD_CDC_T_VARDECIMAL)
        return outboxd_buf_printf(
            b,
            "{\"type\":\"struct\",\"fields\":[{\"type\":\"int32\",\"optional\":false,\"field\":"
            "\"scale\"},{\"type\":\"bytes\",\"optional\":false,\"field\":\"value\"}],"
            "\"optional\":%s,\"name\":\"io.debezium.data.VariableScaleDecimal\",\"version\":1,"
            "\"doc\":\"Variable scaled decimal\"",
            opt);
    if (k == OUTBOXD_CDC_T_DECIMAL) {
        int p, s;
        decimal_ps(kmod, &p, &s);
        return outboxd_buf_printf(b,
                                  "{\"type\":\"bytes\",\"optional\":%s,\"name\":"
                                  "\"org.apache.kafka.connect.data.Decimal\",\"version\":1,"
                                  "\"parameters\":{\"scale\":\"%d\",\"connect.decimal."
                                  "precision\":\"%d\"}",
                                  opt, s, p);
    }
    if (kinfo[k].name)
        return outboxd_buf_printf(b,
                                  "{\"type\":\"%s\",\"optional\":%s,\"name\":\"%s\",\"version\":1",
                                  kinfo[k].connect, opt, kinfo[k].name);
    return outboxd_buf_printf(b, "{\"type\":\"%s\",\"optional\":%s", kinfo[k].connect, opt);
}

static bool connect_field(outboxd_buf_t *b, const col_t *c, bool optional)
{
    bool ok;
    if (c->array)
        ok = outboxd_buf_append_str(b, "{\"type\":\"array\",\"items\":") &&
             connect_scalar(b, c->kind, c->kmod, true) && outboxd_buf_append_str(b, "}") &&
             outboxd_buf_printf(b, ",\"optional\":%s", optional ? "true" : "false");
    else
        ok = connect_scalar(b, c->kind, c->kmod, optional);
    return ok && outboxd_buf_append_str(b, ",\"field\":") &&
           json_str(b, c->name, strlen(c->name)) && outboxd_buf_append_str(b, "}");
}

static const char source_avro[] =
    "{\"type\":\"record\",\"name\":\"Source\",\"namespace\":\"io.debezium.connector.postgresql\","
    "\"fields\":[{\"name\":\"version\",\"type\":\"string\"},{\"name\":\"connector\",\"type\":"
    "\"string\"},{\"name\":\"name\",\"type\":\"string\"},{\"name\":\"ts_ms\",\"type\":\"long\"},"
    "{\"name\":\"snapshot\",\"type\":[{\"type\":\"string\",\"connect.version\":1,"
    "\"connect.parameters\":{\"allowed\":\"true,first,first_in_data_collection,"
    "last_in_data_collection,last,false,incremental\"},\"connect.default\":\"false\","
    "\"connect.name\":\"io.debezium.data.Enum\"},\"null\"],\"default\":\"false\"},"
    "{\"name\":\"db\",\"type\":\"string\"},{\"name\":\"sequence\",\"type\":[\"null\",\"string\"],"
    "\"default\":null},{\"name\":\"ts_us\",\"type\":[\"null\",\"long\"],\"default\":null},"
    "{\"name\":\"ts_ns\",\"type\":[\"null\",\"long\"],\"default\":null},{\"name\":\"schema\","
    "\"type\":\"string\"},{\"name\":\"table\",\"type\":\"string\"},{\"name\":\"txId\",\"type\":"
    "[\"null\",\"long\"],\"default\":null},{\"name\":\"lsn\",\"type\":[\"null\",\"long\"],"
    "\"default\":null},{\"name\":\"xmin\",\"type\":[\"null\",\"long\"],\"default\":null}],"
    "\"connect.name\":\"io.debezium.connector.postgresql.Source\"}";

static const char transaction_avro[] =
    "{\"name\":\"transaction\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"block\","
    "\"namespace\":\"event\",\"fields\":[{\"name\":\"id\",\"type\":\"string\"},{\"name\":"
    "\"total_order\",\"type\":\"long\"},{\"name\":\"data_collection_order\",\"type\":\"long\"}],"
    "\"connect.version\":1,\"connect.name\":\"event.block\"}],\"default\":null}";

static const char source_connect[] =
    "{\"type\":\"struct\",\"fields\":[{\"type\":\"string\",\"optional\":false,\"field\":"
    "\"version\"},{\"type\":\"string\",\"optional\":false,\"field\":\"connector\"},{\"type\":"
    "\"string\",\"optional\":false,\"field\":\"name\"},{\"type\":\"int64\",\"optional\":false,"
    "\"field\":\"ts_ms\"},{\"type\":\"string\",\"optional\":true,\"name\":"
    "\"io.debezium.data.Enum\",\"version\":1,\"parameters\":{\"allowed\":\"true,first,first_in_"
    "data_collection,last_in_data_collection,last,false,incremental\"},"
    "\"default\":\"false\",\"field\":\"snapshot\"},{\"type\":\"string\",\"optional\":false,"
    "\"field\":\"db\"},{\"type\":\"string\",\"optional\":true,\"field\":\"sequence\"},{\"type\":"
    "\"int64\",\"optional\":true,\"field\":\"ts_us\"},{\"type\":\"int64\",\"optional\":true,"
    "\"field\":\"ts_ns\"},{\"type\":\"string\",\"optional\":false,\"field\":\"schema\"},"
    "{\"type\":\"string\",\"optional\":false,\"field\":\"table\"},{\"type\":\"int64\","
    "\"optional\":true,\"field\":\"txId\"},{\"type\":\"int64\",\"optional\":true,\"field\":"
    "\"lsn\"},{\"type\":\"int64\",\"optional\":true,\"field\":\"xmin\"}],\"optional\":false,"
    "\"name\":\"io.debezium.connector.postgresql.Source\",\"field\":\"source\"}";

static const char transaction_connect[] =
    "{\"type\":\"struct\",\"fields\":[{\"type\":\"string\",\"optional\":false,\"field\":\"id\"},"
    "{\"type\":\"int64\",\"optional\":false,\"field\":\"total_order\"},{\"type\":\"int64\","
    "\"optional\":false,\"field\":\"data_collection_order\"}],\"optional\":true,\"name\":"
    "\"event.block\",\"version\":1,\"field\":\"transaction\"}";

static bool build_schemas(rel_entry_t *e)
{
    outboxd_buf_t b = {0};
    bool ok = true;
    bool vsd = false;
    /* Avro key: the key columns, required (primary-key columns are NOT NULL) */
    ok = outboxd_buf_printf(
        &b, "{\"type\":\"record\",\"name\":\"Key\",\"namespace\":\"%s\",\"fields\":[", e->ns);
    for (int i = 0; ok && i < e->nkey; i++) {
        const col_t *c = &e->cols[e->key[i]];
        ok = outboxd_buf_printf(&b, "%s{\"name\":\"%s\",\"type\":", i ? "," : "", c->avro_name) &&
             avro_col_type(&b, c, &vsd) && outboxd_buf_append_str(&b, "}");
    }
    ok = ok && outboxd_buf_printf(&b, "],\"connect.name\":\"%s.Key\"}", e->ns);
    e->avro_key = ok ? strdup(b.data) : NULL;
    outboxd_buf_reset(&b);
    /* Avro value: the Envelope */
    vsd = false;
    ok = outboxd_buf_printf(&b,
                            "{\"type\":\"record\",\"name\":\"Envelope\",\"namespace\":\"%s\","
                            "\"fields\":[{\"name\":\"before\",\"type\":[\"null\",{\"type\":"
                            "\"record\",\"name\":\"Value\",\"fields\":[",
                            e->ns);
    bool first = true;
    for (int i = 0; ok && i < e->ncols; i++) {
        const col_t *c = &e->cols[i];
        if (c->excluded)
            continue;
        ok = outboxd_buf_printf(&b, "%s{\"name\":\"%s\",\"type\":[\"null\",", first ? "" : ",",
                                c->avro_name) &&
             (c->mask == 'h' ? outboxd_buf_append_str(&b, "\"string\"")
                             : avro_col_type(&b, c, &vsd)) &&
             outboxd_buf_append_str(&b, "],\"default\":null}");
        first = false;
    }
    ok = ok &&
         outboxd_buf_printf(&b,
                            "],\"connect.name\":\"%s.Value\"}],\"default\":null},{\"name\":"
                            "\"after\",\"type\":[\"null\",\"Value\"],\"default\":null},"
                            "{\"name\":\"source\",\"type\":%s},%s,{\"name\":\"op\",\"type\":"
                            "\"string\"},{\"name\":\"ts_ms\",\"type\":[\"null\",\"long\"],"
                            "\"default\":null},{\"name\":\"ts_us\",\"type\":[\"null\",\"long\"],"
                            "\"default\":null},{\"name\":\"ts_ns\",\"type\":[\"null\",\"long\"],"
                            "\"default\":null}],\"connect.version\":2,\"connect.name\":"
                            "\"%s.Envelope\"}",
                            e->ns, source_avro, transaction_avro, e->ns);
    e->avro_value = ok ? strdup(b.data) : NULL;
    outboxd_buf_reset(&b);
    /* Connect (JsonConverter) key */
    ok = outboxd_buf_append_str(&b, "{\"type\":\"struct\",\"fields\":[");
    for (int i = 0; ok && i < e->nkey; i++)
        ok = (i == 0 || outboxd_buf_append_str(&b, ",")) &&
             connect_field(&b, &e->cols[e->key[i]], false);
    ok = ok && outboxd_buf_printf(&b, "],\"optional\":false,\"name\":\"%s.Key\"}", e->ns);
    e->conn_key = ok ? strdup(b.data) : NULL;
    outboxd_buf_reset(&b);
    /* Connect value */
    outboxd_buf_t row = {0};
    ok = outboxd_buf_append_str(&row, "{\"type\":\"struct\",\"fields\":[");
    first = true;
    for (int i = 0; ok && i < e->ncols; i++) {
        const col_t *c = &e->cols[i];
        if (c->excluded)
            continue;
        col_t hashed = *c;
        if (c->mask == 'h') {
            hashed.kind = OUTBOXD_CDC_T_STRING;
            hashed.array = false;
        }
        /* Debezium makes a NOT NULL column a required field. Key columns
         * (primary key, replica identity index) are NOT NULL by
         * PostgreSQL's rules; other columns are optional (pgoutput does not
         * say NOT NULL: README, Differences from Debezium). */
        bool required = false;
        for (int k = 0; k < e->nkey && c->mask != 'n'; k++)
            required = required || e->key[k] == i;
        ok =
            (first || outboxd_buf_append_str(&row, ",")) && connect_field(&row, &hashed, !required);
        first = false;
    }
    ok = ok &&
         outboxd_buf_printf(&row, "],\"optional\":true,\"name\":\"%s.Value\",\"field\":", e->ns);
    ok = ok &&
         outboxd_buf_printf(&b,
                            "{\"type\":\"struct\",\"fields\":[%s\"before\"},%s\"after\"},%s,%s,"
                            "{\"type\":\"string\",\"optional\":false,\"field\":\"op\"},{\"type\":"
                            "\"int64\",\"optional\":true,\"field\":\"ts_ms\"},{\"type\":\"int64\","
                            "\"optional\":true,\"field\":\"ts_us\"},{\"type\":\"int64\","
                            "\"optional\":true,\"field\":\"ts_ns\"}],\"optional\":false,"
                            "\"name\":\"%s.Envelope\",\"version\":2}",
                            row.data, row.data, source_connect, transaction_connect, e->ns);
    outboxd_buf_free(&row);
    e->conn_value = ok ? strdup(b.data) : NULL;
    outboxd_buf_free(&b);
    if (!e->avro_key || !e->avro_value || !e->conn_key || !e->conn_value)
        return false;
    char err[256];
    const char *texts[2] = {e->avro_key, e->avro_value};
    unsigned char *hdr[2] = {e->so_key, e->so_value};
    for (int k = 0; k < 2; k++) {
        char *canon = outboxd_avro_canonical_form(texts[k], err, sizeof(err));
        if (!canon)
            return false;
        uint64_t fp = outboxd_avro_fingerprint64(canon, strlen(canon));
        free(canon);
        hdr[k][0] = 0xC3;
        hdr[k][1] = 0x01;
        for (int i = 0; i < 8; i++)
            hdr[k][2 + i] = (unsigned char)(fp >> (8 * i));
    }
    return true;
}

/* ---- catalog -------------------------------------------------------------- */

static void cat_close(outboxd_cdc_t *c)
{
    if (c->cat)
        PQfinish(c->cat);
    c->cat = NULL;
}

static PGresult *cat_query(outboxd_cdc_t *c, const char *sql, uint32_t oid, char *errstr,
                           size_t errstr_size)
{
    if (c->cat && PQstatus(c->cat) != CONNECTION_OK)
        cat_close(c);
    if (!c->cat) {
        char e[512];
        c->cat = outboxd_pg_connect(c->src, false, e, sizeof(e));
        if (!c->cat) {
            snprintf(errstr, errstr_size, "cdc: catalog connection: %s", e);
            return NULL;
        }
    }
    char o[16];
    snprintf(o, sizeof(o), "%u", oid);
    const char *params[1] = {o};
    /* Bounded as every query of the source's loop: a silent server (frozen,
     * a half-open path) would otherwise hold the loop, and the sources
     * sharing its thread, for good; failing, the source rewinds and
     * reconnects. */
    PGresult *r = outboxd_pg_query_bounded(
        c->cat, sql, 1, params, "cdc: catalog query failed",
        outboxd_pgsetup_loop_bound(c->conf->wal_receiver_timeout_ms), c->stop, errstr, errstr_size);
    if (!r)
        cat_close(c);
    return r;
}

static const type_entry_t *type_lookup(outboxd_cdc_t *c, uint32_t oid, char *errstr,
                                       size_t errstr_size)
{
    for (size_t i = 0; i < c->n_types; i++)
        if (c->types[i].oid == oid)
            return &c->types[i];
    PGresult *r = cat_query(c,
                            "SELECT typtype, typcategory, typbasetype, typtypmod, typelem "
                            "FROM pg_catalog.pg_type WHERE oid = $1::oid",
                            oid, errstr, errstr_size);
    if (!r)
        return NULL;
    type_entry_t t = {.oid = oid, .typtype = 'b', .category = 'U'};
    if (PQntuples(r) == 1) {
        t.typtype = PQgetvalue(r, 0, 0)[0];
        t.category = PQgetvalue(r, 0, 1)[0];
        t.base = (uint32_t)strtoul(PQgetvalue(r, 0, 2), NULL, 10);
        t.base_typmod = (int32_t)strtol(PQgetvalue(r, 0, 3), NULL, 10);
        t.elem = (uint32_t)strtoul(PQgetvalue(r, 0, 4), NULL, 10);
    }
    PQclear(r);
    type_entry_t *g = realloc(c->types, (c->n_types + 1) * sizeof(*g));
    if (!g) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    c->types = g;
    c->types[c->n_types] = t;
    return &c->types[c->n_types++];
}

/* Resolves domains to their base type and arrays to their element type. */
static int resolve(outboxd_cdc_t *c, col_t *col, char *errstr, size_t errstr_size)
{
    uint32_t oid = col->type_oid;
    int32_t mod = col->typmod;
    col->array = false;
    for (int depth = 0; depth < 8; depth++) {
        if (is_builtin_scalar(oid)) {
            col->kind = outboxd_cdc_kind(oid, mod);
            col->kmod = mod;
            return 0;
        }
        bool next = false;
        for (size_t i = 0; i < sizeof(builtin_arrays) / sizeof(builtin_arrays[0]); i++)
            if (builtin_arrays[i][0] == oid && !col->array) {
                col->array = true;
                oid = builtin_arrays[i][1];
                next = true;
                break;
            }
        if (next)
            continue;
        const type_entry_t *t = type_lookup(c, oid, errstr, errstr_size);
        if (!t)
            return -1;
        if (t->typtype == 'd') {
            oid = t->base;
            mod = t->base_typmod;
            continue;
        }
        if (t->category == 'A' && t->elem && !col->array) {
            col->array = true;
            oid = t->elem;
            continue;
        }
        break; /* enum, composite, range, unknown: the text form */
    }
    col->kind = OUTBOXD_CDC_T_STRING;
    col->kmod = -1;
    return 0;
}

/* ---- relation cache ------------------------------------------------------- */

static void entry_free(rel_entry_t *e)
{
    for (int i = 0; i < e->ncols; i++) {
        free(e->cols[i].name);
        free(e->cols[i].avro_name);
    }
    free(e->cols);
    free(e->key);
    free(e->topic);
    free(e->ns);
    free(e->avro_key);
    free(e->avro_value);
    free(e->conn_key);
    free(e->conn_value);
    memset(e, 0, sizeof(*e));
}

static bool same_columns(const rel_entry_t *e, const outboxd_pgo_relation_t *rel)
{
    if (e->ncols != rel->ncols || e->replident != rel->replident)
        return false;
    for (int i = 0; i < rel->ncols; i++) {
        const col_t *a = &e->cols[i];
        const outboxd_pgo_column_t *b = &rel->cols[i];
        if (a->type_oid != b->type_oid || a->typmod != b->typmod || a->is_key != b->is_key ||
            strcmp(a->name, b->name) != 0)
            return false;
    }
    return true;
}

bool outboxd_cdc_topic_name(const outboxd_source_conf_t *src, const outboxd_table_conf_t *tc,
                            outboxd_buf_t *out)
{
    if (tc->topic)
        return outboxd_buf_append_str(out, tc->topic);
    return outboxd_buf_printf(out, "%s.%s.%s", tc->topic_prefix ? tc->topic_prefix : src->name,
                              tc->schema, tc->name);
}

const outboxd_table_conf_t *outboxd_cdc_table(const outboxd_cdc_t *c, const char *nspname,
                                              const char *relname)
{
    for (size_t i = 0; i < c->src->n_tables; i++) {
        const outboxd_table_conf_t *t = &c->src->tables[i];
        if (t->mode == OUTBOXD_MODE_CDC && strcmp(t->schema, nspname) == 0 &&
            strcmp(t->name, relname) == 0)
            return t;
    }
    return NULL;
}

/* Key columns: the replica identity's; with REPLICA IDENTITY FULL (every
 * column flagged) the primary key's, from the catalog. In the index's
 * column order, as Debezium's key (its primary key order, KEY_SEQ): with
 * the table's column order a key of (b, a) would be serialized {a, b},
 * other bytes, another partition. A single key column needs no look-up. */
static int key_columns(outboxd_cdc_t *c, rel_entry_t *e, char *errstr, size_t errstr_size)
{
    e->key = calloc((size_t)(e->ncols ? e->ncols : 1), sizeof(int));
    if (!e->key) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    int flagged = 0;
    if (e->replident != 'f') {
        for (int i = 0; i < e->ncols; i++)
            if (e->cols[i].is_key)
                e->key[e->nkey++] = i;
        if (e->nkey < 2)
            return 0;
        flagged = e->nkey;
    }
    /* The identity index: the primary key for DEFAULT (and FULL), the
     * REPLICA IDENTITY USING INDEX one otherwise. */
    PGresult *r = cat_query(
        c,
        "SELECT a.attname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class cl ON cl.oid = "
        "i.indrelid, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, ord) JOIN "
        "pg_catalog.pg_attribute a ON a.attnum = k.att WHERE a.attrelid = i.indrelid AND "
        "i.indrelid = $1::oid AND k.ord <= i.indnkeyatts AND CASE cl.relreplident WHEN 'i' "
        "THEN i.indisreplident ELSE i.indisprimary END ORDER BY k.ord",
        e->oid, errstr, errstr_size);
    if (!r)
        return -1;
    int n = 0;
    for (int j = 0; j < PQntuples(r); j++)
        for (int i = 0; i < e->ncols; i++)
            if (strcmp(PQgetvalue(r, j, 0), e->cols[i].name) == 0 &&
                (e->replident == 'f' || e->cols[i].is_key))
                e->key[n++] = i;
    PQclear(r);
    /* The catalog no longer matching the stream's flags (an index changed
     * since): keep the flagged columns, in table order. */
    if (flagged && n != flagged) {
        e->nkey = 0;
        for (int i = 0; i < e->ncols; i++)
            if (e->cols[i].is_key)
                e->key[e->nkey++] = i;
        return 0;
    }
    e->nkey = n;
    return 0;
}

static bool in_list(char **list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

/* columns_include / _exclude and the masks, by name; a configured name the
 * table does not have is reported (a typo would otherwise leak a column). */
static void apply_filters(outboxd_cdc_t *c, rel_entry_t *e, const outboxd_pgo_relation_t *rel)
{
    const outboxd_table_conf_t *tc = e->tc;
    for (int i = 0; i < e->ncols; i++) {
        col_t *col = &e->cols[i];
        if (tc->n_columns_include &&
            !in_list(tc->columns_include, tc->n_columns_include, col->name))
            col->excluded = true;
        if (in_list(tc->columns_exclude, tc->n_columns_exclude, col->name))
            col->excluded = true;
        if (in_list(tc->mask_hash, tc->n_mask_hash, col->name))
            col->mask = 'h';
        if (in_list(tc->mask_null, tc->n_mask_null, col->name))
            col->mask = 'n';
    }
    char **lists[4] = {tc->columns_include, tc->columns_exclude, tc->mask_hash, tc->mask_null};
    size_t ns[4] = {tc->n_columns_include, tc->n_columns_exclude, tc->n_mask_hash, tc->n_mask_null};
    static const char *keys[4] = {"columns_include", "columns_exclude", "mask_hash", "mask_null"};
    for (int l = 0; l < 4; l++)
        for (size_t k = 0; k < ns[l]; k++) {
            bool found = false;
            for (int i = 0; i < rel->ncols && !found; i++)
                found = strcmp(rel->cols[i].name, lists[l][k]) == 0;
            if (!found)
                LOG_WARN(c->src->name, "cdc: table %s.%s has no column '%s' (%s); check the name",
                         rel->nspname, rel->relname, lists[l][k], keys[l]);
        }
}

static rel_entry_t *entry_for(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char *errstr,
                              size_t errstr_size)
{
    rel_entry_t *e = NULL;
    for (size_t i = 0; i < c->n_rels; i++)
        if (c->rels[i].oid == rel->oid) {
            e = &c->rels[i];
            break;
        }
    if (e && same_columns(e, rel))
        return e;
    const outboxd_table_conf_t *tc = outboxd_cdc_table(c, rel->nspname, rel->relname);
    if (!tc) {
        snprintf(errstr, errstr_size, "cdc: %s.%s is not a cdc table of source %s", rel->nspname,
                 rel->relname, c->src->name);
        return NULL;
    }
    if (!e) {
        rel_entry_t *g = realloc(c->rels, (c->n_rels + 1) * sizeof(*g));
        if (!g) {
            snprintf(errstr, errstr_size, "out of memory");
            return NULL;
        }
        c->rels = g;
        e = &c->rels[c->n_rels++];
        memset(e, 0, sizeof(*e));
    } else {
        entry_free(e);
    }
    e->oid = rel->oid;
    e->tc = tc;
    e->replident = rel->replident;
    e->ncols = rel->ncols;
    e->cols = calloc((size_t)(rel->ncols ? rel->ncols : 1), sizeof(col_t));
    if (!e->cols)
        goto oom;
    for (int i = 0; i < rel->ncols; i++) {
        col_t *col = &e->cols[i];
        col->name = strdup(rel->cols[i].name);
        col->avro_name = avro_ident(rel->cols[i].name);
        if (!col->name || !col->avro_name)
            goto oom;
        col->type_oid = rel->cols[i].type_oid;
        col->typmod = rel->cols[i].typmod;
        col->is_key = rel->cols[i].is_key;
        if (resolve(c, col, errstr, errstr_size) < 0)
            goto fail;
    }
    apply_filters(c, e, rel);
    if (key_columns(c, e, errstr, errstr_size) < 0)
        goto fail;
    const char *prefix = tc->topic_prefix ? tc->topic_prefix : c->src->name;
    /* tc matched rel by schema and name (outboxd_cdc_table). */
    outboxd_buf_t t = {0};
    if (!outboxd_cdc_topic_name(c->src, tc, &t))
        outboxd_buf_free(&t);
    e->topic = t.data;
    char *a = avro_ident(prefix), *b = avro_ident(rel->nspname), *d = avro_ident(rel->relname);
    outboxd_buf_t ns = {0};
    if (a && b && d)
        outboxd_buf_printf(&ns, "%s.%s.%s", a, b, d);
    free(a);
    free(b);
    free(d);
    e->ns = ns.data;
    if (!e->topic || !e->ns || !build_schemas(e))
        goto oom;
    c->stats.schemas++;
    LOG_INFO(c->src->name, "cdc: table %s.%s (oid %u): %d columns, key (%d columns), topic %s",
             rel->nspname, rel->relname, rel->oid, e->ncols, e->nkey, e->topic);
    return e;
oom:
    snprintf(errstr, errstr_size, "out of memory building the cdc schema of %s.%s", rel->nspname,
             rel->relname);
fail:
    entry_free(e);
    return NULL;
}

void outboxd_cdc_forget(outboxd_cdc_t *c, uint32_t oid)
{
    for (size_t i = 0; i < c->n_rels; i++)
        if (c->rels[i].oid == oid) {
            entry_free(&c->rels[i]);
            c->rels[i] = c->rels[--c->n_rels];
            return;
        }
}

/* ---- life cycle ----------------------------------------------------------- */

outboxd_cdc_t *outboxd_cdc_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                               const char *database, atomic_int *stop, char *errstr,
                               size_t errstr_size)
{
    outboxd_cdc_t *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    c->conf = conf;
    c->src = src;
    c->stop = stop;
    c->database = strdup(database ? database : "");
    if (!c->database) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    c->enc = outboxd_encoder_new(conf, errstr, errstr_size);
    if (!c->enc)
        goto fail;
    c->reg = outboxd_encoder_registry(c->enc);
    return c;
fail:
    outboxd_cdc_destroy(c);
    return NULL;
}

void outboxd_cdc_destroy(outboxd_cdc_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_rels; i++)
        entry_free(&c->rels[i]);
    free(c->rels);
    free(c->types);
    for (int i = 0; i < MAX_RECS; i++) {
        outboxd_buf_free(&c->slots[i].key);
        outboxd_buf_free(&c->slots[i].value);
    }
    outboxd_buf_free(&c->scratch);
    outboxd_buf_free(&c->arr);
    outboxd_buf_free(&c->subject);
    outboxd_buf_free(&c->dl);
    outboxd_buf_free(&c->oldkey);
    outboxd_buf_free(&c->newkey);
    cat_close(c);
    outboxd_encoder_destroy(c->enc);
    free(c->database);
    free(c);
}

const char *outboxd_cdc_avro_schema(const outboxd_cdc_t *c, uint32_t oid, bool key)
{
    for (size_t i = 0; i < c->n_rels; i++)
        if (c->rels[i].oid == oid)
            return key ? c->rels[i].avro_key : c->rels[i].avro_value;
    return NULL;
}

void outboxd_cdc_stats(const outboxd_cdc_t *c, outboxd_cdc_stats_t *out)
{
    *out = c->stats;
}

int outboxd_cdc_json_value(outboxd_cdc_kind_t kind, int32_t typmod, const char *text, size_t len,
                           outboxd_buf_t *out, char *reason, size_t reason_size)
{
    outboxd_buf_t scratch = {0};
    val_t v;
    int r = convert(kind, typmod, text, len, &scratch, &v, reason, reason_size);
    if (r == 0 && !json_val(out, &v))
        r = -1;
    outboxd_buf_free(&scratch);
    return r;
}

/* ---- rows ----------------------------------------------------------------- */

typedef struct writer {
    bool avro;
    outboxd_buf_t *out;
} writer_t;

/*
 * PostgreSQL array text ("{1,NULL,\"a b\"}", nested braces flattened,
 * "[0:1]={...}" bounds skipped) into c->arr as a sequence of elements:
 * a byte 0 (NULL) or 1 followed by a 4-byte length and the unescaped bytes.
 * Returns the element count, or -1 when the text is not an array.
 */
static long split_array(outboxd_buf_t *arr, const char *s, size_t len)
{
    outboxd_buf_reset(arr);
    size_t i = 0;
    if (i < len && s[i] == '[') {
        const char *eq = memchr(s, '=', len);
        if (!eq)
            return -1;
        i = (size_t)(eq - s) + 1;
    }
    if (i >= len || s[i] != '{')
        return -1;
    long n = 0;
    int depth = 0;
    while (i < len) {
        char ch = s[i];
        if (ch == '{') {
            depth++;
            i++;
            continue;
        }
        if (ch == '}') {
            depth--;
            i++;
            continue;
        }
        if (ch == ',' || ch == ' ') {
            i++;
            continue;
        }
        if (depth <= 0)
            return -1;
        size_t at = arr->len;
        unsigned char hdr[5] = {1, 0, 0, 0, 0};
        if (!outboxd_buf_append(arr, hdr, 5))
            return -1;
        if (ch == '"') {
            i++;
            while (i < len && s[i] != '"') {
                if (s[i] == '\\' && i + 1 < len)
                    i++;
                if (!outboxd_buf_append(arr, &s[i], 1))
                    return -1;
                i++;
            }
            if (i >= len)
                return -1;
            i++;
        } else {
            size_t st = i;
            while (i < len && s[i] != ',' && s[i] != '}')
                i++;
            if (i - st == 4 && strncasecmp(s + st, "NULL", 4) == 0)
                arr->data[at] = 0;
            else if (!outboxd_buf_append(arr, s + st, i - st))
                return -1;
        }
        uint32_t el = (uint32_t)(arr->len - at - 5);
        memcpy(arr->data + at + 1, &el, 4);
        n++;
    }
    return depth == 0 ? n : -1;
}

/* Writes one value of a nullable field (Avro union index, or JSON). */
static int write_field(outboxd_cdc_t *c, writer_t *w, const col_t *col,
                       const outboxd_pgo_datum_t *d, bool nullable, char *reason,
                       size_t reason_size)
{
    outboxd_buf_t *o = w->out;
    bool ok = true;
    if (!d || d->kind == 'n') {
        if (!nullable) {
            snprintf(reason, reason_size, "key column '%s' is NULL", col->name);
            return 1;
        }
        return (w->avro ? outboxd_avro_write_long(o, 0) : outboxd_buf_append_str(o, "null")) ? 0
                                                                                             : -1;
    }
    if (d->kind == 'u' && col->array &&
        (col->kind == OUTBOXD_CDC_T_INT32 || col->kind == OUTBOXD_CDC_T_DATE ||
         col->kind == OUTBOXD_CDC_T_INT64)) {
        /* Debezium's placeholder for an int[], date[] or bigint[]: the
         * placeholder's bytes as a list of numbers (not null, which a sink
         * would take for a real NULL). */
        if (w->avro) {
            ok = (!nullable || outboxd_avro_write_long(o, 1)) &&
                 outboxd_avro_write_long(o, (int64_t)UNAVAILABLE_LEN);
            /* Items are nullable unions: branch 1, then the number. */
            for (size_t i = 0; ok && i < UNAVAILABLE_LEN; i++)
                ok = outboxd_avro_write_long(o, 1) &&
                     outboxd_avro_write_long(o, (unsigned char)UNAVAILABLE[i]);
            ok = ok && outboxd_avro_write_long(o, 0);
        } else {
            ok = outboxd_buf_append_str(o, "[");
            for (size_t i = 0; ok && i < UNAVAILABLE_LEN; i++)
                ok = outboxd_buf_printf(o, "%s%u", i ? "," : "", (unsigned char)UNAVAILABLE[i]);
            ok = ok && outboxd_buf_append_str(o, "]");
        }
        return ok ? 0 : -1;
    }
    if (d->kind == 'u') {
        /* An unchanged TOASTed value PostgreSQL did not send: Debezium's
         * placeholder where the type can hold it, else null. */
        val_t v = {.tag = V_NULL};
        if (stringish(col->kind)) {
            v.tag = V_STR;
            v.s = UNAVAILABLE;
            v.n = UNAVAILABLE_LEN;
        } else if (col->kind == OUTBOXD_CDC_T_BYTES) {
            v.tag = V_BYTES;
            v.s = UNAVAILABLE;
            v.n = UNAVAILABLE_LEN;
        }
        if (v.tag == V_NULL && !nullable) {
            snprintf(reason, reason_size, "key column '%s' is not sent", col->name);
            return 1;
        }
        if (w->avro) {
            if (nullable)
                ok = outboxd_avro_write_long(o, v.tag == V_NULL ? 0 : 1);
            if (ok && v.tag != V_NULL && col->array)
                ok = outboxd_avro_write_long(o, 1) && outboxd_avro_write_long(o, 1) &&
                     avro_val(o, &v) && outboxd_avro_write_long(o, 0);
            else if (ok)
                ok = avro_val(o, &v);
        } else {
            ok = col->array && v.tag != V_NULL
                     ? outboxd_buf_append_str(o, "[") && json_val(o, &v) &&
                           outboxd_buf_append_str(o, "]")
                     : json_val(o, &v);
        }
        return ok ? 0 : -1;
    }
    if (d->kind != 't') {
        snprintf(reason, reason_size, "column '%s' arrived in binary format", col->name);
        return 1;
    }
    if (!col->array) {
        val_t v;
        if (convert(col->kind, col->kmod, d->data, d->len, &c->scratch, &v, reason, reason_size)) {
            char why[512];
            snprintf(why, sizeof(why), "column '%s': %s", col->name, reason);
            snprintf(reason, reason_size, "%s", why);
            return 1;
        }
        if (w->avro) {
            if (nullable)
                ok = outboxd_avro_write_long(o, v.tag == V_NULL ? 0 : 1);
            else if (v.tag == V_NULL) {
                snprintf(reason, reason_size, "key column '%s' has no value (%.*s)", col->name,
                         (int)(d->len > 40 ? 40 : d->len), d->data);
                return 1;
            }
            ok = ok && avro_val(o, &v);
        } else {
            ok = json_val(o, &v);
        }
        return ok ? 0 : -1;
    }
    long n = split_array(&c->arr, d->data, d->len);
    if (n < 0) {
        snprintf(reason, reason_size, "column '%s': cannot read '%.*s' as an array", col->name,
                 (int)(d->len > 80 ? 80 : d->len), d->data);
        return 1;
    }
    if (w->avro) {
        if (nullable)
            ok = outboxd_avro_write_long(o, 1);
        if (ok && n > 0)
            ok = outboxd_avro_write_long(o, n);
    } else {
        ok = outboxd_buf_append_str(o, "[");
    }
    size_t at = 0;
    for (long k = 0; ok && k < n; k++) {
        bool isnull = c->arr.data[at] == 0;
        uint32_t el;
        memcpy(&el, c->arr.data + at + 1, 4);
        const char *es = c->arr.data + at + 5;
        at += 5 + el;
        val_t v = {.tag = V_NULL};
        if (!isnull &&
            convert(col->kind, col->kmod, es, el, &c->scratch, &v, reason, reason_size)) {
            char why[512];
            snprintf(why, sizeof(why), "column '%s' element %ld: %s", col->name, k + 1, reason);
            snprintf(reason, reason_size, "%s", why);
            return 1;
        }
        if (w->avro)
            ok = outboxd_avro_write_long(o, v.tag == V_NULL ? 0 : 1) && avro_val(o, &v);
        else
            ok = (k == 0 || outboxd_buf_append_str(o, ",")) && json_val(o, &v);
    }
    if (w->avro)
        ok = ok && outboxd_avro_write_long(o, 0);
    else
        ok = ok && outboxd_buf_append_str(o, "]");
    return ok ? 0 : -1;
}

/* A row image: Avro union branch + record, or JSON object / null. */
static int write_row(outboxd_cdc_t *c, writer_t *w, const rel_entry_t *e,
                     const outboxd_pgo_tuple_t *t, char *reason, size_t reason_size)
{
    bool present = t && t->ncols > 0;
    if (!present)
        return (w->avro ? outboxd_avro_write_long(w->out, 0)
                        : outboxd_buf_append_str(w->out, "null"))
                   ? 0
                   : -1;
    if (w->avro ? !outboxd_avro_write_long(w->out, 1) : !outboxd_buf_append_str(w->out, "{"))
        return -1;
    bool first = true;
    for (int i = 0; i < e->ncols; i++) {
        const col_t *col = &e->cols[i];
        const outboxd_pgo_datum_t *d = i < t->ncols ? &t->cols[i] : NULL;
        if (col->excluded)
            continue;
        if (!w->avro && ((!first && !outboxd_buf_append_str(w->out, ",")) ||
                         !json_str(w->out, col->name, strlen(col->name)) ||
                         !outboxd_buf_append_str(w->out, ":")))
            return -1;
        first = false;
        int r;
        if (col->mask == 'n' || (col->mask == 'h' && d && d->kind == 't')) {
            /* masked: null, or the hash of the text as a string column */
            val_t v = {.tag = V_NULL};
            char hex[65];
            if (col->mask == 'h') {
                outboxd_cdc_sha256_hex(d->data, d->len, hex);
                v.tag = V_STR;
                v.s = hex;
                v.n = 64;
            }
            bool ok = w->avro ? outboxd_avro_write_long(w->out, v.tag == V_NULL ? 0 : 1) &&
                                    avro_val(w->out, &v)
                              : json_val(w->out, &v);
            r = ok ? 0 : -1;
        } else if (col->mask == 'h') {
            col_t s1 = *col; /* NULL or the placeholder, as a string column */
            s1.kind = OUTBOXD_CDC_T_STRING;
            s1.array = false;
            r = write_field(c, w, &s1, d, true, reason, reason_size);
        } else {
            r = write_field(c, w, col, d, true, reason, reason_size);
        }
        if (r)
            return r;
    }
    if (!w->avro && !outboxd_buf_append_str(w->out, "}"))
        return -1;
    return 0;
}

/* The registry subject of a key or value schema. */
static bool subject_for(outboxd_cdc_t *c, const rel_entry_t *e, bool key)
{
    outboxd_buf_reset(&c->subject);
    const char *rec = key ? "Key" : "Envelope";
    switch (c->conf->subject_name_strategy) {
    case OUTBOXD_SUBJECT_RECORD_NAME:
        return outboxd_buf_printf(&c->subject, "%s.%s", e->ns, rec);
    case OUTBOXD_SUBJECT_TOPIC_RECORD_NAME:
        return outboxd_buf_printf(&c->subject, "%s-%s.%s", e->topic, e->ns, rec);
    default:
        return outboxd_buf_printf(&c->subject, "%s-%s", e->topic, key ? "key" : "value");
    }
}

/* Starts an Avro datum: wire-format or single-object header. 0, 1 rejected
 * (reason), -1 retry (errstr). */
static int avro_header(outboxd_cdc_t *c, const rel_entry_t *e, bool key, outboxd_buf_t *out,
                       char *reason, size_t reason_size, char *errstr, size_t errstr_size)
{
    if (!c->reg)
        return outboxd_buf_append(out, key ? e->so_key : e->so_value, 10) ? 0 : -1;
    if (!subject_for(c, e, key)) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    int32_t id;
    char err[512];
    outboxd_registry_status_t st = outboxd_registry_id(
        c->reg, c->subject.data, key ? e->avro_key : e->avro_value, &id, err, sizeof(err));
    if (st == OUTBOXD_REGISTRY_RETRY) {
        snprintf(errstr, errstr_size, "cdc: schema registry: %s", err);
        return -1;
    }
    if (st == OUTBOXD_REGISTRY_REJECTED) {
        snprintf(reason, reason_size,
                 "schema registry rejected the %s schema of table %s.%s for subject %s: %s; fix: "
                 "make the change compatible (or relax the subject's compatibility level), the "
                 "rows in between are in this dead-letter topic",
                 key ? "key" : "value", e->tc->schema, e->tc->name, c->subject.data, err);
        return 1;
    }
    unsigned char h[OUTBOXD_WIRE_HEADER_LEN];
    outboxd_registry_wire_header(id, h);
    return outboxd_buf_append(out, h, sizeof(h)) ? 0 : -1;
}

static void lsn_dec(char *out, size_t n, outboxd_lsn_t l)
{
    snprintf(out, n, "%llu", (unsigned long long)l);
}

/* The source block. */
static bool write_source(outboxd_cdc_t *c, writer_t *w, const rel_entry_t *e,
                         const outboxd_cdc_source_t *si)
{
    const char *prefix = e->tc->topic_prefix ? e->tc->topic_prefix : c->src->name;
    const char *snap = si->snapshot ? si->snapshot : "false";
    int64_t ts_us = si->commit_time_us;
    char seq[80], a[24], b[24];
    lsn_dec(b, sizeof(b), si->lsn);
    if (si->commit_lsn) {
        lsn_dec(a, sizeof(a), si->commit_lsn);
        snprintf(seq, sizeof(seq), "[\"%s\",\"%s\"]", a, b);
    } else {
        snprintf(seq, sizeof(seq), "[null,\"%s\"]", b);
    }
    outboxd_buf_t *o = w->out;
    if (w->avro) {
        return outboxd_avro_write_string(o, OUTBOXD_VERSION, strlen(OUTBOXD_VERSION)) &&
               outboxd_avro_write_string(o, "postgresql", 10) &&
               outboxd_avro_write_string(o, prefix, strlen(prefix)) &&
               outboxd_avro_write_long(o, ts_us / 1000) && outboxd_avro_write_long(o, 0) &&
               outboxd_avro_write_string(o, snap, strlen(snap)) &&
               outboxd_avro_write_string(o, c->database, strlen(c->database)) &&
               outboxd_avro_write_long(o, 1) && outboxd_avro_write_string(o, seq, strlen(seq)) &&
               outboxd_avro_write_long(o, 1) && outboxd_avro_write_long(o, ts_us) &&
               outboxd_avro_write_long(o, 1) && outboxd_avro_write_long(o, ts_us * 1000) &&
               outboxd_avro_write_string(o, e->tc->schema, strlen(e->tc->schema)) &&
               outboxd_avro_write_string(o, e->tc->name, strlen(e->tc->name)) &&
               (si->xid ? outboxd_avro_write_long(o, 1) && outboxd_avro_write_long(o, si->xid)
                        : outboxd_avro_write_long(o, 0)) &&
               outboxd_avro_write_long(o, 1) && outboxd_avro_write_long(o, (int64_t)si->lsn) &&
               outboxd_avro_write_long(o, 0);
    }
    bool ok =
        outboxd_buf_append_str(o, "{\"version\":\"" OUTBOXD_VERSION
                                  "\",\"connector\":\"postgresql\",\"name\":") &&
        json_str(o, prefix, strlen(prefix)) &&
        outboxd_buf_printf(
            o, ",\"ts_ms\":%lld,\"snapshot\":\"%s\",\"db\":", (long long)(ts_us / 1000), snap) &&
        json_str(o, c->database, strlen(c->database)) &&
        outboxd_buf_append_str(o, ",\"sequence\":") && json_str(o, seq, strlen(seq)) &&
        outboxd_buf_printf(o, ",\"ts_us\":%lld,\"ts_ns\":%lld,\"schema\":", (long long)ts_us,
                           (long long)ts_us * 1000) &&
        json_str(o, e->tc->schema, strlen(e->tc->schema)) &&
        outboxd_buf_append_str(o, ",\"table\":") && json_str(o, e->tc->name, strlen(e->tc->name));
    if (si->xid)
        ok = ok && outboxd_buf_printf(o, ",\"txId\":%u", si->xid);
    else
        ok = ok && outboxd_buf_append_str(o, ",\"txId\":null");
    return ok && outboxd_buf_printf(o, ",\"lsn\":%llu,\"xmin\":null}", (unsigned long long)si->lsn);
}

/* The key record of a row (the key columns of t), or no key. 0, 1, -1. */
static int build_key(outboxd_cdc_t *c, const rel_entry_t *e, const outboxd_pgo_tuple_t *t,
                     outboxd_buf_t *out, bool *has_key, char *reason, size_t reason_size,
                     char *errstr, size_t errstr_size)
{
    outboxd_buf_reset(out);
    *has_key = e->nkey > 0 && t && t->ncols > 0;
    if (!*has_key)
        return 0;
    bool avro = e->tc->cdc_format == OUTBOXD_CDC_AVRO;
    bool schemas = !avro && e->tc->json_schemas;
    writer_t w = {avro, out};
    if (avro) {
        int r = avro_header(c, e, true, out, reason, reason_size, errstr, errstr_size);
        if (r)
            return r;
    } else if (schemas) {
        if (!outboxd_buf_printf(out, "{\"schema\":%s,\"payload\":", e->conn_key))
            return -1;
    }
    if (!avro && !outboxd_buf_append_str(out, "{"))
        return -1;
    for (int k = 0; k < e->nkey; k++) {
        const col_t *col = &e->cols[e->key[k]];
        const outboxd_pgo_datum_t *d = e->key[k] < t->ncols ? &t->cols[e->key[k]] : NULL;
        if (!avro &&
            ((k > 0 && !outboxd_buf_append_str(out, ",")) ||
             !json_str(out, col->name, strlen(col->name)) || !outboxd_buf_append_str(out, ":")))
            return -1;
        int r = write_field(c, &w, col, d, false, reason, reason_size);
        if (r)
            return r;
    }
    if (!avro && !outboxd_buf_append_str(out, schemas ? "}}" : "}"))
        return -1;
    return 0;
}

static int build_value(outboxd_cdc_t *c, const rel_entry_t *e, char op,
                       const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                       const outboxd_cdc_source_t *si, outboxd_buf_t *out, char *reason,
                       size_t reason_size, char *errstr, size_t errstr_size)
{
    outboxd_buf_reset(out);
    bool avro = e->tc->cdc_format == OUTBOXD_CDC_AVRO;
    bool schemas = !avro && e->tc->json_schemas;
    writer_t w = {avro, out};
    int64_t now_us = outboxd_wall_us();
    char ops[2] = {op, '\0'};
    int r;
    if (avro) {
        r = avro_header(c, e, false, out, reason, reason_size, errstr, errstr_size);
        if (r)
            return r;
    } else {
        if (schemas && !outboxd_buf_printf(out, "{\"schema\":%s,\"payload\":", e->conn_value))
            return -1;
        if (!outboxd_buf_append_str(out, "{\"before\":"))
            return -1;
    }
    if ((r = write_row(c, &w, e, before, reason, reason_size)))
        return r;
    if (!avro && !outboxd_buf_append_str(out, ",\"after\":"))
        return -1;
    if ((r = write_row(c, &w, e, after, reason, reason_size)))
        return r;
    if (!avro && !outboxd_buf_append_str(out, ",\"source\":"))
        return -1;
    if (!write_source(c, &w, e, si))
        return -1;
    bool ok;
    if (avro)
        ok = outboxd_avro_write_long(out, 0) && outboxd_avro_write_string(out, ops, 1) &&
             outboxd_avro_write_long(out, 1) && outboxd_avro_write_long(out, now_us / 1000) &&
             outboxd_avro_write_long(out, 1) && outboxd_avro_write_long(out, now_us) &&
             outboxd_avro_write_long(out, 1) && outboxd_avro_write_long(out, now_us * 1000);
    else
        ok = outboxd_buf_printf(out,
                                ",\"transaction\":null,\"op\":\"%s\",\"ts_ms\":%lld,\"ts_us\":%lld,"
                                "\"ts_ns\":%lld}%s",
                                ops, (long long)(now_us / 1000), (long long)now_us,
                                (long long)now_us * 1000, schemas ? "}" : "");
    return ok ? 0 : -1;
}

/* Adds a record slot. */
static rec_slot_t *slot(outboxd_cdc_t *c)
{
    rec_slot_t *s = &c->slots[c->n_slots++];
    memset(&s->rec, 0, sizeof(s->rec));
    s->dead_letter = false;
    outboxd_buf_reset(&s->key);
    outboxd_buf_reset(&s->value);
    return s;
}

/* One event (and its tombstone). 0, 1 (reason: dead-letter it), -1. */
static int add_event(outboxd_cdc_t *c, const rel_entry_t *e, char op,
                     const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                     const outboxd_cdc_source_t *si, char *reason, size_t reason_size, char *errstr,
                     size_t errstr_size)
{
    rec_slot_t *s = slot(c);
    bool has_key;
    const outboxd_pgo_tuple_t *kt = op == 'd' ? before : op == 't' ? NULL : after;
    int r = build_key(c, e, kt, &s->key, &has_key, reason, reason_size, errstr, errstr_size);
    if (r)
        return r;
    r = build_value(c, e, op, before, after, si, &s->value, reason, reason_size, errstr,
                    errstr_size);
    if (r)
        return r;
    s->rec.topic = e->topic;
    if (has_key) {
        s->rec.key = s->key.data;
        s->rec.key_len = s->key.len;
    }
    s->rec.value = s->value.data;
    s->rec.value_len = s->value.len;
    size_t size = s->rec.key_len + s->rec.value_len;
    if (size > c->conf->max_event_bytes) {
        snprintf(reason, reason_size,
                 "change event of %zu bytes exceeds relay.max_event_bytes (%zu); fix: raise it "
                 "(and the topic's max.message.bytes) or exclude the large column",
                 size, c->conf->max_event_bytes);
        return 1;
    }
    if (op == 'd' && has_key && e->tc->tombstones_on_delete) {
        rec_slot_t *t = slot(c);
        if (!outboxd_buf_append(&t->key, s->key.data, s->key.len)) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        t->rec.topic = e->topic;
        t->rec.key = t->key.data;
        t->rec.key_len = t->key.len;
    }
    return 0;
}

/* The key of an image as Connect's SimpleHeaderConverter writes a Struct
 * into a header, whatever the converters: {"col":value,...}, strings quoted
 * (equal to Debezium's text for integer, string and uuid keys). */
static int key_header(outboxd_cdc_t *c, const rel_entry_t *e, const outboxd_pgo_tuple_t *t,
                      outboxd_buf_t *out, char *reason, size_t reason_size)
{
    outboxd_buf_reset(out);
    writer_t w = {false, out};
    if (!outboxd_buf_append_str(out, "{"))
        return -1;
    for (int k = 0; k < e->nkey; k++) {
        const col_t *col = &e->cols[e->key[k]];
        const outboxd_pgo_datum_t *d = e->key[k] < t->ncols ? &t->cols[e->key[k]] : NULL;
        if ((k > 0 && !outboxd_buf_append_str(out, ",")) ||
            !json_str(out, col->name, strlen(col->name)) || !outboxd_buf_append_str(out, ":"))
            return -1;
        int r = write_field(c, &w, col, d, false, reason, reason_size);
        if (r)
            return r;
    }
    return outboxd_buf_append_str(out, "}") ? 0 : -1;
}

/* Whether the key columns of two images differ (a primary key update). */
static bool key_changed(const rel_entry_t *e, const outboxd_pgo_tuple_t *a,
                        const outboxd_pgo_tuple_t *b)
{
    if (!a || !b || a->ncols == 0 || b->ncols == 0)
        return false;
    for (int k = 0; k < e->nkey; k++) {
        int i = e->key[k];
        if (i >= a->ncols || i >= b->ncols)
            continue;
        const outboxd_pgo_datum_t *x = &a->cols[i], *y = &b->cols[i];
        if (x->kind != 't' || y->kind != 't')
            continue;
        if (x->len != y->len || memcmp(x->data, y->data, x->len) != 0)
            return true;
    }
    return false;
}

static void add_header(outboxd_record_t *rec, const char *name, const char *value)
{
    if (rec->n_headers >= OUTBOXD_MAX_HEADERS)
        return;
    rec->headers[rec->n_headers].name = name;
    rec->headers[rec->n_headers].value = value;
    rec->headers[rec->n_headers].len = strlen(value);
    rec->n_headers++;
}

/* A row image as {"column": "text" | null}; filters and masks applied
 * (a dead letter must not leak what the events leave out). */
static json_t *row_obj(const outboxd_pgo_relation_t *rel, const rel_entry_t *e,
                       const outboxd_pgo_tuple_t *t, size_t cap)
{
    if (!t || t->ncols == 0)
        return json_null();
    json_t *o = json_object();
    for (int i = 0; o && i < rel->ncols && i < t->ncols; i++) {
        const outboxd_pgo_datum_t *d = &t->cols[i];
        const col_t *col = e && i < e->ncols ? &e->cols[i] : NULL;
        if (col && col->excluded)
            continue;
        char hex[65];
        if (col && col->mask == 'h' && d->kind == 't')
            outboxd_cdc_sha256_hex(d->data, d->len, hex);
        json_t *v = d->kind == 'n' || (col && col->mask == 'n') ? json_null()
                    : d->kind == 'u'                            ? json_string(UNAVAILABLE)
                    : col && col->mask == 'h'
                        ? json_string(hex)
                        : json_stringn_nocheck(d->data, d->len > cap ? cap : d->len);
        if (!v || json_object_set_new(o, rel->cols[i].name, v) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* The dead-letter record of a change: its images as JSON text values. */
static int add_dead_letter(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char op,
                           const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                           const outboxd_cdc_source_t *si, const char *reason, char *errstr,
                           size_t errstr_size)
{
    /* The entry gives the filters and masks; without one built for these
     * columns nothing can be filtered, so a filtered table's dead letter
     * then holds no row images. */
    const rel_entry_t *e = NULL;
    for (size_t i = 0; i < c->n_rels; i++)
        if (c->rels[i].oid == rel->oid && same_columns(&c->rels[i], rel))
            e = &c->rels[i];
    const outboxd_table_conf_t *tc = outboxd_cdc_table(c, rel->nspname, rel->relname);
    if (!e && tc &&
        (tc->n_columns_include || tc->n_columns_exclude || tc->n_mask_hash || tc->n_mask_null))
        before = after = NULL;
    c->n_slots = 0;
    rec_slot_t *s = slot(c);
    char *text = NULL;
    for (int pass = 0; pass < 2 && !text; pass++) {
        size_t cap = pass == 0 ? SIZE_MAX : DL_VALUE_CAP;
        char ops[2] = {op, '\0'};
        json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:o}", "op", ops, "schema", rel->nspname, "table",
                              rel->relname, "before", row_obj(rel, e, before, cap), "after",
                              row_obj(rel, e, after, cap));
        if (!o)
            break;
        text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (text && pass == 0 && strlen(text) + 4096 > c->conf->max_event_bytes) {
            free(text);
            text = NULL;
        }
    }
    if (!text || !outboxd_buf_append_str(&s->value, text)) {
        free(text);
        snprintf(errstr, errstr_size, "out of memory building a cdc dead-letter record");
        return -1;
    }
    free(text);
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
    outboxd_buf_reset(&c->dl);
    outboxd_buf_printf(&c->dl, "%s.%s", rel->nspname, rel->relname);
    outboxd_lsn_format(si->lsn, c->lsnbuf[0]);
    outboxd_lsn_format(si->commit_lsn, c->lsnbuf[1]);
    snprintf(c->xidbuf, sizeof(c->xidbuf), "%u", si->xid);
    s->rec.topic = c->conf->dead_letter_topic;
    s->rec.value = s->value.data;
    s->rec.value_len = s->value.len;
    s->dead_letter = true;
    add_header(&s->rec, "outboxd.reason", c->reason);
    add_header(&s->rec, "outboxd.source", c->src->name);
    add_header(&s->rec, "outboxd.database", c->database);
    add_header(&s->rec, "outboxd.table", c->dl.data);
    add_header(&s->rec, "outboxd.lsn", c->lsnbuf[0]);
    add_header(&s->rec, "outboxd.commit_lsn", c->lsnbuf[1]);
    add_header(&s->rec, "outboxd.xid", c->xidbuf);
    if (c->conf->dead_letter_format == OUTBOXD_DLT_AVRO) {
        outboxd_dead_letter_t dl = {
            .reason = reason,
            .original = {s->value.data, s->value.len},
            .source_name = c->src->name,
            .database = c->database,
            .table = c->dl.data,
            .lsn = si->lsn,
            .commit_lsn = si->commit_lsn,
            .xid = si->xid,
            .commit_time_us = si->commit_time_us,
        };
        if (outboxd_encoder_dead_letter(c->enc, &dl, &s->key, errstr, errstr_size) < 0)
            return -1;
        /* key buffer borrowed for the Avro value: a dead letter has no key */
        s->rec.value = s->key.data;
        s->rec.value_len = s->key.len;
    }
    c->stats.dead_letters++;
    return 0;
}

static int emit_all(outboxd_cdc_t *c, outboxd_cdc_emit_cb emit, void *opaque)
{
    for (size_t i = 0; i < c->n_slots; i++) {
        rec_slot_t *s = &c->slots[i];
        int r = emit(opaque, &s->rec, s->dead_letter, s->dead_letter ? c->reason : NULL);
        if (r)
            return r;
        if (!s->dead_letter) {
            if (s->rec.value)
                c->stats.events++;
            else
                c->stats.tombstones++;
        }
    }
    return 0;
}

int outboxd_cdc_dead_letter(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char op,
                            const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                            const outboxd_cdc_source_t *si, const char *reason,
                            outboxd_cdc_emit_cb emit, void *opaque, char *errstr,
                            size_t errstr_size)
{
    if (add_dead_letter(c, rel, op, before, after, si, reason, errstr, errstr_size) < 0)
        return OUTBOXD_CDC_RETRY;
    return emit_all(c, emit, opaque);
}

int outboxd_cdc_change(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char op,
                       const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                       const outboxd_cdc_source_t *si, outboxd_cdc_emit_cb emit, void *opaque,
                       char *errstr, size_t errstr_size)
{
    rel_entry_t *e = entry_for(c, rel, errstr, errstr_size);
    if (!e)
        return OUTBOXD_CDC_RETRY;
    if (op == 't' && !e->tc->truncate_events)
        return 0;
    char reason[1024];
    int r;
    c->n_slots = 0;
    /* With REPLICA IDENTITY FULL the old image holds every unchanged
     * TOASTed value, and Debezium puts it into after instead of the
     * placeholder, also in the create of a primary-key update: so does
     * outboxd. Kept to the end: a dead letter shows the same after. */
    outboxd_pgo_tuple_t filled = {0};
    if (op == 'u' && before && after && before->ncols == after->ncols) {
        bool any = false;
        for (int i = 0; i < after->ncols && !any; i++)
            any = after->cols[i].kind == 'u' && before->cols[i].kind == 't';
        if (any) {
            filled.cols = malloc((size_t)after->ncols * sizeof(*filled.cols));
            if (!filled.cols) {
                snprintf(errstr, errstr_size, "out of memory");
                return OUTBOXD_CDC_RETRY;
            }
            filled.ncols = after->ncols;
            for (int i = 0; i < after->ncols; i++)
                filled.cols[i] = after->cols[i].kind == 'u' && before->cols[i].kind == 't'
                                     ? before->cols[i]
                                     : after->cols[i];
            after = &filled;
        }
    }
    if (op == 'u' && key_changed(e, before, after)) {
        /* Debezium's shape for a primary-key update: a delete under the old
         * key (and its tombstone), then a create under the new one. */
        r = add_event(c, e, 'd', before, NULL, si, reason, sizeof(reason), errstr, errstr_size);
        size_t n_delete = c->n_slots;
        if (r == 0)
            r = add_event(c, e, 'c', NULL, after, si, reason, sizeof(reason), errstr, errstr_size);
        /* Debezium links the two: the delete and its tombstone carry the
         * new key in the header __debezium.newkey, the create the old key
         * in __debezium.oldkey. */
        if (r == 0)
            r = key_header(c, e, after, &c->newkey, reason, sizeof(reason));
        if (r == 0)
            r = key_header(c, e, before, &c->oldkey, reason, sizeof(reason));
        for (size_t i = 0; r == 0 && i < c->n_slots; i++)
            add_header(&c->slots[i].rec, i < n_delete ? "__debezium.newkey" : "__debezium.oldkey",
                       i < n_delete ? c->newkey.data : c->oldkey.data);
    } else {
        /* An update without REPLICA IDENTITY FULL carries no old image
         * unless the key changed: before is null, as in Debezium. */
        r = add_event(c, e, op, op == 'c' || op == 'r' ? NULL : before,
                      op == 'd' || op == 't' ? NULL : after, si, reason, sizeof(reason), errstr,
                      errstr_size);
    }
    if (r > 0) {
        LOG_WARN(c->src->name, "cdc: change of %s.%s goes to the dead-letter topic %s: %s",
                 rel->nspname, rel->relname, c->conf->dead_letter_topic, reason);
        if (add_dead_letter(c, rel, op, before, after, si, reason, errstr, errstr_size) < 0)
            r = -1;
    }
    free(filled.cols);
    if (r < 0)
        return OUTBOXD_CDC_RETRY;
    return emit_all(c, emit, opaque);
}
