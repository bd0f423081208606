/*
 * svd_ref.c — one-sided Jacobi singular values (Hestenes): columns of a tall
 * copy are rotated pairwise until all are orthogonal; their norms are then
 * the singular values. Slow (O(m n^2) per sweep) and plainly correct: the
 * reference the SVD and extraction tests compare against.
 */
#include "svd_ref.h"

#include <math.h>
#include <stdlib.h>

/* Singular values of the row-major m x n matrix a (double), descending, by one-sided Jacobi on columns. */
void jacobi_sv(const double *a, size_t m, size_t n, double *sv)
{
    size_t r = m >= n ? m : n, c = m >= n ? n : m; /* work on a tall r x c matrix w (column j at w + j r) */
    double *w = malloc(sizeof(double) * r * c);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            if (m >= n) w[j * r + i] = a[i * n + j];
            else w[i * r + j] = a[i * n + j];
        }
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (size_t p = 0; p < c; p++)
            for (size_t q = p + 1; q < c; q++) {
                double al = 0, be = 0, ga = 0;
                for (size_t i = 0; i < r; i++) {
                    al += w[p * r + i] * w[p * r + i];
                    be += w[q * r + i] * w[q * r + i];
                    ga += w[p * r + i] * w[q * r + i];
                }
                if (fabs(ga) <= 1e-15 * sqrt(al * be)) continue;
                off = fmax(off, fabs(ga) / sqrt(al * be));
                double zeta = (be - al) / (2 * ga), t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double cs = 1 / sqrt(1 + t * t), sn = cs * t;
                for (size_t i = 0; i < r; i++) {
                    double x = w[p * r + i], y = w[q * r + i];
                    w[p * r + i] = cs * x - sn * y;
                    w[q * r + i] = sn * x + cs * y;
                }
            }
        if (off < 1e-13) break;
    }
    for (size_t j = 0; j < c; j++) {
        double s2 = 0;
        for (size_t i = 0; i < r; i++) s2 += w[j * r + i] * w[j * r + i];
        sv[j] = sqrt(s2);
    }
    for (size_t i = 1; i < c; i++) /* insertion sort, descending */
        for (size_t j = i; j > 0 && sv[j] > sv[j - 1]; j--) {
            double t = sv[j];
            sv[j] = sv[j - 1];
            sv[j - 1] = t;
        }
    free(w);
}

