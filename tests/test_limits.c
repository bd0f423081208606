/*
 * test_limits.c — bounded work and memory per byte of input in the file
 * readers (issue 13, "quadratic and unbounded work").
 *
 * Each case runs the code under test in a forked child and measures the
 * child's peak resident set before and after (getrusage), so what the rest of
 * the suite allocated does not hide the growth. Inputs are built here:
 * sparse files (ftruncate) cost no disk.
 */
#include "test.h"
#include "core/internal.h"
#include "formats/json_members.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs fn(arg) in a child; returns its status (0 = fn returned 0) and the growth of its peak RSS in KiB. */
static int child_rss_growth(int (*fn)(void *), void *arg, long *growth_kib)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        struct rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        int rc = fn(arg);
        getrusage(RUSAGE_SELF, &b);
        long g = b.ru_maxrss - a.ru_maxrss;
        ssize_t w = write(fds[1], &g, sizeof g);
        _exit(rc == 0 && w == (ssize_t)sizeof g ? 0 : 1);
    }
    close(fds[1]);
    *growth_kib = -1;
    ssize_t r = read(fds[0], growth_kib, sizeof *growth_kib);
    close(fds[0]);
    int st;
    if (waitpid(pid, &st, 0) != pid || r != (ssize_t)sizeof *growth_kib) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ alloy_copy_file */

struct copy_job { char src[512], dst[512]; };

static int do_copy(void *arg)
{
    struct copy_job *j = arg;
    struct alloy_err err = {0};
    int rc = alloy_copy_file(j->src, j->dst, &err);
    if (rc) fprintf(stderr, "copy: %s\n", err.msg);
    return rc;
}

static int byte_at(int fd, uint64_t off)
{
    unsigned char c;
    return pread(fd, &c, 1, (off_t)off) == 1 ? c : -1;
}

TEST(limits_copy_file_in_fixed_pieces)
{
    /* a sparse 3 GiB file with a few data bytes is copied with a bounded buffer, byte for byte */
    struct copy_job j;
    snprintf(j.src, sizeof j.src, "%s/tokenizer.model", test_tmpdir());
    snprintf(j.dst, sizeof j.dst, "%s/copy.model", test_tmpdir());
    const uint64_t size = (uint64_t)3 << 30;
    const uint64_t at[] = {0, 4095, 4096, ((uint64_t)1 << 30) + 12345, ((uint64_t)2 << 30) - 1, size - 1};
    int fd = open(j.src, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK_INT(ftruncate(fd, (off_t)size), 0);
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        unsigned char c = (unsigned char)(0x41 + i);
        CHECK_INT(pwrite(fd, &c, 1, (off_t)at[i]), 1);
    }
    close(fd);
    long growth = 0;
    CHECK_INT(child_rss_growth(do_copy, &j, &growth), 0);
    CHECK_MSG(SANITIZER_BUILD || (growth >= 0 && growth < 16 * 1024), "copying 3 GiB grew the peak RSS by %ld KiB",
              growth);
    struct stat st;
    CHECK_INT(stat(j.dst, &st), 0);
    CHECK_INT((uint64_t)st.st_size, size);
    int a = open(j.src, O_RDONLY), b = open(j.dst, O_RDONLY);
    CHECK(a >= 0 && b >= 0);
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) CHECK_INT(byte_at(b, at[i]), 0x41 + (int)i);
    const uint64_t holes[] = {1, 4097, (uint64_t)1 << 30, ((uint64_t)2 << 30) + 7, size - 2};
    for (size_t i = 0; i < sizeof holes / sizeof *holes; i++) CHECK_INT(byte_at(b, holes[i]), byte_at(a, holes[i]));
    close(a);
    close(b);
    unlink(j.src);
    unlink(j.dst);
}

/* ------------------------------------------------------------ safetensors headers */

/* A safetensors image: header json padded to 8 bytes, then `data` zero bytes. */
static uint8_t *st_image(const char *json, size_t data, size_t *len)
{
    size_t n = strlen(json), pad = (8 - n % 8) % 8;
    uint8_t *b = calloc(1, 8 + n + pad + data);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)(n + pad) >> (8 * i));
    memcpy(b + 8, json, n);
    memset(b + 8 + n, ' ', pad);
    *len = 8 + n + pad + data;
    return b;
}

struct st_job { uint8_t *img; size_t len; int refusal; /* 1: the open is expected to fail: no message */ };

