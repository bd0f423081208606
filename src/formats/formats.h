/*
 * formats.h — library-internal entry points of the file formats.
 *
 * DESIGN
 *   Readers implement tensor_file.h; writers produce a format's bytes from a
 *   list of tensor descriptions before any tensor data exists (a streaming
 *   sink fixes every offset up front and then fills the data in any order).
 */
#ifndef ALLOY_FORMATS_H
#define ALLOY_FORMATS_H

#include "alloy.h"

/* One tensor of a file to be written: name, dtype, shape and its byte range in the data buffer. */
struct alloy_tensor_desc {
    const char *name;
    enum alloy_dtype dtype;
    int ndim;
    const int64_t *shape;
    uint64_t offset, nbytes;
};

/* A safetensors header for n tensors: the u64 length, the JSON (in the given order, __metadata__
 * {"format": "pt"} last) padded with spaces to a multiple of 8. Returns a malloc'd buffer of *len
 * bytes, or NULL when out of memory. */
uint8_t *alloy_st_header(const struct alloy_tensor_desc *t, size_t n, size_t *len);

/* 1 for a model over an in-memory image (alloy_model_from_image: a merge's result), 0 for a folder. */
int  alloy_model_in_memory(const struct alloy_model *m);
/* One more holder of m: each holder calls alloy_model_close once; the last one frees it (not thread-safe). */
void alloy_model_share(struct alloy_model *m);
/* A model over an in-memory safetensors image: takes ownership of image (len bytes) and config_text
 * (NUL-terminated, may be NULL) whatever the outcome; dir is the folder its tokenizer files come from. */
int alloy_model_from_image(const char *ref, const char *dir, uint8_t *image, size_t len, char *config_text,
                           struct alloy_model **out, struct alloy_err *err);

/* A model reference (a folder, or "org/name[@rev]" in the local Hugging Face cache) to its folder. */
int alloy_resolve_ref(const char *ref, char **dir, struct alloy_err *err);

/* A `MODEL+ADAPTER` model's adapter overlay (lora/adapter.h), or NULL for a plain model. Its full
 * tensors already stand in the model's tensor table; its LoRA modules are applied by the lora source. */
struct alloy_adapter;
const struct alloy_adapter *alloy_model_adapter(const struct alloy_model *m);
/* A warning about the overlay (the adapter names another base model), or NULL. */
const char *alloy_model_warning(const struct alloy_model *m);

/* Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF). Returns the offset of the first bad
 * byte, or len when valid. */
size_t alloy_utf8_check(const uint8_t *s, size_t len);

/* A torch.save zip (pytorch_model.bin) as a tensor file, format "pytorch" (torch_zip.c). The memory
 * version reads buf[0, len) in place; buf must outlive the file. */
int alloy_pt_open(const char *path, struct alloy_tensor_file **out, struct alloy_err *err);
int alloy_pt_open_memory(const uint8_t *buf, size_t len, const char *label, struct alloy_tensor_file **out,
                         struct alloy_err *err);

/* For a GGUF model, its tokenizer.json rebuilt from the metadata (*text malloc'd) or the error saying why
 * it cannot be; for any other model *text = NULL and ALLOY_OK (its folder's tokenizer.json is the one). */
int alloy_model_gguf_tokenizer(const struct alloy_model *m, char **text, struct alloy_err *err);

#endif
