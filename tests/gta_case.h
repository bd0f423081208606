/*
 * gta_case.h — a task-arithmetic test case and its runner (gta_case.c).
 */
#ifndef ALLOY_TEST_GTA_CASE_H
#define ALLOY_TEST_GTA_CASE_H

#include "alloy.h"

struct alloy_kernels;

#include <stddef.h>
#include <stdint.h>

#define MAXM 24

struct gcase {
    const char *method;
    int n, base;
    int ndim;
    uint64_t rows, cols;
    double w[MAXM], density[MAXM], extra[MAXM]; /* NAN: method default */
    double normalize, rescale, lambda;          /* NAN: method default */
    uint64_t seed;
    const struct alloy_kernels *kernels;        /* NULL: the CPU's best table */
};

/* Uniform in [0, 1): xorshift64*, the tests' own generator. */
double urand(void);
/* A value in [-span, span] on the 1/64 grid. */
float grid(int span);
/* A case of method with n inputs (base at index base), rows x cols, every parameter at its default. */
void gcase_init(struct gcase *k, const char *method, int n, int base, uint64_t rows, uint64_t cols);
/* Runs the case on threads pool threads (0: this thread) with chunks of chunk elements (0: default), on
 * float32 inputs in, or on bfloat16 inputs in16 when not NULL (the method may take them raw). */
int run_case_in(const struct gcase *k, const float *const *in, const uint16_t *const *in16, float *out,
                int threads, uint64_t chunk, struct alloy_err *err);
int run_case(const struct gcase *k, const float *const *in, float *out, int threads, uint64_t chunk,
             struct alloy_err *err);
/* n inputs of N grid values in [-span, span] / 64; free_inputs releases them. */
float **make_inputs(int n, size_t N, int span);
void free_inputs(float **in, int n);

#endif
