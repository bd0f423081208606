/*
 * method.h — the interface every merge method implements.
 *
 * DESIGN
 *   A method merges one output tensor from n input tensors of the same shape
 *   (float32 values; the engine converts from the stored dtype and rounds the
 *   result once to the output dtype). Methods never see whole tensors: the
 *   driver (driver.c) cuts the tensor into chunks of elements and streams
 *   them, so memory stays bounded whatever the tensor size.
 *
 *   Whole-tensor statistics (norms, dot products, top-k thresholds,
 *   variances) come from scan passes:
 *
 *       init(job, state)
 *       for pass = 0, 1, ... while want_pass(job, state, pass):
 *           for each window [first, first + count) of <= ALLOY_MAX_CHUNKS chunks, in order:
 *               scan(job, state, pass, chunk, x, acc[chunk - first])   its chunks, in parallel
 *               fold(job, state, pass, acc, first, count, nchunks)     into the state, in chunk order
 *           end_pass(job, state, pass, nchunks)            finish the pass
 *       apply(job, state, chunk, x, out)                   for every chunk, in parallel
 *       fini(job, state)
 *
 *   A tensor of at most ALLOY_MAX_CHUNKS chunks (2^28 elements) is one
 *   window (first 0, count == nchunks); larger ones fold window after
 *   window, so accumulators never take more than ALLOY_MAX_CHUNKS x
 *   acc_size bytes. A fold that adds each chunk's partials into a running
 *   total in chunk order gives the same bits for any window size.
 *
 *   scan() and apply() may fail like init(), fold() and end_pass() (an error code,
 *   err filled): the driver stops at the first error of any chunk. After
 *   init the driver chooses the input mode (enum alloy_input_mode: float32,
 *   or the stored bfloat16 values for methods that take them) and every
 *   chunk carries it. The job names the kernel table the method's loops
 *   use (job->kernels; kernels/kernels.h).
 *
 *   A pass may be a sample pass: when pass_sample() returns K > 0 and the
 *   tensor has more than K chunks, only K chunks spread evenly over it are
 *   scanned (alloy_sample_chunk; the others' accumulators stay zero), e.g.
 *   to estimate where a quantile lies before an exact pass.
 *
 *   scan() may read `state` but writes only its own chunk's accumulator
 *   (acc_size bytes, zeroed before every window); fold() folds them in
 *   chunk order. The one allowed exception: a scan may add
 *   into shared state under a lock when the arithmetic is exact and order
 *   independent (integer or fixed-point sums, e.g. nuslerp's per-column
 *   sums), which keeps the result independent of the thread count. Chunk boundaries depend only on the tensor
 *   shape, never on the thread count, so results are bit-identical for any
 *   number of threads. apply() writes only its `out` range.
 *
 *   x[i] points at the chunk's elements [e0, e1) of input i (row-major,
 *   float32, contiguous). With ALLOY_METHOD_WHOLE_ROWS every chunk holds
 *   whole rows (rows of the last dimension) — for methods working per row.
 *
 *   Parameters are resolved by the planner before the method runs: gp[k] is
 *   the value of global parameter k (params[k].scope == GLOBAL) and
 *   tp[i * nparams + k] the value of tensor parameter k for input i; an
 *   unset parameter without default is NAN. Methods validate their inputs in
 *   check(), which also runs during --dry-run.
 *
 *   Random methods draw from alloy_rng_u64(alloy_rng_key(job->seed,
 *   job->name, stream), counter) (core/internal.h) with a counter derived
 *   from the element index, a pure function of the seed, the tensor name
 *   and the element, so chunking and threads do not change the result.
 */
#ifndef ALLOY_METHOD_H
#define ALLOY_METHOD_H

#include "alloy.h"
#include "core/internal.h"

#include <math.h>

struct alloy_kernels;

enum alloy_param_scope {
    ALLOY_PARAM_GLOBAL, /* one value per output tensor (top/slice level) */
    ALLOY_PARAM_TENSOR, /* one value per input model (may also be set per model) */
};

