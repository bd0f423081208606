/*
 * test_gguf_write.c — GGUF outputs: alloy's files against llama.cpp's
 * converter, read back, evaluated, and refused or abandoned cleanly.
 *
 * DESIGN
 *   Golden data: tests/data/gguf/expected.json (per tensor of every fixture
 *   file: name, ggml type, ne and the sha256 of the stored bytes) and
 *   expected-kv.json (the converter's metadata keys, types and values for
 *   tiny/tiny-base-f32.gguf). tiny/tiny-base-f32.gguf was converted by
 *   convert_hf_to_gguf.py from tests/data/tiny-llama/base, so alloy's
 *   HF -> GGUF output of that folder must hold the same tensors byte for
 *   byte, in the same order and at the same offsets. The test walks the
 *   written file with its own small parser (not alloy's reader), so layout
 *   errors the reader would forgive are caught; alloy's reader is then used
 *   for the keys' values and to read the tensors back.
 */
#include "test.h"

#include "alloy.h"
#include "formats/gguf.h"
#include "formats/tensor_file.h"
#include "sha256.h"
#include "sinks/gguf_mix.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define GG(rel) "tests/data/gguf/" rel

/* ------------------------------------------------------------ an independent header walk */

struct walk {
    const uint8_t *b;
    size_t n, at;
    int bad;
};

static uint64_t take(struct walk *w, size_t k)
{
    uint64_t v = 0;
    if (w->at + k > w->n) {
        w->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < k; i++) v |= (uint64_t)w->b[w->at + i] << (8 * i);
    w->at += k;
    return v;
}

static void skip_value(struct walk *w, uint32_t t)
{
    static const uint8_t size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == GGUF_STRING) w->at += take(w, 8);
    else if (t == GGUF_ARRAY) {
        uint32_t et = (uint32_t)take(w, 4);
        uint64_t n = take(w, 8);
        for (uint64_t i = 0; i < n && !w->bad; i++) skip_value(w, et);
    } else if (t < sizeof size && size[t]) w->at += size[t];
    else w->bad = 1;
}

/* ggml's types: name, id, values per block, bytes per block (ggml.h / ggml.c type traits). */
static const struct ggml_type { const char *name; uint32_t id, block, bytes; } g_ggml_types[] = {
    {"f32", 0, 1, 4},     {"f16", 1, 1, 2},      {"q4_0", 2, 32, 18},   {"q4_1", 3, 32, 20},   {"q5_0", 6, 32, 22},
    {"q5_1", 7, 32, 24},  {"q8_0", 8, 32, 34},   {"q2_K", 10, 256, 84}, {"q3_K", 11, 256, 110}, {"q4_K", 12, 256, 144},
    {"q5_K", 13, 256, 176}, {"q6_K", 14, 256, 210}, {"bf16", 30, 1, 2},
};

static const struct ggml_type *ggml_type_named(const char *name)
{
    for (size_t i = 0; name && i < sizeof g_ggml_types / sizeof *g_ggml_types; i++)
        if (strcmp(g_ggml_types[i].name, name) == 0) return &g_ggml_types[i];
    return NULL;
}

/* Every tensor of the file at path against expected.json's entry `golden`: names, types, ne, offsets (running
 * sums padded to 32, in file order) and the sha256 of the stored bytes. Returns the key count. */
