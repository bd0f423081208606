/*
 * ties.c — TIES merging: trim (top-k magnitude), elect sign, disjoint merge.
 *
 *   delta_i = top-k(X_i - B)  with k = int(density_i * numel), by |delta|
 *   D_i = w_i delta_i;  sigma = sign(sum_i D_i) (0 -> +);  M_i = [sign(D_i) == sigma]
 *   R = B + lambda * sum_i D_i M_i / sum_i w_i M_i     (normalize, default true; 0 -> 1)
 *
 * mergekit: generalized_task_arithmetic.py + sparsify.py `magnitude` (spec
 * §1.6, §1.6.1). Parameters: weight (per model, required), density (per
 * model, 1.0), normalize (true), rescale (false: L1 matching after pruning
 * when set), lambda (1.0), int8_mask (no effect). base_model required.
 * k == 0 (e.g. density 0.01 on a 64-element tensor) is an assertion error in
 * mergekit; here that task vector is simply empty. Ties at the k-th
 * magnitude keep the lowest element indices (select.h); torch's argsort
 * leaves that order unspecified.
 */
#include "methods/gta.h"

static const struct alloy_param_spec params[] = {GTA_COMMON_PARAMS(1.0, 0.0)};

GTA_DEFINE_METHOD(ties, GTA_SPARSIFY_MAGNITUDE, 1, params, 0,
                  "TIES: keep the largest task-vector entries, elect a sign per entry, average the agreeing ones");
