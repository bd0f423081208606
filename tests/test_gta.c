/*
 * test_gta.c — the task-arithmetic family (task_arithmetic, ties,
 * breadcrumbs, breadcrumbs_ties; shared machinery in src/methods/gta.c)
 * against a naive double-precision evaluation of spec §1.6 / §1.6.1
 * (src/methods/gta_ref.c): sort-based top-k and outlier slices with the
 * documented tie order (|delta| descending, then lower index first),
 * the "sum" sign consensus with its mask/divisor rules, normalize, lambda.
 * Inputs are multiples of 1/64 so deltas are exact in float32 and the
 * reference sees exactly the magnitudes (and ties) the code sees.
 * Random methods (dare, della): the masks are observed from single-model
 * runs (out != base), checked statistically (kept fraction, della's keep
 * probability per rank, L1 rescale, expectation over many seeds), and then
 * fed to the same naive pipeline to check the multi-model merge.
 */
#include "test.h"
#include "alloy.h"
#include "methods/method.h"
#include "methods/gta.h"
#include "methods/gta_ref.h"
#include "gta_case.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- naive reference */

enum { SP_NONE = GTA_SPARSIFY_NONE, SP_MAGNITUDE = GTA_SPARSIFY_MAGNITUDE, SP_OUTLIERS = GTA_SPARSIFY_OUTLIERS };

/* Spec §1.6 steps 1-7 in double (src/methods/gta_ref.c) for case k. Masks, if given, replace step 2's
 * pruning (mask[i][e] = 1 keeps) and are then L1-rescaled when `rescale`. */
static void naive_gta(int sp, int consensus, const struct gcase *k, int normalize, int rescale, double lambda,
                      const float *const *in, const unsigned char *const *mask, double *res)
{
    struct gta_ref r = {.sparsify = (enum gta_sparsify)sp, .consensus = consensus, .normalize = normalize,
                        .rescale = rescale, .lambda = lambda, .n = k->n, .base = k->base, .rows = k->rows,
                        .cols = k->cols, .w = k->w, .density = k->density, .extra = k->extra, .mask = mask,
                        .seed = k->seed, .name = "model.layers.0.mlp.up_proj.weight"};
    if (mask && sp == SP_NONE) r.sparsify = GTA_SPARSIFY_RANDOM; /* pruned by the masks alone */
    gta_ref_merge(&r, in, res);
}

/* Runs the case with several chunkings and thread counts; compares with ref. */
/* Runs the case in each (chunk, threads) setting: every output within tol of ref, all bit-identical. */
static void expect_runs(const struct gcase *k, const float *const *in, const double *ref, double tol, int line,
                        const uint64_t *chunks, const int *threads, int nruns)
{
    size_t N = (size_t)(k->rows * k->cols);
    float *out = malloc(N * sizeof *out), *first = malloc(N * sizeof *first);
    for (int r = 0; r < nruns; r++) {
        struct alloy_err err = {0};
        int rc = run_case(k, in, out, threads[r], chunks[r], &err);
        if (rc) {
            test_fail(__FILE__, line, "%s: rc %d: %s", k->method, rc, err.msg);
            break;
        }
        size_t bad = 0, worst = 0;
        for (size_t e = 0; e < N; e++)
            if (!(fabs(out[e] - ref[e]) <= tol * (1 + fabs(ref[e])))) {
                if (!bad) worst = e;
                bad++;
            }
        if (bad)
            test_fail(__FILE__, line, "%s chunk %llu: %zu of %zu differ, first at %zu: %.9g vs %.9g", k->method,
                      (unsigned long long)chunks[r], bad, N, worst, out[worst], ref[worst]);
        if (r == 0) memcpy(first, out, N * sizeof *out);
        else if (memcmp(first, out, N * sizeof *out))
            test_fail(__FILE__, line, "%s: chunk %llu / %d threads changed the bits", k->method,
                      (unsigned long long)chunks[r], threads[r]);
    }
    free(out);
    free(first);
}

static void expect_case(const struct gcase *k, const float *const *in, const double *ref, double tol, int line)
{
    static const uint64_t chunks[] = {5, 64, 0, 7};
    static const int threads[] = {1, 3, 0, 2};
    expect_runs(k, in, ref, tol, line, chunks, threads, 4);
}

static const struct alloy_param_spec *param(const struct alloy_method *m, const char *name)
{
    int k = alloy_method_param(m, name);
    return k >= 0 ? &m->params[k] : NULL;
}

