/*
 * adapter.h — a PEFT LoRA adapter folder, read (the contract shared by
 * `model+adapter` references, `alloy lora apply`, `alloy lora merge` and
 * `alloy eval BASE+ADAPTER`).
 *
 * DESIGN
 *   alloy_adapter_open() parses adapter_config.json (PEFT's LoraConfig, key
 *   order kept for rank_pattern / alpha_pattern) and the tensor index of
 *   adapter_model.safetensors, and groups the tensors by module: one
 *   `struct alloy_lora_module` per module that carries a LoRA (lora_A/lora_B
 *   or lora_embedding_A/B, optional DoRA magnitude and lora_B.bias), with its
 *   pattern-resolved rank and scaling, and one `struct alloy_lora_full` per
 *   tensor stored in full (modules_to_save copies, `.base_layer.weight`
 *   copies). Module names have the `base_model.model.` prefix removed
 *   (`model.layers.0.self_attn.q_proj`); they map onto the model's tensor
 *   `<module>.weight`. Nothing is read beyond the header: tensor values are
 *   read on demand, in any stored dtype, with alloy_adapter_read_f32.
 *
 *   Every inconsistency PEFT would ignore (a key with an unknown suffix, an A
 *   without its B, ranks that disagree with the config) is an error naming the
 *   adapter file and the key. Checks against a model (module exists, shapes
 *   fit) are alloy_adapter_check's.
 */
#ifndef ALLOY_LORA_ADAPTER_H
#define ALLOY_LORA_ADAPTER_H

#include "core/internal.h"

struct alloy_lora_cfg;

enum alloy_lora_kind { ALLOY_LORA_LINEAR, ALLOY_LORA_EMBEDDING };

struct alloy_lora_module {
    char *name;                          /* module path, prefix removed: model.layers.0.mlp.up_proj */
    enum alloy_lora_kind kind;
    uint32_t rank;                       /* r of this module (rows of A) */
    double alpha;                        /* pattern-resolved lora_alpha */
    double scale;                        /* alpha / rank, or alpha / sqrt(rank) with use_rslora */
    const struct alloy_tensor *a;        /* Linear: lora_A [r, in];  Embedding: lora_embedding_A [r, vocab] */
    const struct alloy_tensor *b;        /* Linear: lora_B [out, r]; Embedding: lora_embedding_B [dim, r] */
    const struct alloy_tensor *magnitude;/* DoRA lora_magnitude_vector [out] / [dim], or NULL */
    const struct alloy_tensor *bias;     /* lora_B.bias [out], or NULL */
};

/* A tensor stored in full that replaces the model's tensor of the same name (the name is the
 * model's: `lm_head.weight`, `model.embed_tokens.weight` for a `.base_layer.weight` copy). */
struct alloy_lora_full {
    char *name;
    const struct alloy_tensor *t;
};

struct alloy_adapter {
    char *dir;                           /* the folder, as given */
    char *config_path, *weights_path;    /* for messages */
    char *base_model;                    /* base_model_name_or_path, or NULL */
    int use_rslora, use_dora;
    uint32_t r;                          /* config r and lora_alpha (defaults before patterns) */
    double lora_alpha;
    char **target_modules;               /* list form; NULL with target_regex for a string */
    size_t ntarget_modules;
    char *target_regex;
    size_t nmodules;
    struct alloy_lora_module *modules;   /* sorted by name */
    size_t nfull;
    struct alloy_lora_full *full;        /* sorted by name */
    struct alloy_tensor_file *file;      /* adapter_model.safetensors */
    /* additions beyond the shared contract */
    struct alloy_lora_cfg *cfg;          /* patterns and module selections (lora_config.h) */
    int lora_bias;                       /* lora_bias: true */
};

/* Opens the PEFT adapter folder `dir` (also an HF-cache id). */
int  alloy_adapter_open(const char *dir, struct alloy_adapter **out, struct alloy_err *err);
void alloy_adapter_close(struct alloy_adapter *a);

/* The module named `name` (prefix removed), or NULL. */
const struct alloy_lora_module *alloy_adapter_module(const struct alloy_adapter *a, const char *name);

/* Parses adapter_config.json text alone (no tensors: nmodules = nfull = 0, file NULL); `path` names it
 * in errors. alloy_adapter_open uses it; the fuzz target and tests call it directly. */
int  alloy_adapter_parse_config(const char *text, size_t len, const char *path, struct alloy_adapter **out,
                                struct alloy_err *err);

/* Checks the adapter against model m: each LoRA module's `<name>.weight` exists and is 2-D with shapes
 * that fit A, B, the magnitude and lora_B.bias (whose `<name>.bias` must exist); each full tensor names a
 * tensor of m of the same shape (embedding copies may differ in vocabulary rows). `m_tensor(ctx, name)`
 * finds a tensor of the model. A base_model_name_or_path that names neither m_ref nor its folder is
 * only a warning, written to warn (empty when none). */
int  alloy_adapter_check(const struct alloy_adapter *a, const char *m_ref,
                         const struct alloy_tensor *(*m_tensor)(const void *ctx, const char *name), const void *ctx,
                         char *warn, size_t warnlen, struct alloy_err *err);

/* The full tensor replacing the model's `name`, or NULL. */
const struct alloy_lora_full *alloy_adapter_full(const struct alloy_adapter *a, const char *name);

/* Reads the whole of t (one of the adapter's tensors) widened to float32 into dst (t->numel floats). */
int  alloy_adapter_read_f32(const struct alloy_adapter *a, const struct alloy_tensor *t, float *dst,
                            struct alloy_err *err);

#endif
