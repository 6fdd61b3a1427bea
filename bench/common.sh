# Shared setup for benchmarks: a private stack (tests/stack/stack.sh) that is
# stopped on exit, the built binaries, and an outbox database. Source it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
OUTBOXD_BIN=$BUILD/outboxd
OKCAT=$BUILD/tests/tools/okcat
[ -x "$OUTBOXD_BIN" ] && [ -x "$OKCAT" ] || {
    echo "bench: build first (cmake -S . -B build -G Ninja && ninja -C build)" >&2
    exit 2
}
# BENCH_LIBRDKAFKA=VERSION: run every Kafka client of the bench (the relay,
# kafka_ceiling, okcat) on another librdkafka than the one they were linked
# with, to measure what a librdkafka version changes. It is the library
# bundled in PyPI's confluent-kafka wheel of that version (a self-contained
# build of the same source), put first on LD_LIBRARY_PATH; kept in
# ~/.cache/outboxd. The relay's startup line names the librdkafka it runs on.
if [ -n "${BENCH_LIBRDKAFKA:-}" ]; then
    rdk_dir=${XDG_CACHE_HOME:-$HOME/.cache}/outboxd/librdkafka-$BENCH_LIBRDKAFKA-$(uname -m)
    if [ ! -e "$rdk_dir/librdkafka.so.1" ]; then
        rm -rf "$rdk_dir.tmp" && mkdir -p "$rdk_dir.tmp"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
            --platform "manylinux_2_28_$(uname -m)" --platform "manylinux2014_$(uname -m)" -d "$rdk_dir.tmp" "confluent-kafka==$BENCH_LIBRDKAFKA" >&2 || {
            echo "bench: BENCH_LIBRDKAFKA=$BENCH_LIBRDKAFKA: no confluent-kafka wheel of that version for $(uname -m)" >&2
            exit 2
        }
        python3 -m zipfile -e "$rdk_dir.tmp"/confluent_kafka-*.whl "$rdk_dir.tmp/x"
        lib=$(ls "$rdk_dir.tmp"/x/confluent_kafka.libs/librdkafka-*.so.1 2>/dev/null | head -n 1 || true)
        [ -n "$lib" ] || { echo "bench: no librdkafka in the confluent-kafka $BENCH_LIBRDKAFKA wheel" >&2; exit 2; }
        mkdir -p "$rdk_dir" && cp "$lib" "$rdk_dir/librdkafka.so.1" && rm -rf "$rdk_dir.tmp"
    fi
    export LD_LIBRARY_PATH=$rdk_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "bench: Kafka clients on librdkafka $BENCH_LIBRDKAFKA ($rdk_dir)" >&2
fi
# Checked before anything starts (broker_warmup, below, uses it).
case ${BENCH_BROKER_WARMUP_S:-180} in
'' | *[!0-9]*) echo "bench: BENCH_BROKER_WARMUP_S=$BENCH_BROKER_WARMUP_S: want whole seconds" >&2; exit 2 ;;
esac
export STACK_DIR=${BENCH_STACK_DIR:-/tmp/outboxd-bench-$$}
export STACK_OWNER_PID=$$
WORK=$(mktemp -d /tmp/outboxd-bench-work.XXXXXX)
BG=()
# BENCH_KEEP=DIR: the run's work files (relay logs, configs, results) are
# copied there at exit, for a look at what a figure came from.
bench_cleanup() {
    for p in "${BG[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${BENCH_KEEP:-}" ]; then
        mkdir -p "$BENCH_KEEP" && cp -a "$WORK"/. "$BENCH_KEEP"/ && echo "bench: work files kept in $BENCH_KEEP" >&2
    fi
    [ -n "${BENCH_STACK_DIR:-}" ] || "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap bench_cleanup EXIT
"$ROOT/tests/stack/stack.sh" start >&2
# shellcheck disable=SC1091
source "$STACK_DIR/env"
export PGHOST PGPORT PGUSER PATH="$PG_BIN:$PATH"

say() { printf 'bench: %s\n' "$*" >&2; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

# bench_db NAME: a fresh database with the outbox table and a publication.
bench_db() {
    DB=$1
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null 2>&1
    q -c "CREATE TABLE outbox (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text NOT NULL,
            aggregateid text NOT NULL,
            type text NOT NULL,
            payload jsonb)" -c "CREATE PUBLICATION bench_pub FOR TABLE outbox"
}

# BENCH_KAFKA_PROPS="k=v k2=v2": librdkafka properties for the relay (e.g.
# "linger.ms=5 compression.type=lz4"); printed as a kafka.properties block.
bench_kafka_props() {
    [ -n "${BENCH_KAFKA_PROPS:-}" ] || return 0
    printf '%s\n' "  properties:"
    local kv
    for kv in $BENCH_KAFKA_PROPS; do printf '    %s: "%s"\n' "${kv%%=*}" "${kv#*=}"; done
}

