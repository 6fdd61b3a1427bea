#!/usr/bin/env python3
"""Validate a Prometheus text exposition with prometheus_client's parser.

    promcheck.py FILE        parse FILE strictly; print one line per sample:
                             NAME{label="v",...} VALUE   (labels sorted)

Besides the parser's own checks (syntax, escaping, numbers), this fails when
a family has no HELP or TYPE, when a histogram's buckets are not cumulative,
or when its +Inf bucket differs from its _count. Exit status 1 on any error.
"""
import math
import re
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    errors = []
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    types = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and friends
        print(f"promcheck: parse error: {e}", file=sys.stderr)
        return 1
    if not families:
        errors.append("no metric families")
    out = []
    for fam in families:
        exposed = fam.name + ("_total" if fam.type == "counter" else "")
        if exposed not in helps and fam.name not in helps:
            errors.append(f"{fam.name}: no HELP")
        if exposed not in types and fam.name not in types:
            errors.append(f"{fam.name}: no TYPE")
        if fam.type == "unknown":
            errors.append(f"{fam.name}: untyped")
        series = {}
        for s in fam.samples:
            if math.isnan(s.value):
                errors.append(f"{s.name}: NaN")
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out.append(f"{s.name}{{{labels}}} {s.value:.17g}")
            if fam.type == "histogram":
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if s.name.endswith("_bucket"):
                    le = float("inf") if s.labels["le"] == "+Inf" else float(s.labels["le"])
                    series[key]["buckets"].append((le, s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
        for key, h in series.items():
            b = h["buckets"]
            if [x[0] for x in b] != sorted(x[0] for x in b) or not b or b[-1][0] != float("inf"):
                errors.append(f"{fam.name}{key}: buckets not ordered or no +Inf")
            if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
                errors.append(f"{fam.name}{key}: buckets not cumulative")
            if b and h["count"] != b[-1][1]:
                errors.append(f"{fam.name}{key}: +Inf bucket {b[-1][1]} != count {h['count']}")
    for e in errors:
        print(f"promcheck: {e}", file=sys.stderr)
    if errors:
        return 1
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
