/*
 * main() for the fuzz targets in ordinary builds: runs
 * LLVMFuzzerTestOneInput over every file named on the command line or found
 * in a directory named there (not recursive). ctest uses it to replay the
 * committed seeds and every input the fuzzer ever crashed on
 * (tests/data/fuzz-regress/<target>/), so a fixed crash stays fixed in the
 * normal and the sanitizer builds alike, without clang or libFuzzer.
 * Fails when it finds no input at all, so a wrong path cannot pass.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0, n;
    uint8_t *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b)
                free(buf);
            buf = b;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "replay: out of memory reading %s\n", path);
        return -1;
    }
    /* An exact-size copy, as libFuzzer hands inputs over. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int ran = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            failed++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) < 0)
                failed++;
            else
                ran++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            failed++;
            continue;
        }
        char **names = NULL;
        size_t nn = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char **nm = realloc(names, (nn + 1) * sizeof(*names));
            if (!nm)
                break;
            names = nm;
            size_t l = strlen(argv[i]) + strlen(e->d_name) + 2;
            names[nn] = malloc(l);
            if (names[nn])
                snprintf(names[nn++], l, "%s/%s", argv[i], e->d_name);
        }
        closedir(d);
        if (nn > 1) /* qsort must not be given NULL, even for 0 items */
            qsort(names, nn, sizeof(*names), cmp);
        for (size_t k = 0; k < nn; k++) {
            struct stat fs;
            if (stat(names[k], &fs) == 0 && S_ISREG(fs.st_mode)) {
                fprintf(stderr, "replay: %s\n", names[k]);
                if (run_file(names[k]) < 0)
                    failed++;
                else
                    ran++;
            }
            free(names[k]);
        }
        free(names);
    }
    printf("replay: %d inputs ran without a crash, %d could not be read\n", ran, failed);
    return ran > 0 && failed == 0 ? 0 : 1;
}
