/*
 * fuzz_pickle.c — libFuzzer target for the state-dict pickle interpreter (src/formats/pickle.c).
 *
 * DESIGN
 *   The input is the pickle itself (what a torch.save zip holds as
 *   archive/data.pkl), handed to alloy_pickle_state_dict without the zip
 *   around it, so every mutation reaches the interpreter. A refusal must be
 *   one line naming the pickle. An accepted state dict must keep the
 *   interpreter's promises: names non-empty C strings of the stated
 *   length, storage keys non-empty, at most ALLOY_MAX_DIMS non-negative
 *   dimensions with a stride each, a known dtype. Built by fuzz/run.sh.
 */
#include "alloy.h"
#include "formats/pickle.h"
#include "fuzz.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_pickle_tensor *t = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    int rc = alloy_pickle_state_dict(data, size, "fuzz.bin: archive/data.pkl", &t, &n, &err);
    if (rc != ALLOY_OK) {
        check(t == NULL && n == 0);
        check_refusal(rc, err, "fuzz.bin: archive/data.pkl");
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        check(t[i].name && t[i].name[0] && t[i].key && t[i].key[0]);
        check(strlen(t[i].name) <= size && strlen(t[i].key) <= 64);
        check(t[i].ndim >= 0 && t[i].ndim <= ALLOY_MAX_DIMS);
        check(alloy_dtype_traits(t[i].dtype) != NULL);
        for (int d = 0; d < t[i].ndim; d++) check(t[i].shape[d] >= 0 && t[i].stride[d] >= 0);
    }
    alloy_pickle_free(t, n);
    return 0;
}
