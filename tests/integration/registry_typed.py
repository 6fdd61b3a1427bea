#!/usr/bin/env python3
"""Rows for test_registry_typed.sh and the check of what consumers decoded.

  gen SEED N SQL_OUT EXPECTED_OUT   N AllTypes rows (seeded; extremes, NULLs,
                                    non-ASCII first) plus N/4 untyped rows
  check EXPECTED CONSUMED FORMAT    FORMAT: envelope | payload; every row
                                    decoded once with the values written
"""
import base64
import datetime
import decimal
import json
import random
import struct
import sys
import uuid

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
D = decimal.Decimal


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def plain_float(x):
    if x != x:
        return {"float": "NaN"}
    if x in (float("inf"), float("-inf")):
        return {"float": "Infinity" if x > 0 else "-Infinity"}
    return x


def gen_row(rnd, k):
    """(payload JSON object, expected decoded value) for AllTypes."""
    strings = ["", "plain ascii", "caf\u00e9 \ud55c\uae00 \u65e5\u672c\u8a9e \U0001F600 \u0301e",
               "quotes \" and \\ backslash \t tab \n newline \u0001 ctl", "x" * 3000]
    by = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
    hs = bytes(rnd.getrandbits(8) for _ in range(4))
    ints = [0, 1, -1, 2**31 - 1, -2**31]
    longs = [0, -1, 2**63 - 1, -2**63, 2**53 + 1, -(2**53) - 1]
    doubles = [0.0, 1.5, -2.25, 1.7976931348623157e308, -1.7976931348623157e308,
               5e-324, 2.2250738585072014e-308, 1e-7, 123456.789]
    floats = [0.0, 3.4028234663852886e38, -3.4028234663852886e38, 1.1754943508222875e-38,
              0.1, -7.25]
    i = ints[k] if k < len(ints) else rnd.randint(-2**31, 2**31 - 1)
    l = longs[k] if k < len(longs) else rnd.randint(-2**63, 2**63 - 1)
    d = doubles[k] if k < len(doubles) else rnd.uniform(-1e6, 1e6)
    fl = floats[k] if k < len(floats) else rnd.uniform(-1e3, 1e3)
    s = strings[k] if k < len(strings) else "r%d-\uc548\ub155-%x" % (k, rnd.getrandbits(32))
    # decimals: price (10,2) as strings and numbers; amount (38,6) as strings
    prices = ["0.00", "-99999999.99", "99999999.99", "0.01", "12.5", "7"]
    price_in = prices[k % len(prices)] if k < 12 else "%d.%02d" % (rnd.randint(-10**6, 10**6), rnd.randint(0, 99))
    price_json = float(price_in) if k in (4, 10) else price_in  # a JSON number too
    amounts = ["99999999999999999999999999999999.999999", "-99999999999999999999999999999999.999999",
               "0", "-0.000001", "1234567890.123456"]
    amount = amounts[k] if k < len(amounts) else "%d.%06d" % (rnd.randint(-10**20, 10**20), rnd.randint(0, 999999))
    uid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    days = [0, -1, -25567, 2932896, 20788]  # 1970-01-01, 1969-12-31, 1900-01-01, 9999-12-31
    day = EPOCH.date() + datetime.timedelta(days=days[k] if k < len(days) else rnd.randint(-20000, 40000))
    t_ms = datetime.time(23, 59, 59, 999000) if k == 0 else datetime.time(
        rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999) * 1000)
    t_us = datetime.time(0, 0, 0, 1) if k == 0 else datetime.time(
        rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999999))
    ts_ms = EPOCH + datetime.timedelta(milliseconds=rnd.randint(-2208988800000, 4102444800000))
    ts_us = EPOCH + datetime.timedelta(microseconds=rnd.randint(-2208988800000000, 4102444800000000))
    if k == 0:
        ts_us = EPOCH - datetime.timedelta(microseconds=1)
    # written with a zone offset sometimes
    off = datetime.timezone(datetime.timedelta(hours=rnd.choice([-8, 0, 9])))
    ts_ms_text = ts_ms.astimezone(off).isoformat(timespec="milliseconds")
    ts_us_text = ts_us.astimezone(off).isoformat(timespec="microseconds")
    if k == 1:
        ts_ms_text = ts_ms.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    nested = None
    if k % 3 == 1:
        nested = {"depth": 1, "child": {"depth": 2, "child": None}}
    attrs = {"k\u00e9y": "v", "null": None, "emoji\U0001F680": "\u2603"} if k % 2 else {}
    payload = {
        "b": bool(k % 2), "i": i, "l": l, "f": fl, "d": d, "s": s,
        "by": base64.b64encode(by).decode(), "color": ["RED", "GREEN", "BLUE"][k % 3],
        "hash": base64.b64encode(hs).decode(),
        "items": [{"sku": "sku-%d-%d" % (k, j), "price": price_json, "qty": j} for j in range(k % 4)],
        "attrs": attrs,
        "amount": amount, "id": uid, "day": day.isoformat(),
        "t_ms": t_ms.isoformat(timespec="milliseconds"), "t_us": t_us.isoformat(timespec="microseconds"),
        "ts_ms": ts_ms_text, "ts_us": ts_us_text,
    }
    if k % 5 != 0:  # left out otherwise: null by default
        payload["note"] = None if k % 5 == 1 else "note %d \u00fc" % k
        payload["maybe_long"] = None if k % 5 == 2 else l
    if nested is not None or k % 3 == 2:
        payload["nested"] = nested
    if k == 6:
        payload["f"], payload["d"] = "NaN", "-Infinity"
    if k == 7:
        payload["d"] = "Infinity"
    expected = {
        "b": bool(k % 2), "i": i, "l": l,
        "f": plain_float(f32(float("nan") if k == 6 else fl)),
        "d": plain_float(float("-inf") if k == 6 else float("inf") if k == 7 else d),
        "s": s, "by": {"b64": base64.b64encode(by).decode()},
        "color": ["RED", "GREEN", "BLUE"][k % 3], "hash": {"b64": base64.b64encode(hs).decode()},
        "items": [{"sku": "sku-%d-%d" % (k, j), "price": {"decimal": price_in}, "qty": j} for j in range(k % 4)],
        "attrs": attrs,
        "note": payload.get("note"), "maybe_long": payload.get("maybe_long"),
        "amount": {"decimal": amount}, "id": uid, "day": {"date": day.isoformat()},
        "t_ms": {"time": t_ms.isoformat()}, "t_us": {"time": t_us.isoformat()},
        "ts_ms": {"datetime": ts_ms.isoformat()}, "ts_us": {"datetime": ts_us.isoformat()},
        "nested": nested,
    }
    return payload, expected