# bench_config FILE SLOT [SOURCE [TOPIC_PREFIX]]: relay configuration for
# database $DB (source name default $DB, topics "bench.<aggregatetype>").
# BENCH_RELAY_KEYS="key=value ...": extra relay: keys (e.g.
# "max_batch_events=10000").
bench_config() {
    {
        printf '%s\n' \
            "kafka:" \
            "  bootstrap_servers: \"$KAFKA_BOOTSTRAP\"" \
            "  transactional_id_prefix: bench"
        bench_kafka_props
        printf '%s\n' \
            "relay:" \
            "  checkpoint_topic: bench.checkpoints" \
            "  dead_letter_topic: bench.dlt" \
            "  log_level: ${BENCH_LOG_LEVEL:-info}"
        # A variant's relay.producers_per_source=N (BENCH_RELAY_KEYS) wins.
        case " ${BENCH_RELAY_KEYS:-} " in
        *" producers_per_source="*) ;;
        *) printf '  producers_per_source: %s\n' "${BENCH_PRODUCERS:-2}" ;;
        esac
        local kv
        for kv in ${BENCH_RELAY_KEYS:-}; do printf '  %s: %s\n' "${kv%%=*}" "${kv#*=}"; done
        printf '%s\n' \
            "sources:" \
            "  - name: ${3:-$DB}" \
            "    dsn: \"host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER\"" \
            "    slot: $2" \
            "    publication: bench_pub" \
            "    tables:" \
            "      - table: public.outbox" \
            "        topic: \"${4:-bench}.\${aggregatetype}\""
    } >"$1"
}

# slot_done SLOT LSN: true once the slot has confirmed LSN.
slot_done() {
    [ "$(q -c "SELECT coalesce(confirmed_flush_lsn >= '$2', false) FROM pg_replication_slots WHERE slot_name = '$1'")" = t ]
}

# thread_cpu PID: "name ms" per thread, summed by name (librdkafka names its
# threads rdk:main, rdk:broker<id>, ...; the relay's are outboxd-*).
thread_cpu() {
    local tick
    tick=$(getconf CLK_TCK)
    for f in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ <"$f/comm")" "$(awk -v t="$tick" '{print int(($14 + $15) * 1000 / t)}' "$f/stat")"
    done 2>/dev/null | awk '{sub(/[0-9]+$/, "", $1); c[$1] += $2} END {for (k in c) print k, c[k]}' | sort -k2 -nr
}

# thread_cpu_diff BEFORE AFTER PREFIX TOTAL_MS: per thread name, the CPU
# used between two thread_cpu files, in ms and as a share of one core over
# TOTAL_MS of wall time.
thread_cpu_diff() {
    LC_ALL=C join -a1 <(LC_ALL=C sort -k1,1 "$2") <(LC_ALL=C sort -k1,1 "$1") | awk '{d = $2 - ($3 ? $3 : 0); if (d > 0) print d, $1}' | sort -nr |
        awk -v pre="$3" -v wall="$4" '{printf "%s thread %-16s %7d ms CPU, %5.1f%% of one core\n", pre, $2, $1, 100 * $1 / wall}'
}

peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }

# The Kafka-side references (tests/tools/kafka_ceiling) take transactions in
# turn over as many producers as the relay's ring: "ring" for two or more
# (the default, relay.producers_per_source 2), "one" for one.
# BENCH_CEILING_MODE overrides (one, ring, overlap, unsafe).
ceiling_mode() {
    if [ -n "${BENCH_CEILING_MODE:-}" ]; then
        echo "$BENCH_CEILING_MODE"
    elif [ "${BENCH_PRODUCERS:-2}" -ge 2 ]; then
        echo ring
    else
        echo one
    fi
}

