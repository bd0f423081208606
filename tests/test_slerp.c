/*
 * test_slerp.c — slerp (spec §1.2) against a naive double-precision
 * implementation written out here: per-element normalisation with the 1e-8
 * guard, the 0.9995 lerp threshold, the zero-tensor rule; run single-chunk,
 * with 5- and 64-element chunks and on 3 threads. Edge cases: parallel,
 * antiparallel, zero tensors, t = 0 / 1, one model, 1-D, bad configs.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- naive reference (spec §1.2) */

static void naive_slerp(double t, const float *v0, const float *v1, size_t n, double *out)
{
    double n0 = 0, n1 = 0, dot = 0;
    for (size_t e = 0; e < n; e++) {
        n0 += (double)v0[e] * v0[e];
        n1 += (double)v1[e] * v1[e];
    }
    n0 = sqrt(n0);
    n1 = sqrt(n1);
    for (size_t e = 0; e < n; e++) {
        double u0 = n0 > 1e-8 ? v0[e] / n0 : v0[e];
        double u1 = n1 > 1e-8 ? v1[e] / n1 : v1[e];
        dot += u0 * u1;
    }
    if (fabs(dot) > 0.9995) {
        for (size_t e = 0; e < n; e++) out[e] = (1 - t) * v0[e] + t * v1[e];
        return;
    }
    double th = acos(dot);
    for (size_t e = 0; e < n; e++) out[e] = sin(th - th * t) / sin(th) * v0[e] + sin(th * t) / sin(th) * v1[e];
}

/* in[base] is v0. */
static void slerp_case(int ndim, const int64_t *shape, int base, double t, const float *a, const float *b,
                       double tol)
{
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, ndim, shape, 2, base);
    j.gp[alloy_method_param(m, "t")] = t;
    size_t n = (size_t)j.job.numel;
    const float *in[2];
    in[base] = a;
    in[1 - base] = b;
    double *expect = malloc(n * sizeof *expect);
    naive_slerp(t, a, b, n, expect);
    check_runs(m, &j.job, in, expect, tol);
    free(expect);
}

TEST(slerp_registered)
{
    const struct alloy_method *m = alloy_method_find("slerp");
    CHECK(m != NULL);
    if (!m) return;
    CHECK(m->flags & ALLOY_METHOD_RECTIFY);
    int k = alloy_method_param(m, "t");
    CHECK(k >= 0 && m->params[k].scope == ALLOY_PARAM_GLOBAL && m->params[k].required && isnan(m->params[k].def));
}

TEST(slerp_golden_random_2d)
{
    enum { R = 7, C = 9, N = R * C };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand() * 3;
    int64_t shape[] = {R, C};
    for (int base = 0; base < 2; base++) {
        slerp_case(2, shape, base, 0.3, a, b, 2e-6);
        slerp_case(2, shape, base, 0.5, a, b, 2e-6);
        slerp_case(2, shape, base, 1.7, a, b, 2e-6); /* extrapolation is allowed */
    }
}

TEST(slerp_t0_t1_endpoints)
{
    enum { N = 40 };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand();
    int64_t shape[] = {N};
    double ea[N], eb[N];
    for (int e = 0; e < N; e++) ea[e] = a[e], eb[e] = b[e];
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, 1, shape, 2, 0);
    const float *in[2] = {a, b};
    j.gp[0] = 0.0;
    check_runs(m, &j.job, in, ea, 1e-6);
    j.gp[0] = 1.0;
    check_runs(m, &j.job, in, eb, 1e-6);
}

TEST(slerp_nearly_colinear_lerps)
{
    enum { N = 30 };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = a[e] * 1.5f + 0.001f * frand();
    int64_t shape[] = {5, 6};
    slerp_case(2, shape, 0, 0.25, a, b, 1e-6); /* naive takes the |d| > 0.9995 branch */
}

TEST(slerp_close_but_below_threshold)
{
    enum { N = 30 };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = a[e] + 0.1f * frand();
    double n0 = 0, n1 = 0, d = 0;
    for (int e = 0; e < N; e++) n0 += (double)a[e] * a[e], n1 += (double)b[e] * b[e], d += (double)a[e] * b[e];
    d /= sqrt(n0 * n1);
    CHECK_MSG(d > 0.95 && d < 0.9995, "cos %g: the data should sit between 0.95 and the threshold", d);
    int64_t shape[] = {N};
    slerp_case(1, shape, 1, 0.4, a, b, 2e-6); /* slerp, not lerp */
}

