#!/usr/bin/env python3
"""What the Kafka clients asked of the broker: per client and request type,
the number of requests and the broker's time on them.

Reads the request log of a stack started with STACK_KAFKA_REQUEST_LOG=1
(tests/stack/stack.sh: the broker's kafka.request.logger at DEBUG, one JSON
line per completed request, in STACK_DIR/kafka-request.log), e.g.

    BENCH_STACK_DIR=/tmp/s STACK_KAFKA_REQUEST_LOG=1 bench/throughput.sh
    bench/kafka_requests.py /tmp/s/kafka-request.log

Clients are grouped by client id without trailing digits (librdkafka's
default id is "rdkafka"; the broker's own clients, such as the transaction
marker sender and the AddPartitionsToTxn verification of KIP-890, show under
their names). Requests between the broker and its controller are left out.
Columns: requests, the broker's total time (queue, local, remote, send) and
its local time (the work itself), in ms, busiest first.
"""
import collections
import json
import re
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kafka_requests.py KAFKA_REQUEST_LOG")
    rows = collections.defaultdict(lambda: [0, 0.0, 0.0])
    mark = "Completed request:"
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find(mark)
            if i < 0:
                continue
            try:
                d = json.loads(line[i + len(mark):])
            except ValueError:
                continue
            if d.get("listener") == "CONTROLLER":
                continue
            h = d.get("requestHeader", {})
            client = re.sub(r"[-_.]?\d+$", "", h.get("clientId") or "") or "-"
            key = (client, h.get("requestApiKeyName", "?"), h.get("requestApiVersion", -1))
            r = rows[key]
            r[0] += 1
            r[1] += float(d.get("totalTimeMs", 0))
            r[2] += float(d.get("localTimeMs", 0))
    print("%-32s %-24s %4s %8s %11s %11s" % ("client", "request", "ver", "count", "total ms", "local ms"))
    for (client, api, ver), (n, total, local) in sorted(rows.items(), key=lambda kv: -kv[1][2]):
        print("%-32s %-24s %4d %8d %11.1f %11.1f" % (client[:32], api, ver, n, total, local))


if __name__ == "__main__":
    main()
