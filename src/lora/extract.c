/*
 * extract.c — `alloy lora extract`: a PEFT adapter from a fine-tune and its
 * base, by a truncated SVD of each module's delta.
 *
 * DESIGN
 *   Planning reads headers only: every tensor of the fine-tune is matched by
 *   name and shape with the base (a missing tensor or a shape mismatch is an
 *   error before anything is computed), and each `<module>.weight` is
 *   classified as mergekit-extract-lora does (docs/lora-extract.md):
 *     saved in full  --save-module modules; embeddings and lm_head unless
 *                    --embed-lora; other non-2-D weights (norms) unless
 *                    --skip-undecomposable;
 *     LoRA           2-D weights that pass the -i/-e regexes (an input
 *                    embedding as a PEFT Embedding LoRA, anything else as a
 *                    Linear one);
 *     skipped        what the regexes exclude.
 *   A changed `<module>.bias` goes with its module: `lora_B.bias` (the delta,
 *   with `lora_bias: true`, which PEFT adds on merge) for a Linear LoRA, the
 *   fine-tune's bias for a module saved in full, nothing for a left-out one.
 *   Other tensors (buffers) must be equal in both models: a delta there has
 *   no place in an adapter and is an error naming it.
 *
 *   The LoRA modules are then factored in parallel, one module per worker:
 *   the worker reads both tensors, forms Δ = W_ft − W_base in float32 (the
 *   exact difference of the stored values; for an embedding its transpose,
 *   [dim, vocab]), takes alloy_svd_truncated at k = min(max_rank, min(m, n)),
 *   cuts the rank by --sv-epsilon and --rank-energy, and keeps only A and B.
 *   Memory: one module's matrices per worker, and the workers are limited so
 *   that their matrices fit ALLOY_EXTRACT_MEM; OpenBLAS runs one thread per
 *   worker meanwhile. The adapter is then written in the fine-tune's tensor
 *   order (full copies read as they come) through adapter_write.c, with
 *   r = lora_alpha = the largest rank and every other module's rank in both
 *   rank_pattern and alpha_pattern, so every scaling is 1.
 */
#include "lora/extract.h"

#include "lora/adapter_write.h"

#include <jansson.h>
#include <math.h>

#define ALLOY_EXTRACT_MEM ((uint64_t)2 << 30)

void alloy_lora_extract_options_init(struct alloy_lora_extract_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_rank = 128;
    o->distribute_scale = 1;
    o->lora_dtype = ALLOY_DTYPE_F32;
    o->write_card = 1;
}

static int nomem(struct alloy_err *err) { return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); }

/* ------------------------------------------------------------ planning */

static const char *last_component(const char *module)
{
    const char *dot = strrchr(module, '.');
    return dot ? dot + 1 : module;
}

static int listed(const char *module, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(module, names[i]) || !strcmp(last_component(module), names[i])) return 1;
    return 0;
}

/* An input embedding ([vocab, dim], a PEFT Embedding) by its conventional names. */
static int input_embedding(const char *module)
{
    static const char *const names[] = {"embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings"};
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(names); i++)
        if (!strcmp(last_component(module), names[i])) return 1;
    return 0;
}

/* An embedding module of the model: the input embedding, or a 2-D weight with vocab_size rows (lm_head). */
static int embedding_module(const char *module, const struct alloy_tensor *t, long long vocab)
{
    if (t->ndim != 2) return 0;
    if (input_embedding(module)) return 1;
    return vocab > 0 ? t->shape[0] == vocab : !strcmp(last_component(module), "lm_head");
}

static long long vocab_size(const struct alloy_model *m)
{
    const char *text = alloy_model_config_text(m);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    json_t *v = root ? json_object_get(root, "vocab_size") : NULL;
    long long n = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    json_decref(root);
    return n;
}

/* mergekit's _should_extract: some include regex matches (when any are given), no exclude regex does. */
static int should_extract(const struct alloy_extract *x, const char *module)
{
    int in = x->ninclude == 0;
    for (size_t i = 0; i < x->ninclude && !in; i++) in = regexec(&x->include[i], module, 0, NULL, 0) == 0;
    for (size_t i = 0; i < x->nexclude && in; i++) in = regexec(&x->exclude[i], module, 0, NULL, 0) != 0;
    return in;
}

