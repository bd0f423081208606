/*
 * plan.c — build the merge plan (see plan.h).
 *
 * DESIGN
 *   1. Open every referenced model once (base, then sources in config order).
 *   2. Find each model's layer stack: the name prefix before ".<N>." that
 *      most tensors share; its layer count is max N + 1. Tensors outside it
 *      are "loose": embeddings go before the layers, everything else (final
 *      norm, lm_head) after.
 *   3. `models:` configs (one slice, no layer_range): every tensor of the
 *      donor (base, else first model) in file order, matched by name in
 *      every other model. `slices:` configs: loose "pre" tensors from the
 *      first slice's sources, then each slice layer by layer with output
 *      layers renumbered by a running counter, then loose "post" tensors from
 *      the last slice's sources (mergekit §3.3–3.4).
 *   4. Per tensor: shapes checked (embeddings may differ in vocab size when
 *      the method allows it), the output dtype decided, the method's
 *      parameters resolved with mergekit's precedence (§2.5) at the layer
 *      position t (§2.4), the method's check() run, and a place in the
 *      output shards assigned.
 *   A missing lm_head in a model with tied embeddings is read from its
 *   embedding matrix, as mergekit's tied_names do.
 */
#include "core/internal.h"
#include "core/strmap.h"
#include "formats/formats.h"
#include "plan/plan.h"
#include "plan/stack.h"
#include "plan/vocab.h"
#include "sources/permuted.h"

#include <stdarg.h>

/* ------------------------------------------------------------ builder state */

struct builder {
    struct alloy_plan *p;
    const struct alloy_merge_options *o;
    struct alloy_layer_stack *stacks;          /* per model */
    struct alloy_err *err;
    size_t cap;
    int lora_round;                /* --lora-merge-dtype for lora sources, -1: none */
    const struct alloy_given_models *given; /* intermediates of a multi-stage merge, or NULL */
    const struct alloy_tensor *hint;  /* the lead model's tensor being planned (models:), found without a lookup */
    int hint_model;
    int tied_seen;                    /* a tied embedding stood in for a missing head */
};

