/*
 * test_safetensors.c — the safetensors reader: the bundled fixtures, one
 * hand-made corrupt file per validation rule (each must fail with its own
 * message), and model-folder resolution (sharded index, HF cache).
 */
#include "test.h"
#include "alloy.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Builds "<u64 len><header padded to 8><data>" in a malloc'd buffer. */
static uint8_t *make_file(const char *header, const void *data, size_t data_len, size_t *out_len)
{
    size_t h = strlen(header), padded = (h + 7) & ~(size_t)7;
    uint8_t *buf = malloc(8 + padded + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    *out_len = 8 + padded + data_len;
    return buf;
}

static int open_mem(const uint8_t *buf, size_t len, struct alloy_err *err)
{
    struct alloy_st_file *f = NULL;
    int rc = alloy_st_open_memory(buf, len, "t.safetensors", &f, err);
    alloy_st_close(f);
    return rc;
}

/* Expects a header (with data_len zero bytes of data) to fail with a message containing `want`. */
static void expect_bad(const char *header, size_t data_len, const char *want)
{
    uint8_t zeros[256] = {0};
    size_t len;
    uint8_t *buf = make_file(header, zeros, data_len, &len);
    struct alloy_err err = {0};
    int rc = open_mem(buf, len, &err);
    CHECK_MSG(rc != ALLOY_OK, "accepted corrupt header: %s", header);
    CHECK_STR_CONTAINS(err.msg, want);
    CHECK_STR_CONTAINS(err.msg, "t.safetensors");
    free(buf);
}

TEST(st_reads_fixture)
{
    struct alloy_st_file *f = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_st_open(test_data("tiny-llama/base/model.safetensors"), &f, &err), ALLOY_OK);
    if (!f) return;
    CHECK_INT(alloy_st_count(f), 39);
    const struct alloy_tensor *t = alloy_st_find(f, "model.layers.0.mlp.gate_proj.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->dtype, ALLOY_DTYPE_BF16);
        CHECK_INT(t->ndim, 2);
        CHECK_INT(t->shape[0], 344);
        CHECK_INT(t->shape[1], 128);
        CHECK_INT(t->nbytes, 344 * 128 * 2);
    }
    CHECK(alloy_st_metadata(f, "format") && strcmp(alloy_st_metadata(f, "format"), "pt") == 0);
    CHECK(alloy_st_find(f, "nope") == NULL);
    alloy_st_close(f);
}

TEST(st_accepts_valid_edge_cases)
{
    struct alloy_err err = {0};
    size_t len;
    uint8_t data[8] = {0};
    /* scalar (shape []), empty tensor, leading whitespace, metadata, extra fields ignored */
    uint8_t *buf = make_file("  {\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                             "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                             "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8],\"extra\":1},"
                             "\"__metadata__\":{\"format\":\"pt\"}}",
                             data, 8, &len);
    struct alloy_st_file *f = NULL;
    CHECK_INT(alloy_st_open_memory(buf, len, "ok", &f, &err), ALLOY_OK);
    if (f) {
        CHECK_INT(alloy_st_count(f), 3);
        CHECK_INT(alloy_st_find(f, "s")->numel, 1);
        CHECK_INT(alloy_st_find(f, "e")->numel, 0);
    }
    alloy_st_close(f);
    free(buf);
    /* an empty header object with no data is a valid (empty) file */
    buf = make_file("{}", NULL, 0, &len);
    CHECK_INT(open_mem(buf, len, &err), ALLOY_OK);
    free(buf);
}

/* The record fast path (plain strings and integers, no jansson tree) must give the verdict and values jansson
 * gives: every spelling below is either the record F32 [1, 2] at [0, 8] or an error, decided by the JSON rules. */