struct alloy_param_spec {
    const char *name;
    enum alloy_param_scope scope;
    double def;         /* default value; NAN: none */
    int required;       /* unset and no default is an error (tensor params: not for the base) */
    const char *help;   /* one line for docs and --help */
};

enum {
    ALLOY_METHOD_NEEDS_BASE  = 1 << 0, /* base_model is required */
    ALLOY_METHOD_WHOLE_ROWS  = 1 << 1, /* chunks hold whole rows */
    ALLOY_METHOD_F32_OUTPUT  = 1 << 2, /* result dtype is float32 unless out_dtype is set (mergekit promotion) */
    ALLOY_METHOD_RECTIFY     = 1 << 3, /* embeddings of different sizes: use the common top-left block */
    ALLOY_METHOD_BASE_SHAPE  = 1 << 4, /* embeddings: truncate larger inputs to the base's shape */
    ALLOY_METHOD_RANDOM      = 1 << 5, /* uses the random generator */
    ALLOY_METHOD_TAKES_BF16  = 1 << 6, /* scan and apply accept ALLOY_INPUT_BF16_RAW (see takes_bf16) */
};

/* How the driver hands a method its inputs: x[i] of scan() and apply() points at float32 values, or at
 * the stored bfloat16 values (ALLOY_RAW_BF16(x[i])) when every input is stored bfloat16 and used
 * unrounded (job->inputs_bf16) and the method accepts them (ALLOY_METHOD_TAKES_BF16 and takes_bf16).
 * The driver chooses once per tensor, after init; the load callback and every chunk carry the mode. */
/* (enum alloy_input_mode is in core/internal.h: sources produce the same two modes.) */

struct alloy_merge_job {
    const char *name;            /* output tensor name */
    const char *config_path;     /* for messages */
    int ndim;
    const int64_t *shape;
    uint64_t numel, rows, cols;  /* rows * cols == numel; cols = last dim (1 for scalars) */
    int is_embed;
    int n;                       /* inputs, base included */
    int base;                    /* index of the base model among inputs, -1 if none */
    const char *const *models;   /* model reference of each input (messages) */
    const double *gp;            /* [nparams] */
    const double *tp;            /* [n * nparams] */
    uint64_t seed;               /* --random-seed (0 when unset) */
    const struct alloy_kernels *kernels; /* the loops' instruction set (kernels/kernels.h); NULL: the CPU's best.
                                            Tests name each table the CPU has; the results do not change */
    int whole_rows;              /* the output needs chunks of whole rows (a quantizing sink), as WHOLE_ROWS */
    int inputs_bf16;             /* every input is stored as bfloat16 and used unrounded: the driver may choose
                                    ALLOY_INPUT_BF16_RAW */
};

struct alloy_chunk {
    size_t index;                /* 0 .. nchunks-1 in element order */
    uint64_t e0, e1;             /* element range [e0, e1) */
    enum alloy_input_mode input; /* what x[i] points at (the same for every chunk of a tensor) */
};

struct alloy_method {
    const char *name;
    const char *summary;         /* one line: what it does */
    const struct alloy_param_spec *params;
    int nparams;
    unsigned flags;
    size_t state_size;           /* bytes, zeroed before init */
    size_t acc_size;             /* bytes per chunk accumulator */

