/*
 * test_gguf.c — GGUF files as models: Hugging Face names, shapes and row
 * order, rebuilt config.json / tokenizer, evaluation, merging, and one
 * corrupt-file case per validation rule of the reader.
 *
 * DESIGN
 *   Golden data: tests/data/gguf/ (llama.cpp c392e50 outputs, see
 *   expected.json) and tests/data/tiny-llama/base, the HF folder that
 *   tiny/tiny-base-f32.gguf was converted from, so names, shapes and the Q/K
 *   un-permutation are checked against the original weights. Where values
 *   are quantized the test un-permutes the file-layout floats itself
 *   (gguf_row[h*d + 2i + j] = hf_row[h*d + j*d/2 + i]) and compares.
 *   Corrupt files are built here by a small writer (struct gb) that records
 *   where each field sits, so every case patches one field of a valid file.
 */
#include "test.h"

#include "alloy.h"
#include "formats/gguf.h"
#include "formats/tensor_file.h"

#include <jansson.h>
#include <malloc.h>
#include <stdlib.h>
#include <time.h>

#define GG(rel) "tests/data/gguf/" rel

/* Hands freed heap back to the system at the end of a test that allocated much: later tests measure the
 * peak RSS of commands forked from this process (test_run_rss), and a forked child starts with the
 * runner's resident pages. */
static void trim_heap(void) { malloc_trim(0); }

/* Whole tensor t in file layout (stored rows, dequantized), malloc'd. */
static float *file_layout(const struct alloy_tensor *t)
{
    uint8_t *raw = malloc(t->nbytes);
    float *f = malloc(t->numel * sizeof *f);
    struct alloy_err err;
    if (!raw || !f || alloy_tensor_pread(t, 0, raw, t->nbytes, &err) != ALLOY_OK) {
        free(raw);
        free(f);
        return NULL;
    }
    alloy_to_f32(t->dtype, raw, f, t->numel);
    free(raw);
    return f;
}

/* The test's own reverse of the converter's permutation, for n heads. */
static void unpermute(float *dst, const float *src, uint64_t rows, uint64_t cols, uint64_t n)
{
    uint64_t d = rows / n;
    for (uint64_t h = 0; h < n; h++)
        for (uint64_t i = 0; i < d / 2; i++)
            for (uint64_t j = 0; j < 2; j++)
                memcpy(dst + (h * d + j * d / 2 + i) * cols, src + (h * d + 2 * i + j) * cols, cols * sizeof *dst);
}

/* Logical (HF-order) values of tensor `name` of a GGUF model, computed here. */
static float *logical(const struct alloy_model *m, const char *name, uint64_t nq, uint64_t nkv)
{
    const struct alloy_tensor *t = alloy_model_find(m, name);
    float *f = t ? file_layout(t) : NULL;
    uint64_t n = strstr(name, "q_proj") ? nq : strstr(name, "k_proj") ? nkv : 0;
    if (!f || !n) return f;
    float *u = malloc(t->numel * sizeof *u);
    if (u) unpermute(u, f, (uint64_t)t->shape[0], (uint64_t)t->shape[1], n);
    free(f);
    return u;
}

TEST(gguf_f32_file_is_its_hf_folder)
{
    struct alloy_model *g = NULL, *hf = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(GG("tiny/tiny-base-f32.gguf"), &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_model_open("tests/data/tiny-llama/base", &hf, &err) == ALLOY_OK, "%s", err.msg);
    if (!g || !hf) goto out;
    CHECK_INT(alloy_model_count(g), alloy_model_count(hf));
    for (size_t i = 0; i < alloy_model_count(hf); i++) {
        const struct alloy_tensor *a = alloy_model_tensor(hf, i), *b = alloy_model_find(g, a->name);
        CHECK_MSG(b, "%s: missing from the GGUF model", a->name);
        if (!b) continue;
        CHECK_INT(b->ndim, a->ndim);
        CHECK(memcmp(a->shape, b->shape, sizeof a->shape) == 0);
        float *x = malloc(a->numel * sizeof *x), *y = malloc(a->numel * sizeof *y);
        CHECK(alloy_tensor_read_f32(a, 0, a->numel, x, &err) == ALLOY_OK);
        CHECK_MSG(alloy_tensor_read_f32(b, 0, b->numel, y, &err) == ALLOY_OK, "%s", err.msg);
        CHECK_MSG(memcmp(x, y, a->numel * sizeof *x) == 0, "%s: values differ from the HF folder's", a->name);
        free(x);
        free(y);
    }
out:
    alloy_model_close(g);
    alloy_model_close(hf);
    trim_heap();
}