TEST(slerp_tiny_norm_is_not_normalised)
{
    /* ||v0|| < 1e-8: v0 enters the dot product un-normalised, so θ is close to π/2 */
    enum { N = 16 };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand() * 1e-10f, b[e] = a[e] * 1e10f + 0.3f * frand();
    int64_t shape[] = {N};
    slerp_case(1, shape, 0, 0.5, a, b, 2e-6);
}

TEST(slerp_parallel_and_antiparallel)
{
    enum { N = 24 };
    float a[N], par[N], anti[N];
    for (int e = 0; e < N; e++) a[e] = frand(), par[e] = 2 * a[e], anti[e] = -a[e];
    int64_t shape[] = {4, 6};
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, 2, shape, 2, 0);
    j.gp[0] = 0.3;
    double ep[N], ea[N];
    for (int e = 0; e < N; e++) {
        ep[e] = 0.7 * a[e] + 0.3 * 2 * a[e]; /* lerp */
        ea[e] = (1 - 2 * 0.3) * a[e];
    }
    const float *in1[2] = {a, par}, *in2[2] = {a, anti};
    check_runs(m, &j.job, in1, ep, 1e-6);
    check_runs(m, &j.job, in2, ea, 1e-6);
}

TEST(slerp_zero_tensors)
{
    enum { N = 20 };
    float a[N], z[N] = {0};
    for (int e = 0; e < N; e++) a[e] = frand();
    int64_t shape[] = {N};
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, 1, shape, 2, 0);
    double t = 0.4;
    j.gp[0] = t;
    double e1[N], e2[N], e3[N];
    for (int e = 0; e < N; e++) {
        e1[e] = cos(t * M_PI / 2) * a[e]; /* zero other model: d = 0, θ = π/2 — not t * v1 */
        e2[e] = sin(t * M_PI / 2) * a[e]; /* zero base */
        e3[e] = 0;
    }
    const float *in1[2] = {a, z}, *in2[2] = {z, a}, *in3[2] = {z, z};
    check_runs(m, &j.job, in1, e1, 1e-6);
    check_runs(m, &j.job, in2, e2, 1e-6);
    check_runs(m, &j.job, in3, e3, 0);
}

TEST(slerp_single_model_unchanged)
{
    enum { N = 17 };
    float a[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand();
    int64_t shape[] = {N};
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, 1, shape, 1, -1);
    j.gp[0] = 0.5;
    const float *in[1] = {a};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 4, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
}

TEST(slerp_1d_and_3d)
{
    enum { N = 60 };
    float a[N], b[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand();
    int64_t s1[] = {N}, s3[] = {3, 4, 5};
    slerp_case(1, s1, 1, 0.6, a, b, 2e-6);
    slerp_case(3, s3, 0, 0.6, a, b, 2e-6);
}

TEST(slerp_config_errors)
{
    enum { N = 6 };
    float a[N] = {1, 2, 3, 4, 5, 6}, out[N];
    const float *in[3] = {a, a, a};
    int64_t shape[] = {N};
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    struct alloy_err err = {0};
    tj_setup(&j, m, 1, shape, 3, 0);
    j.gp[0] = 0.5;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "exactly two");
    CHECK_STR_CONTAINS(err.msg, "test.yml: tensor 'model.layers.0.self_attn.q_proj.weight': slerp:");
    tj_setup(&j, m, 1, shape, 2, -1);
    j.gp[0] = 0.5;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "base_model");
    tj_setup(&j, m, 1, shape, 2, 0);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "`t` is required");
}

TEST(slerp_thread_count_invariant)
{
    enum { R = 64, C = 33, N = R * C };
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *o1 = malloc(N * 4), *o3 = malloc(N * 4);
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand();
    int64_t shape[] = {R, C};
    const struct alloy_method *m = alloy_method_find("slerp");
    struct tj j;
    tj_setup(&j, m, 2, shape, 2, 1);
    j.gp[0] = 0.35;
    const float *in[2] = {a, b};
    struct alloy_pool *p1 = alloy_pool_new(1), *p3 = alloy_pool_new(3);
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, p1, 100, &err), ALLOY_OK);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o3, p3, 100, &err), ALLOY_OK);
    CHECK(memcmp(o1, o3, N * sizeof *o1) == 0);
    alloy_pool_free(p1);
    alloy_pool_free(p3);
    free(a), free(b), free(o1), free(o3);
}
