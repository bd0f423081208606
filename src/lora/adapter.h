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
};

/* Opens the PEFT adapter folder `dir` (also an HF-cache id). */
int  alloy_adapter_open(const char *dir, struct alloy_adapter **out, struct alloy_err *err);
void alloy_adapter_close(struct alloy_adapter *a);

/* The module named `name` (prefix removed), or NULL. */
const struct alloy_lora_module *alloy_adapter_module(const struct alloy_adapter *a, const char *name);

/* Reads the whole of t (one of the adapter's tensors) widened to float32 into dst (t->numel floats). */
int  alloy_adapter_read_f32(const struct alloy_adapter *a, const struct alloy_tensor *t, float *dst,
                            struct alloy_err *err);

#endif
