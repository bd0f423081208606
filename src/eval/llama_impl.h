/*
 * llama_impl.h — the Llama model and workspace layout shared by llama.c
 * (dense forward pass) and llama_moe.c (the sparse MoE blocks of Mixtral, Qwen2-MoE and DeepSeek-MoE).
 * Private to src/eval/.
 */
#ifndef ALLOY_LLAMA_IMPL_H
#define ALLOY_LLAMA_IMPL_H

#include "eval/eval.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct llama_layer {
    const float *attn_norm, *ffn_norm;
    const float *wqkv, *bqkv; /* [(nh + 2 nkv) hd][H], bias or NULL */
    const float *qnorm, *knorm; /* Qwen3: [hd] RMSNorm weights of every q and k head, else NULL */
    const float *wo, *bo;     /* [H][nh hd] */
    const float *wgu, *bgu;   /* [2 F][H]: gate rows, then up rows; Mixtral: [E][2 F][H], w1 rows then w3 rows */
    const float *wdown, *bdown; /* [H][F]; Mixtral: [E][H][F] (w2) */
    const float *router;      /* a sparse layer's [E][H] (block_sparse_moe.gate, mlp.gate), else NULL */
    const float *swgu, *swdown, *sgate; /* the shared expert: [2 F][H], [H][F]; Qwen2-MoE's gate [H] (else NULL) */
};

struct alloy_llama {
    struct alloy_llama_config cfg;
    char *dir;
    float *arena;
    uint64_t n_params;
    const float *embed, *norm, *lm_head;
    struct llama_layer *layers;
    float *inv_freq; /* [head_dim / 2] */
};

struct alloy_llama_ws {
    int max_len, max_seqs;
    float *h, *a, *qkv, *att, *gu, *act, *scores, *logits, *sel;
    float *cos, *sin; /* [max_len][head_dim / 2] */
    float *route, *mx, *my; /* Mixtral: router weights [T][E], gathered rows and the block's output [T][H] */
};

/* The SiLU-gated MLP y[T][H] = down(silu(gate x) * up x) with weights wgu [2F][H] and wdown [H][F]
 * (biases may be NULL), scratch gu [T][2F] and act [T][F]; y may be x. */
typedef void (*llama_ffn_fn)(const struct alloy_llama *m, const float *wgu, const float *bgu, const float *wdown,
                             const float *bdown, const float *x, float *gu, float *act, float *y, size_t T, size_t F);

/* The sparse MoE block (Mixtral, Qwen2-MoE, DeepSeek-MoE, Qwen3-MoE) (llama_moe.c) over ws->a [T][H] (the post-attention-normed states), its
 * output left in ws->a. */
void alloy_llama_moe_block(const struct alloy_llama *m, const struct llama_layer *L, struct alloy_llama_ws *ws,
                           size_t T, llama_ffn_fn ffn);
/* Checks tensor `name` of mod (shape [d0], d1 < 0, or [d0, d1], a float dtype) and converts it into dst;
 * dst NULL only checks (llama.c). */
int alloy_llama_load_tensor(const struct alloy_model *mod, const char *dir, const char *name, int64_t d0,
                            int64_t d1, float *dst, struct alloy_err *err);
/* Layer l's MoE weights into arena + *off, advancing *off (arena NULL: only checks): the router, every
 * expert's gate and up rows, every expert's down, and Qwen2-MoE's shared expert and its gate (llama_moe.c);
 * per expert or fused (Mixtral, Qwen3-MoE: mlp.experts.gate_up_proj / down_proj). */
int alloy_llama_moe_load(struct alloy_llama *m, const struct alloy_model *mod, const char *dir, int l, float *arena,
                         uint64_t *off, struct alloy_err *err);
/* Checks a qwen2_moe or deepseek config.json (root) is one the evaluator runs: every layer sparse, experts
 * and at most one shared expert of intermediate_size (as mergekit-moe writes them); sets c->shared_expert
 * (and, for DeepSeek, which renormalises only when it keeps several experts, c->norm_topk_prob). */
int alloy_llama_moe_check(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err);
/* Allocates the workspace's MoE buffers for T tokens; 0, or -1 when out of memory. */
int alloy_llama_moe_ws(const struct alloy_llama *m, struct alloy_llama_ws *ws, size_t T);

/* Gemma (llama_gemma.c): reads the gemma keys of config.json (hidden_act / hidden_activation, whose
 * only accepted value is the tanh GELU); sets c->gemma. */
int alloy_gemma_config(const json_t *root, const char *label, struct alloy_llama_config *c, struct alloy_err *err);
/* Adds 1 to every RMSNorm weight of a loaded Gemma model, so the shared rmsnorm computes x * (1 + w). */
void alloy_gemma_prepare(struct alloy_llama *m);
/* Scales the embedded rows h[T][H] by float32(sqrt(H)), as GemmaModel does. */
void alloy_gemma_embed_scale(const struct alloy_llama_config *c, float *h, size_t T);
/* o = gelu_tanh(g) * u over n floats (GemmaMLP with gelu_pytorch_tanh). */
void alloy_gemma_gelu_mul(const float *g, const float *u, float *o, size_t n);

#endif
