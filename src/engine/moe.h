/*
 * moe.h — MoE assembly inside the library: the router weights (moe_gates.c)
 * that moe.c writes beside the experts' copied tensors.
 */
#ifndef ALLOY_MOE_H
#define ALLOY_MOE_H

#include "config/moe_config.h"

#include <jansson.h>

/* The routers of every layer, gates[(l * E + e) * hidden + j] (malloc'd, *gates), for cfg's gate_mode:
 * random N(0, 1), uniform_random U(-1/sqrt(h), 1/sqrt(h)) drawn from seed; cheap_embed from the base's
 * token embeddings of the prompts tokenized with the base's tokenizer; hidden / hidden_last / hidden_avg
 * from the base's forward pass on them (moe_gates.c). E is the routed experts, then the shared experts
 * when with_shared (mergekit's need_gates). */
int alloy_moe_gates(const struct alloy_moe_config *cfg, int with_shared, const struct alloy_model *base, int layers,
                    int hidden, uint64_t seed, float **gates, struct alloy_err *err);

/* The output architectures, in mergekit's order of preference (moe/__init__.py). */
enum alloy_moe_arch { ALLOY_MOE_MIXTRAL, ALLOY_MOE_DEEPSEEK, ALLOY_MOE_QWEN, ALLOY_MOE_QWEN3, ALLOY_MOE_NARCH };

/* One stored tensor that an output tensor holds (a fused tensor holds several, one after the other):
 * its values times scale (residual_scale on down_proj) plus noise * N(0, 1) drawn under key. */
struct alloy_moe_piece {
    const struct alloy_tensor *src;
    double scale, noise;
    uint64_t key;
};

enum alloy_moe_kind { ALLOY_MOE_COPY, ALLOY_MOE_ROUTER, ALLOY_MOE_ZEROS };

struct alloy_moe_out {
    char *name;
    enum alloy_dtype dtype;
    int ndim;
    int64_t shape[3];
    enum alloy_moe_kind kind;
    struct alloy_moe_piece *pc;   /* COPY: npc pieces, in order */
    size_t npc;
    int layer;                    /* ROUTER: rows [row0, row0 + shape[0]) of the layer's gates */
    size_t row0;
    uint64_t nbytes;
};

/* An assembly: its config, models, chosen architecture, output tensors in file order, routers. */
struct alloy_moe_job {
    const struct alloy_moe_options *o;
    struct alloy_moe_config *c;
    const char *config_text;
    struct alloy_model *base, **experts;  /* experts: the routed ones, then the shared ones */
    json_t *config;                       /* the base's config.json */
    enum alloy_moe_arch arch;
    int fused;                            /* experts as [E, ...] tensors per projection */
    int layers, hidden;
    char *prefix;                         /* "model.layers": the layers' name prefix */
    struct alloy_moe_out *t;
    size_t n, cap;
    float *gates;                         /* [layers][ngates][hidden] */
    size_t ngates;
};

/* The name of an output architecture as mergekit spells it ("Mixtral", "Qwen MoE", ...). */
const char *alloy_moe_arch_name(enum alloy_moe_arch a);
/* Writes the job's shards (index when several), config.json, tokenizer and config copy into the output
 * folder, atomically (moe_write.c). */
int alloy_moe_write(struct alloy_moe_job *m, struct alloy_err *err);

/* 1 for the dtypes an expert or router tensor may have. */
static inline int alloy_moe_plain_float(enum alloy_dtype d)
{
    return d == ALLOY_DTYPE_F32 || d == ALLOY_DTYPE_F16 || d == ALLOY_DTYPE_BF16;
}

/* A standard normal draw, a pure function of (key, counter) (Box-Muller over two uniforms). */
double alloy_moe_normal(uint64_t key, uint64_t counter);

#endif