TEST(gta_registered_with_spec_defaults)
{
    static const struct { const char *name; double normalize, rescale; const char *extra; double extra_def; } t[] = {
        {"task_arithmetic", 0, 0, NULL, 0}, {"ties", 1, 0, NULL, 0},
        {"dare_ties", 0, 1, NULL, 0},       {"dare_linear", 0, 1, NULL, 0},
        {"breadcrumbs", 0, 0, "gamma", 0.01}, {"breadcrumbs_ties", 0, 0, "gamma", 0.01},
        {"della", 1, 1, "epsilon", 0.15},   {"della_linear", 0, 1, "epsilon", 0.15},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const struct alloy_method *m = alloy_method_find(t[i].name);
        CHECK_MSG(m != NULL, "%s not registered", t[i].name);
        if (!m) continue;
        CHECK(m->flags & ALLOY_METHOD_NEEDS_BASE);
        CHECK(m->flags & ALLOY_METHOD_BASE_SHAPE);
        const struct alloy_param_spec *w = param(m, "weight"), *d = param(m, "density");
        CHECK(w && w->scope == ALLOY_PARAM_TENSOR && w->required && isnan(w->def));
        CHECK(d && d->scope == ALLOY_PARAM_TENSOR && !d->required && d->def == 1.0);
        const struct alloy_param_spec *nz = param(m, "normalize"), *rs = param(m, "rescale");
        const struct alloy_param_spec *lb = param(m, "lambda"), *i8 = param(m, "int8_mask");
        CHECK(nz && nz->scope == ALLOY_PARAM_GLOBAL && nz->def == t[i].normalize);
        CHECK(rs && rs->scope == ALLOY_PARAM_GLOBAL && rs->def == t[i].rescale);
        CHECK(lb && lb->scope == ALLOY_PARAM_GLOBAL && lb->def == 1.0);
        CHECK(i8 && i8->scope == ALLOY_PARAM_GLOBAL && i8->def == 0.0);
        if (t[i].extra) {
            const struct alloy_param_spec *x = param(m, t[i].extra);
            CHECK(x && x->scope == ALLOY_PARAM_TENSOR && x->def == t[i].extra_def);
            CHECK_INT(m->nparams, 7);
        } else {
            CHECK_INT(m->nparams, 6);
        }
        int random = !strncmp(t[i].name, "dare", 4) || !strncmp(t[i].name, "della", 5);
        CHECK_INT(!!(m->flags & ALLOY_METHOD_RANDOM), random);
        CHECK_INT(!!(m->flags & ALLOY_METHOD_WHOLE_ROWS), !strncmp(t[i].name, "della", 5));
    }
}

TEST(gta_check_rejects_bad_configs)
{
    float a[4] = {0, 1, 2, 3}, b[4] = {1, 1, 1, 1};
    const float *in[2] = {a, b};
    float out[4];
    struct gcase k;
    struct alloy_err err;
    const char *names[] = {"task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della_linear"};
    for (int i = 0; i < 5; i++) {
        gcase_init(&k, names[i], 2, -1, 2, 2);
        k.w[0] = k.w[1] = 1;
        memset(&err, 0, sizeof err);
        CHECK(run_case(&k, in, out, 1, 0, &err) == ALLOY_ERR_CONFIG);
        CHECK_STR_CONTAINS(err.msg, "base_model");
        CHECK_STR_CONTAINS(err.msg, "test.yml: tensor 'model.layers.0.mlp.up_proj.weight'");
        gcase_init(&k, names[i], 2, 1, 2, 2); /* model 0 lacks a weight; the base needs none */
        CHECK(run_case(&k, in, out, 1, 0, &err) == ALLOY_ERR_CONFIG);
        CHECK_STR_CONTAINS(err.msg, "model m0 has no `weight`");
        k.w[0] = 1;
        k.density[0] = -0.5;
        CHECK(run_case(&k, in, out, 1, 0, &err) == ALLOY_ERR_CONFIG);
        CHECK_STR_CONTAINS(err.msg, "density must be >= 0");
        k.density[0] = NAN;
        CHECK_INT(run_case(&k, in, out, 1, 0, &err), ALLOY_OK);
    }
    gcase_init(&k, "breadcrumbs_ties", 2, 0, 2, 2);
    k.w[1] = 1;
    k.extra[1] = -0.1;
    CHECK(run_case(&k, in, out, 1, 0, &err) == ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "gamma must be >= 0");
}

/* ---------------------------------------------------------------- task_arithmetic */

TEST(task_arithmetic_golden)
{
    enum { R = 7, C = 9, N = R * C };
    float **in = make_inputs(4, N, 40);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "task_arithmetic", 4, 1, R, C);           /* base in the middle of the inputs */
    k.w[0] = 0.5; k.w[2] = 1.0; k.w[3] = -0.25;
    k.density[0] = 0.1;                                       /* ignored: no sparsification */
    naive_gta(SP_NONE, 0, &k, 0, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.normalize = 1;
    k.lambda = 0.7;
    naive_gta(SP_NONE, 0, &k, 1, 0, 0.7, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.w[3] = -1.5;                                            /* weights sum to 0: divisor falls back to 1 */
    naive_gta(SP_NONE, 0, &k, 1, 0, 0.7, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    free_inputs(in, 4);
}

TEST(task_arithmetic_negation_and_base_only)
{
    float base[6] = {1, 2, 3, -4, 0.5f, 0}, ft[6] = {1.5f, 2, 2, -4.25f, 0.5f, 1};
    const float *in[2] = {base, ft};
    float out[6];
    struct gcase k;
    gcase_init(&k, "task_arithmetic", 2, 0, 1, 6);            /* 1-D */
    k.w[1] = -1.0;                                            /* task negation: R = 2B - X */
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, in, out, 1, 4, &err), ALLOY_OK);
    for (int e = 0; e < 6; e++) CHECK_NEAR(out[e], 2.0 * base[e] - ft[e], 0);
    gcase_init(&k, "task_arithmetic", 1, 0, 1, 6);            /* only the base: R = B */
    CHECK_INT(run_case(&k, in, out, 1, 0, &err), ALLOY_OK);
    CHECK(!memcmp(out, base, sizeof out));
}

