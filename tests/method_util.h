/*
 * method_util.h — shared helpers for the merge-method unit tests: a job
 * builder with the method's defaults, a deterministic random source, and a
 * runner that checks a method against expected values in several chunkings
 * and on a thread pool.
 */
#ifndef ALLOY_TEST_METHOD_UTIL_H
#define ALLOY_TEST_METHOD_UTIL_H

#include "alloy.h"
#include "methods/method.h"

#include <stdint.h>

struct tj {
    struct alloy_merge_job job;
    int64_t shape[4];
    double gp[8], tp[64];
};

/* Fills t for method m: shape, n inputs, base index, every parameter at its default. */
void tj_setup(struct tj *t, const struct alloy_method *m, int ndim, const int64_t *shape, int n, int base);
/* Uniform in [-1, 1), from a fixed LCG sequence. */
float frand(void);
/* Runs the job single-chunk, with chunks of 5 and 64 elements, on this thread and on 3 threads;
 * every output must match `expect` within tol * max(1, max|expect|). */
void check_runs(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                const double *expect, double tol);

/* Runs the job (check() included) on a fresh pool of `threads` threads. */
int run_on_threads(const struct alloy_method *m, const struct alloy_merge_job *job, const float *const *in,
                   float *out, int threads, uint64_t chunk, struct alloy_err *err);

#endif
