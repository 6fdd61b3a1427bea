#!/usr/bin/env python3
"""Side-by-side comparer for test_debezium_side_by_side.sh.

  dbz_compare.py create BOOTSTRAP PARTITIONS TOPIC...
  dbz_compare.py compare BOOTSTRAP N TIMEOUT_S DBZ_PREFIX OBX_PREFIX TOPIC_SUFFIX...
  dbz_compare.py wait BOOTSTRAP N TIMEOUT_S PREFIX TOPIC_SUFFIX...

wait returns once the topics PREFIX+suffix hold N committed records (1 if
they do not within the timeout).

compare reads, read_committed, every record of the topics DBZ_PREFIX+suffix
(written by Debezium) and OBX_PREFIX+suffix (written by outboxd) until each
side has N records, pairs them by their "id" header and asserts, field for
field: topic (after the prefix), partition, key bytes, value bytes (None for
a tombstone), headers (names, order, bytes, null values), timestamp and its
type, and the order of the ids within each partition. Prints a summary and
the first differences; exits 1 on any difference.

With DBZ_COMPARE_REGISTRY=<Confluent API base URL>, keys and values in
Confluent's wire format (magic 0, 4-byte schema id, Avro binary) are
compared as (schema, datum): the id is resolved to the schema registered
under it (GET /schemas/ids/N, parsed as JSON), since ids depend on the order
in which the two sides registered. outboxd's ids are also checked to be
registered under the record's subject (<topic>-key / <topic>-value), as
Confluent's converter registers them; Apicurio's converter is not held to
that: it caches ids by schema content, so a second topic with a schema
already seen gets no subject of its own.
"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request

from confluent_kafka import Consumer, TopicPartition, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, parts, topics):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The rows' event timestamps are months old: without retention.ms -1 the
    # broker's time-based retention may delete what was just written.
    fs = admin.create_topics([NewTopic(t, int(parts), 1, config={"retention.ms": "-1"})
                              for t in topics])
    for t, f in fs.items():
        try:
            f.result(60)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def read_side(bootstrap, topics, n, deadline):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dbzcmp-%d" % time.time_ns(),
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    md = c.list_topics(timeout=30)
    tps = []
    for t in topics:
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
    if len(recs) < n:
        # What the broker holds against what was read, per partition.
        got = {}
        for m in recs:
            got[(m.topic(), m.partition())] = got.get((m.topic(), m.partition()), 0) + 1
        for tp in tps:
            lo, hi = c.get_watermark_offsets(tp, timeout=10, cached=False)
            pos = c.position([TopicPartition(tp.topic, tp.partition)])[0].offset
            print("  %s[%d]: read %d, watermarks %d..%d, position %d" %
                  (tp.topic, tp.partition, got.get((tp.topic, tp.partition), 0), lo, hi, pos))
    c.close()
    return recs


REGISTRY = os.environ.get("DBZ_COMPARE_REGISTRY")
_schemas = {}
_subjects = {}


def registry_get(path):
    with urllib.request.urlopen(REGISTRY + path, timeout=30) as r:
        return json.load(r)


def subject_ids(subject):
    """Every id registered under subject (all its versions)."""
    if subject not in _subjects:
        ids = set()
        q = urllib.parse.quote(subject, safe="")
        for v in registry_get("/subjects/%s/versions" % q):
            ids.add(registry_get("/subjects/%s/versions/%d" % (q, v))["id"])
        _subjects[subject] = ids
    return _subjects[subject]


def resolve(data, topic, what, check_subject):
    """Wire-format bytes -> (schema as JSON, datum bytes); others as they are."""
    if not REGISTRY or data is None:
        return data
    if len(data) < 5 or data[0] != 0:
        return ("not in the wire format", data)
    sid = int.from_bytes(data[1:5], "big")
    if sid not in _schemas:
        _schemas[sid] = json.loads(registry_get("/schemas/ids/%d" % sid)["schema"])
    subject = "%s-%s" % (topic, what)
    if check_subject and sid not in subject_ids(subject):
        _subjects.pop(subject, None)  # registered since: read again once
        if sid not in subject_ids(subject):
            return ("id %d not registered under %s" % (sid, subject), data)
    return ("avro", _schemas[sid], data[5:])


def describe(m, prefix, check_subject=False):
    ts_type, ts = m.timestamp()
    return {
        "topic": m.topic()[len(prefix):],
        "partition": m.partition(),
        "key": resolve(m.key(), m.topic(), "key", check_subject),
        "value": resolve(m.value(), m.topic(), "value", check_subject),
        "headers": [(k, v) for k, v in (m.headers() or [])],
        "timestamp": ts,
        "timestamp_type": ts_type,
    }


def raw(v):
    return v[-1] if isinstance(v, tuple) else v


def compare(bootstrap, n, timeout, dprefix, oprefix, suffixes):
    deadline = time.time() + timeout
    sides = {}
    for name, prefix in (("debezium", dprefix), ("outboxd", oprefix)):
        recs = read_side(bootstrap, [prefix + s for s in suffixes], n, deadline)
        by_id, order = {}, {}
        for m in recs:
            d = describe(m, prefix, name == "outboxd")
            ids = [v for k, v in d["headers"] if k == "id"]
            if len(ids) != 1:
                print("FAIL: %s record without exactly one id header: %r" % (name, d))
                return 1
            if ids[0] in by_id:
                print("FAIL: %s duplicate id %r" % (name, ids[0]))
                return 1
            by_id[ids[0]] = d
            order.setdefault((d["topic"], d["partition"]), []).append(ids[0])
        sides[name] = (by_id, order)
        print("%s: %d records on %d topic-partitions" % (name, len(by_id), len(order)))
    dz, ob = sides["debezium"][0], sides["outboxd"][0]
    if len(dz) != n or len(ob) != n:
        print("FAIL: expected %d records on each side, debezium %d, outboxd %d" % (n, len(dz), len(ob)))
        return 1
    diffs = 0
    fields = ["topic", "partition", "key", "value", "headers", "timestamp", "timestamp_type"]
    if os.environ.get("DBZ_COMPARE_NO_TIMESTAMP"):
        # Debezium's processing time against outboxd's producer time.
        fields = fields[:-2]
    for i, d in dz.items():
        o = ob.get(i)
        if o is None:
            diffs += 1
            if diffs <= 10:
                print("DIFF id=%r only in debezium" % i)
            continue
        for f in fields:
            if d[f] != o[f]:
                diffs += 1
                if diffs <= 10:
                    print("DIFF id=%r %s:\n  debezium: %r\n  outboxd:  %r" % (i, f, d[f], o[f]))
    if sides["debezium"][1] != sides["outboxd"][1]:
        diffs += 1
        print("DIFF: the order of ids within a partition differs")
    stats = {
        "tombstones": sum(1 for d in dz.values() if d["value"] is None),
        "null_keys": sum(1 for d in dz.values() if d["key"] in (None, b"null")),
        "null_values": sum(1 for d in dz.values() if d["value"] in (None, b"null")),
        "null_headers": sum(1 for d in dz.values() for k, v in d["headers"] if v is None),
        "non_ascii_values": sum(1 for d in dz.values() if d["value"] and max(raw(d["value"])) > 127),
        "schemas": len({json.dumps(d["value"][1], sort_keys=True) for d in dz.values()
                        if isinstance(d["value"], tuple) and len(d["value"]) == 3}),
        "connect_versions": sorted({d["value"][1]["connect.version"] for d in dz.values()
                                    if isinstance(d["value"], tuple) and len(d["value"]) == 3
                                    and isinstance(d["value"][1], dict)
                                    and "connect.version" in d["value"][1]
                                    and d["value"][1].get("type") == "record"}),
        "unversioned": sum(1 for d in dz.values()
                           if isinstance(d["value"], tuple) and len(d["value"]) == 3
                           and isinstance(d["value"][1], dict) and d["value"][1].get("type") == "record"
                           and "connect.version" not in d["value"][1]),
        "topics": len({d["topic"] for d in dz.values()}),
        "partitions_used": len(sides["debezium"][1]),
    }
    print("compared %d records field for field (%s): %d differences; %s" %
          (len(dz), ", ".join(fields), diffs, stats))
    if diffs == 0:
        sample = next(iter(dz.values()))
        print("sample record: %r" % sample)
    return 1 if diffs else 0


def main():
    if sys.argv[1] == "create":
        create(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    if sys.argv[1] == "compare":
        return compare(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6],
                       sys.argv[7:])
    if sys.argv[1] == "wait":
        n = int(sys.argv[3])
        recs = read_side(sys.argv[2], [sys.argv[5] + s for s in sys.argv[6:]], n,
                         time.time() + float(sys.argv[4]))
        print("%s*: %d of %d records" % (sys.argv[5], len(recs), n))
        return 0 if len(recs) >= n else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