static int do_st_open(void *arg)
{
    struct st_job *j = arg;
    struct alloy_st_file *f = NULL;
    struct alloy_err err = {0};
    int rc = alloy_st_open_memory(j->img, j->len, "big.safetensors", &f, &err);
    if (rc && !j->refusal) fprintf(stderr, "open: %s\n", err.msg);
    if (!rc) alloy_st_close(f);
    return rc;
}

TEST(limits_safetensors_header_memory_per_byte)
{
    /* 200,000 one-element tensors: a 13.6 MB header */
    size_t nt = 200000, cap = nt * 80 + 16;
    char *json = malloc(cap), *p = json;
    p += sprintf(p, "{");
    for (size_t i = 0; i < nt; i++)
        p += sprintf(p, "%s\"t%zu\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}", i ? "," : "", i, 4 * i,
                     4 * i + 4);
    sprintf(p, "}");
    struct st_job j = {0};
    j.img = st_image(json, 4 * nt, &j.len);
    size_t hdr = strlen(json);
    free(json);
    long growth = 0;
    CHECK_INT(child_rss_growth(do_st_open, &j, &growth), 0);
    double per_byte = (double)growth * 1024 / (double)hdr;
    /* measured 3.0 bytes per header byte (3.3 with a jansson tree per record; 17.9 with one for the header) */
    CHECK_MSG(SANITIZER_BUILD || (growth >= 0 && per_byte <= 4.5),
              "parsing a %zu-byte header grew the peak RSS by %ld KiB (%.1f per byte)", hdr, growth, per_byte);
    free(j.img);
}

static void expect_st(const char *json, size_t data, const char *needle)
{
    size_t len;
    uint8_t *img = st_image(json, data, &len);
    struct alloy_st_file *f = NULL;
    struct alloy_err err = {0};
    int rc = alloy_st_open_memory(img, len, "x.safetensors", &f, &err);
    if (needle) {
        CHECK_MSG(rc != 0, "%s: accepted, expected \"%s\"", json, needle);
        CHECK_STR_CONTAINS(err.msg, needle);
    } else {
        CHECK_MSG(rc == 0, "%s: %s", json, err.msg);
        alloy_st_close(f);
    }
    free(img);
}

TEST(limits_safetensors_members_one_at_a_time)
{
    /* the member scanner: brackets and quotes inside strings, escapes, nesting, and its errors */
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":\"}]\\\"{\",\"y\":[{\"z\":[]}]}}", 4,
              NULL);
    expect_st(" {\"\\u005f_metadata__\":{\"k\":\"v\"}, \"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}} ", 2,
              NULL);
    expect_st("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate");
    expect_st("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate");
    expect_st("{\"a\":1 \"b\":2}", 0, "header JSON");
    expect_st("{\"a\":[1,2}", 0, "header JSON");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "header JSON");
    expect_st("{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "header JSON");
    expect_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_st("{\"a\":tru}", 0, "header JSON");
    expect_st("{\"a\":\"x}", 0, "header JSON");
    expect_st("[]", 0, "must be a JSON object");
}

/* Whatever a member holds, jansson's tree of it stays small: a value other than a string is parsed only
 * up to JSON_PART_MAX bytes (an 8 MB shape array costs 160 MiB as a tree), strings of any size pass. */
TEST(limits_json_values_bounded)
{
    size_t big = 8u << 20, cap = big + 4096;
    char *json = malloc(cap), *p = json;
    p += sprintf(p, "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4],\"shape\":[1");
    while ((size_t)(p - json) < big) p += sprintf(p, ",1");
    sprintf(p, "]}}");
    struct st_job j = {.refusal = 1};
    j.img = st_image(json, 4, &j.len);
    long growth = 0;
    CHECK_INT(child_rss_growth(do_st_open, &j, &growth), 1); /* refused */
    CHECK_MSG(SANITIZER_BUILD || (growth >= 0 && growth < 16 * 1024),
              "refusing an 8 MB record grew the peak RSS by %ld KiB", growth);
    free(j.img);
    expect_st(json, 4, "byte 5: expected a string or a JSON value of at most 1048576 bytes, found");
    /* the limit is on bytes, not on validity: a record padded inside to just under it is read */
    p = json + sprintf(json, "{\"a\":{\"dtype\":\"F32\",");
    memset(p, ' ', JSON_PART_MAX - 64);
    sprintf(p + JSON_PART_MAX - 64, "\"shape\":[1],\"data_offsets\":[0,4]}}");
    expect_st(json, 4, NULL);
    /* a metadata string of 8 MB is a string: read */
    p = json + sprintf(json, "{\"__metadata__\":{\"k\":\"");
    memset(p, 'x', big);
    sprintf(p + big, "\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    expect_st(json, 4, NULL);
    /* an index whose metadata is a 2 MB array is refused, naming the index */
    const char *dir = test_tmpdir();
    char path[1200];
    size_t len;
    uint8_t *img = st_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &len);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(img, 1, len, f) == len);
    if (f) fclose(f);
    free(img);
    p = json + sprintf(json, "{\"metadata\":[0");
    while ((size_t)(p - json) < (2u << 20)) p += sprintf(p, ",0");
    sprintf(p, "],\"weight_map\":{\"a\":\"model.safetensors\"}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK_INT(test_write_text(path, json), 0);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK(alloy_model_open(dir, &m, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "model.safetensors.index.json: byte 12: expected a string or a JSON value of at most");
    free(json);
}

