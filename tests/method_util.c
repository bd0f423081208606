/*
 * method_util.c — see method_util.h.
 */
#include "test.h"
#include "method_util.h"

#include <stdlib.h>


static const char *const tj_models[] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"};

void tj_setup(struct tj *t, const struct alloy_method *m, int ndim, const int64_t *shape, int n, int base)
{
    memset(t, 0, sizeof *t);
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= (uint64_t)(t->shape[d] = shape[d]);
    t->job.name = "model.layers.0.self_attn.q_proj.weight";
    t->job.config_path = "test.yml";
    t->job.ndim = ndim;
    t->job.shape = t->shape;
    t->job.numel = numel;
    t->job.cols = ndim ? (uint64_t)shape[ndim - 1] : 1;
    t->job.rows = numel / t->job.cols;
    t->job.n = n;
    t->job.base = base;
    t->job.models = tj_models;
    t->job.gp = t->gp;
    t->job.tp = t->tp;
    for (int k = 0; k < m->nparams; k++) {
        t->gp[k] = m->params[k].def;
        for (int i = 0; i < n; i++) t->tp[i * m->nparams + k] = m->params[k].def;
    }
}

static uint64_t g_lcg = 88172645463325252ull;
float frand(void)
{
    g_lcg = g_lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_lcg >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* Runs the job single-chunk, with chunks of 5 and 64 elements, on this thread and on 3 threads;
 * every output must match `expect` within tol * max(1, max|expect|). */
void check_runs(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                       const double *expect, double tol)
{
    size_t n = (size_t)job->numel;
    double scale = 1;
    for (size_t e = 0; e < n; e++) scale = fmax(scale, fabs(expect[e]));
    float *out = calloc(n ? n : 1, sizeof *out);
    struct alloy_pool *pool = alloy_pool_new(3);
    const uint64_t chunks[] = {0, 5, 64};
    for (int p = 0; p < 2; p++)
        for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
            struct alloy_err err = {0};
            int rc = alloy_method_run_memory(m, job, in, out, p ? pool : NULL, chunks[ci], &err);
            CHECK_MSG(rc == ALLOY_OK, "run failed (chunk %llu): %s", (unsigned long long)chunks[ci], err.msg);
            int bad = 0;
            for (size_t e = 0; e < n && bad < 3; e++)
                if (!(fabs(out[e] - expect[e]) <= tol * scale)) {
                    test_fail(__FILE__, __LINE__, "element %zu: %.9g, expected %.9g (chunk %llu, pool %d)", e,
                              out[e], expect[e], (unsigned long long)chunks[ci], p);
                    bad++;
                }
        }
    alloy_pool_free(pool);
    free(out);
}


int run_on_threads(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                   float *out, int threads, uint64_t chunk, struct alloy_err *err)
{
    struct alloy_pool *pool = alloy_pool_new(threads);
    int rc = alloy_method_run_memory(m, job, in, out, pool, chunk, err);
    alloy_pool_free(pool);
    return rc;
}
