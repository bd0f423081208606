/*
 * vecmath.h — small vector helpers shared by the interpolation methods
 * (slerp, nuslerp, multislerp, karcher, model_stock).
 *
 * DESIGN
 *   These methods need dot products between whole task vectors (or whole
 *   rows), which they collect as a Gram matrix G[a][b] = <v_a, v_b> in a scan
 *   pass. Every vector the algorithms then build (means, tangents, iterates)
 *   lies in the span of the inputs, so it is represented by k coefficients
 *   and its dot products follow from G: x^T G y. Nothing here allocates.
 *
 *   The Gram matrix is stored packed (upper triangle, column-major):
 *   G[a][b] with a <= b lives at b*(b+1)/2 + a. At most ALLOY_VM_MAX vectors.
 */
#ifndef ALLOY_METHODS_VECMATH_H
#define ALLOY_METHODS_VECMATH_H

#include "methods/method.h"

#include <stddef.h>

#define ALLOY_VM_MAX  32
#define ALLOY_VM_GRAM (ALLOY_VM_MAX * (ALLOY_VM_MAX + 1) / 2)

static inline int alloy_vm_tri(int a, int b)
{
    if (a > b) { int t = a; a = b; b = t; }
    return b * (b + 1) / 2 + a;
}

/* g += Gram matrix of v_a = x[a] - base (base NULL: v_a = x[a]), a < k,
 * over elements [0, len). Differences and products in double; the sum runs
 * in blocks, in a fixed order, so equal inputs give equal bits. */
void alloy_vm_gram_add(const float *const *x, int k, const float *base, size_t len, double *g);

/* out[0..count) += the first `count` doubles of each of nchunks accumulators (acc_size bytes apart),
 * in chunk order, starting from zero when `first` (the window's first chunk, method.h fold) is 0: a
 * running sum, so the bits do not depend on how the chunks are cut into windows. */
void alloy_vm_fold(const void *accs, size_t first, size_t nchunks, size_t acc_size, size_t count, double *out);

/* x^T G y for coefficient vectors x, y of length k. */
double alloy_vm_quad(const double *g, int k, const double *x, const double *y);

/* (G x)_i. */
double alloy_vm_gx(const double *g, int k, const double *x, int i);

/* Indices of the inputs other than job->base, in input order; returns their count. */
int alloy_vm_others(const struct alloy_merge_job *job, int *idx);

#endif