TEST(gguf_quantized_rows_unpermuted_any_range)
{
    struct alloy_model *g = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(GG("quant/base-Q4_K_M.gguf"), &g, &err) == ALLOY_OK, "%s", err.msg);
    if (!g) return;
    static const char *const names[] = {"model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                                        "model.layers.1.self_attn.v_proj.weight", "model.layers.0.mlp.down_proj.weight"};
    for (size_t k = 0; k < 4; k++) {
        const struct alloy_tensor *t = alloy_model_find(g, names[k]);
        float *want = logical(g, names[k], 4, 2);
        CHECK(t && want);
        if (!t || !want) continue;
        CHECK_INT(t->shape[0], k == 1 || k == 2 ? 128 : 256); /* ne reversed: [out, in] */
        CHECK_INT(t->shape[1], k == 3 ? 768 : 256);
        /* whole, then ranges that start and end inside blocks and rows */
        uint64_t ranges[][2] = {{0, t->numel}, {37, 1000}, {255, 2}, {256 * 3 + 100, 700}, {t->numel - 5, 5}};
        float *got = malloc(t->numel * sizeof *got);
        for (size_t r = 0; r < 5; r++) {
            CHECK_MSG(alloy_tensor_read_f32(t, ranges[r][0], ranges[r][1], got, &err) == ALLOY_OK, "%s", err.msg);
            CHECK_MSG(memcmp(got, want + ranges[r][0], ranges[r][1] * sizeof *got) == 0, "%s: range %llu+%llu",
                      names[k], (unsigned long long)ranges[r][0], (unsigned long long)ranges[r][1]);
        }
        free(got);
        free(want);
    }
    alloy_model_close(g);
    trim_heap();
}

