/*
 * driver.c — runs one merge method over one tensor, chunk by chunk.
 *
 * DESIGN
 *   The tensor is cut into chunks whose boundaries depend only on its shape
 *   (and on ALLOY_METHOD_WHOLE_ROWS), so reductions folded in chunk order
 *   give the same bits for any thread count. Each pool thread owns scratch
 *   for one chunk of every input plus the output; nothing scales with the
 *   tensor size except the per-chunk accumulators of scan passes
 *   (nchunks x acc_size bytes). The first error raised by any chunk (its
 *   load, scan, apply or store) wins; the remaining chunks are skipped.
 *
 *   The driver also chooses how inputs arrive (method.h enum
 *   alloy_input_mode): float32, or the stored bfloat16 values when the job
 *   says every input is stored so and the method takes them; the load
 *   callback and every chunk carry that mode.
 *
 *   Scratch is bounded too: tensors of more than ALLOY_CHUNK_ELEMS x
 *   ALLOY_MAX_CHUNKS elements get larger chunks, so when (inputs + 1)
 *   chunks per thread would exceed ALLOY_SCRATCH_BUDGET in all, the chunks
 *   run in fewer lanes (lane l takes chunks l, l + lanes, ...; one scratch
 *   each) instead of on every thread. Results do not change: they never
 *   depend on which thread runs a chunk.
 */
#include "core/internal.h"
#include "methods/method.h"

#include <pthread.h>
#include <stdatomic.h>

struct run {
    const struct alloy_method *m;
    const struct alloy_merge_job *job;
    alloy_load_fn load;
    void *load_ctx;
    alloy_store_fn store;
    void *store_ctx;
    uint64_t chunk_elems;   /* elements per chunk (whole rows when required) */
    size_t nchunks;
    float **scratch;        /* per lane: (n + 1) * chunk_elems floats */
    int lanes;              /* < pool threads when the scratch budget limits them */
    enum alloy_input_mode input; /* chosen after init (method.h): float32, or the stored bfloat16 values */
    void *state;
    int pass;               /* -1: apply */
    size_t sample;          /* chunks of a sample pass, 0: every chunk */
    uint8_t *accs;
    atomic_int failed;
    pthread_mutex_t mu;
    struct alloy_err err;
};

static void chunk_at(const struct run *r, size_t i, struct alloy_chunk *c)
{
    c->index = i;
    c->input = r->input;
    c->e0 = (uint64_t)i * r->chunk_elems;
    c->e1 = c->e0 + r->chunk_elems;
    if (c->e1 > r->job->numel) c->e1 = r->job->numel;
}

static void fail(struct run *r, const struct alloy_err *e)
{
    pthread_mutex_lock(&r->mu);
    if (!atomic_load(&r->failed)) {
        r->err = *e;
        atomic_store(&r->failed, 1);
    }
    pthread_mutex_unlock(&r->mu);
}

static void run_chunk(struct run *r, size_t item, int slot)
{
    if (atomic_load(&r->failed)) return;
    const struct alloy_merge_job *job = r->job;
    if (r->sample) item = alloy_sample_chunk(item, r->sample, r->nchunks);
    struct alloy_chunk c;
    chunk_at(r, item, &c);
    float *base = r->scratch[slot];
    const float *x[job->n > 0 ? job->n : 1];
    struct alloy_err e = {0};
    for (int i = 0; i < job->n; i++) {
        float *dst = base + (size_t)i * r->chunk_elems;
        if (r->load(r->load_ctx, i, c.e0, c.e1, dst, (int)r->input, &e) != ALLOY_OK) { fail(r, &e); return; }
        x[i] = dst;
    }
    if (r->pass >= 0) {
        if (r->m->scan(job, r->state, r->pass, &c, x, r->accs + item * r->m->acc_size, &e) != ALLOY_OK) fail(r, &e);
        return;
    }
    float *out = base + (size_t)job->n * r->chunk_elems;
    if (r->m->apply(job, r->state, &c, x, out, &e) != ALLOY_OK ||
        r->store(r->store_ctx, c.e0, c.e1, out, &e) != ALLOY_OK)
        fail(r, &e);
}

