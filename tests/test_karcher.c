/*
 * test_karcher.c — karcher (spec §1.5) against the iteration written out
 * naively here on explicit double vectors (unit vectors, valid set, initial
 * mean and its fallback, tangent sum skipping θ < tol, exponential map,
 * renormalisation, Σ n_i / N scale), for several max_iter / tol values, in
 * several chunkings and on 3 threads. Edge cases: identical models, a
 * zero-norm model, all zeros, antipodal models, one model, the base being
 * an ordinary input, bad parameters.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "method_util.h"

#include <stdint.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- naive reference (spec §1.5) */

static double dotv(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t e = 0; e < n; e++) s += a[e] * b[e];
    return s;
}

static void naive_karcher(int n, const float *const *x, size_t len, int max_iter, double tol, double *out)
{
    double *U[8], nrm[8], alpha[8];
    double *mean = calloc(len, sizeof *mean), *tg = malloc(len * sizeof *tg);
    int valid[8], nv = 0;
    for (int i = 0; i < n; i++) {
        U[i] = malloc(len * sizeof *U[i]);
        nrm[i] = 0;
        for (size_t e = 0; e < len; e++) nrm[i] += (double)x[i][e] * x[i][e];
        nrm[i] = sqrt(nrm[i]);
        for (size_t e = 0; e < len; e++) U[i][e] = nrm[i] == 0 ? 0 : x[i][e] / nrm[i];
        if (nrm[i] > tol) valid[nv++] = i;
    }
    if (!nv) {
        for (size_t e = 0; e < len; e++) out[e] = 0;
        goto done;
    }
    for (int q = 0; q < nv; q++) alpha[q] = (1.0 / n) / (nv * (1.0 / n));
    for (int q = 0; q < nv; q++)
        for (size_t e = 0; e < len; e++) mean[e] += alpha[q] * U[valid[q]][e];
    double mn = sqrt(dotv(mean, mean, len));
    for (size_t e = 0; e < len; e++) mean[e] = mn < tol ? U[valid[0]][e] : mean[e] / mn;
    for (int it = 0; it < max_iter; it++) {
        for (size_t e = 0; e < len; e++) tg[e] = 0;
        for (int q = 0; q < nv; q++) {
            const double *u = U[valid[q]];
            double c = fmin(1, fmax(-1, dotv(mean, u, len)));
            double th = acos(c);
            if (th < tol) continue;
            for (size_t e = 0; e < len; e++) tg[e] += alpha[q] * (th / sin(th)) * (u[e] - c * mean[e]);
        }
        double tn = sqrt(dotv(tg, tg, len));
        if (tn < tol) break;
        for (size_t e = 0; e < len; e++) mean[e] = cos(tn) * mean[e] + sin(tn) * (tg[e] / tn);
        double un = sqrt(dotv(mean, mean, len));
        if (un > tol)
            for (size_t e = 0; e < len; e++) mean[e] /= un;
    }
    double scale = 0;
    for (int i = 0; i < n; i++) scale += (1.0 / n) * nrm[i];
    for (size_t e = 0; e < len; e++) out[e] = scale * mean[e];
done:
    for (int i = 0; i < n; i++) free(U[i]);
    free(mean);
    free(tg);
}

static void ka_case(int ndim, const int64_t *shape, int n, const float *const *x, int base, double max_iter,
                    double tol, double eps)
{
    const struct alloy_method *m = alloy_method_find("karcher");
    struct tj j;
    tj_setup(&j, m, ndim, shape, n, base);
    j.gp[alloy_method_param(m, "max_iter")] = max_iter;
    j.gp[alloy_method_param(m, "tol")] = tol;
    double *expect = malloc((size_t)j.job.numel * sizeof *expect);
    naive_karcher(n, x, (size_t)j.job.numel, (int)max_iter, tol, expect);
    check_runs(m, &j.job, x, expect, eps);
    free(expect);
}

