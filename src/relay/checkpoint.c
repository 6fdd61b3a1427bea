/*
 * Checkpoint record encoding and the skip rule (see checkpoint.h).
 */
#include "outboxd/relay/checkpoint.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

int outboxd_checkpoint_encode(const char *source, const outboxd_checkpoint_t *ck,
                              outboxd_buf_t *out)
{
    char commit[OUTBOXD_LSN_STRLEN], end[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(ck->commit_lsn, commit);
    outboxd_lsn_format(ck->end_lsn, end);
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "v", 1, "source", source,
                          "system_id", ck->system_id, "database", ck->database, "slot", ck->slot,
                          "commit_lsn", commit, "end_lsn", end, "changes", (json_int_t)ck->changes);
    if (!o)
        return -1;
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return -1;
    bool ok = outboxd_buf_append_str(out, text);
    free(text);
    return ok ? 0 : -1;
}

static void copy_str(char *dst, size_t size, json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    size_t n = s ? strlen(s) : 0;
    if (n >= size) {
        /* Longer than any value this relay writes (PostgreSQL names are at
         * most 63 bytes): keep a prefix that ends on a whole UTF-8
         * character, or the checkpoint would no longer encode as JSON. */
        n = size - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    if (n > 0)
        memcpy(dst, s, n);
    dst[n] = '\0';
}

int outboxd_checkpoint_decode(const void *data, size_t len, outboxd_checkpoint_t *ck, char *errstr,
                              size_t errstr_size)
{
    json_error_t jerr;
    json_t *o = json_loadb(data, len, 0, &jerr);
    if (!o || !json_is_object(o)) {
        snprintf(errstr, errstr_size, "checkpoint record is not a JSON object: %s", jerr.text);
        json_decref(o);
        return -1;
    }
    memset(ck, 0, sizeof(*ck));
    const char *commit = json_string_value(json_object_get(o, "commit_lsn"));
    const char *end = json_string_value(json_object_get(o, "end_lsn"));
    json_t *changes = json_object_get(o, "changes");
    if (json_integer_value(json_object_get(o, "v")) != 1 || !commit || !end ||
        !json_is_integer(changes) || !outboxd_lsn_parse(commit, &ck->commit_lsn) ||
        !outboxd_lsn_parse(end, &ck->end_lsn)) {
        snprintf(errstr, errstr_size,
                 "checkpoint record lacks v=1, commit_lsn, end_lsn or changes: %.*s",
                 (int)(len > 200 ? 200 : len), (const char *)data);
        json_decref(o);
        return -1;
    }
    ck->changes = json_integer_value(changes);
    copy_str(ck->system_id, sizeof(ck->system_id), o, "system_id");
    copy_str(ck->database, sizeof(ck->database), o, "database");
    copy_str(ck->slot, sizeof(ck->slot), o, "slot");
    json_decref(o);
    return 0;
}

bool outboxd_checkpoint_covers(const outboxd_checkpoint_t *ck, outboxd_lsn_t commit_lsn,
                               int64_t change_index)
{
    if (ck->commit_lsn == 0)
        return false;
    if (commit_lsn < ck->commit_lsn)
        return true;
    if (commit_lsn > ck->commit_lsn)
        return false;
    if (ck->changes < 0)
        return true; /* the whole transaction was published */
    return change_index >= 0 && change_index < ck->changes;
}
