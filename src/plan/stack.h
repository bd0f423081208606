/*
 * stack.h — a model's layer stack, for the planner (stack.c).
 */
#ifndef ALLOY_PLAN_STACK_H
#define ALLOY_PLAN_STACK_H

#include "core/internal.h"

struct alloy_layer_stack {
    char *prefix;       /* e.g. "model.layers" */
    long long nlayers;
    size_t n;           /* tensors in the stack */
    struct alloy_stack_entry { long long layer; size_t idx; } *ent; /* sorted by layer, then file order */
};

/* The layer stack of m: the prefix most layer-like names share (ties: the one seen first), its layer
 * count and its tensors by layer. O(n log n) in the tensor count. Returns 0, or -1 out of memory. */
int  alloy_plan_find_stack(const struct alloy_model *m, struct alloy_layer_stack *s);
void alloy_plan_stack_free(struct alloy_layer_stack *s);

#endif
