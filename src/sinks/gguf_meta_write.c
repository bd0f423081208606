/*
 * gguf_meta_write.c — the metadata buffer of a GGUF output and the model
 * keys that come from config.json.
 *
 * DESIGN
 *   Values are appended in GGUF's little-endian encoding (strings: u64
 *   length then bytes; a pair: key string, u32 type, value). The model keys
 *   follow what convert_hf_to_gguf.py writes for the architectures alloy
 *   maps (gguf.md §1.7), in its order: general.*, then {arch}.block_count,
 *   context, embedding and feed-forward lengths, head counts, rope base,
 *   norm epsilon, key/value lengths (when config.json has head_dim),
 *   general.file_type, and for llama the vocabulary size and rope
 *   dimension count. A rope_scaling the writer cannot express (llama3,
 *   which needs a generated rope_freqs tensor; longrope) is refused rather
 *   than dropped, since llama.cpp would run the model with another RoPE.
 */
#include "sinks/gguf_out.h"

#include <math.h>

void gguf_buf_bytes(struct gguf_buf *b, const void *v, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = alloy_xrealloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, v, n);
    b->len += n;
}

void gguf_buf_u32(struct gguf_buf *b, uint32_t v)
{
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    gguf_buf_bytes(b, le, 4);
}

void gguf_buf_u64(struct gguf_buf *b, uint64_t v)
{
    gguf_buf_u32(b, (uint32_t)v);
    gguf_buf_u32(b, (uint32_t)(v >> 32));
}

void gguf_buf_str(struct gguf_buf *b, const char *s, size_t len)
{
    gguf_buf_u64(b, len);
    gguf_buf_bytes(b, s, len);
}

static void key(struct gguf_buf *b, const char *k, enum gguf_vtype t)
{
    gguf_buf_str(b, k, strlen(k));
    gguf_buf_u32(b, (uint32_t)t);
    b->nkv++;
}

void gguf_kv_str(struct gguf_buf *b, const char *k, const char *s)
{
    key(b, k, GGUF_STRING);
    gguf_buf_str(b, s, strlen(s));
}

void gguf_kv_u32(struct gguf_buf *b, const char *k, uint32_t v)
{
    key(b, k, GGUF_U32);
    gguf_buf_u32(b, v);
}

void gguf_kv_i32(struct gguf_buf *b, const char *k, int32_t v)
{
    key(b, k, GGUF_I32);
    gguf_buf_u32(b, (uint32_t)v);
}

void gguf_kv_f32(struct gguf_buf *b, const char *k, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    key(b, k, GGUF_F32);
    gguf_buf_u32(b, u);
}

void gguf_kv_bool(struct gguf_buf *b, const char *k, int v)
{
    uint8_t one = v ? 1 : 0;
    key(b, k, GGUF_BOOL);
    gguf_buf_bytes(b, &one, 1);
}

void gguf_kv_array(struct gguf_buf *b, const char *k, enum gguf_vtype elem, uint64_t n)
{
    key(b, k, GGUF_ARRAY);
    gguf_buf_u32(b, (uint32_t)elem);
    gguf_buf_u64(b, n);
}

/* ------------------------------------------------------------ config.json */

static const struct { const char *hf, *arch; int permute; } g_archs[] = {
    {"LlamaForCausalLM", "llama", 1}, {"MistralForCausalLM", "llama", 1}, {"LlamaModel", "llama", 1},
    {"Qwen2ForCausalLM", "qwen2", 0}, {"Qwen3ForCausalLM", "qwen3", 0},
};

/* A positive integer field (required: an error when absent). */
static int get_int(json_t *c, const char *path, const char *k, int required, int64_t *v, struct alloy_err *err)
{
    json_t *x = json_object_get(c, k);
    if (!x || json_is_null(x)) {
        if (!required) return ALLOY_OK;
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive integer (GGUF needs it), found none", path, k);
    }
    if (!json_is_integer(x) || json_integer_value(x) <= 0 || json_integer_value(x) > UINT32_MAX)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive 32-bit integer, found another value", path, k);
    *v = json_integer_value(x);
    return ALLOY_OK;
}

int gguf_model_info(json_t *c, const char *path, struct gguf_model_info *mi, struct alloy_err *err)
{
    memset(mi, 0, sizeof *mi);
    json_t *a = json_array_get(json_object_get(c, "architectures"), 0);
    const char *hf = json_is_string(a) ? json_string_value(a) : "";
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_archs) && !mi->arch; i++)
        if (strcmp(hf, g_archs[i].hf) == 0) {
            mi->arch = g_archs[i].arch;
            mi->permute_qk = g_archs[i].permute;
        }
    if (!mi->arch)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: architectures: LlamaForCausalLM, MistralForCausalLM, "
                             "Qwen2ForCausalLM or Qwen3ForCausalLM (the GGUF writer's architectures), found \"%s\"",
                             path, hf);
    int rc = get_int(c, path, "num_attention_heads", 1, &mi->n_head, err);
    if (!rc) rc = get_int(c, path, "hidden_size", 1, &mi->n_embd, err);
    mi->n_head_kv = mi->n_head;
    if (!rc) rc = get_int(c, path, "num_key_value_heads", 0, &mi->n_head_kv, err);
    mi->head_dim = mi->n_head ? mi->n_embd / mi->n_head : 0;
    if (!rc) rc = get_int(c, path, "head_dim", 0, &mi->head_dim, err);
    if (!rc) rc = get_int(c, path, "vocab_size", 1, &mi->n_vocab, err);
    return rc;
}

