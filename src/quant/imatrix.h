/*
 * imatrix.h — llama.cpp importance-matrix files (the legacy binary format
 * llama-imatrix writes), for `--imatrix FILE`.
 *
 * DESIGN
 *   The whole file is read and validated at open: i32 entry count; per
 *   entry i32 name length, the name, i32 ncall, i32 nval, nval f32 sums;
 *   then i32 chunk count, i32 length and the dataset name. Every count is
 *   bounded by the bytes left in the file, names by a fixed limit, values
 *   must be finite; a duplicate name is an error. Each entry's values are
 *   divided by its ncall (float division, as llama-quantize) once, at open.
 */
#ifndef ALLOY_QUANT_IMATRIX_H
#define ALLOY_QUANT_IMATRIX_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

struct alloy_imatrix;

/* Read and validate path; errors "<path>: <entry or field>: <expected>, <found>". */
int alloy_imatrix_open(const char *path, struct alloy_imatrix **out, struct alloy_err *err);
/* The same from a buffer (path only names it in errors; the fuzz target's entry). */
int alloy_imatrix_parse(const void *buf, size_t len, const char *path, struct alloy_imatrix **out,
                        struct alloy_err *err);
/* The per-column importance of GGUF tensor name (values already divided by ncall), *n set to
 * their count; NULL when the file has no such entry. */
const float *alloy_imatrix_lookup(const struct alloy_imatrix *m, const char *name, size_t *n);
/* Entry i (i < alloy_imatrix_entries) in file order: its name, values and count. */
const char *alloy_imatrix_entry(const struct alloy_imatrix *m, size_t i, const float **values, size_t *n);
/* For the quantize.imatrix.* keys: entry count, chunk count, dataset name. */
size_t alloy_imatrix_entries(const struct alloy_imatrix *m);
int32_t alloy_imatrix_chunks(const struct alloy_imatrix *m);
const char *alloy_imatrix_dataset(const struct alloy_imatrix *m);
void alloy_imatrix_close(struct alloy_imatrix *m);

#endif
