/*
 * test_nuslerp.c — nuslerp (spec §1.3) against a naive double-precision
 * implementation written out here (vectors gathered per layout: whole
 * tensor, rows, or vectors along dim 0; normalise with max(||x||, 1e-7),
 * clamp, lerp where |sin θ| < 1e-8), with and without a base model, in
 * several chunkings and on 3 threads. Edge cases: parallel / antiparallel /
 * zero rows and columns, zero-sum weights, symmetry, 1-D, t = 0 / 1, one
 * model, bad configs, and bit-identical column statistics for any chunking.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- naive reference (spec §1.3) */

enum { FLAT, ROWS, COLS };

/* Element index of entry i of vector v in the given layout; sets *nvec, *len. */
static size_t layout(int mode, int ndim, const int64_t *shape, size_t *nvec, size_t *len)
{
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (size_t)shape[d];
    if (mode == FLAT || ndim <= 1) { *nvec = 1; *len = numel; return numel; }
    if (mode == ROWS) { *len = (size_t)shape[ndim - 1]; *nvec = numel / *len; return numel; }
    *len = (size_t)shape[0]; *nvec = numel / *len; return numel;
}

static size_t elem(int mode, int ndim, size_t nvec, size_t len, size_t v, size_t i)
{
    if (mode == FLAT || ndim <= 1) return i;
    if (mode == ROWS) return v * len + i;
    return i * nvec + v; /* along dim 0: stride = numel / shape[0] */
}

static void naive_nuslerp(int mode, int ndim, const int64_t *shape, double t, const float *xa, const float *xb,
                          const float *xB, double *out)
{
    size_t nvec, len;
    layout(mode, ndim, shape, &nvec, &len);
    double *a = malloc(len * sizeof *a), *b = malloc(len * sizeof *b);
    for (size_t v = 0; v < nvec; v++) {
        double na = 0, nb = 0, c = 0;
        for (size_t i = 0; i < len; i++) {
            size_t e = elem(mode, ndim, nvec, len, v, i);
            a[i] = (double)xa[e] - (xB ? xB[e] : 0.0);
            b[i] = (double)xb[e] - (xB ? xB[e] : 0.0);
            na += a[i] * a[i];
            nb += b[i] * b[i];
        }
        na = fmax(sqrt(na), 1e-7);
        nb = fmax(sqrt(nb), 1e-7);
        for (size_t i = 0; i < len; i++) c += (a[i] / na) * (b[i] / nb);
        c = fmin(1, fmax(-1, c));
        double th = acos(c), st = sin(th);
        for (size_t i = 0; i < len; i++) {
            double r = fabs(st) < 1e-8 ? (1 - t) * a[i] + t * b[i]
                                       : (sin((1 - t) * th) * a[i] + sin(t * th) * b[i]) / st;
            size_t e = elem(mode, ndim, nvec, len, v, i);
            out[e] = (xB ? xB[e] : 0.0) + r;
        }
    }
    free(a);
    free(b);
}

/* Runs nuslerp with models a (weight wa), b (weight wb) and optional base at position `bpos`
 * (0..2) among the inputs; compares with the naive result. */
static void nu_case(int mode, int ndim, const int64_t *shape, double wa, double wb, const float *a, const float *b,
                    const float *base, int bpos, double tol)
{
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    int n = base ? 3 : 2;
    tj_setup(&j, m, ndim, shape, n, base ? bpos : -1);
    const float *in[3];
    int k = 0, ia = -1, ib = -1;
    for (int i = 0; i < n; i++) {
        if (base && i == bpos) { in[i] = base; continue; }
        if (k++ == 0) { in[i] = a; ia = i; } else { in[i] = b; ib = i; }
    }
    int pw = alloy_method_param(m, "weight");
    j.tp[ia * m->nparams + pw] = wa;
    j.tp[ib * m->nparams + pw] = wb;
    j.gp[alloy_method_param(m, "nuslerp_flatten")] = mode == FLAT;
    j.gp[alloy_method_param(m, "nuslerp_row_wise")] = mode == COLS ? 1.0 : 0.0;
    double t = fabs(wa + wb) < 1e-6 ? 0.5 : wb / (wa + wb);
    double *expect = malloc((size_t)j.job.numel * sizeof *expect);
    naive_nuslerp(mode, ndim, shape, t, a, b, base, expect);
    check_runs(m, &j.job, in, expect, tol);
    free(expect);
}