TEST(karcher_registered)
{
    const struct alloy_method *m = alloy_method_find("karcher");
    CHECK(m != NULL);
    if (!m) return;
    CHECK(!(m->flags & ALLOY_METHOD_RECTIFY));
    CHECK(!(m->flags & ALLOY_METHOD_NEEDS_BASE));
    int it = alloy_method_param(m, "max_iter"), tol = alloy_method_param(m, "tol");
    CHECK(it >= 0 && m->params[it].scope == ALLOY_PARAM_GLOBAL && m->params[it].def == 10);
    CHECK(tol >= 0 && m->params[tol].scope == ALLOY_PARAM_GLOBAL && m->params[tol].def == 1e-5);
    CHECK_INT(alloy_method_param(m, "weight"), -1); /* weights are ignored */
}

TEST(karcher_golden)
{
    enum { N = 60 };
    static float x[4][N];
    for (int e = 0; e < N; e++) {
        float common = frand();
        for (int i = 0; i < 4; i++) x[i][e] = common + frand() * 0.8f * (float)(i + 1); /* spread directions */
    }
    const float *xs[4] = {x[0], x[1], x[2], x[3]};
    int64_t s2[] = {6, 10}, s1[] = {N}, s3[] = {2, 5, 6};
    ka_case(2, s2, 3, xs, -1, 10, 1e-5, 2e-6);
    ka_case(2, s2, 4, xs, -1, 10, 1e-5, 2e-6);
    ka_case(1, s1, 4, xs, 2, 10, 1e-5, 2e-6);  /* a base is just another input */
    ka_case(3, s3, 3, xs, 0, 10, 1e-5, 2e-6);
    ka_case(2, s2, 3, xs, -1, 0, 1e-5, 2e-6);  /* normalised arithmetic mean direction */
    ka_case(2, s2, 3, xs, -1, 1, 1e-5, 2e-6);
    ka_case(2, s2, 3, xs, -1, 50, 1e-12, 2e-6);
    ka_case(2, s2, 4, xs, -1, 3, 0.2, 2e-6);    /* a large tol stops early */
    /* close directions (angles of a few 1e-2): every θ_i is small but above tol, and the
     * tangent (O(θ^3) at the arithmetic mean) is above tol only with a small tol */
    static float y[3][N];
    for (int e = 0; e < N; e++) {
        float common = frand();
        for (int i = 0; i < 3; i++) y[i][e] = common + frand() * 0.02f * (float)(i + 1);
    }
    const float *ys[3] = {y[0], y[1], y[2]};
    ka_case(2, s2, 3, ys, -1, 10, 1e-9, 1e-7);
    double e0[N], e10[N], diff = 0;
    naive_karcher(3, ys, N, 0, 1e-9, e0);
    naive_karcher(3, ys, N, 10, 1e-9, e10);
    for (int e = 0; e < N; e++) diff = fmax(diff, fabs(e0[e] - e10[e]));
    CHECK_MSG(diff > 1e-8, "diff %g", diff); /* the iteration moved the mean */
}

TEST(karcher_iterations_matter)
{
    /* the converged mean differs from the plain normalised mean: the naive code is not trivially satisfied */
    enum { N = 20 };
    float a[N], b[N], c[N];
    for (int e = 0; e < N; e++) a[e] = frand(), b[e] = frand() * 3, c[e] = a[e] * 0.5f + frand() * 0.1f;
    const float *xs[3] = {a, b, c};
    double e0[N], e10[N], diff = 0;
    naive_karcher(3, xs, N, 0, 1e-5, e0);
    naive_karcher(3, xs, N, 10, 1e-5, e10);
    for (int e = 0; e < N; e++) diff = fmax(diff, fabs(e0[e] - e10[e]));
    CHECK(diff > 1e-3);
    int64_t s[] = {N};
    ka_case(1, s, 3, xs, -1, 10, 1e-5, 2e-6);
}

