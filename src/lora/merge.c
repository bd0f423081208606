/*
 * merge.c — `alloy lora merge` (alloy_lora_merge in alloy.h): adapters in,
 * one adapter folder out.
 *
 * DESIGN
 *   1. The config (config/lora_merge_config.c) and every adapter are opened
 *      (lora/adapter.h: headers only). Inputs this merge cannot represent
 *      are refused before anything is written, naming the adapter file and
 *      key: DoRA magnitudes, tensors saved in full (modules_to_save,
 *      base_layer copies), lora_B biases.
 *   2. The modules are the union of the adapters' (sorted by name); each
 *      module's participants are the adapters that have it. A plan pass over
 *      the headers fixes each module's output rank — cat: Σ r_i; A/B types:
 *      the common r (unequal ranks are an error); SVD types: the config's
 *      rank (default: the largest input rank) capped at min(rows, cols) —
 *      and checks shapes, so a bad input fails before any work.
 *   3. Modules are combined in batches of `threads`, one module per pool
 *      thread (combine.c, combine_svd.c), then written in name order through
 *      the adapter writer. Memory: at most `threads` modules at once; cat
 *      and the A/B types hold only the A and B matrices, the SVD types also
 *      (n + 2) dense rows x cols floats per module (DENSE_BUDGET at most).
 *   4. The written config has r = lora_alpha = the most common output rank,
 *      use_rslora false, and each module whose rank differs is written with
 *      lora_alpha = its rank (rank_pattern and alpha_pattern): every scaling
 *      is 1, so the applied delta is exactly B·A. A card (README.md) lists
 *      the inputs and, for the SVD types, each module's relative error next
 *      to the Eckart–Young optimum.
 */
#include "config/lora_merge_config.h"
#include "lora/adapter_write.h"
#include "lora/combine.h"

#include <cblas.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#define DENSE_BUDGET ((uint64_t)4 << 30) /* bytes of dense matrices one module may use */

struct module_out {
    const char *name;
    enum alloy_lora_kind kind;
    uint64_t rows, cols;
    uint32_t rank;                       /* written rank */
    float *a, *b;
    double rel_err, rel_opt;
    struct alloy_err err;
    int rc;
};

struct lmerge {
    const struct alloy_lora_merge_options *o;
    struct alloy_lora_merge_config *cfg;
    struct alloy_adapter **ad;
    size_t nad;
    const char **names;                  /* the union of module names, sorted */
    size_t nnames;
    uint32_t max_rank;                   /* the largest input rank (the SVD types' default rank) */
    struct module_out *mods;
};

void alloy_lora_merge_options_init(struct alloy_lora_merge_options *o)
{
    memset(o, 0, sizeof *o);
}

/* ---------------------------------------------------------------- inputs */

/* Refuses what a combination of LoRA modules cannot carry over. */
static int check_adapter(const struct alloy_adapter *a, struct alloy_err *err)
{
    if (a->use_dora)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: use_dora: a plain LoRA adapter, found DoRA (lora merge "
                             "cannot combine magnitude vectors)", a->config_path);
    if (a->nfull)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: LoRA tensors only, found a tensor saved in full "
                             "(modules_to_save or a base_layer copy; lora merge combines LoRA modules only)",
                             a->weights_path, a->full[0].name);
    for (size_t i = 0; i < a->nmodules; i++) {
        if (a->modules[i].magnitude)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s.lora_magnitude_vector: a plain LoRA module, "
                                 "found DoRA", a->weights_path, a->modules[i].name);
        if (a->modules[i].bias)
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s.lora_B.bias: a LoRA without bias, found one "
                                 "(lora merge cannot combine lora_bias)", a->weights_path, a->modules[i].name);
    }
    return 0;
}

static int cmp_name(const void *x, const void *y) { return strcmp(*(const char *const *)x, *(const char *const *)y); }

