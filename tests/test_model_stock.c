/*
 * test_model_stock.c — model_stock (spec §1.7) against a naive
 * double-precision implementation written out here (pairwise clamped
 * cosines with the 1e-6 norm guard, their mean, t = N cos / (1 + (N-1) cos),
 * t * w_avg + (1 - t) * w0), whole-tensor and filter-wise (per row; 1-D as
 * one row), with the base at every input position, in several chunkings
 * and on 3 threads. Edge cases: zero task vectors, opposite task vectors
 * (the 1 + (N-1) cos = 0 fallback), one model, too few models.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- naive reference (spec §1.7) */

/* x[0..k) are the non-base models. Vectors: rows of `cols` elements (whole tensor: cols = numel).
 * Returns how many vectors hit |1 + (N-1) cos| < 1e-12 (their output is set to the base). */
static int naive_model_stock(int k, const float *const *x, const float *w0, size_t numel, size_t cols, double *out)
{
    int degenerate = 0;
    for (size_t r0 = 0; r0 < numel; r0 += cols) {
        double sum = 0;
        int pairs = 0;
        for (int i = 0; i < k; i++)
            for (int j = i + 1; j < k; j++) {
                double ni = 0, nj = 0, d = 0;
                for (size_t e = r0; e < r0 + cols; e++) {
                    double oi = (double)x[i][e] - w0[e], oj = (double)x[j][e] - w0[e];
                    ni += oi * oi, nj += oj * oj, d += oi * oj;
                }
                double c = d / fmax(sqrt(ni) * sqrt(nj), 1e-6);
                sum += fmin(1, fmax(-1, c));
                pairs++;
            }
        double cos = sum / pairs, t = k * cos / (1 + (k - 1) * cos);
        if (fabs(1 + (k - 1) * cos) < 1e-12) { /* alloy's documented fallback (mergekit divides by zero) */
            degenerate++;
            t = 0;
        }
        for (size_t e = r0; e < r0 + cols; e++) {
            double avg = 0;
            for (int i = 0; i < k; i++) avg += x[i][e];
            avg /= k;
            out[e] = t * avg + (1 - t) * w0[e];
        }
    }
    return degenerate;
}

static void ms_case(int ndim, const int64_t *shape, int k, const float *const *xs, const float *base, int bpos,
                    int filter_wise, double tol)
{
    const struct alloy_method *m = alloy_method_find("model_stock");
    struct tj j;
    tj_setup(&j, m, ndim, shape, k + 1, bpos);
    j.gp[alloy_method_param(m, "filter_wise")] = filter_wise;
    const float *in[8];
    for (int i = 0, q = 0; i <= k; i++) in[i] = i == bpos ? base : xs[q++];
    size_t numel = (size_t)j.job.numel, cols = filter_wise ? (size_t)j.job.cols : numel;
    double *expect = malloc(numel * sizeof *expect);
    naive_model_stock(k, xs, base, numel, cols, expect);
    check_runs(m, &j.job, in, expect, tol);
    free(expect);
}

TEST(model_stock_registered)
{
    const struct alloy_method *m = alloy_method_find("model_stock");
    CHECK(m != NULL);
    if (!m) return;
    CHECK(m->flags & ALLOY_METHOD_RECTIFY);
    CHECK(m->flags & ALLOY_METHOD_WHOLE_ROWS);
    CHECK(m->flags & ALLOY_METHOD_NEEDS_BASE);
    int f = alloy_method_param(m, "filter_wise");
    CHECK(f >= 0 && m->params[f].scope == ALLOY_PARAM_GLOBAL && m->params[f].def == 0.0);
}

TEST(model_stock_golden)
{
    enum { N = 48 };
    static float x[4][N], base[N];
    for (int e = 0; e < N; e++) {
        base[e] = frand();
        float shared = frand() * 0.3f;
        for (int i = 0; i < 4; i++) x[i][e] = base[e] + shared + frand() * 0.2f; /* correlated task vectors */
    }
    const float *xs[4] = {x[0], x[1], x[2], x[3]};
    int64_t s2[] = {6, 8}, s1[] = {N}, s3[] = {2, 3, 8};
    for (int fw = 0; fw < 2; fw++) {
        for (int bpos = 0; bpos < 3; bpos++) ms_case(2, s2, 2, xs, base, bpos, fw, 2e-6);
        ms_case(2, s2, 3, xs, base, 3, fw, 2e-6);
        ms_case(2, s2, 4, xs, base, 1, fw, 2e-6);
        ms_case(1, s1, 3, xs, base, 0, fw, 2e-6);
        ms_case(3, s3, 3, xs, base, 2, fw, 2e-6);
    }
    /* filter-wise really differs from whole-tensor here */
    double e0[N], e1[N], diff = 0;
    naive_model_stock(3, xs, base, N, N, e0);
    naive_model_stock(3, xs, base, N, 8, e1);
    for (int e = 0; e < N; e++) diff = fmax(diff, fabs(e0[e] - e1[e]));
    CHECK(diff > 1e-4);
}

