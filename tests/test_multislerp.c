/*
 * test_multislerp.c — multislerp (spec §1.4) against the tangent-space
 * algorithm written out naively here, element by element in double
 * (U_i, m, V_i, v, τ, the exponential map, Σ w_i N_i), with and without a
 * base, normalize_weights on/off, several eps, in several chunkings and on
 * 3 threads. Edge cases: one non-base model, only the base, the two-model
 * linear fallback, the zero-mean error, zero-sum weights, 1-D / 3-D.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- naive reference (spec §1.4) */

/* x[0..k) are the non-base models. Returns 0, or -1 for the "weighted sum is zero" error. */
static int naive_multislerp(int k, const float *const *x, const float *base, const double *wt, int normalize,
                            double eps, size_t n, double *out)
{
    double w[8], nrm[8], wsum = 0;
    double *T[8], *U[8], *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    for (int i = 0; i < k; i++) wsum += wt[i];
    for (int i = 0; i < k; i++) {
        w[i] = normalize ? wt[i] / wsum : wt[i];
        T[i] = malloc(n * sizeof *T[i]);
        U[i] = malloc(n * sizeof *U[i]);
        nrm[i] = 0;
        for (size_t e = 0; e < n; e++) {
            T[i][e] = (double)x[i][e] - (base ? base[e] : 0.0);
            nrm[i] += T[i][e] * T[i][e];
        }
        nrm[i] = sqrt(nrm[i]);
        for (size_t e = 0; e < n; e++) U[i][e] = T[i][e] / (nrm[i] + eps);
    }
    for (int i = 0; i < k; i++)
        for (size_t e = 0; e < n; e++) m[e] += w[i] * U[i][e];
    double mn = 0;
    for (size_t e = 0; e < n; e++) mn += m[e] * m[e];
    mn = sqrt(mn);
    int rc = 0;
    if (mn < eps) {
        if (k != 2) { rc = -1; goto done; }
        for (size_t e = 0; e < n; e++) out[e] = w[0] * T[0][e] + w[1] * T[1][e] + (base ? base[e] : 0.0);
        goto done;
    }
    for (size_t e = 0; e < n; e++) m[e] /= mn;
    for (int i = 0; i < k; i++) {
        double dot = 0;
        for (size_t e = 0; e < n; e++) dot += U[i][e] * m[e];
        for (size_t e = 0; e < n; e++) v[e] += w[i] * (U[i][e] - dot * m[e]); /* Σ w_i V_i */
    }
    double tn = 0, avg = 0;
    for (size_t e = 0; e < n; e++) tn += v[e] * v[e];
    tn = sqrt(tn) + eps;
    for (int i = 0; i < k; i++) avg += w[i] * nrm[i];
    for (size_t e = 0; e < n; e++)
        out[e] = (m[e] * cos(tn) + v[e] * (sin(tn) / tn)) * avg + (base ? base[e] : 0.0);
done:
    for (int i = 0; i < k; i++) free(T[i]), free(U[i]);
    free(m);
    free(v);
    return rc;
}

/* Models xs[0..k) with weights, base (or NULL) placed at input position bpos. */
static void msl_case(int ndim, const int64_t *shape, int k, const float *const *xs, const double *w,
                     const float *base, int bpos, int normalize, double eps, double tol)
{
    const struct alloy_method *m = alloy_method_find("multislerp");
    struct tj j;
    int n = k + (base != NULL);
    tj_setup(&j, m, ndim, shape, n, base ? bpos : -1);
    const float *in[8];
    int pw = alloy_method_param(m, "weight");
    for (int i = 0, q = 0; i < n; i++) {
        if (base && i == bpos) { in[i] = base; continue; }
        in[i] = xs[q];
        j.tp[i * m->nparams + pw] = w[q++];
    }
    j.gp[alloy_method_param(m, "normalize_weights")] = normalize;
    j.gp[alloy_method_param(m, "eps")] = eps;
    double *expect = malloc((size_t)j.job.numel * sizeof *expect);
    CHECK_INT(naive_multislerp(k, xs, base, w, normalize, eps, (size_t)j.job.numel, expect), 0);
    check_runs(m, &j.job, in, expect, tol);
    free(expect);
}

TEST(multislerp_registered)
{
    const struct alloy_method *m = alloy_method_find("multislerp");
    CHECK(m != NULL);
    if (!m) return;
    CHECK(!(m->flags & ALLOY_METHOD_RECTIFY));
    int w = alloy_method_param(m, "weight"), nw = alloy_method_param(m, "normalize_weights"),
        e = alloy_method_param(m, "eps");
    CHECK(w >= 0 && m->params[w].scope == ALLOY_PARAM_TENSOR && m->params[w].required);
    CHECK(nw >= 0 && m->params[nw].scope == ALLOY_PARAM_GLOBAL && m->params[nw].def == 1.0);
    CHECK(e >= 0 && m->params[e].scope == ALLOY_PARAM_GLOBAL && m->params[e].def == 1e-8);
}