static int open_inputs(struct lmerge *L, struct alloy_err *err)
{
    size_t total = 0;
    if (!(L->ad = alloy_xcalloc(L->cfg->ninputs, sizeof *L->ad)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "lora merge: out of memory");
    while (L->nad < L->cfg->ninputs) {
        struct alloy_adapter *a = NULL;
        if (alloy_adapter_open(L->cfg->inputs[L->nad].adapter, &a, err)) return (int)err->status;
        L->ad[L->nad++] = a;
        if (check_adapter(a, err)) return (int)err->status;
        total += a->nmodules;
        for (size_t j = 0; j < a->nmodules; j++)
            if (a->modules[j].rank > L->max_rank) L->max_rank = a->modules[j].rank;
    }
    if (!(L->names = alloy_xcalloc(total ? total : 1, sizeof *L->names)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "lora merge: out of memory");
    for (size_t i = 0; i < L->nad; i++)
        for (size_t j = 0; j < L->ad[i]->nmodules; j++) L->names[L->nnames++] = L->ad[i]->modules[j].name;
    qsort(L->names, L->nnames, sizeof *L->names, cmp_name);
    size_t u = 0;
    for (size_t i = 0; i < L->nnames; i++)
        if (!u || strcmp(L->names[u - 1], L->names[i])) L->names[u++] = L->names[i];
    L->nnames = u;
    if (!u)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: models: adapters with LoRA modules, found none",
                             L->cfg->path);
    return 0;
}

/* ---------------------------------------------------------------- the plan */

/* rows, cols, kind and output rank of module mo; checks that the participants agree. */
static int plan_module(struct lmerge *L, struct module_out *mo, struct alloy_err *err)
{
    const struct alloy_lora_module *first = NULL;
    size_t fi = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < L->nad; i++) {
        const struct alloy_lora_module *m = alloy_adapter_module(L->ad[i], mo->name);
        if (!m) continue;
        uint64_t rows = (uint64_t)m->b->shape[0], cols = (uint64_t)m->a->shape[1];
        if (!first) {
            first = m;
            fi = i;
            mo->kind = m->kind;
            mo->rows = rows;
            mo->cols = cols;
        } else if (m->kind != first->kind || rows != mo->rows || cols != mo->cols) {
            return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: a %s delta [%" PRIu64 ", %" PRIu64 "] as in %s, found "
                                 "a %s delta [%" PRIu64 ", %" PRIu64 "]", L->ad[i]->weights_path, mo->name,
                                 first->kind == ALLOY_LORA_EMBEDDING ? "embedding" : "linear", mo->rows, mo->cols,
                                 L->ad[fi]->dir, m->kind == ALLOY_LORA_EMBEDDING ? "embedding" : "linear", rows, cols);
        } else if (!L->cfg->method->cat && !L->cfg->method->svd && m->rank != first->rank) {
            return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: rank %" PRIu32 " as in %s (merge_method %s combines A "
                                 "and B separately and needs equal ranks; cat and the svd types do not), found %" PRIu32,
                                 L->ad[i]->dir, mo->name, first->rank, L->ad[fi]->dir, L->cfg->method->name, m->rank);
        }
        sum += m->rank;
    }
    uint64_t bytes; /* the SVD types' dense matrices: one per adapter, the target, the residual */
    if (L->cfg->method->svd && (ckd_mul_u64(&bytes, mo->rows, mo->cols) || ckd_mul_u64(&bytes, bytes, 4 * (L->nad + 2)) ||
                                bytes > DENSE_BUDGET))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: a delta [%" PRIu64 ", %" PRIu64 "] whose dense combination "
                             "fits in %" PRIu64 " bytes, found a larger one", mo->name, mo->rows, mo->cols, DENSE_BUDGET);
    if (L->cfg->method->cat && sum > ALLOY_LORA_MAX_RANK)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: concatenated ranks up to %d, found %" PRIu64, mo->name,
                             ALLOY_LORA_MAX_RANK, sum);
    if (L->cfg->method->cat) mo->rank = (uint32_t)sum;
    else if (!L->cfg->method->svd) mo->rank = first->rank;
    else {
        uint64_t k = L->cfg->rank ? L->cfg->rank : L->max_rank, mn = mo->rows < mo->cols ? mo->rows : mo->cols;
        mo->rank = (uint32_t)(k < mn ? k : mn);
    }
    return 0;
}