static int rope_scaling(struct gguf_buf *b, json_t *c, const char *path, const char *arch, struct alloy_err *err)
{
    json_t *rs = json_object_get(c, "rope_scaling");
    if (!rs || json_is_null(rs)) return ALLOY_OK;
    json_t *t = json_object_get(rs, "rope_type");
    if (!json_is_string(t)) t = json_object_get(rs, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : "";
    json_t *f = json_object_get(rs, "factor");
    if (strcmp(type, "linear") != 0 && strcmp(type, "yarn") != 0)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: rope_scaling: none, linear or yarn (what the GGUF "
                             "writer expresses), found \"%s\"", path, type);
    if (!json_is_number(f))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: rope_scaling.factor: a number, found none", path);
    char k[96];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    gguf_kv_str(b, k, type);
    snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
    gguf_kv_f32(b, k, (float)json_number_value(f));
    json_t *o = json_object_get(rs, "original_max_position_embeddings");
    if (json_is_integer(o)) {
        snprintf(k, sizeof k, "%s.rope.scaling.original_context_length", arch);
        gguf_kv_u32(b, k, (uint32_t)json_integer_value(o));
    }
    return ALLOY_OK;
}

/* gguf-py's parameter count label: "1.7M", "8.0B", "494M" (at least two significant digits). */
static const char *size_label(uint64_t n, char *buf, size_t cap)
{
    double scaled = n > 1e12 ? n * 1e-12 : n > 1e9 ? n * 1e-9 : n > 1e6 ? n * 1e-6 : n * 1e-3;
    const char *suffix = n > 1e12 ? "T" : n > 1e9 ? "B" : n > 1e6 ? "M" : "K";
    char whole[32];
    int digits = snprintf(whole, sizeof whole, "%.0f", rint(scaled));
    int fix = whole[0] == '0' ? 2 : digits < 2 ? 2 - digits : 0;
    snprintf(buf, cap, "%.*f%s", fix, scaled, suffix);
    return buf;
}

static void arch_u32(struct gguf_buf *b, const char *arch, const char *suffix, int64_t v)
{
    char k[96];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    gguf_kv_u32(b, k, (uint32_t)v);
}

static int float_field(struct gguf_buf *b, json_t *c, const char *path, const char *field, const char *arch,
                       const char *suffix, int required, struct alloy_err *err)
{
    json_t *x = json_object_get(c, field);
    if (!json_is_number(x)) {
        if (!required && (!x || json_is_null(x))) return ALLOY_OK;
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a number (GGUF needs it), found %s", path, field,
                             x ? "another value" : "none");
    }
    char k[96];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    gguf_kv_f32(b, k, (float)json_number_value(x));
    return ALLOY_OK;
}

int gguf_model_keys(struct gguf_buf *b, json_t *c, const char *path, const struct gguf_model_info *mi,
                    const char *name, uint32_t file_type, struct alloy_err *err)
{
    const char *a = mi->arch;
    char label[48];
    int64_t layers = 0, ctx = 0, ff = 0;
    int rc = get_int(c, path, "num_hidden_layers", 1, &layers, err);
    if (!rc) rc = get_int(c, path, "max_position_embeddings", 1, &ctx, err);
    if (!rc) rc = get_int(c, path, "intermediate_size", 1, &ff, err);
    if (rc) return rc;
    gguf_kv_str(b, "general.architecture", a);
    gguf_kv_str(b, "general.type", "model");
    gguf_kv_str(b, "general.name", name);
    gguf_kv_str(b, "general.size_label", size_label(mi->n_params, label, sizeof label));
    arch_u32(b, a, "block_count", layers);
    arch_u32(b, a, "context_length", ctx);
    arch_u32(b, a, "embedding_length", mi->n_embd);
    arch_u32(b, a, "feed_forward_length", ff);
    arch_u32(b, a, "attention.head_count", mi->n_head);
    arch_u32(b, a, "attention.head_count_kv", mi->n_head_kv);
    rc = float_field(b, c, path, "rope_theta", a, "rope.freq_base", 0, err);
    if (!rc) rc = float_field(b, c, path, "rms_norm_eps", a, "attention.layer_norm_rms_epsilon", 1, err);
    if (rc) return rc;
    if (json_is_integer(json_object_get(c, "head_dim"))) {
        arch_u32(b, a, "attention.key_length", mi->head_dim);
        arch_u32(b, a, "attention.value_length", mi->head_dim);
    }
    gguf_kv_u32(b, "general.file_type", file_type);
    if (strcmp(a, "llama") == 0) {
        arch_u32(b, a, "vocab_size", mi->n_vocab);
        arch_u32(b, a, "rope.dimension_count", mi->head_dim);
    }
    return rope_scaling(b, c, path, a, err);
}
