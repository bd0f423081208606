/*
 * test_sce.c — sce against a naive double-precision evaluation of spec
 * §1.11 written out with plain loops and a full sort for the top-k (lowest
 * index first among equal variances), over several select_topk values,
 * base positions and scales (including the uniform-weight fallback); ties
 * at the threshold split across chunks; bit-identical results for any
 * chunking and thread count; and the edge cases: select_topk <= 0, a single
 * model, zero deltas, all-conflicting signs, base only, no base.
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

static int run_sce(int n, int base, int ndim, uint64_t rows, uint64_t cols, double topk, const float *const *in,
                   float *out, int threads, uint64_t chunk, struct alloy_err *err)
{
    const struct alloy_method *m = alloy_method_find("sce");
    if (!m) return -1;
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    if (ndim == 1) shape[0] = (int64_t)(rows * cols);
    const char *models[8] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"};
    double gp[2] = {topk, 0};
    double tp[16];
    for (int i = 0; i < 16; i++) tp[i] = NAN;
    struct alloy_merge_job job = {.name = "model.layers.2.mlp.down_proj.weight", .config_path = "test.yml",
                                  .ndim = ndim, .shape = shape, .numel = rows * cols, .rows = rows, .cols = cols,
                                  .n = n, .base = base, .models = models, .gp = gp, .tp = tp, .seed = 0};
    return run_on_threads(m, &job, in, out, threads, chunk, err);
}

/* ---------------------------------------------------------------- naive reference */

static const float *g_var; /* sort key for cmp_var */

static int cmp_var(const void *pa, const void *pb)
{
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    double va = fabs(g_var[a]), vb = fabs(g_var[b]);
    if (va != vb) return va > vb ? -1 : 1;  /* larger |v| first */
    return a < b ? -1 : a > b;              /* then lower index first */
}

/* Spec §1.11 in double; the variance is rounded to float32 (the working
 * dtype) before ranking. */
static void naive_sce(int n, int base, size_t N, const float *const *in, double topk, double *res)
{
    int nm = 0, idx[8];
    for (int i = 0; i < n; i++)
        if (i != base) idx[nm++] = i;
    double *T = malloc(sizeof(double) * (size_t)(nm ? nm : 1) * N);
    for (int j = 0; j < nm; j++)
        for (size_t e = 0; e < N; e++) T[(size_t)j * N + e] = (double)in[idx[j]][e] - in[base][e];
    if (topk < 1) {
        float *v = calloc(N, sizeof *v);
        size_t *order = malloc(N * sizeof *order);
        size_t nz = 0;
        for (size_t e = 0; e < N; e++) {
            double mean = 0, var = 0;
            for (int j = 0; j < nm; j++) mean += T[(size_t)j * N + e] / nm;
            for (int j = 0; j < nm; j++) var += pow(T[(size_t)j * N + e] - mean, 2) / nm;
            v[e] = (float)var;
            nz += v[e] != 0;
            order[e] = e;
        }
        size_t k = topk > 0 ? (size_t)(topk * (double)nz) : 0;
        g_var = v;
        qsort(order, N, sizeof *order, cmp_var);
        char *keep = calloc(N, 1);
        for (size_t r = 0; r < k; r++) keep[order[r]] = 1;
        for (int j = 0; j < nm; j++)
            for (size_t e = 0; e < N; e++)
                if (!keep[e]) T[(size_t)j * N + e] = 0;
        free(keep);
        free(order);
        free(v);
    }
    double w[8], S = 0;
    for (int j = 0; j < nm; j++) {
        double ss = 0;
        for (size_t e = 0; e < N; e++) ss += T[(size_t)j * N + e] * T[(size_t)j * N + e];
        w[j] = ss / (double)N;
        S += w[j];
    }
    for (int j = 0; j < nm; j++) w[j] = fabs(S) < 1e-6 ? 1.0 / nm : w[j] / S;
    for (size_t e = 0; e < N; e++) {
        double sum = 0;
        for (int j = 0; j < nm; j++) sum += T[(size_t)j * N + e];
        int sigma = sum >= 0 ? 1 : -1;
        double num = 0, den = 0;
        for (int j = 0; j < nm; j++) {
            double t = T[(size_t)j * N + e];
            int sg = t > 0 ? 1 : t < 0 ? -1 : 0;
            double E = sg == sigma;
            num += t * w[j] * E;
            den += w[j] * E;
        }
        res[e] = in[base][e] + num / (den > 1e-6 ? den : 1e-6);
    }
    free(T);
}

/* ---------------------------------------------------------------- tests */

