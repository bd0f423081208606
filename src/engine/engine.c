/*
 * engine.c — run a merge: config → plan → every tensor from its sources,
 * through its method, into a sink.
 *
 * DESIGN
 *   The plan (plan.c) fixes everything before a byte is written: each output
 *   tensor's shape, dtype, parameters and inputs, each input a source
 *   (sources/: a stored tensor, a window of one, a tied embedding). The
 *   engine walks the tensors in plan order and hands each to the sink
 *   (sinks/: a model folder published atomically, or a model in memory):
 *   integer tensors are copied as stored bytes; the others run through the
 *   method on the thread pool (driver.c), chunk by chunk: load reads each
 *   input's chunk from its source as float32 (or as stored bfloat16 bits for
 *   a method that takes them raw) and rounds it to the working dtype; store
 *   passes the merged chunk to the sink, which converts it to the output
 *   dtype at its final place. No tensor is ever held whole, so memory is
 *   bounded by a few chunks per thread (docs/design.md).
 *
 *   Any error or interrupt aborts the sink, which leaves nothing of the
 *   output behind; only a complete merge is committed.
 *
 *   alloy_merge reads the config's YAML documents: one is merged here
 *   (alloy_merge_stage); several (or an intermediate folder) make a
 *   multi-stage merge (multi.c), which calls alloy_merge_stage per stage
 *   with the intermediates finished so far.
 */
#include "core/internal.h"
#include "engine/engine.h"
#include "plan/plan.h"
#include "sinks/sink.h"

#include <stdatomic.h>
#ifdef ALLOY_HAVE_OPENBLAS
#include <cblas.h>
#endif

struct tensor_io {
    const struct alloy_plan_tensor *t;
    size_t index;                 /* t's position in the plan */
    struct alloy_sink *sink;
    int round_to;                 /* working dtype rounding: -1 none, else dtype */
    volatile int *interrupt;
    atomic_ullong nonfinite;      /* NaN/Inf values written (warned about once per tensor) */
};

/* Input `input`'s elements [e0, e1) from its source, then rounded to the working dtype. */
static int load_chunk(void *ctx, int input, uint64_t e0, uint64_t e1, float *dst, int raw, struct alloy_err *err)
{
    const struct tensor_io *io = ctx;
    const struct alloy_plan_tensor *t = io->t;
    const struct alloy_input *src = &t->inputs[input];
    if (io->interrupt && *io->interrupt)
        return alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted while merging '%s'", t->name);
    int rc = alloy_input_read(src, e0, e1, dst, (enum alloy_input_mode)raw, err);
    if (rc || raw) return rc;
    if (io->round_to >= 0 && (enum alloy_dtype)io->round_to != src->t->dtype) {
        /* mergekit casts inputs to the working dtype before merging */
        for (uint64_t i = 0; i < e1 - e0; i++) {
            if (io->round_to == ALLOY_DTYPE_BF16) dst[i] = alloy_bf16_to_f32(alloy_f32_to_bf16(dst[i]));
            else if (io->round_to == ALLOY_DTYPE_F16) dst[i] = alloy_f16_to_f32(alloy_f32_to_f16(dst[i]));
        }
    }
    return ALLOY_OK;
}

static int store_chunk(void *ctx, uint64_t e0, uint64_t e1, float *src, struct alloy_err *err)
{
    struct tensor_io *io = ctx;
    uint64_t bad = 0;
    int rc = io->sink->ops->write(io->sink, io->index, e0, e1, src, &bad, err);
    if (bad) atomic_fetch_add(&io->nonfinite, bad);
    return rc;
}

/* An integer tensor: its stored bytes as they are, read with the checked pread (a file that shrinks during
 * the merge is an error, not a SIGBUS) 1 MiB at a time. */
static int copy_tensor(const struct tensor_io *io, struct alloy_err *err)
{
    const struct alloy_tensor *src = io->t->inputs[0].t;
    const uint64_t step = (uint64_t)1 << 20;
    uint8_t *buf = src->nbytes ? alloy_xmalloc((size_t)(src->nbytes < step ? src->nbytes : step)) : NULL;
    if (src->nbytes && !buf) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory copying '%s'", io->t->name);
    int rc = ALLOY_OK;
    for (uint64_t off = 0; off < src->nbytes && !rc; off += step) {
        uint64_t n = src->nbytes - off < step ? src->nbytes - off : step;
        if (io->interrupt && *io->interrupt)
            rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted while copying '%s'", io->t->name);
        if (!rc) rc = alloy_tensor_pread(src, off, buf, (size_t)n, err);
        if (!rc) rc = io->sink->ops->write_bytes(io->sink, io->index, off, buf, (size_t)n, err);
    }
    free(buf);
    return rc;
}