static int compile_all(const char *const *src, size_t n, regex_t **out, size_t *nout, const char *opt,
                       struct alloy_err *err)
{
    *out = n ? alloy_xcalloc(n, sizeof(regex_t)) : NULL;
    if (n && !*out) return nomem(err);
    for (size_t i = 0; i < n; i++) {
        int rc = regcomp(&(*out)[i], src[i], REG_EXTENDED | REG_NOSUB);
        if (rc) {
            char why[128];
            regerror(rc, &(*out)[i], why, sizeof why);
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: %s: a POSIX extended regex expected, found an error (%s)",
                                 opt, src[i], why);
        }
        (*nout)++;
    }
    return ALLOY_OK;
}

/* Bytes equal in both tensors (for tensors that must not change). */
static int same_bytes(const struct alloy_tensor *a, const struct alloy_tensor *b, struct alloy_err *err, int *same)
{
    *same = a->dtype == b->dtype && a->nbytes == b->nbytes;
    uint8_t *pa = *same ? alloy_xmalloc(a->nbytes + 1) : NULL, *pb = *same ? alloy_xmalloc(b->nbytes + 1) : NULL;
    int rc = *same && (!pa || !pb) ? nomem(err) : ALLOY_OK;
    if (!rc && *same) rc = alloy_tensor_pread(a, 0, pa, a->nbytes, err);
    if (!rc && *same) rc = alloy_tensor_pread(b, 0, pb, b->nbytes, err);
    if (!rc && *same) *same = memcmp(pa, pb, a->nbytes) == 0;
    free(pa);
    free(pb);
    return rc;
}

static void shape_str(const struct alloy_tensor *t, char *buf, size_t len)
{
    size_t pos = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && pos < len; d++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (pos < len) snprintf(buf + pos, len - pos, "]");
}

/* The base's tensor of the same name and shape as t (vocab rows may differ when allow_vocab). */
static int match_base(const struct alloy_extract *x, const struct alloy_tensor *t, int allow_vocab,
                      const struct alloy_tensor **out, struct alloy_err *err)
{
    const struct alloy_tensor *b = alloy_model_find(x->base, t->name);
    *out = b;
    if (!b)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: a tensor of the fine-tune's shape expected, found none "
                             "(the base lacks it)", alloy_model_dir(x->base), t->name);
    int same = b->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = b->shape[d] == t->shape[d] || (allow_vocab && d == 0);
    if (same) return ALLOY_OK;
    char ws[96], fs[96];
    shape_str(t, ws, sizeof ws);
    shape_str(b, fs, sizeof fs);
    return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: shape %s (the fine-tune's) expected, found %s",
                         alloy_model_dir(x->base), t->name, ws, fs);
}

static int add_item(struct alloy_extract *x, const struct alloy_tensor *ft, const struct alloy_tensor *base,
                    enum alloy_extract_kind kind, struct alloy_err *err)
{
    size_t suffix = kind == ALLOY_EXTRACT_BIAS ? 5 : 7; /* ".bias", ".weight" */
    if (x->nitems == x->capitems) {
        size_t nc = x->capitems ? 2 * x->capitems : 64;
        struct alloy_extract_item *p = alloy_xrealloc(x->items, nc * sizeof *p);
        if (!p) return nomem(err);
        x->items = p;
        x->capitems = nc;
    }
    struct alloy_extract_item *it = &x->items[x->nitems];
    memset(it, 0, sizeof *it);
    size_t len = strlen(ft->name) - suffix;
    if (!(it->module = alloy_xmalloc(len + 1))) return nomem(err);
    memcpy(it->module, ft->name, len);
    it->module[len] = '\0';
    it->ft = ft;
    it->base = base;
    it->kind = kind;
    x->nitems++;
    return ALLOY_OK;
}

