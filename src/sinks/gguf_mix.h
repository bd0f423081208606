/*
 * gguf_mix.h — llama-quantize's per-tensor type choice (gguf_mix.c).
 *
 * DESIGN
 *   An outtype such as q4_k_m is a mixture: llama-quantize picks each
 *   tensor's type from its name, its row length and running counters over
 *   the tensors seen so far (gguf.md §3.5-§3.7, as at llama.cpp c392e50,
 *   the fixtures' commit). The state here carries those counters, so the
 *   caller must present the tensors in llama-quantize's order
 *   (gguf_mix_order: non-block tensors by name, then blk.0.* by name,
 *   blk.1.*, ...), every tensor once.
 */
#ifndef ALLOY_GGUF_MIX_H
#define ALLOY_GGUF_MIX_H

#include "core/internal.h"

struct gguf_mix {
    int ftype;                   /* llama_ftype (general.file_type) */
    enum alloy_dtype deftype;    /* the mixture's default type */
    int float_only;              /* f32/f16/bf16: one type for every weight, no mixture rules */
    int has_output, has_imatrix; /* the model has output.weight; an imatrix is given */
    int n_layer, n_gqa;
    int n_attention_wv, i_attention_wv, i_ffn_down;
};

/* Sets up the mixture for outtype ("q4_k_m", "f16", ...; case-insensitive) over a model of n_layer
 * blocks, n_gqa = n_head / n_head_kv; the tensor names (GGUF) set the counters. -1 with err set when
 * outtype is unknown. */
int gguf_mix_init(struct gguf_mix *m, const char *outtype, int n_layer, int n_gqa, int has_imatrix,
                  const char *const *names, size_t n, struct alloy_err *err);
/* The type of the next tensor: name (GGUF), ndim dims, row length ne0; keep (F32 here) for tensors
 * llama-quantize never quantizes. An error (naming file and tensor) where llama-quantize stops or needs a
 * type alloy does not write. */
int gguf_mix_type(struct gguf_mix *m, const char *name, int ndim, int64_t ne0, enum alloy_dtype keep,
                  enum alloy_dtype *out, const char *file, struct alloy_err *err);
/* qsort-style comparison of two GGUF names in llama-quantize's order. */
int gguf_mix_order(const char *a, const char *b);

#endif
