/*
 * test_quantize.c — the quantizers against llama-quantize's own bytes, and
 * their behaviour on edge cases.
 *
 * DESIGN
 *   Golden: tests/data/gguf/base-f32.gguf is llama-quantize's input for every
 *   file of tests/data/gguf/quant/ (GGUF stores q/k already permuted, so its
 *   stored F32 rows are exactly what llama-quantize quantized). For every
 *   tensor of every quant file, the test quantizes the same-named F32 tensor
 *   to the type that file used (expected.json lists it per tensor) and
 *   compares the sha256 of the bytes with llama.cpp's stored-bytes digest.
 *   base-Q4_K_M-imatrix.gguf is redone with base.imatrix (values / ncall)
 *   for the tensors the imatrix covers. Besides: round trips within a
 *   per-type error bound derived from the block format, all-zero and
 *   constant blocks, NaN/Inf and bad lengths as errors naming the tensor,
 *   and fp16 stores against a naive round-to-nearest-even reference.
 */
#include "test.h"
#include "sha256.h"

#include "alloy.h"
#include "quant/imatrix.h"
#include "quant/quantize.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>

static int ggml_type(const char *s, enum alloy_dtype *out)
{
    static const struct { const char *name; enum alloy_dtype t; } map[] = {
        {"f32", ALLOY_DTYPE_F32},   {"q8_0", ALLOY_DTYPE_Q8_0}, {"q4_0", ALLOY_DTYPE_Q4_0}, {"q4_1", ALLOY_DTYPE_Q4_1},
        {"q5_0", ALLOY_DTYPE_Q5_0}, {"q5_1", ALLOY_DTYPE_Q5_1}, {"q2_K", ALLOY_DTYPE_Q2_K}, {"q3_K", ALLOY_DTYPE_Q3_K},
        {"q4_K", ALLOY_DTYPE_Q4_K}, {"q5_K", ALLOY_DTYPE_Q5_K}, {"q6_K", ALLOY_DTYPE_Q6_K},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(s, map[i].name) == 0) { *out = map[i].t; return 0; }
    return -1;
}

/* Quantizes base tensor src as want says (type; the imatrix when im has the tensor) and checks the digest. */
static void check_golden(const char *file, const struct alloy_tensor *src, json_t *want, const struct alloy_imatrix *im,
                         int *seen, int *with_imatrix)
{
    const char *gname = json_string_value(json_object_get(want, "name"));
    const char *sha = json_string_value(json_object_get(want, "sha256"));
    enum alloy_dtype t;
    CHECK_MSG(gname && sha && ggml_type(json_string_value(json_object_get(want, "type")), &t) == 0, "%s: entry", file);
    if (!gname || !sha || ggml_type(json_string_value(json_object_get(want, "type")), &t)) return;
    int64_t n_per_row = src->shape[src->ndim - 1], nrows = (int64_t)src->numel / n_per_row;
    uint64_t nbytes = 0;
    CHECK(alloy_dtype_nbytes(t, src->numel, &nbytes) == 0);
    float *x = malloc(src->numel * sizeof *x);
    uint8_t *q = malloc(nbytes ? nbytes : 1);
    struct alloy_err err = {0};
    CHECK(x && q);
    if (!x || !q) goto out;
    CHECK_MSG(alloy_tensor_pread(src, 0, x, src->numel * 4, &err) == ALLOY_OK, "%s", err.msg);
    size_t nim = 0;
    const float *w = im ? alloy_imatrix_lookup(im, gname, &nim) : NULL;
    if (w) {
        CHECK_INT((int64_t)nim, n_per_row);
        (*with_imatrix)++;
    }
    if (t == ALLOY_DTYPE_F32) memcpy(q, x, nbytes);
    else CHECK_MSG(alloy_quantize_rows(t, x, q, nrows, n_per_row, w, file, gname, &err) == ALLOY_OK, "%s", err.msg);
    char hex[65];
    sha256_of(q, nbytes, hex);
    CHECK_MSG(strcmp(hex, sha) == 0, "%s: %s as %s%s: sha256 %s, llama-quantize's %s", file, gname,
              alloy_dtype_traits(t)->name, w ? " with the imatrix" : "", hex, sha);
    seen[t] = 1;
out:
    free(x);
    free(q);
}

TEST(quantize_every_type_matches_llama_quantize)
{
    json_error_t jerr;
    json_t *exp = json_load_file(test_data("gguf/expected.json"), 0, &jerr);
    struct alloy_tensor_file *base = NULL;
    struct alloy_imatrix *im = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(exp, "expected.json: %s", jerr.text);
    CHECK_MSG(alloy_tensor_file_open(test_data("gguf/base-f32.gguf"), &base, &err) == ALLOY_OK, "%s", err.msg);
    CHECK_MSG(alloy_imatrix_open(test_data("gguf/base.imatrix"), &im, &err) == ALLOY_OK, "%s", err.msg);
    if (!exp || !base || !im) goto out;
    const char *name;
    json_t *spec;
    int nfiles = 0, ntensors = 0, with_imatrix = 0, seen[ALLOY_DTYPE_COUNT] = {0};
    json_object_foreach(json_object_get(exp, "files"), name, spec) {
        if (strncmp(name, "quant/", 6) != 0) continue;
        char path[512];
        snprintf(path, sizeof path, "gguf/%s", name);
        struct alloy_tensor_file *f = NULL; /* its HF names, in the order of expected.json's GGUF names */
        CHECK_MSG(alloy_tensor_file_open(test_data(path), &f, &err) == ALLOY_OK, "%s", err.msg);
        if (!f) continue;
        json_t *tensors = json_object_get(spec, "tensors");
        CHECK_INT(alloy_tensor_file_count(f), json_array_size(tensors));
        for (size_t i = 0; i < alloy_tensor_file_count(f) && i < json_array_size(tensors); i++) {
            const struct alloy_tensor *src = alloy_tensor_file_find(base, alloy_tensor_file_tensor(f, i)->name);
            CHECK_MSG(src && src->dtype == ALLOY_DTYPE_F32, "%s: %s in base-f32.gguf", name, alloy_tensor_file_tensor(f, i)->name);
            if (!src || src->dtype != ALLOY_DTYPE_F32) continue;
            check_golden(name, src, json_array_get(tensors, i), strstr(name, "imatrix") ? im : NULL, seen, &with_imatrix);
            ntensors++;
        }
        alloy_tensor_file_close(f);
        nfiles++;
    }
    CHECK_INT(nfiles, 13);
    CHECK_INT(ntensors, 13 * 21);
    CHECK_INT(with_imatrix, 14); /* the blk.* matmuls; token_embd and output have no entry */
    for (int t = ALLOY_DTYPE_FIRST_QUANT; t < ALLOY_DTYPE_COUNT; t++)
        CHECK_MSG(seen[t], "no golden tensor of type %s", alloy_dtype_traits((enum alloy_dtype)t)->name);
out:
    alloy_imatrix_close(im);
    alloy_tensor_file_close(base);
    json_decref(exp);
}
