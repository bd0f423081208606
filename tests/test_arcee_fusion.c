/*
 * test_arcee_fusion.c — arcee_fusion against a naive evaluation of spec
 * §1.10: per-row KL of plain (unshifted) softmaxes in double, importance
 * rounded to float32 (mergekit's working dtype for float32 inputs), a full
 * qsort of all importances for the quantiles, and the float32 threshold.
 * Also: 1-D tensors, many tied importances, a hand-worked row, base-only
 * and error cases, and bit-identical output for any chunking and thread
 * count.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

static uint32_t lcg_state;
static double lcg_unit(void)
{
    lcg_state = lcg_state * 1664525u + 1013904223u;
    return (double)(lcg_state >> 8) / 16777216.0;
}

static int run_fusion(int n, int base, int ndim, uint64_t rows, uint64_t cols, const float *const *in, float *out,
                      int threads, uint64_t chunk, struct alloy_err *err)
{
    const struct alloy_method *m = alloy_method_find("arcee_fusion");
    if (!m) return -1;
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    if (ndim == 1) shape[0] = (int64_t)cols;
    const char *models[3] = {"base", "other", "third"};
    double gp[1] = {0}, tp[3] = {0};
    struct alloy_merge_job job = {.name = "model.layers.3.self_attn.o_proj.weight", .config_path = "test.yml",
                                  .ndim = ndim, .shape = shape, .numel = rows * cols, .rows = rows, .cols = cols,
                                  .n = n, .base = base, .models = models, .gp = gp, .tp = tp, .seed = 0};
    return run_on_threads(m, &job, in, out, threads, chunk, err);
}

static int cmp_float(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Spec §1.10 naively; returns the threshold and writes the result. */
static float naive_fusion(const float *a, const float *b, size_t rows, size_t cols, float *res)
{
    size_t N = rows * cols;
    float *imp = malloc(N * sizeof *imp), *sorted = malloc(N * sizeof *sorted);
    for (size_t r = 0; r < rows; r++) {
        const float *ar = a + r * cols, *br = b + r * cols;
        double za = 0, zb = 0, kl = 0;
        for (size_t j = 0; j < cols; j++) {
            za += exp(ar[j]);
            zb += exp(br[j]);
        }
        for (size_t j = 0; j < cols; j++) {
            double p = exp(br[j]) / zb + 1e-8, q = exp(ar[j]) / za + 1e-8;
            kl += p * log(p / q);
        }
        for (size_t j = 0; j < cols; j++) imp[r * cols + j] = (float)(fabs((double)br[j] - ar[j]) * kl);
    }
    memcpy(sorted, imp, N * sizeof *imp);
    qsort(sorted, N, sizeof *sorted, cmp_float);
    float q1 = sorted[(size_t)floor(0.25 * (double)(N - 1))];
    float med = sorted[(size_t)floor(0.5 * (double)(N - 1))];
    float q3 = sorted[(size_t)floor(0.75 * (double)(N - 1))];
    float d = q3 - q1, s = 1.5f * d, thr = med + s;
    for (size_t e = 0; e < N; e++) res[e] = imp[e] >= thr ? b[e] : a[e];
    free(imp);
    free(sorted);
    return thr;
}

TEST(arcee_fusion_registered)
{
    const struct alloy_method *m = alloy_method_find("arcee_fusion");
    CHECK(m != NULL);
    if (!m) return;
    CHECK_INT(m->nparams, 0);
    CHECK(m->flags & ALLOY_METHOD_F32_OUTPUT);
    CHECK(m->flags & ALLOY_METHOD_WHOLE_ROWS);
    CHECK(m->flags & ALLOY_METHOD_RECTIFY);
    CHECK(!(m->flags & ALLOY_METHOD_RANDOM));
}

/* base: uniform noise; other: base + mostly small changes, some large outliers, some
 * rows unchanged (importance 0 for the whole row: many ties). */
static void make_pair(uint32_t seed, size_t rows, size_t cols, float *a, float *b)
{
    lcg_state = seed;
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++) {
            size_t e = r * cols + j;
            a[e] = (float)(lcg_unit() * 4 - 2);
            double u = lcg_unit();
            double d = r % 5 == 4 ? 0 : u < 0.1 ? 3 * (lcg_unit() - 0.5) : 0.05 * (lcg_unit() - 0.5);
            b[e] = (float)(a[e] + d);
        }
}

