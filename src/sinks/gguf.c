/*
 * gguf.c — the GGUF sink: one GGUF v3 file that llama.cpp loads, written
 * straight from the merge.
 *
 * DESIGN
 *   begin() fixes the whole file before any tensor arrives. The output
 *   config.json (the donor's, as a folder output would write it) gives the
 *   architecture and head counts; every plan tensor gets its GGUF name
 *   (gguf.md §1.2; a name the architecture does not have is an error, a
 *   rotary inv_freq buffer is dropped), its GGUF type (the outtype, or F32
 *   for 1-D tensors, norms and non-weights: §1.5) and its place in the
 *   converter's order (sorted Hugging Face names). Metadata and tensor
 *   infos are encoded in memory (gguf_out.h), so data offsets (running
 *   sums padded to 32) are known; the file is created at its final size
 *   with the header submitted first.
 *
 *   write() converts each chunk from float32 to the tensor's type straight
 *   into the writer's staging segments (writer.h), as the folder sink does.
 *   llama's q_proj and k_proj rows are reordered within each head on the
 *   way out (§1.3: HF row h*d + a*d/2 + b goes to row h*d + 2b + a), so a
 *   chunk is split at row boundaries and each piece goes to its permuted
 *   row; nothing is held whole.
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
    struct out_tensor *t;  /* [p->ntensors] */
    struct gguf_mix mix;   /* the outtype's per-tensor types (quantized outtypes) */
    int quantized;         /* a quantized outtype: llama-quantize's types and tensor order */
    struct alloy_imatrix *imatrix; /* --imatrix, NULL: the reference quantizers */
    char *tmp;             /* the temporary file, NULL until created */
    int fd;
    struct alloy_writer *w;
    uint64_t data_start;
};

/* ------------------------------------------------------------ names and types */

static const struct { const char *hf, *gguf; int perm; } g_layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight", 0},
    {"self_attn.q_proj.weight", "attn_q.weight", 1}, {"self_attn.q_proj.bias", "attn_q.bias", 1},
    {"self_attn.k_proj.weight", "attn_k.weight", 2}, {"self_attn.k_proj.bias", "attn_k.bias", 2},
    {"self_attn.v_proj.weight", "attn_v.weight", 0}, {"self_attn.v_proj.bias", "attn_v.bias", 0},
    {"self_attn.o_proj.weight", "attn_output.weight", 0},
    {"self_attn.q_norm.weight", "attn_q_norm.weight", 0}, {"self_attn.k_norm.weight", "attn_k_norm.weight", 0},
    {"post_attention_layernorm.weight", "ffn_norm.weight", 0},
    {"mlp.gate_proj.weight", "ffn_gate.weight", 0}, {"mlp.up_proj.weight", "ffn_up.weight", 0},
    {"mlp.down_proj.weight", "ffn_down.weight", 0},
};

static const struct { const char *hf, *gguf; } g_top_names[] = {
    {"model.embed_tokens.weight", "token_embd.weight"}, {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

/* The GGUF name of HF name hf (malloc'd into *out, NULL when dropped) and which head count permutes its rows
 * (0 none, 1 query heads, 2 key/value heads); -1 when the architecture has no such tensor. */
static int gguf_name(const char *hf, char **out, int *perm)
{
    *out = NULL;
    *perm = 0;
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_top_names); i++)
        if (strcmp(hf, g_top_names[i].hf) == 0) return (*out = alloy_xstrdup(g_top_names[i].gguf)) ? 0 : -2;
    unsigned layer;
    int n = 0;
    if (sscanf(hf, "model.layers.%u.%n", &layer, &n) != 1 || !n || hf[13] < '0' || hf[13] > '9') return -1;
    const char *rest = hf + n;
    if (strcmp(rest, "self_attn.rotary_emb.inv_freq") == 0) return 0;
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_layer_names); i++)
        if (strcmp(rest, g_layer_names[i].hf) == 0) {
            *perm = g_layer_names[i].perm;
            return (*out = alloy_xasprintf("blk.%u.%s", layer, g_layer_names[i].gguf)) ? 0 : -2;
        }
    return -1;
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
    int perm, rc = gguf_name(pt->name, &t->name, &perm);
    if (rc == -2) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (rc < 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': a %s tensor the GGUF writer maps, found an "
                             "unknown name", g->o->out_dir, pt->name, mi->arch);
    if (!t->name) return ALLOY_OK;
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
    return src->dtype == d && src->numel == pt->numel && alloy_gguf_of(src->file) &&
           strcmp(pt->inputs[0].ops->kind, "stored") == 0 && src->file->ops->perm_heads(src->file, src) == g->t[i].perm_heads;
}

