/*
 * gta_ref.h — the naive whole-tensor reference of the task-arithmetic
 * family (gta_ref.c): task arithmetic, TIES, DARE, breadcrumbs, DELLA as
 * spec §1.6 writes them, in double, for the tests.
 */
#ifndef ALLOY_GTA_REF_H
#define ALLOY_GTA_REF_H

#include "methods/gta.h"

#include <stddef.h>
#include <stdint.h>

struct gta_ref {
    enum gta_sparsify sparsify;
    int consensus, normalize, rescale;
    double lambda;
    int n, base;                        /* inputs (at most GTA_MAX_MODELS + 1), the base among them */
    uint64_t rows, cols;                /* the tensor's shape (DELLA ranks within rows) */
    const double *w, *density, *extra;  /* per input; density NAN: 1; extra (gamma, epsilon) NAN: its default */
    const unsigned char *const *mask;   /* NULL, or per input NULL or N keep flags replacing its pruning */
    uint64_t seed;                      /* the random methods' draws: --random-seed and the tensor name */
    const char *name;
};

/* out[rows * cols] = the merge of in[0 .. n) (float32 tensors of rows * cols elements). */
void gta_ref_merge(const struct gta_ref *r, const float *const *in, double *out);

#endif