TEST(sce_registered_params)
{
    const struct alloy_method *m = alloy_method_find("sce");
    CHECK(m != NULL);
    if (!m) return;
    int kt = alloy_method_param(m, "select_topk"), ki = alloy_method_param(m, "int8_mask");
    CHECK(kt >= 0 && ki >= 0);
    CHECK(alloy_method_param(m, "weight") < 0);
    if (kt < 0 || ki < 0) return;
    CHECK(m->params[kt].def == 1.0 && m->params[kt].scope == ALLOY_PARAM_GLOBAL);
    CHECK(m->params[ki].def == 0.0 && m->params[ki].scope == ALLOY_PARAM_GLOBAL);
}

TEST(sce_golden_random)
{
    enum { R = 12, C = 10, N = R * C, NM = 4 };
    static float x[NM][N], out[N], out2[N];
    static double want[N];
    static const double topks[] = {1.0, 0.5, 0.1, 0.999, 0.01, 0.75};
    static const double scales[] = {0.1, 1e-4};
    for (int sc = 0; sc < 2; sc++) {
        lcg_state = 1234 + (uint32_t)sc;
        for (int e = 0; e < N; e++) x[0][e] = (float)(lcg_unit() * 2 - 1);
        for (int i = 1; i < NM; i++)
            for (int e = 0; e < N; e++) {
                double u = lcg_unit();
                double d = u < 0.1 ? 0 : scales[sc] * (lcg_unit() * 2 - 1) * (1 + i);
                x[i][e] = (float)(x[0][e] + d);
            }
        for (size_t ti = 0; ti < sizeof topks / sizeof topks[0]; ti++) {
            for (int base = 0; base < NM; base += 3) {
                const float *in[NM] = {x[0], x[1], x[2], x[3]};
                if (base == 3) {
                    in[0] = x[3];
                    in[3] = x[0];
                }
                naive_sce(NM, base, N, in, topks[ti], want);
                struct alloy_err err = {0};
                CHECK_INT(run_sce(NM, base, 2, R, C, topks[ti], in, out, 1, 0, &err), ALLOY_OK);
                int bad = 0;
                for (int e = 0; e < N; e++)
                    if (!(fabs(out[e] - want[e]) <= 1e-7 * (1 + fabs(want[e])))) bad++;
                CHECK_MSG(bad == 0, "scale %g topk %g base %d: %d mismatches", scales[sc], topks[ti], base, bad);
                uint64_t chunks[] = {5, 64, 7, 1};
                for (int ci = 0; ci < 4; ci++) {
                    CHECK_INT(run_sce(NM, base, 2, R, C, topks[ti], in, out2, (ci & 1) ? 3 : 1, chunks[ci], &err),
                              ALLOY_OK);
                    CHECK_MSG(memcmp(out, out2, sizeof out) == 0, "topk %g chunk %llu differs", topks[ti],
                              (unsigned long long)chunks[ci]);
                }
            }
        }
    }
}

TEST(sce_ties_split_across_chunks)
{
    /* Two models with T2 = -T1, |T1| in {0.5, 1, 1.5, 2} by e % 4 (10 each): v = T1^2.
     * topk 0.35 -> k = int(0.35 * 40) = 14: the ten e % 4 == 3 positions plus the first
     * four e % 4 == 2 positions (2, 6, 10, 14). Signs cancel (sum 0 -> sigma +1), so kept
     * positions take +|T1| (only the positive model survives), the rest stay B. */
    enum { N = 40 };
    float b[N], x1[N], x2[N], out[N];
    for (int e = 0; e < N; e++) {
        b[e] = (float)(e % 7) * 0.25f - 1;
        float t = 0.5f * (float)(e % 4 + 1);
        x1[e] = b[e] + ((e / 4) % 2 ? t : -t);
        x2[e] = b[e] - ((e / 4) % 2 ? t : -t);
    }
    const float *in[3] = {b, x1, x2};
    uint64_t chunks[] = {0, 5, 3, 8};
    for (int ci = 0; ci < 4; ci++) {
        struct alloy_err err = {0};
        CHECK_INT(run_sce(3, 0, 1, 1, N, 0.35, in, out, ci == 1 ? 3 : 1, chunks[ci], &err), ALLOY_OK);
        int changed = 0, bad = 0;
        for (int e = 0; e < N; e++) {
            int keep = e % 4 == 3 || (e % 4 == 2 && e <= 14);
            double t = 0.5 * (e % 4 + 1);
            double want = keep ? b[e] + t : b[e];
            changed += out[e] != b[e];
            if (!(fabs(out[e] - want) <= 1e-6)) bad++;
        }
        CHECK_MSG(changed == 14 && bad == 0, "chunk %llu: changed %d (want 14), %d wrong",
                  (unsigned long long)chunks[ci], changed, bad);
    }
}

