/*
 * gguf_arch.c — the architecture table and per-layer tensor names shared by
 * the GGUF writer and reader (gguf_arch.h).
 *
 * DESIGN
 *   Plain tables, searched linearly (a handful of rows). A layer row names
 *   the architectures it applies to as a bit mask; the first row whose HF
 *   (or GGUF) stem matches and whose mask holds the architecture wins, so
 *   the architecture-specific rows come before the general ones.
 *   Sources: convert_hf_to_gguf.py's LlamaModel, Qwen2Model, Qwen3Model,
 *   Phi3MiniModel, GemmaModel, Gemma2Model, Gemma3Model and gguf-py's
 *   tensor_mapping.py (gguf.md §1.1, §1.2).
 */
#include "core/internal.h"
#include "formats/gguf_arch.h"

static const struct gguf_arch g_archs[] = {
    {GA_LLAMA, "llama", "LlamaForCausalLM", "llama", "silu", GA_PERMUTE},
    {GA_QWEN2, "qwen2", "Qwen2ForCausalLM", "qwen2", "silu", 0},
    {GA_QWEN3, "qwen3", "Qwen3ForCausalLM", "qwen3", "silu", 0},
    {GA_PHI3, "phi3", "Phi3ForCausalLM", "phi3", "silu", 0},
    {GA_GEMMA, "gemma", "GemmaForCausalLM", "gemma", "gelu_pytorch_tanh", GA_NORM_PLUS1 | GA_NO_OUTPUT},
    {GA_GEMMA2, "gemma2", "Gemma2ForCausalLM", "gemma2", "gelu_pytorch_tanh", GA_NORM_PLUS1 | GA_NO_OUTPUT},
    {GA_GEMMA3, "gemma3", "Gemma3ForCausalLM", "gemma3_text", "gelu_pytorch_tanh", GA_NORM_PLUS1 | GA_VOCAB_TRIM},
};

/* Further HF classes the converter maps to one of the above. */
static const struct { const char *hf; enum gguf_arch_id id; } g_aliases[] = {
    {"MistralForCausalLM", GA_LLAMA}, {"LlamaModel", GA_LLAMA},
};

#define ALL ((1u << GA_COUNT) - 1)
#define BIT(a) (1u << (a))
#define SANDWICH (BIT(GA_GEMMA2) | BIT(GA_GEMMA3)) /* norms before and after attention and MLP */

static const struct { const char *hf, *gguf; int perm; unsigned archs; } g_layer[] = {
    {"input_layernorm", "attn_norm", 0, ALL},
    {"self_attn.q_proj", "attn_q", 1, ALL},
    {"self_attn.k_proj", "attn_k", 2, ALL},
    {"self_attn.v_proj", "attn_v", 0, ALL},
    {"self_attn.o_proj", "attn_output", 0, ALL},
    {"self_attn.qkv_proj", "attn_qkv", 0, BIT(GA_PHI3)},
    {"self_attn.q_norm", "attn_q_norm", 0, BIT(GA_QWEN3) | BIT(GA_GEMMA3)},
    {"self_attn.k_norm", "attn_k_norm", 0, BIT(GA_QWEN3) | BIT(GA_GEMMA3)},
    {"post_attention_layernorm", "post_attention_norm", 0, SANDWICH},
    {"post_attention_layernorm", "ffn_norm", 0, ALL & ~SANDWICH},
    {"pre_feedforward_layernorm", "ffn_norm", 0, SANDWICH},
    {"post_feedforward_layernorm", "post_ffw_norm", 0, SANDWICH},
    {"mlp.gate_up_proj", "ffn_up", 0, BIT(GA_PHI3)},
    {"mlp.gate_proj", "ffn_gate", 0, ALL & ~BIT(GA_PHI3)},
    {"mlp.up_proj", "ffn_up", 0, ALL & ~BIT(GA_PHI3)},
    {"mlp.down_proj", "ffn_down", 0, ALL},
};

const struct gguf_arch *gguf_arch_of_hf(const char *hf_class)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_archs); i++)
        if (strcmp(hf_class, g_archs[i].hf_class) == 0) return &g_archs[i];
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_aliases); i++)
        if (strcmp(hf_class, g_aliases[i].hf) == 0) return &g_archs[g_aliases[i].id];
    return NULL;
}

const struct gguf_arch *gguf_arch_named(const char *name)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_archs); i++)
        if (strcmp(name, g_archs[i].name) == 0) return &g_archs[i];
    return NULL;
}

const char *gguf_arch_names(void) { return "llama, qwen2, qwen3, phi3, gemma, gemma2 or gemma3"; }

const char *gguf_arch_hf_names(void)
{
    return "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, "
           "GemmaForCausalLM, Gemma2ForCausalLM or Gemma3ForCausalLM";
}

const char *gguf_arch_layer_gguf(const struct gguf_arch *a, const char *hf, int *perm)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_layer); i++)
        if ((g_layer[i].archs & BIT(a->id)) && strcmp(hf, g_layer[i].hf) == 0) {
            *perm = a->flags & GA_PERMUTE ? g_layer[i].perm : 0;
            return g_layer[i].gguf;
        }
    return NULL;
}

const char *gguf_arch_layer_hf(const struct gguf_arch *a, const char *gg, size_t n, int *perm)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_layer); i++)
        if ((g_layer[i].archs & BIT(a->id)) && strlen(g_layer[i].gguf) == n && memcmp(gg, g_layer[i].gguf, n) == 0) {
            *perm = a->flags & GA_PERMUTE ? g_layer[i].perm : 0;
            return g_layer[i].hf;
        }
    return NULL;
}

int gguf_arch_plus_one(const struct gguf_arch *a, const char *name)
{
    size_t n = strlen(name), k = strlen("norm.weight");
    return (a->flags & GA_NORM_PLUS1) && n >= k && strcmp(name + n - k, "norm.weight") == 0;
}