    int  (*check)(const struct alloy_merge_job *job, struct alloy_err *err);                  /* may be NULL */
    int  (*init)(const struct alloy_merge_job *job, void *state, struct alloy_err *err);      /* may be NULL */
    int  (*want_pass)(const struct alloy_merge_job *job, void *state, int pass);               /* NULL: no passes */
    /* scan and apply may fail (ALLOY_OK or an error, err filled): the first error of any chunk wins and
     * the remaining chunks are skipped, as for load errors. */
    int  (*scan)(const struct alloy_merge_job *job, const void *state, int pass, const struct alloy_chunk *c,
                 const float *const *x, void *acc, struct alloy_err *err);
    /* Folds the accumulators of chunks [first, first + count) (accs[0] is chunk first's) into the state;
     * windows come in chunk order, the first with first == 0. Required with want_pass. */
    int  (*fold)(const struct alloy_merge_job *job, void *state, int pass, const void *accs, size_t first,
                 size_t count, size_t nchunks, struct alloy_err *err);
    int  (*end_pass)(const struct alloy_merge_job *job, void *state, int pass, size_t nchunks,
                     struct alloy_err *err);                                                   /* may be NULL */
    int  (*apply)(const struct alloy_merge_job *job, const void *state, const struct alloy_chunk *c,
                  const float *const *x, float *out, struct alloy_err *err);
    void (*fini)(const struct alloy_merge_job *job, void *state);                             /* may be NULL */
    /* Chunks the pass wants: 0 every chunk, K > 0 a sample of K (every chunk if the tensor has no more). May be NULL. */
    size_t (*pass_sample)(const struct alloy_merge_job *job, const void *state, int pass);
    /* With ALLOY_METHOD_TAKES_BF16: asked after init when job->inputs_bf16, 1 if this tensor's scan and
     * apply take ALLOY_INPUT_BF16_RAW. NULL: always. */
    int (*takes_bf16)(const struct alloy_merge_job *job, const void *state);

    /* The matrix kind (kind == ALLOY_METHOD_MATRIX; matrix.c): whole 2-D float32 tensors in, the whole output
     * out, for methods that cannot stream (SVD, least squares, LoRA extraction). matrix() gets x[i] = input i
     * as job->rows x job->cols row-major floats and writes out[rows x cols]; it may call BLAS/LAPACK and may
     * fail. matrix_scratch() (may be NULL) is the extra working memory it will allocate for the job, counted
     * with the (n + 1) tensors against ALLOY_MATRIX_BUDGET. Streaming members above are unused. */
    int kind;
    int (*matrix)(const struct alloy_merge_job *job, const float *const *x, float *out, struct alloy_err *err);
    uint64_t (*matrix_scratch)(const struct alloy_merge_job *job);
};

enum { ALLOY_METHOD_STREAMING = 0, ALLOY_METHOD_MATRIX = 1 };

/* Most bytes a matrix method may hold for one tensor: its (n + 1) float32 tensors plus its scratch. */
#ifndef ALLOY_MATRIX_BUDGET
#define ALLOY_MATRIX_BUDGET ((uint64_t)4 << 30)
#endif

/* The stored bfloat16 values behind an input pointer under ALLOY_INPUT_BF16_RAW. */
#define ALLOY_RAW_BF16(p) ((const uint16_t *)(const void *)(p))

/* Chunk index of sample i (0 <= i < k) among nchunks > k: the middle of the i-th of k equal runs. */
static inline size_t alloy_sample_chunk(size_t i, size_t k, size_t nchunks)
{
    return (size_t)(((2 * (uint64_t)i + 1) * (uint64_t)nchunks) / (2 * (uint64_t)k));
}

/* Registry (registry.c). */
const struct alloy_method *alloy_method_find(const char *name);
size_t                     alloy_method_count(void);
const struct alloy_method *alloy_method_at(size_t i);
/* Index of a parameter in m->params, or -1. */
int                        alloy_method_param(const struct alloy_method *m, const char *name);

/* Convenience accessors for method code. */
static inline double alloy_job_gp(const struct alloy_merge_job *j, int k) { return j->gp[k]; }
static inline double alloy_job_tp(const struct alloy_merge_job *j, const struct alloy_method *m, int i, int k)
{
    return j->tp[(size_t)i * (size_t)m->nparams + (size_t)k];
}

/* ---------------------------------------------------------------- driver (driver.c) */

/* Fills dst[0 .. e1-e0) with input i's elements [e0, e1) as float32, or with their stored bfloat16
 * values: raw is the tensor's enum alloy_input_mode (ALLOY_INPUT_BF16_RAW only when the job has
 * inputs_bf16 and the method takes them). */
typedef int (*alloy_load_fn)(void *ctx, int input, uint64_t e0, uint64_t e1, float *dst, int raw,
                             struct alloy_err *err);
