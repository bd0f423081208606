/*
 * test_iq4_nl.c — IQ4_NL, llama-quantize's fallback for Q2_K/Q3_K rows that
 * are not a multiple of 256.
 *
 * DESIGN
 *   The golden data of fixtures/gguf has no IQ4_NL tensor, so the bytes are
 *   pinned against a naive reference written here from the algorithm's
 *   description (gguf.md, ggml quantize_iq4_nl), independently of
 *   src/quant/iq4_nl.c: the nearest level by a linear scan over all 16
 *   levels (ties to the upper one) instead of bisection, the candidate scales
 *   as an explicit list, plain loops. Both must give the same bytes on many
 *   distributions, with and without importance weights. Then dequantization
 *   (against the block layout read by hand), round-trip error, the GGUF
 *   reader and writer (type id 20) and `alloy convert --outtype q2_k` on the
 *   tiny model whose rows of 128 take the fallback.
 */
#include "test.h"

#include "alloy.h"
#include "quant/quantize.h"

#include <stdlib.h>

static const float k_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static int naive_nearest(float v)
{
    int best = 0;
    float bd = fabsf(v - k_levels[0]);
    for (int l = 1; l < 16; l++) {
        float dl = fabsf(v - k_levels[l]);
        if (dl <= bd) { /* ties to the upper level */
            bd = dl;
            best = l;
        }
    }
    return best;
}

/* One 32-block: ntry 7 (quantize_iq4_nl) or -1 (the _ref); codes: in, the previous block's (kept by the _ref for
 * an all-zero block), out, this one's. */
static void naive_block(const float *x, const float *qw, int ntry, unsigned char *codes, unsigned char *out)
{
    float w[32], ss = 0;
    for (int j = 0; j < 32; j++) ss += x[j] * x[j];
    const float sigma2 = ss * (2.f / 32);
    for (int j = 0; j < 32; j++) w[j] = qw ? qw[j] * sqrtf(sigma2 + x[j] * x[j]) : x[j] * x[j];
    int arg = -1;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > (arg < 0 ? 0.f : fabsf(x[arg]))) arg = j;
    float scale = 0;
    if (arg >= 0 && fabsf(x[arg]) >= 1e-15f) {
        const float mx = x[arg];
        float inv[16];
        int ncand = 0;
        inv[ncand++] = 1 / (ntry > 0 ? mx / 127 : mx / -127);
        for (int k = -ntry; k <= ntry; k++) inv[ncand++] = (float)(k - 127) / mx;
        float best = 0;
        for (int c = 0; c < ncand; c++) {
            float a = 0, b = 0;
            for (int j = 0; j < 32; j++) {
                int l = naive_nearest(inv[c] * x[j]);
                if (c == 0) codes[j] = (unsigned char)l;
                a += w[j] * k_levels[l] * x[j];
                b += w[j] * k_levels[l] * k_levels[l];
            }
            if (c == 0) {
                scale = b > 0 ? a / b : 0;
                best = scale * a;
            } else if (b > 0 && a * a > best * b) {
                scale = a / b;
                best = scale * a;
            }
        }
    }
    if (ntry > 0)
        for (int j = 0; j < 32; j++) codes[j] = (unsigned char)naive_nearest((scale ? 1 / scale : 0) * x[j]);
    uint16_t h = alloy_f32_to_f16(scale);
    out[0] = (unsigned char)h;
    out[1] = (unsigned char)(h >> 8);
    for (int j = 0; j < 16; j++) out[2 + j] = (unsigned char)(codes[j] | codes[j + 16] << 4);
}

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) * 0x1p-24);
}

/* Distribution k for element j of a 4096-wide row. */
static float sample(int k, int j, uint64_t *s)
{
    float u = frand(s), g = 0;
    for (int i = 0; i < 4; i++) g += frand(s) - 0.5f;
    switch (k) {
    case 0: return 0.05f * g;                                     /* near-gaussian */
    case 1: return 0.01f * g / (0.02f + u * u);                   /* heavy tails */
    case 2: return (j / 32) % 3 == 0 || u < 0.3f ? 0.f : g;       /* zeros and all-zero blocks */
    case 3: return (j / 32) % 2 ? 0.37f : -1e-3f;                 /* constant blocks */
    default: return (j / 32) % 4 == 0 ? 1e-17f * g : 1e4f * g;    /* below the epsilon; large */
    }
}

TEST(iq4_nl_bytes_match_naive_reference)
{
    enum { N = 4096, NB = N / 32 };
    float *x = malloc(N * sizeof *x), *qw = malloc(N * sizeof *qw);
    unsigned char *got = malloc(NB * 18), *want = malloc(NB * 18), codes[32] = {0};
    CHECK(x && qw && got && want);
    if (!x || !qw || !got || !want) goto out;
    uint64_t s = 42;
    int mismatched = 0;
    for (int k = 0; k < 5; k++) {
        for (int j = 0; j < N; j++) x[j] = sample(k, j, &s);
        for (int j = 0; j < N; j++) qw[j] = j % 97 == 0 ? 0.f : frand(&s) * 3;
        for (int pass = 0; pass < 3; pass++) { /* quantize_iq4_nl without, with weights; the _ref */
            const float *w = pass == 1 ? qw : NULL;
            memset(codes, 0, sizeof codes);
            for (int b = 0; b < NB; b++)
                naive_block(x + 32 * b, w ? w + 32 * b : NULL, pass == 2 ? -1 : 7, codes, want + 18 * b);
            if (pass == 2) alloy_quantize_iq4_nl_ref(x, got, N);
            else CHECK_INT(alloy_quantize_row(ALLOY_DTYPE_IQ4_NL, x, got, N, w), NB * 18);
            for (int b = 0; b < NB; b++) mismatched += memcmp(got + 18 * b, want + 18 * b, 18) != 0;
        }
    }
    CHECK_INT(mismatched, 0);
    /* an all-zero block: d = 0 and every code 8 (the level nearest 0 is 1, index 8) */
    float z[32] = {0};
    CHECK_INT(alloy_quantize_row(ALLOY_DTYPE_IQ4_NL, z, got, 32, NULL), 18);
    CHECK(got[0] == 0 && got[1] == 0 && got[2] == 0x88 && got[17] == 0x88);
out:
    free(x);
    free(qw);
    free(got);
    free(want);
}

