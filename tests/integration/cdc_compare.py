#!/usr/bin/env python3
"""CDC side-by-side comparer for test_cdc_side_by_side.sh.

  cdc_compare.py compare BOOTSTRAP N TIMEOUT_S T0_MS DBZ_TOPIC_PREFIX TOPIC...

Reads, read_committed, every record of TOPIC... (written by outboxd) and of
DBZ_TOPIC_PREFIX+TOPIC... (the same topics as Debezium names them, renamed by
a RegexRouter so that both can share one broker; nothing else in Debezium's
records is touched), until each side holds N records (or TIMEOUT_S passes).
Then, topic by topic and partition by partition, the records must be the
same in the same order (so per-key order and the order of keys within a
partition hold too), field for field:

  - topic (after Debezium's rename), partition, key bytes (exact), headers;
  - value: None for a tombstone, else JSON (JsonConverter, schemas.enable)
    parsed keeping member order and the exact text of every number; both the
    "schema" and the "payload" parts are compared in full, except for the
    paths in LEGIT below, each for the reason given there.

The Kafka record timestamp is not compared (LEGIT_RECORD): Connect stamps
its records with the time the task polled them, outboxd with its producer's
time; both are checked to be no older than T0_MS.

With CDC_COMPARE_REGISTRY=<Confluent API base URL>, keys and values are in
Confluent's wire format and are compared as {"schema": the schema registered
under the record's id, "payload": the datum decoded with it} (ids differ by
registration order); CDC_COMPARE_OBX_PREFIX is then the prefix of outboxd's
topics. CDC_COMPARE_NOT_NULL_DEFAULTS and CDC_COMPARE_KEY_COLUMNS name the
columns whose NOT NULL-related differences are reconciled (see below).

Prints a summary and the first differences; exits 1 on any difference.
"""
import json
import os
import sys
import time

from confluent_kafka import Consumer, TopicPartition

# Value paths (inside "payload") allowed to differ, each with its reason.
# Every one of them is still checked to be present on both sides with a
# plausible value (check_legit); nothing else is ignored.
LEGIT = {
    ("ts_ms",): "envelope ts_ms: when each connector built the event (processing time)",
    ("ts_us",): "envelope ts_us: as ts_ms",
    ("ts_ns",): "envelope ts_ns: as ts_ms",
    ("source", "version"): "the connector's version string (Debezium 3.0.8.Final vs outboxd's)",
    ("source", "sequence", 0): "sequence[0]: Debezium's previous transaction's commit LSN, "
                               "outboxd's this transaction's commit LSN (README, Differences "
                               "from Debezium); sequence[1], the change's LSN, must match",
}
# NOT NULL columns with a DEFAULT, "name=default text" in the environment
# variable CDC_COMPARE_NOT_NULL_DEFAULTS (comma-separated). Debezium reads
# both from the catalog: the field is required ("optional": false) with a
# "default" member in before/after, and a delete without REPLICA IDENTITY
# FULL (PostgreSQL sends only the key) gets the column's default in before,
# a value the row may never have had. outboxd knows neither (pgoutput does
# not send them) and writes null (README, Differences from Debezium). Only
# exactly these differences are reconciled (reconcile_not_null), pairwise.
NOT_NULL_DEFAULTS = dict(kv.split("=", 1) for kv in
                         os.environ.get("CDC_COMPARE_NOT_NULL_DEFAULTS", "").split(",") if kv)
LEGIT_RECORD = "Kafka record timestamp: Connect's poll time vs outboxd's producer time"


def read_side(bootstrap, topics, n, deadline):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdccmp-%d" % time.time_ns(),
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    md = c.list_topics(timeout=30)
    tps = []
    for t in topics:
        if t not in md.topics or md.topics[t].error is not None:
            print("topic %s does not exist" % t)
            continue
        for p in md.topics[t].partitions:
            tps.append(TopicPartition(t, p, 0))
    c.assign(tps)
    recs = []
    while len(recs) < n and time.time() < deadline:
        for m in c.consume(500, 1.0):
            if m.error():
                print("consumer: %s" % m.error())
                continue
            recs.append(m)
    # A short drain: more than N records is a difference too.
    end = time.time() + 2.0
    while time.time() < end:
        for m in c.consume(500, 0.5):
            if not m.error():
                recs.append(m)
    c.close()
    return recs


