/*
 * matrix.c — runs a matrix method: whole tensors in, whole tensor out.
 *
 * DESIGN
 *   Some methods need a whole matrix at once (an SVD, a least-squares fit,
 *   LoRA extraction) and cannot stream. For them the engine reads every
 *   input whole — through the same sources and the same load callback as
 *   streaming methods, in chunks of ALLOY_CHUNK_ELEMS run in parallel on the
 *   pool — into (n + 1) float32 buffers, calls the method once, and stores
 *   the result through the same store callback, chunk by chunk. The memory
 *   this takes is proportional to the tensor: (n + 1) x numel x 4 bytes plus
 *   the method's own scratch, checked against a budget before anything is
 *   allocated, so a tensor too large for the bound is an error naming it,
 *   not an out-of-memory kill.
 */
#include "core/internal.h"
#include "methods/method.h"

#include <pthread.h>

struct whole {
    const struct alloy_merge_job *job;
    alloy_load_fn load;
    void *load_ctx;
    alloy_store_fn store;
    void *store_ctx;
    float **x;
    float *out;
    int storing;              /* 0: load every input, 1: store the output */
    pthread_mutex_t mu;
    int failed;
    struct alloy_err err;
};

static void chunk_item(void *ctx, size_t item, int ith)
{
    struct whole *w = ctx;
    const struct alloy_merge_job *job = w->job;
    size_t nchunks = (size_t)((job->numel + ALLOY_CHUNK_ELEMS - 1) / ALLOY_CHUNK_ELEMS);
    size_t input = w->storing ? 0 : item / nchunks, c = item % nchunks;
    uint64_t e0 = (uint64_t)c * ALLOY_CHUNK_ELEMS, e1 = e0 + ALLOY_CHUNK_ELEMS;
    if (e1 > job->numel) e1 = job->numel;
    struct alloy_err e = {0};
    pthread_mutex_lock(&w->mu);
    int stop = w->failed;
    pthread_mutex_unlock(&w->mu);
    if (stop) return;
    int rc = w->storing ? w->store(w->store_ctx, e0, e1, w->out + e0, &e)
                        : w->load(w->load_ctx, (int)input, e0, e1, w->x[input] + e0, 0, &e);
    if (rc) {
        pthread_mutex_lock(&w->mu);
        if (!w->failed) w->failed = 1, w->err = e;
        pthread_mutex_unlock(&w->mu);
    }
}

static int run_chunks(struct whole *w, struct alloy_pool *pool, size_t items, struct alloy_err *err)
{
    if (pool) alloy_pool_for(pool, items, chunk_item, w);
    else
        for (size_t i = 0; i < items; i++) chunk_item(w, i, 0);
    if (!w->failed) return ALLOY_OK;
    if (err) *err = w->err;
    return w->err.status ? (int)w->err.status : ALLOY_ERR_IO;
}

int alloy_matrix_execute(const struct alloy_method *m, const struct alloy_merge_job *job, alloy_load_fn load,
                         void *load_ctx, alloy_store_fn store, void *store_ctx, struct alloy_pool *pool,
                         uint64_t budget, struct alloy_err *err)
{
    if (job->ndim != 2)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: tensor '%s': method %s works on 2-D matrices, this one has "
                             "%d dimensions", job->config_path ? job->config_path : "merge", job->name, m->name,
                             job->ndim);
    uint64_t need = 0, tensor = 0, scratch = m->matrix_scratch ? m->matrix_scratch(job) : 0;
    if (!budget) budget = ALLOY_MATRIX_BUDGET;
    if (ckd_mul_u64(&tensor, job->numel, sizeof(float)) || ckd_mul_u64(&need, tensor, (uint64_t)job->n + 1) ||
        ckd_add_u64(&need, need, scratch) || need > budget)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "tensor '%s': method %s needs the whole %llu x %llu matrix "
                             "of %d inputs in memory (%.1f MiB), over the budget of %.1f MiB", job->name, m->name,
                             (unsigned long long)job->rows, (unsigned long long)job->cols, job->n,
                             (double)need / 1048576.0, (double)budget / 1048576.0);
    struct whole w = {.job = job, .load = load, .load_ctx = load_ctx, .store = store, .store_ctx = store_ctx};
    int rc = ALLOY_OK;
    w.x = alloy_xcalloc((size_t)job->n + 1, sizeof *w.x);
    for (int i = 0; w.x && i <= job->n && !rc; i++)
        if (!(w.x[i] = alloy_xmalloc(tensor ? (size_t)tensor : 1)))
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "tensor '%s': out of memory for %d whole inputs", job->name, job->n);
    if (!w.x) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "tensor '%s': out of memory", job->name);
    pthread_mutex_init(&w.mu, NULL);
    size_t nchunks = (size_t)((job->numel + ALLOY_CHUNK_ELEMS - 1) / ALLOY_CHUNK_ELEMS);
    if (!rc) rc = run_chunks(&w, pool, nchunks * (size_t)job->n, err);
    if (!rc) {
        w.out = w.x[job->n];
        rc = m->matrix(job, (const float *const *)w.x, w.out, err);
    }
    if (!rc) {
        w.storing = 1;
        rc = run_chunks(&w, pool, nchunks, err);
    }
    pthread_mutex_destroy(&w.mu);
    for (int i = 0; w.x && i <= job->n; i++) free(w.x[i]);
    free(w.x);
    return rc;
}
