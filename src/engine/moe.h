/*
 * moe.h — MoE assembly inside the library: the router weights (moe_gates.c)
 * that moe.c writes beside the experts' copied tensors.
 */
#ifndef ALLOY_MOE_H
#define ALLOY_MOE_H

#include "config/moe_config.h"

/* The routers of every layer, gates[(l * E + e) * hidden + j] (malloc'd, *gates), for cfg's gate_mode:
 * random N(0, 1), uniform_random U(-1/sqrt(h), 1/sqrt(h)) drawn from seed; cheap_embed from the base's
 * token embeddings of the prompts tokenized with the base's tokenizer; hidden / hidden_last from the
 * base's forward pass on them (moe_gates.c). */
int alloy_moe_gates(const struct alloy_moe_config *cfg, const struct alloy_model *base, int layers, int hidden,
                    uint64_t seed, float **gates, struct alloy_err *err);

/* 1 for the dtypes an expert or router tensor may have. */
static inline int alloy_moe_plain_float(enum alloy_dtype d)
{
    return d == ALLOY_DTYPE_F32 || d == ALLOY_DTYPE_F16 || d == ALLOY_DTYPE_BF16;
}

/* A standard normal draw, a pure function of (key, counter) (Box-Muller over two uniforms). */
double alloy_moe_normal(uint64_t key, uint64_t counter);

#endif