TEST(st_record_spellings_fast_and_slow_agree)
{
    static const struct { const char *rec; int ok; } cases[] = {
        {"{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 1},
        {" {\n \"data_offsets\" : [ 0 , 8 ] ,\t\"shape\":[ 1,2 ] , \"dtype\" : \"F32\" } ", 1},
        {"{\"dtype\":\"F\\u0033\\u0032\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 1},           /* escapes */
        {"{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8],\"x\":[1,{\"y\":-2.5}]}", 1}, /* extra key */
        {"{\"sh\\u0061pe\":[1,2],\"dtype\":\"F32\",\"data_offsets\":[0,8]}", 1},
        {"{\"dtype\":\"F32\",\"shape\":[01,2],\"data_offsets\":[0,8]}", 0},  /* leading zero: not JSON */
        {"{\"dtype\":\"F32\",\"shape\":[1,-2],\"data_offsets\":[0,8]}", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,2.0],\"data_offsets\":[0,8]}", 0}, /* a real, not an integer */
        {"{\"dtype\":\"F32\",\"shape\":[1,2e0],\"data_offsets\":[0,8]}", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,2,],\"data_offsets\":[0,8]}", 0},
        {"{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 0}, /* duplicate key */
        {"{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8,8]}", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,99999999999999999999]}", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,2]}", 0},
        {"{\"dtype\":\"F32\\u0000\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 0},
        {"{\"dtype\":\"F\t32\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 0}, /* a raw control character */
        {"{\"dtype\":\"X32\",\"shape\":[1,2],\"data_offsets\":[0,8]}", 0},
        {"{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}", 0},
    };
    const uint8_t data[8] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char header[512];
        snprintf(header, sizeof header, "{\"a\\\"b\":%s}", cases[i].rec);
        size_t len;
        uint8_t *buf = make_file(header, data, sizeof data, &len);
        struct alloy_st_file *f = NULL;
        struct alloy_err err = {0};
        int rc = alloy_st_open_memory(buf, len, "t.safetensors", &f, &err);
        CHECK_MSG((rc == ALLOY_OK) == cases[i].ok, "case %zu: %s: %s", i, cases[i].rec, err.msg);
        const struct alloy_tensor *t = f ? alloy_st_find(f, "a\"b") : NULL;
        if (cases[i].ok && t) {
            CHECK(t->dtype == ALLOY_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 1 && t->shape[1] == 2 && t->nbytes == 8);
        } else if (cases[i].ok) {
            CHECK_MSG(0, "case %zu: no tensor named a\"b", i);
        } else {
            CHECK_MSG(strstr(err.msg, "t.safetensors") != NULL, "case %zu: %s", i, err.msg);
        }
        alloy_st_close(f);
        free(buf);
    }
}

TEST(st_rule_header_too_small)
{
    uint8_t buf[7] = {1, 0, 0, 0, 0, 0, 0};
    struct alloy_err err = {0};
    CHECK(open_mem(buf, sizeof buf, &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "too small");
}

TEST(st_rule_header_too_large)
{
    uint8_t buf[16] = {0};
    uint64_t n = 100000001ull;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    struct alloy_err err = {0};
    CHECK(open_mem(buf, sizeof buf, &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "exceeds");
    /* 2^64 - 1: must not wrap around */
    memset(buf, 0xff, 8);
    CHECK(open_mem(buf, sizeof buf, &err) == ALLOY_ERR_FORMAT);
}

TEST(st_rule_header_past_end)
{
    uint8_t buf[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    struct alloy_err err = {0};
    CHECK(open_mem(buf, sizeof buf, &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "past the end");
}

TEST(st_rule_invalid_utf8)
{
    expect_bad("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "UTF-8");
    expect_bad("{\"\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "UTF-8"); /* overlong */
}

TEST(st_rule_invalid_json_shape)
{
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "header JSON");
    expect_bad("[1,2]", 0, "must be a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4, "data_offsets");
    expect_bad("{\"a\":3}", 0, "must be an object");
    expect_bad("{\"__metadata__\":{\"format\":1}}", 0, "__metadata__");
    expect_bad("{\"__metadata__\":[1]}", 0, "__metadata__");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "dimensions");
}

TEST(st_rule_duplicate_names)
{
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
}

TEST(st_rule_offsets_contiguous)
{
    /* gap */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "contiguous");
    /* overlap: the reference's json attack, every tensor claiming [0, 16] */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "contiguous");
    /* first tensor not at 0 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "contiguous");
    /* end before begin */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,2]}}", 4, "contiguous");
}

TEST(st_rule_overflow_and_size)
{
    /* 2^62 x 2^62 elements overflow 64 bits */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
               "\"data_offsets\":[0,4]}}", 4, "overflow");
    /* element count fits but bytes do not */
    expect_bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4, "overflow");
    /* 2^63-sized shape entry is not representable as a JSON integer for the parser */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,4]}}", 4, "");
    /* byte count disagrees with dtype x shape */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8");
    /* sub-byte dtype with a fractional byte count */
    expect_bad("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, "whole number of bytes");
}

TEST(st_rule_buffer_must_end_at_eof)
{
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "truncated");
}

TEST(st_truncated_fixture_every_length)
{
    /* every prefix of a real header must be rejected cleanly */
    FILE *fp = fopen(test_data("tiny-llama/base/model.safetensors"), "rb");
    CHECK(fp != NULL);
    if (!fp) return;
    uint8_t *buf = malloc(8192);
    size_t n = fread(buf, 1, 8192, fp);
    fclose(fp);
    int accepted = 0;
    for (size_t len = 0; len < n; len += 7) {
        struct alloy_err err = {0};
        accepted += open_mem(buf, len, &err) == ALLOY_OK;
    }
    CHECK_INT(accepted, 0);
    free(buf);
}