/* The driver's choice of input mode for this tensor (method.h): the stored bfloat16 values when every
 * input is stored so and used unrounded, and the method takes them for this tensor. */
static enum alloy_input_mode input_mode(const struct alloy_method *m, const struct alloy_merge_job *job,
                                        const void *state)
{
    if (job->inputs_bf16 && (m->flags & ALLOY_METHOD_TAKES_BF16) && (!m->takes_bf16 || m->takes_bf16(job, state)))
        return ALLOY_INPUT_BF16_RAW;
    return ALLOY_INPUT_F32;
}

static void run_item(void *ctx, size_t item, int ith) { run_chunk(ctx, item, ith); }

static void run_lane(void *ctx, size_t lane, int ith)
{
    struct run *r = ctx;
    size_t items = r->sample ? r->sample : r->nchunks;
    for (size_t i = lane; i < items; i += (size_t)r->lanes) run_chunk(r, i, (int)lane);
}

/* Every chunk (or the pass's sample) once, on all threads or in r->lanes lanes. */
static void run_all(struct alloy_pool *pool, struct run *r)
{
    size_t items = r->sample ? r->sample : r->nchunks;
    if (r->lanes < alloy_pool_size(pool))
        alloy_pool_for(pool, (size_t)r->lanes < items ? (size_t)r->lanes : items, run_lane, r);
    else
        alloy_pool_for(pool, items, run_item, r);
}

int alloy_method_execute(const struct alloy_method *m, const struct alloy_merge_job *job, alloy_load_fn load,
                         void *load_ctx, alloy_store_fn store, void *store_ctx, struct alloy_pool *pool,
                         uint64_t chunk_elems, struct alloy_err *err)
{
    if (!chunk_elems) {
        /* At most ALLOY_MAX_CHUNKS chunks, so per-chunk accumulators stay bounded for huge tensors;
           the size still depends only on the shape. */
        chunk_elems = ALLOY_CHUNK_ELEMS;
        if (job->numel / chunk_elems >= ALLOY_MAX_CHUNKS) chunk_elems = job->numel / ALLOY_MAX_CHUNKS + 1;
    }
    if ((m->flags & ALLOY_METHOD_WHOLE_ROWS) || job->whole_rows) {
        uint64_t rows = chunk_elems / (job->cols ? job->cols : 1);
        chunk_elems = (rows ? rows : 1) * (job->cols ? job->cols : 1);
    }
    /* never more than the tensor holds: an empty tensor with rows of 2^40 elements needs no scratch */
    if (chunk_elems > job->numel) chunk_elems = job->numel ? job->numel : 1;
    struct run r = {.m = m, .job = job, .load = load, .load_ctx = load_ctx, .store = store, .store_ctx = store_ctx,
                    .chunk_elems = chunk_elems ? chunk_elems : 1};
    r.nchunks = job->numel ? (size_t)((job->numel + r.chunk_elems - 1) / r.chunk_elems) : 0;
    int nth = alloy_pool_size(pool);
    int rc = ALLOY_OK;
    pthread_mutex_init(&r.mu, NULL);
    atomic_init(&r.failed, 0);
    size_t per_lane = ((size_t)job->n + 1) * r.chunk_elems * sizeof(float);
    r.lanes = nth;
    if ((uint64_t)nth * per_lane > ALLOY_SCRATCH_BUDGET) {
        uint64_t fit = ALLOY_SCRATCH_BUDGET / per_lane;
        r.lanes = fit < 1 ? 1 : (int)fit;
    }
    r.scratch = alloy_xcalloc((size_t)nth, sizeof *r.scratch);
    r.state = alloy_xcalloc(1, m->state_size ? m->state_size : 1);
    if (!r.scratch || !r.state) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for merge state", job->name);
        goto out;
    }
    for (int t = 0; t < r.lanes; t++) {
        /* the pool keeps its buffers across tensors: no fresh pages to fault and zero per tensor */
        r.scratch[t] = pool ? alloy_pool_scratch(pool, t, per_lane) : alloy_xmalloc(per_lane);
        if (!r.scratch[t]) {
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %llu-element chunks", job->name,
                               (unsigned long long)r.chunk_elems);
            goto out;
        }
    }
    if (m->init && (rc = m->init(job, r.state, err)) != ALLOY_OK) goto out_state;
    r.input = input_mode(m, job, r.state);
    for (int pass = 0; m->want_pass && m->want_pass(job, r.state, pass); pass++) {
        r.pass = pass;
        r.accs = alloy_xcalloc(r.nchunks ? r.nchunks : 1, m->acc_size ? m->acc_size : 1);
        if (!r.accs) {
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %zu chunk accumulators", job->name,
                               r.nchunks);
            goto out_state;
        }
        size_t k = m->pass_sample ? m->pass_sample(job, r.state, pass) : 0;
        r.sample = k && k < r.nchunks ? k : 0;
        run_all(pool, &r);
        r.sample = 0;
        if (atomic_load(&r.failed)) {
            if (err) *err = r.err;
            rc = r.err.status ? (int)r.err.status : ALLOY_ERR_IO;
        } else if (m->end_pass) {
            rc = m->end_pass(job, r.state, pass, r.accs, r.nchunks, err);
        }
        free(r.accs);
        r.accs = NULL;
        if (rc) goto out_state;
    }
    r.pass = -1;
    run_all(pool, &r);
    if (atomic_load(&r.failed)) {
        if (err) *err = r.err;
        rc = r.err.status ? (int)r.err.status : ALLOY_ERR_IO;
    }
