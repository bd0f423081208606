/*
 * driver.c — runs one merge method over one tensor, chunk by chunk.
 *
 * DESIGN
 *   The tensor is cut into chunks of ALLOY_CHUNK_ELEMS elements (whole rows
 *   when the method or the sink needs them) whatever its size, so chunk
 *   boundaries depend only on its shape and reductions folded in chunk
 *   order give the same bits for any thread count. Each lane (a pool
 *   thread) owns scratch for one chunk of every input plus the output.
 *
 *   A scan pass runs in windows of at most ALLOY_MAX_CHUNKS consecutive
 *   chunks: the window's chunks run in parallel, each into its own
 *   accumulator, then the method folds the window's accumulators into its
 *   state (method.h fold, in chunk order) and the next window starts on
 *   fresh, zeroed accumulators; end_pass follows the last window. So the
 *   accumulators take window x acc_size bytes, never more, and a tensor of
 *   at most ALLOY_MAX_CHUNKS chunks (2^28 elements) runs in one window,
 *   which folds exactly as one reduction over every chunk did. A sample
 *   pass runs, in each window, the sampled chunks that fall in it. The
 *   apply pass needs no accumulators and runs every chunk at once. The
 *   first error raised by any chunk (its load, scan, apply or store) wins;
 *   the remaining chunks are skipped.
 *
 *   The driver also chooses how inputs arrive (method.h enum
 *   alloy_input_mode): float32, or the stored bfloat16 values when the job
 *   says every input is stored so and the method takes them; the load
 *   callback and every chunk carry that mode.
 *
 *   Scratch is bounded too: when (inputs + 1) chunks per thread would
 *   exceed ALLOY_SCRATCH_BUDGET in all (many threads or inputs, or rows of
 *   more than ALLOY_CHUNK_ELEMS elements for a whole-row method), the
 *   chunks run in fewer lanes (lane l takes items l, l + lanes, ...; one
 *   scratch each) instead of on every thread. Results do not change: they
 *   never depend on which thread runs a chunk. alloy_chunk_plan() computes
 *   all of this from the shape alone (tests pin it for huge tensors).
 */
#include "core/internal.h"
#include "methods/method.h"

#include <pthread.h>
#include <stdatomic.h>

/* Chunks per scan window; 0: ALLOY_MAX_CHUNKS (alloy_driver_set_window, tests only). */
static _Atomic size_t g_window_chunks;

size_t alloy_driver_set_window(size_t chunks)
{
    if (chunks > ALLOY_MAX_CHUNKS) chunks = ALLOY_MAX_CHUNKS;
    return atomic_exchange(&g_window_chunks, chunks);
}

void alloy_chunk_plan(const struct alloy_method *m, const struct alloy_merge_job *job, int threads,
                      uint64_t chunk_elems, struct alloy_chunk_plan *p)
{
    if (!chunk_elems) chunk_elems = ALLOY_CHUNK_ELEMS;
    if ((m->flags & ALLOY_METHOD_WHOLE_ROWS) || job->whole_rows) {
        uint64_t cols = job->cols ? job->cols : 1, rows = chunk_elems / cols;
        chunk_elems = (rows ? rows : 1) * cols;
    }
    /* never more than the tensor holds: an empty tensor with rows of 2^40 elements needs no scratch */
    if (chunk_elems > job->numel) chunk_elems = job->numel ? job->numel : 1;
    p->chunk_elems = chunk_elems;
    p->nchunks = job->numel ? (size_t)((job->numel + chunk_elems - 1) / chunk_elems) : 0;
    size_t w = atomic_load(&g_window_chunks);
    p->window = w ? w : ALLOY_MAX_CHUNKS;
    if (p->window > p->nchunks) p->window = p->nchunks ? p->nchunks : 1;
    p->lane_bytes = ((uint64_t)job->n + 1) * chunk_elems * sizeof(float);
    if (threads < 1) threads = 1;
    p->lanes = threads;
    if ((uint64_t)threads * p->lane_bytes > ALLOY_SCRATCH_BUDGET) {
        uint64_t fit = ALLOY_SCRATCH_BUDGET / p->lane_bytes;
        p->lanes = fit < 1 ? 1 : (int)fit;
    }
    p->acc_bytes = (uint64_t)p->window * (m->acc_size ? m->acc_size : 1);
}

struct run {
    const struct alloy_method *m;
    const struct alloy_merge_job *job;
    alloy_load_fn load;
    void *load_ctx;
    alloy_store_fn store;
    void *store_ctx;
    struct alloy_chunk_plan plan;
    float **scratch;        /* per lane: (n + 1) * chunk_elems floats */
    enum alloy_input_mode input; /* chosen after init (method.h): float32, or the stored bfloat16 values */
    void *state;
    int pass;               /* -1: apply */
    size_t sample;          /* chunks of a sample pass, 0: every chunk */
    size_t first;           /* the window's first chunk (its accumulator is accs[0]) */
    size_t item0, items;    /* the items this run covers: chunks first.., or sample indices item0.. */
    uint8_t *accs;
    atomic_int failed;
    pthread_mutex_t mu;
    struct alloy_err err;
};

