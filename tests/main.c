/*
 * main.c — the test runner. Runs every registered test (or those whose name
 * or file contains argv[1]) and prints "N passed, M failed" last. Exit status
 * is 0 only when nothing failed.
 */

#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct test { const char *name, *file; void (*fn)(void); };
static struct test g_tests[1024];
static int g_ntests, g_failures;
static const char *g_current;
static char g_tmp_root[256];
static int g_tmp_seq;

void test_register(const char *name, const char *file, void (*fn)(void))
{
    if (g_ntests < (int)(sizeof g_tests / sizeof g_tests[0])) g_tests[g_ntests++] = (struct test){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    if (g_failures < 20) {
        fprintf(stdout, "FAIL %s: %s:%d: ", g_current, file, line);
        va_start(ap, fmt);
        vfprintf(stdout, fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
    }
    g_failures++;
}

const char *test_tmpdir(void)
{
    static char path[300];
    if (!g_tmp_root[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(g_tmp_root, sizeof g_tmp_root, "%s/alloy-test-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(g_tmp_root)) { perror("mkdtemp"); exit(2); }
    }
    snprintf(path, sizeof path, "%s/t%d", g_tmp_root, ++g_tmp_seq);
    mkdir(path, 0755);
    return path;
}

const char *test_alloy_bin(void)
{
    const char *b = getenv("ALLOY_BIN");
    return b && *b ? b : "build/alloy";
}

const char *test_data(const char *rel)
{
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "tests/data/%s", rel);
    return b;
}

int test_run(const char *cmd, char **out)
{
    char *full = NULL;
    if (asprintf(&full, "%s 2>&1", cmd) < 0) return -1;
    FILE *p = popen(full, "r");
    free(full);
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 1024) { cap *= 2; buf = realloc(buf, cap); }
    }
    if (buf) buf[len] = '\0';
    int st = pclose(p);
    if (out) *out = buf; else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--rss-run") == 0) return test_rss_helper(argv[2]); /* test_run_rss */
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;
    struct timespec t0, t1;
    for (int i = 0; i < g_ntests; i++) {
        struct test *t = &g_tests[i];
        if (filter && !strstr(t->name, filter) && !strstr(t->file, filter)) continue;
        g_current = t->name;
        int before = g_failures;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        t->fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (g_failures == before) {
            passed++;
            if (getenv("ALLOY_TEST_VERBOSE")) printf("ok   %s (%.0f ms)\n", t->name, ms);
        } else {
            failed++;
            printf("FAILED %s (%s)\n", t->name, t->file);
        }
        fflush(stdout);
    }
    if (g_tmp_root[0] && !getenv("ALLOY_KEEP_TMP")) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp_root);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmp_root);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