TEST(gguf_config_and_tokenizer_rebuilt)
{
    struct alloy_model *g = NULL;
    struct alloy_tokenizer *tok = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_model_open(GG("split/base-Q4_K_M-00001-of-00003.gguf"), &g, &err) == ALLOY_OK, "%s", err.msg);
    if (!g) return;
    CHECK_INT(alloy_model_count(g), 21);
    json_t *c = json_loads(alloy_model_config_text(g), 0, NULL);
    CHECK(c);
    static const struct { const char *key; long long v; } want[] = {
        {"hidden_size", 256}, {"intermediate_size", 768}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
        {"num_key_value_heads", 2}, {"head_dim", 64}, {"max_position_embeddings", 256}, {"vocab_size", 260},
        {"bos_token_id", 256}, {"eos_token_id", 257},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(json_integer_value(json_object_get(c, want[i].key)) == want[i].v, "config.json: %s", want[i].key);
    CHECK(json_is_false(json_object_get(c, "tie_word_embeddings")));
    CHECK_NEAR(json_real_value(json_object_get(c, "rms_norm_eps")), 1e-5, 1e-12);
    CHECK_NEAR(json_real_value(json_object_get(c, "rope_theta")), 10000.0, 0);
    CHECK(strcmp(json_string_value(json_object_get(c, "model_type")), "llama") == 0);
    json_decref(c);
    /* byte-level gpt2 with no merges: ids are the bytes, whatever the byte */
    CHECK_MSG(alloy_model_tokenizer(g, &tok, &err) == ALLOY_OK, "%s", err.msg);
    int32_t *ids = NULL;
    size_t n = 0;
    const char text[] = "fn main() {\n\tlet \xc3\xa9 = 1;\n}";
    CHECK_MSG(alloy_tokenizer_encode(tok, text, sizeof text - 1, "t", &ids, &n, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_INT(n, sizeof text - 1);
    for (size_t i = 0; i < n && i < sizeof text - 1; i++) CHECK_INT(ids[i], (uint8_t)text[i]);
    free(ids);
    alloy_tokenizer_free(tok);
    alloy_model_close(g);
}

/* `alloy eval FILE.gguf` (the CLI, in its own process) on one text against llama.cpp's fixture value
 * nll_dequant_f32: the exact float32 evaluation of the ggml-dequantized weights (alloy eval of them as an
 * HF folder). The weights here are bit-identical to those (quant_every_file_dequantizes_as_llamacpp) and
 * the evaluator is the same, so the only difference is config.json's rms_norm_eps, stored as float32 in
 * GGUF (1e-5 -> 9.99999975e-6, the same float the evaluator uses): the values agree to the fixture's 10
 * printed decimals, 1e-9. */
static void eval_file(const char *rel, const char *text, double want)
{
    char cmd[1200], *out = NULL;
    snprintf(cmd, sizeof cmd, "{ %s eval %s --text %s --ctx 128 --json --threads 2 2>/dev/null; }", test_alloy_bin(),
             rel, text);
    CHECK_INT(test_run(cmd, &out), 0);
    json_t *j = out ? json_loads(out, 0, NULL) : NULL;
    json_t *row = json_array_get(j, 0);
    double nll = json_real_value(json_object_get(row, "nll"));
    CHECK_MSG(row && fabs(nll - want) <= 1e-9, "%s on %s: nll %.10f, llama.cpp fixture %.10f (%s)", rel, text, nll,
              want, out ? out : "");
    CHECK_INT(json_integer_value(json_object_get(row, "tokens")), 65536);
    json_decref(j);
    free(out);
}

TEST(gguf_eval_matches_fixture_nll)
{
    eval_file(GG("quant/base-Q4_K_M.gguf"), "tests/data/eval_code.txt", 1.4825715887);
    eval_file(GG("tiny/tiny-base-Q4_K_M.gguf"), "tests/data/eval_prose.txt", 1.5407074796); /* Q5_0, Q8_0, F16 */
}

/* Values of `name` in model m in HF order: a GGUF model's un-permuted here, a folder's as stored. */
static float *hf_values(const struct alloy_model *m, const char *name)
{
    return strstr(alloy_model_ref(m), ".gguf") ? logical(m, name, 4, 2) : logical(m, name, 0, 0);
}

/* A linear 0.5/0.5 merge of refs a and b (float32 output) equals 0.5 x + 0.5 y of their dequantized,
 * un-permuted tensors, computed here: both products are exact, so the sum is one rounding in any order. */
static void check_linear_merge(const char *ra, const char *rb, size_t ntensors)
{
    char out[600], yaml[1200];
    snprintf(out, sizeof out, "%s/merged", test_tmpdir());
    snprintf(yaml, sizeof yaml,
             "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n"
             "    parameters: {weight: 0.5}\ndtype: float32\n", ra, rb);
    struct alloy_merge_options o;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = yaml;
    o.out_dir = out;
    o.threads = 2;
    CHECK_MSG(alloy_merge(&o, &err) == ALLOY_OK, "%s", err.msg);
    struct alloy_model *a = NULL, *b = NULL, *m = NULL;
    CHECK(alloy_model_open(ra, &a, &err) == ALLOY_OK);
    CHECK(alloy_model_open(rb, &b, &err) == ALLOY_OK);
    CHECK_MSG(alloy_model_open(out, &m, &err) == ALLOY_OK, "%s", err.msg);
    if (!a || !b || !m) goto done;
    CHECK_INT(alloy_model_count(m), ntensors);
    CHECK(alloy_model_config_text(m) && strstr(alloy_model_config_text(m), "\"num_hidden_layers\""));
    char tj[700];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", out); /* a GGUF donor's, rebuilt from its metadata */
    char *text = test_read_file(tj, NULL);
    CHECK(text != NULL);
    free(text);
    for (size_t i = 0; i < alloy_model_count(m); i++) {
        const struct alloy_tensor *t = alloy_model_tensor(m, i);
        float *x = hf_values(a, t->name), *y = hf_values(b, t->name);
        float *got = malloc(t->numel * sizeof *got);
        CHECK_MSG(x && y && got && t->dtype == ALLOY_DTYPE_F32, "%s", t->name);
        if (x && y && got && alloy_tensor_read_f32(t, 0, t->numel, got, &err) == ALLOY_OK) {
            size_t bad = 0;
            for (uint64_t e = 0; e < t->numel; e++) bad += got[e] != 0.5f * x[e] + 0.5f * y[e];
            CHECK_MSG(bad == 0, "%s: %zu of %llu values differ", t->name, bad, (unsigned long long)t->numel);
        }
        free(x);
        free(y);
        free(got);
    }
done:
    alloy_model_close(a);
    alloy_model_close(b);
    alloy_model_close(m);
    trim_heap();
}

TEST(gguf_linear_merge_of_quantized_inputs)
{
    check_linear_merge(GG("quant/base-Q8_0.gguf"), GG("quant/base-Q4_K_M.gguf"), 21);
}

TEST(gguf_linear_merge_gguf_with_hf_folder)
{
    /* the base's HF folder next to a Q4_K_M (Q5_0 / Q8_0 / F16 fallbacks) GGUF of it */
    check_linear_merge(GG("tiny/tiny-base-Q4_K_M.gguf"), "tests/data/tiny-llama/base", 39);
}

/* ------------------------------------------------------------ corrupt files, one per rule */

/* A small valid GGUF v3 built field by field; `at` records where the fields a case patches sit. */
struct gb {
    uint8_t buf[4096];
    size_t n;
    size_t at_version, at_ntensors, at_nkv, at_key0, at_type0, at_name1, at_ndims1, at_ne1, at_type1, at_off1,
        at_arch_val, at_heads;
};

static void put(struct gb *g, const void *p, size_t n) { if (n) memcpy(g->buf + g->n, p, n); g->n += n; }
static void put_u32(struct gb *g, uint32_t v) { put(g, &v, 4); }
static void put_u64(struct gb *g, uint64_t v) { put(g, &v, 8); }
static void put_str(struct gb *g, const char *s) { put_u64(g, strlen(s)); put(g, s, strlen(s)); }
static void kv_u32(struct gb *g, const char *k, uint32_t v) { put_str(g, k); put_u32(g, 4); put_u32(g, v); }

/* Two tensors: blk.0.attn_k F32 [32 x 4], blk.0.attn_q Q8_0 [32 x 4], the data padded to 32 as ggml
 * requires; `extra` raw pairs appended to the KV. */
static void gb_build(struct gb *g, const uint8_t *extra, size_t extra_len, uint32_t extra_kv)
{
    memset(g, 0, sizeof *g);
    put(g, "GGUF", 4);
    g->at_version = g->n;
    put_u32(g, 3);
    g->at_ntensors = g->n;
    put_u64(g, 2);
    g->at_nkv = g->n;
    put_u64(g, 3 + extra_kv);
    g->at_key0 = g->n;
    put_str(g, "general.architecture");
    g->at_type0 = g->n;
    put_u32(g, 8);
    g->at_arch_val = g->n;
    put_str(g, "llama");
    g->at_heads = g->n + 8 + strlen("llama.attention.head_count") + 4;
    kv_u32(g, "llama.attention.head_count", 2);
    kv_u32(g, "llama.block_count", 1);
    put(g, extra, extra_len);
    put_str(g, "blk.0.attn_k.weight");
    put_u32(g, 2);
    put_u64(g, 32);
    put_u64(g, 4);
    put_u32(g, 0);
    put_u64(g, 0);
    g->at_name1 = g->n;
    put_str(g, "blk.0.attn_q.weight");
    g->at_ndims1 = g->n;
    put_u32(g, 2);
    g->at_ne1 = g->n;
    put_u64(g, 32);
    put_u64(g, 4);
    g->at_type1 = g->n;
    put_u32(g, 8);
    g->at_off1 = g->n;
    put_u64(g, 512); /* 32 x 4 x 4 bytes, already a multiple of 32 */
    g->n = (g->n + 31) / 32 * 32;
    for (size_t i = 0; i < 512 / 4; i++) { float f = (float)i; memcpy(g->buf + g->n + 4 * i, &f, 4); }
    g->n += 512;
    for (int b = 0; b < 4; b++) { uint16_t d = 0x3c00; memcpy(g->buf + g->n + 34 * b, &d, 2); } /* d = 1 */
    g->n += 4 * 34 + 24; /* 136 bytes padded to 160 */
}

static void patch_u32(struct gb *g, size_t at, uint32_t v) { memcpy(g->buf + at, &v, 4); }
static void patch_u64(struct gb *g, size_t at, uint64_t v) { memcpy(g->buf + at, &v, 8); }

/* Opens g's bytes as a file: ALLOY_OK, or the error whose message must contain `want`. */
static void expect_open(const struct gb *g, size_t len, int want_rc, const char *want, int line)
{
    char path[600];
    snprintf(path, sizeof path, "%s/case.gguf", test_tmpdir());
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(g->buf, 1, len, f) != len) test_fail(__FILE__, line, "cannot write %s", path);
    if (f) fclose(f);
    struct alloy_gguf *gf = NULL; /* the reader itself: a file without the magic is not routed to it */
    struct alloy_err err = {0};
    int rc = alloy_gguf_open(path, &gf, &err);
    if (rc != want_rc) test_fail(__FILE__, line, "status %d, expected %d (%s)", rc, want_rc, err.msg);
    if (rc && (!strstr(err.msg, want) || !strstr(err.msg, path) || strchr(err.msg, '\n')))
        test_fail(__FILE__, line, "\"%s\" does not name the file and \"%s\"", err.msg, want);
    alloy_tensor_file_close(gf ? alloy_gguf_base(gf) : NULL);
}

#define BAD(g, len, rc, want) expect_open(g, len, rc, want, __LINE__)

TEST(gguf_corrupt_header_fields)
{
    struct gb g;
    gb_build(&g, NULL, 0, 0);
    BAD(&g, g.n, ALLOY_OK, "");
    g.buf[1] = 'X';
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "magic: expected \"GGUF\", found \"GXUF\"");
    gb_build(&g, NULL, 0, 0);
    patch_u32(&g, g.at_version, 1);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "GGUF v1 is no longer supported");
    patch_u32(&g, g.at_version, 4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "version: expected 2 or 3, found 4");
    patch_u32(&g, g.at_version, 0x03000000);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "mismatch between the host and model endianness");
    patch_u32(&g, g.at_version, 2); /* v2 reads the same */
    BAD(&g, g.n, ALLOY_OK, "");
    patch_u64(&g, g.at_ntensors, 1000000);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "tensor count: at most");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_ntensors, UINT64_MAX); /* -1 as int64 */
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "tensor count: at most");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_nkv, 1000000);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "key/value count: at most");
    gb_build(&g, NULL, 0, 0);
    BAD(&g, 20, ALLOY_ERR_FORMAT, "expected more bytes, found end of file");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_key0, 0);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "expected a non-empty key");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_key0, (1ull << 30) + 1);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "string of at most 1073741824 bytes");
    patch_u64(&g, g.at_key0, 4000);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "expected more bytes");
    gb_build(&g, NULL, 0, 0);
    patch_u32(&g, g.at_type0, 13);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "general.architecture: value type in [0, 12], found 13");
}

