/*
 * test_ram.c — ram and ramplus_tl against a naive double-precision
 * evaluation of spec §1.12 (masks, counts and lambda written out literally),
 * hand-computed values, base-only and no-base cases, the epsilon edge
 * cases, 1-D tensors, a base in the middle of the inputs, and bit-identical
 * results for any chunking and thread count.
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

/* gp: ram {epsilon}; ramplus_tl {r, alpha, epsilon} */
static int run_ram(const char *method, int n, int base, int ndim, uint64_t rows, uint64_t cols, const double *gp,
                   const float *const *in, float *out, int threads, uint64_t chunk, struct alloy_err *err)
{
    const struct alloy_method *m = alloy_method_find(method);
    if (!m) return -1;
    int64_t shape[2] = {(int64_t)rows, (int64_t)cols};
    if (ndim == 1) shape[0] = (int64_t)(rows * cols);
    const char *models[8] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"};
    double tp[8 * 3];
    for (int i = 0; i < 8 * 3; i++) tp[i] = NAN;
    struct alloy_merge_job job = {.name = "model.layers.1.self_attn.q_proj.weight", .config_path = "test.yml",
                                  .ndim = ndim, .shape = shape, .numel = rows * cols, .rows = rows, .cols = cols,
                                  .n = n, .base = base, .models = models, .gp = gp, .tp = tp, .seed = 0};
    return run_on_threads(m, &job, in, out, threads, chunk, err);
}

/* Spec §1.12 literally, in double: masks over the flattened tensor, counts
 * per model for RAM+, then the sum of the unique and shared parts. */
static void naive_ram(int plus, int n, int base, size_t N, const float *const *in, double r, double alpha, double eps,
                      double *res)
{
    double lambda[8];
    for (int i = 0; i < n; i++) lambda[i] = 1;
    if (plus) {
        for (int i = 0; i < n; i++) {
            if (i == base) continue;
            double sh = 0, un = 0;
            for (size_t e = 0; e < N; e++) {
                double ti = (double)in[i][e] - in[base][e];
                if (!(fabs(ti) > eps)) continue;
                int c = 0;
                for (int j = 0; j < n; j++)
                    if (j != base && fabs((double)in[j][e] - in[base][e]) > eps) c++;
                if (c > 1) sh += 1;
                if (c == 1) un += 1;
            }
            double rho = sh / (un > eps ? un : eps);
            double cl = rho < 0 ? 0 : rho;
            if (cl > alpha) cl = alpha;
            lambda[i] = 1 + r * cl;
        }
    }
    for (size_t e = 0; e < N; e++) {
        int c = 0;
        for (int j = 0; j < n; j++)
            if (j != base && fabs((double)in[j][e] - in[base][e]) > eps) c++;
        double unique = c == 1, shared = c > 1, cmax = c > 1 ? c : 1;
        double delta = 0;
        for (int i = 0; i < n; i++) {
            if (i == base) continue;
            double ti = (double)in[i][e] - in[base][e];
            double ai = fabs(ti) > eps;
            delta += lambda[i] * ti * ai * unique + ti * ai * shared / cmax;
        }
        res[e] = in[base][e] + delta;
    }
}

TEST(ram_registered_params)
{
    const struct alloy_method *ram = alloy_method_find("ram"), *plus = alloy_method_find("ramplus_tl");
    CHECK(ram && plus);
    if (!ram || !plus) return;
    CHECK_INT(ram->nparams, 1);
    CHECK(strcmp(ram->params[0].name, "epsilon") == 0 && ram->params[0].def == 1e-5);
    CHECK(ram->params[0].scope == ALLOY_PARAM_GLOBAL);
    CHECK_INT(plus->nparams, 3);
    int kr = alloy_method_param(plus, "r"), ka = alloy_method_param(plus, "alpha"),
        ke = alloy_method_param(plus, "epsilon");
    CHECK(kr >= 0 && ka >= 0 && ke >= 0);
    if (kr < 0 || ka < 0 || ke < 0) return;
    CHECK(plus->params[kr].def == 0.1 && plus->params[ka].def == 0.2 && plus->params[ke].def == 1e-5);
    CHECK(plus->params[kr].scope == ALLOY_PARAM_GLOBAL && plus->params[ka].scope == ALLOY_PARAM_GLOBAL);
    CHECK(!(ram->flags & ALLOY_METHOD_F32_OUTPUT));
    CHECK(plus->flags & ALLOY_METHOD_F32_OUTPUT);
}