/* The output rank most modules have (ties: the larger): the config's r. */
static uint32_t common_rank(const struct module_out *m, size_t n)
{
    uint32_t best = 0;
    size_t best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++) c += m[j].rank == m[i].rank;
        if (c > best_count || (c == best_count && m[i].rank > best)) {
            best = m[i].rank;
            best_count = c;
        }
    }
    return best;
}

/* ---------------------------------------------------------------- one module */

static void free_parts(struct alloy_lora_part *p, size_t np)
{
    for (size_t i = 0; i < np; i++) {
        free(p[i].a);
        free(p[i].b);
    }
    free(p);
}

/* The participants of module mo, read as float32. */
static int read_parts(struct lmerge *L, const struct module_out *mo, struct alloy_lora_part *parts, size_t *np,
                      struct alloy_err *err)
{
    for (size_t i = 0; i < L->nad; i++) {
        const struct alloy_lora_module *m = alloy_adapter_module(L->ad[i], mo->name);
        if (!m) continue;
        struct alloy_lora_part *p = &parts[(*np)++];
        *p = (struct alloy_lora_part){alloy_xmalloc(m->a->numel * sizeof(float)),
                                      alloy_xmalloc(m->b->numel * sizeof(float)), m->rank, m->scale,
                                      L->cfg->inputs[i].weight};
        if (!p->a || !p->b) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", mo->name);
        if (alloy_adapter_read_f32(L->ad[i], m->a, p->a, err) || alloy_adapter_read_f32(L->ad[i], m->b, p->b, err))
            return (int)err->status;
    }
    return 0;
}

static int combine_module(struct lmerge *L, struct module_out *mo, struct alloy_err *err)
{
    const struct alloy_lora_method *me = L->cfg->method;
    struct alloy_lora_part *parts = alloy_xcalloc(L->nad, sizeof *parts);
    size_t np = 0;
    if (!parts) return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", mo->name);
    int rc = read_parts(L, mo, parts, &np, err);
    mo->a = alloy_xmalloc((size_t)(mo->rank * mo->cols) * sizeof *mo->a);
    mo->b = alloy_xmalloc((size_t)(mo->rows * mo->rank) * sizeof *mo->b);
    if (!rc && (!mo->a || !mo->b)) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", mo->name);
    struct alloy_lora_mix mix = {me->prune, me->ties, L->cfg->frequency, L->cfg->density, L->o->seed, mo->name, 0};
    if (!rc && me->cat) {
        alloy_lora_cat(parts, np, mo->rows, mo->cols, mo->a, mo->b);
    } else if (!rc && !me->svd) {
        rc = alloy_lora_ab(&mix, parts, np, mo->rows, mo->cols, mo->a, mo->b, err);
    } else if (!rc) {
        float *t = alloy_xmalloc((size_t)(mo->rows * mo->cols) * sizeof *t);
        rc = t ? alloy_lora_target(&mix, parts, np, mo->rows, mo->cols, t, err)
               : alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", mo->name);
        if (!rc)
            rc = alloy_lora_factor(t, mo->rows, mo->cols, mo->rank, L->cfg->svd_clamp, mo->a, mo->b, &mo->rel_err,
                                   &mo->rel_opt, err);
        free(t);
    }
    free_parts(parts, np);
    return rc;
}

struct batch {
    struct lmerge *L;
    size_t start;
};

static void combine_job(void *ctx, size_t item, int ith)
{
    struct batch *B = ctx;
    struct module_out *mo = &B->L->mods[B->start + item];
    mo->rc = combine_module(B->L, mo, &mo->err);
}

/* ---------------------------------------------------------------- card and driver */