static void warnf(struct builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(struct builder *b, const char *fmt, ...)
{
    b->p->nwarnings++;
    if (!b->o->log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    b->o->log(b->o->log_user, 0, msg);
}

/* The intermediate a reference names (a multi-stage merge's `model: NAME`), or NULL. */
static struct alloy_model *given_model(const struct builder *b, const char *ref)
{
    for (size_t i = 0; b->given && i < b->given->n; i++)
        if (strcmp(b->given->names[i], ref) == 0) return b->given->models[i];
    return NULL;
}

static void plan_warn(void *user, const char *msg) { warnf(user, "%s", msg); }

static int model_index(struct builder *b, const char *ref, struct alloy_pos pos)
{
    struct alloy_plan *p = b->p;
    struct alloy_model *given = given_model(b, ref);
    for (size_t i = 0; i < p->nmodels; i++)
        if (given ? p->models[i] == given : strcmp(alloy_model_ref(p->models[i]), ref) == 0) return (int)i;
    struct alloy_model **nm = alloy_xrealloc(p->models, (p->nmodels + 1) * sizeof *nm);
    struct alloy_layer_stack *ns = alloy_xrealloc(b->stacks, (p->nmodels + 1) * sizeof *ns);
    if (nm) p->models = nm;
    if (ns) b->stacks = ns;
    if (!nm || !ns) return -alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
    struct alloy_model *m = given;
    int rc = ALLOY_OK;
    if (given) alloy_model_share(given);
    else rc = alloy_model_open(ref, &m, b->err);
    if (rc) {
        if (pos.line) { /* prefix the config position */
            char tmp[sizeof b->err->msg];
            memcpy(tmp, b->err->msg, sizeof tmp);
            snprintf(b->err->msg, sizeof b->err->msg, "%.200s:%d:%d: model %.700s", p->cfg->path, pos.line, pos.col,
                     tmp);
        }
        return -rc;
    }
    p->models[p->nmodels] = m;
    if (alloy_model_warning(m)) warnf(b, "%s", alloy_model_warning(m));
    if (alloy_plan_find_stack(m, &b->stacks[p->nmodels]) != 0) {
        alloy_model_close(m);
        return -alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    return (int)p->nmodels++;
}

static struct alloy_plan_tensor *new_tensor(struct builder *b)
{
    struct alloy_plan *p = b->p;
    if (p->ntensors == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        struct alloy_plan_tensor *nt = alloy_xrealloc(p->tensors, nc * sizeof *nt);
        if (!nt) return NULL;
        p->tensors = nt;
        b->cap = nc;
    }
    struct alloy_plan_tensor *t = &p->tensors[p->ntensors++];
    memset(t, 0, sizeof *t);
    t->base = -1;
    t->layer = -1;
    return t;
}

/* ------------------------------------------------------------ parameters */

/* Evaluates the first level of `levels` that yields a value. */
static int eval_levels(const struct alloy_params *const *levels, int nlevels, const char *name, const char *subject,
                       double t, double *out)
{
    for (int i = 0; i < nlevels; i++) {
        if (!levels[i]) continue;
        const struct alloy_setting *s = alloy_params_get(levels[i], name);
        if (s && alloy_setting_eval(s, subject, t, out)) return 1;
    }
    return 0;
}

struct src_ref {
    const struct alloy_source *src; /* NULL for an appended base */
    int model;
    long long layer;                /* input layer for layer tensors */
};

static int resolve_params(struct builder *b, const struct alloy_slice *slice, const struct src_ref *srcs,
                          struct alloy_plan_tensor *t)
{
    const struct alloy_method *m = b->p->method;
    const struct alloy_config *cfg = b->p->cfg;
    int np = m->nparams;
    t->gp = alloy_xcalloc((size_t)(np ? np : 1), sizeof *t->gp);
    t->tp = alloy_xcalloc((size_t)(np ? np : 1) * (size_t)t->n, sizeof *t->tp);
    if (!t->gp || !t->tp) return alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
    for (int k = 0; k < np; k++) {
        const struct alloy_param_spec *ps = &m->params[k];
        if (ps->scope == ALLOY_PARAM_GLOBAL) {
            const struct alloy_params *lv[2] = {&slice->params, &cfg->params};
            double v;
            int set = eval_levels(lv, 2, ps->name, t->name, t->t, &v);
            if (set && !isfinite(v))
                return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s: tensor '%s': parameter '%s' is %g; parameters "
                                     "must be finite numbers", cfg->path, t->name, ps->name, v);
            t->gp[k] = set ? v : ps->def;
            if (isnan(t->gp[k]) && ps->required)
                return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s: tensor '%s': %s needs the parameter '%s' (%s)",
                                     cfg->path, t->name, m->name, ps->name, ps->help ? ps->help : "no default");
            continue;
        }
        for (int i = 0; i < t->n; i++) {
            const struct alloy_params *lv[3] = {srcs[i].src ? &srcs[i].src->params : NULL, &slice->params,
                                                &cfg->params};
            double v;
            int set = eval_levels(lv, 3, ps->name, t->inputs[i].t->name, t->t, &v);
            if (set && !isfinite(v))
                return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s: tensor '%s': parameter '%s' of model %s is %g; "
                                     "parameters must be finite numbers", cfg->path, t->inputs[i].t->name, ps->name,
                                     alloy_model_ref(b->p->models[srcs[i].model]), v);
            double val = set ? v : ps->def;
            t->tp[(size_t)i * (size_t)np + (size_t)k] = val;
            if (isnan(val) && ps->required && i != t->base)
                return alloy_err_set(b->err, ALLOY_ERR_CONFIG,
                                     "%s: tensor '%s': model %s needs the parameter '%s' (%s)", cfg->path,
                                     t->inputs[i].t->name, alloy_model_ref(b->p->models[srcs[i].model]), ps->name,
                                     ps->help ? ps->help : "no default");
        }
        double sum = 0; /* what a normalisation divides by: it must stay finite */
        for (int i = 0; i < t->n; i++) {
            double val = t->tp[(size_t)i * (size_t)np + (size_t)k];
            if (!isnan(val)) sum += fabs(val);
        }
        if (!isfinite(sum))
            return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s: tensor '%s': the values of '%s' over its %d models add "
                                 "up to more than the largest number (%g); scale them down", cfg->path, t->name,
                                 ps->name, t->n, sum);
    }
    return ALLOY_OK;
}

/* Warn about parameter names the method does not have, and per-model values
 * of global parameters (mergekit ignores both silently). */
static void lint_params(struct builder *b, const struct alloy_params *ps, const char *where, int per_model)
{
    const struct alloy_method *m = b->p->method;
    for (size_t i = 0; i < ps->n; i++) {
        int k = alloy_method_param(m, ps->names[i]);
        if (k < 0)
            warnf(b, "%s:%d:%d: %s: '%s' is not a parameter of %s; ignored", b->p->cfg->path, ps->pos[i].line,
                  ps->pos[i].col, where, ps->names[i], m->name);
        else if (per_model && m->params[k].scope == ALLOY_PARAM_GLOBAL)
            warnf(b, "%s:%d:%d: %s: '%s' is a global parameter of %s and is ignored per model (set it under the "
                     "top-level or slice parameters)",
                  b->p->cfg->path, ps->pos[i].line, ps->pos[i].col, where, ps->names[i], m->name);
    }
}

/* ------------------------------------------------------------ one output tensor */

static void fmt_shape(char *buf, size_t len, const struct alloy_tensor *t)
{
    size_t pos = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && pos < len; d++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (pos < len) snprintf(buf + pos, len - pos, "]");
}

