/*
 * moe_config.h — the YAML of `alloy moe` (mergekit-moe's config,
 * moe_config.c): a base model, the dense experts with their routing
 * prompts, the gate mode and the output architecture (docs/moe.md).
 *
 * DESIGN
 *   Read with the merge config's YAML layer (yaml_tree.c, config.c's typed
 *   access), so messages have the form "<path>:<line>:<col>: <key>:
 *   <expected>, found <what>" and unknown keys are errors. mergekit's
 *   validation rules that need no model are applied here (experts_per_token
 *   >= 1, no more than the experts; prompts required unless gate_mode is
 *   random; prompts not all identical; experts not all the same model unless
 *   the "not useful without training" override is given).
 */
#ifndef ALLOY_MOE_CONFIG_H
#define ALLOY_MOE_CONFIG_H

#include "config/config.h"

#define ALLOY_MOE_MAX_EXPERTS 256
#define ALLOY_MOE_MAX_PROMPTS 4096

enum alloy_moe_gate { ALLOY_GATE_HIDDEN, ALLOY_GATE_HIDDEN_AVG, ALLOY_GATE_HIDDEN_LAST, ALLOY_GATE_CHEAP_EMBED,
                      ALLOY_GATE_RANDOM, ALLOY_GATE_UNIFORM_RANDOM };

struct alloy_moe_expert {
    char *source_model;
    char **positive, **negative;          /* prompts */
    size_t npositive, nnegative;
    double noise_scale;                   /* 0: none */
    double residual_scale;                /* 1: none */
    int has_residual_scale;
    struct alloy_pos pos;
};

struct alloy_moe_config {
    char *path;                           /* for messages */
    char *base_model;
    struct alloy_moe_expert *experts, *shared;
    size_t nexperts, nshared;
    enum alloy_moe_gate gate;
    int experts_per_token;                /* default 2 */
    char *architecture;                   /* NULL: the first that fits (Mixtral for llama/mistral) */
    int has_dtype;
    enum alloy_dtype dtype;
};

/* allow_crimes: mergekit's --i-understand-this-is-not-useful-without-training (same model / same prompts). */
int  alloy_moe_config_parse(const char *text, size_t len, const char *path, int allow_crimes,
                            struct alloy_moe_config **out, struct alloy_err *err);
int  alloy_moe_config_load(const char *path, int allow_crimes, struct alloy_moe_config **out, struct alloy_err *err);
void alloy_moe_config_free(struct alloy_moe_config *c);
const char *alloy_moe_gate_name(enum alloy_moe_gate g);

#endif