/* ---------------------------------------------------------------- ties */

TEST(ties_golden_many_ties)
{
    enum { R = 12, C = 17, N = R * C };
    float **in = make_inputs(4, N, 6);                        /* 13 levels: |delta| ties everywhere */
    double ref[N];
    struct gcase k;
    gcase_init(&k, "ties", 4, 2, R, C);
    k.w[0] = 1.0; k.w[1] = 0.5; k.w[3] = 0.75;
    k.density[0] = 0.3; k.density[1] = 0.55; k.density[3] = 1.0;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.normalize = 0;
    k.lambda = 1.25;
    naive_gta(SP_MAGNITUDE, 1, &k, 0, 0, 1.25, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.rescale = 1;                                            /* L1 matching after pruning */
    naive_gta(SP_MAGNITUDE, 1, &k, 0, 1, 1.25, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    free_inputs(in, 4);
}

TEST(ties_golden_continuous_values)
{
    enum { R = 33, C = 40, N = R * C };
    float **in = malloc(3 * sizeof *in);
    for (int i = 0; i < 3; i++) {
        in[i] = malloc(N * sizeof(float));
        for (size_t e = 0; e < N; e++) in[i][e] = (float)(urand() - 0.5) * 0.25f + (i == 0 ? 0.0f : in[0][e]);
    }
    /* deltas of continuous values: recompute them as the float32 the method sees, for the reference */
    for (int i = 1; i < 3; i++)
        for (size_t e = 0; e < N; e++) in[i][e] = in[0][e] + (in[i][e] - in[0][e]);
    double *ref = malloc(N * sizeof *ref);
    struct gcase k;
    gcase_init(&k, "ties", 3, 0, R, C);
    k.w[1] = 0.6; k.w[2] = 0.4;
    k.density[1] = 0.2; k.density[2] = 0.7;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    free(ref);
    free_inputs(in, 3);
}

TEST(ties_density_edges)
{
    enum { N = 64 };
    float **in = make_inputs(3, N, 20);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "ties", 3, 0, 8, 8);
    k.w[1] = 1; k.w[2] = 1;
    k.density[1] = 0.01; k.density[2] = 0.01;                 /* k = int(0.64) = 0: mergekit asserts; here R = B */
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    for (size_t e = 0; e < N; e++) CHECK_NEAR(ref[e], in[0][e], 0);
    expect_case(&k, (const float *const *)in, ref, 0, __LINE__);
    k.density[1] = 0; k.density[2] = 1;                       /* density 0 drops, 1 keeps everything */
    k.rescale = 1;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 1, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.density[1] = 1.0 / 64;                                  /* k = 1: the single largest |delta| */
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 1, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    free_inputs(in, 3);
}

TEST(ties_consensus_hand_values)
{
    /* element 0: +2 vs -2 (sum 0 -> +): only the positive one;  1: +1 vs -3 -> negative wins;
     * 2: both zero -> divisor 0 -> 1, R = B;  3: +1, +2 agree -> mean 1.5;  4: 0 and -1 -> -1 only */
    float b[5] = {10, 10, 10, 10, 10};
    float x1[5] = {12, 11, 10, 11, 10}, x2[5] = {8, 7, 10, 12, 9};
    const float *in[3] = {b, x1, x2};
    float out[5];
    struct gcase k;
    gcase_init(&k, "ties", 3, 0, 1, 5);
    k.w[1] = 1; k.w[2] = 1;
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, in, out, 1, 2, &err), ALLOY_OK);
    const float want[5] = {12, 7, 10, 11.5f, 9};
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], want[e], 0);
    k.normalize = 0;                                          /* sums of the agreeing deltas */
    CHECK_INT(run_case(&k, in, out, 1, 0, &err), ALLOY_OK);
    const float want2[5] = {12, 7, 10, 13, 9};
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], want2[e], 0);
    /* all-conflicting signs with weights: D = (+1*2, -3*1) -> negative, divisor 3 -> R = B - 1 */
    k.normalize = 1;
    k.w[2] = 3;
    x1[0] = 12; x2[0] = 9;
    CHECK_INT(run_case(&k, in, out, 1, 0, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 9, 0);
}

TEST(ties_single_model_and_zero_deltas)
{
    enum { N = 50 };
    float **in = make_inputs(2, N, 30);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "ties", 2, 1, 1, N);                       /* 1-D, one task vector */
    k.w[0] = 0.8;
    k.density[0] = 0.5;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    memcpy(in[0], in[1], N * sizeof(float));                  /* zero task vector: R = B exactly */
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 0, __LINE__);
    free_inputs(in, 2);
}

TEST(ties_more_models_than_histogram_slots)
{
    enum { R = 9, C = 11, N = R * C, M = 12 };               /* 11 selections > GTA_HIST_SLOTS: two rounds */
    float **in = make_inputs(M, N, 9);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "ties", M, 5, R, C);
    for (int i = 0; i < M; i++) {
        k.w[i] = 0.25 * (1 + i % 4);
        k.density[i] = 0.1 + 0.07 * i;
    }
    k.rescale = 1;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 1, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    free_inputs(in, M);
}

