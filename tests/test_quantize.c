/*
 * test_quantize.c — the quantizers against llama-quantize's own bytes, and
 * their behaviour on edge cases.
 *
 * DESIGN
 *   Golden: tests/data/gguf/base-f32.gguf is llama-quantize's input for every
 *   file of tests/data/gguf/quant/ (GGUF stores q/k already permuted, so its
 *   stored F32 rows are exactly what llama-quantize quantized). For every
 *   tensor of every quant file, the test quantizes the same-named F32 tensor
 *   to the type that file used (expected.json lists it per tensor) and
 *   compares the sha256 of the bytes with llama.cpp's stored-bytes digest.
 *   base-Q4_K_M-imatrix.gguf is redone with base.imatrix (values / ncall)
 *   for the tensors the imatrix covers. Besides: round trips within a
 *   per-type error bound derived from the block format, all-zero and
 *   constant blocks, NaN/Inf and bad lengths as errors naming the tensor,
 *   and fp16 stores against a naive round-to-nearest-even reference.
 */
#include "test.h"
#include "sha256.h"

#include "alloy.h"
#include "quant/imatrix.h"
#include "quant/quantize.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>

static int ggml_type(const char *s, enum alloy_dtype *out)
{
    static const struct { const char *name; enum alloy_dtype t; } map[] = {
        {"f32", ALLOY_DTYPE_F32},   {"f16", ALLOY_DTYPE_F16},   {"q8_0", ALLOY_DTYPE_Q8_0}, {"q4_0", ALLOY_DTYPE_Q4_0}, {"q4_1", ALLOY_DTYPE_Q4_1},
        {"q5_0", ALLOY_DTYPE_Q5_0}, {"q5_1", ALLOY_DTYPE_Q5_1}, {"q2_K", ALLOY_DTYPE_Q2_K}, {"q3_K", ALLOY_DTYPE_Q3_K},
        {"q4_K", ALLOY_DTYPE_Q4_K}, {"q5_K", ALLOY_DTYPE_Q5_K}, {"q6_K", ALLOY_DTYPE_Q6_K},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(s, map[i].name) == 0) { *out = map[i].t; return 0; }
    return -1;
}

/* Quantizes base tensor src as want says (type; the imatrix when im has the tensor) and checks the digest. */
static void check_golden(const char *file, const struct alloy_tensor *src, json_t *want, const struct alloy_imatrix *im,
                         int *seen, int *with_imatrix)
{
    const char *gname = json_string_value(json_object_get(want, "name"));
    const char *sha = json_string_value(json_object_get(want, "sha256"));
    enum alloy_dtype t;
    CHECK_MSG(gname && sha && ggml_type(json_string_value(json_object_get(want, "type")), &t) == 0, "%s: entry", file);
    if (!gname || !sha || ggml_type(json_string_value(json_object_get(want, "type")), &t)) return;
    int64_t n_per_row = src->shape[src->ndim - 1], nrows = (int64_t)src->numel / n_per_row;
    uint64_t nbytes = 0;
    CHECK(alloy_dtype_nbytes(t, src->numel, &nbytes) == 0);
    float *x = malloc(src->numel * sizeof *x);
    uint8_t *q = malloc(nbytes ? nbytes : 1);
    struct alloy_err err = {0};
    CHECK(x && q);
    if (!x || !q) goto out;
    CHECK_MSG(alloy_tensor_pread(src, 0, x, src->numel * 4, &err) == ALLOY_OK, "%s", err.msg);
    size_t nim = 0;
    const float *w = im ? alloy_imatrix_lookup(im, gname, &nim) : NULL;
    if (w) {
        CHECK_INT((int64_t)nim, n_per_row);
        (*with_imatrix)++;
    }
    if (t < ALLOY_DTYPE_FIRST_QUANT) alloy_from_f32(t, x, q, src->numel);
    else CHECK_MSG(alloy_quantize_rows(t, x, q, nrows, n_per_row, w, file, gname, &err) == ALLOY_OK, "%s", err.msg);
    char hex[65];
    sha256_of(q, nbytes, hex);
    CHECK_MSG(strcmp(hex, sha) == 0, "%s: %s as %s%s: sha256 %s, llama-quantize's %s", file, gname,
              alloy_dtype_traits(t)->name, w ? " with the imatrix" : "", hex, sha);
    seen[t] = 1;
out:
    free(x);
    free(q);
}

