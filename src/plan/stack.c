/*
 * stack.c — find a model's layer stack.
 *
 * DESIGN
 *   The stack is the name prefix before ".<N>." that most tensors share
 *   (model.layers, transformer.h, ...); its layer count is max N + 1.
 *   Tensors outside it are "loose" for the planner. Layer-like names are
 *   sorted by prefix once, and runs of one prefix counted, so finding the
 *   stack is O(n log n) in the tensor count, whatever the architecture.
 */
#include "plan/stack.h"
#include "plan/plan.h"

/* A layer-like name with its prefix length, for sorting names by prefix. */
struct named { const char *name; size_t plen, idx; long long layer; };

static int cmp_prefix(const void *pa, const void *pb)
{
    const struct named *a = pa, *b = pb;
    size_t m = a->plen < b->plen ? a->plen : b->plen;
    int c = memcmp(a->name, b->name, m);
    if (c) return c;
    if (a->plen != b->plen) return a->plen < b->plen ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int cmp_entry(const void *pa, const void *pb)
{
    const struct alloy_stack_entry *a = pa, *b = pb;
    if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* The layer stack: the prefix most layer-like names share (ties: the one seen first), its layer count and
 * its tensors by layer. Names are sorted by prefix once, so this is O(n log n) in the tensor count. */
int alloy_plan_find_stack(const struct alloy_model *m, struct alloy_layer_stack *s)
{
    size_t n = alloy_model_count(m), k = 0;
    memset(s, 0, sizeof *s);
    struct named *v = alloy_xcalloc(n ? n : 1, sizeof *v);
    if (!v) return -1;
    for (size_t i = 0; i < n; i++) {
        const char *name = alloy_model_tensor(m, i)->name;
        size_t plen;
        long long l = alloy_name_layer(name, &plen, NULL);
        if (l >= 0) v[k++] = (struct named){name, plen, i, l};
    }
    alloy_qsort(v, k, sizeof *v, cmp_prefix);
    size_t best = 0, best_first = 0, best_at = 0;
    for (size_t i = 0, j; i < k; i = j) { /* runs of one prefix, each in file order */
        for (j = i + 1; j < k && v[j].plen == v[i].plen && memcmp(v[j].name, v[i].name, v[i].plen) == 0;) j++;
        if (j - i > best || (j - i == best && v[i].idx < best_first)) best = j - i, best_first = v[i].idx, best_at = i;
    }
    int rc = 0;
    if (best) {
        s->prefix = alloy_xasprintf("%.*s", (int)v[best_at].plen, v[best_at].name);
        s->ent = alloy_xcalloc(best, sizeof *s->ent);
        if (!s->prefix || !s->ent) rc = -1;
        for (size_t i = 0; !rc && i < best; i++) {
            s->ent[i] = (struct alloy_stack_entry){v[best_at + i].layer, v[best_at + i].idx};
            if (s->ent[i].layer + 1 > s->nlayers) s->nlayers = s->ent[i].layer + 1;
        }
        s->n = rc ? 0 : best;
        if (!rc) alloy_qsort(s->ent, s->n, sizeof *s->ent, cmp_entry);
    }
    free(v);
    return rc;
}

void alloy_plan_stack_free(struct alloy_layer_stack *s)
{
    free(s->prefix);
    free(s->ent);
}

