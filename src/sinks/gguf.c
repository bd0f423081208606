/*
 * gguf.c — the GGUF sink: one GGUF v3 file that llama.cpp loads, written
 * straight from the merge.
 *
 * DESIGN
 *   begin() fixes the whole file before any tensor arrives. The output
 *   config.json (the donor's, as a folder output would write it) gives the
 *   architecture (gguf_arch.h) and head counts; every plan tensor gets its
 *   GGUF name (gguf.md §1.2; a name the architecture does not have is an
 *   error, a rotary inv_freq buffer and Gemma/Gemma2's lm_head are
 *   dropped), its GGUF type (the outtype, or F32 for 1-D tensors, norms and
 *   non-weights: §1.5) and its place in the converter's order (generated
 *   tensors first, then sorted Hugging Face names). Generated tensors
 *   (Llama 3.1's rope_freqs, Phi-3's rope factors: gguf_extra_tensors) are
 *   held whole, small, and written right after the header. Gemma3's
 *   token_embd (and output) is cut to the tokenizer's token count: rows
 *   past it are not written. Metadata and tensor
 *   infos are encoded in memory (gguf_out.h), so data offsets (running
 *   sums padded to 32) are known; the file is created at its final size
 *   with the header submitted first.
 *
 *   write() converts each chunk from float32 to the tensor's type straight
 *   into the writer's staging segments (writer.h), as the folder sink does.
 *   llama's q_proj and k_proj rows are reordered within each head on the
 *   way out (§1.3: HF row h*d + a*d/2 + b goes to row h*d + 2b + a), so a
 *   chunk is split at row boundaries and each piece goes to its permuted
 *   row; nothing is held whole. Gemma's norms get +1 on the way out, where
 *   the converter adds it: after rounding to the tensor's own dtype, in
 *   float32 for BF16 and F32 (BF16 is upcast first), and in float16 for an
 *   F16 tensor (the sum rounded to f16, then stored as F32).
 *
 *   Atomicity: the file is written as a hidden temporary sibling
 *   "<out>.alloy-tmp-<pid>-XXXXXX", which commit fsyncs and renames over
 *   the output (then fsyncs the folder) and abort removes.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "sinks/gguf_mix.h"
#include "sinks/gguf_out.h"
#include "quant/imatrix.h"
#include "quant/quantize.h"
#include "sources/source.h"
#include "sinks/output.h"
#include "sinks/publish.h"
#include "sinks/sink.h"
#include "sinks/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_ALIGN 32

struct out_tensor {
    char *name;            /* GGUF name, NULL: dropped */
    int ndim;
    int64_t shape[ALLOY_MAX_DIMS]; /* as stored: Gemma3's token_embd cut to the token count */
    uint64_t numel;
    int plus_one;          /* Gemma norm: the HF value + 1 (gguf.md §1.4) */
    enum alloy_dtype src_dtype; /* the plan's dtype, which the +1 rounds to first */
    const float *values;   /* a generated tensor's values (gguf_extra), NULL for plan tensors */
    enum alloy_dtype dtype;
    uint32_t ggml_type;
    uint64_t perm_heads;   /* rows reordered within this many heads, 0: none */
    uint64_t offset;       /* in the data section */
    uint64_t nbytes;
    int copy_blocks;       /* the input's stored blocks are copied unchanged (quantized passthrough) */
    int quantize;          /* quantized row by row from the merged floats */
};

struct gguf_sink {
    struct alloy_sink base;
    const struct alloy_merge_options *o;
    const struct alloy_plan *p;
    struct out_tensor *t;  /* [nt]: the plan's tensors, then the generated ones */
    size_t nt;
    struct gguf_extra extra[GGUF_MAX_EXTRA];
    size_t nextra;
    struct gguf_mix mix;   /* the outtype's per-tensor types (quantized outtypes) */
    int quantized;         /* a quantized outtype: llama-quantize's types and tensor order */
    struct alloy_imatrix *imatrix; /* --imatrix, NULL: the reference quantizers */
    char *tmp;             /* the temporary file, NULL until created */
    int fd;
    struct alloy_writer *w;
    uint64_t data_start;
};

/* ------------------------------------------------------------ names and types */

/* The GGUF name of HF name hf in architecture ga (malloc'd into *out, NULL when dropped) and which head count
 * permutes its rows (0 none, 1 query heads, 2 key/value heads); -1 when the architecture has no such tensor,
 * -2 when out of memory. */
