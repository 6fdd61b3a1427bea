/*
 * Cuts the captured pgoutput fixtures (tests/data/pgoutput/NAME.bin) into small
 * fuzz seeds for fuzz_pgoutput: every seed is one window of WINDOW
 * consecutive records, preceded by the Relation and Type records seen before
 * it and, inside a stream, by the Stream Start that opened it, so each seed
 * decodes like the stretch of the real stream it was cut from. Small seeds
 * make many more executions per second than the whole 80 kB fixture.
 *
 *   pgo_split OUTDIR FIXTURE...
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW      6
#define MAX_RECORDS 100000

typedef struct rec {
    const uint8_t *p; /* the 4-byte length and the message */
    size_t n;
} rec_t;

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n;
    uint8_t *buf = malloc(cap);
    *len = 0;
    while (buf && (n = fread(buf + *len, 1, cap - *len, f)) > 0) {
        *len += n;
        if (*len == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b)
                free(buf);
            buf = b;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pgo_split OUTDIR FIXTURE...\n");
        return 2;
    }
    static rec_t recs[MAX_RECORDS];
    int written = 0;
    for (int a = 2; a < argc; a++) {
        size_t len;
        uint8_t *buf = slurp(argv[a], &len);
        if (!buf) {
            fprintf(stderr, "pgo_split: cannot read %s: %s\n", argv[a], strerror(errno));
            return 1;
        }
        size_t nrec = 0, pos = 0;
        while (pos + 4 <= len && nrec < MAX_RECORDS) {
            size_t n = (size_t)buf[pos] << 24 | (size_t)buf[pos + 1] << 16 |
                       (size_t)buf[pos + 2] << 8 | buf[pos + 3];
            if (n > len - pos - 4) {
                fprintf(stderr, "pgo_split: %s: truncated record at offset %zu\n", argv[a], pos);
                return 1;
            }
            recs[nrec].p = buf + pos;
            recs[nrec].n = 4 + n;
            nrec++;
            pos += 4 + n;
        }
        const char *base = strrchr(argv[a], '/');
        base = base ? base + 1 : argv[a];
        for (size_t w = 0; w < nrec; w += WINDOW) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s.%05zu", argv[1], base, w);
            FILE *out = fopen(path, "wb");
            if (!out) {
                fprintf(stderr, "pgo_split: cannot write %s: %s\n", path, strerror(errno));
                return 1;
            }
            const rec_t *stream_start = NULL;
            for (size_t i = 0; i < w; i++) {
                char kind = recs[i].n > 4 ? (char)recs[i].p[4] : 0;
                if (kind == 'R' || kind == 'Y')
                    fwrite(recs[i].p, 1, recs[i].n, out);
                else if (kind == 'S')
                    stream_start = &recs[i];
                else if (kind == 'E')
                    stream_start = NULL;
            }
            if (stream_start)
                fwrite(stream_start->p, 1, stream_start->n, out);
            for (size_t i = w; i < w + WINDOW && i < nrec; i++)
                fwrite(recs[i].p, 1, recs[i].n, out);
            if (fclose(out) != 0) {
                fprintf(stderr, "pgo_split: cannot write %s: %s\n", path, strerror(errno));
                return 1;
            }
            written++;
        }
        free(buf);
    }
    printf("pgo_split: %d seeds in %s\n", written, argv[1]);
    return 0;
}
