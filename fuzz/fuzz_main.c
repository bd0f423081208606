/*
 * fuzz_main.c — replay driver: runs a fuzz target's LLVMFuzzerTestOneInput
 * on files, without libFuzzer, so a crash input can be re-run under gcc,
 * gdb or valgrind.
 *
 * DESIGN
 *   Each argument is a file (or a folder, whose regular files are replayed
 *   in name order). Every file is read whole into a heap buffer of exactly
 *   its size, as libFuzzer does, so AddressSanitizer sees reads past the
 *   end. Prints one line per input and exits 0 when every input returned
 *   (a crash ends the process with the target's signal, as in the fuzzer).
 *   Build (see fuzz/run.sh replay):
 *     cc -Iinclude -Isrc fuzz/fuzz_main.c fuzz/fuzz_safetensors.c build/liballoy.a \
 *        $(DEP_LIBS from build/config.mk) -lpthread -lm -o replay
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return 1; }
    size_t cap = 1 << 16, len = 0, r;
    uint8_t *buf = malloc(cap);
    while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; }
            else buf = nb;
        }
    }
    fclose(f);
    if (!buf) { fprintf(stderr, "%s: out of memory\n", path); return 1; }
    uint8_t *exact = malloc(len ? len : 1); /* exactly len bytes: overreads hit the redzone */
    if (!exact) { free(buf); return 1; }
    memcpy(exact, buf, len);
    free(buf);
    printf("replay %s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) { perror(dir); return 1; }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        size_t l = strlen(dir) + strlen(e->d_name) + 2;
        if (!(names[n] = malloc(l))) break;
        snprintf(names[n++], l, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) bad |= replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 2;
    }
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) bad |= replay_dir(argv[i]);
        else bad |= replay_file(argv[i]);
    }
    return bad;
}