TEST(ram_hand_values)
{
    /* B = 0; X1 = [1, 0, 2, 1e-6], X2 = [0, 3, 4, 0], eps 1e-5:
     * pos0 unique(X1) 1; pos1 unique(X2) 3; pos2 shared (2+4)/2 = 3; pos3 below eps -> 0.
     * RAM+: each model sh = 1, un = 1 -> rho = 1 -> lambda = 1 + r * min(1, alpha). */
    float b[4] = {0, 0, 0, 0}, x1[4] = {1, 0, 2, 1e-6f}, x2[4] = {0, 3, 4, 0};
    const float *in[3] = {b, x1, x2};
    float out[4];
    struct alloy_err err = {0};
    double g_ram[1] = {1e-5};
    CHECK_INT(run_ram("ram", 3, 0, 1, 1, 4, g_ram, in, out, 1, 0, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 1, 0);
    CHECK_NEAR(out[1], 3, 0);
    CHECK_NEAR(out[2], 3, 0);
    CHECK_NEAR(out[3], 0, 0);
    double g_plus[3] = {0.1, 0.2, 1e-5}; /* lambda = 1.02 */
    CHECK_INT(run_ram("ramplus_tl", 3, 0, 1, 1, 4, g_plus, in, out, 1, 3, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 1.02, 1e-6);
    CHECK_NEAR(out[1], 3.06, 1e-6);
    CHECK_NEAR(out[2], 3, 0);
    CHECK_NEAR(out[3], 0, 0);
    double g_plus2[3] = {0.5, 1.0, 1e-5}; /* lambda = 1.5 */
    CHECK_INT(run_ram("ramplus_tl", 3, 0, 1, 1, 4, g_plus2, in, out, 1, 1, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 1.5, 1e-6);
    CHECK_NEAR(out[1], 4.5, 1e-6);
    CHECK_NEAR(out[2], 3, 0);
}

TEST(ram_golden_random)
{
    enum { R = 9, C = 17, N = R * C, NM = 4 };
    static float x[NM][N], out[N], out2[N];
    static double want[N];
    lcg_state = 99;
    for (int e = 0; e < N; e++) x[0][e] = (float)(lcg_unit() * 2 - 1);
    for (int i = 1; i < NM; i++)
        for (int e = 0; e < N; e++) {
            double u = lcg_unit();
            /* 40% unchanged, 15% tiny (< eps), 45% a real delta */
            double d = u < 0.4 ? 0 : u < 0.55 ? 1e-7 * (lcg_unit() - 0.5) : 0.01 + 0.5 * lcg_unit();
            if (lcg_unit() < 0.5) d = -d;
            x[i][e] = (float)(x[0][e] + d);
        }
    struct { const char *m; int plus; double gp[3]; } cases[] = {
        {"ram", 0, {1e-5}}, {"ram", 0, {0.2}},
        {"ramplus_tl", 1, {0.1, 0.2, 1e-5}}, {"ramplus_tl", 1, {0.7, 3.0, 1e-5}}, {"ramplus_tl", 1, {0.3, -0.5, 0.05}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (int base = 0; base < NM; base += 2) {
            /* base 0: inputs in order; base 2: the base sits in the middle */
            const float *in[NM] = {x[0], x[1], x[2], x[3]};
            if (base == 2) {
                in[0] = x[1];
                in[1] = x[2];
                in[2] = x[0];
            }
            double r = cases[k].gp[0], alpha = cases[k].gp[1], eps = cases[k].plus ? cases[k].gp[2] : cases[k].gp[0];
            naive_ram(cases[k].plus, NM, base, N, in, r, alpha, eps, want);
            struct alloy_err err = {0};
            CHECK_INT(run_ram(cases[k].m, NM, base, 2, R, C, cases[k].gp, in, out, 1, 0, &err), ALLOY_OK);
            int bad = 0;
            for (int e = 0; e < N; e++)
                if (!(fabs(out[e] - want[e]) <= 1e-7 * (1 + fabs(want[e])))) bad++;
            CHECK_MSG(bad == 0, "%s case %zu base %d: %d mismatches", cases[k].m, k, base, bad);
            /* any chunking / thread count gives the same bits */
            uint64_t chunks[] = {5, 64, 1};
            for (int ci = 0; ci < 3; ci++) {
                CHECK_INT(run_ram(cases[k].m, NM, base, 2, R, C, cases[k].gp, in, out2, ci == 1 ? 3 : 1, chunks[ci],
                                  &err), ALLOY_OK);
                CHECK_MSG(memcmp(out, out2, sizeof out) == 0, "%s: chunk %d differs", cases[k].m, ci);
            }
        }
    }
}

TEST(ram_single_model_and_base_only)
{
    /* one model: every active delta is unique -> full delta (x lambda = 1 + r*min(0/un, a) = 1) */
    float b[5] = {1, 2, 3, 4, 5}, x1[5] = {1.5f, 2, 3 + 1e-6f, 3, 5.25f};
    const float *in[2] = {b, x1};
    float out[5];
    struct alloy_err err = {0};
    double g[3] = {0.1, 0.2, 1e-5};
    CHECK_INT(run_ram("ramplus_tl", 2, 0, 1, 1, 5, g, in, out, 1, 2, &err), ALLOY_OK);
    float want[5] = {1.5f, 2, 3, 3, 5.25f};
    for (int e = 0; e < 5; e++) CHECK_NEAR(out[e], want[e], 1e-6);
    const float *only[1] = {b};
    CHECK_INT(run_ram("ram", 1, 0, 1, 1, 5, g, only, out, 1, 2, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
    CHECK_INT(run_ram("ramplus_tl", 1, 0, 1, 1, 5, g, only, out, 1, 2, &err), ALLOY_OK);
    CHECK(memcmp(out, b, sizeof b) == 0);
}

TEST(ram_epsilon_zero_no_nan)
{
    /* X1 equals B everywhere (un = sh = 0): mergekit would compute 0/max(0, 0) = NaN
     * for its lambda with epsilon 0; that lambda multiplies nothing, so no NaN here. */
    float b[2] = {1, 2}, x1[2] = {1, 2}, x2[2] = {1.5f, 2};
    const float *in[3] = {b, x1, x2};
    float out[2];
    struct alloy_err err = {0};
    double g[3] = {0.1, 0.2, 0.0};
    CHECK_INT(run_ram("ramplus_tl", 3, 0, 1, 1, 2, g, in, out, 1, 0, &err), ALLOY_OK);
    CHECK_NEAR(out[0], 1.5, 0);
    CHECK_NEAR(out[1], 2, 0);
}

TEST(ram_config_errors)
{
    float a[2] = {0}, out[2];
    const float *in[2] = {a, a};
    struct alloy_err err = {0};
    double g[3] = {0.1, 0.2, 1e-5};
    CHECK_INT(run_ram("ram", 2, -1, 1, 1, 2, g, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "base_model");
    CHECK_STR_CONTAINS(err.msg, "ram");
    CHECK_INT(run_ram("ramplus_tl", 2, -1, 1, 1, 2, g, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    double gbad[3] = {NAN, 0.2, 1e-5};
    CHECK_INT(run_ram("ramplus_tl", 2, 0, 1, 1, 2, gbad, in, out, 1, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "`r`");
}
