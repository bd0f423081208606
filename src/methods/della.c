/*
 * della.c — DELLA: magnitude-ranked random dropping (MagPrune).
 *
 *   per row of C entries: rank = 1..C, ascending |delta| (equal magnitudes
 *   share their mean rank: the average of the places they occupy)
 *   p = (density - epsilon) + 2 epsilon (rank - 1) / (C - 1)
 *   keep ~ Bernoulli(p);  delta_i *= keep * (sum|delta_i| / sum|kept|)    (rescale, default true)
 *   della:        R = B + lambda * sum_i w_i delta_i M_i [/ sum_i w_i M_i]   (sign consensus,
 *                                                                           normalize default true)
 *   della_linear: R = B + lambda * sum_i w_i delta_i [/ sum_i w_i]           (normalize default false)
 *
 * mergekit: generalized_task_arithmetic.py + sparsify.py `della_magprune`
 * (spec §1.6, §1.6.1). Parameters: weight (per model, required), density
 * (per model, 1.0 = unchanged), epsilon (per model, 0.15), normalize,
 * rescale (true), lambda (1.0), int8_mask (no effect). base_model required.
 * As in mergekit, 0 < density < 1 requires density - epsilon > 0 and
 * density + epsilon < 1 (a config error here, a ValueError there);
 * density <= 0 drops everything; density >= 1 keeps the task vector as is.
 * 1-D tensors are one row. Deviations: for >= 3-D tensors the rank runs
 * along the last dimension (mergekit: along dimension 1); a row of one
 * element (C == 1, NaN probability and a crash in mergekit) uses
 * p = density; ranks and probabilities are exact doubles (mergekit rounds
 * them to bf16 for bf16 models); equal magnitudes share their mean rank
 * (mergekit's argsort orders them arbitrarily: the same keep probability
 * in expectation, where any fixed order would favour some columns).
 * Chunks hold whole rows (WHOLE_ROWS); della_rank.c computes each row's
 * keep limits.
 */
#include "methods/gta.h"

#define DELLA_PARAMS(normalize_def)                                                                               \
    GTA_COMMON_PARAMS(normalize_def, 1.0),                                                                        \
    [GTA_P_EXTRA] = {"epsilon", ALLOY_PARAM_TENSOR, 0.15, 0,                                                      \
                     "keep probabilities spread over density +/- epsilon by magnitude rank"}

static const struct alloy_param_spec params_della[] = {DELLA_PARAMS(1.0)};
static const struct alloy_param_spec params_linear[] = {DELLA_PARAMS(0.0)};

GTA_DEFINE_METHOD(della, GTA_SPARSIFY_DELLA, 1, params_della, ALLOY_METHOD_RANDOM | ALLOY_METHOD_WHOLE_ROWS,
                  "DELLA: drop entries with magnitude-ranked probabilities, rescale, TIES sign consensus");
GTA_DEFINE_METHOD(della_linear, GTA_SPARSIFY_DELLA, 0, params_linear, ALLOY_METHOD_RANDOM | ALLOY_METHOD_WHOLE_ROWS,
                  "DELLA pruning, then the weighted sum of the task vectors");
