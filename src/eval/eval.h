/*
 * eval.h — the library side of `alloy eval`: a float32 Llama-family forward
 * pass, the tokenizers it needs, and the windowed perplexity driver.
 *
 * DESIGN
 *   llama.c      config.json -> struct alloy_llama_config, weights -> float32
 *                arena (q/k/v and gate/up fused so each layer is 4 sgemm calls),
 *                forward pass over a batch of equal-length sequences.
 *   tokenizer.c  tokenizer.json -> byte-identity, byte-level BPE (GPT-2/Llama-3/
 *                Qwen2) or SentencePiece-style BPE with byte fallback.
 *   pretok.c     the GPT-2 / Llama-3 / Qwen2 split regexes as hand-written
 *                scanners, plus the Unicode tables they need (unicode_tables.c).
 *   eval.c       windows, BOS rule, threads, log-sum-exp in float64.
 *   All functions return an alloy_status and fill struct alloy_err with one
 *   line "<file>: <key or tensor>: <what was expected, what was found>".
 *   Nothing here prints or exits.
 */
#ifndef ALLOY_EVAL_H
#define ALLOY_EVAL_H

#include "alloy.h"

#include <stdint.h>

/* ---------------------------------------------------------------- model */

enum alloy_rope_kind { ALLOY_ROPE_DEFAULT = 0, ALLOY_ROPE_LINEAR, ALLOY_ROPE_LLAMA3 };

#define ALLOY_LLAMA_MAX_DENSE 64 /* entries of qwen3_moe's mlp_only_layers the evaluator accepts */

struct alloy_llama_config {
    char   model_type[16];          /* "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "deepseek", "qwen3", "qwen3_moe" */
    int    vocab_size, hidden_size, intermediate_size;
    int    num_layers, num_heads, num_kv_heads, head_dim;
    int    max_position_embeddings;
    double rms_norm_eps, rope_theta;
    enum alloy_rope_kind rope_kind;
    double rope_factor;             /* linear, llama3 */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    double rope_original_max_pos;   /* llama3: original_max_position_embeddings */
    int    qkv_bias, o_bias, mlp_bias;
    int    tie_word_embeddings;
    int    sliding_window;          /* 0: full causal attention */
    int    bos_token_id;            /* -1: none */
    int    n_experts, experts_per_tok; /* mixtral, qwen2_moe, deepseek: experts per layer and per token; 0: dense */
    int    norm_topk_prob;          /* 1: the chosen experts' weights renormalised to sum 1 (Mixtral always) */
    int    shared_expert;           /* 1: a shared expert (qwen2_moe: behind a sigmoid gate; deepseek: ungated) */
    int    qk_norm;                 /* qwen3, qwen3_moe: RMSNorm over each q and k head before RoPE */
    int    moe_intermediate_size;   /* the routed experts' size (qwen3_moe; else intermediate_size) */
    int    sparse_step;             /* qwen3_moe: layer l is sparse when (l + 1) % sparse_step == 0 ... */
    int    n_dense_layers, dense_layers[ALLOY_LLAMA_MAX_DENSE]; /* ... and l is not one of mlp_only_layers */
    int    gemma;                   /* gemma: embeddings * sqrt(H), norms x * (1 + w), GeGLU (gelu tanh) MLP */
};

/* 1 when layer l of a model of config c has a sparse MoE block (else a dense MLP). */
int alloy_llama_layer_sparse(const struct alloy_llama_config *c, int l);

/* Parses config.json text; `label` (the file path) prefixes every error. */
int alloy_llama_config_parse(const char *json_text, const char *label, struct alloy_llama_config *cfg,
                             struct alloy_err *err);

/* Parses m's config.json ("<dir>/config.json" in errors; missing: ALLOY_ERR_IO). */
int alloy_llama_config_of(const struct alloy_model *m, struct alloy_llama_config *cfg, struct alloy_err *err);

struct alloy_llama;

/* Validates m's config and tensor shapes and converts the weights to float32
 * (4 bytes per parameter); m is not needed afterwards. */
int  alloy_llama_new(const struct alloy_model *m, struct alloy_llama **out, struct alloy_err *err);
/* The same for a model folder (or HF-cache reference). */
int  alloy_llama_open(const char *ref, struct alloy_llama **out, struct alloy_err *err);
void alloy_llama_close(struct alloy_llama *m);
const struct alloy_llama_config *alloy_llama_cfg(const struct alloy_llama *m);
const char *alloy_llama_dir(const struct alloy_llama *m);
uint64_t    alloy_llama_n_params(const struct alloy_llama *m);

/* Per-thread scratch for sequences of up to max_len tokens, max_seqs at a time. */
struct alloy_llama_ws;
struct alloy_llama_ws *alloy_llama_ws_new(const struct alloy_llama *m, int max_len, int max_seqs);
void alloy_llama_ws_free(struct alloy_llama_ws *ws);

