/*
 * task_arithmetic.c — add weighted task vectors to the base model.
 *
 *   R = B + lambda * sum_i w_i (X_i - B)          (normalize: / sum_i w_i, |sum| < 1e-8 -> 1)
 *
 * mergekit: generalized_task_arithmetic.py with no sparsification and no
 * consensus (spec §1.6). A negative weight subtracts a task vector ("task
 * negation", examples/task_negation.yml). Parameters: weight (per model,
 * required), density (per model, 1.0; accepted but unused: nothing is
 * sparsified), normalize (false), rescale (false; unused), lambda (1.0),
 * int8_mask (no effect). base_model required. The shared pipeline is gta.c;
 * this method needs no scan pass, only apply().
 */
#include "methods/gta.h"

static const struct alloy_param_spec params[] = {GTA_COMMON_PARAMS(0.0, 0.0)};

GTA_DEFINE_METHOD(task_arithmetic, GTA_SPARSIFY_NONE, 0, params, 0,
                  "add the weighted task vectors (model - base) to the base");