static int merge_tensor(const struct alloy_plan *p, struct tensor_io *io, struct alloy_pool *pool,
                        const struct alloy_merge_options *o, struct alloy_err *err)
{
    const struct alloy_plan_tensor *t = io->t;
    struct alloy_merge_job job;
    const char *names[t->n > 0 ? t->n : 1]; /* every input named, however many the config lists */
    for (int k = 0; k < t->n; k++) names[k] = alloy_model_ref(p->models[t->inputs[k].model]);
    alloy_plan_job(p, io->index, o->has_seed ? o->seed : 0, names, &job);
    job.whole_rows = io->sink->ops->whole_rows && io->sink->ops->whole_rows(io->sink, io->index);
    job.inputs_bf16 = io->round_to < 0 || io->round_to == ALLOY_DTYPE_BF16;
    for (int k = 0; k < t->n; k++) job.inputs_bf16 &= alloy_input_raw_bf16(&t->inputs[k]);
    int rc = p->method->kind == ALLOY_METHOD_MATRIX
                 ? alloy_matrix_execute(p->method, &job, load_chunk, io, store_chunk, io, pool, 0, err)
                 : alloy_method_execute(p->method, &job, load_chunk, io, store_chunk, io, pool, 0, err);
    unsigned long long bad = atomic_load(&io->nonfinite);
    if (!rc && bad && bad == t->numel) /* nothing usable: an error, not a warning */
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: tensor '%s': every one of its %llu output values is NaN or "
                             "Inf (check the inputs and the merge's parameters)", p->cfg->path, t->name, bad);
    if (!rc && bad && o->log) {
        char msg[600];
        snprintf(msg, sizeof msg, "tensor '%.400s': %llu of %llu output values are NaN or Inf", t->name, bad,
                 (unsigned long long)t->numel);
        o->log(o->log_user, 0, msg);
    }
    return rc;
}

static void report(const struct alloy_merge_options *o, struct alloy_progress *pr)
{
    if (o->progress) o->progress(o->progress_user, pr);
}

/* Every tensor of the plan into the sink, in plan order. */
static int run_plan(const struct alloy_plan *p, struct alloy_sink *sink, struct alloy_pool *pool,
                    const struct alloy_merge_options *o, struct alloy_err *err)
{
    struct alloy_progress pr = {.tensors_total = p->ntensors, .bytes_total = p->total_bytes};
    int round_to = -1;
    if (p->cfg->has_dtype && (p->cfg->dtype == ALLOY_DTYPE_BF16 || p->cfg->dtype == ALLOY_DTYPE_F16))
        round_to = (int)p->cfg->dtype;
    report(o, &pr);
    int rc = sink->ops->begin(sink, p, err);
    for (size_t i = 0; i < p->ntensors && !rc; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[i];
        if (o->interrupt && *o->interrupt) {
            rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted before tensor '%s'", t->name);
            break;
        }
        struct tensor_io io = {.t = t, .index = i, .sink = sink, .round_to = round_to, .interrupt = o->interrupt};
        rc = sink->ops->tensor_begin(sink, i, err);
        int copy = t->copy || (sink->ops->copies && sink->ops->copies(sink, i));
        if (!rc) rc = copy ? copy_tensor(&io, err) : merge_tensor(p, &io, pool, o, err);
        if (!rc && sink->ops->tensor_end) rc = sink->ops->tensor_end(sink, i, err);
        for (int k = 0; k < t->n; k++) alloy_input_release(&t->inputs[k]);
        pr.tensors_done++;
        pr.bytes_done += t->nbytes;
        report(o, &pr);
    }
    if (!rc) rc = sink->ops->commit(sink, err);
    if (rc) sink->ops->abort(sink);
    return rc;
}

/* ------------------------------------------------------------ entry */

void alloy_merge_options_init(struct alloy_merge_options *o)
{
    memset(o, 0, sizeof *o);
    o->copy_tokenizer = 1;
    o->write_model_card = 1;
    o->lazy = 1;
}

/* The documents of the YAML text or file the options name (owned, *n of them). */
static int options_docs(const struct alloy_merge_options *o, struct alloy_config ***docs, size_t *n,
                        struct alloy_err *err)
{
    const char *path = o->config_path ? o->config_path : "<config>";
    char *text = NULL;
    size_t len = 0;
    int rc = o->config_text ? ALLOY_OK : alloy_read_file(o->config_path, ALLOY_CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = alloy_config_parse_docs(o->config_text ? o->config_text : text, o->config_text ? strlen(o->config_text) : len,
                                 path, docs, n, err);
    free(text);
    return rc;
}

/* The output of a dry run's intermediate: the plan's layout as a model in memory, every value zero (calloc'd
 * pages stay untouched), so later stages plan against its tensors. */
static int shape_only(const struct alloy_plan *plan, const struct alloy_merge_options *o, const char *label,
                      struct alloy_err *err)
{
    struct alloy_sink *sink = alloy_sink_memory_new(o->out_model, label, err);
    if (!sink) return err ? (int)err->status : ALLOY_ERR_NOMEM;
    int rc = sink->ops->begin(sink, plan, err);
    if (!rc) rc = sink->ops->commit(sink, err);
    if (rc) sink->ops->abort(sink);
    sink->ops->free(sink);
    return rc;
}

/* An output held in memory (a multi-stage merge's intermediate) must fit what is left of the budget. */
static int check_budget(const struct alloy_plan *plan, const struct alloy_stage_io *io, struct alloy_err *err)
{
    if (!io->mem_limit || plan->total_bytes <= io->mem_limit) return ALLOY_OK;
    return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: name: '%s': an intermediate kept in memory must fit the "
                         "%llu bytes left of the memory budget, it takes %llu bytes (give --intermediate-dir DIR to "
                         "write intermediates to disk, or raise --memory-budget)", plan->cfg->path, io->label,
                         (unsigned long long)io->mem_limit, (unsigned long long)plan->total_bytes);
}

