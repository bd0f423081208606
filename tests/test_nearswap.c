/*
 * test_nearswap.c — nearswap against a naive double-precision evaluation of
 * spec §1.9 (w = clamp(t / max(|a - b|, 1e-6), 0, 1); R = w b + (1 - w) a),
 * hand-computed values, the base-only case, base position, 1-D tensors,
 * chunking/thread invariance and the config errors.
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

static int run_nearswap(int n, int base, int ndim, uint64_t rows, uint64_t cols, double t, const float *const *in,
                        float *out, int threads, uint64_t chunk, struct alloy_err *err)
{
    const struct alloy_method *m = alloy_method_find("nearswap");
    if (!m) return -1;
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    if (ndim == 1) shape[0] = (int64_t)cols;
    const char *models[4] = {"m0", "m1", "m2", "m3"};
    double gp[1] = {t};
    double tp[4] = {NAN, NAN, NAN, NAN};
    struct alloy_merge_job job = {.name = "model.layers.0.mlp.up_proj.weight", .config_path = "test.yml",
                                  .ndim = ndim, .shape = shape, .numel = rows * cols, .rows = rows, .cols = cols,
                                  .n = n, .base = base, .models = models, .gp = gp, .tp = tp, .seed = 0};
    return run_on_threads(m, &job, in, out, threads, chunk, err);
}

/* The spec formula, written out independently in double precision. */
static double naive_nearswap(double t, double a, double b)
{
    double d = fabs(a - b);
    if (d < 1e-6) d = 1e-6;
    double w = t / d;
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return w * b + (1 - w) * a;
}

TEST(nearswap_registered)
{
    const struct alloy_method *m = alloy_method_find("nearswap");
    CHECK(m != NULL);
    if (!m) return;
    CHECK_INT(m->nparams, 1);
    CHECK(strcmp(m->params[0].name, "t") == 0);
    CHECK(m->params[0].scope == ALLOY_PARAM_GLOBAL);
    CHECK(m->params[0].required);
    CHECK(isnan(m->params[0].def));
}

TEST(nearswap_hand_values)
{
    /* base a, model b, t = 0.5:
     *   a=0,b=1:   w=0.5       -> 0.5
     *   a=0,b=0.25: w=2 -> 1    -> 0.25
     *   a=2,b=2:   d=0 -> 1e-6, w=1 -> 2
     *   a=-1,b=3:  w=0.125     -> 0.125*3 + 0.875*-1 = -0.5
     *   a=4,b=3.5: w=1         -> 3.5 */
    float a[5] = {0, 0, 2, -1, 4}, b[5] = {1, 0.25f, 2, 3, 3.5f};
    float expect[5] = {0.5f, 0.25f, 2, -0.5f, 3.5f};
    const float *in[2] = {a, b};
    float out[5];
    struct alloy_err err = {0};
    CHECK_INT(run_nearswap(2, 0, 1, 1, 5, 0.5, in, out, 1, 0, &err), ALLOY_OK);
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], expect[e], 1e-7);
    /* the base may come second in input order */
    const float *in2[2] = {b, a};
    CHECK_INT(run_nearswap(2, 1, 1, 1, 5, 0.5, in2, out, 1, 2, &err), ALLOY_OK);
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], expect[e], 1e-7);
}

TEST(nearswap_golden_random)
{
    enum { R = 13, C = 11, N = R * C };
    static float a[N], b[N], out[N];
    static double ts[] = {1e-4, 0.01, 0.3, 5.0, 1e-7};
    lcg_state = 7;
    for (int e = 0; e < N; e++) {
        a[e] = (float)(lcg_unit() * 2 - 1);
        if (e % 3 == 0) a[e] *= 1e-6f; /* near zero, so sub-1e-6 differences are visible */
        /* mix of identical, tiny, medium and large differences */
        int kind = e % 4;
        double scale = kind == 0 ? 0 : kind == 1 ? 1e-7 : kind == 2 ? 1e-3 : 1.0;
        b[e] = (float)(a[e] + scale * (lcg_unit() * 2 - 1));
    }
    for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
        for (int v = 0; v < 4; v++) {
            /* v & 1: which tensor is the base; v & 2: the base's position among the inputs */
            const float *bt = (v & 1) ? b : a, *ot = (v & 1) ? a : b;
            int base = (v & 2) ? 1 : 0;
            const float *in[2] = {base == 0 ? bt : ot, base == 0 ? ot : bt};
            uint64_t chunks[] = {0, 5, 64};
            for (int ci = 0; ci < 3; ci++) {
                struct alloy_err err = {0};
                CHECK_INT(run_nearswap(2, base, 2, R, C, ts[ti], in, out, ci == 2 ? 3 : 1, chunks[ci], &err),
                          ALLOY_OK);
                int bad = 0;
                for (int e = 0; e < N; e++) {
                    double want = naive_nearswap(ts[ti], bt[e], ot[e]);
                    if (!(fabs(out[e] - want) <= 1e-7 * fabs(want) + 1e-30)) bad++;
                }
                CHECK_MSG(bad == 0, "t=%g variant=%d chunk=%d: %d mismatches", ts[ti], v, ci, bad);
            }
        }
    }
}

TEST(nearswap_base_only_returns_base)
{
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    float out[6];
    const float *in[1] = {a};
    struct alloy_err err = {0};
    CHECK_INT(run_nearswap(1, 0, 1, 1, 6, 0.1, in, out, 1, 4, &err), ALLOY_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
}

TEST(nearswap_difference_floor)
{
    /* |a - b| below 1e-6 is floored to 1e-6: a = 0, b = 5e-7, t = 1e-7 -> w = 0.1, R = 0.1 b
     * (without the floor w would be 0.2); a = 0, b = 2e-7, t = 3e-7 -> w = 0.3. */
    float a[2] = {0, 0}, b[2] = {5e-7f, 2e-7f};
    const float *in[2] = {a, b};
    float out[2];
    struct alloy_err err = {0};
    CHECK_INT(run_nearswap(2, 0, 1, 1, 1, 1e-7, in, out, 1, 0, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 0.1 * (double)b[0], 1e-7 * 0.1 * b[0]);
    CHECK_INT(run_nearswap(2, 0, 1, 1, 2, 3e-7, in, out, 1, 0, &err), ALLOY_OK);
    CHECK_NEAR(out[1], 0.3 * (double)b[1], 1e-7 * 0.3 * b[1]);
}

TEST(nearswap_config_errors)
{
    float a[3] = {0}, b[3] = {0}, c[3] = {0}, out[3];
    const float *in[3] = {a, b, c};
    struct alloy_err err = {0};
    CHECK_INT(run_nearswap(2, 0, 1, 1, 3, NAN, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "`t` is required");
    CHECK_STR_CONTAINS(err.msg, "test.yml");
    CHECK_INT(run_nearswap(2, 0, 1, 1, 3, 0.0, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "must be > 0");
    CHECK_INT(run_nearswap(2, 0, 1, 1, 3, -1.0, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_INT(run_nearswap(2, -1, 1, 1, 3, 0.1, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "base_model");
    CHECK_INT(run_nearswap(3, 0, 1, 1, 3, 0.1, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "exactly one other model");
}