def gen(seed, n, sql_out, exp_out):
    rnd = random.Random(seed)
    rows = []
    for k in range(n):
        p, e = gen_row(rnd, k)
        rows.append({"type": "AllTypes", "key": "k%d" % (k % 7), "payload": p, "expected": e})
        if k % 4 == 3:
            q = {"plain": k, "text": "\ud55c\uae00 \U0001F600", "nested": {"a": [1, None, True]}}
            rows.append({"type": "Plain", "key": "k%d" % (k % 7), "payload": q, "expected": q})
    with open(sql_out, "w") as f:
        f.write("BEGIN;\n")
        for idx, r in enumerate(rows):
            text = json.dumps(r["payload"], ensure_ascii=False)
            assert "$pl$" not in text
            f.write("INSERT INTO %%TABLE%% (aggregatetype, aggregateid, type, payload) VALUES "
                    "('typed', '%s', '%s', $pl$%s$pl$::jsonb);\n" % (r["key"], r["type"], text))
            if idx % 25 == 24:
                f.write("COMMIT;\nBEGIN;\n")
        f.write("COMMIT;\n")
    with open(exp_out, "w") as f:
        json.dump(rows, f, ensure_ascii=False)
    print("generated %d rows (%d typed) with seed %d" % (len(rows), n, seed))


def norm(v):
    """Consumer output -> comparable: decimals by value, uuids as text."""
    if isinstance(v, dict):
        if set(v) == {"decimal"}:
            return ("decimal", D(v["decimal"]))
        if set(v) == {"uuid"}:
            return v["uuid"]
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def check(exp_path, got_path, fmt):
    rows = json.load(open(exp_path))
    got = [json.loads(line) for line in open(got_path) if line.strip()]
    errors = [g for g in got if "error" in g]
    if errors:
        sys.exit("FAIL: %d records could not be decoded, first: %s" % (len(errors), errors[0]["error"]))
    if len(got) != len(rows):
        sys.exit("FAIL: expected %d records, consumed %d" % (len(rows), len(got)))
    by_key = {}
    for g in sorted(got, key=lambda g: (g["partition"], g["offset"])):
        by_key.setdefault(g["key"], []).append(g)
    exp_by_key = {}
    for r in rows:
        exp_by_key.setdefault(r["key"], []).append(r)
    checked = 0
    for key, exp in exp_by_key.items():
        seen = by_key.get(key, [])
        if len(seen) != len(exp):
            sys.exit("FAIL: key %s: expected %d records, got %d" % (key, len(exp), len(seen)))
        for r, g in zip(exp, seen):
            v = g["value"]
            if fmt == "envelope":
                if v["type"] != r["type"] or v["aggregate_id"] != key or v["aggregate_type"] != "typed":
                    sys.exit("FAIL: envelope fields %r for %r" % (
                        {k: v[k] for k in ("type", "aggregate_id", "aggregate_type")}, r["type"]))
                if g["headers"].get("id") != v["id"] or not v["source"]["lsn"]:
                    sys.exit("FAIL: id header / source of %r" % v)
                payload = v["payload"]
            else:
                payload = v
            if r["type"] == "Plain":
                # untyped: the JSON text, in the envelope or as an Avro string
                if not isinstance(payload, str):
                    sys.exit("FAIL: untyped payload is not a string: %r" % (payload,))
                payload = json.loads(payload)
                ok = payload == r["expected"]
            else:
                ok = norm(payload) == norm(r["expected"])
            if not ok:
                a, b = norm(payload), norm(r["expected"])
                diff = [k for k in b if not isinstance(a, dict) or a.get(k) != b[k]] if isinstance(b, dict) else []
                sys.exit("FAIL: key %s type %s: decoded value differs in %s:\n got      %s\n expected %s" % (
                    key, r["type"], diff, json.dumps({k: payload.get(k) for k in diff} if diff else payload, ensure_ascii=False)[:2000],
                    json.dumps({k: r["expected"].get(k) for k in diff} if diff else r["expected"], ensure_ascii=False)[:2000]))
            checked += 1
    print("checked %d records (%s): every value equal to what was written, order per key kept" % (checked, fmt))


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