TEST(multislerp_golden)
{
    enum { N = 60 };
    static float x[4][N], base[N];
    for (int e = 0; e < N; e++) {
        base[e] = frand();
        for (int i = 0; i < 4; i++) x[i][e] = base[e] + frand() * (float)(i + 1) * 0.1f;
    }
    const float *xs[4] = {x[0], x[1], x[2], x[3]};
    double w3[] = {0.5, 0.3, 0.2}, w4[] = {1.0, 2.0, 0.5, 1.5};
    int64_t s2[] = {6, 10}, s1[] = {N}, s3[] = {3, 4, 5};
    for (int bpos = 0; bpos < 4; bpos++) msl_case(2, s2, 3, xs, w3, base, bpos, 1, 1e-8, 2e-6);
    msl_case(2, s2, 4, xs, w4, NULL, 0, 0, 1e-8, 2e-6);  /* no base, weights not normalised */
    msl_case(1, s1, 4, xs, w4, base, 2, 1, 1e-8, 2e-6);
    msl_case(3, s3, 2, xs, w4, base, 0, 0, 1e-8, 2e-6);
    msl_case(2, s2, 3, xs, w3, base, 1, 1, 0.05, 2e-6);  /* a large eps changes U and τ */
}

TEST(multislerp_single_model_and_base_only)
{
    enum { N = 13 };
    float a[N], base[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand(), base[e] = frand();
    const struct alloy_method *m = alloy_method_find("multislerp");
    struct tj j;
    int64_t s[] = {N};
    struct alloy_err err = {0};
    tj_setup(&j, m, 1, s, 2, 0); /* base + one model: the model as is, no base added back */
    j.tp[1 * m->nparams] = 0.4;
    const float *in[2] = {base, a};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 5, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
    tj_setup(&j, m, 1, s, 1, 0); /* only the base */
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 5, &err), ALLOY_OK);
    CHECK(memcmp(out, base, sizeof base) == 0);
}

TEST(multislerp_two_opposite_models_fall_back_to_linear)
{
    enum { N = 24 };
    float a[N], b[N], base[N];
    for (int e = 0; e < N; e++) {
        base[e] = (float)(int)(frand() * 8) / 8;      /* dyadic values: a - base == -(b - base) exactly */
        float d = (float)((int)(frand() * 32) | 1) / 64;
        a[e] = base[e] + d;
        b[e] = base[e] - d;
    }
    const float *xs[2] = {a, b};
    double w[] = {0.5, 0.5};
    int64_t s[] = {4, 6};
    double expect[N], direct[N];
    CHECK_INT(naive_multislerp(2, xs, base, w, 1, 1e-8, N, expect), 0);
    for (int e = 0; e < N; e++) direct[e] = base[e] + 0.5 * ((double)a[e] - base[e]) + 0.5 * ((double)b[e] - base[e]);
    for (int e = 0; e < N; e++) CHECK_NEAR(expect[e], direct[e], 1e-6); /* the naive code took the fallback */
    msl_case(2, s, 2, xs, w, base, 0, 1, 1e-8, 2e-6);
    double w2[] = {0.2, 0.6}; /* unequal weights, no base: m != 0, the sphere path */
    msl_case(2, s, 2, xs, w2, NULL, 0, 0, 1e-8, 2e-6);
}

TEST(multislerp_zero_mean_of_three_is_an_error)
{
    enum { N = 10 };
    float a[N], b[N], c[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = -a[e], c[e] = 0;
    const struct alloy_method *m = alloy_method_find("multislerp");
    struct tj j;
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 3, -1);
    for (int i = 0; i < 3; i++) j.tp[i * m->nparams] = 1.0;
    const float *in[3] = {a, b, c};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 3, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "multislerp: the weighted sum");
    double wt[3] = {1, 1, 1};
    const float *xs[3] = {a, b, c};
    double ex[N];
    CHECK_INT(naive_multislerp(3, xs, NULL, wt, 1, 1e-8, N, ex), -1);
}

TEST(multislerp_config_errors)
{
    enum { N = 4 };
    float a[N] = {1, 2, 3, 4}, out[N];
    const float *in[3] = {a, a, a};
    const struct alloy_method *m = alloy_method_find("multislerp");
    struct tj j;
    struct alloy_err err = {0};
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 3, 0);
    j.tp[1 * m->nparams] = 0.5, j.tp[2 * m->nparams] = -0.5;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "sum to 0");
    j.tp[2 * m->nparams] = NAN;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "m2 has no `weight`");
    j.tp[2 * m->nparams] = 1;
    j.gp[alloy_method_param(m, "eps")] = -1;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "`eps`");
}

TEST(multislerp_thread_count_invariant)
{
    enum { N = 3000 };
    float *x[3], *o1 = malloc(N * 4), *o3 = malloc(N * 4);
    for (int i = 0; i < 3; i++) {
        x[i] = malloc(N * 4);
        for (int e = 0; e < N; e++) x[i][e] = frand();
    }
    const struct alloy_method *m = alloy_method_find("multislerp");
    struct tj j;
    int64_t s[] = {30, 100};
    tj_setup(&j, m, 2, s, 3, 2);
    j.tp[0] = 0.7, j.tp[m->nparams] = 0.3;
    const float *in[3] = {x[0], x[1], x[2]};
    struct alloy_pool *p1 = alloy_pool_new(1), *p3 = alloy_pool_new(3);
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, p1, 128, &err), ALLOY_OK);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o3, p3, 128, &err), ALLOY_OK);
    CHECK(memcmp(o1, o3, N * 4) == 0);
    alloy_pool_free(p1), alloy_pool_free(p3);
    for (int i = 0; i < 3; i++) free(x[i]);
    free(o1), free(o3);
}
