/*
 * permuted.h — the permuted-rows source: an embedding matrix re-indexed to a
 * new vocabulary (mergekit's PermutedEmbeddings, spec §6.3).
 *
 * DESIGN
 *   One alloy_permuted per output tensor holds what every input of it needs:
 *   the stored matrices of the participating models, each model's own row
 *   for every output token (or -1), and one default row per token — a list
 *   of (matrix, row) pairs whose mean it is (one pair: that row; none:
 *   zeros). Input k presents row j as its own row when it has one, else the
 *   default, and rows past the vocabulary (padding) as the mean of its rows
 *   0..vocab-1, computed once on first use. Rows are read on demand from the
 *   stored matrices, a piece of a row at a time, so memory is a few rows.
 */
#ifndef ALLOY_PERMUTED_H
#define ALLOY_PERMUTED_H

#include "sources/source.h"

#include <pthread.h>

struct alloy_perm_pick { int32_t k, r; }; /* row r of matrix k */

struct alloy_permuted;
struct alloy_perm_input { struct alloy_permuted *p; size_t k; };

struct alloy_permuted {
    size_t nm;                         /* participating matrices (one per input) */
    const struct alloy_tensor **mat;   /* [nm] stored 2-D matrices [rows_k, cols] */
    int *model;                        /* [nm] plan model index */
    uint64_t vocab, rows, cols;        /* output: vocabulary rows, rows with padding, width */
    int32_t *own;                      /* [nm * vocab]: matrix k's row for output row j, -1: the default */
    uint32_t *def_off;                 /* [vocab + 1]: default of row j = mean of def[def_off[j] .. def_off[j+1]) */
    struct alloy_perm_pick *def;
    size_t ndef, capdef;
    uint64_t filled;                   /* rows whose def_off start is set */
    struct alloy_perm_input *in;       /* [nm]: the inputs' ctx */
    float *pad;                        /* [nm * cols]: padding rows, computed on first use */
    unsigned char *pad_done;           /* [nm] */
    pthread_mutex_t lock;
};

/* A permuted matrix for nm inputs of vocab (padded to rows) x cols; own rows all -1, defaults all empty.
 * NULL when out of memory. */
struct alloy_permuted *alloy_permuted_new(size_t nm, uint64_t vocab, uint64_t rows, uint64_t cols);
/* Appends (k, r) to the default of row j; rows must be given in increasing j. -1 when out of memory. */
int  alloy_permuted_add_default(struct alloy_permuted *p, uint64_t j, int32_t k, int32_t r);
/* Closes the default lists after the last row given (rows after it get empty defaults). */
void alloy_permuted_seal(struct alloy_permuted *p);
void alloy_permuted_free(struct alloy_permuted *p);
/* Sets s to present input k of p. */
void alloy_input_permuted(struct alloy_input *s, struct alloy_permuted *p, size_t k);

#endif