# broker_pauses FROM_MS TO_MS LABEL: the broker JVM's stop-the-world pauses
# (safepoints: every GC pause and every other VM operation that stops all
# threads, from the kafka-gc.log tests/stack/stack.sh has the broker write)
# between two epoch-millisecond times. Every record the broker handles
# waits out a pause that falls in its way (append, transaction markers,
# fetch), so pauses of some milliseconds every few hundred milliseconds
# show at the p99 of any Kafka latency. STACK_KAFKA_GC picks the collector.
broker_pauses() {
    { cat "$STACK_DIR"/kafka-gc.log* 2>/dev/null || true; } | awk -v from="$1" -v to="$2" '
        /\[safepoint/ {
            t = $0; sub(/^\[/, "", t); sub(/ms\].*/, "", t); t += 0
            if (t < from || t > to) next
            ns = $0; sub(/.*Total: /, "", ns); sub(/ ns.*/, "", ns)
            op = $0; sub(/^[^"]*"/, "", op); sub(/".*/, "", op)
            printf "%.3f %s %.0f\n", ns / 1e6, op, t
        }' | sort -n | awk -v from="$1" -v to="$2" -v label="$3" '
        { v[++n] = $1; sum += $1; if ($2 ~ /G1|GC|^Z|Shenandoah|Collect/) gc++; if ($1 >= 5) over5++; op = $2; t = $3 }
        END {
            if (!n) { printf "latency: broker JVM pauses %s: none logged (none in this window, or no kafka-gc.log: a stack started by an older stack.sh)\n", label; exit }
            printf "latency: broker JVM pauses %s: %d safepoints (%d for the collector), stopped %.0f ms in all (%.2f%% of %.0f s); p50 %.2f, p99 %.1f, max %.1f ms (%s, +%.1f s); %d of 5 ms or more\n",
                label, n, gc, sum, 100 * sum / (to - from), (to - from) / 1000, v[int(n * 0.5 + 0.999999)], v[int(n * 0.99 + 0.999999)], v[n], op, (t - from) / 1000, over5
        }'
}

# broker_jit_ms PID: CPU ms used so far by a JVM's JIT compiler threads.
broker_jit_ms() {
    thread_cpu "$1" | awk '/Compiler/ {s += $2} END {print s + 0}'
}

# Every latency consumer of the benches fetches alike. fetch.wait.max.ms only
# bounds an idle fetch: the broker answers as soon as the last stable offset
# moves, so a short value adds no accuracy, only load.
FETCH_OPTS=(-X fetch.wait.max.ms=100 -X fetch.error.backoff.ms=5)

# broker_warmup RATE SQL BROKER_PID TOPIC=MODE...: a warm broker, as in
# production. A just-started one compiles its hot code for minutes on the
# same cores: on a 2-core machine its C2 JIT thread used 35% of a core during
# a first 2,000/s run, then 23, 8 and 2% in the next three, the broker's CPU
# falling from 96 to 50% of a core and the relay's p99 from 94 to 58 ms.
# Ninety seconds of kafka_ceiling's records at the same rate left it
# compiling 20% of a core through the relay's load after, so the warm-up is
# the measured load itself: pgbench running SQL at RATE through the relays
# already live for BENCH_BROKER_WARMUP_S (default 180; 0: a cold broker),
# each TOPIC read back by a read_committed consumer (okcat MODE: --latency
# or --latency-from-timestamp), none of it counted.
# Its rows are vacuumed and a checkpoint taken after, so neither falls into
# the measured window by chance. Prints what the broker's JIT used in it;
# the benches print what it still used during the measured load.
broker_warmup() {
    local rate=$1 sql=$2 bpid=$3 warm_s=${BENCH_BROKER_WARMUP_S:-180} t jit0 jit1 pids=()
    shift 3
    if [ "$warm_s" -eq 0 ]; then
        say "BENCH_BROKER_WARMUP_S=0: no warm-up, the broker may still be compiling (see its JIT's CPU below)"
        return 0
    fi
    say "warming the broker up: $rate transactions/s through the relay(s) for $warm_s s (not counted)"
    for t in "$@"; do
        "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "${t%%=*}" "${t#*=}" -X auto.offset.reset=latest --idle-ms 3000 \
            --timeout-ms $(((warm_s + 120) * 1000)) "${FETCH_OPTS[@]}" >"$WORK/warm.${t%%=*}.out" 2>&1 &
        pids+=($!)
        BG+=($!)
    done
    jit0=$( [ -n "$bpid" ] && broker_jit_ms "$bpid" || echo 0)
    sleep 2 # the consumers join (they start at the end: what they miss is not counted anyway)
    pgbench -n -c 4 -j 2 -R "$rate" -T "$warm_s" -f "$sql" "$DB" >"$WORK/pgbench-warm.log" 2>&1
    wait "${pids[@]}" || true
    jit1=$( [ -n "$bpid" ] && broker_jit_ms "$bpid" || echo 0)
    say "broker warm-up done: its JIT compilers used $(((jit1 - jit0) / 1000)) s of CPU in it"
    for t in "$@"; do
        t=${t%%=*}
        say "warm-up, $t (not counted): $(grep -o 'latency_ms.*' "$WORK/warm.$t.out" | head -n 1 || echo 'no figures')"
    done
    q -c "VACUUM outbox" -c "CHECKPOINT"
}

cpu_ticks() { # utime+stime of a pid and its threads, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
