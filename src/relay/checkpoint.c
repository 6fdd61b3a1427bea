/*
 * Checkpoint record encoding and the skip rule (see checkpoint.h).
 */
#include "outboxd/relay/checkpoint.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int outboxd_checkpoint_encode(const char *source, const outboxd_checkpoint_t *ck,
                              outboxd_buf_t *out)
{
    char commit[OUTBOXD_LSN_STRLEN], end[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(ck->commit_lsn, commit);
    outboxd_lsn_format(ck->end_lsn, end);
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "v", 1, "source", source,
                          "system_id", ck->system_id, "database", ck->database, "slot", ck->slot,
                          "commit_lsn", commit, "end_lsn", end, "changes", (json_int_t)ck->changes,
                          "timeline", (json_int_t)ck->timeline);
    if (!o)
        return -1;
    /* New fields are added, never changed, so an older relay still reads
     * the record (by its count). */
    if (ck->changes >= 0 && ck->last_lsn) {
        char last[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(ck->last_lsn, last);
        if (json_object_set_new(o, "last_lsn", json_string(last)) < 0 ||
            json_object_set_new(o, "last_lsn_n", json_integer((json_int_t)ck->last_lsn_n)) < 0) {
            json_decref(o);
            return -1;
        }
    }
    if (ck->snapshot[0]) {
        json_t *snap = json_loads(ck->snapshot, 0, NULL);
        if (!snap || json_object_set_new(o, "snapshot", snap) < 0) {
            json_decref(o);
            return -1;
        }
    }
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
    json_t *tli = json_object_get(o, "timeline");
    if (json_is_integer(tli) && json_integer_value(tli) > 0 &&
        json_integer_value(tli) <= (json_int_t)UINT32_MAX)
        ck->timeline = (uint32_t)json_integer_value(tli);
    const char *last = json_string_value(json_object_get(o, "last_lsn"));
    json_t *last_n = json_object_get(o, "last_lsn_n");
    if (ck->changes >= 0 && last) {
        if (!outboxd_lsn_parse(last, &ck->last_lsn) || !json_is_integer(last_n) ||
            json_integer_value(last_n) < 1) {
            snprintf(errstr, errstr_size,
                     "checkpoint record has a last_lsn without a valid last_lsn_n: %.*s",
                     (int)(len > 200 ? 200 : len), (const char *)data);
            json_decref(o);
            return -1;
        }
        ck->last_lsn_n = json_integer_value(last_n);
    }
    json_t *snap = json_object_get(o, "snapshot");
    if (json_is_object(snap)) {
        char *text = json_dumps(snap, JSON_COMPACT | JSON_PRESERVE_ORDER);
        size_t n = text ? strlen(text) : 0;
        if (!text || n >= sizeof(ck->snapshot)) {
            snprintf(errstr, errstr_size,
                     "checkpoint record's snapshot progress is %s (over %zu bytes)",
                     text ? "too long" : "unreadable", sizeof(ck->snapshot) - 1);
            free(text);
            json_decref(o);
            return -1;
        }
        memcpy(ck->snapshot, text, n + 1);
        free(text);
    }
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

bool outboxd_checkpoint_covers_change(const outboxd_checkpoint_t *ck, outboxd_lsn_t commit_lsn,
                                      const outboxd_change_pos_t *pos)
{
    if (ck->commit_lsn == 0 || commit_lsn != ck->commit_lsn || ck->changes < 0 || !ck->last_lsn)
        return outboxd_checkpoint_covers(ck, commit_lsn, pos->index);
    if (pos->lsn != ck->last_lsn)
        return pos->lsn < ck->last_lsn;
    return pos->lsn_ordinal < ck->last_lsn_n;
}

bool outboxd_checkpoint_trusted(const outboxd_checkpoint_t *ck, const outboxd_server_pos_t *srv,
                                char *why, size_t why_size)
{
    if (ck->commit_lsn == 0)
        return true; /* nothing to skip by */
    /* The furthest position the checkpoint makes us skip to. */
    outboxd_lsn_t upto = ck->end_lsn ? ck->end_lsn : ck->commit_lsn;
    char upto_s[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(upto, upto_s);
    if (ck->system_id[0] && strcmp(ck->system_id, srv->system_id) != 0) {
        snprintf(why, why_size,
                 "it was written for PostgreSQL system %s and this server is system %s (a "
                 "different or re-created cluster)",
                 ck->system_id, srv->system_id);
        return false;
    }
    if (ck->database[0] && strcmp(ck->database, srv->database) != 0) {
        snprintf(why, why_size, "it was written for database %s and this source now reads %s",
                 ck->database, srv->database);
        return false;
    }
    if (ck->slot[0] && strcmp(ck->slot, srv->slot) != 0) {
        snprintf(why, why_size, "it was written for slot %s and this source now reads slot %s",
                 ck->slot, srv->slot);
        return false;
    }
    if (ck->timeline && ck->timeline != srv->timeline) {
        bool shared = ck->timeline < srv->timeline && srv->ck_timeline_end &&
                      (ck->end_lsn ? ck->end_lsn <= srv->ck_timeline_end
                                   : ck->commit_lsn < srv->ck_timeline_end);
        if (!shared) {
            char end[OUTBOXD_LSN_STRLEN];
            outboxd_lsn_format(srv->ck_timeline_end, end);
            if (srv->ck_timeline_end)
                snprintf(why, why_size,
                         "it was written on timeline %u up to %s, but this server's history left "
                         "timeline %u at %s (a promoted standby or a point-in-time restore): "
                         "LSNs after %s name other transactions here",
                         ck->timeline, upto_s, ck->timeline, end, end);
            else
                snprintf(why, why_size,
                         "it was written on timeline %u, which is not in the history of this "
                         "server (timeline %u)",
                         ck->timeline, srv->timeline);
            return false;
        }
    }
    if (srv->wal_pos && upto > srv->wal_pos) {
        char wal[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(srv->wal_pos, wal);
        snprintf(why, why_size,
                 "it reaches %s but this server's WAL ends at %s (a restored cluster, a promoted "
                 "standby that was behind, or another server)",
                 upto_s, wal);
        return false;
    }
    return true;
}