/* Every tensor of the files expected.json lists under prefix, re-made from base (with im for the
 * files whose name says imatrix); counts what was compared. */
static int golden_files(json_t *exp, const char *prefix, const struct alloy_tensor_file *base,
                        const struct alloy_imatrix *im, int *ntensors, int *with_imatrix, int *seen)
{
    const char *name;
    json_t *spec;
    int nfiles = 0;
    json_object_foreach(json_object_get(exp, "files"), name, spec) {
        if (strncmp(name, prefix, strlen(prefix)) != 0 || strstr(name, "-f32.gguf")) continue;
        char path[512];
        struct alloy_err err = {0};
        snprintf(path, sizeof path, "gguf/%s", name);
        struct alloy_tensor_file *f = NULL; /* its HF names, in the order of expected.json's GGUF names */
        CHECK_MSG(alloy_tensor_file_open(test_data(path), &f, &err) == ALLOY_OK, "%s", err.msg);
        if (!f) continue;
        json_t *tensors = json_object_get(spec, "tensors");
        CHECK_INT(alloy_tensor_file_count(f), json_array_size(tensors));
        for (size_t i = 0; i < alloy_tensor_file_count(f) && i < json_array_size(tensors); i++) {
            const char *hf = alloy_tensor_file_tensor(f, i)->name;
            const struct alloy_tensor *src = alloy_tensor_file_find(base, hf);
            CHECK_MSG(src && src->dtype == ALLOY_DTYPE_F32, "%s: %s in the F32 base", name, hf);
            if (!src || src->dtype != ALLOY_DTYPE_F32) continue;
            check_golden(name, src, json_array_get(tensors, i), strstr(name, "imatrix") ? im : NULL, seen, with_imatrix);
            (*ntensors)++;
        }
        alloy_tensor_file_close(f);
        nfiles++;
    }
    return nfiles;
}

TEST(quantize_every_type_matches_llama_quantize)
{
    json_error_t jerr;
    json_t *exp = json_load_file(test_data("gguf/expected.json"), 0, &jerr);
    struct alloy_tensor_file *base = NULL, *tiny = NULL;
    struct alloy_imatrix *im = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(exp, "expected.json: %s", jerr.text);
    CHECK_MSG(alloy_tensor_file_open(test_data("gguf/base-f32.gguf"), &base, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_tensor_file_open(test_data("gguf/tiny/tiny-base-f32.gguf"), &tiny, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_imatrix_open(test_data("gguf/base.imatrix"), &im, &err) == ALLOY_OK, "%s", err.msg);
    if (!exp || !base || !tiny || !im) goto out;
    int ntensors = 0, with_imatrix = 0, seen[ALLOY_DTYPE_COUNT] = {0};
    CHECK_INT(golden_files(exp, "quant/", base, im, &ntensors, &with_imatrix, seen), 13);
    CHECK_INT(ntensors, 13 * 21);
    CHECK_INT(with_imatrix, 14); /* the blk.* matmuls; token_embd and output have no entry */
    /* tiny: rows of 128 and 344, so llama-quantize's fallbacks (Q5_0, Q8_0, F16) */
    CHECK_INT(golden_files(exp, "tiny/", tiny, NULL, &ntensors, &with_imatrix, seen), 1);
    CHECK(seen[ALLOY_DTYPE_F16]);
    for (int t = ALLOY_DTYPE_FIRST_QUANT; t <= ALLOY_DTYPE_Q6_K; t++)
        CHECK_MSG(seen[t], "no golden tensor of type %s", alloy_dtype_traits((enum alloy_dtype)t)->name);
out:
    alloy_imatrix_close(im);
    alloy_tensor_file_close(tiny);
    alloy_tensor_file_close(base);
    json_decref(exp);
}

/* ------------------------------------------------------------ edge cases and round trips */

static const enum alloy_dtype k_types[] = {ALLOY_DTYPE_Q8_0, ALLOY_DTYPE_Q4_0, ALLOY_DTYPE_Q4_1, ALLOY_DTYPE_Q5_0,
                                           ALLOY_DTYPE_Q5_1, ALLOY_DTYPE_Q2_K, ALLOY_DTYPE_Q3_K, ALLOY_DTYPE_Q4_K,
                                           ALLOY_DTYPE_Q5_K, ALLOY_DTYPE_Q6_K};

/* Uniform in [-1, 1) from a xorshift state. */
static float urand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) * 0x1p-24 * 2.0 - 1.0);
}

