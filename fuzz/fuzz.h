/*
 * fuzz.h — what every fuzz target shares: libFuzzer's entry point and
 * check(), which reports a broken promise and aborts so the fuzzer keeps
 * the input.
 */
#ifndef ALLOY_FUZZ_H
#define ALLOY_FUZZ_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken promise: say which, then abort so the fuzzer keeps the input. */
#define check(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

/* What every tensor-file reader promises about a tensor it accepted: its bytes lie in [lo, hi), it has
 * at most ALLOY_MAX_DIMS non-negative dimensions, numel is their product and nbytes = numel x bits / 8. */
static inline void check_tensor_in(const struct alloy_tensor *t, const uint8_t *lo, const uint8_t *hi)
{
    check(t && t->name);
    check(t->data >= lo && t->data <= hi && t->nbytes <= (uint64_t)(hi - t->data));
    check(t->ndim >= 0 && t->ndim <= ALLOY_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        check(t->shape[d] >= 0);
        numel *= (uint64_t)t->shape[d];
    }
    check(numel == t->numel);
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    check(tr != NULL && t->numel * tr->bits == t->nbytes * 8);
}

/* A refusal is one line that names the input (label), with no partial result. */
#define check_refusal(rc, err, label)                                                        \
    do {                                                                                     \
        check((err).status == (enum alloy_status)(rc));                                      \
        check(strncmp((err).msg, (label), strlen(label)) == 0 || (rc) == ALLOY_ERR_NOMEM);   \
        check(memchr((err).msg, '\n', sizeof (err).msg) == NULL);                            \
    } while (0)

#endif