/* Classifies `<module>.weight` tensor t (see the file comment). */
static int plan_weight(struct alloy_extract *x, const struct alloy_tensor *t, const char *module, long long vocab,
                       struct alloy_err *err)
{
    const struct alloy_lora_extract_options *o = x->o;
    int emb = embedding_module(module, t, vocab), embed_lora = o->embed_lora && !x->vocab_differs;
    const struct alloy_tensor *b;
    int rc = match_base(x, t, emb, &b, err);
    if (rc) return rc;
    if (listed(module, o->save_modules, o->nsave_modules) || (emb && !embed_lora && should_extract(x, module)))
        return add_item(x, t, b, ALLOY_EXTRACT_FULL, err);
    if (!should_extract(x, module)) return add_item(x, t, b, ALLOY_EXTRACT_SKIP, err);
    if (b->shape[0] != t->shape[0])
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: shape [%lld, ...] (the fine-tune's) expected, found [%lld, "
                             "...]", alloy_model_dir(x->base), t->name, (long long)t->shape[0], (long long)b->shape[0]);
    if (t->ndim == 2) return add_item(x, t, b, input_embedding(module) ? ALLOY_EXTRACT_EMBEDDING : ALLOY_EXTRACT_LINEAR, err);
    return add_item(x, t, b, o->skip_undecomposable ? ALLOY_EXTRACT_SKIP : ALLOY_EXTRACT_FULL, err);
}

static int plan_tensor(struct alloy_extract *x, const struct alloy_tensor *t, long long vocab, struct alloy_err *err)
{
    size_t len = strlen(t->name);
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    if (len > 7 && !strcmp(t->name + len - 7, ".weight") && tr->mergeable && tr->block == 1) {
        char *module = alloy_xmalloc(len - 6);
        if (!module) return nomem(err);
        memcpy(module, t->name, len - 7);
        module[len - 7] = '\0';
        int rc = plan_weight(x, t, module, vocab, err);
        free(module);
        return rc;
    }
    const struct alloy_tensor *b;
    int same, rc = match_base(x, t, 0, &b, err);
    if (!rc) rc = same_bytes(t, b, err, &same);
    int bias = len > 5 && !strcmp(t->name + len - 5, ".bias") && tr->mergeable && tr->block == 1 && t->ndim == 1;
    if (!rc && !same && bias) return add_item(x, t, b, ALLOY_EXTRACT_BIAS, err);
    if (!rc && !same)
        rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: equal to the base's expected (only .weight and .bias "
                           "tensors go into an adapter), found a difference", alloy_model_dir(x->ft), t->name);
    return rc;
}

/* A changed bias goes with its module: a LoRA module's as lora_B.bias (the delta), a module saved in full
 * with it (the fine-tune's); a left-out module's is left out too. Anything else is an error. */
static int resolve_biases(const struct alloy_extract *x, struct alloy_err *err)
{
    for (size_t i = 0; i < x->nitems; i++) {
        const struct alloy_extract_item *bi = &x->items[i], *w = NULL;
        if (bi->kind != ALLOY_EXTRACT_BIAS) continue;
        for (size_t j = 0; j < x->nitems && !w; j++)
            if (x->items[j].kind != ALLOY_EXTRACT_BIAS && !strcmp(x->items[j].module, bi->module)) w = &x->items[j];
        if (!w || w->kind == ALLOY_EXTRACT_EMBEDDING || (w->kind == ALLOY_EXTRACT_LINEAR && bi->ft->shape[0] !=
                                                           w->ft->shape[0]))
            return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: equal to the base's expected (a bias a LoRA "
                                 "adapter can carry belongs to a Linear module or a module saved in full), found a "
                                 "difference", alloy_model_dir(x->ft), bi->ft->name);
    }
    return ALLOY_OK;
}

static int plan(struct alloy_extract *x, struct alloy_err *err)
{
    const struct alloy_lora_extract_options *o = x->o;
    int rc = compile_all(o->include_regexes, o->ninclude, &x->include, &x->ninclude, "--include-regexes", err);
    if (!rc) rc = compile_all(o->exclude_regexes, o->nexclude, &x->exclude, &x->nexclude, "--exclude-regexes", err);
    long long vocab = vocab_size(x->ft), bvocab = vocab_size(x->base);
    x->vocab_differs = vocab != bvocab;
    if (!rc && x->vocab_differs && o->embed_lora && o->log)
        o->log(o->log_user, 0, "the models' vocab sizes differ: embeddings are saved in full (--embed-lora is off)");
    for (size_t i = 0; !rc && i < alloy_model_count(x->ft); i++) rc = plan_tensor(x, alloy_model_tensor(x->ft, i), vocab, err);
    return rc ? rc : resolve_biases(x, err);
}