/* README.md of the output: inputs, method, and for the SVD types each module's error. NULL: out of memory. */
static char *card(const struct lmerge *L)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    const struct alloy_lora_merge_config *c = L->cfg;
    fprintf(f, "---\nlibrary_name: peft\ntags:\n- alloy\n- lora-merge\n---\n# Merged LoRA adapter\n\n"
               "Combined by `alloy lora merge` with `merge_method: %s`", c->method->name);
    if (c->method->prune != ALLOY_LORA_PRUNE_NONE) fprintf(f, ", density %g", c->density);
    if (c->method->ties) fprintf(f, ", majority_sign_method %s", c->frequency ? "frequency" : "total");
    if (c->method->svd) fprintf(f, ", rank %" PRIu32 "%s", c->rank ? c->rank : L->max_rank, c->rank ? "" : " (the largest input rank)");
    if (c->svd_clamp > 0) fprintf(f, ", svd_clamp %g", c->svd_clamp);
    if (c->method->prune == ALLOY_LORA_PRUNE_RANDOM) fprintf(f, ", random seed %" PRIu64, L->o->seed);
    fprintf(f, ".\n\n| adapter | weight | LoRA modules | r | lora_alpha | use_rslora |\n|---|---:|---:|---:|---:|---|\n");
    for (size_t i = 0; i < L->nad; i++)
        fprintf(f, "| %s | %g | %zu | %" PRIu32 " | %g | %s |\n", c->inputs[i].adapter, c->inputs[i].weight,
                L->ad[i]->nmodules, L->ad[i]->r, L->ad[i]->lora_alpha, L->ad[i]->use_rslora ? "true" : "false");
    if (c->method->svd) {
        fprintf(f, "\nEach module's delta T = Σ w_i·s_i·B_i·A_i (after pruning) re-factored to its rank: relative "
                   "error ‖T − B·A‖_F / ‖T‖_F, next to the best any factorization of that rank can do "
                   "(Eckart–Young).\n\n| module | rank | error | optimum |\n|---|---:|---:|---:|\n");
        for (size_t i = 0; i < L->nnames; i++)
            fprintf(f, "| %s | %" PRIu32 " | %.6f | %.6f |\n", L->mods[i].name, L->mods[i].rank, L->mods[i].rel_err,
                    L->mods[i].rel_opt);
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* Combines the modules `threads` at a time and writes each batch in order. */
static int combine_all(struct lmerge *L, struct alloy_adapter_writer *w, struct alloy_err *err)
{
    struct alloy_pool *pool = alloy_pool_new(L->o->threads);
    if (!pool) return alloy_err_set(err, ALLOY_ERR_NOMEM, "lora merge: cannot start the worker threads");
    size_t per = (size_t)alloy_pool_size(pool);
    int rc = 0;
#ifdef ALLOY_HAVE_OPENBLAS /* every pool thread calls sgemm and LAPACK: one BLAS thread each */
    int saved_blas = openblas_get_num_threads();
    if (per > 1) openblas_set_num_threads(1);
#endif
    for (size_t start = 0; !rc && start < L->nnames; start += per) {
        size_t n = L->nnames - start < per ? L->nnames - start : per;
        struct batch B = {L, start};
        alloy_pool_for(pool, n, combine_job, &B);
        for (size_t i = start; i < start + n; i++) {
            struct module_out *mo = &L->mods[i];
            if (!rc && mo->rc) rc = alloy_err_set(err, mo->err.status, "%s", mo->err.msg);
            if (!rc)
                rc = alloy_adapter_writer_module(w, mo->name, mo->kind, mo->rank, (double)mo->rank, mo->a, mo->cols,
                                                 mo->b, mo->rows, err);
            free(mo->a);
            free(mo->b);
            mo->a = mo->b = NULL;
        }
        if (!rc && L->o->interrupt && *L->o->interrupt)
            rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "lora merge: interrupted");
    }
#ifdef ALLOY_HAVE_OPENBLAS
    openblas_set_num_threads(saved_blas);
#endif
    alloy_pool_free(pool);
    return rc;
}

