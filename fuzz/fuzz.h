/*
 * fuzz.h — what every fuzz target shares: libFuzzer's entry point and
 * check(), which reports a broken promise and aborts so the fuzzer keeps
 * the input.
 */
#ifndef ALLOY_FUZZ_H
#define ALLOY_FUZZ_H

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

/* A refusal is one line that names the input (label), with no partial result. */
#define check_refusal(rc, err, label)                                                        \
    do {                                                                                     \
        check((err).status == (enum alloy_status)(rc));                                      \
        check(strncmp((err).msg, (label), strlen(label)) == 0 || (rc) == ALLOY_ERR_NOMEM);   \
        check(memchr((err).msg, '\n', sizeof (err).msg) == NULL);                            \
    } while (0)

#endif
