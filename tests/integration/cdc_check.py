#!/usr/bin/env python3
"""CDC integration tests' Python consumer (confluent-kafka's AvroDeserializer
against the schema registry, as a Debezium user's consumer decodes).

  cdc_check.py sql-types BIG_CHUNKS            the SQL of test_cdc_types
  cdc_check.py types   --bootstrap --registry --topic T --big-chunks N
  cdc_check.py alter   --bootstrap --registry --topic T --rows N
  cdc_check.py json    --bootstrap --topic T --rows N

Each check reads the topic (read_committed) until the expected number of
records arrived plus an idle period (so a duplicate would be seen), decodes
key and value of every record, and compares every value with what the SQL
wrote. Exit 0 when all match; else every mismatch is printed.
"""
import argparse
import base64
import datetime
import decimal
import hashlib
import json
import math
import struct
import sys
import time

decimal.getcontext().prec = 200
UNAVAILABLE = "__debezium_unavailable_value"
MONTH_US = 2629800000000
DAY_US = 86400000000
EPOCH = datetime.datetime(1970, 1, 1)

BIG_NUM = "9" * 100 + ".25"  # 100 digits before the point

COLUMNS = """
    id integer PRIMARY KEY,
    c_int2 smallint, c_int4 integer, c_int8 bigint,
    c_num numeric(12,3), c_numv numeric,
    c_f4 real, c_f8 double precision, c_bool boolean,
    c_text text, c_vc varchar(20), c_ch char(5), c_bytea bytea,
    c_date date, c_time time, c_time3 time(3), c_timetz timetz,
    c_ts timestamp, c_ts3 timestamp(3), c_tstz timestamptz, c_iv interval,
    c_uuid uuid, c_json json, c_jsonb jsonb, c_inet inet,
    c_aint integer[], c_atext text[], c_anum numeric[],
    c_mood mood, c_dom posint, c_big text
"""
NAMES = ["id", "c_int2", "c_int4", "c_int8", "c_num", "c_numv", "c_f4", "c_f8", "c_bool", "c_text",
         "c_vc", "c_ch", "c_bytea", "c_date", "c_time", "c_time3", "c_timetz", "c_ts", "c_ts3",
         "c_tstz", "c_iv", "c_uuid", "c_json", "c_jsonb", "c_inet", "c_aint", "c_atext", "c_anum",
         "c_mood", "c_dom", "c_big"]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def ts_us(s):
    d = datetime.datetime.fromisoformat(s)
    if d.tzinfo is not None:
        d = d.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    delta = d - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


def days(s):
    return (datetime.date.fromisoformat(s) - EPOCH.date()).days


def big_text(chunks):
    return "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, chunks + 1))