TEST(nuslerp_registered)
{
    const struct alloy_method *m = alloy_method_find("nuslerp");
    CHECK(m != NULL);
    if (!m) return;
    CHECK(m->flags & ALLOY_METHOD_RECTIFY);
    CHECK(m->flags & ALLOY_METHOD_WHOLE_ROWS);
    int w = alloy_method_param(m, "weight"), f = alloy_method_param(m, "nuslerp_flatten"),
        r = alloy_method_param(m, "nuslerp_row_wise");
    CHECK(w >= 0 && m->params[w].scope == ALLOY_PARAM_TENSOR && m->params[w].required);
    CHECK(f >= 0 && m->params[f].scope == ALLOY_PARAM_GLOBAL && m->params[f].def == 1.0);
    CHECK(r >= 0 && m->params[r].scope == ALLOY_PARAM_GLOBAL && m->params[r].def == 0.0);
}

TEST(nuslerp_golden_all_layouts)
{
    enum { N = 6 * 7 * 2 };
    float a[N], b[N], base[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand() * 2, base[e] = frand() * 0.5f;
    int64_t s2[] = {12, 7}, s3[] = {3, 4, 7};
    for (int mode = FLAT; mode <= COLS; mode++) {
        nu_case(mode, 2, s2, 0.3, 0.9, a, b, NULL, 0, 2e-6);
        nu_case(mode, 3, s3, 0.3, 0.9, a, b, NULL, 0, 2e-6);
        for (int bpos = 0; bpos < 3; bpos++) {
            nu_case(mode, 2, s2, 1.0, 0.5, a, b, base, bpos, 2e-6);
            nu_case(mode, 3, s3, 2.0, -0.5, a, b, base, bpos, 2e-6);
        }
    }
}

TEST(nuslerp_zero_sum_weights_use_half)
{
    enum { N = 30 };
    float a[N], b[N], base[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand(), base[e] = frand();
    int64_t s[] = {5, 6};
    for (int mode = FLAT; mode <= COLS; mode++) nu_case(mode, 2, s, -0.5, 0.5, a, b, base, 2, 2e-6);
}

TEST(nuslerp_t0_t1_and_symmetry)
{
    enum { N = 48 };
    float a[N], b[N], base[N], o1[N], o2[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand(), base[e] = frand();
    int64_t s[] = {6, 8};
    for (int mode = FLAT; mode <= COLS; mode++) {
        nu_case(mode, 2, s, 1.0, 0.0, a, b, base, 0, 2e-6); /* t = 0 */
        nu_case(mode, 2, s, 0.0, 2.0, a, b, base, 0, 2e-6); /* t = 1 */
    }
    /* endpoints are the models themselves */
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    tj_setup(&j, m, 2, s, 2, -1);
    j.tp[0 * m->nparams] = 1.0;
    j.tp[1 * m->nparams] = 0.0;
    const float *in[2] = {a, b}, *sw[2] = {b, a};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, NULL, 0, &err), ALLOY_OK);
    for (int e = 0; e < N; e++) CHECK_NEAR(o1[e], a[e], 1e-6);
    /* swapping the models and their weights gives the same result */
    j.tp[0 * m->nparams] = 0.3;
    j.tp[1 * m->nparams] = 0.6;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, NULL, 0, &err), ALLOY_OK);
    j.tp[0 * m->nparams] = 0.6;
    j.tp[1 * m->nparams] = 0.3;
    CHECK_INT(alloy_method_run_memory(m, &j.job, sw, o2, NULL, 0, &err), ALLOY_OK);
    for (int e = 0; e < N; e++) CHECK_NEAR(o1[e], o2[e], 1e-6);
}