/* ---------------------------------------------------------------- breadcrumbs */

TEST(breadcrumbs_golden)
{
    enum { R = 10, C = 20, N = R * C };
    float **in = make_inputs(4, N, 12);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "breadcrumbs", 4, 0, R, C);
    k.w[1] = 0.5; k.w[2] = 0.25; k.w[3] = 1;
    k.density[1] = 0.5; k.extra[1] = 0.1;                     /* target 100, n_top 20, n_bot 80 */
    k.density[2] = 0.95; k.extra[2] = 0.1;                    /* n_bot < 0: n_top shrinks to 10 */
    k.density[3] = 0.3;                                       /* default gamma 0.01: n_top 2 */
    naive_gta(SP_OUTLIERS, 0, &k, 0, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    k.normalize = 1; k.rescale = 1; k.lambda = 0.5;
    naive_gta(SP_OUTLIERS, 0, &k, 1, 1, 0.5, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    k.method = "breadcrumbs_ties";
    naive_gta(SP_OUTLIERS, 1, &k, 1, 1, 0.5, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    k.normalize = 0; k.rescale = 0; k.lambda = 1;
    naive_gta(SP_OUTLIERS, 1, &k, 0, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    free_inputs(in, 4);
}

TEST(breadcrumbs_small_tensor_keeps_top_when_n_top_is_zero)
{
    /* N = 64 < 100: int(0.01 * 64) = 0. mergekit's [n_bot:-0] slice zeroes the task vector;
     * alloy keeps [n_bot, N): the int(0.5 * 64) = 32 largest |delta|. */
    enum { N = 64 };
    float b[N], x[N];
    for (int e = 0; e < N; e++) {
        b[e] = 1.0f;
        x[e] = 1.0f + (float)(e % 2 ? e + 1 : -(e + 1)) / 64.0f; /* distinct magnitudes (e + 1)/64 */
    }
    const float *in[2] = {b, x};
    float out[N];
    struct gcase k;
    gcase_init(&k, "breadcrumbs", 2, 0, 8, 8);
    k.w[1] = 1;
    k.density[1] = 0.5;
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, in, out, 1, 7, &err), ALLOY_OK);
    for (int e = 0; e < N; e++) CHECK_NEAR(out[e], e >= 32 ? x[e] : b[e], 0);
}

TEST(breadcrumbs_nonzero_count_matches_density)
{
    /* mergekit tests/test_sparsify.py: gamma = g (1 - density) -> exactly int(N density) survive */
    enum { R = 32, C = 16, N = R * C };
    float **in = make_inputs(2, N, 200);
    for (size_t e = 0; e < N; e++) if (in[1][e] == in[0][e]) in[1][e] += 7.0f; /* no zero deltas */
    float *out = malloc(N * sizeof *out);
    const double gs[] = {0.1, 0.2, 0.5, 1.0}, ds[] = {0.1, 0.3, 0.5, 0.6, 0.9, 1.0};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 6; b++) {
            struct gcase k;
            gcase_init(&k, "breadcrumbs", 2, 0, R, C);
            k.w[1] = 1;
            k.density[1] = ds[b];
            k.extra[1] = gs[a] * (1 - ds[b]);
            struct alloy_err err = {0};
            CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 100, &err), ALLOY_OK);
            size_t nz = 0;
            for (size_t e = 0; e < N; e++) nz += out[e] != in[0][e];
            CHECK_MSG(nz == (size_t)(N * ds[b]), "gamma %g density %g: %zu kept, expected %zu", k.extra[1], ds[b],
                      nz, (size_t)(N * ds[b]));
        }
    free(out);
    free_inputs(in, 2);
}

