/*
 * Fuzz target: the checkpoint record parser (outboxd_checkpoint_decode),
 * which reads whatever the compacted checkpoint topic holds at startup.
 *
 * Input: the record value. A value that parses must encode again and parse
 * back to the same checkpoint (so what the relay writes after a restart is
 * what it read); one that does not must say why.
 */
#include <string.h>

#include "fuzz.h"
#include "outboxd/relay/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    outboxd_checkpoint_t ck, again;
    char err[512] = "";
    if (outboxd_checkpoint_decode(data, size, &ck, err, sizeof(err)) < 0) {
        FUZZ_CHECK(strncmp(err, "checkpoint record ", 18) == 0);
        return 0;
    }
    FUZZ_CHECK(memchr(ck.system_id, '\0', sizeof(ck.system_id)));
    FUZZ_CHECK(memchr(ck.database, '\0', sizeof(ck.database)));
    FUZZ_CHECK(memchr(ck.slot, '\0', sizeof(ck.slot)));
    /* The skip rule is total: a whole-transaction question is answered
     * consistently with the per-change ones. */
    if (outboxd_checkpoint_covers(&ck, ck.commit_lsn, -1))
        FUZZ_CHECK(outboxd_checkpoint_covers(&ck, ck.commit_lsn, 0));
    FUZZ_CHECK(!outboxd_checkpoint_covers(&ck, ck.commit_lsn + 1, -1) ||
               ck.commit_lsn == UINT64_MAX);

    outboxd_buf_t buf = {0};
    FUZZ_CHECK(outboxd_checkpoint_encode("fuzz", &ck, &buf) == 0);
    FUZZ_CHECK(outboxd_checkpoint_decode(buf.data, buf.len, &again, err, sizeof(err)) == 0);
    FUZZ_CHECK(again.commit_lsn == ck.commit_lsn && again.end_lsn == ck.end_lsn);
    FUZZ_CHECK(again.changes == ck.changes);
    FUZZ_CHECK(strcmp(again.system_id, ck.system_id) == 0);
    FUZZ_CHECK(strcmp(again.database, ck.database) == 0);
    FUZZ_CHECK(strcmp(again.slot, ck.slot) == 0);
    outboxd_buf_free(&buf);
    return 0;
}