/* Rows (and, transposed, columns) that are parallel, antiparallel, zero, or generic. */
TEST(nuslerp_parallel_antiparallel_zero_vectors)
{
    enum { R = 4, C = 5, N = R * C };
    float a[N], b[N], at[N], bt[N];
    for (int c = 0; c < C; c++) {
        float v = frand();
        a[0 * C + c] = v, b[0 * C + c] = 3 * v;      /* parallel */
        a[1 * C + c] = v, b[1 * C + c] = -2 * v;     /* antiparallel */
        a[2 * C + c] = 0, b[2 * C + c] = frand();    /* a zero */
        a[3 * C + c] = frand(), b[3 * C + c] = frand();
    }
    double t = 0.3, e[N], et[N];
    for (int c = 0; c < C; c++) {
        e[0 * C + c] = (1 - t) * a[c] + t * b[c];
        e[1 * C + c] = (1 - t) * a[C + c] + t * b[C + c];
        e[2 * C + c] = sin(t * M_PI / 2) * b[2 * C + c]; /* θ = π/2, not t * b */
    }
    /* row 3 from the slerp formula written out */
    double aa = 0, bb = 0, ab = 0;
    for (int c = 0; c < C; c++) aa += a[3 * C + c] * (double)a[3 * C + c], bb += b[3 * C + c] * (double)b[3 * C + c],
                                ab += a[3 * C + c] * (double)b[3 * C + c];
    double th = acos(ab / sqrt(aa * bb));
    for (int c = 0; c < C; c++)
        e[3 * C + c] = (sin((1 - t) * th) * a[3 * C + c] + sin(t * th) * b[3 * C + c]) / sin(th);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            at[c * R + r] = a[r * C + c];
            bt[c * R + r] = b[r * C + c];
            et[c * R + r] = e[r * C + c];
        }

    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    int64_t s[] = {R, C}, st[] = {C, R};
    int pw = alloy_method_param(m, "weight"), pf = alloy_method_param(m, "nuslerp_flatten"),
        pr = alloy_method_param(m, "nuslerp_row_wise");
    tj_setup(&j, m, 2, s, 2, -1);
    j.tp[0 * m->nparams + pw] = 0.7, j.tp[1 * m->nparams + pw] = 0.3;
    j.gp[pf] = 0;
    const float *in[2] = {a, b}, *int_[2] = {at, bt};
    check_runs(m, &j.job, in, e, 2e-6);
    tj_setup(&j, m, 2, st, 2, -1);
    j.tp[0 * m->nparams + pw] = 0.7, j.tp[1 * m->nparams + pw] = 0.3;
    j.gp[pf] = 0;
    j.gp[pr] = 1;
    check_runs(m, &j.job, int_, et, 2e-6);
    /* whole-tensor: b = -a exactly lerps too */
    float neg[N];
    double en[N];
    for (int i = 0; i < N; i++) neg[i] = -a[i], en[i] = (1 - 2 * t) * a[i];
    tj_setup(&j, m, 2, s, 2, -1);
    j.tp[0 * m->nparams + pw] = 0.7, j.tp[1 * m->nparams + pw] = 0.3;
    const float *inn[2] = {a, neg};
    check_runs(m, &j.job, inn, en, 1e-6);
}

