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
 */
#include "core/internal.h"
#include "plan/plan.h"
#include "sinks/sink.h"

#include <stdatomic.h>

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
}

/* The config the options name: a parsed one (borrowed: *owned = NULL), YAML text, or a file. */
static int options_config(const struct alloy_merge_options *o, const struct alloy_config **cfg,
                          struct alloy_config **owned, struct alloy_err *err)
{
    *owned = NULL;
    if (o->config) {
        *cfg = o->config;
        return ALLOY_OK;
    }
    int rc = o->config_text
                 ? alloy_config_parse(o->config_text, strlen(o->config_text), o->config_path ? o->config_path : "<config>",
                                      owned, err)
                 : alloy_config_load(o->config_path, owned, err);
    *cfg = *owned;
    return rc;
}

int alloy_merge(const struct alloy_merge_options *opts, struct alloy_err *err)
{
    if (!opts->config && !opts->config_text && !opts->config_path)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "a merge needs a config (a file, YAML text or a parsed config)");
    if (!opts->out_dir && !opts->out_model && !opts->dry_run)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "a merge needs an output folder (or an in-memory model)");
    if (opts->out_format && strcmp(opts->out_format, "folder") != 0 && strcmp(opts->out_format, "gguf") != 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "output format: folder or gguf, found \"%s\"", opts->out_format);
    struct alloy_merge_options oo = *opts;
    const struct alloy_merge_options *o = &oo;
    char *out_dir = alloy_xstrdup(opts->out_dir ? opts->out_dir : ".");
    if (!out_dir) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/';) out_dir[--n] = '\0';
    oo.out_dir = out_dir;
    if (o->out_model) *o->out_model = NULL;
    const struct alloy_config *cfg = NULL;
    struct alloy_config *owned = NULL;
    struct alloy_plan *plan = NULL;
    struct alloy_pool *pool = NULL;
    struct alloy_sink *sink = NULL;
    int rc = options_config(o, &cfg, &owned, err);
    if (!rc) rc = alloy_plan_build(cfg, o, &plan, err);
    if (!rc && o->dry_run) {
        alloy_plan_print(plan, o->plan_out ? o->plan_out : stdout);
        goto out;
    }
    if (!rc)
        sink = o->out_model            ? alloy_sink_memory_new(o->out_model, err)
               : alloy_sink_wants_gguf(o) ? alloy_sink_gguf_new(o, err)
                                          : alloy_sink_folder_new(o, err);
    if (!rc && !sink) rc = err ? (int)err->status : ALLOY_ERR_NOMEM;
    if (!rc && !(pool = alloy_pool_new(o->threads)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "cannot start %d threads", o->threads);
    if (!rc) rc = run_plan(plan, sink, pool, o, err);
out:
    if (sink) sink->ops->free(sink);
    alloy_pool_free(pool);
    alloy_plan_free(plan);
    alloy_config_free(owned);
    free(out_dir);
    return rc;
}