TEST(breadcrumbs_more_models_than_histogram_slots)
{
    enum { R = 6, C = 25, N = R * C, M = 6 };                /* 5 models x 2 selections > 8 slots */
    float **in = make_inputs(M, N, 8);
    double ref[N];
    struct gcase k;
    gcase_init(&k, "breadcrumbs_ties", M, 3, R, C);
    for (int i = 0; i < M; i++) {
        k.w[i] = 0.5 + 0.25 * (i % 3);
        k.density[i] = 0.2 + 0.1 * i;
        k.extra[i] = 0.05 * (i % 3);                          /* includes gamma 0 */
    }
    naive_gta(SP_OUTLIERS, 1, &k, 0, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_case(&k, (const float *const *)in, ref, 1e-6, __LINE__);
    free_inputs(in, M);
}

/* ties (grid deltas, with and without rescale), breadcrumbs (grid deltas) and ties on continuous
 * deltas, over R x C tensors, in nruns (chunking, threads) settings. */
static void magnitude_cases(size_t R, size_t C, const uint64_t *chunks, const int *threads, int nruns, int rescale)
{
    const size_t N = R * C;
    float **in = make_inputs(3, N, 40);                       /* grid deltas: thresholds with zero low bits */
    double *ref = malloc(N * sizeof *ref);
    struct gcase k;
    gcase_init(&k, "ties", 3, 1, R, C);
    k.w[0] = 0.7; k.w[2] = 0.4;
    k.density[0] = 0.3; k.density[2] = 0.65;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_runs(&k, (const float *const *)in, ref, 1e-6, __LINE__, chunks, threads, nruns);
    if (rescale) {
        k.rescale = 1;
        naive_gta(SP_MAGNITUDE, 1, &k, 1, 1, 1.0, (const float *const *)in, NULL, ref);
        expect_runs(&k, (const float *const *)in, ref, 1e-5, __LINE__, chunks, threads, nruns);
    }
    gcase_init(&k, "breadcrumbs", 3, 1, R, C);
    k.w[0] = 0.7; k.w[2] = 0.4;
    k.density[0] = 0.5; k.extra[0] = 0.05;
    k.density[2] = 0.8; k.extra[2] = 0.01;
    naive_gta(SP_OUTLIERS, 0, &k, 0, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_runs(&k, (const float *const *)in, ref, 1e-6, __LINE__, chunks, threads, nruns);
    /* continuous deltas: thresholds need the third level (or the window collects them) */
    for (int i = 0; i < 3; i++)
        if (i != 1)
            for (size_t e = 0; e < N; e++) in[i][e] = in[1][e] + (float)(urand() - 0.5) * 0.25f;
    for (int i = 0; i < 3; i++) /* as the float32 the method sees, for the reference */
        if (i != 1)
            for (size_t e = 0; e < N; e++) in[i][e] = in[1][e] + (in[i][e] - in[1][e]);
    gcase_init(&k, "ties", 3, 1, R, C);
    k.w[0] = 0.6; k.w[2] = 0.4;
    k.density[0] = 0.2; k.density[2] = 0.7;
    naive_gta(SP_MAGNITUDE, 1, &k, 1, 0, 1.0, (const float *const *)in, NULL, ref);
    expect_runs(&k, (const float *const *)in, ref, 1e-5, __LINE__, chunks, threads, nruns);
    free(ref);
    free_inputs(in, 3);
}

TEST(magnitude_methods_on_large_tensors)
{
    /* >= 2^17 elements: the wide selection; fewer, larger chunkings */
    static const uint64_t chunks[] = {0, 4099, 50000};
    static const int threads[] = {0, 2, 3};
    magnitude_cases(260, 512, chunks, threads, 3, 1);
}

TEST(magnitude_methods_sampled_selection)
{
    /* >= 8 default chunks: gta.c samples the chunks, then one window pass finds the thresholds. With
       64 threads the chunk scratch ((3 + 1) x 1 MiB each) would pass ALLOY_SCRATCH_BUDGET: the driver
       runs 32 lanes instead, with the same result */
    static const uint64_t chunks[] = {0, 50000, 0};  /* paired with threads[] */
    static const int threads[] = {0, 2, 64};
    magnitude_cases(2100, 1024, chunks, threads, 3, 0);
}

/* ---------------------------------------------------------------- dare and della */

/* Observes model i's keep mask: the same job with every other model equal to
 * the base, weight 1, no normalize/rescale, lambda 1, so out - B = mask * delta_i.
 * Needs delta_i != 0 everywhere. */
static void observe_mask(const struct gcase *k0, const float *const *in, int i, unsigned char *mask)
{
    size_t N = (size_t)(k0->rows * k0->cols);
    struct gcase k = *k0;
    const float *in2[MAXM];
    for (int j = 0; j < k.n; j++) {
        in2[j] = (j == i || j == k.base) ? in[j] : in[k.base];
        k.w[j] = 1;
    }
    k.normalize = 0;
    k.rescale = 0;
    k.lambda = 1;
    float *out = malloc(N * sizeof *out);
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, in2, out, 1, 0, &err), ALLOY_OK);
    for (size_t e = 0; e < N; e++) {
        mask[e] = out[e] != in[k.base][e];
        CHECK(out[e] == (mask[e] ? in[i][e] : in[k.base][e]));
    }
    free(out);
}

static float **make_nonzero_deltas(int n, int base, size_t N, int span)
{
    float **in = make_inputs(n, N, span);
    for (int i = 0; i < n; i++)
        if (i != base)
            for (size_t e = 0; e < N; e++)
                if (in[i][e] == in[base][e]) in[i][e] += (e % 2 ? 1.0f : -1.0f) / 64.0f;
    return in;
}

static void golden_with_observed_masks(struct gcase *k, float **in, int consensus, int normalize, int rescale,
                                       double lambda, int line)
{
    size_t N = (size_t)(k->rows * k->cols);
    unsigned char *mask[MAXM] = {0};
    for (int i = 0; i < k->n; i++) {
        if (i == k->base) continue;
        mask[i] = malloc(N);
        observe_mask(k, (const float *const *)in, i, mask[i]);
    }
    double *ref = malloc(N * sizeof *ref);
    naive_gta(SP_NONE, consensus, k, normalize, rescale, lambda, (const float *const *)in,
              (const unsigned char *const *)mask, ref);
    expect_case(k, (const float *const *)in, ref, 1e-5, line);
    free(ref);
    for (int i = 0; i < k->n; i++) free(mask[i]);
}