TEST(model_open_single_and_errors)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open(test_data("tiny-llama/code"), &m, &err), ALLOY_OK);
    if (m) {
        CHECK_INT(alloy_model_count(m), 39);
        CHECK(strcmp(alloy_model_tensor(m, 0)->name, "model.embed_tokens.weight") == 0);
        CHECK(alloy_model_config_text(m) && strstr(alloy_model_config_text(m), "LlamaForCausalLM"));
    }
    alloy_model_close(m);
    m = NULL;
    CHECK(alloy_model_open("/nonexistent/model", &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "/nonexistent/model");
    setenv("HF_HUB_CACHE", test_tmpdir(), 1);
    CHECK(alloy_model_open("someorg/somemodel", &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "searched");
    CHECK_STR_CONTAINS(err.msg, "someorg/somemodel");
    unsetenv("HF_HUB_CACHE");
    const char *empty = test_tmpdir();
    CHECK(alloy_model_open(empty, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "no model.safetensors");
}

static void copy_file(const char *from, const char *to)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    CHECK_INT(system(cmd), 0);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

TEST(model_open_hf_cache_and_index)
{
    const char *root = test_tmpdir();
    char snap[600], path[800], refs[600];
    snprintf(snap, sizeof snap, "%s/models--org--tiny/snapshots/abc123", root);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' '%s/models--org--tiny/refs'", snap, root);
    CHECK_INT(system(cmd), 0);
    snprintf(refs, sizeof refs, "%s/models--org--tiny/refs/main", root);
    write_text(refs, "abc123\n");
    /* a sharded copy: two shards with an index pointing into them by a non-standard name */
    snprintf(path, sizeof path, "%s/weights-a.safetensors", snap);
    copy_file(test_data("tiny-llama/base/model.safetensors"), path);
    snprintf(path, sizeof path, "%s/config.json", snap);
    copy_file(test_data("tiny-llama/base/config.json"), path);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", snap);
    write_text(path, "{\"metadata\":{\"total_size\":1},\"weight_map\":{\"model.norm.weight\":\"weights-a.safetensors\","
                     "\"model.embed_tokens.weight\":\"weights-a.safetensors\"}}");
    setenv("HF_HUB_CACHE", root, 1);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open("org/tiny", &m, &err), ALLOY_OK);
    if (m) {
        CHECK_INT(alloy_model_count(m), 2); /* only what the index lists */
        CHECK(strcmp(alloy_model_tensor(m, 0)->name, "model.embed_tokens.weight") == 0); /* file order */
        CHECK(alloy_model_find(m, "model.norm.weight") != NULL);
    }
    alloy_model_close(m);
    m = NULL;
    CHECK_INT(alloy_model_open("org/tiny@abc123", &m, &err), ALLOY_OK);
    alloy_model_close(m);
    m = NULL;
    CHECK(alloy_model_open("org/tiny@v2", &m, &err) != ALLOY_OK);
    unsetenv("HF_HUB_CACHE");
    /* an index naming a missing shard, and a tensor not in its shard */
    write_text(path, "{\"weight_map\":{\"model.norm.weight\":\"missing.safetensors\"}}");
    CHECK(alloy_model_open(snap, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "does not exist");
    write_text(path, "{\"weight_map\":{\"not.there\":\"weights-a.safetensors\"}}");
    CHECK(alloy_model_open(snap, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "not.there");
    write_text(path, "{\"weight_map\":{\"x\":\"../../etc/passwd\"}}");
    CHECK(alloy_model_open(snap, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "must be a file in the model folder");
    write_text(path, "{\"weight_map\":[1]}");
    CHECK(alloy_model_open(snap, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "weight_map");
    write_text(path, "not json");
    CHECK(alloy_model_open(snap, &m, &err) != ALLOY_OK);
    CHECK_STR_CONTAINS(err.msg, "not valid JSON");
}

TEST(parse_size_forms)
{
    uint64_t v;
    CHECK(alloy_parse_size("5B", &v) == 0 && v == 5000000000ull);
    CHECK(alloy_parse_size("1G", &v) == 0 && v == 1000000000ull);
    CHECK(alloy_parse_size("500m", &v) == 0 && v == 500000000ull);
    CHECK(alloy_parse_size("2.5G", &v) == 0 && v == 2500000000ull);
    CHECK(alloy_parse_size("1MiB", &v) == 0 && v == 1048576ull);
    CHECK(alloy_parse_size("4096", &v) == 0 && v == 4096);
    CHECK(alloy_parse_size("-1G", &v) != 0);
    CHECK(alloy_parse_size("1Q", &v) != 0);
    CHECK(alloy_parse_size("", &v) != 0);
    CHECK(alloy_parse_size("1e30", &v) != 0);
}