/* One extra key/value pair (raw bytes) appended to a valid file. */
static void with_kv(struct gb *g, const char *key, uint32_t type, const void *val, size_t len)
{
    struct gb tmp;
    tmp.n = 0;
    put_str(&tmp, key);
    put_u32(&tmp, type);
    put(&tmp, val, len);
    gb_build(g, tmp.buf, tmp.n, 1);
}

TEST(gguf_corrupt_key_values)
{
    struct gb g;
    uint8_t v[64] = {0};
    uint32_t u = 7;
    with_kv(&g, "llama.block_count", 4, &u, 4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "llama.block_count: duplicate key");
    uint32_t nested[3] = {9, 0, 0}; /* ARRAY of ARRAY, count 0 */
    with_kv(&g, "x.nested", 9, nested, 12);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "x.nested: array element type: a scalar or STRING type, found 9 (nested array)");
    uint32_t arr[3] = {4, 0, 0};
    arr[1] = 0;
    memcpy(v, arr, 4);
    uint64_t big = (1ull << 30) + 1;
    memcpy(v + 4, &big, 8);
    with_kv(&g, "x.array", 9, v, 12);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "x.array: at most 1073741824 array elements");
    big = 100000;
    memcpy(v + 4, &big, 8);
    with_kv(&g, "x.array", 9, v, 12);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "x.array: expected more bytes");
    uint8_t two = 2;
    with_kv(&g, "x.flag", 7, &two, 1);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "x.flag: a BOOL is 0 or 1, found 2");
    uint64_t a64 = 32;
    with_kv(&g, "general.alignment", 10, &a64, 8);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "general.alignment: expected UINT32, found UINT64");
    uint32_t a = 48;
    with_kv(&g, "general.alignment", 4, &a, 4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "general.alignment: expected a non-zero power of two, found 48");
    a = 0;
    with_kv(&g, "general.alignment", 4, &a, 4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "found 0");
    a = 16; /* valid, and the second tensor's offset 512 is still aligned */
    with_kv(&g, "general.alignment", 4, &a, 4);
    BAD(&g, g.n, ALLOY_OK, "");
}