TEST(dare_golden_with_observed_masks)
{
    enum { R = 15, C = 20, N = R * C };
    float **in = make_nonzero_deltas(4, 1, N, 30);
    struct gcase k;
    gcase_init(&k, "dare_linear", 4, 1, R, C);
    k.w[0] = 0.5; k.w[2] = 1; k.w[3] = 0.75;
    k.density[0] = 0.3; k.density[2] = 0.6; k.density[3] = 1.0;
    golden_with_observed_masks(&k, in, 0, 0, 1, 1.0, __LINE__);      /* defaults: rescale on */
    k.normalize = 1; k.lambda = 0.8; k.rescale = 0;
    golden_with_observed_masks(&k, in, 0, 1, 0, 0.8, __LINE__);
    gcase_init(&k, "dare_ties", 4, 1, R, C);
    k.w[0] = 0.5; k.w[2] = 1; k.w[3] = 0.75;
    k.density[0] = 0.3; k.density[2] = 0.6; k.density[3] = 1.0;
    golden_with_observed_masks(&k, in, 1, 0, 1, 1.0, __LINE__);
    k.normalize = 1; k.lambda = 1.5;
    golden_with_observed_masks(&k, in, 1, 1, 1, 1.5, __LINE__);
    free_inputs(in, 4);
}

TEST(dare_more_models_than_l1_slots)
{
    enum { N = 120, M = 19 };                                 /* 18 rescaled task vectors > 16 L1 slots */
    float **in = make_nonzero_deltas(M, 0, N, 10);
    struct gcase k;
    gcase_init(&k, "dare_ties", M, 0, 1, N);
    for (int i = 1; i < M; i++) {
        k.w[i] = 0.25 * (1 + i % 3);
        k.density[i] = 0.2 + 0.04 * i;
    }
    golden_with_observed_masks(&k, in, 1, 0, 1, 1.0, __LINE__);
    free_inputs(in, M);
}

TEST(dare_statistics_over_seeds)
{
    enum { N = 2000, SEEDS = 100 };
    const double p = 0.3;
    float **in = make_nonzero_deltas(3, 0, N, 40);
    float *out = malloc(N * sizeof *out);
    unsigned char *first = malloc(N);
    double kept = 0, ratio_sum = 0, ratio_norescale = 0, both = 0;
    for (uint64_t seed = 1; seed <= SEEDS; seed++) {
        struct gcase k;
        gcase_init(&k, "dare_linear", 2, 0, 40, 50);
        k.w[1] = 1; k.density[1] = p; k.seed = seed;
        struct alloy_err err = {0};
        CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
        double before = 0, after = 0;
        size_t nk = 0;
        for (size_t e = 0; e < N; e++) {
            double d = (double)in[1][e] - in[0][e], o = (double)out[e] - in[0][e];
            before += fabs(d);
            after += fabs(o);
            nk += o != 0;
            ratio_sum += o / d;
            if (seed == 1) first[e] = o != 0;
        }
        kept += (double)nk;
        CHECK_NEAR(after / before, 1.0, 1e-5);                   /* L1 rescale is exact */
        k.rescale = 0;                                           /* no rescale: E[out - B] = p delta */
        CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
        for (size_t e = 0; e < N; e++) ratio_norescale += ((double)out[e] - in[0][e]) / ((double)in[1][e] - in[0][e]);
        if (seed == 2) {                                         /* another seed, another mask */
            size_t same = 0;
            for (size_t e = 0; e < N; e++) same += first[e] == (out[e] != in[0][e]);
            CHECK(same < N);
        }
    }
    double total = (double)N * SEEDS, se = sqrt(p * (1 - p) / total);
    CHECK_NEAR(kept / total, p, 4 * se);
    CHECK_NEAR(ratio_norescale / total, p, 4 * se);
    CHECK_NEAR(ratio_sum / total, 1.0, 4 * sqrt((1 - p) / p / total) + 0.01);
    /* two models in one job draw independently: overlap ~ p^2 */
    struct gcase k;
    gcase_init(&k, "dare_linear", 3, 0, 40, 50);
    k.density[1] = k.density[2] = p;
    unsigned char *m1 = malloc(N), *m2 = malloc(N);
    observe_mask(&k, (const float *const *)in, 1, m1);
    observe_mask(&k, (const float *const *)in, 2, m2);
    for (size_t e = 0; e < N; e++) both += m1[e] && m2[e];
    CHECK_NEAR(both / N, p * p, 4 * sqrt(p * p * (1 - p * p) / N));
    free(m1);
    free(m2);
    free(first);
    free(out);
    free_inputs(in, 3);
}

TEST(dare_density_edges)
{
    enum { N = 30 };
    float **in = make_nonzero_deltas(2, 0, N, 20);
    float out[N];
    struct gcase k;
    gcase_init(&k, "dare_ties", 2, 0, 1, N);
    k.w[1] = 1;
    k.density[1] = 0;                                         /* nothing kept: R = B */
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    CHECK(!memcmp(out, in[0], sizeof out));
    k.density[1] = 1;                                         /* everything kept, no rescale: R = X */
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    CHECK(!memcmp(out, in[1], sizeof out));
    free_inputs(in, 2);
}