static uint64_t check_tensors(const char *path, const char *golden)
{
    size_t len = 0;
    char *file = test_read_file(path, &len);
    json_error_t je;
    json_t *exp = json_load_file(GG("expected.json"), 0, &je);
    json_t *tensors = json_object_get(json_object_get(json_object_get(exp, "files"), golden), "tensors");
    CHECK_MSG(file && json_array_size(tensors) > 0, "%s or %s missing", path, golden);
    uint64_t nkv = 0;
    if (!file || !tensors) goto out;
    struct walk w = {(const uint8_t *)file, len, 8, 0};
    CHECK(memcmp(file, "GGUF\3\0\0\0", 8) == 0);
    uint64_t nt = take(&w, 8);
    nkv = take(&w, 8);
    CHECK_INT(nt, json_array_size(tensors));
    for (uint64_t i = 0; i < nkv && !w.bad; i++) {
        w.at += take(&w, 8);
        skip_value(&w, (uint32_t)take(&w, 4));
    }
    struct { uint64_t off, nbytes; } where[64];
    uint64_t expect_off = 0;
    for (size_t i = 0; i < nt && i < 64 && !w.bad; i++) {
        json_t *t = json_array_get(tensors, i);
        uint64_t nl = take(&w, 8);
        const char *name = json_string_value(json_object_get(t, "name"));
        CHECK_MSG(name && nl == strlen(name) && memcmp(file + w.at, name, nl) == 0, "tensor %zu: %s, found %.*s", i,
                  name, (int)nl, file + w.at);
        w.at += nl;
        uint32_t nd = (uint32_t)take(&w, 4);
        CHECK_INT(nd, json_array_size(json_object_get(t, "ne")));
        uint64_t numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne = take(&w, 8);
            CHECK_INT(ne, json_integer_value(json_array_get(json_object_get(t, "ne"), d)));
            numel *= ne;
        }
        uint32_t type = (uint32_t)take(&w, 4);
        const struct ggml_type *gt = ggml_type_named(json_string_value(json_object_get(t, "type")));
        CHECK_MSG(gt && type == gt->id, "%s: type %u, want %s", name, type, gt ? gt->name : "?");
        where[i].off = take(&w, 8);
        where[i].nbytes = gt ? numel / gt->block * gt->bytes : 0;
        CHECK_INT(where[i].off, expect_off);
        expect_off += (where[i].nbytes + 31) / 32 * 32;
    }
    CHECK(!w.bad);
    size_t data = (w.at + 31) / 32 * 32;
    CHECK_INT(len, data + expect_off);
    for (size_t i = 0; i < nt && i < 64 && !w.bad && data + where[i].off + where[i].nbytes <= len; i++) {
        char hex[65];
        sha256_of(file + data + where[i].off, (size_t)where[i].nbytes, hex);
        json_t *t = json_array_get(tensors, i);
        CHECK_MSG(strcmp(hex, json_string_value(json_object_get(t, "sha256"))) == 0, "%s: bytes differ from llama.cpp's",
                  json_string_value(json_object_get(t, "name")));
    }
out:
    json_decref(exp);
    free(file);
    return nkv;
}

/* ------------------------------------------------------------ merges into .gguf */

static int merge_to(const char *model, const char *out, const char *outtype, volatile int *interrupt,
                    struct alloy_err *err)
{
    char cfg[1100];
    snprintf(cfg, sizeof cfg, "models:\n  - model: %s\nmerge_method: passthrough\n", model);
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_dir = out;
    o.outtype = outtype;
    o.threads = 2;
    o.interrupt = interrupt;
    return alloy_merge(&o, err);
}

/* Every key of expected-kv.json's entry for golden, with its type and value, except general.name (the output
 * file's name here) and the token lists' contents (alloy writes the byte-level "gpt2" form, as they are). */