TEST(gguf_corrupt_tensor_infos)
{
    struct gb g;
    gb_build(&g, NULL, 0, 0);
    memcpy(g.buf + g.at_name1 + 8, "blk.0.attn_k.weight", 19);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "tensor 'blk.0.attn_k.weight': duplicate name");
    gb_build(&g, NULL, 0, 0);
    patch_u32(&g, g.at_ndims1, 5);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "at most 4 dimensions, found 5");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_ne1 + 8, (uint64_t)-4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "ne[1] >= 0, found -4");
    patch_u64(&g, g.at_ne1 + 8, 1ull << 62);
    patch_u64(&g, g.at_ne1, 64);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "element count within INT64_MAX");
    gb_build(&g, NULL, 0, 0);
    patch_u32(&g, g.at_type1, 4);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "a ggml type id, found 4 (unknown or removed)");
    patch_u32(&g, g.at_type1, 43);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "found 43 (unknown or removed)");
    patch_u32(&g, g.at_type1, 16);
    BAD(&g, g.n, ALLOY_ERR_UNSUPPORTED, "tensor 'blk.0.attn_q.weight': type IQ2_XXS (16) is not supported");
    patch_u32(&g, g.at_type1, 12); /* Q4_K: ne[0] = 32 is not a multiple of 256 */
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "ne[0] a multiple of Q4_K's block of 256, found 32");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_off1, 544);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "tensor 'blk.0.attn_q.weight': offset 512 expected");
    gb_build(&g, NULL, 0, 0);
    BAD(&g, g.n - 1, ALLOY_ERR_FORMAT, "tensor data: 672 bytes"); /* the last tensor's padding is part of it */
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_name1, 70);
    BAD(&g, g.n, ALLOY_ERR_FORMAT, "a name of 1 to 63 bytes");
}