static int gguf_name(const struct gguf_arch *ga, const char *hf, char **out, int *perm)
{
    static const struct { const char *hf, *gguf; } top[] = {
        {"model.embed_tokens.weight", "token_embd.weight"}, {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
    };
    *out = NULL;
    *perm = 0;
    if (strcmp(hf, "lm_head.weight") == 0 && (ga->flags & GA_NO_OUTPUT)) return 0; /* Gemma ties it, always */
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(top); i++)
        if (strcmp(hf, top[i].hf) == 0) return (*out = alloy_xstrdup(top[i].gguf)) ? 0 : -2;
    unsigned layer;
    int n = 0;
    if (sscanf(hf, "model.layers.%u.%n", &layer, &n) != 1 || !n || hf[13] < '0' || hf[13] > '9') return -1;
    const char *rest = hf + n, *dot = strrchr(rest, '.');
    if (strcmp(rest, "self_attn.rotary_emb.inv_freq") == 0) return 0;
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0)) return -1;
    char stem[64];
    if ((size_t)(dot - rest) >= sizeof stem) return -1;
    memcpy(stem, rest, (size_t)(dot - rest));
    stem[dot - rest] = '\0';
    const char *gg = gguf_arch_layer_gguf(ga, stem, perm);
    int bias_ok = strstr(stem, "self_attn.") && strstr(stem, "_proj") && strcmp(stem, "self_attn.o_proj") != 0;
    if (!gg || (strcmp(dot, ".bias") == 0 && !bias_ok)) return -1; /* biases: q/k/v (and Phi-3's qkv) only */
    return (*out = alloy_xasprintf("blk.%u.%s%s", layer, gg, dot)) ? 0 : -2;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static uint32_t ggml_type_of(enum alloy_dtype d)
{
    static const struct { enum alloy_dtype d; uint32_t id; } ids[] = {
        {ALLOY_DTYPE_F16, 1}, {ALLOY_DTYPE_BF16, 30}, {ALLOY_DTYPE_Q4_0, 2}, {ALLOY_DTYPE_Q4_1, 3},
        {ALLOY_DTYPE_Q5_0, 6}, {ALLOY_DTYPE_Q5_1, 7}, {ALLOY_DTYPE_Q8_0, 8}, {ALLOY_DTYPE_Q2_K, 10},
        {ALLOY_DTYPE_Q3_K, 11}, {ALLOY_DTYPE_Q4_K, 12}, {ALLOY_DTYPE_Q5_K, 13}, {ALLOY_DTYPE_Q6_K, 14},
        {ALLOY_DTYPE_IQ4_NL, 20},
    };
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(ids); i++)
        if (ids[i].d == d) return ids[i].id;
    return 0; /* F32 */
}

static int map_tensor(struct gguf_sink *g, size_t i, const struct gguf_model_info *mi, struct alloy_err *err)
{
    const struct alloy_plan_tensor *pt = &g->p->tensors[i];
    struct out_tensor *t = &g->t[i];
    int perm, rc = gguf_name(mi->ga, pt->name, &t->name, &perm);
    if (rc == -2) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (rc < 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': a %s tensor the GGUF writer maps, found an "
                             "unknown name", g->o->out_dir, pt->name, mi->arch);
    if (!t->name) return ALLOY_OK;
    t->ndim = pt->ndim;
    memcpy(t->shape, pt->shape, sizeof t->shape);
    t->numel = pt->numel;
    t->plus_one = gguf_arch_plus_one(mi->ga, pt->name);
    t->src_dtype = pt->dtype;
    if (pt->copy)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': a float tensor (GGUF output), found %s",
                             g->o->out_dir, pt->name, alloy_dtype_traits(pt->dtype)->name);
    enum alloy_dtype d = g->o->outtype && g->mix.float_only ? g->mix.deftype : pt->dtype;
    if (pt->ndim <= 1 || ends_with(t->name, "_norm.weight") || !ends_with(t->name, ".weight")) d = ALLOY_DTYPE_F32;
    if (d != ALLOY_DTYPE_F16 && d != ALLOY_DTYPE_BF16) d = ALLOY_DTYPE_F32;
    t->dtype = d;
    t->ggml_type = ggml_type_of(d);
    if (perm && mi->permute_qk) {
        t->perm_heads = (uint64_t)(perm == 1 ? mi->n_head : mi->n_head_kv);
        if (pt->rows % t->perm_heads || (pt->rows / t->perm_heads) % 2)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': rows a multiple of 2 x %llu heads, found %llu",
                                 g->o->out_dir, pt->name, (unsigned long long)t->perm_heads,
                                 (unsigned long long)pt->rows);
    }
    return ALLOY_OK;
}

/* 1 when tensor i can be the stored blocks of its one input: a passthrough (scale 1) of a GGUF tensor of
 * type d, whole, with the output's row order. */
static int copyable(const struct gguf_sink *g, size_t i, enum alloy_dtype d)
{
    const struct alloy_plan_tensor *pt = &g->p->tensors[i];
    const struct alloy_tensor *src = pt->n == 1 ? pt->inputs[0].t : NULL;
    double scale = pt->tp ? pt->tp[0] : NAN;
    if (!src || strcmp(g->p->method->name, "passthrough") != 0 || !(isnan(scale) || scale == 1)) return 0;
    return src->dtype == d && src->numel == pt->numel && g->t[i].numel == pt->numel && alloy_gguf_of(src->file) &&
           strcmp(pt->inputs[0].ops->kind, "stored") == 0 && src->file->ops->perm_heads(src->file, src) == g->t[i].perm_heads;
}