out_state:
    if (m->fini) m->fini(job, r.state);
out:
    if (r.scratch && !pool)
        for (int t = 0; t < r.lanes; t++) free(r.scratch[t]);
    free(r.scratch);
    free(r.state);
    pthread_mutex_destroy(&r.mu);
    return rc;
}

/* ------------------------------------------------------------ in-memory runner (tests) */

struct mem_io {
    const float *const *inputs;
    const uint16_t *const *bf16; /* instead of inputs */
    float *out;
};

static int mem_load(void *ctx, int input, uint64_t e0, uint64_t e1, float *dst, int raw, struct alloy_err *err)
{
    const struct mem_io *io = ctx;
    size_t n = (size_t)(e1 - e0);
    if (!io->bf16) memcpy(dst, io->inputs[input] + e0, n * sizeof *dst);
    else if (raw == ALLOY_INPUT_BF16_RAW) memcpy(dst, io->bf16[input] + e0, n * sizeof *io->bf16[input]);
    else alloy_to_f32(ALLOY_DTYPE_BF16, io->bf16[input] + e0, dst, n);
    return ALLOY_OK;
}

static int mem_store(void *ctx, uint64_t e0, uint64_t e1, float *src, struct alloy_err *err)
{
    struct mem_io *io = ctx;
    memcpy(io->out + e0, src, (size_t)(e1 - e0) * sizeof *src);
    return ALLOY_OK;
}

int alloy_method_run_memory(const struct alloy_method *m, const struct alloy_merge_job *job,
                            const float *const *inputs, float *out, struct alloy_pool *pool, uint64_t chunk_elems,
                            struct alloy_err *err)
{
    struct mem_io io = {inputs, NULL, out};
    if (m->check) {
        int rc = m->check(job, err);
        if (rc) return rc;
    }
    return alloy_method_execute(m, job, mem_load, &io, mem_store, &io, pool, chunk_elems, err);
}

int alloy_method_run_memory_bf16(const struct alloy_method *m, const struct alloy_merge_job *job,
                                 const uint16_t *const *inputs, float *out, struct alloy_pool *pool,
                                 uint64_t chunk_elems, struct alloy_err *err)
{
    struct mem_io io = {NULL, inputs, out};
    struct alloy_merge_job j = *job;
    j.inputs_bf16 = 1;
    if (m->check) {
        int rc = m->check(&j, err);
        if (rc) return rc;
    }
    return alloy_method_execute(m, &j, mem_load, &io, mem_store, &io, pool, chunk_elems, err);
}