TEST(nuslerp_1d_one_vector_in_every_layout)
{
    /* a vector with norm below the 1e-7 floor: â = a / 1e-7, not a unit vector */
    {
        enum { M = 12 };
        float ta[M], tb[M];
        for (int e = 0; e < M; e++) tb[e] = frand(), ta[e] = (tb[e] + 0.5f * frand()) * 3e-9f;
        int64_t sm[] = {M};
        nu_case(FLAT, 1, sm, 0.5, 0.5, ta, tb, NULL, 0, 2e-6);
    }

    enum { N = 37 };
    float a[N], b[N], base[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand(), base[e] = frand();
    int64_t s[] = {N};
    for (int mode = FLAT; mode <= COLS; mode++) {
        nu_case(mode, 1, s, 0.4, 0.6, a, b, base, 1, 2e-6);
        nu_case(mode, 1, s, 0.4, 0.6, a, b, NULL, 0, 2e-6);
    }
}

TEST(nuslerp_single_model_unchanged)
{
    enum { N = 11 };
    float a[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand();
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 1, -1);
    const float *in[1] = {a};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 3, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
}

TEST(nuslerp_config_errors)
{
    enum { N = 4 };
    float a[N] = {1, 2, 3, 4}, out[N];
    const float *in[4] = {a, a, a, a};
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    struct alloy_err err = {0};
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 2, 0); /* base is one of the two models */
    j.tp[0] = j.tp[m->nparams] = 1;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "third model");
    tj_setup(&j, m, 1, s, 3, -1);
    for (int i = 0; i < 3; i++) j.tp[i * m->nparams] = 1;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "exactly two");
    tj_setup(&j, m, 1, s, 3, 2);
    j.tp[0] = 1; /* model 1 has no weight; the base needs none */
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "m1 has no `weight`");
}

/* Column statistics are exact sums: same bits for every chunking and thread count. */
TEST(nuslerp_row_wise_bit_identical_across_chunkings)
{
    enum { R = 50, C = 24, N = R * C };
    float *a = malloc(N * 4), *b = malloc(N * 4), *base = malloc(N * 4), *o0 = malloc(N * 4), *o = malloc(N * 4);
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand() * 1e-3f, base[e] = frand() * 100;
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    int64_t s[] = {R, C};
    tj_setup(&j, m, 2, s, 3, 1);
    j.tp[0] = 0.25, j.tp[2 * m->nparams] = 0.75;
    j.gp[alloy_method_param(m, "nuslerp_flatten")] = 0;
    j.gp[alloy_method_param(m, "nuslerp_row_wise")] = 1;
    const float *in[3] = {a, base, b};
    struct alloy_pool *p3 = alloy_pool_new(3);
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o0, NULL, 0, &err), ALLOY_OK);
    const uint64_t chunks[] = {1, 7, 24, 100, 999};
    for (int p = 0; p < 2; p++)
        for (int ci = 0; ci < 5; ci++) {
            CHECK_INT(alloy_method_run_memory(m, &j.job, in, o, p ? p3 : NULL, chunks[ci], &err), ALLOY_OK);
            CHECK_MSG(memcmp(o, o0, N * 4) == 0, "chunk %llu pool %d differs", (unsigned long long)chunks[ci], p);
        }
    double *e = malloc(N * sizeof *e);
    naive_nuslerp(COLS, 2, s, 0.75, a, b, base, e);
    for (int i = 0; i < N; i++) CHECK_NEAR(o0[i], e[i], 2e-6 * 100);
    alloy_pool_free(p3);
    free(a), free(b), free(base), free(o0), free(o), free(e);
}

/* Column state is O(numel / shape[0]); beyond 2^20 vectors the merge is refused, before any data is read. */
TEST(nuslerp_row_wise_refuses_huge_column_state)
{
    static float dummy[4];
    const struct alloy_method *m = alloy_method_find("nuslerp");
    struct tj j;
    int64_t s[] = {2, 1025, 1024};
    tj_setup(&j, m, 3, s, 2, -1);
    j.tp[0] = j.tp[m->nparams] = 1;
    j.gp[alloy_method_param(m, "nuslerp_flatten")] = 0;
    j.gp[alloy_method_param(m, "nuslerp_row_wise")] = 1;
    const float *in[2] = {dummy, dummy};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, dummy, NULL, 4, &err), ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "1049600 vectors");
}
