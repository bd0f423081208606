/*
 * gguf_mix.c — llama-quantize's per-tensor type choice for a GGUF output.
 *
 * DESIGN
 *   gguf_mix_type() follows llama_tensor_get_type() at llama.cpp c392e50
 *   for the outtypes alloy names (gguf.md §3.6, §3.7), for a dense
 *   (expert-free), non-Falcon model:
 *   - never quantized: < 2 dims, names not ending in "weight" or holding
 *     "_norm.weight" (they keep their type, F32);
 *   - the output rule: output.weight (token_embd when there is none) is
 *     Q8_0 when its rows are not a multiple of 256, else Q6_K (Q8_0 for the
 *     q8_0 outtype);
 *   - attn_v / ffn_down / attn_output / attn_qkv rules per outtype, with
 *     use_more_bits() over the running attn_v counter and the ffn_down
 *     counter (n = the layer count);
 *   - the fallback last: a row length the chosen type's block does not
 *     divide turns Q4_K into Q5_0, Q5_K into Q5_1, Q6_K into Q8_0, Q2_K and
 *     Q3_K into IQ4_NL (as llama.cpp c392e50, gguf.md §3.7), then F16 when 32
 *     does not divide it either; the legacy types have no fallback and stop,
 *     as llama-quantize does.
 */
#include "sinks/gguf_mix.h"

#include <strings.h>

enum {
    FT_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9, FT_Q2_K = 10,
    FT_Q3_K_M = 12, FT_Q4_K_S = 14, FT_Q4_K_M = 15, FT_Q5_K_S = 16, FT_Q5_K_M = 17, FT_Q6_K = 18, FT_BF16 = 32,
};

static const struct { const char *name; int ftype; enum alloy_dtype type; } g_outtypes[] = {
    {"f32", FT_F32, ALLOY_DTYPE_F32},       {"f16", FT_F16, ALLOY_DTYPE_F16},       {"bf16", FT_BF16, ALLOY_DTYPE_BF16},
    {"q8_0", FT_Q8_0, ALLOY_DTYPE_Q8_0},    {"q4_0", FT_Q4_0, ALLOY_DTYPE_Q4_0},    {"q4_1", FT_Q4_1, ALLOY_DTYPE_Q4_1},
    {"q5_0", FT_Q5_0, ALLOY_DTYPE_Q5_0},    {"q5_1", FT_Q5_1, ALLOY_DTYPE_Q5_1},    {"q2_k", FT_Q2_K, ALLOY_DTYPE_Q2_K},
    {"q3_k_m", FT_Q3_K_M, ALLOY_DTYPE_Q3_K}, {"q4_k_s", FT_Q4_K_S, ALLOY_DTYPE_Q4_K}, {"q4_k_m", FT_Q4_K_M, ALLOY_DTYPE_Q4_K},
    {"q5_k_s", FT_Q5_K_S, ALLOY_DTYPE_Q5_K}, {"q5_k_m", FT_Q5_K_M, ALLOY_DTYPE_Q5_K}, {"q6_k", FT_Q6_K, ALLOY_DTYPE_Q6_K},
};

int gguf_mix_init(struct gguf_mix *m, const char *outtype, int n_layer, int n_gqa, int has_imatrix,
                  const char *const *names, size_t n, struct alloy_err *err)
{
    memset(m, 0, sizeof *m);
    size_t i = 0;
    while (i < ALLOY_ARRAY_LEN(g_outtypes) && strcasecmp(outtype, g_outtypes[i].name) != 0) i++;
    if (i == ALLOY_ARRAY_LEN(g_outtypes))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "--outtype: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, "
                             "q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m or q6_k, found \"%s\"", outtype), -1;
    m->ftype = g_outtypes[i].ftype;
    m->deftype = g_outtypes[i].type;
    m->float_only = m->ftype == FT_F32 || m->ftype == FT_F16 || m->ftype == FT_BF16;
    m->n_layer = n_layer;
    m->n_gqa = n_gqa;
    m->has_imatrix = has_imatrix;
    for (size_t k = 0; k < n; k++) {
        m->has_output |= strcmp(names[k], "output.weight") == 0;
        m->n_attention_wv += strstr(names[k], "attn_v.weight") || strstr(names[k], "attn_qkv.weight") ||
                             strstr(names[k], "attn_kv_b.weight");
    }
    return 0;
}

