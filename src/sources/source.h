/*
 * source.h — where the values of one input of one output tensor come from.
 *
 * DESIGN
 *   An output tensor is merged from n inputs; each input is a source that
 *   fills any range of the output's elements [e0, e1) (row-major over the
 *   output's rows x cols) as float32. The driver asks for chunks of a few
 *   hundred thousand elements, so a source never holds a tensor: it reads
 *   (or computes) exactly the range asked for, from any thread.
 *
 *   Kinds:
 *     stored   the elements of a stored tensor of the same size, read with
 *              pread and widened to float32 in place (a GGUF block type is
 *              dequantized, llama's permuted Q/K rows read in HF order, by
 *              alloy_tensor_read_f32); it can also hand over
 *              the stored bits as they are (ALLOY_INPUT_BF16_RAW) for a method
 *              that takes bfloat16 inputs raw;
 *     window   the top-left rows x cols block of a larger stored 2-D tensor
 *              (embedding matrices of different vocabulary sizes: mergekit's
 *              rectify / truncate-to-base rules decide the output shape, the
 *              window reads it);
 *     tied     either of the two for a model that ties its embeddings and has
 *              no lm_head: its embedding matrix stands in (mergekit's
 *              tied_names) — the same reading, named differently in plans.
 *   Computed sources (W + s·B·A for LoRA, permuted rows
 *   for vocabulary unions) implement the same two operations with their own
 *   state in ctx.
 */
#ifndef ALLOY_SOURCE_H
#define ALLOY_SOURCE_H

#include "core/internal.h"

struct alloy_input;

struct alloy_input_ops {
    const char *kind; /* "stored", "window", "tied", ... */
    int  (*read)(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst, enum alloy_input_mode mode,
                 struct alloy_err *err);
    void (*release)(const struct alloy_input *s); /* after the tensor: drop what it mapped (may be NULL) */
    void (*free)(struct alloy_input *s);          /* frees ctx (may be NULL) */
};

struct alloy_input {
    const struct alloy_input_ops *ops;
    int model;                    /* index of the model it reads, in the plan */
    const struct alloy_tensor *t; /* the stored tensor it reads (NULL for a source computed from nothing stored) */
    uint64_t rows, cols;          /* the output block it presents */
    void *ctx;                    /* a computed source's state */
};

/* Sets s to read stored tensor t of model `model` as an output of rows x cols elements: a stored
 * source when t has exactly that many elements, else a window (t must be 2-D and cover the block).
 * tied: t stands in for a tensor the model lacks. */
void alloy_input_stored(struct alloy_input *s, int model, const struct alloy_tensor *t, uint64_t rows,
                         uint64_t cols, int tied);
/* 1 when s can hand over its values as stored bfloat16 bits (ALLOY_INPUT_BF16_RAW). */
int  alloy_input_raw_bf16(const struct alloy_input *s);
/* 1 for a tied source. */
int  alloy_input_is_tied(const struct alloy_input *s);

/* Sets s to read tensor t of model `mod` (index `model` in the plan) with the LoRA of mod's adapter
 * applied (sources/lora.c), when mod is a `model+adapter` whose adapter has a LoRA for t (`<m>.weight`,
 * or `<m>.bias` for lora_B.bias). round_dtype: the dtype W and the applied values are rounded to
 * (--lora-merge-dtype), -1 for none. Returns 1 when s was set, 0 when t has no LoRA (s untouched), -1
 * when out of memory. */
int  alloy_input_lora(struct alloy_input *s, int model, const struct alloy_model *mod, const struct alloy_tensor *t,
                      uint64_t rows, uint64_t cols, int round_dtype);
int  alloy_input_is_lora(const struct alloy_input *s);
/* The whole of model tensor t as float32 into dst (t->numel values), its LoRA applied when mod has one
 * for it: how the evaluator reads a `model+adapter`. */
int  alloy_model_read_f32(const struct alloy_model *mod, const struct alloy_tensor *t, float *dst,
                          struct alloy_err *err);

static inline int alloy_input_read(const struct alloy_input *s, uint64_t e0, uint64_t e1, void *dst,
                                    enum alloy_input_mode mode, struct alloy_err *err)
{
    return s->ops->read(s, e0, e1, dst, mode, err);
}

static inline void alloy_input_release(const struct alloy_input *s)
{
    if (s->ops && s->ops->release) s->ops->release(s);
}

static inline void alloy_input_free(struct alloy_input *s)
{
    if (s->ops && s->ops->free) s->ops->free(s);
}

#endif