REGISTRY = os.environ.get("CDC_COMPARE_REGISTRY")
_schemas = {}


def registry_schema(sid):
    if sid not in _schemas:
        import urllib.request
        import fastavro
        with urllib.request.urlopen("%s/schemas/ids/%d" % (REGISTRY, sid), timeout=30) as r:
            text = json.load(r)["schema"]
        _schemas[sid] = (parse(text.encode()), fastavro.parse_schema(json.loads(text)))
    return _schemas[sid]


def as_parsed(v):
    """A decoded Avro datum in parse()'s form (numbers and bytes tagged)."""
    import decimal
    if isinstance(v, dict):
        return ("obj", [(k, as_parsed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return [as_parsed(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return ("int", str(v))
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, decimal.Decimal):
        return ("decimal", str(v))
    if isinstance(v, bytes):
        return ("bytes", v.hex())
    return ("other", repr(v))


def decode(b):
    """Confluent wire format -> {"schema": registered schema, "payload": datum},
    parsed like JsonConverter's output so that one comparison serves both."""
    if b is None:
        return None
    if len(b) < 5 or b[0] != 0:
        return ("not in the wire format", b)
    import io
    import fastavro
    schema, parsed_schema = registry_schema(int.from_bytes(b[1:5], "big"))
    datum = fastavro.schemaless_reader(io.BytesIO(b[5:]), parsed_schema)
    return ("obj", [("schema", schema), ("payload", as_parsed(datum))])


def num(kind):
    return lambda s: (kind, s)


def parse(b):
    if b is None:
        return None
    try:
        return json.loads(b.decode("utf-8"), object_pairs_hook=lambda p: ("obj", p),
                          parse_int=num("int"), parse_float=num("float"),
                          parse_constant=num("const"))
    except (ValueError, UnicodeDecodeError) as e:
        return ("unparsable", str(e), b)


def get(node, path):
    """The value at path (member names and array indexes) or KeyError."""
    for p in path:
        if isinstance(node, tuple) and node[0] == "obj" and isinstance(p, str):
            hits = [v for k, v in node[1] if k == p]
            if len(hits) != 1:
                raise KeyError(p)
            node = hits[0]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            raise KeyError(p)
    return node


def blank(node, path, mark):
    """node with the value at path replaced by mark (a copy)."""
    if not path:
        return mark
    p = path[0]
    if isinstance(node, tuple) and node[0] == "obj":
        return ("obj", [(k, blank(v, path[1:], mark) if k == p else v) for k, v in node[1]])
    if isinstance(node, list):
        return [blank(v, path[1:], mark) if i == p else v for i, v in enumerate(node)]
    return node


def check_legit(path, v, t0_ms, side):
    """A legitimately differing value must still be there and plausible."""
    now_ms = time.time() * 1000
    if path[0] in ("ts_ms", "ts_us", "ts_ns"):
        scale = {"ts_ms": 1, "ts_us": 1000, "ts_ns": 1000000}[path[0]]
        if not (isinstance(v, tuple) and v[0] == "int"):
            return "%s is not an integer: %r" % (path[0], v)
        ms = int(v[1]) / scale
        if not (t0_ms - 1000 <= ms <= now_ms + 1000):
            return "%s %s outside the run (%d..%d)" % (path[0], v[1], t0_ms, now_ms)
        return None
    if path == ("source", "version"):
        return None if isinstance(v, str) and v else "empty version %r" % (v,)
    if path == ("source", "sequence", 0):
        if v is None and side == "debezium":
            return None  # the first transaction after the connector started has no previous one
        return None if isinstance(v, str) and "/" not in v and v.isdigit() else "odd sequence[0] %r" % (v,)
    return None


def normalize(value, t0_ms, problems, side):
    """Blank the LEGIT paths of a parsed value (checking each first)."""
    if value is None or value[0] != "obj":
        return value
    payload = get(value, ("payload",))
    for path in LEGIT:
        if path == ("source", "sequence", 0):
            try:
                seq = json.loads(get(payload, ("source", "sequence")))
            except (KeyError, TypeError, ValueError) as e:
                problems.append("source.sequence unreadable: %s" % e)
                continue
            if not (isinstance(seq, list) and len(seq) == 2):
                problems.append("source.sequence not a pair: %r" % (seq,))
                continue
            err = check_legit(path, seq[0], t0_ms, side)
            if err:
                problems.append(err)
            payload = blank(payload, ("source", "sequence"), ("sequence[1] only", seq[1]))
            continue
        try:
            v = get(payload, path)
        except KeyError:
            problems.append("%s missing" % ".".join(map(str, path)))
            continue
        err = check_legit(path, v, t0_ms, side)
        if err:
            problems.append(err)
        payload = blank(payload, path, ("legitimately differs",))
    return ("obj", [(k, payload if k == "payload" else v) for k, v in value[1]])


def describe(m, strip, t0_ms, problems, side):
    ts_type, ts = m.timestamp()
    if ts < t0_ms - 1000:
        problems.append("record timestamp %d before the run" % ts)
    return {
        "topic": m.topic()[len(strip):],
        "partition": m.partition(),
        "key": decode(m.key()) if REGISTRY else m.key(),
        "value": normalize(decode(m.value()) if REGISTRY else parse(m.value()), t0_ms, problems, side),
        "headers": [(k, v) for k, v in (m.headers() or [])],
        "raw_value": m.value(),
    }


def all_diffs(a, b, path, out):
    """Every differing path of two parsed values (record-independent: array
    indexes inside "fields" are replaced by the field's name)."""
    if type(a) is not type(b):
        out.append((path, a, b))
        return
    if isinstance(a, tuple) and a and a[0] == "obj" and b[0] == "obj":
        ka, kb = [k for k, _ in a[1]], [k for k, _ in b[1]]
        if ka != kb:
            out.append((path + " (members)", ka, kb))
            return
        for (k, va), (_, vb) in zip(a[1], b[1]):
            if va != vb:
                all_diffs(va, vb, "%s.%s" % (path, k), out)
        return
    if isinstance(a, list):
        if len(a) != len(b):
            out.append((path + " (length)", a, b))
            return
        for i, (va, vb) in enumerate(zip(a, b)):
            if va != vb:
                name = i
                try:
                    name = get(va, ("field",))
                except KeyError:
                    pass
                all_diffs(va, vb, "%s[%s]" % (path, name), out)
        return
    out.append((path, a, b))


def short(v, n=160):
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def members(node):
    return node[1] if isinstance(node, tuple) and node and node[0] == "obj" else None


KEY_COLUMNS = [c for c in os.environ.get("CDC_COMPARE_KEY_COLUMNS", "").split(",") if c]


def reconcile_avro_schema(x, y, counts):
    """Avro: Debezium's field of a NOT NULL column is its plain type (a key
    column: {"name", "type": T}; with a DEFAULT: T carries connect.default and
    the field "default"); outboxd's every column is {"name", "type": ["null",
    T], "default": null} (README, Differences from Debezium: nullable unions
    keep schema evolution compatible). For the KEY_COLUMNS and
    NOT_NULL_DEFAULTS columns exactly that form is taken as equal."""
    try:
        xf = get(x, ("schema", "fields", 0, "type", 1, "fields"))
        yf = get(y, ("schema", "fields", 0, "type", 1, "fields"))
    except KeyError:
        return x, y
    if len(xf) != len(yf):
        return x, y
    fixed = []
    for f, g in zip(xf, yf):
        fm, gm = dict(members(f) or []), dict(members(g) or [])
        name = fm.get("name")
        if name == gm.get("name") and (name in KEY_COLUMNS or name in NOT_NULL_DEFAULTS):
            t = fm.get("type")
            if name in NOT_NULL_DEFAULTS:
                tm = members(t) or []
                want_f = [("name", name), ("type", ("obj", [("type", dict(tm).get("type")),
                                                             ("connect.default", NOT_NULL_DEFAULTS[name])])),
                          ("default", NOT_NULL_DEFAULTS[name])]
                base = dict(tm).get("type")
            else:
                want_f = [("name", name), ("type", t)]
                base = t
            if members(f) == want_f and members(g) == [("name", name), ("type", ["null", base]),
                                                      ("default", None)]:
                counts["avro_schema"] = counts.get("avro_schema", 0) + 1
                g = f
        fixed.append(g)
    y = ("obj", [(k, v) for k, v in y[1]])
    schema = get(y, ("schema",))
    before = get(schema, ("fields", 0))
    rec = get(before, ("type", 1))
    rec = ("obj", [(k, fixed if k == "fields" else v) for k, v in rec[1]])
    before = ("obj", [(k, [get(before, ("type", 0)), rec] if k == "type" else v) for k, v in before[1]])
    schema = ("obj", [(k, [before] + get(schema, ("fields",))[1:] if k == "fields" else v)
                      for k, v in schema[1]])
    return x, blank(y, ("schema",), schema)


def reconcile_not_null(x, y, counts):
    """(debezium value, outboxd value) with the NOT_NULL_DEFAULTS differences
    taken out of both, each only in its exact expected form."""
    if not NOT_NULL_DEFAULTS or x is None or y is None or x[0] != "obj" or y[0] != "obj":
        return x, y

    def fix_schema(v, dbz):
        out = []
        for k, node in members(v):
            if k == "schema":
                node = ("obj", [(sk, [fix_part(f, dbz) for f in sv] if sk == "fields" else sv)
                                for sk, sv in members(node)])
            out.append((k, node))
        return ("obj", out)

    def fix_part(part, dbz):
        # fields[before] / fields[after]: structs of the columns
        m = members(part)
        if not m or dict(m).get("field") not in ("before", "after"):
            return part
        cols = []
        for f in dict(m)["fields"]:
            fm = members(f)
            name = dict(fm).get("field")
            if name in NOT_NULL_DEFAULTS:
                want = [("optional", False), ("default", NOT_NULL_DEFAULTS[name])] if dbz else \
                       [("optional", True)]
                have = [(k, v) for k, v in fm if k in ("optional", "default")]
                if have == want:
                    counts["schema"] = counts.get("schema", 0) + 1
                    f = ("obj", [(k, v) for k, v in fm if k not in ("optional", "default")])
            cols.append(f)
        return ("obj", [(k, cols if k == "fields" else v) for k, v in m])

    if REGISTRY:
        x, y = reconcile_avro_schema(x, y, counts)
    else:
        x, y = fix_schema(x, True), fix_schema(y, False)
    try:
        op = get(x, ("payload", "op"))
        bx, by = get(x, ("payload", "before")), get(y, ("payload", "before"))
    except KeyError:
        return x, y
    if op == "d" and members(bx) and members(by):
        nbx, nby = [], []
        for (k, vx), (k2, vy) in zip(members(bx), members(by)):
            if k == k2 and k in NOT_NULL_DEFAULTS and vx == NOT_NULL_DEFAULTS[k] and vy is None:
                counts["delete_before"] = counts.get("delete_before", 0) + 1
                vx = vy = ("debezium: the column default, outboxd: null",)
            nbx.append((k, vx))
            nby.append((k2, vy))
        x = blank(x, ("payload", "before"), ("obj", nbx))
        y = blank(y, ("payload", "before"), ("obj", nby))
    return x, y


def compare(bootstrap, n, timeout, t0_ms, dprefix, topics):
    deadline = time.time() + timeout
    problems = []
    sides = {}
    oprefix = os.environ.get("CDC_COMPARE_OBX_PREFIX", "")
    for name, strip in (("debezium", dprefix), ("outboxd", oprefix)):
        recs = read_side(bootstrap, [strip + t for t in topics], n, deadline)
        parts = {}
        mine = []
        for m in recs:
            d = describe(m, strip, t0_ms, mine, name)
            parts.setdefault((d["topic"], d["partition"]), []).append(d)
        sides[name] = parts
        problems.extend("%s: %s" % (name, p) for p in mine)
        print("%s: %d records on %d topic-partitions" % (name, len(recs), len(parts)))
        if len(recs) != n:
            problems.append("%s: expected %d records, read %d" % (name, n, len(recs)))
    dz, ob = sides["debezium"], sides["outboxd"]
    diffs = []
    classes = {}  # differing path -> [count, first example]
    reconciled = {}
    for tp in sorted(set(dz) | set(ob)):
        a, b = dz.get(tp, []), ob.get(tp, [])
        if len(a) != len(b):
            diffs.append("%s[%d]: debezium %d records, outboxd %d" % (tp[0], tp[1], len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            found = []
            xv, yv = reconcile_not_null(x["value"], y["value"], reconciled)
            x, y = dict(x, value=xv), dict(y, value=yv)
            for f in ("key", "headers"):
                if x[f] != y[f]:
                    found.append((f, x[f], y[f]))
            if x["value"] != y["value"]:
                all_diffs(x["value"], y["value"], "value", found)
            if found:
                diffs.append((tp, i))
            for path, va, vb in found:
                c = classes.setdefault(path, [0, "%s[%d] #%d key %s: debezium %s, outboxd %s" %
                                              (tp[0], tp[1], i, short(x["key"], 60),
                                               short(va), short(vb))])
                c[0] += 1
    for p in problems[:10]:
        print("PROBLEM: %s" % p)
    for d in diffs:
        if isinstance(d, str):
            print("DIFF %s" % d)
    for path, (count, example) in sorted(classes.items()):
        print("DIFF %s in %d records; first: %s" % (path, count, example))
    every = [r for recs in dz.values() for r in recs]
    ops = {}
    for r in every:
        op = "tombstone"
        if r["value"] is not None:
            op = get(r["value"], ("payload", "op"))
        ops[op] = ops.get(op, 0) + 1
    placeholders = sum(1 for r in every if r["raw_value"] and b"__debezium_unavailable_value" in r["raw_value"])
    keys = {(r["topic"], repr(r["key"])) for r in every}
    print("compared %d records per side field for field (topic, partition, key%s, headers, "
          "value schema and payload, order within each partition): %d differences, %d problems; "
          "ops %s, %d keys, %d values with the TOAST placeholder" %
          (len(every), " (registered schema and datum)" if REGISTRY else " bytes", len(diffs),
           len(problems), dict(sorted(ops.items())), len(keys), placeholders))
    if NOT_NULL_DEFAULTS:
        print("NOT NULL DEFAULT columns %s reconciled as expected: %s (schema: fields; delete_before: "
              "Debezium's default against outboxd's null)" % (sorted(NOT_NULL_DEFAULTS), reconciled))
        if not reconciled.get("schema") and not reconciled.get("avro_schema"):
            problems.append("no NOT NULL DEFAULT column was reconciled: is the list right?")
            print("PROBLEM: %s" % problems[-1])
    print("allowed to differ (checked present and plausible): %s; not compared: %s" %
          ("; ".join("%s (%s)" % (".".join(map(str, p)), r) for p, r in LEGIT.items()), LEGIT_RECORD))
    if not diffs and not problems and every:
        print("sample record: key %s value %s" % (every[-1]["key"], every[-1]["raw_value"][:600]
                                                  if every[-1]["raw_value"] else None))
    return 1 if diffs or problems else 0


def main():
    if len(sys.argv) > 6 and sys.argv[1] == "compare":
        return compare(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
                       sys.argv[6], sys.argv[7:])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
