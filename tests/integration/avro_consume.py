#!/usr/bin/env python3
"""Reads Kafka topics (read_committed) and decodes every value as another
language's consumer would, printing one JSON line per record.

  --mode registry   Confluent wire format, decoded by confluent-kafka's
                    AvroDeserializer against the schema registry
  --mode single     Avro single-object encoding, decoded by fastavro with the
                    schema found by fingerprint in --store-dir
                    (<fingerprint as 16 hex digits>.avsc, written by outboxd)

Stops after --idle-ms without a new record (or --count records), or fails
after --timeout-s. Values are made JSON-friendly: Decimal -> "str",
date/time/datetime -> ISO text, UUID -> str, bytes -> {"b64": ...};
each line also carries the schema id (registry) or fingerprint (single).
Undecodable records are printed with an "error" member (never skipped).
"""
import argparse
import base64
import datetime
import decimal
import io
import json
import os
import struct
import sys
import time
import uuid

import fastavro
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc)
        return {"datetime": v.isoformat()}
    if isinstance(v, (datetime.date, datetime.time)):
        return {type(v).__name__: v.isoformat()}
    if isinstance(v, uuid.UUID):
        return {"uuid": str(v)}
    if isinstance(v, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, float) and v != v:
        return {"float": "NaN"}
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return {"float": "Infinity" if v > 0 else "-Infinity"}
    return v


class SingleObject:
    def __init__(self, store_dir):
        self.store_dir = store_dir
        self.schemas = {}

    def __call__(self, value):
        if len(value) < 10 or value[0:2] != b"\xc3\x01":
            raise ValueError("not single-object encoded (magic %r)" % value[:2])
        fp = struct.unpack("<Q", value[2:10])[0]
        key = "%016x" % fp
        if key not in self.schemas:
            path = os.path.join(self.store_dir, key + ".avsc")
            with open(path) as f:
                schema = fastavro.parse_schema(json.load(f))
            self.schemas[key] = schema
        buf = io.BytesIO(value[10:])
        datum = fastavro.schemaless_reader(buf, self.schemas[key])
        if buf.tell() != len(value) - 10:
            raise ValueError("%d trailing bytes" % (len(value) - 10 - buf.tell()))
        return datum, key


class Registry:
    def __init__(self, url):
        self.client = SchemaRegistryClient({"url": url})
        self.deser = AvroDeserializer(self.client)

    def __call__(self, value, topic):
        if len(value) < 5 or value[0] != 0:
            raise ValueError("not Confluent wire format (magic %r)" % value[:1])
        sid = struct.unpack(">I", value[1:5])[0]
        datum = self.deser(value, SerializationContext(topic, MessageField.VALUE))
        return datum, sid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True, help="topic name or ^regex")
    ap.add_argument("--mode", choices=["registry", "single"], required=True)
    ap.add_argument("--registry-url")
    ap.add_argument("--store-dir")
    ap.add_argument("--idle-ms", type=int, default=5000)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--timeout-s", type=int, default=600)
    ap.add_argument("--out", default="-")
    a = ap.parse_args()

    decode = Registry(a.registry_url) if a.mode == "registry" else SingleObject(a.store_dir)
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "avro-consume-%d-%d" % (os.getpid(), time.time_ns()),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "topic.metadata.refresh.interval.ms": 1000,
    })
    c.subscribe([a.topic])
    out = sys.stdout if a.out == "-" else open(a.out, "w", buffering=1)
    n = 0
    last = time.monotonic()
    start = last
    while True:
        m = c.poll(0.2)
        now = time.monotonic()
        if m is None:
            if n and (now - last) * 1000 >= a.idle_ms:
                break
            if now - start > a.timeout_s:
                print("avro_consume: timed out after %d records" % n, file=sys.stderr)
                sys.exit(2)
            continue
        if m.error():
            if m.error().code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue
            print("avro_consume: %s" % m.error(), file=sys.stderr)
            continue
        last = now
        rec = {
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "key": m.key().decode() if m.key() is not None else None,
            "headers": {k: (v.decode(errors="replace") if v is not None else None)
                        for k, v in (m.headers() or [])},
        }
        try:
            if a.mode == "registry":
                datum, rec["schema_id"] = decode(m.value(), m.topic())
            else:
                datum, rec["fingerprint"] = decode(m.value())
            rec["value"] = plain(datum)
        except Exception as e:  # reported, never skipped
            rec["error"] = "%s: %s" % (type(e).__name__, e)
        out.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        n += 1
        if a.count and n >= a.count:
            break
    c.close()
    print("avro_consume: %d records from %s" % (n, a.topic), file=sys.stderr)


if __name__ == "__main__":
    main()