static int by_quant_order(const void *a, const void *b, void *sink)
{
    const struct gguf_sink *g = sink;
    const char *x = g->t[*(const size_t *)a].name, *y = g->t[*(const size_t *)b].name;
    return !x || !y ? (!x) - (!y) : gguf_mix_order(x, y); /* dropped tensors last */
}

/* The indices of the written tensors in llama-quantize's order (*n of them), malloc'd. */
static size_t *quant_order(const struct gguf_sink *g, size_t *n)
{
    size_t *order = alloy_xcalloc(g->nt ? g->nt : 1, sizeof *order);
    *n = 0;
    for (size_t i = 0; order && i < g->nt; i++)
        if (g->t[i].name) order[(*n)++] = i;
    if (order) qsort_r(order, *n, sizeof *order, by_quant_order, (void *)g);
    return order;
}

/* A quantized outtype: each tensor's type as llama-quantize picks it; a quantized one is copied from an input
 * of that type when it can be, else quantized from the merged floats. */
static int quant_types(struct gguf_sink *g, const struct gguf_model_info *mi, int n_layer, struct alloy_err *err)
{
    size_t n = 0, *order = quant_order(g, &n);
    const char **names = alloy_xcalloc(n ? n : 1, sizeof *names);
    int rc = order && names ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t k = 0; !rc && k < n; k++) names[k] = g->t[order[k]].name;
    int gqa = mi->n_head_kv ? (int)(mi->n_head / mi->n_head_kv) : 1;
    if (!rc && gguf_mix_init(&g->mix, g->o->outtype, n_layer, gqa, g->imatrix != NULL, names, n, err))
        rc = (int)err->status;
    for (size_t k = 0; !rc && k < n; k++) {
        struct out_tensor *t = &g->t[order[k]];
        enum alloy_dtype d;
        int64_t ne0 = t->ndim ? t->shape[t->ndim - 1] : 1;
        rc = gguf_mix_type(&g->mix, t->name, t->ndim, ne0, t->dtype, &d, g->o->out_dir, err);
        if (rc || d == ALLOY_DTYPE_F32 || d == ALLOY_DTYPE_F16) {
            if (!rc) t->dtype = d;
        } else {
            t->dtype = d;
            t->copy_blocks = copyable(g, order[k], d);
            t->quantize = !t->copy_blocks;
        }
        t->ggml_type = ggml_type_of(t->dtype);
    }
    free(order);
    free(names);
    return rc;
}

/* ------------------------------------------------------------ header */

/* The converter's order: generated tensors first (in their order), then the plan's by HF name. */
static int by_hf_name(const void *a, const void *b, void *plan)
{
    const struct alloy_plan *p = plan;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (i >= p->ntensors || j >= p->ntensors) return (i > j) - (i < j);
    return strcmp(p->tensors[i].name, p->tensors[j].name);
}

/* Tensor infos in the converter's order, with the data offsets. */
static int tensor_infos(struct gguf_sink *g, struct gguf_buf *b, uint64_t *count, struct alloy_err *err)
{
    size_t *order = alloy_xcalloc(g->nt ? g->nt : 1, sizeof *order);
    if (!order) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < g->nt; i++) order[i] = i;
    if (g->quantized) qsort_r(order, g->nt, sizeof *order, by_quant_order, (void *)g);
    else qsort_r(order, g->nt, sizeof *order, by_hf_name, (void *)g->p);
    uint64_t off = 0;
    *count = 0;
    for (size_t k = 0; k < g->nt; k++) {
        struct out_tensor *t = &g->t[order[k]];
        if (!t->name) continue;
        gguf_buf_str(b, t->name, strlen(t->name));
        gguf_buf_u32(b, (uint32_t)t->ndim);
        for (int d = t->ndim - 1; d >= 0; d--) gguf_buf_u64(b, (uint64_t)t->shape[d]); /* ne: innermost first */
        gguf_buf_u32(b, t->ggml_type);
        gguf_buf_u64(b, off);
        t->offset = off;
        if (alloy_dtype_nbytes(t->dtype, t->numel, &t->nbytes) != 0) {
            free(order);
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': whole %s blocks, found %llu values", g->o->out_dir,
                                 t->name, alloy_dtype_traits(t->dtype)->name, (unsigned long long)t->numel);
        }
        off += (t->nbytes + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
        ++*count;
    }
    free(order);
    return ALLOY_OK;
}

static json_t *load_json_text(const char *text, const char *path, struct alloy_err *err)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: a JSON object, found %s (line %d)", path, je.text, je.line);
        return NULL;
    }
    return j;
}

/* What a GGUF tokenizer donor's rebuilt tokenizer.json does not say: its tokenizer.ggml.pre (*pre malloc'd,
 * NULL when it has none) and add_bos/add_eos flags (into *tcfg, as tokenizer_config.json would hold them). */
