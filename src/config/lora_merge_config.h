/*
 * lora_merge_config.h — the YAML of `alloy lora merge` (lora_merge_config.c): which
 * adapters, with which weights, combined by which of PEFT's combination
 * types (docs/lora-merge.md).
 *
 * DESIGN
 *   Read with the merge config's YAML layer (yaml_tree.c, config.c's typed
 *   access), so messages have the same form — "<path>:<line>:<col>: <key>:
 *   <expected>, found <what>" — and unknown keys are errors. Everything that
 *   does not need the adapters is checked here: the method name, weights,
 *   and which options the method takes (rank and svd_clamp: SVD types;
 *   density: the pruning types, where it is required; majority_sign_method:
 *   the TIES types). Rank equality and module shapes are checked against the
 *   adapters (lora/merge.c).
 */
#ifndef ALLOY_LORA_MERGE_CONFIG_H
#define ALLOY_LORA_MERGE_CONFIG_H

#include "config/config.h"
#include "lora/combine.h"

#define ALLOY_LORA_MAX_ADAPTERS 256
#define ALLOY_LORA_MAX_RANK     65536

struct alloy_lora_input {
    char *adapter;                       /* model: the adapter folder (or HF-cache id) */
    double weight;                       /* parameters.weight */
    struct alloy_pos pos;
};

struct alloy_lora_merge_config {
    char *path;                          /* for messages */
    const struct alloy_lora_method *method;
    struct alloy_lora_input *inputs;
    size_t ninputs;
    uint32_t rank;                       /* SVD types: new rank; 0 = the largest input rank */
    double density;                      /* pruning types (required there), else 1 */
    int frequency;                       /* majority_sign_method: frequency (default total) */
    double svd_clamp;                    /* SVD types: quantile in (0, 1]; 0 = none */
};

int  alloy_lora_merge_config_parse(const char *text, size_t len, const char *path, struct alloy_lora_merge_config **out,
                             struct alloy_err *err);
int  alloy_lora_merge_config_load(const char *path, struct alloy_lora_merge_config **out, struct alloy_err *err);
void alloy_lora_merge_config_free(struct alloy_lora_merge_config *c);

#endif