/* Finds `name` in model mi, falling back to the embedding matrix for a tied lm_head (*tied = 1). */
static const struct alloy_tensor *lookup(struct builder *b, int mi, const char *name, int *tied)
{
    const struct alloy_model *m = b->p->models[mi];
    *tied = 0;
    if (b->hint && mi == b->hint_model && name == b->hint->name) return b->hint;
    const struct alloy_tensor *t = alloy_model_find(m, name);
    if (t || !strstr(name, "lm_head")) return t;
    size_t n = alloy_model_count(m);
    for (size_t i = 0; i < n; i++) {
        const struct alloy_tensor *e = alloy_model_tensor(m, i);
        if (alloy_name_is_pre(e->name)) return b->tied_seen = *tied = 1, e;
    }
    return NULL;
}

/* Makes every input a source of the output's rows x cols: stored, a window, tied, or the LoRA of a
 * `model+adapter` applied (sources/). */
static int set_sources(struct builder *b, struct alloy_plan_tensor *t, const int *tied)
{
    for (int i = 0; i < t->n; i++) {
        struct alloy_input *in = &t->inputs[i];
        int lora = tied[i] || t->copy ? 0
                                      : alloy_input_lora(in, in->model, b->p->models[in->model], in->t, t->rows, t->cols,
                                                         b->lora_round);
        if (lora < 0) return alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
        if (!lora) alloy_input_stored(in, in->model, in->t, t->rows, t->cols, tied[i]);
    }
    return ALLOY_OK;
}

/* Re-indexed rows are read from the stored tensors: an adapter on an embedding cannot take part. */
static int refuse_lora_rows(struct builder *b, const struct alloy_plan_tensor *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (alloy_input_is_lora(&t->inputs[i]))
            return alloy_err_set(b->err, ALLOY_ERR_UNSUPPORTED, "%s: %s: a LoRA adapter on a tensor re-indexed to a "
                                 "merged vocabulary is not supported; apply the adapter first (alloy lora apply)",
                                 alloy_model_ref(b->p->models[t->inputs[i].model]), name);
    return ALLOY_OK;
}

static int shapes_equal(const struct alloy_tensor *a, const struct alloy_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static int decide_shape(struct builder *b, struct alloy_plan_tensor *t)
{
    const struct alloy_method *m = b->p->method;
    const struct alloy_tensor *first = t->inputs[t->base >= 0 ? t->base : 0].t;
    t->ndim = first->ndim;
    memcpy(t->shape, first->shape, sizeof t->shape);
    int same = 1;
    for (int i = 0; i < t->n; i++) same &= shapes_equal(t->inputs[i].t, first);
    if (!same) {
        int all2d = 1;
        for (int i = 0; i < t->n; i++) all2d &= t->inputs[i].t->ndim == 2;
        int ok = t->is_embed && all2d && (m->flags & (ALLOY_METHOD_RECTIFY | ALLOY_METHOD_BASE_SHAPE));
        if (ok && (m->flags & ALLOY_METHOD_RECTIFY) && !(m->flags & ALLOY_METHOD_BASE_SHAPE)) {
            for (int i = 0; i < t->n; i++)
                for (int d = 0; d < 2; d++)
                    if (t->inputs[i].t->shape[d] < t->shape[d]) t->shape[d] = t->inputs[i].t->shape[d];
            warnf(b, "%s: embedding shapes differ between models; using the common [%lld, %lld] block", t->name,
                  (long long)t->shape[0], (long long)t->shape[1]);
        } else if (ok) { /* base shape; every input must cover it */
            for (int i = 0; i < t->n && ok; i++)
                ok = t->inputs[i].t->shape[0] >= t->shape[0] && t->inputs[i].t->shape[1] >= t->shape[1];
            if (ok) warnf(b, "%s: embedding shapes differ; larger ones are truncated to the base's", t->name);
        }
        if (!ok) {
            char s0[96], s1[96];
            int bad = 0;
            while (bad < t->n && shapes_equal(t->inputs[bad].t, first)) bad++;
            fmt_shape(s0, sizeof s0, first);
            fmt_shape(s1, sizeof s1, t->inputs[bad].t);
            return alloy_err_set(b->err, ALLOY_ERR_SHAPE,
                                 "%s: tensor '%s': shape %s in %s but %s in %s", alloy_tensor_file_path(t->inputs[bad].t->file),
                                 t->inputs[bad].t->name, s1, alloy_model_ref(b->p->models[t->inputs[bad].model]), s0,
                                 alloy_model_ref(b->p->models[t->inputs[t->base >= 0 ? t->base : 0].model]));
        }
    }
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) t->numel *= (uint64_t)t->shape[d];
    t->cols = t->ndim ? (uint64_t)t->shape[t->ndim - 1] : 1;
    t->rows = t->cols ? t->numel / t->cols : 0;
    return ALLOY_OK;
}

