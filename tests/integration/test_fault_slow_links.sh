#!/usr/bin/env bash
# ctest: lock kafka_proxy -- slows the shared broker's proxied listener (one address)
# Fault matrix: 200 ms latency each way and a low bandwidth limit on both of
# the relay's links (to PostgreSQL and to the broker) while rows are written:
# every round trip of the transactional protocol (AddPartitions, Produce,
# EndTxn, status updates) is slow and the replication stream is throttled.
# Every event exactly once, nothing stalls for good.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fsl_$RUN_ID
RATE_KBS=${SLOW_RATE_KBS:-48}
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

for p in pg kafka; do
    for dir in upstream downstream; do
        toxi toxic "$p" latency "$dir" latency=200 jitter=0
        toxi toxic "$p" bandwidth "$dir" rate="$RATE_KBS"
    done
done
log "both links: 200 ms latency each way, $RATE_KBS KB/s each way"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 500 2 40 # 2,000 rows over ~25 s
writer=$WRITER_PID
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
# Evidence the links were slow: the proxy's toxics were in place throughout,
# and a Kafka transaction cannot commit faster than its round trips.
toxi list | grep -q '"latency":200' || fail "latency toxic missing at the end"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"
