#!/usr/bin/env bash
# bench/kafka_requests.py sums a broker request log (STACK_KAFKA_REQUEST_LOG=1)
# per client and request type. Fed lines in the format Kafka 3.9's
# kafka.request.logger writes at DEBUG, it must count each client's requests
# of each type and version, add up the broker's times, group client ids that
# differ only in trailing digits, leave out controller traffic and skip lines
# it cannot read.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() {
    echo "[test_kafka_requests] FAIL: $*" >&2
    exit 1
}
req() { # CLIENT API VERSION TOTAL LOCAL LISTENER
    printf '[2026-12-03 06:40:36,524] Completed request:{"isForwarded":false,"requestHeader":{"requestApiKey":0,"requestApiVersion":%s,"correlationId":7,"clientId":"%s","requestApiKeyName":"%s"},"request":{},"response":{},"connection":"c","totalTimeMs":%s,"requestQueueTimeMs":0.1,"localTimeMs":%s,"remoteTimeMs":0.0,"throttleTimeMs":0,"responseQueueTimeMs":0.0,"sendTimeMs":0.0,"securityProtocol":"PLAINTEXT","principal":"User:ANONYMOUS","listener":"%s","clientInformation":{}}\n' \
        "$3" "$1" "$2" "$4" "$5" "$6"
}
{
    req rdkafka PRODUCE 10 2.5 1.0 PLAINTEXT
    req rdkafka PRODUCE 10 1.5 0.5 PLAINTEXT
    req rdkafka PRODUCE 7 9.0 4.0 PLAINTEXT
    req AddPartitionsManager-client-1 ADD_PARTITIONS_TO_TXN 5 1.0 0.25 PLAINTEXT
    req AddPartitionsManager-client-2 ADD_PARTITIONS_TO_TXN 5 1.0 0.25 PLAINTEXT
    req 1 API_VERSIONS 4 11.0 3.9 CONTROLLER
    echo '[2026-12-03 06:40:37,000] Completed request:{"truncated'
    echo 'some other line'
} >"$WORK/kafka-request.log"
python3 "$SRC/bench/kafka_requests.py" "$WORK/kafka-request.log" >"$WORK/out"
cat "$WORK/out"
row() { awk -v c="$1" -v a="$2" -v v="$3" '$1 == c && $2 == a && $3 == v {print $4, $5, $6}' "$WORK/out"; }
[ "$(row rdkafka PRODUCE 10)" = "2 4.0 1.5" ] || fail "PRODUCE v10: want 2 requests, 4.0 ms total, 1.5 ms local"
[ "$(row rdkafka PRODUCE 7)" = "1 9.0 4.0" ] || fail "PRODUCE v7 counted apart from v10"
[ "$(row AddPartitionsManager-client ADD_PARTITIONS_TO_TXN 5)" = "2 2.0 0.5" ] ||
    fail "client ids differing in trailing digits are one client"
! grep -q API_VERSIONS "$WORK/out" || fail "controller traffic must be left out"
[ "$(sed -n 2p "$WORK/out" | awk '{print $2, $3}')" = "PRODUCE 7" ] || fail "busiest (local time) first"
[ "$(wc -l <"$WORK/out")" -eq 4 ] || fail "one header and 3 rows expected"
echo "[test_kafka_requests] ok"