/* Quantize then dequantize n values of type t; y receives the round trip. */
static void round_trip(enum alloy_dtype t, const float *x, float *y, int64_t n, const float *w)
{
    uint64_t nb = 0;
    CHECK(alloy_dtype_nbytes(t, (uint64_t)n, &nb) == 0);
    uint8_t *q = malloc(nb);
    CHECK(q != NULL);
    if (!q) return;
    CHECK((uint64_t)alloy_quantize_row(t, x, q, n, w) == nb);
    alloy_to_f32(t, q, y, (size_t)n);
    free(q);
}

/* On uniform data in [-1, 1), a b-bit code has step ~2/(2^b - 1), so the RMS error of a
 * round-to-nearest quantizer is about step/sqrt(12); the bound allows twice that (the
 * K-quants' searches may clip, and their scales are quantized too). */
TEST(quantize_round_trip_error_bounded)
{
    static const int bits[] = {8, 4, 4, 5, 5, 2, 3, 4, 5, 6};
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *w = malloc(N * sizeof *w);
    CHECK(x && y && w);
    if (!x || !y || !w) goto out;
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < N; i++) {
        x[i] = urand(&s);
        w[i] = 0.5f + 0.5f * (urand(&s) + 1.0f);
    }
    for (size_t k = 0; k < sizeof k_types / sizeof *k_types; k++) {
        for (int imat = 0; imat < 2; imat++) {
            round_trip(k_types[k], x, y, N, imat ? w : NULL);
            double se = 0;
            for (int i = 0; i < N; i++) se += (double)(x[i] - y[i]) * (x[i] - y[i]);
            double rms = sqrt(se / N), bound = 2.0 * (2.0 / ((1 << bits[k]) - 1)) / sqrt(12.0);
            CHECK_MSG(rms < bound, "%s%s: RMS error %g, bound %g", alloy_dtype_traits(k_types[k])->name,
                      imat ? " (imatrix)" : "", rms, bound);
        }
    }
out:
    free(x);
    free(y);
    free(w);
}

/* All-zero blocks read back as exact zeros; a constant block reads back within its fp16 scale's
 * rounding (2^-11 relative), for both signs. */
TEST(quantize_zero_and_constant_blocks)
{
    enum { N = 512 };
    float x[N], y[N];
    for (size_t k = 0; k < sizeof k_types / sizeof *k_types; k++) {
        const char *name = alloy_dtype_traits(k_types[k])->name;
        memset(x, 0, sizeof x);
        round_trip(k_types[k], x, y, N, NULL);
        for (int i = 0; i < N; i++) CHECK_MSG(y[i] == 0.0f, "%s: zero block element %d reads %g", name, i, y[i]);
        for (int sign = -1; sign <= 1; sign += 2) {
            const float c = 0.3125f * (float)sign;
            for (int i = 0; i < N; i++) x[i] = c;
            round_trip(k_types[k], x, y, N, NULL);
            for (int i = 0; i < N; i++)
                CHECK_MSG(fabsf(y[i] - c) <= fabsf(c) * 0x1p-10f, "%s: constant %g reads %g at %d", name, c, y[i], i);
        }
    }
}

TEST(quantize_rejects_nonfinite_and_bad_lengths)
{
    float x[512] = {0};
    uint8_t q[512 * 2];
    struct alloy_err err = {0};
    x[300] = NAN;
    CHECK(alloy_quantize_rows(ALLOY_DTYPE_Q4_K, x, q, 2, 256, NULL, "m.gguf", "blk.0.attn_q.weight", &err) ==
          ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "m.gguf: blk.0.attn_q.weight: finite values to quantize to Q4_K, NaN at row 1 column 44");
    x[300] = -INFINITY;
    CHECK(alloy_quantize_rows(ALLOY_DTYPE_Q8_0, x, q, 16, 32, NULL, "m.gguf", "t", &err) == ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "Inf at row 9 column 12");
    x[300] = 0;
    CHECK(alloy_quantize_rows(ALLOY_DTYPE_Q6_K, x, q, 4, 128, NULL, "m.gguf", "t", &err) == ALLOY_ERR_SHAPE);
    CHECK_STR_CONTAINS(err.msg, "m.gguf: t: a row length that is a multiple of Q6_K's block of 256, 128");
    CHECK(alloy_quantize_rows(ALLOY_DTYPE_F16, x, q, 1, 32, NULL, "m.gguf", "t", &err) == ALLOY_ERR_UNSUPPORTED);
    CHECK(alloy_quantize_row(ALLOY_DTYPE_Q4_0, x, q, 48, NULL) == 0);
    CHECK(alloy_quantize_row(ALLOY_DTYPE_Q2_K, x, q, 0, NULL) == 0);
    CHECK(alloy_quantize_row(ALLOY_DTYPE_Q4_0, x, q, 64, NULL) == 36);
    /* the table's from_f32 row counts the non-finite inputs */
    x[5] = NAN;
    x[6] = INFINITY;
    CHECK_INT(alloy_dtype_traits(ALLOY_DTYPE_Q5_1)->from_f32(x, q, 64), 2);
}