TEST(karcher_identical_zero_and_antipodal_models)
{
    enum { N = 30 };
    float a[N], z[N] = {0}, neg[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand(), neg[e] = -a[e];
    const struct alloy_method *m = alloy_method_find("karcher");
    struct tj j;
    int64_t s[] = {5, 6};
    struct alloy_err err = {0};

    /* identical models: the model itself */
    tj_setup(&j, m, 2, s, 3, -1);
    const float *same[3] = {a, a, a};
    double ea[N];
    for (int e = 0; e < N; e++) ea[e] = a[e];
    check_runs(m, &j.job, same, ea, 1e-6);

    /* a zero model leaves the direction alone but counts in the norm average */
    const float *withz[3] = {a, z, a};
    double ez[N];
    for (int e = 0; e < N; e++) ez[e] = a[e] * (2.0 / 3.0);
    check_runs(m, &j.job, withz, ez, 1e-6);

    /* all zeros: zeros */
    const float *zeros[3] = {z, z, z};
    CHECK_INT(alloy_method_run_memory(m, &j.job, zeros, out, NULL, 7, &err), ALLOY_OK);
    for (int e = 0; e < N; e++) CHECK(out[e] == 0);

    /* antipodal pair: the mean is zero, so u = the first model's direction; the opposite model's
     * tangent vanishes; the result is ||a|| * a / ||a|| = a */
    tj_setup(&j, m, 2, s, 2, -1);
    const float *anti[2] = {a, neg};
    double ex[N];
    naive_karcher(2, anti, N, 10, 1e-5, ex);
    for (int e = 0; e < N; e++) CHECK_NEAR(ex[e], a[e], 1e-9);
    check_runs(m, &j.job, anti, ex, 1e-6);
}

TEST(karcher_single_model_unchanged)
{
    enum { N = 9 };
    float a[N], out[N];
    for (int e = 0; e < N; e++) a[e] = frand();
    const struct alloy_method *m = alloy_method_find("karcher");
    struct tj j;
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 1, 0);
    const float *in[1] = {a};
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 2, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
}

TEST(karcher_config_errors)
{
    enum { N = 4 };
    float a[N] = {1, 2, 3, 4}, out[N];
    const float *in[2] = {a, a};
    const struct alloy_method *m = alloy_method_find("karcher");
    struct tj j;
    struct alloy_err err = {0};
    int64_t s[] = {N};
    tj_setup(&j, m, 1, s, 2, -1);
    j.gp[alloy_method_param(m, "max_iter")] = 2.5;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "karcher: `max_iter`");
    j.gp[alloy_method_param(m, "max_iter")] = -1;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    j.gp[alloy_method_param(m, "max_iter")] = 5;
    j.gp[alloy_method_param(m, "tol")] = -1e-5;
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, out, NULL, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "karcher: `tol`");
}

TEST(karcher_thread_count_invariant)
{
    enum { N = 2500 };
    float *x[3], *o1 = malloc(N * 4), *o3 = malloc(N * 4);
    for (int i = 0; i < 3; i++) {
        x[i] = malloc(N * 4);
        for (int e = 0; e < N; e++) x[i][e] = frand();
    }
    const struct alloy_method *m = alloy_method_find("karcher");
    struct tj j;
    int64_t s[] = {50, 50};
    tj_setup(&j, m, 2, s, 3, -1);
    const float *in[3] = {x[0], x[1], x[2]};
    struct alloy_pool *p1 = alloy_pool_new(1), *p3 = alloy_pool_new(3);
    struct alloy_err err = {0};
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o1, p1, 100, &err), ALLOY_OK);
    CHECK_INT(alloy_method_run_memory(m, &j.job, in, o3, p3, 100, &err), ALLOY_OK);
    CHECK(memcmp(o1, o3, N * 4) == 0);
    alloy_pool_free(p1), alloy_pool_free(p3);
    for (int i = 0; i < 3; i++) free(x[i]);
    free(o1), free(o3);
}