# Row id -> {column: (SQL literal, expected decoded value)}; missing columns
# are NULL. Expected values are what Debezium's default converters give.
def rows(big_chunks):
    return {
        1: {},
        2: {
            "c_int2": ("-32768", -32768),
            "c_int4": ("2147483647", 2147483647),
            "c_int8": ("-9223372036854775808", -9223372036854775808),
            "c_num": ("123456789.125", decimal.Decimal("123456789.125")),
            "c_numv": (BIG_NUM, decimal.Decimal(BIG_NUM)),
            "c_f4": ("3.25", 3.25),
            "c_f8": ("-1.5e300", -1.5e300),
            "c_bool": ("true", True),
            "c_text": ("E'Gr\u00fc\u00dfe, \u4e16\u754c \U0001f389 \"q\" \\n nl'",
                       "Gr\u00fc\u00dfe, \u4e16\u754c \U0001f389 \"q\" \n nl"),
            "c_vc": ("'v\u00e5rchar'", "v\u00e5rchar"),
            "c_ch": ("'ab'", "ab   "),
            "c_bytea": ("'\\x00ff10'::bytea", b"\x00\xff\x10"),
            "c_date": ("'2026-02-28'", days("2026-02-28")),
            "c_time": ("'23:59:59.999999'", 86399999999),
            "c_time3": ("'12:34:56.789'", (12 * 3600 + 34 * 60 + 56) * 1000 + 789),
            "c_timetz": ("'10:15:30.5+02'", "08:15:30.5Z"),
            "c_ts": ("'2026-11-24 12:00:00.123456'", ts_us("2026-11-24T12:00:00.123456")),
            "c_ts3": ("'1969-12-31 23:59:59.999'", -1),
            "c_tstz": ("'2026-11-24 12:00:00.5+02'", "2026-11-24T10:00:00.500000Z"),
            "c_iv": ("'1 year 2 mons 3 days 04:05:06.789'",
                     14 * MONTH_US + 3 * DAY_US + ((4 * 60 + 5) * 60 + 6) * 1000000 + 789000),
            "c_uuid": ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                       "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "c_json": ("'{\"b\": 1, \"a\": [1, 2]}'", "{\"b\": 1, \"a\": [1, 2]}"),
            "c_jsonb": ("'{\"k\": \"\u00fc\", \"n\": 1.5}'", ("json", {"k": "\u00fc", "n": 1.5})),
            "c_inet": ("'192.168.0.1/24'", "192.168.0.1/24"),
            "c_aint": ("'{1,NULL,3}'", [1, None, 3]),
            "c_atext": ("'{\"a,b\",\"c\\\"d\",NULL,\"\u00e9\"}'", ["a,b", "c\"d", None, "\u00e9"]),
            "c_anum": ("'{1.5,-2,NULL}'", [decimal.Decimal("1.5"), decimal.Decimal("-2"), None]),
            "c_mood": ("'happy'", "happy"),
            "c_dom": ("42", 42),
        },
        3: {
            "c_int2": ("32767", 32767),
            "c_int8": ("9223372036854775807", 9223372036854775807),
            "c_num": ("-0.001", decimal.Decimal("-0.001")),
            "c_numv": ("'NaN'", None),  # decimal.handling.mode=precise has no NaN
            "c_f4": ("'NaN'", ("nan",)),
            "c_f8": ("'-Infinity'", float("-inf")),
            "c_date": ("'0044-03-15 BC'",  # astronomical year -43, shifted by a 400-year cycle
                       (datetime.date(-43 + 400, 3, 15) - EPOCH.date()).days - 146097),
            "c_ts": ("'infinity'", 2**63 - 1),
            "c_tstz": ("'-infinity'", "-infinity"),
            "c_iv": ("'-1 days +00:00:01'", -DAY_US + 1000000),
            "c_aint": ("'{}'", []),
            "c_atext": ("'{}'", []),
            "c_anum": ("'{NULL}'", [None]),
            "c_text": ("''", ""),
        },
        4: {
            "c_int4": ("1", 1),
            "c_text": ("'small'", "small"),
            "c_big": ("(SELECT string_agg(md5(i::text), '' ORDER BY i) FROM generate_series(1, %d) i)"
                      % big_chunks, big_text(big_chunks)),
        },
    }


def sql_types(big_chunks):
    out = ["CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');",
           "CREATE DOMAIN posint AS integer CHECK (VALUE > 0);",
           "CREATE TABLE all_types (%s);" % COLUMNS,
           "ALTER TABLE all_types ALTER COLUMN c_big SET STORAGE EXTERNAL;"]
    return "\n".join(out)


def sql_changes(big_chunks):
    out = []
    for rid, cols in rows(big_chunks).items():
        names = ["id"] + list(cols)
        vals = [str(rid)] + [cols[c][0] for c in cols]
        out.append("INSERT INTO all_types (%s) VALUES (%s);" % (", ".join(names), ", ".join(vals)))
    out += [
        "UPDATE all_types SET c_int4 = 5 WHERE id = 4;",
        "UPDATE all_types SET c_text = '\u00c4nderung' WHERE id = 2;",
        "ALTER TABLE all_types REPLICA IDENTITY FULL;",
        "UPDATE all_types SET c_int4 = 6 WHERE id = 4;",
        "DELETE FROM all_types WHERE id = 2;",
        "DELETE FROM all_types WHERE id = 3;",
        "TRUNCATE all_types;",
    ]
    return "\n".join(out)