TEST(iq4_nl_dequant_and_round_trip)
{
    /* hand-made block: d = 0.5 (fp16 0x3800), codes 0..15 then 15..0 */
    unsigned char b[18] = {0x00, 0x38};
    for (int j = 0; j < 16; j++) b[2 + j] = (unsigned char)(j | (15 - j) << 4);
    float y[32];
    alloy_to_f32(ALLOY_DTYPE_IQ4_NL, b, y, 32);
    int bad = 0;
    for (int j = 0; j < 16; j++) bad += y[j] != 0.5f * k_levels[j] || y[16 + j] != 0.5f * k_levels[15 - j];
    CHECK_INT(bad, 0);
    /* round trip: every element within half the largest level gap (24) times the block's scale */
    enum { N = 1024 };
    float x[N], back[N];
    unsigned char q[N / 32 * 18];
    uint64_t s = 7;
    for (int j = 0; j < N; j++) x[j] = sample(j % 2, j, &s);
    alloy_quantize_row(ALLOY_DTYPE_IQ4_NL, x, q, N, NULL);
    alloy_to_f32(ALLOY_DTYPE_IQ4_NL, q, back, N);
    int far = 0;
    for (int blk = 0; blk < N / 32; blk++) {
        float d = fabsf(alloy_f16_to_f32((uint16_t)(q[18 * blk] | q[18 * blk + 1] << 8)));
        for (int j = 32 * blk; j < 32 * blk + 32; j++) far += fabsf(x[j] - back[j]) > 12.5f * d + 1e-6f;
    }
    CHECK_INT(far, 0);
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(ALLOY_DTYPE_IQ4_NL);
    CHECK(tr && tr->block == 32 && tr->block_bytes == 18 && !strcmp(tr->name, "IQ4_NL"));
    struct alloy_err err = {0};
    CHECK_INT(alloy_quantize_rows(ALLOY_DTYPE_IQ4_NL, x, q, 1, 48, NULL, "m.gguf", "t", &err), ALLOY_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "m.gguf: t: ") && strstr(err.msg, "IQ4_NL"), "%s", err.msg);
}

/* alloy convert of the tiny model (rows 128 and 344) to q2_k: IQ4_NL where llama-quantize took it, and the
 * file reads back (type id 20) to the bytes' own dequantization. */
TEST(iq4_nl_q2_k_fallback_end_to_end)
{
    char cmd[1024], out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/tiny-q2_k.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype q2_k -q -j 2 2>&1", test_alloy_bin(),
             test_data("gguf/tiny/tiny-base-f32.gguf"), out);
    CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    struct alloy_tensor_file *f = NULL, *src = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_tensor_file_open(out, &f, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_tensor_file_open(test_data("gguf/tiny/tiny-base-f32.gguf"), &src, &err) == ALLOY_OK, "%s", err.msg);
    if (!f || !src) goto out;
    int iq4 = 0, f16 = 0, checked = 0;
    for (size_t i = 0; i < alloy_tensor_file_count(f); i++) {
        const struct alloy_tensor *t = alloy_tensor_file_tensor(f, i);
        iq4 += t->dtype == ALLOY_DTYPE_IQ4_NL;
        f16 += t->dtype == ALLOY_DTYPE_F16;
        if (t->dtype != ALLOY_DTYPE_IQ4_NL || checked || !strstr(t->name, "gate")) continue; /* rows not permuted */
        /* the stored bytes are alloy_quantize_row of the source rows */
        const struct alloy_tensor *st = NULL;
        for (size_t k = 0; k < alloy_tensor_file_count(src); k++)
            if (!strcmp(alloy_tensor_file_tensor(src, k)->name, t->name)) st = alloy_tensor_file_tensor(src, k);
        CHECK(st && st->dtype == ALLOY_DTYPE_F32 && st->numel == t->numel);
        if (!st || st->numel != t->numel) continue;
        unsigned char *want = malloc(t->numel / 32 * 18);
        CHECK(want != NULL);
        if (!want) continue;
        alloy_quantize_row(ALLOY_DTYPE_IQ4_NL, (const float *)st->data, want, (int64_t)t->numel, NULL);
        CHECK(t->nbytes == t->numel / 32 * 18 && memcmp(t->data, want, t->nbytes) == 0);
        free(want);
        checked = 1;
    }
    CHECK_INT(iq4, 25); /* llama-quantize: 25 IQ4_NL, 4 F16 ffn_down, a Q8_0 output */
    CHECK_INT(f16, 4);
    CHECK(checked);
out:
    alloy_tensor_file_close(src);
    alloy_tensor_file_close(f);
}