/* ------------------------------------------------------------ fp16 against a naive reference */

/* Value of an fp16 code from its fields, in double. */
static double naive_f16(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* The fp16 value nearest to finite f, ties to an even code, in double (infinite past 65520). */
static double naive_round_f16(float f)
{
    double a = fabs((double)f);
    int e;
    frexp(a, &e); /* a = frac * 2^e, frac in [0.5, 1) */
    int exp = e - 1 < -14 ? -14 : e - 1;
    double ulp = ldexp(1, exp - 10), q = a / ulp, r = floor(q);
    if (q - r > 0.5 || (q - r == 0.5 && fmod(r, 2) != 0)) r += 1;
    double v = r * ulp;
    if (v >= 65536.0) v = INFINITY;
    return f < 0 || (f == 0 && signbit(f)) ? -v : v;
}

TEST(quantize_fp16_matches_naive_reference)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double want = naive_f16((uint16_t)h);
        float got = alloy_f16_to_f32((uint16_t)h);
        if (isnan(want)) CHECK_MSG(isnan(got), "f16 %04x", h);
        else CHECK_MSG((double)got == want && !signbit(got) == !signbit(want), "f16 %04x: %a, want %a", h, got, want);
    }
    uint64_t s = 12345;
    int bad = 0;
    for (int i = 0; i < 2000000 && bad < 10; i++) {
        uint32_t u;
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        u = (uint32_t)s;
        if (i % 2) u = (u & 0x8fffffffu) | 0x30000000u; /* half of them near fp16's range */
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f)) continue;
        double want = naive_round_f16(f), got = alloy_f16_to_f32(alloy_f32_to_f16(f));
        if (got != want || !signbit(got) != !signbit(want)) {
            bad++;
            CHECK_MSG(0, "f32 %a -> f16 reads %a, want %a", f, got, want);
        }
    }
}

/* ------------------------------------------------------------ imatrix files */

/* A byte image of an imatrix file, built field by field. */
struct img {
    uint8_t b[512];
    size_t n;
};

static void put_i32(struct img *m, int32_t v)
{
    memcpy(m->b + m->n, &v, 4);
    m->n += 4;
}

static void put_str(struct img *m, const char *s)
{
    put_i32(m, (int32_t)strlen(s));
    memcpy(m->b + m->n, s, strlen(s));
    m->n += strlen(s);
}

static void put_f32(struct img *m, float f)
{
    memcpy(m->b + m->n, &f, 4);
    m->n += 4;
}

/* Two entries: "blk.0.a" (ncall 4, sums 1 2 3) and "blk.0.b" (ncall 3, sum 1), 7 chunks, "data.txt". */
static struct img valid_image(void)
{
    struct img m = {{0}, 0};
    put_i32(&m, 2);
    put_str(&m, "blk.0.a");
    put_i32(&m, 4);
    put_i32(&m, 3);
    put_f32(&m, 1);
    put_f32(&m, 2);
    put_f32(&m, 3);
    put_str(&m, "blk.0.b");
    put_i32(&m, 3);
    put_i32(&m, 1);
    put_f32(&m, 1);
    put_i32(&m, 7);
    put_str(&m, "data.txt");
    return m;
}

static void expect_reject(const struct img *m, const char *what)
{
    struct alloy_imatrix *im = (struct alloy_imatrix *)1;
    struct alloy_err err = {0};
    CHECK(alloy_imatrix_parse(m->b, m->n, "x.imatrix", &im, &err) == ALLOY_ERR_FORMAT);
    CHECK(im == NULL);
    CHECK_STR_CONTAINS(err.msg, what);
}

