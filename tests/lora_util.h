/*
 * lora_util.h — test helpers for LoRA adapters: a small synthetic model,
 * adapter folders written from a config text and tensors, the applied model
 * read back, and PEFT's merge formula computed naively in double.
 */
#ifndef ALLOY_TEST_LORA_UTIL_H
#define ALLOY_TEST_LORA_UTIL_H

#include "alloy.h"
#include "test.h"

/* A tensor of the test model or adapter: values in double, written as dtype ("F32" or "BF16"). */
struct lt_tensor {
    const char *name;
    const char *dtype;
    int ndim;
    long long shape[2];
    double *v;            /* numel values, owned by the caller */
};

/* Deterministic values in [-scale, scale) from seed (n of them, malloc'd). */
double *lt_values(size_t n, unsigned seed, double scale);
/* Writes a model folder: config.json (a small llama config) and model.safetensors of the tensors. */
int  lt_write_model(const char *dir, const struct lt_tensor *t, int n);
/* Writes an adapter folder: adapter_config.json = config, adapter_model.safetensors = tensors. */
int  lt_write_adapter(const char *dir, const char *config, const struct lt_tensor *t, int n);
/* The passthrough of `ref` merged in memory (NULL on failure, err filled); out_dtype may be NULL. */
struct alloy_model *lt_apply(const char *ref, const char *out_dtype, struct alloy_err *err);
/* The values of tensor `name` of m as doubles (malloc'd, *n set), or NULL when absent. */
/* The values of a stored F32 or BF16 tensor, as doubles (malloc'd). */
double *lt_tensor_values(const struct alloy_tensor *t);
double *lt_read(const struct alloy_model *m, const char *name, size_t *n);
/* Largest |got - want| / max(|want|, floor) over n values. */
double lt_maxrel(const double *got, const double *want, size_t n, double floor);
/* Number of values differing from want by more than one bfloat16 ulp of want — or, where the sum
 * cancels (mag non-NULL: the size |W| + s·Σ|B·A| of its terms), more than float32's 1e-6 of mag. */
size_t lt_bf16_over_ulp(const double *got, const double *want, const double *mag, size_t n);
/* Rounds to bfloat16 (nearest even) and back. */
double lt_bf16(double x);

/* PEFT's merge, naively: out = W + s·B·A (Linear: W [o,i], B [o,r], A [r,i]) or, embedding,
 * out[v,d] = W[v,d] + s·Σ_k B[d,k]·A[k,v]; then DoRA (mag non-NULL): each row (Linear) or column
 * (embedding) scaled by mag / its L2 norm. out has rows x cols values; size (may be NULL) receives
 * |W| + |s|·Σ|B·A| per element (before DoRA), the scale of float32's rounding error. */
void lt_formula(const double *w, const double *a, const double *b, const double *mag, int embedding, long long rows,
                long long cols, long long r, double s, double *out, double *size);

#endif
