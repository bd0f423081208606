/*
 * pickle.h — the state dict inside a torch.save file, read without executing anything.
 *
 * DESIGN
 *   pickle.c interprets the opcodes torch.save emits for a state dict and
 *   returns, per tensor, what _rebuild_tensor_v2 would have been called with:
 *   the storage (its key in the zip, dtype and element count), the element
 *   offset into it, shape and stride. torch_zip.c checks those against the
 *   zip entries and views the bytes in place.
 */
#ifndef ALLOY_PICKLE_H
#define ALLOY_PICKLE_H

#include "alloy.h"

/* Bounds of the interpreter: beyond them a pickle is refused. */
#define ALLOY_PICKLE_MAX_MARKS 64      /* open MARKs at once */
#define ALLOY_PICKLE_MAX_DEPTH 32      /* containers inside containers */
#define ALLOY_PICKLE_MAX_BYTES ((size_t)256 << 20)

struct alloy_pickle_tensor {
    char *name;             /* the state-dict key (UTF-8, no NUL) */
    char *key;              /* storage key: the zip entry is <archive>/data/<key> */
    enum alloy_dtype dtype; /* of the storage */
    uint64_t storage_numel; /* elements the storage holds, as the pickle says */
    uint64_t offset;        /* storage_offset, in elements */
    int ndim;
    int64_t shape[ALLOY_MAX_DIMS], stride[ALLOY_MAX_DIMS];
};

/* Interprets the pickle p[0, len). On success *out holds *n tensors in pickle order (free with
 * alloy_pickle_free). label names the pickle in messages ("dir/pytorch_model.bin: data.pkl"). */
int alloy_pickle_state_dict(const uint8_t *p, size_t len, const char *label, struct alloy_pickle_tensor **out,
                            size_t *n, struct alloy_err *err);
void alloy_pickle_free(struct alloy_pickle_tensor *t, size_t n);

#endif