static int by_quant_order(const void *a, const void *b, void *sink)
{
    const struct gguf_sink *g = sink;
    return gguf_mix_order(g->t[*(const size_t *)a].name, g->t[*(const size_t *)b].name);
}

/* The indices of the written tensors in llama-quantize's order (*n of them), malloc'd. */
static size_t *quant_order(const struct gguf_sink *g, size_t *n)
{
    size_t *order = alloy_xcalloc(g->p->ntensors ? g->p->ntensors : 1, sizeof *order);
    *n = 0;
    for (size_t i = 0; order && i < g->p->ntensors; i++)
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
        const struct alloy_plan_tensor *pt = &g->p->tensors[order[k]];
        struct out_tensor *t = &g->t[order[k]];
        enum alloy_dtype d;
        int64_t ne0 = pt->ndim ? pt->shape[pt->ndim - 1] : 1;
        rc = gguf_mix_type(&g->mix, t->name, pt->ndim, ne0, t->dtype, &d, g->o->out_dir, err);
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

static int by_hf_name(const void *a, const void *b, void *plan)
{
    const struct alloy_plan *p = plan;
    return strcmp(p->tensors[*(const size_t *)a].name, p->tensors[*(const size_t *)b].name);
}

/* Tensor infos in the converter's order, with the data offsets. */
static int tensor_infos(struct gguf_sink *g, struct gguf_buf *b, uint64_t *count, struct alloy_err *err)
{
    const struct alloy_plan *p = g->p;
    size_t *order = alloy_xcalloc(p->ntensors ? p->ntensors : 1, sizeof *order);
    if (!order) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < p->ntensors; i++) order[i] = i;
    if (g->quantized) qsort_r(order, p->ntensors, sizeof *order, by_quant_order, (void *)g);
    else qsort_r(order, p->ntensors, sizeof *order, by_hf_name, (void *)p);
    uint64_t off = 0;
    *count = 0;
    for (size_t k = 0; k < p->ntensors; k++) {
        const struct alloy_plan_tensor *pt = &p->tensors[order[k]];
        struct out_tensor *t = &g->t[order[k]];
        if (!t->name) continue;
        gguf_buf_str(b, t->name, strlen(t->name));
        gguf_buf_u32(b, (uint32_t)pt->ndim);
        for (int d = pt->ndim - 1; d >= 0; d--) gguf_buf_u64(b, (uint64_t)pt->shape[d]); /* ne: innermost first */
        gguf_buf_u32(b, t->ggml_type);
        gguf_buf_u64(b, off);
        t->offset = off;
        if (alloy_dtype_nbytes(t->dtype, pt->numel, &t->nbytes) != 0) {
            free(order);
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': whole %s blocks, found %llu values", g->o->out_dir,
                                 pt->name, alloy_dtype_traits(t->dtype)->name, (unsigned long long)pt->numel);
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
        if (!rc) rc = alloy_read_file(*path, (size_t)1 << 30, &text, &len, err);
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
    if (!rc && cpath) rc = alloy_read_file(cpath, (size_t)1 << 30, &text, &len, err);
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
        rc = alloy_read_file(path, (size_t)1 << 30, &text, &len, err);
        if (!rc && !(*out = load_json_text(text, path, err))) rc = (int)err->status;
    }
    free(text);
    free(path);
    return rc;
}

/* SentencePiece's tokenizer.model in the tokenizer source's folder, which llama.cpp's converter reads before
 * tokenizer.json (gguf.md §1.1): the "llama" keys from it. *found 0 when the folder has none. */