/* ------------------------------------------------------------ options */

static int check_options(const struct alloy_lora_extract_options *o, struct alloy_err *err)
{
    if (!o->model || !o->base_model || !o->out_dir)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "lora extract: model, base model and output folder expected, "
                             "found %s missing", !o->model ? "the model" : !o->base_model ? "the base model" : "the output");
    if (o->max_rank < 1)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "--max-rank: an integer >= 1 expected, found %d", o->max_rank);
    if (!(o->sv_epsilon >= 0) || !isfinite(o->sv_epsilon))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "--sv-epsilon: a finite number >= 0 expected, found %g", o->sv_epsilon);
    if (!(o->rank_energy >= 0 && o->rank_energy <= 1))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "--rank-energy: a fraction in (0, 1] expected, found %g",
                             o->rank_energy);
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(o->lora_dtype);
    if (!tr || (o->lora_dtype != ALLOY_DTYPE_F32 && o->lora_dtype != ALLOY_DTYPE_BF16 && o->lora_dtype != ALLOY_DTYPE_F16))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "LoRA dtype: float32, bfloat16 or float16 expected, found %s",
                             tr ? tr->name : "?");
    return ALLOY_OK;
}

/* ------------------------------------------------------------ run */

static void free_extract(struct alloy_extract *x)
{
    for (size_t i = 0; i < x->nitems; i++) {
        free(x->items[i].module);
        free(x->items[i].a);
        free(x->items[i].b);
    }
    free(x->items);
    for (size_t i = 0; i < x->ninclude; i++) regfree(&x->include[i]);
    for (size_t i = 0; i < x->nexclude; i++) regfree(&x->exclude[i]);
    free(x->include);
    free(x->exclude);
    alloy_model_close(x->ft);
    alloy_model_close(x->base);
}

/* Worker count: the requested threads, bounded by ALLOY_EXTRACT_MEM over the largest module's working set
 * (both inputs, the delta, its copy inside the SVD and the factors: about 6 m n floats). */
static int worker_count(const struct alloy_extract *x, size_t nlora)
{
    uint64_t biggest = 1;
    for (size_t i = 0; i < x->nitems; i++)
        if (x->items[i].kind == ALLOY_EXTRACT_LINEAR || x->items[i].kind == ALLOY_EXTRACT_EMBEDDING)
            if (x->items[i].ft->numel * 24 > biggest) biggest = x->items[i].ft->numel * 24;
    uint64_t fit = ALLOY_EXTRACT_MEM / biggest;
    int n = x->o->threads > 0 ? x->o->threads : alloy_cpu_count();
    if ((uint64_t)n > fit) n = fit ? (int)fit : 1;
    if ((size_t)n > nlora) n = nlora ? (int)nlora : 1;
    return n;
}

int alloy_lora_extract(const struct alloy_lora_extract_options *o, struct alloy_err *err)
{
    int rc = check_options(o, err);
    if (rc) return rc;
    struct alloy_extract x;
    memset(&x, 0, sizeof x);
    x.o = o;
    rc = alloy_model_open(o->model, &x.ft, err);
    if (!rc) rc = alloy_model_open(o->base_model, &x.base, err);
    if (!rc) rc = plan(&x, err);
    struct alloy_adapter_writer *w = NULL;
    if (!rc) {
        const struct alloy_model *inputs[2] = {x.ft, x.base};
        struct alloy_adapter_spec spec = {o->base_model, 1, 1, 0, o->lora_dtype, o->overwrite, inputs, 2};
        rc = alloy_adapter_writer_new(o->out_dir, &spec, &w, err); /* the output rule, before the work */
        alloy_adapter_writer_free(w);
        w = NULL;
    }
    size_t nlora = 0;
    for (size_t i = 0; !rc && i < x.nitems; i++)
        nlora += x.items[i].kind == ALLOY_EXTRACT_LINEAR || x.items[i].kind == ALLOY_EXTRACT_EMBEDDING;
    if (!rc) rc = alloy_extract_factor_all(&x, worker_count(&x, nlora), err);
    if (!rc) rc = alloy_extract_write(&x, err);
    free_extract(&x);
    return rc;
}