TEST(gguf_refusals_name_what)
{
    struct gb g;
    gb_build(&g, NULL, 0, 0);
    memcpy(g.buf + g.at_arch_val + 8, "falcn", 5);
    BAD(&g, g.n, ALLOY_ERR_UNSUPPORTED, "general.architecture: llama, qwen2, qwen3, phi3, gemma, gemma2 or gemma3 "
        "(the architectures whose names alloy maps back to Hugging Face), found \"falcn\"");
    gb_build(&g, NULL, 0, 0);
    memcpy(g.buf + g.at_name1 + 8, "blk.0.attn_z.weight", 19);
    BAD(&g, g.n, ALLOY_ERR_UNSUPPORTED, "tensor 'blk.0.attn_z.weight': no Hugging Face name known");
    memcpy(g.buf + g.at_name1 + 8, "blk.+.attn_q.weight", 19);
    BAD(&g, g.n, ALLOY_ERR_UNSUPPORTED, "tensor 'blk.+.attn_q.weight': no Hugging Face name known");
    gb_build(&g, NULL, 0, 0);
    patch_u64(&g, g.at_ne1 + 8, 6); /* 6 rows, 2 heads: 3 rows per head cannot be un-permuted */
    BAD(&g, g.n + 64, ALLOY_ERR_SHAPE, "rows a multiple of 2 x 2 heads"); /* 6 x 34 bytes padded: 224 */
    /* a split model opened from another shard, and a shard whose split.no is wrong */
    struct alloy_tensor_file *tf = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tensor_file_open(GG("split/base-Q4_K_M-00002-of-00003.gguf"), &tf, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "split.no: 0 (a split model is opened from its first shard), found 1");
    char dir[600], cmd[2000];
    snprintf(dir, sizeof dir, "%s/split", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp " GG("split/base-Q4_K_M-00001-of-00003.gguf") " %s/m-00001-of-00003.gguf"
             " && cp " GG("split/base-Q4_K_M-00003-of-00003.gguf") " %s/m-00002-of-00003.gguf", dir, dir, dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, "%s/m-00001-of-00003.gguf", dir);
    CHECK_INT(alloy_tensor_file_open(cmd, &tf, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "m-00002-of-00003.gguf: split.no: 1 expected, found 2");
}

/* Parsing is linear in the header: 200,000 tensors and 200,000 keys open in well under the time any
 * quadratic step would take (4e10 name comparisons), and every tensor is indexed. */
TEST(gguf_large_header_linear)
{
    enum { N = 200000 };
    char path[600];
    snprintf(path, sizeof path, "%s/big.gguf", test_tmpdir());
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    uint32_t v3 = 3, u32 = 4, f32 = 0, one = 1, str = 8;
    uint64_t nt = N, nk = N + 1, len, dim = 1;
    fwrite("GGUF", 1, 4, f);
    fwrite(&v3, 4, 1, f);
    fwrite(&nt, 8, 1, f);
    fwrite(&nk, 8, 1, f);
    len = 20;
    fwrite(&len, 8, 1, f);
    fwrite("general.architecture", 1, 20, f);
    fwrite(&str, 4, 1, f);
    len = 5;
    fwrite(&len, 8, 1, f);
    fwrite("llama", 1, 5, f);
    char name[64];
    for (int i = 0; i < N; i++) {
        len = (uint64_t)snprintf(name, sizeof name, "x.key%d", i);
        fwrite(&len, 8, 1, f);
        fwrite(name, 1, len, f);
        fwrite(&u32, 4, 1, f);
        fwrite(&one, 4, 1, f);
    }
    for (uint64_t i = 0; i < N; i++) {
        uint64_t off = 32 * i;
        len = (uint64_t)snprintf(name, sizeof name, "blk.%llu.attn_norm.weight", (unsigned long long)i);
        fwrite(&len, 8, 1, f);
        fwrite(name, 1, len, f);
        fwrite(&one, 4, 1, f);
        fwrite(&dim, 8, 1, f);
        fwrite(&f32, 4, 1, f);
        fwrite(&off, 8, 1, f);
    }
    long pos = ftell(f);
    CHECK(fseek(f, (pos + 31) / 32 * 32 + 32L * N - 1, SEEK_SET) == 0 && fputc(0, f) == 0);
    fclose(f);
    struct alloy_tensor_file *tf = NULL;
    struct alloy_err err = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_MSG(alloy_tensor_file_open(path, &tf, &err) == ALLOY_OK, "%s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK_MSG(s < 10.0, "opening took %.1f s", s);
    if (tf) {
        CHECK_INT(alloy_tensor_file_count(tf), N);
        CHECK(alloy_tensor_file_find(tf, "model.layers.199999.input_layernorm.weight") != NULL);
        alloy_tensor_file_close(tf);
    }
    trim_heap();
}

/* Rows come back in HF order for llama only: with one head of 4 rows, logical row 1 (first half, i = 1)
 * is stored row 2 (2i + 0) and logical row 2 (second half, i = 0) stored row 1; qwen2 keeps file order. */
TEST(gguf_permutation_llama_only)
{
    for (int qwen = 0; qwen < 2; qwen++) {
        struct gb g;
        gb_build(&g, NULL, 0, 0);
        patch_u32(&g, g.at_heads, 1);
        if (qwen) {
            memcpy(g.buf + g.at_arch_val + 8, "qwen2", 5);
            memcpy(g.buf + g.at_heads - 4 - 26, "qwen2", 5); /* the key's "llama." prefix */
        }
        char path[600];
        snprintf(path, sizeof path, "%s/p%d.gguf", test_tmpdir(), qwen);
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(g.buf, 1, g.n, f) == g.n);
        if (f) fclose(f);
        struct alloy_tensor_file *tf = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_tensor_file_open(path, &tf, &err) == ALLOY_OK, "%s", err.msg);
        if (!tf) continue;
        const struct alloy_tensor *t = alloy_tensor_file_find(tf, "model.layers.0.self_attn.k_proj.weight");
        float row[4][32];
        CHECK(t && alloy_tensor_read_f32(t, 0, 128, &row[0][0], &err) == ALLOY_OK);
        static const int stored[2][4] = {{0, 2, 1, 3}, {0, 1, 2, 3}}; /* llama, qwen2 */
        for (int r = 0; r < 4; r++) CHECK_MSG(row[r][0] == (float)(32 * stored[qwen][r]), "%s: row %d", qwen ? "qwen2" : "llama", r);
        CHECK_INT(alloy_tensor_permuted(t), !qwen);
        alloy_tensor_file_close(tf);
    }
}