static enum alloy_dtype decide_dtype(const struct builder *b, const struct alloy_plan_tensor *t)
{
    const struct alloy_config *cfg = b->p->cfg;
    if (t->copy) return t->inputs[0].t->dtype;
    if (cfg->has_out_dtype) return cfg->out_dtype;
    if (b->p->method->flags & ALLOY_METHOD_F32_OUTPUT) return ALLOY_DTYPE_F32;
    if (cfg->has_dtype) return cfg->dtype;
    enum alloy_dtype d = t->inputs[t->base >= 0 ? t->base : 0].t->dtype;
    /* F64 and the quantized GGUF types are not written by default: float32 holds their values exactly */
    return d == ALLOY_DTYPE_F64 || d >= ALLOY_DTYPE_FIRST_QUANT || !alloy_dtype_traits(d)->from_f32 ? ALLOY_DTYPE_F32 : d;
}

/* Adds an output tensor `out_name` merged from `srcs` (input names per source). */
static int add_tensor(struct builder *b, const struct alloy_slice *slice, struct src_ref *srcs, int nsrc, int base_src,
                      const char *out_name, const char *const *in_names, double t_pos, int layer)
{
    struct alloy_plan *p = b->p;
    struct alloy_plan_tensor *t = new_tensor(b);
    if (!t || !(t->name = alloy_xstrdup(out_name)) || !(t->inputs = alloy_xcalloc((size_t)nsrc, sizeof *t->inputs)))
        return alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
    t->n = nsrc;
    t->base = base_src;
    t->t = t_pos;
    t->layer = layer;
    t->is_embed = alloy_name_is_embed(out_name);
    int tied[nsrc];
    for (int i = 0; i < nsrc; i++) {
        const struct alloy_tensor *in = lookup(b, srcs[i].model, in_names[i], &tied[i]);
        if (!in)
            return alloy_err_set(b->err, ALLOY_ERR_SHAPE, "%s: tensor '%s': missing from model %s (needed for output "
                                 "tensor '%s'; it is in %s)", alloy_model_dir(p->models[srcs[i].model]), in_names[i],
                                 alloy_model_ref(p->models[srcs[i].model]), out_name,
                                 alloy_model_ref(p->models[srcs[0].model]));
        t->inputs[i].model = srcs[i].model;
        t->inputs[i].t = in;
    }
    int keep = t->base >= 0 ? t->base : 0;
    if (!alloy_dtype_traits(t->inputs[keep].t->dtype)->mergeable) {
        /* integer/bool tensors are copied from the base (or first) model */
        t->copy = 1;
        if (keep != 0) {
            struct alloy_input tmp = t->inputs[0];
            t->inputs[0] = t->inputs[keep];
            t->inputs[keep] = tmp;
            tied[0] = tied[keep];
        }
        t->n = 1;
        t->base = -1;
        t->ndim = t->inputs[0].t->ndim;
        memcpy(t->shape, t->inputs[0].t->shape, sizeof t->shape);
        t->numel = t->inputs[0].t->numel;
        t->nbytes = t->inputs[0].t->nbytes;
        t->dtype = t->inputs[0].t->dtype;
        t->cols = t->ndim ? (uint64_t)t->shape[t->ndim - 1] : 1;
        t->rows = t->cols ? t->numel / t->cols : 0;
        return set_sources(b, t, tied);
    }
    for (int i = 0; i < nsrc; i++)
        if (!alloy_dtype_traits(t->inputs[i].t->dtype)->mergeable)
            return alloy_err_set(b->err, ALLOY_ERR_SHAPE, "%s: tensor '%s': dtype %s cannot be merged with %s",
                                 alloy_tensor_file_path(t->inputs[i].t->file), t->inputs[i].t->name,
                                 alloy_dtype_traits(t->inputs[i].t->dtype)->name,
                                 alloy_dtype_traits(t->inputs[keep].t->dtype)->name);
    int rc;
    if (p->vocab && alloy_name_is_vocab_rows(out_name)) { /* re-indexed to the merged vocabulary (embed.c) */
        if (!(rc = set_sources(b, t, tied))) rc = refuse_lora_rows(b, t, out_name);
        if (!rc) rc = alloy_plan_embed(p, t, plan_warn, b, b->err);
    } else if (!(rc = decide_shape(b, t))) {
        rc = set_sources(b, t, tied);
    }
    if (rc) return rc;
    t->dtype = decide_dtype(b, t);
    t->nbytes = t->numel * alloy_dtype_traits(t->dtype)->bits / 8;
    rc = resolve_params(b, slice, srcs, t);
    if (rc) return rc;
    if (p->method->check) {
        const char *names[nsrc];
        struct alloy_merge_job job;
        for (int i = 0; i < nsrc; i++) names[i] = alloy_model_ref(p->models[t->inputs[i].model]);
        alloy_plan_job(p, p->ntensors - 1, 0, names, &job);
        rc = p->method->check(&job, b->err);
    }
    return rc;
}

/* ------------------------------------------------------------ slices */