/* A [rows, cols] delta whose rows are random permutations of the magnitudes 1..cols (/64), random signs. */
static float **make_ranked_rows(size_t rows, size_t cols)
{
    float **in = malloc(2 * sizeof *in);
    in[0] = malloc(rows * cols * sizeof(float));
    in[1] = malloc(rows * cols * sizeof(float));
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols; c++) in[1][r * cols + c] = (float)(c + 1);
        for (size_t c = cols - 1; c > 0; c--) {               /* Fisher-Yates */
            size_t j = (size_t)(urand() * (double)(c + 1));
            float t = in[1][r * cols + c];
            in[1][r * cols + c] = in[1][r * cols + j];
            in[1][r * cols + j] = t;
        }
        for (size_t c = 0; c < cols; c++) {
            size_t e = r * cols + c;
            in[0][e] = grid(64);
            in[1][e] = in[0][e] + (urand() < 0.5 ? -1.0f : 1.0f) * in[1][e] / 64.0f;
        }
    }
    return in;
}

/* della_linear without rescale on two inputs: model 1 at weight 1 with density d and epsilon eps. */
static void della_linear_case(struct gcase *k, size_t rows, size_t cols, double d, double eps, uint64_t seed)
{
    gcase_init(k, "della_linear", 2, 0, rows, cols);
    k->w[1] = 1;
    k->density[1] = d;
    k->extra[1] = eps;
    k->rescale = 0;
    k->seed = seed;
}

TEST(della_keep_probability_follows_rank)
{
    enum { R = 40, C = 50, N = R * C, SEEDS = 100 };
    const double d = 0.5, eps = 0.2;
    float **in = make_ranked_rows(R, C);
    float *out = malloc(N * sizeof *out);
    static double kept_by_rank[C + 1];
    double kept = 0;
    for (uint64_t seed = 1; seed <= SEEDS; seed++) {
        struct gcase k;
        della_linear_case(&k, R, C, d, eps, seed);
        struct alloy_err err = {0};
        CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 3 * C, &err), ALLOY_OK);
        for (size_t e = 0; e < N; e++) {
            int rank = (int)lround(fabs((double)in[1][e] - in[0][e]) * 64.0); /* 1..C by construction */
            int keep = out[e] != in[0][e];
            kept_by_rank[rank] += keep;
            kept += keep;
        }
        k.rescale = 1;                                           /* L1 rescale exact */
        CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
        double before = 0, after = 0;
        for (size_t e = 0; e < N; e++) {
            before += fabs((double)in[1][e] - in[0][e]);
            after += fabs((double)out[e] - in[0][e]);
        }
        CHECK_NEAR(after / before, 1.0, 1e-5);
    }
    for (int r = 1; r <= C; r++) {
        double p = (d - eps) + 2 * eps * (r - 1) / (double)(C - 1), n = (double)R * SEEDS;
        CHECK_MSG(fabs(kept_by_rank[r] / n - p) <= 4.5 * sqrt(p * (1 - p) / n), "rank %d: kept %.4f, p %.4f", r,
                  kept_by_rank[r] / n, p);
    }
    CHECK_NEAR(kept / ((double)N * SEEDS), d, 4 * sqrt(0.25 / ((double)N * SEEDS)));
    free(out);
    free_inputs(in, 2);
}

/* Equal magnitudes share their mean rank: in rows whose first half holds one magnitude and second
 * half another, every column of a half is kept with the probability of the half's mean rank (a tie
 * order by column would make it climb across the half). */
TEST(della_ties_share_their_mean_rank)
{
    enum { R = 40, C = 50, N = R * C, SEEDS = 100 };
    const double d = 0.5, eps = 0.2;
    float **in = malloc(2 * sizeof *in);
    in[0] = malloc(N * sizeof(float));
    in[1] = malloc(N * sizeof(float));
    for (size_t e = 0; e < N; e++) {
        in[0][e] = grid(64);
        in[1][e] = in[0][e] + (urand() < 0.5 ? -1.0f : 1.0f) * (e % C < C / 2 ? 1.0f : 3.0f) / 64.0f;
    }
    float *out = malloc(N * sizeof *out);
    static double kept_by_col[C];
    for (uint64_t seed = 1; seed <= SEEDS; seed++) {
        struct gcase k;
        della_linear_case(&k, R, C, d, eps, seed);
        struct alloy_err err = {0};
        CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 2 * C, &err), ALLOY_OK);
        for (size_t e = 0; e < N; e++) kept_by_col[e % C] += out[e] != in[0][e];
    }
    for (int c = 0; c < C; c++) {
        double mean_rank = c < C / 2 ? (C / 2 + 1) / 2.0 : (3 * C / 2 + 1) / 2.0;
        double p = (d - eps) + 2 * eps * (mean_rank - 1) / (C - 1), n = (double)R * SEEDS;
        CHECK_MSG(fabs(kept_by_col[c] / n - p) <= 4.5 * sqrt(p * (1 - p) / n), "column %d: kept %.4f, p %.4f", c,
                  kept_by_col[c] / n, p);
    }
    free(out);
    free_inputs(in, 2);
}

TEST(della_golden_with_observed_masks)
{
    enum { R = 12, C = 16, N = R * C };
    float **in = make_nonzero_deltas(4, 3, N, 25);
    struct gcase k;
    gcase_init(&k, "della", 4, 3, R, C);
    k.w[0] = 1; k.w[1] = 0.5; k.w[2] = 0.75;
    k.density[0] = 0.4; k.density[1] = 0.6; k.density[2] = 1.0;
    k.extra[0] = 0.1;                                         /* model 1 keeps the default 0.15 */
    golden_with_observed_masks(&k, in, 1, 1, 1, 1.0, __LINE__); /* della defaults: normalize, rescale */
    k.lambda = 0.5; k.normalize = 0;
    golden_with_observed_masks(&k, in, 1, 0, 1, 0.5, __LINE__);
    k.method = "della_linear";
    k.normalize = NAN; k.lambda = NAN;
    golden_with_observed_masks(&k, in, 0, 0, 1, 1.0, __LINE__);
    k.normalize = 1; k.rescale = 0; k.lambda = 2;
    golden_with_observed_masks(&k, in, 0, 1, 0, 2.0, __LINE__);
    free_inputs(in, 4);
}

