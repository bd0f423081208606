/*
 * gguf_arch.h — the GGUF architectures alloy writes and reads, and their
 * tensor names (gguf_arch.c).
 *
 * DESIGN
 *   One table serves both directions, so the GGUF writer (src/sinks/gguf.c)
 *   and reader (gguf.c) cannot drift apart: per architecture its Hugging
 *   Face class and model_type, and what convert_hf_to_gguf.py does to it
 *   (gguf.md §1.1-§1.6): llama's Q/K row permutation, Gemma's +1 on every
 *   "norm.weight", whether output.weight may exist (gemma, gemma2: never),
 *   Gemma3's embedding cut to the token count. Per-layer names are a list
 *   of (HF stem, GGUF stem, architectures) rows looked up in order, so one
 *   HF name can mean different GGUF tensors per architecture (Gemma2/3's
 *   post_attention_layernorm is post_attention_norm, everyone else's is
 *   ffn_norm) and Phi-3's fused qkv_proj / gate_up_proj stay fused.
 *   The RoPE scaling both directions share (Llama 3.1's rope_freqs factors,
 *   rebuilding rope_scaling from a GGUF) is gguf_rope.c.
 */
#ifndef ALLOY_GGUF_ARCH_H
#define ALLOY_GGUF_ARCH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct alloy_gguf;
struct alloy_err;

enum gguf_arch_id { GA_LLAMA, GA_QWEN2, GA_QWEN3, GA_PHI3, GA_GEMMA, GA_GEMMA2, GA_GEMMA3, GA_COUNT };

enum {
    GA_PERMUTE = 1,    /* Q/K rows in llama.cpp's rotary order (§1.3) */
    GA_NORM_PLUS1 = 2, /* every *norm.weight stored as HF value + 1 (§1.4) */
    GA_NO_OUTPUT = 4,  /* output.weight is never written (the converter drops lm_head) */
    GA_VOCAB_TRIM = 8, /* token_embd cut to the tokenizer's token count (§1.4) */
};

struct gguf_arch {
    enum gguf_arch_id id;
    const char *name;       /* general.architecture */
    const char *hf_class;   /* config.json architectures[0] written back */
    const char *model_type;
    const char *hidden_act; /* config.json's activation (key hidden_act, Gemma: hidden_activation) */
    unsigned flags;
};

/* The architecture of an HF class (architectures[0]) or of a general.architecture value; NULL: none. */
const struct gguf_arch *gguf_arch_of_hf(const char *hf_class);
const struct gguf_arch *gguf_arch_named(const char *name);
/* "llama, qwen2, ..." and "LlamaForCausalLM, ..." for messages. */
const char *gguf_arch_names(void);
const char *gguf_arch_hf_names(void);

/* The GGUF stem of per-layer HF stem hf ("self_attn.q_proj") in architecture a, and which head count
 * permutes its rows (0 none, 1 query heads, 2 key/value heads); NULL when a has no such tensor. */
const char *gguf_arch_layer_gguf(const struct gguf_arch *a, const char *hf, int *perm);
/* The reverse: the HF stem of GGUF stem gg (n bytes, "attn_q"); NULL when a has none. */
const char *gguf_arch_layer_hf(const struct gguf_arch *a, const char *gg, size_t n, int *perm);
/* 1 when name (HF or GGUF: both end in "norm.weight") is one of a's norm weights that carry Gemma's +1. */
int gguf_arch_plus_one(const struct gguf_arch *a, const char *name);

/* RoPE scaling (gguf_rope.c). Meta's llama3 factors of a rotary dimension dim (dim/2 values into out), as
 * convert_hf_to_gguf.py computes rope_freqs.weight. */
void gguf_llama3_factors(double theta, int64_t dim, double factor, double lo, double hi, double old, float *out);
/* config.json's rope_scaling (into o, which holds rope_theta) from a GGUF's scaling keys and derived tensors
 * (rope_freqs, rope_factors_long/short) of rotary dimension rot_dim; an error when it cannot be rebuilt. */
int gguf_rope_config(const struct alloy_gguf *g, json_t *o, int64_t rot_dim, struct alloy_err *err);

#endif