/* Resolves a slice's sources (+ base appended if needed). */
static int slice_sources(struct builder *b, const struct alloy_slice *s, size_t si, struct src_ref **out, int *n,
                         int *base_src)
{
    const struct alloy_config *cfg = b->p->cfg;
    const char *base_ref = s->base_model ? s->base_model : cfg->base_model;
    if (s->nsources >= ALLOY_MAX_INPUTS) /* the inputs of one tensor live on the stack in places */
        return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s:%d:%d: slice %zu: %zu sources; alloy merges at most %d "
                             "inputs into one tensor (base included)", cfg->path, s->pos.line, s->pos.col, si + 1,
                             s->nsources, ALLOY_MAX_INPUTS - 1);
    struct src_ref *srcs = alloy_xcalloc(s->nsources + 1, sizeof *srcs);
    if (!srcs) return alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
    *base_src = -1;
    for (size_t i = 0; i < s->nsources; i++) {
        int mi = model_index(b, s->sources[i].model, s->sources[i].pos);
        if (mi < 0) { free(srcs); return -mi; }
        srcs[i].src = &s->sources[i];
        srcs[i].model = mi;
        if (base_ref && *base_src < 0 && strcmp(base_ref, s->sources[i].model) == 0) *base_src = (int)i;
    }
    *n = (int)s->nsources;
    if (base_ref && *base_src < 0) {
        if (cfg->from_slices) {
            free(srcs);
            return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s:%d:%d: slice %zu: base_model %s is not one of the "
                                 "slice's sources (add it with the same layer_range)", cfg->path, s->pos.line,
                                 s->pos.col, si + 1, base_ref);
        }
        int mi = model_index(b, base_ref, s->base_model ? s->pos : cfg->base_model_pos);
        if (mi < 0) { free(srcs); return -mi; }
        srcs[*n].model = mi;
        *base_src = (*n)++;
    }
    *out = srcs;
    return ALLOY_OK;
}

/* Adds the loose (non-layer) tensors of the first source's model that are
 * "pre" (want_pre = 1) or "post" (want_pre = 0). */
static int add_loose(struct builder *b, const struct alloy_slice *s, struct src_ref *srcs, int n, int base_src,
                     int want_pre, int all_loose)
{
    const struct alloy_model *m0 = b->p->models[srcs[base_src >= 0 ? base_src : 0].model];
    const struct alloy_layer_stack *st = &b->stacks[srcs[base_src >= 0 ? base_src : 0].model];
    size_t count = alloy_model_count(m0);
    for (size_t i = 0; i < count; i++) {
        const char *name = alloy_model_tensor(m0, i)->name;
        size_t plen;
        long long l = alloy_name_layer(name, &plen, NULL);
        int in_stack = l >= 0 && st->prefix && plen == strlen(st->prefix) && strncmp(name, st->prefix, plen) == 0;
        if (in_stack) continue;
        if (!all_loose && alloy_name_is_pre(name) != want_pre) continue;
        const char *names[n];
        for (int k = 0; k < n; k++) names[k] = name;
        int rc = add_tensor(b, s, srcs, n, base_src, name, names, 0.0, -1);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

/* 1 when an output tensor `name` is already planned. */
static int planned(const struct alloy_plan *p, const char *name)
{
    for (size_t i = p->ntensors; i-- > 0;) /* heads come last: search from the end */
        if (strcmp(p->tensors[i].name, name) == 0) return 1;
    return 0;
}

/* mergekit's tied_names: a head (lm_head) that the lead model m0 lacks because it ties its embeddings, but
 * that another input stores, is merged all the same; every model without one contributes its embedding
 * matrix in its place (a tied source). Heads are few, so the search is short. */
static int add_tied_heads(struct builder *b, const struct alloy_slice *s, struct src_ref *srcs, int n, int base_src,
                          const struct alloy_model *m0)
{
    for (int k = 0; k < n; k++) {
        const struct alloy_model *mk = b->p->models[srcs[k].model];
        for (size_t i = 0; i < alloy_model_count(mk); i++) {
            const char *name = alloy_model_tensor(mk, i)->name;
            if (!strstr(name, "lm_head") || alloy_model_find(m0, name) || planned(b->p, name)) continue;
            const char *names[n];
            for (int j = 0; j < n; j++) names[j] = name;
            int rc = add_tensor(b, s, srcs, n, base_src, name, names, 0.0, -1);
            if (rc) return rc;
            warnf(b, "%s: %s ties its embeddings (no '%s'); its embedding matrix stands in for it in the merge, "
                  "as mergekit's tied_names do", name, alloy_model_ref(m0), name);
        }
    }
    return ALLOY_OK;
}

static int add_layers(struct builder *b, const struct alloy_slice *s, size_t si, struct src_ref *srcs, int n,
                      int base_src, long long *out_layer)
{
    struct alloy_plan *p = b->p;
    const struct alloy_config *cfg = p->cfg;
    int lead = base_src >= 0 ? base_src : 0;
    const struct alloy_layer_stack *st0 = &b->stacks[srcs[lead].model];
    long long len = -1;
    long long start[n];
    for (int i = 0; i < n; i++) {
        const struct alloy_layer_stack *st = &b->stacks[srcs[i].model];
        const struct alloy_source *src = srcs[i].src ? srcs[i].src : NULL;
        long long a = 0, e = st->nlayers;
        if (src && src->has_range) a = src->layer_range[0], e = src->layer_range[1];
        else if (!src && s->nsources && s->sources[0].has_range) a = s->sources[0].layer_range[0], e = s->sources[0].layer_range[1];
        if (e > st->nlayers)
            return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s:%d:%d: slice %zu: layer_range [%lld, %lld] but model %s "
                                 "has %lld layers", cfg->path, src ? src->pos.line : s->pos.line,
                                 src ? src->pos.col : s->pos.col, si + 1, a, e, alloy_model_ref(p->models[srcs[i].model]),
                                 st->nlayers);
        if (len >= 0 && e - a != len)
            return alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s:%d:%d: slice %zu: model %s spans %lld layers but the "
                                 "first source spans %lld (all inputs to a slice must have the same number of layers)",
                                 cfg->path, s->pos.line, s->pos.col, si + 1, alloy_model_ref(p->models[srcs[i].model]),
                                 e - a, len);
        len = e - a;
        start[i] = a;
    }
    if (!st0->prefix || len <= 0) return ALLOY_OK;
    const struct alloy_model *m0 = p->models[srcs[lead].model];
    long long first = *out_layer;
    size_t e = 0; /* the lead's stack tensors in layers [start, start + len), by layer then file order */
    for (size_t lo = st0->n; lo > 0;) { /* lower bound of start[lead] */
        size_t half = lo / 2;
        if (st0->ent[e + half].layer < start[lead]) e += half + 1, lo -= half + 1;
        else lo = half;
    }
    for (; e < st0->n && st0->ent[e].layer < start[lead] + len; e++) {
        long long j = st0->ent[e].layer - start[lead];
        double t_pos = len == 1 ? 1.0 : (double)j / (double)(len - 1);
        const char *suffix;
        alloy_name_layer(alloy_model_tensor(m0, st0->ent[e].idx)->name, NULL, &suffix);
        char *out_name = alloy_xasprintf("%s.%lld.%s", st0->prefix, first + j, suffix);
        char **in = alloy_xcalloc((size_t)n, sizeof *in);
        int ok = out_name && in;
        for (int k = 0; ok && k < n; k++) {
            const char *pk = b->stacks[srcs[k].model].prefix;
            ok = (in[k] = alloy_xasprintf("%s.%lld.%s", pk ? pk : st0->prefix, start[k] + j, suffix)) != NULL;
        }
        int rc = ok ? add_tensor(b, s, srcs, n, base_src, out_name, (const char *const *)in, t_pos, (int)(first + j))
                    : alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
        free(out_name);
        for (int k = 0; in && k < n; k++) free(in[k]);
        free(in);
        if (rc) return rc;
    }
    *out_layer = first + len;
    return ALLOY_OK;
}

