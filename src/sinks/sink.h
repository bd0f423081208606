/*
 * sink.h — where the merged tensors go.
 *
 * DESIGN
 *   The engine hands every output tensor of a plan to a sink, in plan order:
 *
 *       begin(plan)                         fix the layout, create what the output needs
 *       for each tensor i:
 *           tensor_begin(i)
 *           write(i, e0, e1, float32 values) any thread, any order, each element once
 *             or write_bytes(i, off, bytes)  a copied tensor's stored bytes
 *           tensor_end(i)
 *       commit()                             make the output visible, whole
 *       or abort()                           leave nothing of it
 *
 *   Each sink owns its atomicity: the folder sink writes into a hidden
 *   temporary folder and publishes it by fsync and rename, so an error or an
 *   interrupt leaves the old folder or the complete new one; the memory sink
 *   builds a safetensors image in RAM and hands it over as a model only on
 *   commit. write() converts from float32 to the tensor's output dtype (the
 *   plan's), rounding once, and counts the NaN/Inf values it wrote; `src` is
 *   the engine's scratch, which the sink may overwrite.
 */
#ifndef ALLOY_SINK_H
#define ALLOY_SINK_H

#include "plan/plan.h"

struct alloy_sink;

struct alloy_sink_ops {
    const char *kind;
    int  (*begin)(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err);
    int  (*tensor_begin)(struct alloy_sink *s, size_t i, struct alloy_err *err);
    int  (*write)(struct alloy_sink *s, size_t i, uint64_t e0, uint64_t e1, float *src, uint64_t *nonfinite,
                  struct alloy_err *err);
    int  (*write_bytes)(struct alloy_sink *s, size_t i, uint64_t off, const void *buf, size_t len,
                        struct alloy_err *err);
    int  (*tensor_end)(struct alloy_sink *s, size_t i, struct alloy_err *err);
    int  (*commit)(struct alloy_sink *s, struct alloy_err *err);
    void (*abort)(struct alloy_sink *s);
    void (*free)(struct alloy_sink *s);
    /* Optional: 1 when tensor i is its one input's stored bytes, copied (write_bytes) instead of merged. */
    int  (*copies)(struct alloy_sink *s, size_t i);
    /* Optional: 1 when write() needs tensor i in chunks of whole rows (a row is quantized at once). */
    int  (*whole_rows)(struct alloy_sink *s, size_t i);
};

struct alloy_sink {
    const struct alloy_sink_ops *ops;
};

/* A model folder at o->out_dir (shards, index, config.json, tokenizer, card), published on commit. */
struct alloy_sink *alloy_sink_folder_new(const struct alloy_merge_options *o, struct alloy_err *err);
/* A model in memory, stored into *out on commit (alloy_model_close frees it); label (borrowed until
 * commit, NULL: "<merged in memory>") is its alloy_model_ref. */
struct alloy_sink *alloy_sink_memory_new(struct alloy_model **out, const char *label, struct alloy_err *err);
/* A GGUF file at o->out_dir (gguf.c), renamed into place on commit. */
struct alloy_sink *alloy_sink_gguf_new(const struct alloy_merge_options *o, struct alloy_err *err);
/* A dry run: fixes s's layout for plan p (names, types, block copies) without creating anything. */
int alloy_sink_gguf_layout(struct alloy_sink *s, const struct alloy_plan *p, struct alloy_err *err);
/* After alloy_sink_gguf_layout or begin: tensor i as stored ("NAME TYPE[, blocks copied unchanged|, quantized]"
 * or "dropped ..."), an alloy_plan_note_fn over the sink. */
const char *alloy_sink_gguf_note(void *sink, size_t i, char *buf, size_t n);
/* 1 when the options ask for a GGUF file: out_format "gguf", or none and out_dir ending in ".gguf". */
int alloy_sink_wants_gguf(const struct alloy_merge_options *o);

#endif