/* Where out will be, canonical: itself, or its parent's real path and its name. 0 when it cannot tell. */
static int out_path(const char *out, char *real)
{
    if (realpath(out, real)) return 1;
    char parent[PATH_MAX];
    const char *slash = strrchr(out, '/');
    if ((size_t)snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".") >=
        sizeof parent)
        return 0;
    if (!realpath(slash == out ? "/" : parent, parent)) return 0;
    return (size_t)snprintf(real, PATH_MAX, "%s/%s", strcmp(parent, "/") ? parent : "", slash ? slash + 1 : out) <
           PATH_MAX;
}

/* An input adapter is never written to: OUT may not be one, hold one or lie inside one. */
static int check_out(const struct lmerge *L, struct alloy_err *err)
{
    char out[PATH_MAX], in[PATH_MAX];
    if (!out_path(L->o->out_dir, out)) return 0; /* the writer reports what is wrong with it */
    for (size_t i = 0; i < L->nad; i++)
        if (realpath(L->ad[i]->dir, in) && (alloy_path_within(out, in) || alloy_path_within(in, out)))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: an output folder apart from the input adapters, found "
                                 "one that %s the input %s", L->o->out_dir,
                                 strcmp(out, in) == 0 ? "is" : alloy_path_within(out, in) ? "lies inside" : "holds",
                                 L->ad[i]->dir);
    return 0;
}

static int run(struct lmerge *L, struct alloy_err *err)
{
    if (open_inputs(L, err) || check_out(L, err)) return (int)err->status;
    if (!(L->mods = alloy_xcalloc(L->nnames, sizeof *L->mods)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "lora merge: out of memory");
    for (size_t i = 0; i < L->nnames; i++) {
        L->mods[i].name = L->names[i];
        if (plan_module(L, &L->mods[i], err)) return (int)err->status;
    }
    uint32_t r = common_rank(L->mods, L->nnames);
    struct alloy_adapter_spec spec = {.base_model = L->ad[0]->base_model, .r = r, .lora_alpha = (double)r,
                                      .dtype = ALLOY_DTYPE_F32, .overwrite = L->o->overwrite};
    struct alloy_adapter_writer *w = NULL;
    if (alloy_adapter_writer_new(L->o->out_dir, &spec, &w, err)) return (int)err->status;
    int rc = combine_all(L, w, err);
    char *text = rc ? NULL : card(L);
    if (!rc && !text) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: README.md: out of memory", L->o->out_dir);
    if (!rc) rc = alloy_adapter_writer_commit(w, text, err);
    free(text);
    alloy_adapter_writer_free(w);
    return rc;
}

int alloy_lora_merge(const struct alloy_lora_merge_options *o, struct alloy_err *err)
{
    struct alloy_err local;
    if (!err) err = &local;
    err->status = ALLOY_OK;
    err->msg[0] = 0;
    if (!o || !o->out_dir || (!o->config_text && !o->config_path))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "lora merge: a config (text or path) and an output folder, found %s",
                             !o ? "no options" : !o->out_dir ? "no output folder" : "no config");
    struct lmerge L = {.o = o};
    int rc = o->config_text
                 ? alloy_lora_merge_config_parse(o->config_text, strlen(o->config_text), o->config_path, &L.cfg, err)
                 : alloy_lora_merge_config_load(o->config_path, &L.cfg, err);
    if (!rc) rc = run(&L, err);
    for (size_t i = 0; i < L.nad; i++) alloy_adapter_close(L.ad[i]);
    if (L.mods)
        for (size_t i = 0; i < L.nnames; i++) {
            free(L.mods[i].a);
            free(L.mods[i].b);
        }
    free(L.mods);
    free(L.ad);
    free(L.names);
    alloy_lora_merge_config_free(L.cfg);
    return rc;
}