def consume(bootstrap, registry, topic, count, idle_s=4.0, timeout_s=300):
    from confluent_kafka import Consumer, KafkaError
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    deser = None
    if registry:
        deser = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "cdc-check-%d" % time.time_ns(),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "topic.metadata.refresh.interval.ms": 1000,
    })
    c.subscribe([topic])
    recs = []
    start = last = time.monotonic()
    while True:
        m = c.poll(0.2)
        now = time.monotonic()
        if m is None:
            if len(recs) >= count and now - last >= idle_s:
                break
            if now - start > timeout_s:
                break
            continue
        if m.error():
            if m.error().code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                print("consume: %s" % m.error(), file=sys.stderr)
            continue
        last = now
        r = {"offset": m.offset(), "raw_value": m.value(), "raw_key": m.key()}
        if deser:
            r["key"] = deser(m.key(), SerializationContext(m.topic(), MessageField.KEY)) if m.key() else None
            r["value"] = deser(m.value(), SerializationContext(m.topic(), MessageField.VALUE)) if m.value() else None
            r["schema_id"] = struct.unpack(">I", m.value()[1:5])[0] if m.value() else None
        else:
            r["key"] = json.loads(m.key()) if m.key() else None
            r["value"] = json.loads(m.value()) if m.value() else None
        recs.append(r)
    c.close()
    return recs


def decode_vsd(v):
    if isinstance(v, dict) and set(v) == {"scale", "value"}:
        return decimal.Decimal(int.from_bytes(v["value"], "big", signed=True)).scaleb(-v["scale"])
    return v


def same(got, want):
    got = decode_vsd(got)
    if isinstance(want, tuple) and want and want[0] == "nan":
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, tuple) and want and want[0] == "json":
        return isinstance(got, str) and json.loads(got) == want[1]
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, float) and isinstance(got, float):
        return got == want or f32(want) == got
    if isinstance(want, decimal.Decimal):
        return isinstance(got, decimal.Decimal) and got == want
    return type(got) == type(want) and got == want


class Checker:
    def __init__(self):
        self.errors = []

    def eq(self, what, got, want):
        if not same(got, want):
            g = repr(got)
            w = repr(want)
            self.errors.append("%s: got %s, want %s" % (what, g[:200], w[:200]))

    def row(self, what, image, rid, cols, big_chunks, overrides=None, unavailable=()):
        if image is None:
            self.errors.append("%s: image is null" % what)
            return
        want = {c: v[1] for c, v in rows(big_chunks)[rid].items()}
        want.update(overrides or {})
        for name in NAMES:
            if name == "id":
                self.eq(what + ".id", image.get("id"), rid)
                continue
            if name in unavailable:
                self.eq(what + "." + name, image.get(name), UNAVAILABLE)
                continue
            self.eq(what + "." + name, image.get(name), want.get(name))


