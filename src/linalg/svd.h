/*
 * svd.h — truncated singular value decompositions for LoRA extraction and
 * adapter merging.
 *
 * DESIGN
 *   alloy_svd_truncated() returns the k largest singular triplets of a dense
 *   row-major m x n float32 matrix: A ~= U · diag(S) · Vt with U [m, k],
 *   S [k] descending, Vt [k, n], all row-major. It is the best rank-k
 *   approximation (Eckart–Young) to the accuracy stated in docs/lora.md
 *   (the implementation chooses LAPACK's divide-and-conquer SVD or a
 *   randomized range finder by size). `sv_all`, when not NULL, receives all
 *   min(m, n) singular values (for energy-based rank choice and error
 *   reports); computing them may cost a full SVD.
 *   Memory is allocated per call and checked: failure is an ALLOY_ERR_NOMEM
 *   error, never an abort. Thread-safe.
 */
#ifndef ALLOY_LINALG_SVD_H
#define ALLOY_LINALG_SVD_H

#include "core/internal.h"

int alloy_svd_truncated(const float *a, size_t m, size_t n, size_t k, float *u, float *s, float *vt,
                        float *sv_all, struct alloy_err *err);

/* The randomized path alone (tests and benchmarks): l >= k test vectors (capped at min(m, n)),
 * ALLOY_SVD_POWER_ITERS power iterations. alloy_svd_truncated takes it for min(m, n) >=
 * ALLOY_SVD_RANDOM_MIN when 4 l <= min(m, n), l = k + max(k, 16), and sv_all is NULL. */
#define ALLOY_SVD_RANDOM_MIN 512
#define ALLOY_SVD_POWER_ITERS 4
int alloy_svd_randomized(const float *a, size_t m, size_t n, size_t k, size_t l, float *u, float *s, float *vt,
                         struct alloy_err *err);

/* blas_room.c: before a thread's first BLAS/LAPACK call, an error instead of OpenBLAS's endless retry when
 * its per-thread work buffer does not fit under a finite RLIMIT_AS. */
int alloy_blas_room(struct alloy_err *err);

#endif