static int plan_tensors(struct builder *b)
{
    struct alloy_plan *p = b->p;
    const struct alloy_config *cfg = p->cfg;
    size_t ns = cfg->nslices;
    struct src_ref *first = NULL, *last = NULL, *cur = NULL;
    int nfirst = 0, nlast = 0, bfirst = -1, blast = -1;
    long long out_layer = 0;
    int rc = slice_sources(b, &cfg->slices[0], 0, &first, &nfirst, &bfirst);
    if (rc) return rc;
    if (!cfg->from_slices) {
        /* models: one slice over whole models; every tensor of the donor in file order */
        lint_params(b, &cfg->params, "parameters", 0);
        for (size_t i = 0; i < cfg->slices[0].nsources; i++)
            lint_params(b, &cfg->slices[0].sources[i].params, cfg->slices[0].sources[i].model, 1);
        int lead = bfirst >= 0 ? bfirst : 0;
        const struct alloy_layer_stack *st = &b->stacks[first[lead].model];
        const struct alloy_model *m0 = p->models[first[lead].model];
        size_t count = alloy_model_count(m0), plen0 = st->prefix ? strlen(st->prefix) : 0;
        for (size_t i = 0; i < count && !rc; i++) {
            const char *name = alloy_model_tensor(m0, i)->name;
            size_t plen;
            long long l = alloy_name_layer(name, &plen, NULL);
            int in_stack = l >= 0 && st->prefix && plen == plen0 && strncmp(name, st->prefix, plen) == 0;
            double t_pos = !in_stack ? 0.0 : st->nlayers == 1 ? 1.0 : (double)l / (double)(st->nlayers - 1);
            const char *names[nfirst];
            for (int k = 0; k < nfirst; k++) names[k] = name;
            b->hint = alloy_model_tensor(m0, i), b->hint_model = first[lead].model;
            rc = add_tensor(b, &cfg->slices[0], first, nfirst, bfirst, name, names, t_pos, in_stack ? (int)l : -1);
        }
        b->hint = NULL;
        if (!rc) rc = add_tied_heads(b, &cfg->slices[0], first, nfirst, bfirst, m0);
        /* tensors the donor lacks are not merged: say so (a model that was found to hold every donor name,
         * none tied, and holds as many tensors holds no other) */
        for (int k = 0; k < nfirst && !rc; k++) {
            const struct alloy_model *mk = p->models[first[k].model];
            size_t extra = 0;
            if (mk == m0 || (!b->tied_seen && alloy_model_count(mk) == alloy_model_count(m0))) continue;
            const char *example = NULL;
            for (size_t i = 0; i < alloy_model_count(mk); i++)
                if (!alloy_model_find(m0, alloy_model_tensor(mk, i)->name) &&
                    !(strstr(alloy_model_tensor(mk, i)->name, "lm_head") && planned(p, alloy_model_tensor(mk, i)->name)))
                    extra++, example = example ? example : alloy_model_tensor(mk, i)->name;
            if (extra)
                warnf(b, "%s: %zu tensors are not in %s and are left out (first: '%s')", alloy_model_ref(mk), extra,
                      alloy_model_ref(m0), example);
        }
        free(first);
        return rc;
    }
    lint_params(b, &cfg->params, "parameters", 0);
    rc = add_loose(b, &cfg->slices[0], first, nfirst, bfirst, 1, 0);
    for (size_t si = 0; si < ns && !rc; si++) {
        const struct alloy_slice *s = &cfg->slices[si];
        int n, bs;
        lint_params(b, &s->params, "slice parameters", 0);
        for (size_t i = 0; i < s->nsources; i++) lint_params(b, &s->sources[i].params, s->sources[i].model, 1);
        rc = slice_sources(b, s, si, &cur, &n, &bs);
        if (rc) break;
        rc = add_layers(b, s, si, cur, n, bs, &out_layer);
        if (si + 1 == ns) last = cur, nlast = n, blast = bs, cur = NULL;
        free(cur);
        cur = NULL;
    }
    if (!rc) rc = add_loose(b, &cfg->slices[ns - 1], last, nlast, blast, 0, 0);
    if (!rc) rc = add_tied_heads(b, &cfg->slices[ns - 1], last, nlast, blast, p->models[last[blast >= 0 ? blast : 0].model]);
    p->out_layers = out_layer;
    free(first);
    free(last);
    return rc;
}