def check_types(a):
    recs = consume(a.bootstrap, a.registry, a.topic, 12)
    ck = Checker()
    ops = [(r["value"] or {}).get("op") if r["value"] else None for r in recs]
    print("cdc_check: %d records, ops %s" % (len(recs), ops), file=sys.stderr)
    want_ops = ["c", "c", "c", "c", "u", "u", "u", "d", None, "d", None, "t"]
    if ops != want_ops:
        print("cdc_check: FAIL: ops %s, want %s" % (ops, want_ops), file=sys.stderr)
        return 1
    keys = [r["key"] for r in recs]
    for i, rid in enumerate([1, 2, 3, 4, 4, 2, 4, 2, 2, 3, 3]):
        ck.eq("record %d key" % i, keys[i], {"id": rid})
    ck.eq("truncate key", keys[11], None)
    v = [r["value"] for r in recs]
    bc = a.big_chunks
    for i in range(4):
        ck.eq("insert %d before" % (i + 1), v[i]["before"], None)
        ck.row("insert %d after" % (i + 1), v[i]["after"], i + 1, None, bc)
    # update without REPLICA IDENTITY FULL: no before; the unchanged TOASTed
    # value is Debezium's placeholder, never a fake value
    ck.eq("update 4 before", v[4]["before"], None)
    ck.row("update 4 after", v[4]["after"], 4, None, bc, {"c_int4": 5}, unavailable=("c_big",))
    ck.eq("update 2 before", v[5]["before"], None)
    ck.row("update 2 after", v[5]["after"], 2, None, bc, {"c_text": "\u00c4nderung"})
    # REPLICA IDENTITY FULL: the full old image, TOASTed value included
    ck.row("update 4 (full) before", v[6]["before"], 4, None, bc, {"c_int4": 5})
    after_big = (v[6]["after"] or {}).get("c_big")
    print("cdc_check: after image of the FULL update carries c_big as %s" %
          ("the placeholder" if after_big == UNAVAILABLE else "%d characters" % len(after_big or "")),
          file=sys.stderr)
    ck.row("update 4 (full) after", v[6]["after"], 4, None, bc, {"c_int4": 6},
           unavailable=("c_big",) if after_big == UNAVAILABLE else ())
    ck.row("delete 2 before", v[7]["before"], 2, None, bc, {"c_text": "\u00c4nderung"})
    ck.eq("delete 2 after", v[7]["after"], None)
    ck.row("delete 3 before", v[9]["before"], 3, None, bc)
    for i, r in enumerate(v):
        if r is None:
            continue
        s = r["source"]
        ck.eq("record %d source.connector" % i, s["connector"], "postgresql")
        ck.eq("record %d source.table" % i, s["table"], "all_types")
        ck.eq("record %d source.schema" % i, s["schema"], "public")
        ck.eq("record %d source.snapshot" % i, s["snapshot"], "false")
        if not isinstance(s.get("txId"), int) or not isinstance(s.get("lsn"), int):
            ck.errors.append("record %d: source.txId/lsn missing: %r" % (i, s))
        if not isinstance(r.get("ts_ms"), int) or r["ts_ms"] < s["ts_ms"]:
            ck.errors.append("record %d: ts_ms %r before source.ts_ms %r" % (i, r.get("ts_ms"), s["ts_ms"]))
    lsns = [(json.loads(r["source"]["sequence"])[0], r["source"]["lsn"]) for r in v if r]
    if any(int(a_[0]) > int(b_[0]) for a_, b_ in zip(lsns, lsns[1:])):
        ck.errors.append("commit LSNs not in order: %s" % lsns)
    size = max(len(r["raw_value"] or b"") for r in recs)
    print("cdc_check: largest record value %d bytes" % size, file=sys.stderr)
    for e in ck.errors:
        print("cdc_check: MISMATCH %s" % e, file=sys.stderr)
    if ck.errors:
        return 1
    print("cdc_check: all %d records decode and match what was written" % len(recs), file=sys.stderr)
    return 0


def check_alter(a):
    """Rows 1..N written in phases of --per rows with ALTER TABLE between them
    (see test_cdc_alter.sh): every row of phases 1-4 and 6 exactly once, each
    decoded with the schema of its phase; phase 5 (a narrowing the registry
    rejects) never published."""
    per = a.per
    recs = consume(a.bootstrap, a.registry, a.topic, 5 * per)
    ck = Checker()
    by_id = {}
    for r in recs:
        if r["value"] is None or r["value"]["after"] is None:
            ck.errors.append("unexpected record %r" % (r["value"],))
            continue
        after = r["value"]["after"]
        by_id.setdefault(after["id"], []).append((r, after))
    fields = {1: ["id", "note", "phase", "qty"], 2: ["added", "id", "note", "phase", "qty"],
              3: ["added", "id", "phase", "qty"], 4: ["added", "id", "phase", "qty"],
              6: ["added", "id", "phase", "qty"]}
    ids_by_phase = {}
    for rid in range(1, 6 * per + 1):
        phase = (rid - 1) // per + 1
        got = by_id.get(rid, [])
        if phase == 5:
            if got:
                ck.errors.append("row %d of the rejected schema was published" % rid)
            continue
        if len(got) != 1:
            ck.errors.append("row %d (phase %d) arrived %d times" % (rid, phase, len(got)))
            continue
        r, after = got[0]
        ids_by_phase.setdefault(phase, set()).add(r["schema_id"])
        ck.eq("row %d phase" % rid, after.get("phase"), phase)
        ck.eq("row %d fields" % rid, sorted(after), fields[phase])
        if phase in (1, 2, 3):
            ck.eq("row %d qty" % rid, after["qty"], rid)
        else:
            ck.eq("row %d qty (bigint)" % rid, after["qty"], rid * 10000000000)
        if phase in (2, 3, 4, 6):
            ck.eq("row %d added" % rid, after["added"], "a%d" % rid)
        if phase in (1, 2):
            ck.eq("row %d note" % rid, after["note"], "n\u00f6te %d" % rid)
    print("cdc_check: %d records, %d rows; value schema ids by phase %s" %
          (len(recs), len(by_id), {k: sorted(v) for k, v in sorted(ids_by_phase.items())}),
          file=sys.stderr)
    one = {p: next(iter(v)) for p, v in ids_by_phase.items() if len(v) == 1}
    if len(one) != 5:
        ck.errors.append("each phase must use exactly one schema id: %s" % ids_by_phase)
    elif len({one[1], one[2], one[3], one[4]}) != 4 or one[6] != one[4]:
        ck.errors.append("phases 1-4 need 4 schema versions and phase 6 the one of phase 4: %s" % one)
    for e in ck.errors:
        print("cdc_check: MISMATCH %s" % e, file=sys.stderr)
    if not ck.errors:
        print("cdc_check: every row once, each decoded with its own schema version", file=sys.stderr)
    return 1 if ck.errors else 0