TEST(model_stock_zero_task_vectors_give_base)
{
    /* tiny task vectors: ||o_i|| ||o_j|| < 1e-6, so the guard (not the norms) divides */
    {
        enum { M = 20 };
        float b0[M], t1[M], t2[M], t3[M];
        for (int e = 0; e < M; e++) {
            b0[e] = 0;
            float c = frand();
            t1[e] = (c + 0.3f * frand()) * 1e-5f;
            t2[e] = (c + 0.3f * frand()) * 1e-5f;
            t3[e] = (c + 0.3f * frand()) * 1e-5f;
        }
        const float *ts[3] = {t1, t2, t3};
        double ex[M], ref[M];
        naive_model_stock(3, ts, b0, M, M, ex);
        for (int e = 0; e < M; e++) ref[e] = (t1[e] + t2[e] + (double)t3[e]) / 3;
        double diff = 0;
        for (int e = 0; e < M; e++) diff = fmax(diff, fabs(ex[e] - ref[e]));
        CHECK(diff > 1e-7); /* t is far from 1 */
        int64_t sm[] = {M};
        ms_case(1, sm, 3, ts, b0, 0, 0, 1e-7);
    }

    enum { N = 12 };
    float base[N], other[N];
    for (int e = 0; e < N; e++) base[e] = frand(), other[e] = base[e] + frand();
    const float *zs[2] = {base, base}, *mixed[2] = {base, other};
    int64_t s[] = {3, 4};
    for (int fw = 0; fw < 2; fw++) {
        ms_case(2, s, 2, zs, base, 0, fw, 1e-7);
        ms_case(2, s, 2, mixed, base, 0, fw, 1e-7); /* one zero task vector: cos = 0, t = 0 */
    }
    double ex[N];
    naive_model_stock(2, mixed, base, N, N, ex);
    for (int e = 0; e < N; e++) CHECK_NEAR(ex[e], base[e], 1e-12);
}

TEST(model_stock_opposite_task_vectors_fall_back_to_base)
{
    enum { R = 3, C = 4, N = R * C };
    float base[N], a[N], b[N];
    for (int e = 0; e < N; e++) {
        base[e] = (float)(int)(frand() * 8) / 8;
        float d = (float)((int)(frand() * 32) | 1) / 64;
        a[e] = base[e] + d;
        b[e] = e < C ? base[e] - d : base[e] + frand() * 0.5f; /* row 0: exactly opposite task vectors */
    }
    const float *xs[2] = {a, b};
    double ex[N];
    CHECK_INT(naive_model_stock(2, xs, base, N, C, ex), 1); /* row 0 hits the zero denominator */
    for (int e = 0; e < C; e++) CHECK(ex[e] == base[e]);
    int64_t s[] = {R, C};
    ms_case(2, s, 2, xs, base, 2, 1, 2e-6);
    /* whole tensor, all opposite */
    for (int e = 0; e < N; e++) b[e] = base[e] - (a[e] - base[e]);
    CHECK_INT(naive_model_stock(2, xs, base, N, N, ex), 1);
    ms_case(2, s, 2, xs, base, 0, 0, 1e-7);
}

TEST(model_stock_single_and_too_few_models)
{
    enum { N = 10 };
    float a[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand();
    const struct alloy_method *m = alloy_method_find("model_stock");
    struct tj j;
    int64_t s[] = {2, 5};
    struct alloy_err err = {0};
    const float *in[3] = {a, a, a};
    tj_setup(&j, m, 2, s, 1, 0);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 5, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
    tj_setup(&j, m, 2, s, 2, 0);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "model_stock: needs the base model plus at least two");
    tj_setup(&j, m, 2, s, 3, -1);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "base_model is required");
}

TEST(model_stock_thread_count_invariant)
{
    enum { N = 3000 };
    float *x[4], *o1 = malloc(N * 4), *o3 = malloc(N * 4);
    for (int i = 0; i < 4; i++) {
        x[i] = malloc(N * 4);
        for (int e = 0; e < N; e++) x[i][e] = frand();
    }
    const struct alloy_method *m = alloy_method_find("model_stock");
    struct tj j;
    int64_t s[] = {60, 50};
    const float *in[4] = {x[0], x[1], x[2], x[3]};
    struct alloy_pool *p1 = alloy_pool_new(1), *p3 = alloy_pool_new(3);
    struct alloy_err err = {0};
    for (int fw = 0; fw < 2; fw++) {
        tj_setup(&j, m, 2, s, 4, 1);
        j.gp[0] = fw;
        CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, p1, 200, &err), ALLOY_OK);
        CHECK_INT(alloy_method_run_memory(m, &j.job, in, o3, p3, 200, &err), ALLOY_OK);
        CHECK(memcmp(o1, o3, N * 4) == 0);
    }
    alloy_pool_free(p1), alloy_pool_free(p3);
    for (int i = 0; i < 4; i++) free(x[i]);
    free(o1), free(o3);
}