/* Consumes the output elements [e0, e1). Called from worker threads, any
 * order. src is the driver's scratch: the store may overwrite it (e.g. to
 * convert to the output dtype in place). */
typedef int (*alloy_store_fn)(void *ctx, uint64_t e0, uint64_t e1, float *src, struct alloy_err *err);

/* Chunk size in elements, for every tensor size; chunks with whole rows hold at least one row. */
#define ALLOY_CHUNK_ELEMS ((uint64_t)1 << 18)
/* Most chunks of a scan window: the accumulators folded at once. */
#define ALLOY_MAX_CHUNKS 1024
/* Most bytes of chunk scratch for one tensor, all threads together; past it, fewer threads (lanes)
 * run the chunks. Normally (inputs + 1) MiB per thread; more only for rows of over 2^18 elements. */
#ifndef ALLOY_SCRATCH_BUDGET
#define ALLOY_SCRATCH_BUDGET ((uint64_t)128 << 20)
#endif

/* How the driver runs a tensor, a function of its shape, the method and the thread count only. */
struct alloy_chunk_plan {
    uint64_t chunk_elems;        /* elements per chunk (the last may be shorter) */
    size_t nchunks;
    size_t window;               /* chunks per scan window (<= ALLOY_MAX_CHUNKS) */
    int lanes;                   /* chunks run at once, each with its own scratch */
    uint64_t lane_bytes;         /* scratch per lane: (inputs + 1) x chunk_elems x 4 */
    uint64_t acc_bytes;          /* accumulators of one window: window x acc_size */
};

/* The plan for `threads` threads; chunk_elems 0 means ALLOY_CHUNK_ELEMS. */
void alloy_chunk_plan(const struct alloy_method *m, const struct alloy_merge_job *job, int threads,
                      uint64_t chunk_elems, struct alloy_chunk_plan *p);

/* Tests only: scan windows of `chunks` chunks (1..ALLOY_MAX_CHUNKS; 0 restores ALLOY_MAX_CHUNKS) for
 * every tensor run afterwards, to exercise multi-window folds on small tensors. Returns the previous
 * setting. Not for concurrent merges. */
size_t alloy_driver_set_window(size_t chunks);

/* Runs a method over one tensor: passes, then apply, chunk by chunk on the
 * pool (NULL: this thread). chunk_elems 0 means ALLOY_CHUNK_ELEMS. */
int alloy_method_execute(const struct alloy_method *m, const struct alloy_merge_job *job, alloy_load_fn load,
                         void *load_ctx, alloy_store_fn store, void *store_ctx, struct alloy_pool *pool,
                         uint64_t chunk_elems, struct alloy_err *err);

/* Runs a matrix method over one tensor (matrix.c): loads every input whole through `load` (chunks in
 * parallel on the pool), calls m->matrix, stores the result through `store`. Refuses a tensor whose
 * memory would exceed `budget` bytes (0: ALLOY_MATRIX_BUDGET) with an error naming it. */
int alloy_matrix_execute(const struct alloy_method *m, const struct alloy_merge_job *job, alloy_load_fn load,
                         void *load_ctx, alloy_store_fn store, void *store_ctx, struct alloy_pool *pool,
                         uint64_t budget, struct alloy_err *err);

/* Test helper: runs a method on whole in-memory float32 tensors inputs[i]
 * (numel each), writing out[numel]. */
int alloy_method_run_memory(const struct alloy_method *m, const struct alloy_merge_job *job,
                            const float *const *inputs, float *out, struct alloy_pool *pool, uint64_t chunk_elems,
                            struct alloy_err *err);
/* The same on bfloat16 tensors, handed to the method raw when it takes them (ALLOY_INPUT_BF16_RAW), else widened:
 * as the engine does for bfloat16 models. */
int alloy_method_run_memory_bf16(const struct alloy_method *m, const struct alloy_merge_job *job,
                                 const uint16_t *const *inputs, float *out, struct alloy_pool *pool,
                                 uint64_t chunk_elems, struct alloy_err *err);

#endif
