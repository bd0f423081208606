/*
 * adapter_write.h — writing a PEFT LoRA adapter folder (`alloy lora extract`,
 * `alloy lora merge`).
 *
 * DESIGN
 *   A writer collects the adapter's tensors and its config, then publishes
 *   the folder atomically the way merge outputs are published (a temporary
 *   folder next to OUT, fsync, rename; the output-folder rule of
 *   docs/security.md). Tensors are added by module with the PEFT key names
 *   (`base_model.model.<module>.lora_A.weight` ...); the values are given as
 *   float32 and stored in the writer's dtype (F32, BF16 or F16).
 *   adapter_config.json is written like PEFT's (indent 2, sorted keys) with
 *   rank_pattern / alpha_pattern in the order modules were added.
 */
#ifndef ALLOY_LORA_ADAPTER_WRITE_H
#define ALLOY_LORA_ADAPTER_WRITE_H

#include "lora/adapter.h"

struct alloy_adapter_writer;

struct alloy_adapter_spec {
    const char *base_model;      /* base_model_name_or_path */
    uint32_t r;                  /* default rank; modules with another rank go to rank_pattern */
    double lora_alpha;           /* default alpha; modules with another alpha go to alpha_pattern */
    int use_rslora;
    enum alloy_dtype dtype;      /* stored dtype of the LoRA tensors */
    int overwrite;               /* replace an OUT that holds other files (as --overwrite) */
    /* The models the adapter was made from (may be none): OUT must not be, hold or lie inside one. */
    const struct alloy_model *const *inputs;
    size_t ninputs;
};

int  alloy_adapter_writer_new(const char *out_dir, const struct alloy_adapter_spec *spec,
                              struct alloy_adapter_writer **out, struct alloy_err *err);
/* A LoRA module: a is [rank, in] (Embedding: [rank, vocab]), b is [out, rank] (Embedding: [dim, rank]).
 * alpha: this module's lora_alpha (written to alpha_pattern when it differs from the spec's). */
int  alloy_adapter_writer_module(struct alloy_adapter_writer *w, const char *module, enum alloy_lora_kind kind,
                                 uint32_t rank, double alpha, const float *a, uint64_t in, const float *b,
                                 uint64_t out, struct alloy_err *err);
/* A tensor saved in full (modules_to_save): `module`.weight with the given shape and dtype. */
int  alloy_adapter_writer_full(struct alloy_adapter_writer *w, const char *module, const float *data, int ndim,
                               const int64_t *shape, enum alloy_dtype dtype, struct alloy_err *err);
/* on = 1: target_modules lists full module paths instead of their last name components (needed when a
 * last component also names modules that carry no LoRA). */
void alloy_adapter_writer_exact_targets(struct alloy_adapter_writer *w, int on);
/* Writes README.md (card text, may be NULL), adapter_config.json and adapter_model.safetensors, and publishes. */
int  alloy_adapter_writer_commit(struct alloy_adapter_writer *w, const char *card, struct alloy_err *err);
/* Abandons the output (removes the temporary folder) and frees w; NULL is a no-op. */
void alloy_adapter_writer_free(struct alloy_adapter_writer *w);

#endif
