/*
 * breadcrumbs.c — Model Breadcrumbs: drop the largest outliers and the
 * smallest entries of every task vector.
 *
 *   N = numel;  target = int(density N);  n_top = int(gamma N);  n_bot = N - target - n_top
 *   if n_bot < 0: n_top += n_bot, n_bot = 0
 *   keep the entries at ascending-|delta| positions [n_bot, N - n_top)
 *   breadcrumbs:      R = B + lambda * sum_i w_i delta_i              (normalize: / sum_i w_i)
 *   breadcrumbs_ties: R = B + lambda * sum_i w_i delta_i M_i [/ sum_i w_i M_i]  (sign consensus)
 *
 * mergekit: generalized_task_arithmetic.py + sparsify.py
 * `magnitude_outliers` (spec §1.6, §1.6.1). Parameters: weight (per model,
 * required), density (per model, 1.0 = unchanged), gamma (per model, 0.01),
 * normalize (false), rescale (false), lambda (1.0), int8_mask (no effect).
 * base_model required. The kept set is computed as "top N - n_bot minus top
 * n_top" with two exact radix selections (select.h) under one total order.
 * Deviation: mergekit slices [n_bot : -n_top], which is EMPTY when n_top == 0
 * (every tensor under 100 elements with gamma 0.01) and zeroes the whole
 * task vector; alloy keeps [n_bot, N) then, i.e. removes no outliers.
 */
#include "methods/gta.h"

static const struct alloy_param_spec params[] = { /* same table for both */
    GTA_COMMON_PARAMS(0.0, 0.0),
    [GTA_P_EXTRA] = {"gamma", ALLOY_PARAM_TENSOR, 0.01, 0, "fraction of the largest task-vector entries removed"},
};

GTA_DEFINE_METHOD(breadcrumbs, GTA_SPARSIFY_OUTLIERS, 0, params, 0,
                  "Model Breadcrumbs: drop the largest outliers and smallest task-vector entries, add the rest");
GTA_DEFINE_METHOD(breadcrumbs_ties, GTA_SPARSIFY_OUTLIERS, 1, params, 0,
                  "Model Breadcrumbs pruning with TIES sign consensus");