def check_pii(a):
    """columns_exclude / mask_hash / mask_null on table pii (Avro)."""
    recs = consume(a.bootstrap, a.registry, a.topic, a.rows)
    ck = Checker()
    if len(recs) != a.rows:
        ck.errors.append("%d records, want %d" % (len(recs), a.rows))
    for i, r in enumerate(recs):
        after = r["value"]["after"]
        rid = after["id"]
        ck.eq("record %d fields" % i, sorted(after), ["email", "id", "keep", "ssn"])
        ck.eq("record %d email" % i, after["email"],
              hashlib.sha256(("user%d@example.com" % rid).encode()).hexdigest())
        ck.eq("record %d ssn" % i, after["ssn"], None)
        ck.eq("record %d keep" % i, after["keep"], rid * 2)
        if b"secret" in r["raw_value"] or b"example.com" in r["raw_value"]:
            ck.errors.append("record %d leaks a filtered or masked value" % i)
    for e in ck.errors:
        print("cdc_check: MISMATCH %s" % e, file=sys.stderr)
    print("cdc_check: %d filtered/masked records checked" % len(recs), file=sys.stderr)
    return 1 if ck.errors else 0


def check_rowfilter(a):
    """row_filter "status <> 'draft'": only the paid rows (ids 2 and 4)."""
    recs = consume(a.bootstrap, None, a.topic, 2)
    ids = sorted(r["value"]["after"]["id"] for r in recs)
    print("cdc_check: row filter passed ids %s" % ids, file=sys.stderr)
    return 0 if ids == [2, 4] else 1


def check_json(a):
    recs = consume(a.bootstrap, None, a.topic, a.rows)
    ck = Checker()
    if len(recs) != a.rows:
        ck.errors.append("%d records, want %d" % (len(recs), a.rows))
    for i, r in enumerate(recs):
        v = r["value"]
        if a.schemas:
            if set(v) != {"schema", "payload"} or v["schema"]["name"].split(".")[-1] != "Envelope":
                ck.errors.append("record %d: no schema block: %s" % (i, str(v)[:200]))
                continue
            k = r["key"]["payload"]
            v = v["payload"]
        else:
            k = r["key"]
        ck.eq("record %d key" % i, k, {"id": v["after"]["id"]})
        ck.eq("record %d op" % i, v["op"], "c")
        ck.eq("record %d c_tstz" % i, v["after"]["c_tstz"], "2026-11-24T10:00:00.500000Z")
        raw = v["after"]["c_num"]
        ck.eq("record %d c_num" % i,
              decimal.Decimal(int.from_bytes(base64.b64decode(raw), "big", signed=True)).scaleb(-3),
              decimal.Decimal("%d.125" % v["after"]["id"]))
    for e in ck.errors:
        print("cdc_check: MISMATCH %s" % e, file=sys.stderr)
    print("cdc_check: %d JSON records checked" % len(recs), file=sys.stderr)
    return 1 if ck.errors else 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "sql-schema":
        print(sql_types(int(sys.argv[2])))
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "sql-changes":
        print(sql_changes(int(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["types", "alter", "json", "pii", "rowfilter"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--big-chunks", type=int, default=32768)
    ap.add_argument("--rows", type=int, default=0)
    ap.add_argument("--per", type=int, default=20)
    ap.add_argument("--schemas", type=int, default=1)
    a = ap.parse_args()
    return {"types": check_types, "alter": check_alter, "json": check_json, "pii": check_pii, "rowfilter": check_rowfilter}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
