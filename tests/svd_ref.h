/*
 * svd_ref.h — a plain reference for the SVD tests (svd_ref.c): singular
 * values by one-sided Jacobi in double, independent of LAPACK.
 */
#ifndef ALLOY_TEST_SVD_REF_H
#define ALLOY_TEST_SVD_REF_H

#include <stddef.h>

/* Singular values of the row-major m x n matrix a, descending, into sv[min(m, n)]. */
void jacobi_sv(const double *a, size_t m, size_t n, double *sv);

#endif