/* A merge held in memory whose tokenizer donor is a GGUF file evaluates text with that file's tokenizer. */
TEST(gguf_merge_in_memory_evaluates_text)
{
    char yaml[1200];
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\ndtype: float32\n", GG("tiny/tiny-base-Q4_K_M.gguf"),
             "tests/data/tiny-llama/base");
    struct alloy_merge_options o;
    struct alloy_model *m = NULL;
    struct alloy_evaluator *ev = NULL;
    struct alloy_err err = {0};
    alloy_merge_options_init(&o);
    o.config_text = yaml;
    o.out_model = &m;
    o.threads = 2;
    CHECK_MSG(alloy_merge(&o, &err) == ALLOY_OK, "%s", err.msg);
    if (m) CHECK_MSG(alloy_evaluator_new(m, &ev, &err) == ALLOY_OK, "%s", err.msg);
    alloy_model_close(m);
    if (!ev) return;
    struct alloy_eval_options eo;
    struct alloy_eval_result r = {0};
    alloy_eval_options_init(&eo);
    eo.ctx = 128;
    eo.max_windows = 4;
    const char text[] = "def f(x):\n    return x + 1\n# the quick brown fox jumps over the lazy dog, again and "
                        "again, until the text is long enough for four windows of one hundred and twenty-eight "
                        "bytes each; a few more words here and there, and then some more, to be safe about it, "
                        "since every window needs its own full length of text. That should now be plenty.";
    CHECK_MSG(alloy_evaluate_text(ev, text, sizeof text - 1, "t", &eo, &r, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(r.tokens > 0 && r.nll > 0.5 && r.nll < 3.0);
    alloy_evaluator_free(ev);
    trim_heap();
}
