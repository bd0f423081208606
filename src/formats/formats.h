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

/* A model over an in-memory safetensors image: takes ownership of image (len bytes) and config_text
 * (NUL-terminated, may be NULL) whatever the outcome; dir is the folder its tokenizer files come from. */
int alloy_model_from_image(const char *ref, const char *dir, uint8_t *image, size_t len, char *config_text,
                           struct alloy_model **out, struct alloy_err *err);

/* For a GGUF model, its tokenizer.json rebuilt from the metadata (*text malloc'd) or the error saying why
 * it cannot be; for any other model *text = NULL and ALLOY_OK (its folder's tokenizer.json is the one). */
int alloy_model_gguf_tokenizer(const struct alloy_model *m, char **text, struct alloy_err *err);

#endif