/* Every output name once: two slices that produce the same name would leave a hole in the output. A plan
 * of whole models (models:) names its outputs after the donor's tensors, unique in the donor's table, and
 * adds a head only when no output has its name yet: nothing to check. */
static int unique_names(struct builder *b)
{
    const struct alloy_plan *p = b->p;
    if (!p->cfg->from_slices) return ALLOY_OK;
    struct alloy_strmap seen = {0};
    int rc = alloy_strmap_reserve(&seen, p->ntensors) ? alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory") : 0;
    for (size_t i = 0; i < p->ntensors && !rc; i++) {
        int dup = 0;
        if (alloy_strmap_put(&seen, p->tensors[i].name, i, &dup) != 0)
            rc = alloy_err_set(b->err, ALLOY_ERR_NOMEM, "out of memory");
        else if (dup)
            rc = alloy_err_set(b->err, ALLOY_ERR_CONFIG, "%s: output tensor '%s' is produced twice (two slices or "
                               "sources give it the same name); every output name must be unique", p->cfg->path,
                               p->tensors[i].name);
    }
    alloy_strmap_free(&seen);
    return rc;
}

/* ------------------------------------------------------------ entry points */

/* The tokenizer source: the donor of the tokenizer files, and with tokenizer merging configured (mergekit
 * builds a tokenizer for any tokenizer_source or tokenizer: block) the merged vocabulary, built from every
 * merged model's tokenizer before the tensors are planned. */
static int tokenizer_plan(struct builder *b)
{
    struct alloy_plan *p = b->p;
    const struct alloy_config *cfg = p->cfg;
    if (!cfg->tokenizer_source) return ALLOY_OK;
    for (size_t s = 0; s < cfg->nslices; s++) { /* every merged model, in config order after the base */
        const struct alloy_slice *sl = &cfg->slices[s];
        for (size_t i = 0; i < sl->nsources; i++) {
            int mi = model_index(b, sl->sources[i].model, sl->sources[i].pos);
            if (mi < 0) return -mi;
        }
        int mi = sl->base_model ? model_index(b, sl->base_model, sl->pos) : 0;
        if (mi < 0) return -mi;
    }
    size_t nmerged = p->nmodels;
    int base = p->base >= 0 ? p->base : 0, source = -1;
    if (strcmp(cfg->tokenizer_source, "base") != 0 && strcmp(cfg->tokenizer_source, "union") != 0) {
        const char *ref = cfg->tokenizer_source;
        if (strncmp(ref, "model:", 6) == 0) ref += 6;
        if ((source = model_index(b, ref, cfg->tokenizer_pos)) < 0) return -source;
    }
    p->tokenizer_donor = source >= 0 ? source : base;
    return alloy_vocab_build(cfg, p->models, nmerged, base, source, plan_warn, b, &p->vocab, b->err);
}