TEST(quantize_imatrix_reads_and_divides_by_ncall)
{
    struct img m = valid_image();
    struct alloy_imatrix *im = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_imatrix_parse(m.b, m.n, "x.imatrix", &im, &err) == ALLOY_OK, "%s", err.msg);
    if (!im) return;
    size_t n = 0;
    const float *v = alloy_imatrix_lookup(im, "blk.0.a", &n);
    CHECK(v && n == 3 && v[0] == 0.25f && v[1] == 0.5f && v[2] == 0.75f);
    v = alloy_imatrix_lookup(im, "blk.0.b", &n);
    CHECK(v && n == 1 && v[0] == 1.0f / 3.0f);
    CHECK(alloy_imatrix_lookup(im, "blk.0.c", &n) == NULL);
    CHECK_INT(alloy_imatrix_entries(im), 2);
    CHECK_INT(alloy_imatrix_chunks(im), 7);
    CHECK(strcmp(alloy_imatrix_dataset(im), "data.txt") == 0);
    alloy_imatrix_close(im);
    /* the fixture: 14 entries, 256 chunks, as llama-quantize's metadata records */
    CHECK_MSG(alloy_imatrix_open(test_data("gguf/base.imatrix"), &im, &err) == ALLOY_OK, "%s", err.msg);
    if (!im) return;
    CHECK_INT(alloy_imatrix_entries(im), 14);
    CHECK_INT(alloy_imatrix_chunks(im), 256);
    CHECK(alloy_imatrix_lookup(im, "blk.1.ffn_down.weight", &n) && n == 768);
    alloy_imatrix_close(im);
}

TEST(quantize_imatrix_corrupt_files)
{
    struct img m = valid_image(), c;
    for (size_t cut = 0; cut < m.n; cut++) { /* every truncation */
        struct alloy_imatrix *im = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_imatrix_parse(m.b, cut, "x.imatrix", &im, &err) != ALLOY_OK && im == NULL, "cut at %zu", cut);
    }
    c = m; memcpy(c.b, &(int32_t){-1}, 4); expect_reject(&c, "x.imatrix: entry count: 0..");
    c = m; memcpy(c.b, &(int32_t){1000000}, 4); expect_reject(&c, "x.imatrix: entry count: 0..");
    c = m; memcpy(c.b + 4, &(int32_t){0}, 4); expect_reject(&c, "x.imatrix: entry 0 name: a length of 1..");
    c = m; memcpy(c.b + 4, &(int32_t){0x7fffffff}, 4); expect_reject(&c, "x.imatrix: entry 0 name: a length of 1..");
    c = m; c.b[9] = 0; expect_reject(&c, "x.imatrix: entry 0 name: a name without NUL bytes");
    c = m; memcpy(c.b + 15, &(int32_t){0}, 4); expect_reject(&c, "x.imatrix: blk.0.a: a call count > 0, 0");
    c = m; memcpy(c.b + 19, &(int32_t){1 << 30}, 4); expect_reject(&c, "x.imatrix: blk.0.a: 1..");
    c = m; memcpy(c.b + 19, &(int32_t){0}, 4); expect_reject(&c, "x.imatrix: blk.0.a: 1..");
    c = m; memcpy(c.b + 23, &(float){NAN}, 4); expect_reject(&c, "x.imatrix: blk.0.a: finite non-negative sums, nan at value 0");
    c = m; memcpy(c.b + 27, &(float){-1}, 4); expect_reject(&c, "x.imatrix: blk.0.a: finite non-negative sums, -1 at value 1");
    c = m; c.b[45] = 'a'; expect_reject(&c, "x.imatrix: blk.0.a: one entry per name, two");
    c = m; memcpy(c.b + 58, &(int32_t){-2}, 4); expect_reject(&c, "x.imatrix: chunk count: >= 0, -2");
    c = m; c.b[c.n++] = 0; expect_reject(&c, "x.imatrix: end of file: nothing after the dataset name, 1 bytes");
    struct alloy_imatrix *im = NULL;
    struct alloy_err err = {0};
    CHECK(alloy_imatrix_open(test_data("gguf/no-such.imatrix"), &im, &err) == ALLOY_ERR_IO && im == NULL);
}
