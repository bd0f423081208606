/*
 * test.h — the in-tree test harness: TEST() registers a function at load
 * time, CHECK*() record failures without stopping the test. The runner
 * (tests/main.c) prints one line per failure and ends with
 * "N passed, M failed". No framework, no dependencies.
 */
#ifndef ALLOY_TEST_H
#define ALLOY_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void test_register(const char *name, const char *file, void (*fn)(void));
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A fresh empty directory for this test (removed at exit unless ALLOY_KEEP_TMP). */
const char *test_tmpdir(void);
/* Path of the alloy CLI under test (ALLOY_BIN, default build/alloy). */
const char *test_alloy_bin(void);
/* Runs a shell command; returns its exit status (or -1). Output goes to *out if non-NULL (malloc'd). */
int test_run(const char *cmd, char **out);
/* Repository-relative data path: tests/data/<rel>. */
const char *test_data(const char *rel);

/* A tensor for test_write_safetensors: data holds numel values of `dtype`
 * ("F32", "BF16", "F16", "I64", ...), already encoded. */
struct test_tensor {
    const char *name;
    const char *dtype;
    int ndim;
    long long shape[4];
    const void *data;
};
/* Writes a safetensors file (header padded to 8, tensors in the given order). Returns 0 on success. */
int test_write_safetensors(const char *path, const struct test_tensor *t, int n);
/* Writes a text file; returns 0 on success. */
int test_write_text(const char *path, const char *text);
/* A model folder: dir (created) with model.safetensors holding t[0..n) and config.json. 0 on success. */
int test_write_model(const char *dir, const struct test_tensor *t, int n, const char *config_json);
/* Runs a shell command (output discarded) and reports its peak resident set in KiB. Returns the exit status. */
int test_run_rss(const char *cmd, long *maxrss_kib);
/* The runner's --rss-run mode (main.c): runs cmd, writes its peak RSS in KiB to fd 3. */
int test_rss_helper(const char *cmd);

/* FNV-1a over the names and bytes of every regular file of a folder (symlinks not followed), in
 * name order: equal before and after proves the folder unchanged. */
uint64_t test_hash_dir(const char *dir);
/* A whole file, NUL-terminated (len: its size, may be NULL); NULL if it cannot be opened. */
char *test_read_file(const char *path, size_t *len);
/* Lines of log (may be NULL) that start with prefix ("": all lines). */
int test_count_lines(const char *log, const char *prefix);
/* Temporary or previous-output siblings ("*.alloy-tmp-*", "*.alloy-old-*") left in dir. */
int test_leftovers(const char *dir);

/* Under ASan/TSan allocations cost more (redzones, quarantine): memory bounds are not checked there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZER_BUILD 1
#else
#define SANITIZER_BUILD 0
#endif

#define TEST(name)                                                                       \
    static void name(void);                                                              \
    __attribute__((constructor)) static void test_reg_##name(void) { test_register(#name, __FILE__, name); } \
    static void name(void)

#define CHECK(cond)                                                                      \
    do { if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); } while (0)
#define CHECK_MSG(cond, ...)                                                             \
    do { if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define CHECK_INT(a, b)                                                                  \
    do { long long a_ = (long long)(a), b_ = (long long)(b);                             \
         if (a_ != b_) test_fail(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", #a, a_, #b, b_); } while (0)
#define CHECK_NEAR(a, b, tol)                                                            \
    do { double a_ = (double)(a), b_ = (double)(b);                                      \
         if (!(fabs(a_ - b_) <= (tol))) test_fail(__FILE__, __LINE__, "%s = %.9g, expected %.9g (tol %g)", #a, a_, b_, (double)(tol)); } while (0)
#define CHECK_STR_CONTAINS(hay, needle)                                                  \
    do { const char *h_ = (hay); if (!h_ || !strstr(h_, (needle))) test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", (needle)); } while (0)

#endif
