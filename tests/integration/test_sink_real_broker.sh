#!/usr/bin/env bash
# ctest: parallel
# The sink tests of tests/unit/test_mock_sink.c against the real broker:
# checkpoint round trip, a checkpoint read past another source's open
# transaction, and fencing of an older instance by a newer one with
# the same transactional.id (the mock cluster does not fence), also of the
# ids above a smaller ring of producers.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
OUTBOXD_TEST_KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP "$OUTBOXD_TOOLS/../test_mock_sink" >"$WORK/out.log" 2>&1 || {
    cat "$WORK/out.log" >&2
    fail "sink tests failed against the real broker"
}
grep -E '^\[' "$WORK/out.log" >&2
grep -q '\[       OK \] test_fencing' "$WORK/out.log" || fail "fencing test did not run"
grep -q "\[       OK \] test_checkpoint_behind_open_transaction" "$WORK/out.log" || fail "open-transaction checkpoint test did not run"
grep -q "\[       OK \] test_fences_ids_above_the_ring" "$WORK/out.log" || fail "fencing of the ids above the ring did not run"
log "PASS"
