/*
 * engine.h — the engine's entry points inside the library: one merge of a
 * parsed config (engine.c) and a multi-stage merge over the documents of a
 * mergekit-multi config (multi.c), which runs the first once per stage.
 */
#ifndef ALLOY_ENGINE_H
#define ALLOY_ENGINE_H

#include "alloy.h"
#include "plan/plan.h"

/* What one stage of a multi-stage merge adds to the options (all optional). */
struct alloy_stage_io {
    const struct alloy_given_models *given; /* the intermediates finished so far, by name */
    const char *label;      /* an in-memory output's alloy_model_ref (the intermediate's name) */
    int shape_only;         /* dry run: after printing the plan, *out_model receives the layout, values zero */
    uint64_t mem_limit;     /* an in-memory output may take at most this many tensor bytes; 0: no limit */
    uint64_t *out_bytes;    /* receives the output's tensor bytes once planned */
};

/* One merge of cfg as o says (its out_dir, out_model, dry_run...); io may be NULL. */
int alloy_merge_stage(const struct alloy_merge_options *o, const struct alloy_config *cfg,
                      const struct alloy_stage_io *io, struct alloy_err *err);

/* The documents of a multi-stage config in dependency order: named ones as intermediates (in memory, or
 * in o->intermediate_dir), the unnamed one into o->out_dir / o->out_model. */
int alloy_merge_multi(const struct alloy_merge_options *o, const struct alloy_config *const *docs, size_t n,
                      struct alloy_err *err);

#endif