TEST(arcee_fusion_golden)
{
    static const size_t shapes[][2] = {{16, 9}, {1, 37}, {7, 1}, {40, 33}, {3, 4}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        size_t rows = shapes[si][0], cols = shapes[si][1], N = rows * cols;
        float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *want = malloc(N * sizeof *want),
              *out = malloc(N * sizeof *out), *out2 = malloc(N * sizeof *out2);
        make_pair(17 + (uint32_t)si, rows, cols, a, b);
        naive_fusion(a, b, rows, cols, want);
        int ndim = rows == 1 ? 1 : 2;
        for (int base = 0; base < 2; base++) {
            const float *in[2] = {base == 0 ? a : b, base == 0 ? b : a};
            struct alloy_err err = {0};
            CHECK_INT(run_fusion(2, base, ndim, rows, cols, in, out, 1, 0, &err), ALLOY_OK);
            int bad = 0, taken = 0;
            for (size_t e = 0; e < N; e++) {
                bad += memcmp(&out[e], &want[e], sizeof(float)) != 0;
                taken += want[e] != a[e];
            }
            CHECK_MSG(bad == 0, "shape %zux%zu base %d: %d mismatches", rows, cols, base, bad);
            if (N > 100) CHECK_MSG(taken > 0 && taken < (int)N / 2, "shape %zux%zu: %d taken", rows, cols, taken);
            uint64_t chunks[] = {5, 64, 1, 100};
            for (int ci = 0; ci < 4; ci++) {
                CHECK_INT(run_fusion(2, base, ndim, rows, cols, in, out2, (ci & 1) ? 3 : 1, chunks[ci], &err),
                          ALLOY_OK);
                CHECK_MSG(memcmp(out, out2, N * sizeof *out) == 0, "shape %zux%zu chunk %llu differs", rows, cols,
                          (unsigned long long)chunks[ci]);
            }
        }
        free(a);
        free(b);
        free(want);
        free(out);
        free(out2);
    }
}

TEST(arcee_fusion_hand_row)
{
    /* Row 0: base 0s, other [0, 0, 0, 2]; row 1 identical to the base. Importances:
     * row 0 [0, 0, 0, 2 kl0] (kl0 > 0), row 1 all 0. Sorted: seven 0s then 2 kl0, N = 8:
     * Q1 = s[1] = 0, med = s[3] = 0, Q3 = s[5] = 0 -> thr = 0 -> I >= 0 everywhere:
     * R = X (positions with I = 0 have X = B there anyway). */
    float a[8] = {0, 0, 0, 0, 1, 2, 3, 4}, b[8] = {0, 0, 0, 2, 1, 2, 3, 4}, out[16];
    const float *in[2] = {a, b};
    struct alloy_err err = {0};
    CHECK_INT(run_fusion(2, 0, 2, 2, 4, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    /* One outlier among small changes: rows of 4, base 0, other small (0.01..0.03) changes
     * except one large (3.0) change in row 2. Row 2 has by far the largest KL, so its four
     * importances are the four largest of 16: Q3 = s[11] is the largest of the other rows',
     * thr = med + 1.5 (Q3 - Q1) > Q3 (non-degenerate quartiles), so rows 0, 1, 3 keep the
     * base and the outlier is taken. */
    float a2[16] = {0}, b2[16];
    for (int e = 0; e < 16; e++) b2[e] = 0.01f * (float)(e % 3 + 1);
    b2[9] = 3.0f;
    const float *in2[2] = {a2, b2};
    CHECK_INT(run_fusion(2, 0, 2, 4, 4, in2, out, 1, 0, &err), ALLOY_OK);
    for (int e = 0; e < 16; e++)
        if (e / 4 != 2) CHECK_NEAR(out[e], 0.0, 0);
    CHECK_NEAR(out[9], 3.0, 0);
}

TEST(arcee_fusion_quantile_indices)
{
    /* A 1-D tensor is one row, so kl is one constant K and I = K |X - B|: the mask is
     * |d| >= thr_d with thr_d = med + 1.5 (Q3 - Q1) over the |d|. |d| takes the values
     * 1 .. N-1 (scrambled) plus one `top` just above or just below thr_d, where the
     * quartiles are at ascending indices floor(q (N - 1)); top is taken only when above. */
    for (int N = 5; N <= 14; N++) {
        double srt[16];
        for (int i = 0; i < N - 1; i++) srt[i] = i + 1;
        srt[N - 1] = 1e9; /* top, the largest */
        int i1 = (int)floor(0.25 * (N - 1)), im = (int)floor(0.5 * (N - 1)), i3 = (int)floor(0.75 * (N - 1));
        double thr = srt[im] + 1.5 * (srt[i3] - srt[i1]);
        for (int above = 0; above < 2; above++) {
            float a[16], b[16], out[16];
            int pos = N / 3;
            for (int e = 0, v = 0; e < N; e++) {
                a[e] = 0.125f * (float)(e % 3);
                double d = thr * (above ? 1.02 : 0.98);
                if (e != pos) { /* 1 .. N-1 interleaved from both ends */
                    d = v % 2 ? v / 2 + 1 : N - 1 - v / 2;
                    v++;
                }
                b[e] = (float)(a[e] + d);
            }
            const float *in[2] = {a, b};
            struct alloy_err err = {0};
            CHECK_INT(run_fusion(2, 0, 1, 1, (uint64_t)N, in, out, 1, 3, &err), ALLOY_OK);
            for (int e = 0; e < N; e++) {
                int taken = e == pos && above;
                CHECK_MSG(out[e] == (taken ? b[e] : a[e]), "N=%d above=%d e=%d: %g", N, above, e, out[e]);
            }
        }
    }
}

TEST(arcee_fusion_base_only_and_errors)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, out[6];
    const float *in[3] = {a, a, a};
    struct alloy_err err = {0};
    CHECK_INT(run_fusion(1, 0, 2, 2, 3, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
    CHECK_INT(run_fusion(2, -1, 2, 2, 3, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "arcee_fusion: needs a base_model");
    CHECK_INT(run_fusion(3, 0, 2, 2, 3, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "exactly one other model");
}
