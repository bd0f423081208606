/*
 * extract.h — the state `alloy lora extract` shares between its planning
 * (extract.c) and its factoring and writing (extract_run.c).
 *
 * DESIGN
 *   One item per `<module>.weight` tensor of the fine-tune, in file order:
 *   its class, its two input tensors and, once factored, its A [r, in] and
 *   B [out, r] (float32) with the rank and the numbers of the card.
 */
#ifndef ALLOY_LORA_EXTRACT_H
#define ALLOY_LORA_EXTRACT_H

#include "core/internal.h"

#include <regex.h>

enum alloy_extract_kind { ALLOY_EXTRACT_SKIP, ALLOY_EXTRACT_FULL, ALLOY_EXTRACT_LINEAR, ALLOY_EXTRACT_EMBEDDING };

struct alloy_extract_item {
    char *module;                      /* the tensor name without ".weight" */
    enum alloy_extract_kind kind;
    const struct alloy_tensor *ft, *base;
    uint32_t rank;                     /* LoRA: the rank kept */
    uint64_t m, n;                     /* LoRA: the factored delta is m x n (an embedding's transposed) */
    float *a, *b;                      /* LoRA: A [rank, n], B [m, rank] */
    double kept, rel_error;            /* LoRA: kept fraction of ||delta||^2, ||delta - B A|| / ||delta|| */
    struct alloy_err err;              /* a worker's failure */
};

struct alloy_extract {
    const struct alloy_lora_extract_options *o;
    struct alloy_model *ft, *base;
    regex_t *include, *exclude;
    size_t ninclude, nexclude;
    int vocab_differs;
    struct alloy_extract_item *items;
    size_t nitems, capitems;
};

/* Factors every LoRA item, nworkers at a time; the first failure (in item order) is returned. */
int alloy_extract_factor_all(struct alloy_extract *x, int nworkers, struct alloy_err *err);
/* Writes and publishes the adapter folder. */
int alloy_extract_write(struct alloy_extract *x, struct alloy_err *err);

#endif