/* Forward pass of nseq sequences of len tokens each (ids[nseq*len], each
 * sequence at positions 0..len-1, independent). Writes float32 logits
 * [nseq*len][vocab_size] into `logits`. Ids must be in [0, vocab_size). */
void alloy_llama_logits(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int nseq,
                        int len, float *logits);

/* The residual stream of one sequence (ids[len]) at its last position: the hidden state entering each
 * layer (the embedding row for layer 0), then after the last layer before the final norm, into
 * out[(num_layers + 1) * hidden_size] — Hugging Face's output_hidden_states but for the last entry,
 * which HF gives after the final norm. What MoE routers are initialised from (engine/moe_gates.c). */
void alloy_llama_residuals(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int len,
                           float *out);
/* The same states summed over every position of the sequence (mergekit's hidden_avg averages them). */
void alloy_llama_residual_sums(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int len,
                               float *out);
/* The residual stream of token `id` at a position whose attention is fully masked out (a left-padding
 * position under PyTorch's SDPA, whose output for such a row is 0): each layer adds only o_proj's bias and
 * its MLP. Same layout as alloy_llama_residuals. */
void alloy_llama_unattended_residuals(const struct alloy_llama *m, struct alloy_llama_ws *ws, int32_t id, float *out);

/* Same forward pass, reduced to the negative log-likelihood: for sequence s
 * and each position t with targets[s*len+t] >= 0, adds
 * logsumexp(logits) - logits[target] (float64) into nll_sum[s]. Targets must
 * be < vocab_size; negative targets are not scored. */
void alloy_llama_nll(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids,
                     const int32_t *targets, int nseq, int len, double *nll_sum);

/* ---------------------------------------------------------------- tokenizer */

enum alloy_tok_kind {
    ALLOY_TOK_BYTES = 0,     /* id = byte value (the bundled fixture tokenizer) */
    ALLOY_TOK_BYTELEVEL_BPE, /* GPT-2 / Llama-3 / Qwen2 byte-level BPE */
    ALLOY_TOK_SP_BPE,        /* SentencePiece-style BPE with byte fallback (Llama-2 / Mistral) */
};

/* alloy_tokenizer_load, _free, _same and _encode are public (alloy.h). */
/* Parses tokenizer.json text; `label` names it in errors. */
int  alloy_tokenizer_parse(const char *json_text, const char *label, struct alloy_tokenizer **out,
                           struct alloy_err *err);
enum alloy_tok_kind alloy_tokenizer_kind(const struct alloy_tokenizer *t);
const char *alloy_tok_kind_name(enum alloy_tok_kind k);
/* One more than the largest id the tokenizer can produce. */
int  alloy_tokenizer_n_ids(const struct alloy_tokenizer *t);
/* Id of a vocabulary or added token, or -1. */
int  alloy_tokenizer_token_id(const struct alloy_tokenizer *t, const char *token);

/* Decodes ids back to text (byte-level and byte-fallback tokens give their
 * bytes, "▁" a space, the prepended "▁" dropped). *text is malloc'd, NUL-terminated. */
int alloy_tokenizer_decode(const struct alloy_tokenizer *t, const int32_t *ids, size_t n, char **text,
                           size_t *len, struct alloy_err *err);

/* ---------------------------------------------------------------- pre-tokenizer (pretok.c) */

enum alloy_pretok_regex { ALLOY_SPLIT_GPT2 = 0, ALLOY_SPLIT_LLAMA3, ALLOY_SPLIT_QWEN2 };

/* Recognises a Split/ByteLevel regex; returns 0 and sets *out, or -1. */
int alloy_pretok_regex_lookup(const char *pattern, enum alloy_pretok_regex *out);
/* Splits code points cps[0..n) into pieces; writes the end index of each piece
 * to ends[] (capacity n) and returns the number of pieces. */
size_t alloy_pretok_split(enum alloy_pretok_regex re, const uint32_t *cps, size_t n, size_t *ends);
/* Unicode general category classes: 1 = letter (L*), 2 = number (N*), else 0. */
int alloy_uni_class(uint32_t cp);
int alloy_uni_is_space(uint32_t cp);   /* White_Space */
int alloy_uni_nfc_quick_yes(uint32_t cp); /* 1 when cp can never change under NFC */

/* ---------------------------------------------------------------- evaluation */

/* struct alloy_eval_options, _result, _progress and alloy_eval_options_init are public (alloy.h). */

/* Default window length for a model: min(max_position_embeddings / 2, 512), at least 2. */
int  alloy_eval_default_ctx(const struct alloy_llama_config *cfg);
/* The BOS id used under `bos` (-2: config), or -1. */
int  alloy_eval_bos(const struct alloy_llama *m, int bos);
/* Evaluates ids (label names them in errors) under the protocol of docs/eval.md. */
int  alloy_eval_ids(const struct alloy_llama *m, const int32_t *ids, size_t n, const char *label,
                    const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err);

#endif