static void chunk_at(const struct run *r, size_t i, struct alloy_chunk *c)
{
    c->index = i;
    c->input = r->input;
    c->e0 = (uint64_t)i * r->plan.chunk_elems;
    c->e1 = c->e0 + r->plan.chunk_elems;
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
    size_t index = r->sample ? alloy_sample_chunk(r->item0 + item, r->sample, r->plan.nchunks) : r->first + item;
    struct alloy_chunk c;
    chunk_at(r, index, &c);
    float *base = r->scratch[slot];
    const float *x[job->n > 0 ? job->n : 1];
    struct alloy_err e = {0};
    for (int i = 0; i < job->n; i++) {
        float *dst = base + (size_t)i * r->plan.chunk_elems;
        if (r->load(r->load_ctx, i, c.e0, c.e1, dst, (int)r->input, &e) != ALLOY_OK) { fail(r, &e); return; }
        x[i] = dst;
    }
    if (r->pass >= 0) {
        void *acc = r->accs + (index - r->first) * r->m->acc_size;
        if (r->m->scan(job, r->state, r->pass, &c, x, acc, &e) != ALLOY_OK) fail(r, &e);
        return;
    }
    float *out = base + (size_t)job->n * r->plan.chunk_elems;
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
    for (size_t i = lane; i < r->items; i += (size_t)r->plan.lanes) run_chunk(r, i, (int)lane);
}

/* The run's items once, on all threads or in plan.lanes lanes; the first error, if any. */
static int run_items(struct alloy_pool *pool, struct run *r, struct alloy_err *err)
{
    if (r->items && r->plan.lanes < alloy_pool_size(pool))
        alloy_pool_for(pool, (size_t)r->plan.lanes < r->items ? (size_t)r->plan.lanes : r->items, run_lane, r);
    else if (r->items)
        alloy_pool_for(pool, r->items, run_item, r);
    if (!atomic_load(&r->failed)) return ALLOY_OK;
    if (err) *err = r->err;
    return r->err.status ? (int)r->err.status : ALLOY_ERR_IO;
}

/* One scan window, chunks [first, first + count): its chunks (or the sampled ones among them) into
 * fresh zeroed accumulators (calloc: pages no chunk writes are never touched), then the fold. */
static int run_window(struct alloy_pool *pool, struct run *r, size_t first, size_t count, struct alloy_err *err)
{
    const struct alloy_merge_job *job = r->job;
    r->accs = alloy_xcalloc(count ? count : 1, r->m->acc_size ? r->m->acc_size : 1);
    if (!r->accs)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %zu chunk accumulators", job->name, count);
    r->first = first;
    if (r->sample) { /* the sample indices whose chunks lie in the window (increasing with the index) */
        size_t i = r->item0;
        while (i < r->sample && alloy_sample_chunk(i, r->sample, r->plan.nchunks) < first) i++;
        r->item0 = i;
        while (i < r->sample && alloy_sample_chunk(i, r->sample, r->plan.nchunks) < first + count) i++;
        r->items = i - r->item0;
    } else {
        r->item0 = 0;
        r->items = count;
    }
    int rc = run_items(pool, r, err);
    if (!rc) rc = r->m->fold(job, r->state, r->pass, r->accs, first, count, r->plan.nchunks, err);
    if (r->sample) r->item0 += r->items;
    free(r->accs);
    r->accs = NULL;
    return rc;
}

/* Scan pass `pass`: every window in chunk order, then end_pass. */
static int run_pass(struct alloy_pool *pool, struct run *r, int pass, struct alloy_err *err)
{
    const struct alloy_method *m = r->m;
    size_t n = r->plan.nchunks, k = m->pass_sample ? m->pass_sample(r->job, r->state, pass) : 0;
    r->pass = pass;
    r->sample = k && k < n ? k : 0;
    r->item0 = 0;
    int rc = ALLOY_OK;
    size_t first = 0;
    do { /* an empty tensor folds one empty window */
        size_t count = n - first < r->plan.window ? n - first : r->plan.window;
        rc = run_window(pool, r, first, count, err);
        first += count;
    } while (!rc && first < n);
    r->sample = 0;
    if (!rc && m->end_pass) rc = m->end_pass(r->job, r->state, pass, n, err);
    return rc;
}

int alloy_method_execute(const struct alloy_method *m, const struct alloy_merge_job *job, alloy_load_fn load,
                         void *load_ctx, alloy_store_fn store, void *store_ctx, struct alloy_pool *pool,
                         uint64_t chunk_elems, struct alloy_err *err)
{
    struct run r = {.m = m, .job = job, .load = load, .load_ctx = load_ctx, .store = store, .store_ctx = store_ctx};
    int nth = alloy_pool_size(pool);
    alloy_chunk_plan(m, job, nth, chunk_elems, &r.plan);
    int rc = ALLOY_OK;
    pthread_mutex_init(&r.mu, NULL);
    atomic_init(&r.failed, 0);
    r.scratch = alloy_xcalloc((size_t)nth, sizeof *r.scratch);
    r.state = alloy_xcalloc(1, m->state_size ? m->state_size : 1);
    if (!r.scratch || !r.state) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for merge state", job->name);
        goto out;
    }
    for (int t = 0; t < r.plan.lanes; t++) {
        /* the pool keeps its buffers across tensors: no fresh pages to fault and zero per tensor */
        size_t bytes = (size_t)r.plan.lane_bytes;
        r.scratch[t] = pool ? alloy_pool_scratch(pool, t, bytes) : alloy_xmalloc(bytes);
        if (!r.scratch[t]) {
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %llu-element chunks", job->name,
                               (unsigned long long)r.plan.chunk_elems);
            goto out;
        }
    }
    if (m->init && (rc = m->init(job, r.state, err)) != ALLOY_OK) goto out_state;
    r.input = input_mode(m, job, r.state);
    for (int pass = 0; m->want_pass && m->want_pass(job, r.state, pass); pass++)
        if ((rc = run_pass(pool, &r, pass, err)) != ALLOY_OK) goto out_state;
    r.pass = -1;
    r.first = r.item0 = 0;
    r.items = r.plan.nchunks;
    rc = run_items(pool, &r, err);
out_state:
    if (m->fini) m->fini(job, r.state);
out:
    if (r.scratch && !pool)
        for (int t = 0; t < r.plan.lanes; t++) free(r.scratch[t]);
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