/* --dry-run's plan; a GGUF output adds each tensor's stored name and type, and which are copied as blocks. */
static int print_plan(const struct alloy_plan *plan, const struct alloy_merge_options *o, struct alloy_err *err)
{
    FILE *f = o->plan_out ? o->plan_out : stdout;
    if (o->out_model || !alloy_sink_wants_gguf(o)) {
        alloy_plan_print(plan, f);
        return ALLOY_OK;
    }
    struct alloy_sink *sink = alloy_sink_gguf_new(o, err);
    if (!sink) return err ? (int)err->status : ALLOY_ERR_NOMEM;
    int rc = alloy_sink_gguf_layout(sink, plan, err);
    if (!rc) alloy_plan_print_noted(plan, f, alloy_sink_gguf_note, sink);
    sink->ops->free(sink);
    return rc;
}

int alloy_merge_stage(const struct alloy_merge_options *opts, const struct alloy_config *cfg,
                      const struct alloy_stage_io *io, struct alloy_err *err)
{
    static const struct alloy_stage_io none;
    if (!io) io = &none;
    if (opts->out_format && strcmp(opts->out_format, "folder") != 0 && strcmp(opts->out_format, "gguf") != 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "output format: folder or gguf, found \"%s\"", opts->out_format);
    struct alloy_merge_options oo = *opts;
    const struct alloy_merge_options *o = &oo;
    char *out_dir = alloy_xstrdup(opts->out_dir ? opts->out_dir : ".");
    if (!out_dir) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/';) out_dir[--n] = '\0';
    oo.out_dir = out_dir;
    if (o->out_model) *o->out_model = NULL;
    struct alloy_plan *plan = NULL;
    struct alloy_pool *pool = NULL;
    struct alloy_sink *sink = NULL;
    int rc = alloy_plan_build_given(cfg, o, io->given, &plan, err);
    if (!rc && o->out_model) rc = check_budget(plan, io, err);
    if (!rc && io->out_bytes) *io->out_bytes = plan->total_bytes;
    if (!rc && o->dry_run) {
        rc = print_plan(plan, o, err);
        if (!rc && io->shape_only && o->out_model) rc = shape_only(plan, o, io->label, err);
        goto out;
    }
    if (!rc)
        sink = o->out_model              ? alloy_sink_memory_new(o->out_model, io->label, err)
               : alloy_sink_wants_gguf(o) ? alloy_sink_gguf_new(o, err)
                                          : alloy_sink_folder_new(o, err);
    if (!rc && !sink) rc = err ? (int)err->status : ALLOY_ERR_NOMEM;
    if (!rc && !(pool = alloy_pool_new(o->threads)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "cannot start %d threads", o->threads);
    if (!rc) {
#ifdef ALLOY_HAVE_OPENBLAS /* lora sources call sgemm from every pool thread: one BLAS thread each */
        int saved_blas = openblas_get_num_threads();
        openblas_set_num_threads(1);
#endif
        rc = run_plan(plan, sink, pool, o, err);
#ifdef ALLOY_HAVE_OPENBLAS
        openblas_set_num_threads(saved_blas);
#endif
    }
out:
    if (sink) sink->ops->free(sink);
    alloy_pool_free(pool);
    alloy_plan_free(plan);
    free(out_dir);
    return rc;
}

int alloy_merge(const struct alloy_merge_options *o, struct alloy_err *err)
{
    if (!o->config && !o->config_text && !o->config_path)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "a merge needs a config (a file, YAML text or a parsed config)");
    const struct alloy_config *one = o->config, *const *docs = &one;
    struct alloy_config **owned = NULL;
    size_t n = 1;
    if (o->out_model) *o->out_model = NULL;
    int rc = o->config ? ALLOY_OK : options_docs(o, &owned, &n, err);
    if (rc) return rc;
    if (owned) docs = (const struct alloy_config *const *)owned;
    if (n > 1 || o->intermediate_dir) {
        rc = alloy_merge_multi(o, docs, n, err);
    } else if (!o->out_dir && !o->out_model && !o->dry_run) {
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "a merge needs an output folder (or an in-memory model)");
    } else {
        rc = alloy_merge_stage(o, docs[0], NULL, err);
    }
    alloy_config_free_docs(owned, n);
    return rc;
}