/* The random methods against the reference's own draws (the same counter-based hash, DELLA's ranks by
 * sorting each row): the keep decisions are the methods', so the merges agree within float32 rounding. */
TEST(random_methods_match_reference_draws)
{
    enum { R = 9, C = 40, N = R * C };
    float **in = make_nonzero_deltas(4, 0, N, 25);
    static const struct { const char *method; int sp, consensus, normalize; } t[] = {
        {"dare_linear", GTA_SPARSIFY_RANDOM, 0, 0}, {"dare_ties", GTA_SPARSIFY_RANDOM, 1, 0},
        {"della", GTA_SPARSIFY_DELLA, 1, 1},        {"della_linear", GTA_SPARSIFY_DELLA, 0, 0},
    };
    double *ref = malloc(N * sizeof *ref);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct gcase k;
        gcase_init(&k, t[i].method, 4, 0, R, C);
        k.w[1] = 1; k.w[2] = 0.5; k.w[3] = -0.75;
        k.density[1] = 0.4; k.density[2] = 0.7; k.density[3] = 0.0;
        k.extra[1] = 0.1; k.extra[2] = 0.2;
        k.seed = 3 + i;
        naive_gta(t[i].sp, t[i].consensus, &k, t[i].normalize, 1, 1.0, (const float *const *)in, NULL, ref);
        expect_case(&k, (const float *const *)in, ref, 1e-5, __LINE__);
    }
    free(ref);
    free_inputs(in, 4);
}

TEST(della_epsilon_validation_and_edges)
{
    enum { N = 40 };
    float **in = make_nonzero_deltas(2, 0, N, 20);
    float out[N];
    struct gcase k;
    gcase_init(&k, "della", 2, 0, 4, 10);
    k.w[1] = 1;
    k.density[1] = 0.66; k.extra[1] = 1.35;                   /* mergekit's test_della_invalid_epsilon */
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "density +/- epsilon must lie inside (0, 1)");
    CHECK_STR_CONTAINS(err.msg, "model m1");
    k.density[1] = 0.5; k.extra[1] = 0.5;                     /* density - epsilon == 0: rejected */
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    k.density[1] = 0.3; k.extra[1] = 0.25;                    /* valid */
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    k.density[1] = 1.0; k.extra[1] = 1.35;                    /* no pruning, no check: R = X */
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    CHECK(!memcmp(out, in[1], sizeof out));
    k.density[1] = 0.0;                                       /* density 0: zeros, R = B */
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    CHECK(!memcmp(out, in[0], sizeof out));
    free_inputs(in, 2);
}

TEST(della_column_vector_and_1d)
{
    enum { N = 4000 };
    float **in = make_ranked_rows(1, N);                      /* 1-D: one row of N */
    float *out = malloc(N * sizeof *out);
    struct gcase k;
    gcase_init(&k, "della_linear", 2, 0, 1, N);
    k.w[1] = 1; k.density[1] = 0.5; k.extra[1] = 0.4; k.rescale = 0;
    struct alloy_err err = {0};
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 0, &err), ALLOY_OK);
    double lo = 0, hi = 0;      /* p = 0.1 + 0.8 (rank-1)/(N-1): lower half averages 0.30, upper 0.70 */
    for (size_t e = 0; e < N; e++) {
        double a = fabs((double)in[1][e] - in[0][e]) * 64.0;
        if (out[e] != in[0][e]) *(a <= N / 2 ? &lo : &hi) += 1;
    }
    double want_lo = 0, want_hi = 0;
    for (int r = 1; r <= N; r++) *(r <= N / 2 ? &want_lo : &want_hi) += 0.1 + 0.8 * (r - 1) / (double)(N - 1);
    want_lo /= N / 2;
    want_hi /= N / 2;
    CHECK_NEAR(lo / (N / 2), want_lo, 4 * sqrt(0.3 * 0.7 / (N / 2)));
    CHECK_NEAR(hi / (N / 2), want_hi, 4 * sqrt(0.3 * 0.7 / (N / 2)));
    /* [N, 1]: one element per row, mergekit divides 0/0; alloy keeps with p = density */
    gcase_init(&k, "della_linear", 2, 0, N, 1);
    k.ndim = 2;
    k.w[1] = 1; k.density[1] = 0.3; k.extra[1] = 0.2; k.rescale = 0;
    CHECK_INT(run_case(&k, (const float *const *)in, out, 1, 64, &err), ALLOY_OK);
    double kept = 0;
    for (size_t e = 0; e < N; e++) kept += out[e] != in[0][e];
    CHECK_NEAR(kept / N, 0.3, 4 * sqrt(0.21 / N));
    free(out);
    free_inputs(in, 2);
}
