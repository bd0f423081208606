/*
 * vecmath.c — Gram matrices and coefficient-space products (vecmath.h).
 *
 * DESIGN
 *   alloy_vm_gram_add works on blocks of VM_BLOCK elements: the differences
 *   x - base go to a small stack buffer in double, then every pair is dotted
 *   with four partial sums (a fixed order, so the result depends only on the
 *   data and len, never on threads). Stack use: ALLOY_VM_MAX * VM_BLOCK
 *   doubles (32 KiB).
 */
#include "methods/vecmath.h"

#include <string.h>

enum { VM_BLOCK = 128 };

void alloy_vm_gram_add(const float *const *x, int k, const float *base, size_t len, double *g)
{
    double d[ALLOY_VM_MAX][VM_BLOCK];
    for (size_t e0 = 0; e0 < len; e0 += VM_BLOCK) {
        size_t m = len - e0 < VM_BLOCK ? len - e0 : VM_BLOCK;
        for (int a = 0; a < k; a++) {
            const float *xa = x[a] + e0;
            if (base)
                for (size_t e = 0; e < m; e++) d[a][e] = (double)xa[e] - (double)base[e0 + e];
            else
                for (size_t e = 0; e < m; e++) d[a][e] = xa[e];
        }
        for (int b = 0; b < k; b++)
            for (int a = 0; a <= b; a++) {
                const double *da = d[a], *db = d[b];
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                size_t e = 0;
                for (; e + 4 <= m; e += 4) {
                    s0 += da[e] * db[e];
                    s1 += da[e + 1] * db[e + 1];
                    s2 += da[e + 2] * db[e + 2];
                    s3 += da[e + 3] * db[e + 3];
                }
                for (; e < m; e++) s0 += da[e] * db[e];
                g[b * (b + 1) / 2 + a] += (s0 + s1) + (s2 + s3);
            }
    }
}

void alloy_vm_fold(const void *accs, size_t first, size_t nchunks, size_t acc_size, size_t count, double *out)
{
    if (first == 0) memset(out, 0, count * sizeof *out);
    for (size_t c = 0; c < nchunks; c++) {
        const double *a = (const double *)((const char *)accs + c * acc_size);
        for (size_t i = 0; i < count; i++) out[i] += a[i];
    }
}

double alloy_vm_gx(const double *g, int k, const double *x, int i)
{
    double s = 0;
    for (int j = 0; j < k; j++) s += g[alloy_vm_tri(i, j)] * x[j];
    return s;
}

double alloy_vm_quad(const double *g, int k, const double *x, const double *y)
{
    double s = 0;
    for (int i = 0; i < k; i++) s += x[i] * alloy_vm_gx(g, k, y, i);
    return s;
}

int alloy_vm_others(const struct alloy_merge_job *job, int *idx)
{
    int k = 0;
    for (int i = 0; i < job->n; i++)
        if (i != job->base) idx[k++] = i;
    return k;
}