static void check_keys(const char *path, const char *golden, uint64_t nkv)
{
    json_error_t je;
    json_t *exp = json_load_file(GG("expected-kv.json"), 0, &je);
    json_t *f = json_object_get(json_object_get(exp, "files"), golden);
    json_t *kv = json_object_get(f, "kv"), *types = json_object_get(f, "kv_types");
    struct alloy_gguf *g = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_gguf_open(path, &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_INT(nkv, json_object_size(kv));
    const char *k;
    json_t *want;
    json_object_foreach(kv, k, want) {
        const char *type = json_string_value(json_object_get(types, k));
        uint32_t t = 0, elem = 0;
        uint64_t n = 0;
        const uint8_t *v;
        if (!g || !alloy_gguf_kv(g, k, &t, &elem, &n, &v)) {
            CHECK_MSG(0, "%s: key %s missing", path, k);
            continue;
        }
        CHECK_MSG(strcmp(alloy_gguf_vtype_name(t), strcmp(type, "u32") == 0 ? "UINT32" : strcmp(type, "f32") == 0
                   ? "FLOAT32" : strcmp(type, "bool") == 0 ? "BOOL" : strcmp(type, "string") == 0 ? "STRING" : "ARRAY")
                  == 0, "%s: type %s, want %s", k, alloy_gguf_vtype_name(t), type);
        if (json_is_object(want)) CHECK_MSG(n == (uint64_t)json_integer_value(json_object_get(want, "count")), "%s: %llu", k,
                                            (unsigned long long)n);
        else if (json_is_string(want) && strcmp(k, "general.name") != 0) {
            const char *s = NULL;
            uint64_t sl = 0;
            alloy_gguf_str(g, k, &s, &sl, &err);
            CHECK_MSG(s && sl == strlen(json_string_value(want)) && memcmp(s, json_string_value(want), sl) == 0, "%s", k);
        }
        else if (json_is_boolean(want)) CHECK_MSG(v[0] == json_is_true(want), "%s", k);
        else if (json_is_integer(want)) {
            int64_t x = -1;
            alloy_gguf_int(g, k, &x, &err);
            CHECK_MSG(x == json_integer_value(want), "%s: %lld", k, (long long)x);
        } else if (json_is_real(want)) {
            double x = 0;
            alloy_gguf_float(g, k, &x, &err);
            CHECK_MSG(x == json_real_value(want), "%s: %.17g", k, x);
        }
    }
    if (g) alloy_gguf_base(g)->ops->close(alloy_gguf_base(g));
    json_decref(exp);
}

TEST(gguf_write_hf_folder_equals_converter)
{
    char out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/base.gguf", test_tmpdir());
    CHECK_MSG(merge_to("tests/data/tiny-llama/base", out, "f32", NULL, &err) == ALLOY_OK, "%s", err.msg);
    uint64_t nkv = check_tensors(out, "tiny/tiny-base-f32.gguf");
    check_keys(out, "tiny/tiny-base-f32.gguf", nkv);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

TEST(gguf_write_requantize_float_types_bit_exact)
{
    char out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/f16.gguf", test_tmpdir());
    CHECK_MSG(merge_to(GG("base-f16.gguf"), out, "f16", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "base-f16.gguf");
    snprintf(out, sizeof out, "%s/bf16.gguf", test_tmpdir());
    CHECK_MSG(merge_to(GG("base-bf16.gguf"), out, "bf16", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "base-bf16.gguf");
}

/* Read back by alloy's reader: every tensor under its HF name with the folder's values (BF16 -> F32 is exact). */
TEST(gguf_write_reads_back_to_the_same_floats)
{
    char out[512];
    struct alloy_err err = {0};
    struct alloy_model *a = NULL, *b = NULL;
    snprintf(out, sizeof out, "%s/rt.gguf", test_tmpdir());
    CHECK_MSG(merge_to("tests/data/tiny-llama/base", out, "bf16", NULL, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_model_open("tests/data/tiny-llama/base", &a, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_model_open(out, &b, &err) == ALLOY_OK, "%s", err.msg);
    if (!a || !b) goto out;
    CHECK_INT(alloy_model_count(b), alloy_model_count(a));
    for (size_t i = 0; i < alloy_model_count(a); i++) {
        const struct alloy_tensor *x = alloy_model_tensor(a, i), *y = alloy_model_find(b, x->name);
        CHECK_MSG(y && y->numel == x->numel, "%s", x->name);
        if (!y || y->numel != x->numel) continue;
        float *fx = malloc(x->numel * 4), *fy = malloc(x->numel * 4);
        CHECK(fx && fy && alloy_tensor_read_f32(x, 0, x->numel, fx, &err) == ALLOY_OK &&
              alloy_tensor_read_f32(y, 0, y->numel, fy, &err) == ALLOY_OK);
        CHECK_MSG(fx && fy && memcmp(fx, fy, x->numel * 4) == 0, "%s: values differ after the round trip", x->name);
        free(fx);
        free(fy);
    }
out:
    alloy_model_close(a);
    alloy_model_close(b);
}

TEST(gguf_write_evaluates_to_fixture_nll)
{
    char out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/e.gguf", test_tmpdir());
    CHECK_MSG(merge_to("tests/data/tiny-llama/base", out, "f32", NULL, &err) == ALLOY_OK, "%s", err.msg);
    char cmd[1024], *log = NULL;
    snprintf(cmd, sizeof cmd, "%s eval %s --ctx 128 --threads 2 --text tests/data/eval_prose.txt --json", test_alloy_bin(),
             out);
    CHECK_INT(test_run(cmd, &log), 0);
    const char *at = log ? strstr(log, "\"nll\"") : NULL;
    double nll = at ? strtod(strchr(at, ':') + 1, NULL) : 0;
    CHECK_MSG(fabs(nll - 1.5398416939) <= 1e-9, "nll %.10f, llama.cpp fixture (F32) 1.5398416939", nll);
    free(log);
}

/* An architecture the writer does not map, an output that is a folder, and an interrupt: an error naming what
 * was wrong, and nothing left behind (no output, no temporary file). */
TEST(gguf_write_refusals_leave_nothing)
{
    char dir[512], out[600], cfg[600];
    struct alloy_err err = {0};
    snprintf(dir, sizeof dir, "%s/neox", test_tmpdir());
    static const float w[4] = {1, 2, 3, 4};
    struct test_tensor t = {"gpt_neox.embed_in.weight", "F32", 2, {2, 2}, w};
    CHECK_INT(test_write_model(dir, &t, 1, "{\"architectures\": [\"GPTNeoXForCausalLM\"]}"), 0);
    snprintf(out, sizeof out, "%s/x.gguf", test_tmpdir());
    CHECK_INT(merge_to(dir, out, "f16", NULL, &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "found \"GPTNeoXForCausalLM\""), "%s", err.msg);
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(merge_to("tests/data/tiny-llama/base", out, "q8_0", NULL, &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "ffn_down.weight'") && strstr(err.msg, "Unsupported tensor size"), "%s", err.msg);
    CHECK_INT(merge_to("tests/data/tiny-llama/base", out, "q4_k_x", NULL, &err), ALLOY_ERR_CONFIG);
    CHECK_MSG(strstr(err.msg, "--outtype") && strstr(err.msg, "\"q4_k_x\""), "%s", err.msg);
    snprintf(cfg, sizeof cfg, "%s/folder.gguf", test_tmpdir());
    CHECK_INT(mkdir(cfg, 0755), 0);
    CHECK_INT(merge_to("tests/data/tiny-llama/base", cfg, "f16", NULL, &err), ALLOY_ERR_CONFIG);
    CHECK_MSG(strstr(err.msg, "found a folder"), "%s", err.msg);
    volatile int stop = 1;
    CHECK_INT(merge_to("tests/data/tiny-llama/base", out, "f16", &stop, &err), ALLOY_ERR_INTERRUPTED);
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* ------------------------------------------------------------ llama-quantize's mixtures */

/* The types gguf_mix picks for the tensors of fixture file `src` (names and ne from expected.json, taken in
 * llama-quantize's order), checked against `want` (name -> ggml type name, or a string: llama-quantize's failure,
 * where gguf_mix must fail too). */
static void check_mixture(json_t *files, const char *src, const char *outtype, int imatrix, json_t *want,
                          const char *label)
{
    json_t *tensors = json_object_get(json_object_get(files, src), "tensors");
    size_t n = json_array_size(tensors);
    const char *names[64];
    CHECK(n > 0 && n <= 64);
    for (size_t i = 0; i < n && i < 64; i++) names[i] = json_string_value(json_object_get(json_array_get(tensors, i), "name"));
    for (size_t i = 1; i < n && i < 64; i++) /* insertion sort into llama-quantize's order */
        for (size_t k = i; k > 0 && gguf_mix_order(names[k - 1], names[k]) > 0; k--) {
            const char *t = names[k];
            names[k] = names[k - 1];
            names[k - 1] = t;
        }
    struct gguf_mix m;
    struct alloy_err err = {0};
    int layers = 0;
    for (size_t i = 0; i < n && i < 64; i++) layers += strstr(names[i], "attn_norm.weight") != NULL;
    CHECK_INT(gguf_mix_init(&m, outtype, layers, 2, imatrix, names, n < 64 ? n : 64, &err), 0);
    int failed = 0;
    for (size_t i = 0; i < n && i < 64 && !failed; i++) {
        json_t *t = NULL;
        for (size_t k = 0; k < n; k++)
            if (strcmp(json_string_value(json_object_get(json_array_get(tensors, k), "name")), names[i]) == 0)
                t = json_array_get(tensors, k);
        json_t *ne = json_object_get(t, "ne");
        enum alloy_dtype d;
        failed = gguf_mix_type(&m, names[i], (int)json_array_size(ne), json_integer_value(json_array_get(ne, 0)),
                               ALLOY_DTYPE_F32, &d, src, &err) != ALLOY_OK;
        if (json_is_string(want) || failed) continue;
        const char *w = json_string_value(json_object_get(want, names[i]));
        CHECK_MSG(w && strcasecmp(alloy_dtype_traits(d)->name, w) == 0, "%s %s: %s, llama-quantize chose %s", label,
                  names[i], alloy_dtype_traits(d)->name, w ? w : "?");
    }
    if (json_is_string(want)) CHECK_MSG(failed, "%s: llama-quantize fails (%s), gguf_mix did not", label,
                                        json_string_value(want));
    else CHECK_MSG(!failed, "%s: %s", label, err.msg); /* Q2_K/Q3_K fall back to IQ4_NL as llama-quantize */
}

TEST(gguf_write_mixtures_match_llama_quantize)
{
    json_error_t je;
    json_t *exp = json_load_file(GG("expected.json"), 0, &je), *kv = json_load_file(GG("expected-kv.json"), 0, &je);
    json_t *files = json_object_get(exp, "files");
    static const char *const types[] = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M",
                                        "Q5_K_S", "Q5_K_M", "Q6_K"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        char src[64], lower[16];
        snprintf(src, sizeof src, "quant/base-%s.gguf", types[i]);
        for (size_t k = 0; k <= strlen(types[i]); k++) lower[k] = (char)tolower((unsigned char)types[i][k]);
        json_t *want = json_object(), *t;
        size_t k;
        json_array_foreach(json_object_get(json_object_get(files, src), "tensors"), k, t)
            json_object_set(want, json_string_value(json_object_get(t, "name")), json_object_get(t, "type"));
        check_mixture(files, "base-f16.gguf", lower, 0, want, src);
        if (!strcmp(types[i], "Q4_K_M")) check_mixture(files, "base-f16.gguf", lower, 1, want, "imatrix Q4_K_M");
        json_decref(want);
        check_mixture(files, "tiny/tiny-base-f32.gguf", lower, 0,
                      json_object_get(json_object_get(kv, "tiny_fallback_types"), types[i]), types[i]);
    }
    json_decref(exp);
    json_decref(kv);
}

/* alloy convert: GGUF -> HF folder (names and row order undone) -> GGUF gives llama.cpp's bytes back. */
TEST(gguf_write_convert_round_trip)
{
    char cmd[2048], dir[512], out[512];
    snprintf(dir, sizeof dir, "%s/hf", test_tmpdir());
    snprintf(out, sizeof out, "%s/back.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype bf16 -q -j 2", test_alloy_bin(), GG("base-bf16.gguf"), dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype bf16 -q -j 2", test_alloy_bin(), dir, out);
    CHECK_INT(test_run(cmd, NULL), 0);
    check_tensors(out, "base-bf16.gguf");
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype q9 -q 2>&1", test_alloy_bin(), dir, out);
    char *log = NULL;
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_MSG(log && strstr(log, "alloy: error: ") && strstr(log, "\"q9\""), "%s", log ? log : "");
    free(log);
}

/* Quantized passthrough: a GGUF of the outtype's own mixture is copied block for block (llama-quantize's order and
 * types, so its bytes), fallbacks included (tiny: Q5_0, Q8_0 copied, F16 re-encoded exactly). */
TEST(gguf_write_quantized_passthrough_copies_blocks)
{
    char out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/q.gguf", test_tmpdir());
    CHECK_MSG(merge_to(GG("quant/base-Q4_K_M.gguf"), out, "q4_k_m", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "quant/base-Q4_K_M.gguf");
    CHECK_MSG(merge_to(GG("quant/base-Q8_0.gguf"), out, "q8_0", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "quant/base-Q8_0.gguf");
    CHECK_MSG(merge_to(GG("tiny/tiny-base-Q4_K_M.gguf"), out, "Q4_K_M", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "tiny/tiny-base-Q4_K_M.gguf");
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* The plan of a merge into model's GGUF (--dry-run), NULL on error; nothing is written. */
static char *dry_run_plan(const char *model, const char *out, const char *outtype)
{
    char cfg[1100], *plan = NULL;
    size_t len = 0;
    snprintf(cfg, sizeof cfg, "models:\n  - model: %s\nmerge_method: passthrough\n", model);
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_dir = out;
    o.outtype = outtype;
    o.dry_run = 1;
    FILE *f = open_memstream(&plan, &len);
    if (!f) return NULL;
    o.plan_out = f;
    struct alloy_err err = {0};
    int rc = alloy_merge(&o, &err);
    fclose(f);
    CHECK_MSG(rc == ALLOY_OK, "%s", err.msg);
    if (rc) free(plan);
    return rc ? NULL : plan;
}

/* Each tensor of expected.json's entry golden is in the plan as " => NAME TYPE<how>\n", how being `quant` for a
 * quantized type and nothing for a float one (re-encoded). */
static void check_plan_notes(const char *plan, const char *golden, const char *quant)
{
    json_error_t je;
    json_t *exp = json_load_file(GG("expected.json"), 0, &je);
    json_t *tensors = json_object_get(json_object_get(json_object_get(exp, "files"), golden), "tensors");
    CHECK_MSG(plan && json_array_size(tensors) > 0, "no plan or no %s", golden);
    for (size_t i = 0; plan && i < json_array_size(tensors); i++) {
        json_t *t = json_array_get(tensors, i);
        const char *type = json_string_value(json_object_get(t, "type"));
        char want[256], upper[16] = {0};
        for (size_t k = 0; type && type[k] && k < sizeof upper - 1; k++) upper[k] = (char)toupper((unsigned char)type[k]);
        int is_float = upper[0] == 'F' || upper[0] == 'B';
        snprintf(want, sizeof want, " => %s %s%s\n", json_string_value(json_object_get(t, "name")), upper,
                 is_float ? "" : quant);
        CHECK_MSG(strstr(plan, want), "missing \"%s\"", want);
    }
    json_decref(exp);
}

/* --dry-run into a .gguf says, per tensor, its GGUF name and type and whether the input's blocks are copied
 * (quantized passthrough) or the merged floats quantized; it writes nothing. */
TEST(gguf_write_dry_run_says_which_blocks_are_copied)
{
    char out[512];
    snprintf(out, sizeof out, "%s/dry.gguf", test_tmpdir());
    char *plan = dry_run_plan(GG("quant/base-Q4_K_M.gguf"), out, "q4_k_m");
    check_plan_notes(plan, "quant/base-Q4_K_M.gguf", ", blocks copied unchanged");
    CHECK(plan && !strstr(plan, ", quantized\n"));
    free(plan);
    plan = dry_run_plan("tests/data/tiny-llama/base", out, "q4_k_m");
    check_plan_notes(plan, "tiny/tiny-base-Q4_K_M.gguf", ", quantized");
    CHECK(plan && !strstr(plan, "copied"));
    free(plan);
    plan = dry_run_plan(GG("quant/base-Q4_K_M.gguf"), out, "q8_0"); /* another type: quantized again */
    CHECK(plan && strstr(plan, " => blk.0.attn_q.weight Q8_0, quantized\n") && !strstr(plan, "copied"));
    free(plan);
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* Quantizing from the merged floats: tiny-llama/base (the HF folder tiny-base-f32.gguf was converted from) to
 * q4_k_m is llama-quantize's tiny-base-Q4_K_M.gguf byte for byte (its Q5_0/Q8_0 fallbacks, F16 ffn_down, Q/K rows
 * permuted before quantizing), in llama-quantize's tensor order. */
TEST(gguf_write_quantizes_like_llama_quantize)
{
    char out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/tq.gguf", test_tmpdir());
    CHECK_MSG(merge_to("tests/data/tiny-llama/base", out, "q4_k_m", NULL, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "tiny/tiny-base-Q4_K_M.gguf");
}

/* A temporary file left by a run that is gone (SIGKILL) is removed by the next run into the same output. */
TEST(gguf_write_removes_stale_temporary_files)
{
    char out[512], stale[600];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/s.gguf", test_tmpdir());
    snprintf(stale, sizeof stale, "%s.alloy-tmp-999999999-abcdef", out); /* no such process */
    CHECK_INT(test_write_text(stale, "partial"), 0);
    CHECK_MSG(merge_to("tests/data/tiny-llama/base", out, "f16", NULL, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(access(stale, F_OK) != 0);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* --imatrix: base-f32.gguf re-quantized to q4_k_m with the fixture's imatrix is llama-quantize's imatrix file, tensor
 * for tensor, with its quantize.imatrix.* keys; without a quantized outtype the option is refused. */
TEST(gguf_write_imatrix_like_llama_quantize)
{
    char out[512];
    struct alloy_err err = {0};
    struct alloy_merge_options o;
    char cfg[256];
    snprintf(cfg, sizeof cfg, "models:\n  - model: %s\nmerge_method: passthrough\n", GG("base-f32.gguf"));
    snprintf(out, sizeof out, "%s/im.gguf", test_tmpdir());
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_dir = out;
    o.outtype = "q4_k_m";
    o.imatrix = GG("base.imatrix");
    o.threads = 2;
    CHECK_MSG(alloy_merge(&o, &err) == ALLOY_OK, "%s", err.msg);
    check_tensors(out, "quant/base-Q4_K_M-imatrix.gguf");
    struct alloy_gguf *g = NULL;
    int64_t entries = 0, chunks = 0;
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(g && alloy_gguf_int(g, "quantize.imatrix.entries_count", &entries, &err) == 1 &&
          alloy_gguf_int(g, "quantize.imatrix.chunks_count", &chunks, &err) == 1);
    CHECK_INT(entries, 14);
    CHECK_INT(chunks, 256);
    if (g) alloy_gguf_base(g)->ops->close(alloy_gguf_base(g));
    o.outtype = "f16";
    CHECK_INT(alloy_merge(&o, &err), ALLOY_ERR_CONFIG);
    CHECK_MSG(strstr(err.msg, "--imatrix"), "%s", err.msg);
}

/* ------------------------------------------------------------ SentencePiece ("llama") tokenizer keys */

/* dir[n] = <tmp>/name: tiny-llama/base with tokenizer.json tok (stolen) and a Llama-2 style tokenizer_config.json. */
static void spm_dir(const char *name, json_t *tok, char *dir, size_t n)
{
    char cmd[2048], path[600];
    snprintf(dir, n, "%s/%s", test_tmpdir(), name);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp tests/data/tiny-llama/base/config.json "
             "tests/data/tiny-llama/base/model.safetensors %s/", dir, dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK_INT(json_dump_file(tok, path, 0), 0);
    json_decref(tok);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK_INT(test_write_text(path, "{\"add_bos_token\": true, \"add_eos_token\": false, \"bos_token\": \"<s>\", "
                                    "\"eos_token\": \"</s>\", \"unk_token\": \"<unk>\"}"), 0);
}

/* spm_dir's folder merged into a GGUF at out; the opened output, NULL on error. */
static struct alloy_gguf *spm_gguf(const char *name, json_t *tok, const char *out)
{
    char dir[512];
    struct alloy_err err = {0};
    struct alloy_gguf *g = NULL;
    spm_dir(name, tok, dir, sizeof dir);
    CHECK_MSG(merge_to(dir, out, "f32", NULL, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
    return g;
}

static json_t *added_token(int id, const char *s, int special)
{
    return json_pack("{s:i, s:s, s:b}", "id", id, "content", s, "special", special);
}

struct want_tok { int id; const char *piece; float score; int type; };

/* The "llama" form's keys of g: model, pre, each listed token's piece, score and type, pads from first_pad on,
 * the special ids and add_bos/add_eos, and no merges. */
static void check_spm_keys(struct alloy_gguf *g, const struct want_tok *w, size_t nw, int first_pad, int unk_id)
{
    struct alloy_err err = {0};
    const char *s = NULL;
    uint64_t sl = 0, n = 0;
    CHECK(alloy_gguf_str(g, "tokenizer.ggml.model", &s, &sl, &err) == 1 && sl == 5 && memcmp(s, "llama", 5) == 0);
    CHECK(alloy_gguf_str(g, "tokenizer.ggml.pre", &s, &sl, &err) == 1 && sl == 7 && memcmp(s, "default", 7) == 0);
    CHECK(alloy_gguf_array(g, "tokenizer.ggml.scores", GGUF_F32, &n, &err) == 1 && n == 260);
    uint32_t t, elem;
    const uint8_t *scores = NULL, *tok = NULL;
    CHECK(alloy_gguf_kv(g, "tokenizer.ggml.scores", &t, &elem, &n, &scores));
    CHECK(alloy_gguf_kv(g, "tokenizer.ggml.tokens", &t, &elem, &n, &tok) && n == 260);
    CHECK(!alloy_gguf_kv(g, "tokenizer.ggml.merges", &t, &elem, &n, &tok));
    for (size_t i = 0; scores && i < nw; i++) {
        float sc;
        memcpy(&sc, scores + 4 * (size_t)w[i].id, 4);
        CHECK_MSG(sc == w[i].score, "token %d: score %g, want %g", w[i].id, sc, w[i].score);
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", (uint64_t)w[i].id), w[i].type);
    }
    for (int i = first_pad; i < 260; i++) CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", (uint64_t)i), 5);
    /* the pieces, walked from the start of the string array */
    const uint8_t *p = tok;
    for (int i = 0, k = 0; p && i < 260; i++) {
        uint64_t len;
        memcpy(&len, p, 8);
        if (k < (int)nw && w[k].id == i) {
            CHECK_MSG(len == strlen(w[k].piece) && memcmp(p + 8, w[k].piece, len) == 0, "token %d", i);
            k++;
        }
        p += 8 + len;
    }
    int64_t id = -1;
    int b = -1;
    CHECK(alloy_gguf_int(g, "tokenizer.ggml.bos_token_id", &id, &err) == 1 && id == 1);
    CHECK(alloy_gguf_int(g, "tokenizer.ggml.eos_token_id", &id, &err) == 1 && id == 2);
    CHECK(alloy_gguf_int(g, "tokenizer.ggml.unk_token_id", &id, &err) == 1 && id == unk_id);
    CHECK(alloy_gguf_bool(g, "tokenizer.ggml.add_bos_token", &b, &err) == 1 && b == 1);
    CHECK(alloy_gguf_bool(g, "tokenizer.ggml.add_eos_token", &b, &err) == 1 && b == 0);
    alloy_gguf_base(g)->ops->close(alloy_gguf_base(g));
}

/* A Llama 2 / Mistral style byte-fallback BPE (pieces with "▁", "<0xNN>" byte tokens) is written in
 * SentencePiece's "llama" form: pieces as they are, the piece of merge r scoring -(r+1), bytes typed 6, unk 2,
 * added tokens 3 (special) or 4 scoring -1000, pads 5. */
TEST(gguf_write_spm_tokenizer_from_byte_fallback_bpe)
{
    json_t *vocab = json_object(), *added = json_array();
    const char *const pieces[] = {"<unk>", "<s>", "</s>"}, *const normal[] = {"\u2581", "t", "h", "e", "\u2581t", "he",
                                                                                "\u2581the"};
    for (int i = 0; i < 3; i++) json_object_set_new(vocab, pieces[i], json_integer(i));
    for (int i = 0; i < 16; i++) {
        char b[8];
        snprintf(b, sizeof b, "<0x%02X>", i);
        json_object_set_new(vocab, b, json_integer(3 + i));
    }
    for (int i = 0; i < 7; i++) json_object_set_new(vocab, normal[i], json_integer(19 + i));
    for (int i = 0; i < 3; i++) json_array_append_new(added, added_token(i, pieces[i], 1));
    json_array_append_new(added, added_token(26, "<tool>", 0));
    json_t *tok = json_pack("{s:o, s:{s:s, s:b, s:s, s:o, s:[s, s, [s, s]]}, s:{s:s}}", "added_tokens", added,
                            "model", "type", "BPE", "byte_fallback", 1, "unk_token", "<unk>", "vocab", vocab, "merges",
                            "\u2581 t", "h e", "\u2581t", "he", "decoder", "type", "Sequence");
    CHECK(tok != NULL);
    char out[512];
    snprintf(out, sizeof out, "%s/spm.gguf", test_tmpdir());
    struct alloy_gguf *g = tok ? spm_gguf("spm", tok, out) : NULL;
    static const struct want_tok w[] = {
        {0, "<unk>", -1000, 2}, {1, "<s>", -1000, 3}, {2, "</s>", -1000, 3}, {3, "<0x00>", 0, 6},
        {18, "<0x0F>", 0, 6}, {19, "\u2581", 0, 1}, {22, "e", 0, 1}, {23, "\u2581t", -1, 1}, {24, "he", -2, 1},
        {25, "\u2581the", -3, 1}, {26, "<tool>", -1000, 4}, {27, "[PAD27]", -1000, 5},
    };
    if (g) check_spm_keys(g, w, ALLOY_ARRAY_LEN(w), 27, 0);
}

/* A Unigram tokenizer.json: the same form, with the Unigram's own scores (unk by unk_id). */
TEST(gguf_write_spm_tokenizer_from_unigram)
{
    json_t *tok = json_pack("{s:[o, o], s:{s:s, s:i, s:[[s, f], [s, f], [s, f], [s, f], [s, f], [s, f], [s, f]]}}",
                            "added_tokens", added_token(1, "<s>", 1), added_token(2, "</s>", 1), "model", "type",
                            "Unigram", "unk_id", 0, "vocab", "<unk>", 0.0, "<s>", 0.0, "</s>", 0.0, "\u2581", -2.5, "t",
                            -3.25, "\u2581t", -1.5, "<0x41>", 0.0);
    CHECK(tok != NULL);
    char out[512];
    snprintf(out, sizeof out, "%s/uni.gguf", test_tmpdir());
    struct alloy_gguf *g = tok ? spm_gguf("uni", tok, out) : NULL;
    static const struct want_tok w[] = {
        {0, "<unk>", 0, 2}, {1, "<s>", -1000, 3}, {2, "</s>", -1000, 3}, {3, "\u2581", -2.5f, 1},
        {4, "t", -3.25f, 1}, {5, "\u2581t", -1.5f, 1}, {6, "<0x41>", 0, 6}, {7, "[PAD7]", -1000, 5},
    };
    if (g) check_spm_keys(g, w, ALLOY_ARRAY_LEN(w), 7, 0);
}

/* Vocabularies the writer has no form for, and a malformed merge of a "llama"-form BPE, are refused by name and
 * leave no file. */
TEST(gguf_write_spm_tokenizer_refusals)
{
    char dir[512], out[512];
    struct alloy_err err = {0};
    snprintf(out, sizeof out, "%s/bad.gguf", test_tmpdir());
    spm_dir("wp", json_pack("{s:{s:s, s:{s:i}}}", "model", "type", "WordPiece", "vocab", "a", 0), dir, sizeof dir);
    CHECK(merge_to(dir, out, "f32", NULL, &err) == ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "tokenizer.json: model.type: \"BPE\" or \"Unigram\" (the forms the GGUF writer knows), "
                                "found \"WordPiece\"");
    spm_dir("badmerge", json_pack("{s:{s:s, s:b, s:{s:i, s:i, s:i}, s:[s, i]}}", "model", "type", "BPE",
                                  "byte_fallback", 1, "vocab", "\u2581", 0, "t", 1, "\u2581t", 2, "merges", "\u2581 t", 7),
            dir, sizeof dir);
    CHECK(merge_to(dir, out, "f32", NULL, &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "tokenizer.json: model.merges[1]: \"left right\" or a pair of strings, found another value");
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(test_leftovers(test_tmpdir()), 0);
}

/* Rebuilding a "llama"-form tokenizer.json splits every piece at every character: the work is bounded, so a
 * vocabulary with a 40,000-byte piece is refused by name instead of taking minutes. */
TEST(gguf_read_spm_merge_work_bounded)
{
    char *longp = malloc(40001);
    CHECK(longp != NULL);
    if (!longp) return;
    memset(longp, 'a', 40000);
    longp[40000] = '\0';
    json_t *tok = json_pack("{s:[o], s:{s:s, s:i, s:[[s, f], [s, f], [s, f]]}}", "added_tokens",
                            added_token(1, "<s>", 1), "model", "type", "Unigram", "unk_id", 0, "vocab", "<unk>", 0.0,
                            "<s>", 0.0, longp, -2.0);
    free(longp);
    CHECK(tok != NULL);
    char out[512];
    snprintf(out, sizeof out, "%s/long.gguf", test_tmpdir());
    struct alloy_gguf *g = tok ? spm_gguf("long", tok, out) : NULL;
    char *text = NULL;
    struct alloy_err err = {0};
    CHECK(g && alloy_gguf_tokenizer_json(g, &text, &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "tokenizer.ggml.tokens: deriving the merges");
    CHECK_STR_CONTAINS(err.msg, "(40000 bytes)");
    free(text);
    if (g) alloy_tensor_file_close(alloy_gguf_base(g));
}