int alloy_plan_build(const struct alloy_config *cfg, const struct alloy_merge_options *o, struct alloy_plan **out,
                     struct alloy_err *err)
{
    return alloy_plan_build_given(cfg, o, NULL, out, err);
}

int alloy_plan_build_given(const struct alloy_config *cfg, const struct alloy_merge_options *o,
                           const struct alloy_given_models *given, struct alloy_plan **out, struct alloy_err *err)
{
    struct alloy_plan *p = alloy_xcalloc(1, sizeof *p);
    if (!p) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    struct builder b = {.p = p, .o = o, .err = err, .lora_round = -1, .given = given};
    enum alloy_dtype lrd;
    if (o->lora_merge_dtype && (alloy_dtype_parse(o->lora_merge_dtype, 1, &lrd) != 0 ||
                                (lrd != ALLOY_DTYPE_F32 && lrd != ALLOY_DTYPE_F16 && lrd != ALLOY_DTYPE_BF16))) {
        free(p);
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "--lora-merge-dtype: expected bfloat16, float16 or float32, found "
                             "'%.100s'", o->lora_merge_dtype);
    }
    if (o->lora_merge_dtype) b.lora_round = lrd == ALLOY_DTYPE_F32 ? -1 : (int)lrd;
    p->cfg = cfg;
    p->base = p->donor = p->tokenizer_donor = -1;
    p->out_layers = -1;
    int rc = ALLOY_OK;
    p->method = alloy_method_find(cfg->merge_method);
    if (!p->method) {
        char names[600] = "";
        size_t pos = 0;
        for (size_t i = 0; i < alloy_method_count() && pos < sizeof names; i++)
            pos += (size_t)snprintf(names + pos, sizeof names - pos, "%s%s", i ? ", " : "", alloy_method_at(i)->name);
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s:%d:%d: merge_method: unknown method '%s' (known: %s)", cfg->path,
                           cfg->merge_method_pos.line, cfg->merge_method_pos.col, cfg->merge_method, names);
        goto fail;
    }
    if (cfg->nslices == 0) {
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: no models or slices to merge", cfg->path);
        goto fail;
    }
    if (cfg->base_model) {
        int mi = model_index(&b, cfg->base_model, cfg->base_model_pos);
        if (mi < 0) { rc = -mi; goto fail; }
        p->base = mi;
    } else if (p->method->flags & ALLOY_METHOD_NEEDS_BASE) {
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: base_model: %s needs a base_model", cfg->path, p->method->name);
        goto fail;
    }
    rc = tokenizer_plan(&b);
    if (!rc) rc = plan_tensors(&b);
    if (rc) goto fail;
    if (p->ntensors == 0) {
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: the merge produces no tensors", cfg->path);
        goto fail;
    }
    rc = unique_names(&b);
    if (!rc) rc = alloy_plan_assign_shards(p, o->shard_size, err);
    if (rc) goto fail;
    /* donor of config.json: base, else the first referenced model */
    p->donor = p->base >= 0 ? p->base : 0;
    if (p->tokenizer_donor < 0) p->tokenizer_donor = p->donor;
    if (!o->copy_tokenizer || p->vocab) p->tokenizer_donor = -1; /* a built tokenizer is always written */
    for (size_t i = 0; i < p->nmodels; i++) alloy_plan_stack_free(&b.stacks[i]);
    free(b.stacks);
    *out = p;
    return ALLOY_OK;
fail:
    for (size_t i = 0; i < p->nmodels; i++) alloy_plan_stack_free(&b.stacks[i]);
    free(b.stacks);
    alloy_plan_free(p);
    return rc;
}

void alloy_plan_free(struct alloy_plan *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->ntensors; i++) {
        free(p->tensors[i].name);
        for (int k = 0; k < p->tensors[i].n && p->tensors[i].inputs; k++) alloy_input_free(&p->tensors[i].inputs[k]);
        free(p->tensors[i].inputs);
        free(p->tensors[i].gp);
        free(p->tensors[i].tp);
        alloy_permuted_free(p->tensors[i].perm);
    }
    alloy_vocab_free(p->vocab);
    free(p->tensors);
    for (size_t s = 0; s < p->nshards; s++) free(p->shards[s].file);
    free(p->shards);
    for (size_t i = 0; i < p->nmodels; i++) alloy_model_close(p->models[i]);
    free(p->models);
    free(p);
}

void alloy_plan_job(const struct alloy_plan *p, size_t i, uint64_t seed, const char **model_names,
                    struct alloy_merge_job *job)
{
    const struct alloy_plan_tensor *t = &p->tensors[i];
    *job = (struct alloy_merge_job){
        .name = t->name, .config_path = p->cfg->path, .ndim = t->ndim, .shape = t->shape, .numel = t->numel,
        .rows = t->rows, .cols = t->cols, .is_embed = t->is_embed, .n = t->n, .base = t->base,
        .models = model_names, .gp = t->gp, .tp = t->tp, .seed = seed,
    };
}
