/*
 * test_moe.h — helpers shared by the MoE tests (defined in test_moe.c).
 */
#ifndef ALLOY_TEST_MOE_H
#define ALLOY_TEST_MOE_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

/* Tensor `name` of model dir as float32 (malloc'd, *n values; F32 or BF16 stored); NULL if absent. */
float *moe_read_f32(const char *dir, const char *name, size_t *n);
/* 1 when tensor a of model da and tensor b of model db hold the same bytes. */
int moe_same_tensor(const char *da, const char *a, const char *db, const char *b);
/* mergekit's cheap_embed row of tiny-llama base, computed in the test: the embedding rows of "<s>" + each
 * prompt summed, normalised, minus the same for the negative prompts, normalised (out[128]). */
void moe_cheap_row(const char *const *pos, int npos, const char *const *neg, int nneg, double *out);
/* From tiny-llama base (attention, norms, embeddings) and the code and prose MLPs: moe, a Mixtral with
 * zero routers and experts code and prose, and dense, the Llama that computes the same function (k = 2:
 * an MLP of both, each down_proj halved; k = 1: the code MLP). 0 on success. */
int moe_write_pair(const char *moe, const char *dense, int k);
/* alloy_moe on the YAML text into out (overwritten) with the seed, fused layout and shard size given. */
int moe_assemble(const char *yaml, const char *out, uint64_t seed, int fused, uint64_t shard, struct alloy_err *err);
/* test_tmpdir()/name (a fresh folder per call; one of 4 rotating buffers). */
char *moe_out_path(const char *name);
/* The largest logit difference between models da and db on two 16-token sequences (INFINITY: not loaded). */
double moe_logit_gap(const char *da, const char *db);

#endif