/* ------------------------------------------------------------ model.safetensors.index.json */

static int do_model_open(void *arg)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    int rc = alloy_model_open(arg, &m, &err);
    if (rc) fprintf(stderr, "open: %s\n", err.msg);
    alloy_model_close(m);
    return rc;
}

TEST(limits_index_memory_per_byte)
{
    /* 100,000 entries in the index, all in one shard */
    const char *dir = test_tmpdir();
    size_t nt = 100000, cap = nt * 80 + 64;
    char *json = malloc(cap), *idx = malloc(cap), *p = json, *q = idx;
    p += sprintf(p, "{");
    q += sprintf(q, "{\"metadata\":{\"total_size\":%zu},\"weight_map\":{", 4 * nt);
    for (size_t i = 0; i < nt; i++) {
        p += sprintf(p, "%s\"model.t%zu\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}", i ? "," : "", i,
                     4 * i, 4 * i + 4);
        q += sprintf(q, "%s\"model.t%zu\":\"model-1.safetensors\"", i ? "," : "", i);
    }
    sprintf(p, "}");
    sprintf(q, "}}");
    size_t len;
    uint8_t *img = st_image(json, 4 * nt, &len);
    char path[1200];
    snprintf(path, sizeof path, "%s/model-1.safetensors", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(img, 1, len, f) == len);
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK_INT(test_write_text(path, idx), 0);
    size_t bytes = strlen(json) + strlen(idx);
    long growth = 0;
    CHECK_INT(child_rss_growth(do_model_open, (void *)dir, &growth), 0);
    double per_byte = (double)growth * 1024 / (double)bytes;
    /* measured 3.05 bytes per byte of index + header (4.2 with a jansson tree per entry; before that 6.9 per
     * index byte, 17.9 per header byte) */
    CHECK_MSG(SANITIZER_BUILD || (growth >= 0 && per_byte <= 4.5),
              "opening %zu bytes of index and header grew the peak RSS by %ld KiB (%.1f per byte)", bytes, growth,
              per_byte);
    /* a name listed twice is still refused */
    CHECK_INT(test_write_text(path, "{\"weight_map\":{\"model.t1\":\"model-1.safetensors\","
                                    "\"model.t1\":\"model-1.safetensors\"}}"), 0);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK(alloy_model_open(dir, &m, &err) != 0);
    CHECK_STR_CONTAINS(err.msg, "duplicate key 'model.t1'");
    free(img);
    free(json);
    free(idx);
}

/* The index is read through a 1 MiB window (src/formats/model_index.c): 48 MiB of whitespace between two
 * entries cost the window, not the text (the whole text was held before, 48 MiB and more). */
TEST(limits_index_text_not_held)
{
    const char *dir = test_tmpdir();
    size_t len;
    uint8_t *img = st_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, &len);
    char path[1200];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(img, 1, len, f) == len);
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    f = fopen(path, "wb");
    size_t pad = (size_t)48 << 20;
    char *spaces = malloc(pad);
    CHECK(f && spaces);
    if (f && spaces) {
        memset(spaces, ' ', pad);
        fputs("{\"weight_map\": {\"a\": \"s.safetensors\",", f);
        CHECK(fwrite(spaces, 1, pad, f) == pad);
        fputs("\"b\": \"s.safetensors\"}}", f);
    }
    if (f) fclose(f);
    free(spaces);
    long growth = 0;
    CHECK_INT(child_rss_growth(do_model_open, (void *)dir, &growth), 0);
    CHECK_MSG(SANITIZER_BUILD || (growth >= 0 && growth < 8 * 1024),
              "opening a 48 MiB index of two entries grew the peak RSS by %ld KiB", growth);
    free(img);
}