static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static enum alloy_dtype attn_v_type(struct gguf_mix *m, enum alloy_dtype t)
{
    int i = m->i_attention_wv++;
    switch (m->ftype) {
    case FT_Q2_K: return m->n_gqa >= 4 ? ALLOY_DTYPE_Q4_K : ALLOY_DTYPE_Q3_K;
    case FT_Q3_K_M: return i < 2 ? ALLOY_DTYPE_Q5_K : ALLOY_DTYPE_Q4_K;
    case FT_Q4_K_M:
    case FT_Q5_K_M: return use_more_bits(i, m->n_attention_wv) ? ALLOY_DTYPE_Q6_K : t;
    case FT_Q4_K_S: return i < 4 ? ALLOY_DTYPE_Q5_K : t;
    default: return t;
    }
}

static enum alloy_dtype ffn_down_type(struct gguf_mix *m, enum alloy_dtype t)
{
    int i = m->i_ffn_down++, n = m->n_layer;
    switch (m->ftype) {
    case FT_Q2_K: return ALLOY_DTYPE_Q3_K;
    case FT_Q3_K_M: return i < n / 16 ? ALLOY_DTYPE_Q5_K : ALLOY_DTYPE_Q4_K;
    case FT_Q4_K_M:
    case FT_Q5_K_M: return use_more_bits(i, n) ? ALLOY_DTYPE_Q6_K : t;
    case FT_Q4_K_S: return i < n / 8 ? ALLOY_DTYPE_Q5_K : t;
    case FT_Q4_0: return m->has_imatrix && i < n / 8 ? ALLOY_DTYPE_Q4_1 : t;
    case FT_Q5_0: return m->has_imatrix && i < n / 8 ? ALLOY_DTYPE_Q5_1 : t;
    default: return t;
    }
}

/* The table's choice before the fallback. */
static enum alloy_dtype rule_type(struct gguf_mix *m, const char *name, int64_t ne0)
{
    enum alloy_dtype t = m->deftype;
    if (strcmp(name, "output.weight") == 0 || (!m->has_output && strcmp(name, "token_embd.weight") == 0))
        return ne0 % 256 ? ALLOY_DTYPE_Q8_0 : t == ALLOY_DTYPE_Q8_0 ? t : ALLOY_DTYPE_Q6_K;
    if (strcmp(name, "token_embd.weight") == 0) return t;
    if (strstr(name, "attn_v.weight")) return attn_v_type(m, t);
    if (strstr(name, "ffn_down")) return ffn_down_type(m, t);
    if (strstr(name, "attn_output.weight"))
        return m->ftype == FT_Q2_K ? ALLOY_DTYPE_Q3_K : m->ftype == FT_Q3_K_M ? ALLOY_DTYPE_Q4_K : t;
    if (strstr(name, "attn_qkv.weight"))
        return m->ftype == FT_Q3_K_M ? ALLOY_DTYPE_Q4_K : m->ftype == FT_Q4_K_M ? ALLOY_DTYPE_Q5_K
             : m->ftype == FT_Q5_K_M ? ALLOY_DTYPE_Q6_K : t;
    return t;
}

int gguf_mix_type(struct gguf_mix *m, const char *name, int ndim, int64_t ne0, enum alloy_dtype keep,
                  enum alloy_dtype *out, const char *file, struct alloy_err *err)
{
    size_t len = strlen(name);
    int quantize = ndim >= 2 && len >= 6 && strcmp(name + len - 6, "weight") == 0 && !strstr(name, "_norm.weight");
    if (!quantize) return *out = keep, ALLOY_OK;
    if (m->float_only) return *out = m->deftype, ALLOY_OK;
    enum alloy_dtype t = rule_type(m, name, ne0);
    if (ne0 % alloy_dtype_traits(t)->block == 0) return *out = t, ALLOY_OK;
    enum alloy_dtype fb = t == ALLOY_DTYPE_Q4_K ? ALLOY_DTYPE_Q5_0 : t == ALLOY_DTYPE_Q5_K ? ALLOY_DTYPE_Q5_1
                        : t == ALLOY_DTYPE_Q6_K ? ALLOY_DTYPE_Q8_0
                        : t == ALLOY_DTYPE_Q2_K || t == ALLOY_DTYPE_Q3_K ? ALLOY_DTYPE_IQ4_NL : t;
    if (fb == t)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor '%s': rows of a multiple of %u for %s (llama-quantize "
                             "stops: \"Unsupported tensor size encountered\"), found %lld", file, name,
                             alloy_dtype_traits(t)->block, alloy_dtype_traits(t)->name, (long long)ne0);
    *out = ne0 % alloy_dtype_traits(fb)->block ? ALLOY_DTYPE_F16 : fb;
    return ALLOY_OK;
}

int gguf_mix_order(const char *a, const char *b)
{
    int la = -1, lb = -1;
    if (sscanf(a, "blk.%d.", &la) != 1) la = -1;
    if (sscanf(b, "blk.%d.", &lb) != 1) lb = -1;
    return la != lb ? (la < lb ? -1 : 1) : strcmp(a, b);
}
