/*
 * dare.c — DARE: drop task-vector entries at random and rescale.
 *
 *   keep_e ~ Bernoulli(density_i)         (u(seed, tensor, model, e) < density_i)
 *   delta_i = (X_i - B) * keep * (sum|X_i - B| / sum|kept|)      (rescale, default true)
 *   dare_linear: R = B + lambda * sum_i w_i delta_i              (normalize: / sum_i w_i)
 *   dare_ties:   R = B + lambda * sum_i w_i delta_i M_i [/ sum_i w_i M_i]   (sign consensus)
 *
 * mergekit: generalized_task_arithmetic.py + sparsify.py `bernoulli` (spec
 * §1.6, §1.6.1). Parameters: weight (per model, required), density (per
 * model, 1.0 = nothing dropped), normalize (false), rescale (true), lambda
 * (1.0), int8_mask (no effect). base_model required. The rescale is
 * mergekit's whole-tensor L1-norm matching, not the paper's 1/p. Draws come
 * from alloy's counter-based generator, a pure function of (--random-seed,
 * tensor name, model index, element) — reproducible for any thread count,
 * and identical between dare_ties and dare_linear; mergekit's global torch
 * RNG cannot be matched bit for bit (only in distribution).
 */
#include "methods/gta.h"

static const struct alloy_param_spec params[] = {GTA_COMMON_PARAMS(0.0, 1.0)}; /* same table for both */

GTA_DEFINE_METHOD(dare_linear, GTA_SPARSIFY_RANDOM, 0, params, ALLOY_METHOD_RANDOM,
                  "DARE: drop random task-vector entries, rescale, add the weighted sum");
GTA_DEFINE_METHOD(dare_ties, GTA_SPARSIFY_RANDOM, 1, params, ALLOY_METHOD_RANDOM,
                  "DARE + TIES sign consensus: drop random entries, rescale, merge the agreeing ones");