TEST(sce_select_topk_zero_or_negative_keeps_base)
{
    float b[6] = {1, 2, 3, 4, 5, 6}, x1[6] = {2, 2, 1, 4, 9, 6}, x2[6] = {0, 3, 3, 5, 5, 7}, out[6];
    const float *in[3] = {b, x1, x2};
    struct alloy_err err = {0};
    CHECK_INT(run_sce(3, 0, 1, 1, 6, 0.0, in, out, 1, 2, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    CHECK_INT(run_sce(3, 0, 1, 1, 6, -0.5, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    /* k = int(0.1 * 6 nonzero variances) = 0: nothing selected */
    CHECK_INT(run_sce(3, 0, 1, 1, 6, 0.1, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
}

TEST(sce_single_model)
{
    /* one model: topk 1 -> w = 1, every nonzero delta agrees with its own sign -> X;
     * topk < 1 -> zero variance everywhere -> k = 0 -> B (mergekit does the same) */
    float b[5] = {1, -2, 0.5f, 3, 0}, x1[5] = {1.25f, -2.5f, 0.5f, 2, 0.125f}, out[5];
    const float *in[2] = {x1, b};
    struct alloy_err err = {0};
    CHECK_INT(run_sce(2, 1, 1, 1, 5, 1.0, in, out, 1, 2, &err), ALLOY_OK);
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], x1[e], 1e-7);
    CHECK_INT(run_sce(2, 1, 1, 1, 5, 0.9, in, out, 1, 2, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
}

TEST(sce_conflicting_signs_and_zero_deltas)
{
    /* T1 = +d, T2 = -d (equal energy, w = 1/2 each): sum 0 -> sigma = +1 -> R = B + d.
     * T1 = +d, T2 = -3d: sigma = -1 -> R = B - 3d. Zero deltas everywhere -> B. */
    float b[3] = {0, 1, 2}, x1[3] = {0.5f, 1.5f, 2.5f}, x2[3] = {-0.5f, 0.5f, 1.5f}, out[3];
    const float *in[3] = {b, x1, x2};
    struct alloy_err err = {0};
    CHECK_INT(run_sce(3, 0, 1, 1, 3, 1.0, in, out, 1, 0, &err), ALLOY_OK);
    for (int e = 0; e < 3; e++) CHECK_NEAR(out[e], b[e] + 0.5, 1e-7);
    float x3[3] = {-1.5f, -0.5f, 0.5f};
    const float *in2[3] = {b, x1, x3};
    CHECK_INT(run_sce(3, 0, 1, 1, 3, 1.0, in2, out, 1, 0, &err), ALLOY_OK);
    for (int e = 0; e < 3; e++) CHECK_NEAR(out[e], b[e] - 1.5, 1e-7);
    const float *in3[3] = {b, b, b};
    CHECK_INT(run_sce(3, 0, 1, 1, 3, 0.5, in3, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    CHECK_INT(run_sce(3, 0, 1, 1, 3, 1.0, in3, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
}

TEST(sce_base_only_and_errors)
{
    float b[4] = {1, 2, 3, 4}, out[4];
    const float *in[2] = {b, b};
    struct alloy_err err = {0};
    CHECK_INT(run_sce(1, 0, 1, 1, 4, 0.5, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    CHECK_INT(run_sce(2, -1, 1, 1, 4, 0.5, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "sce: needs a base_model");
    CHECK_INT(run_sce(2, 0, 1, 1, 4, NAN, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "select_topk");
}

TEST(sce_divisor_floor)
{
    /* T1 = {1, 1, 1, 0}, T2 = 1e-4 everywhere: w2 = 1e-8 / (0.75 + 1e-8) < 1e-6 (mean squares 3/4 and 1e-8), and at the
     * last position only model 2 passes the sign test, so R = w2 * 1e-4 / max(w2, 1e-6)
     * = 100 * w2 ~ 1.3333e-6 (not 1e-4, as a plain division by w2 would give). */
    float b[4] = {0, 0, 0, 0}, x1[4] = {1, 1, 1, 0}, x2[4] = {1e-4f, 1e-4f, 1e-4f, 1e-4f}, out[4];
    const float *in[3] = {b, x1, x2};
    double want[4];
    naive_sce(3, 0, 4, in, 1.0, want);
    struct alloy_err err = {0};
    CHECK_INT(run_sce(3, 0, 1, 1, 4, 1.0, in, out, 1, 0, &err), ALLOY_OK);
    double t2 = x2[3], w2 = t2 * t2 / (0.75 + t2 * t2);
    CHECK_NEAR(out[3], w2 * t2 / 1e-6, 1e-12);
    CHECK_NEAR(out[3], 1.3333e-6, 1e-10);
    for (int e = 0; e < 4; e++) CHECK_NEAR(out[e], want[e], 1e-7 * (1 + fabs(want[e])));
}