static int spm_tokenizer(const struct alloy_plan *p, json_t *config, int64_t n_vocab, struct gguf_buf *kv, int *found,
                         struct alloy_err *err)
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
    if (*found && !rc) rc = gguf_tokenizer_keys_spm(kv, s, added, tcfg, tok, config, path, n_vocab, err);
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
    int64_t layers = json_integer_value(json_object_get(config, "num_hidden_layers"));
    if (!rc && g->quantized) rc = quant_types(g, &mi, (int)layers, err);
    if (!rc) rc = gguf_model_keys(&kv, config, cpath, &mi, name, file_type(g), err);
    for (size_t i = 0; !rc && i < g->p->ntensors; i++) /* the token list has one entry per embedding row */
        if (g->t[i].name && strcmp(g->t[i].name, "token_embd.weight") == 0) mi.n_vocab = g->p->tensors[i].shape[0];
    int spm = 0;
    if (!rc) rc = spm_tokenizer(g->p, config, mi.n_vocab, &kv, &spm, err);
    if (!rc && !spm) rc = tokenizer_json(g->p, &tok, &tcfg, &tpath, &pre, err);
    if (!rc && !spm) rc = gguf_tokenizer_keys(&kv, tok, tcfg, config, tpath, pre, mi.n_vocab, err);
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

/* Refuses an output that is a folder or a file an input reads (a GGUF input, or a file in an input's folder). */
static int check_out_file(const struct alloy_plan *p, const char *out, struct alloy_err *err)
{
    struct stat st, ms;
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: a GGUF file to write, found a folder", out);
    char *copy = alloy_xstrdup(out), dir[PATH_MAX], mdir[PATH_MAX];
    if (!copy) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int have_dir = realpath(dirname(copy), dir) != NULL, rc = ALLOY_OK;
    for (size_t i = 0; i < p->nmodels && !rc; i++) {
        const char *m = alloy_model_dir(p->models[i]);
        int same_file = stat(out, &st) == 0 && stat(m, &ms) == 0 && st.st_dev == ms.st_dev && st.st_ino == ms.st_ino;
        int inside = have_dir && realpath(m, mdir) && strcmp(dir, mdir) == 0;
        if (same_file || inside)
            rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: an output outside the inputs, found %s input %s", out,
                               same_file ? "the" : "a file in the folder of", alloy_model_ref(p->models[i]));
    }
    free(copy);
    return rc;
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
    int rc = check_out_file(p, g->o->out_dir, err);
    if (!rc && g->o->outtype && gguf_mix_init(&g->mix, g->o->outtype, 0, 1, 0, NULL, 0, err)) rc = (int)err->status;
    g->quantized = g->o->outtype && !g->mix.float_only;
    if (!rc && g->o->imatrix && !g->quantized)
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: --imatrix: a quantized --outtype, found %s", g->o->out_dir,
                           g->o->outtype ? g->o->outtype : "none");
    if (!rc && g->o->imatrix) rc = alloy_imatrix_open(g->o->imatrix, &g->imatrix, err);
    if (!rc && !(g->t = alloy_xcalloc(p->ntensors ? p->ntensors : 1, sizeof *g->t)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    return rc ? rc : build_header(g, hdr, err);
}

static int gguf_begin(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    struct gguf_buf hdr = {0};
    int rc = layout(g, p, &hdr, err);
    uint64_t end = 0;
    for (size_t i = 0; !rc && i < p->ntensors; i++)
        if (g->t[i].name) {
            uint64_t e = g->t[i].offset + g->t[i].nbytes;
            end = e > end ? e : end;
        }
    g->data_start = hdr.len;
    if (!rc) rc = create_file(g, hdr.len + (end + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN, err);
    if (!rc) rc = alloy_writer_submit(g->w, hdr.p, hdr.len, 0, err);
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
    uint64_t cols = pt->numel / pt->rows, row_bytes = t->nbytes / pt->rows;
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

static int gguf_write(struct alloy_sink *s, size_t i, uint64_t e0, uint64_t e1, float *src, uint64_t *nonfinite,
                      struct alloy_err *err)
{
    struct gguf_sink *g = (struct gguf_sink *)s;
    const struct out_tensor *t = &g->t[i];
    *nonfinite = 0;
    if (!t->name) return ALLOY_OK; /* dropped */
    size_t es = alloy_dtype_traits(t->dtype)->block_bytes;
    uint64_t base = g->data_start + t->offset;
    if (t->quantize) return write_quantized(g, i, e0, e1, src, err);
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
    for (size_t i = 0; g->t && i < g->p->ntensors; i++) free(g->t[i].name);
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