static int donor_keys(const char *file, char **pre, json_t **tcfg, struct alloy_err *err)
{
    struct alloy_gguf *g = NULL;
    const char *s = NULL;
    uint64_t len = 0;
    int rc = alloy_gguf_open(file, &g, err);
    if (!rc && alloy_gguf_str(g, "tokenizer.ggml.pre", &s, &len, err) > 0 && !(*pre = alloy_xmalloc(len + 1)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    else if (!rc && *pre) {
        memcpy(*pre, s, len);
        (*pre)[len] = '\0';
    }
    if (!rc && !(*tcfg = json_object())) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    static const char *const flags[][2] = {{"tokenizer.ggml.add_bos_token", "add_bos_token"},
                                           {"tokenizer.ggml.add_eos_token", "add_eos_token"}};
    for (size_t i = 0; !rc && i < ALLOY_ARRAY_LEN(flags); i++) {
        int v = 0, have = alloy_gguf_bool(g, flags[i][0], &v, err);
        if (have < 0) rc = (int)err->status;
        else if (have && json_object_set_new(*tcfg, flags[i][1], json_boolean(v)))
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (g) alloy_gguf_base(g)->ops->close(alloy_gguf_base(g));
    return rc;
}

/* The tokenizer source's tokenizer.json and tokenizer_config.json (absent: *tcfg NULL). */
static int tokenizer_json(const struct alloy_plan *p, json_t **tok, json_t **tcfg, char **path, char **pre,
                          struct alloy_err *err)
{
    const struct alloy_model *m = p->models[p->tokenizer_donor >= 0 ? p->tokenizer_donor : p->donor];
    char *text = NULL, *cpath = NULL;
    size_t len;
    *tok = *tcfg = NULL;
    int rc = alloy_model_gguf_tokenizer(m, &text, err);
    if (!rc && !text) {
        rc = alloy_folder_file(alloy_model_dir(m), "tokenizer.json", path, err);
        if (!rc && access(*path, R_OK) != 0)
            rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: the vocabulary a GGUF file needs, found none "
                               "(neither tokenizer.json nor tokenizer.model)", *path);
        if (!rc) rc = alloy_read_file(*path, ALLOY_TOKENIZER_JSON_MAX, &text, &len, err);
        if (!rc) rc = alloy_folder_file(alloy_model_dir(m), "tokenizer_config.json", &cpath, err);
        if (!rc && cpath && access(cpath, R_OK) != 0) {
            free(cpath);
            cpath = NULL;
        }
    } else if (!rc && !(*path = alloy_xasprintf("%s (tokenizer)", alloy_model_dir(m)))) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    } else if (!rc) {
        rc = donor_keys(alloy_model_dir(m), pre, tcfg, err);
    }
    if (!rc && !(*tok = load_json_text(text, *path, err))) rc = (int)err->status;
    free(text);
    text = NULL;
    if (!rc && cpath) rc = alloy_read_file(cpath, ALLOY_TOKENIZER_JSON_MAX, &text, &len, err);
    if (!rc && cpath && !(*tcfg = load_json_text(text, cpath, err))) rc = (int)err->status;
    free(text);
    free(cpath);
    return rc;
}

/* A folder's name (absent: *out NULL) as a JSON object. */
static int optional_json(const char *dir, const char *name, json_t **out, struct alloy_err *err)
{
    char *path = NULL, *text = NULL;
    size_t len;
    *out = NULL;
    int rc = alloy_folder_file(dir, name, &path, err);
    if (!rc && access(path, R_OK) == 0) {
        rc = alloy_read_file(path, ALLOY_TOKENIZER_JSON_MAX, &text, &len, err);
        if (!rc && !(*out = load_json_text(text, path, err))) rc = (int)err->status;
    }
    free(text);
    free(path);
    return rc;
}

/* SentencePiece's tokenizer.model in the tokenizer source's folder, which llama.cpp's converter reads before
 * tokenizer.json (gguf.md §1.1): the "llama" keys from it. *found 0 when the folder has none. */
static int spm_tokenizer(const struct alloy_plan *p, json_t *config, int64_t n_vocab, int space_prefix,
                         struct gguf_buf *kv, int *found, struct alloy_err *err)
{
    const char *dir = alloy_model_dir(p->models[p->tokenizer_donor >= 0 ? p->tokenizer_donor : p->donor]);
    char *path = NULL;
    struct alloy_spm *s = NULL;
    json_t *added = NULL, *tcfg = NULL, *tok = NULL;
    int rc = alloy_folder_file(dir, "tokenizer.model", &path, err);
    *found = !rc && access(path, R_OK) == 0;
    if (*found) rc = alloy_spm_open(path, &s, err);
    if (*found && !rc) rc = optional_json(dir, "added_tokens.json", &added, err);
    if (*found && !rc) rc = optional_json(dir, "tokenizer_config.json", &tcfg, err);
    if (*found && !rc) rc = optional_json(dir, "tokenizer.json", &tok, err);
    if (*found && !rc) rc = gguf_tokenizer_keys_spm(kv, s, added, tcfg, tok, config, path, n_vocab, space_prefix, err);
    alloy_spm_free(s);
    json_decref(tok);
    json_decref(added);
    json_decref(tcfg);
    free(path);
    return rc;
}

/* general.name: the output file's name without its folder and ".gguf". */
static char *model_name(const char *out)
{
    const char *slash = strrchr(out, '/');
    char *name = alloy_xstrdup(slash ? slash + 1 : out);
    if (name && ends_with(name, ".gguf")) name[strlen(name) - 5] = '\0';
    return name;
}

static uint32_t file_type(const struct gguf_sink *g)
{
    if (g->quantized) return (uint32_t)g->mix.ftype;
    for (size_t i = 0; i < g->p->ntensors; i++) /* the type of the first 2-D weight */
        if (g->t[i].name && g->p->tensors[i].ndim == 2) return g->t[i].dtype == ALLOY_DTYPE_F16 ? 1
                                                               : g->t[i].dtype == ALLOY_DTYPE_BF16 ? 32 : 0;
    return 0;
}

/* The generated tensors of config.json (gguf_extra_tensors) after the plan's, F32 and held whole. */
static int add_extras(struct gguf_sink *g, json_t *config, const char *cpath, const struct gguf_model_info *mi,
                      struct alloy_err *err)
{
    int rc = gguf_extra_tensors(config, cpath, mi, g->extra, &g->nextra, err);
    for (size_t k = 0; !rc && k < g->nextra; k++) {
        struct out_tensor *t = &g->t[g->nt++];
        const struct gguf_extra *x = &g->extra[k];
        *t = (struct out_tensor){.name = alloy_xstrdup(x->name), .ndim = 1, .shape = {x->n}, .numel = (uint64_t)x->n,
                                 .values = x->v, .dtype = ALLOY_DTYPE_F32, .src_dtype = ALLOY_DTYPE_F32};
        if (!t->name) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    return rc;
}

/* Gemma3: token_embd (and output) cut to the token count, as Gemma3Model counts it for tokenizer.json
 * (vocabulary entries plus added tokens); *n_vocab the rows kept. */
static void trim_vocab(struct gguf_sink *g, json_t *tok, int64_t *n_vocab)
{
    json_t *v = json_object_get(json_object_get(tok, "model"), "vocab");
    int64_t n = (int64_t)(json_is_array(v) ? json_array_size(v) : json_object_size(v)) +
                (int64_t)json_array_size(json_object_get(tok, "added_tokens"));
    for (size_t i = 0; i < g->p->ntensors; i++) {
        struct out_tensor *t = &g->t[i];
        if (!t->name || t->ndim != 2 || t->shape[0] <= n ||
            (strcmp(t->name, "token_embd.weight") != 0 && strcmp(t->name, "output.weight") != 0))
            continue;
        t->numel = (uint64_t)n * (uint64_t)t->shape[1];
        t->shape[0] = n;
        *n_vocab = n;
    }
}

/* Metadata (model and tokenizer keys) and tensor infos: the whole header, padded, in *out. */
static int build_header(struct gguf_sink *g, struct gguf_buf *out, struct alloy_err *err)
{
    char *ctext = NULL, *tpath = NULL, *pre = NULL, *name = model_name(g->o->out_dir);
    json_t *config = NULL, *tok = NULL, *tcfg = NULL;
    struct gguf_buf kv = {0}, ti = {0};
    struct gguf_model_info mi;
    uint64_t ntensors = 0;
    int rc = name ? alloy_output_config_text(g->p, &ctext, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    const char *cpath = alloy_model_dir(g->p->models[g->p->donor]);
    if (!rc && !(config = load_json_text(ctext, cpath, err))) rc = (int)err->status;
    if (!rc) rc = gguf_model_info(config, cpath, &mi, err);
    for (size_t i = 0; !rc && i < g->p->ntensors; i++) {
        rc = map_tensor(g, i, &mi, err);
        if (g->t[i].name) mi.n_params += g->p->tensors[i].numel;
    }
    if (!rc) rc = add_extras(g, config, cpath, &mi, err);
    int64_t layers = json_integer_value(json_object_get(config, "num_hidden_layers"));
    if (!rc && g->quantized) rc = quant_types(g, &mi, (int)layers, err);
    if (!rc) rc = gguf_model_keys(&kv, config, cpath, &mi, name, file_type(g), err);
    for (size_t i = 0; !rc && i < g->p->ntensors; i++) /* the token list has one entry per embedding row */
        if (g->t[i].name && strcmp(g->t[i].name, "token_embd.weight") == 0) mi.n_vocab = g->t[i].shape[0];
    int spm = 0, gemma = !rc && (mi.ga->flags & GA_NORM_PLUS1) != 0; /* Gemma's SentencePiece: no "▁" prefix */
    if (!rc) rc = spm_tokenizer(g->p, config, mi.n_vocab, gemma ? 0 : -1, &kv, &spm, err);
    if (!rc && !spm) rc = tokenizer_json(g->p, &tok, &tcfg, &tpath, &pre, err);
    if (!rc && !spm && (mi.ga->flags & GA_VOCAB_TRIM)) trim_vocab(g, tok, &mi.n_vocab);
    if (!rc && !spm) rc = gguf_tokenizer_keys(&kv, tok, tcfg, config, tpath, pre, mi.n_vocab, err);
    if (!rc && !spm && gemma && gguf_tokenizer_is_spm(tok)) gguf_kv_bool(&kv, "tokenizer.ggml.add_space_prefix", 0);
    if (!rc) gguf_kv_u32(&kv, "general.quantization_version", 2);
    if (!rc && g->imatrix) { /* what llama-quantize adds */
        gguf_kv_str(&kv, "quantize.imatrix.file", g->o->imatrix);
        gguf_kv_str(&kv, "quantize.imatrix.dataset", alloy_imatrix_dataset(g->imatrix));
        gguf_kv_i32(&kv, "quantize.imatrix.entries_count", (int32_t)alloy_imatrix_entries(g->imatrix));
        gguf_kv_i32(&kv, "quantize.imatrix.chunks_count", alloy_imatrix_chunks(g->imatrix));
    }
    if (!rc) rc = tensor_infos(g, &ti, &ntensors, err);
    if (!rc) {
        gguf_buf_bytes(out, "GGUF", 4);
        gguf_buf_u32(out, 3);
        gguf_buf_u64(out, ntensors);
        gguf_buf_u64(out, kv.nkv);
        gguf_buf_bytes(out, kv.p, kv.len);
        gguf_buf_bytes(out, ti.p, ti.len);
        static const uint8_t zero[GGUF_ALIGN];
        gguf_buf_bytes(out, zero, (GGUF_ALIGN - out->len % GGUF_ALIGN) % GGUF_ALIGN);
        if (kv.oom || ti.oom || out->oom) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory building the header");
    }
    free(kv.p);
    free(ti.p);
    json_decref(config);
    json_decref(tok);
    json_decref(tcfg);
    free(ctext);
    free(tpath);
    free(pre);
    free(name);
    return rc;
}

/* ------------------------------------------------------------ the file */

/* Refuses an output that is a folder, a file an input reads, a file inside an input's folder, or (unless
 * --overwrite) an existing file that is not a GGUF file (publish.c). */
static int check_out_file(const struct gguf_sink *g, const struct alloy_plan *p, struct alloy_err *err)
{
    return alloy_check_out_file_models((const struct alloy_model *const *)p->models, p->nmodels, g->o->out_dir,
                                       g->o->overwrite, err);
}

static int create_file(struct gguf_sink *g, uint64_t total, struct alloy_err *err)
{
    alloy_remove_stale(g->o->out_dir);
    if (!(g->tmp = alloy_xasprintf("%s.alloy-tmp-%ld-XXXXXX", g->o->out_dir, (long)getpid())))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    g->fd = mkstemp(g->tmp);
    if (g->fd < 0) {
        int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create a temporary file next to it: %s", g->o->out_dir,
                               strerror(errno));
        free(g->tmp);
        g->tmp = NULL;
        return rc;
    }
    if (ftruncate(g->fd, (off_t)total) != 0)
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot size the file to %llu bytes: %s", g->tmp,
                             (unsigned long long)total, strerror(errno));
    if (!(g->w = alloy_writer_new(g->fd, g->tmp, ALLOY_WRITER_DIRECT, err))) return err ? (int)err->status : ALLOY_ERR_NOMEM;
    return ALLOY_OK;
}

/* Everything begin() fixes before the file exists: the names, types, order and offsets, the header in *hdr. */
static int layout(struct gguf_sink *g, const struct alloy_plan *p, struct gguf_buf *hdr, struct alloy_err *err)
{
    g->p = p;
    int rc = check_out_file(g, p, err);
    if (!rc && g->o->outtype && gguf_mix_init(&g->mix, g->o->outtype, 0, 1, 0, NULL, 0, err)) rc = (int)err->status;
    g->quantized = g->o->outtype && !g->mix.float_only;
    if (!rc && g->o->imatrix && !g->quantized)
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: --imatrix: a quantized --outtype, found %s", g->o->out_dir,
                           g->o->outtype ? g->o->outtype : "none");
    if (!rc && g->o->imatrix) rc = alloy_imatrix_open(g->o->imatrix, &g->imatrix, err);
    g->nt = p->ntensors;
    if (!rc && !(g->t = alloy_xcalloc(p->ntensors + GGUF_MAX_EXTRA, sizeof *g->t)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    return rc ? rc : build_header(g, hdr, err);
}

static int gguf_begin(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    struct gguf_buf hdr = {0};
    int rc = layout(g, p, &hdr, err);
    uint64_t end = 0;
    for (size_t i = 0; !rc && i < g->nt; i++)
        if (g->t[i].name) {
            uint64_t e = g->t[i].offset + g->t[i].nbytes;
            end = e > end ? e : end;
        }
    g->data_start = hdr.len;
    if (!rc) rc = create_file(g, hdr.len + (end + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN, err);
    if (!rc) rc = alloy_writer_submit(g->w, hdr.p, hdr.len, 0, err);
    for (size_t i = p->ntensors; !rc && i < g->nt; i++) /* generated: little-endian F32, as held */
        rc = alloy_writer_submit(g->w, g->t[i].values, g->t[i].nbytes, g->data_start + g->t[i].offset, err);
    free(hdr.p);
    return rc;
}

static int gguf_tensor_begin(struct alloy_sink *s, size_t i, struct alloy_err *err)
{
    (void)s, (void)i, (void)err;
    return ALLOY_OK;
}

/* The output row of HF row r (llama's Q/K rows permuted within each head). */
static uint64_t out_row(const struct out_tensor *t, uint64_t rows, uint64_t r)
{
    if (!t->perm_heads) return r;
    uint64_t d = rows / t->perm_heads, half = d / 2;
    return r / d * d + 2 * (r % half) + (r % d) / half;
}

/* Whole rows [e0, e1) quantized one at a time (the reference quantizers, bit-exact with llama-quantize's). */
static int write_quantized(struct gguf_sink *g, size_t i, uint64_t e0, uint64_t e1, const float *src,
                           struct alloy_err *err)
{
    const struct alloy_plan_tensor *pt = &g->p->tensors[i];
    const struct out_tensor *t = &g->t[i];
    uint64_t cols = pt->numel / pt->rows, row_bytes = t->nbytes / (t->numel / cols);
    if (e0 % cols || e1 % cols)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': whole rows to quantize, found elements "
                             "%llu..%llu (this merge method hands over partial rows)", g->o->out_dir, pt->name,
                             (unsigned long long)e0, (unsigned long long)e1);
    size_t nw = 0;
    const float *w = g->imatrix ? alloy_imatrix_lookup(g->imatrix, t->name, &nw) : NULL;
    if (w && nw != cols)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: %llu importance values (the row length), found %zu",
                             g->o->imatrix, t->name, (unsigned long long)cols, nw);
    uint8_t *buf = alloy_xmalloc(row_bytes ? row_bytes : 1);
    int rc = buf ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory quantizing '%s'", pt->name);
    for (uint64_t r = e0 / cols; !rc && r < e1 / cols; r++) {
        rc = alloy_quantize_rows(t->dtype, src + (r * cols - e0), buf, 1, (int64_t)cols, w, g->o->out_dir,
                                 pt->name, err);
        if (!rc)
            rc = alloy_writer_submit(g->w, buf, row_bytes, g->data_start + t->offset + out_row(t, pt->rows, r) * row_bytes,
                                     err);
    }
    free(buf);
    return rc;
}

/* Gemma's norms: HF value + 1 where the converter adds it (see the top of the file), in pieces. */
static int write_plus_one(struct gguf_sink *g, const struct out_tensor *t, uint64_t e0, uint64_t e1, const float *src,
                          uint64_t *nonfinite, struct alloy_err *err)
{
    float tmp[1024];
    size_t es = alloy_dtype_traits(t->dtype)->block_bytes;
    int rc = ALLOY_OK;
    for (uint64_t e = e0; e < e1 && !rc;) {
        size_t k = e1 - e < ALLOY_ARRAY_LEN(tmp) ? (size_t)(e1 - e) : ALLOY_ARRAY_LEN(tmp);
        for (size_t j = 0; j < k; j++) {
            float x = src[e - e0 + j];
            if (t->src_dtype == ALLOY_DTYPE_F16) x = alloy_f16_to_f32(alloy_f32_to_f16(x));
            else if (t->src_dtype == ALLOY_DTYPE_BF16) x = alloy_bf16_to_f32(alloy_f32_to_bf16(x));
            x += 1.0f;
            tmp[j] = t->src_dtype == ALLOY_DTYPE_F16 ? alloy_f16_to_f32(alloy_f32_to_f16(x)) : x;
        }
        rc = alloy_writer_submit_f32(g->w, g->data_start + t->offset + e * es, tmp, k, t->dtype, nonfinite, err);
        e += k;
    }
    return rc;
}

static int gguf_write(struct alloy_sink *s, size_t i, uint64_t e0, uint64_t e1, float *src, uint64_t *nonfinite,
                      struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    const struct out_tensor *t = &g->t[i];
    *nonfinite = 0;
    if (!t->name || e0 >= t->numel) return ALLOY_OK; /* dropped, or rows past a cut vocabulary */
    if (e1 > t->numel) e1 = t->numel;
    size_t es = alloy_dtype_traits(t->dtype)->block_bytes;
    uint64_t base = g->data_start + t->offset;
    if (t->quantize) return write_quantized(g, i, e0, e1, src, err);
    if (t->plus_one) return write_plus_one(g, t, e0, e1, src, nonfinite, err);
    if (!t->perm_heads) return alloy_writer_submit_f32(g->w, base + e0 * es, src, (size_t)(e1 - e0), t->dtype, nonfinite, err);
    const struct alloy_plan_tensor *pt = &g->p->tensors[i];
    uint64_t cols = pt->numel / pt->rows, d = pt->rows / t->perm_heads, half = d / 2;
    int rc = ALLOY_OK;
    for (uint64_t e = e0; e < e1 && !rc;) { /* one piece per row: HF row h*d + a*half + b -> h*d + 2b + a */
        uint64_t r = e / cols, end = (r + 1) * cols < e1 ? (r + 1) * cols : e1;
        uint64_t h = r / d, a = (r % d) / half, b = r % half, to = h * d + 2 * b + a;
        rc = alloy_writer_submit_f32(g->w, base + (to * cols + e % cols) * es, src + (e - e0), (size_t)(end - e),
                                     t->dtype, nonfinite, err);
        e = end;
    }
    return rc;
}

static int gguf_whole_rows(struct alloy_sink *s, size_t i)
{
    return ((struct gguf_sink *)s)->t[i].quantize;
}

static int gguf_copies(struct alloy_sink *s, size_t i)
{
    return ((struct gguf_sink *)s)->t[i].copy_blocks;
}

static int gguf_write_bytes(struct alloy_sink *s, size_t i, uint64_t off, const void *buf, size_t len,
                            struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s; /* copied blocks (gguf_copies) */
    return alloy_writer_submit(g->w, buf, len, g->data_start + g->t[i].offset + off, err);
}

int alloy_sink_gguf_layout(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err)
{
    struct gguf_buf hdr = {0};
    int rc = layout((struct gguf_sink *)s, p, &hdr, err);
    free(hdr.p);
    return rc;
}

const char *alloy_sink_gguf_note(void *sink, size_t i, char *buf, size_t n)
{
    const struct out_tensor *t = &((struct gguf_sink *)sink)->t[i];
    if (!t->name) return "dropped (not stored in GGUF)";
    snprintf(buf, n, "%s %s%s", t->name, alloy_dtype_traits(t->dtype)->name,
             t->copy_blocks ? ", blocks copied unchanged" : t->quantize ? ", quantized" : "");
    return buf;
}

static void close_file(struct gguf_sink *g)
{
    alloy_writer_free(g->w);
    g->w = NULL;
    if (g->fd >= 0) close(g->fd);
    g->fd = -1;
}

static int gguf_commit(struct alloy_sink *s, struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    int rc = alloy_writer_flush(g->w, err);
    mode_t um = umask(0);
    umask(um);
    if (!rc && (fchmod(g->fd, 0666 & ~um) != 0 || fsync(g->fd) != 0))
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", g->tmp, strerror(errno));
    close_file(g);
    if (!rc && g->o->interrupt && *g->o->interrupt) rc = alloy_err_set(err, ALLOY_ERR_INTERRUPTED, "interrupted");
    if (!rc && rename(g->tmp, g->o->out_dir) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot rename %s into place: %s", g->o->out_dir, g->tmp,
                           strerror(errno));
    if (rc) return rc;
    free(g->tmp);
    g->tmp = NULL;
    char *copy = alloy_xstrdup(g->o->out_dir);
    if (!copy || alloy_fsync_dir(dirname(copy)) != 0)
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync of its folder failed", g->o->out_dir);
    free(copy);
    return rc;
}

static void gguf_abort(struct alloy_sink *s)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    close_file(g);
    if (g->tmp) unlink(g->tmp);
    free(g->tmp);
    g->tmp = NULL;
}

static void gguf_free(struct alloy_sink *s)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    gguf_abort(s);
    for (size_t i = 0; g->t && i < g->nt; i++) free(g->t[i].name);
    for (size_t i = 0; i < g->nextra; i++) free(g->extra[i].v);
    free(g->t);
    alloy_imatrix_close(g->imatrix);
    free(g);
}

static const struct alloy_sink_ops g_gguf = {
    "gguf", gguf_begin, gguf_tensor_begin, gguf_write, gguf_write_bytes, NULL, gguf_commit, gguf_abort, gguf_free,
    gguf_copies, gguf_whole_rows,
};

int alloy_sink_wants_gguf(const struct alloy_merge_options *o)
{
    if (o->out_format) return strcmp(o->out_format, "gguf") == 0;
    return o->out_dir && ends_with(o->out_dir, ".gguf");
}

struct alloy_sink *alloy_sink_gguf_new(const struct alloy_merge_options *o, struct alloy_err *err)
{
    struct gguf_sink *g = alloy_xcalloc(1, sizeof *g);
    if (!g) {
        alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->base.ops = &g_gguf;
    g->o = o;
    g->fd = -1;
    return &g->base;
}
