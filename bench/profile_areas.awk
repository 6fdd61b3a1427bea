# Folded stacks ("thread;root;...;leaf count") -> share of CPU samples per
# area of the relay, the first matching rule from the leaf's side wins over
# the thread. Used by bench/profile.sh.
function area(s) {
    if (s ~ /^rdk:/) return "librdkafka threads (broker I/O, timers)"
    if (s ~ /stats_cb/) return "statistics callback (only with statistics.interval.ms)"
    if (s ~ /rd_kafka_commit_transaction|rd_kafka_flush/) return "source thread: in Kafka commit (poll, delivery reports)"
    if (s ~ /rd_kafka_producev/) return "source thread: rd_kafka_producev (enqueue, copy)"
    if (s ~ /outboxd_router_route|outboxd_encoder/) return "source thread: route + Avro encode"
    if (s ~ /outboxd_pgo_decode/) return "source thread: pgoutput decode"
    if (s ~ /outboxd_repl_next|PQgetCopyData/) return "source thread: receive (libpq)"
    if (s ~ /outboxd_stats|clock_gettime|outboxd_now/) return "source thread: clocks, stats"
    if (s ~ /send_status|PQputCopyData|PQflush/) return "source thread: status updates"
    return "other"
}
{ n = $NF; $NF = ""; t += n; c[area($0)] += n }
END { for (k in c) printf "%5.1f%% %s\n", 100 * c[k] / t, k | "sort -nr" }
