/*
 * gta_case.c — shared by the task-arithmetic family's tests (test_gta.c,
 * test_gta_avx512.c): a case (method, shape, per-model weight, density and
 * extra parameter, global switches), its runner on float32 or bfloat16
 * inputs with a pool of threads, and the tests' own random inputs.
 */
#include "gta_case.h"

#include "test.h"
#include "methods/method.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rs = 88172645463325252ull;
double urand(void) /* xorshift64*: the tests' own generator */
{
    g_rs ^= g_rs >> 12;
    g_rs ^= g_rs << 25;
    g_rs ^= g_rs >> 27;
    return (double)((g_rs * 2685821657736338717ull) >> 11) * 0x1p-53;
}

/* A value in [-span, span] on the 1/64 grid. */
float grid(int span) { return (float)((int)(urand() * (2 * span + 1)) - span) / 64.0f; }

void gcase_init(struct gcase *k, const char *method, int n, int base, uint64_t rows, uint64_t cols)
{
    memset(k, 0, sizeof *k);
    k->method = method;
    k->n = n;
    k->base = base;
    k->ndim = rows == 1 ? 1 : 2;
    k->rows = rows;
    k->cols = cols;
    for (int i = 0; i < MAXM; i++) k->w[i] = k->density[i] = k->extra[i] = NAN;
    k->normalize = k->rescale = k->lambda = NAN;
    k->seed = 7;
}

/* run_case with the inputs as bfloat16 values (in16: the method may take them raw) instead of float32. */
int run_case_in(const struct gcase *k, const float *const *in, const uint16_t *const *in16, float *out,
                       int threads, uint64_t chunk, struct alloy_err *err)
{
    const struct alloy_method *m = alloy_method_find(k->method);
    if (!m) return -1;
    int np = m->nparams;
    double gp[16], tp[MAXM * 16];
    static const char *models[MAXM] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10", "m11",
                                       "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20", "m21", "m22", "m23"};
    for (int p = 0; p < np; p++) {
        const char *nm = m->params[p].name;
        double v = m->params[p].def;
        if (!strcmp(nm, "normalize") && !isnan(k->normalize)) v = k->normalize;
        if (!strcmp(nm, "rescale") && !isnan(k->rescale)) v = k->rescale;
        if (!strcmp(nm, "lambda") && !isnan(k->lambda)) v = k->lambda;
        gp[p] = v;
        for (int i = 0; i < k->n; i++) {
            double t = m->params[p].def;
            if (!strcmp(nm, "weight")) t = k->w[i];
            if (!strcmp(nm, "density") && !isnan(k->density[i])) t = k->density[i];
            if ((!strcmp(nm, "gamma") || !strcmp(nm, "epsilon")) && !isnan(k->extra[i])) t = k->extra[i];
            tp[i * np + p] = t;
        }
    }
    int64_t shape[2] = {(int64_t)k->rows, (int64_t)k->cols};
    if (k->ndim == 1) shape[0] = (int64_t)(k->rows * k->cols);
    struct alloy_merge_job job = {.name = "model.layers.0.mlp.up_proj.weight", .config_path = "test.yml",
                                  .ndim = k->ndim, .shape = shape, .numel = k->rows * k->cols, .rows = k->rows,
                                  .cols = k->cols, .n = k->n, .base = k->base, .models = models, .gp = gp,
                                  .tp = tp, .seed = k->seed, .kernels = k->kernels};
    struct alloy_pool *pool = threads > 0 ? alloy_pool_new(threads) : NULL; /* 0: this thread */
    int rc = in16 ? alloy_method_run_memory_bf16(m, &job, in16, out, pool, chunk, err)
                  : alloy_method_run_memory(m, &job, in, out, pool, chunk, err);
    alloy_pool_free(pool);
    return rc;
}

int run_case(const struct gcase *k, const float *const *in, float *out, int threads, uint64_t chunk,
                    struct alloy_err *err)
{
    return run_case_in(k, in, NULL, out, threads, chunk, err);
}

float **make_inputs(int n, size_t N, int span)
{
    float **in = malloc((size_t)n * sizeof *in);
    for (int i = 0; i < n; i++) {
        in[i] = malloc(N * sizeof(float));
        for (size_t e = 0; e < N; e++) in[i][e] = grid(span);
    }
    return in;
}

void free_inputs(float **in, int n)
{
    for (int i = 0; i < n; i++) free(in[i]);
    free(in);
}

/* ---------------------------------------------------------------- registry and parameters */
