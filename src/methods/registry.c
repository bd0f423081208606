/*
 * registry.c — the registry of merge methods, by mergekit name.
 *
 * DESIGN
 *   Each method lives in its own file under src/methods/ and exports one
 *   `const struct alloy_method alloy_method_<name>`. The table below is the
 *   only list; its order is the order of `alloy merge --help` and
 *   docs/methods.md. The references are strong, so linking this file pulls
 *   every method's object out of liballoy.a (weak references would not: a
 *   program linked against the static library would know no method).
 */
#include "methods/method.h"

#include <string.h>

#define METHODS(X)                                                                               \
    X(linear) X(slerp) X(nuslerp) X(multislerp) X(karcher) X(task_arithmetic) X(ties) X(dare_linear) \
    X(dare_ties) X(breadcrumbs) X(breadcrumbs_ties) X(della) X(della_linear) X(model_stock) X(sce)      \
    X(nearswap) X(arcee_fusion) X(ram) X(ramplus_tl) X(passthrough)

#define DECLARE(n) extern const struct alloy_method alloy_method_##n;
METHODS(DECLARE)
#undef DECLARE

#define ENTRY(n) &alloy_method_##n,
static const struct alloy_method *const g_methods[] = {METHODS(ENTRY)};
#undef ENTRY

#define NMETHODS (sizeof g_methods / sizeof g_methods[0])

const struct alloy_method *alloy_method_find(const char *name)
{
    for (size_t i = 0; name && i < NMETHODS; i++)
        if (strcmp(g_methods[i]->name, name) == 0) return g_methods[i];
    return NULL;
}

size_t alloy_method_count(void) { return NMETHODS; }

const struct alloy_method *alloy_method_at(size_t i) { return i < NMETHODS ? g_methods[i] : NULL; }

int alloy_method_info(size_t i, struct alloy_method_info *out)
{
    const struct alloy_method *m = alloy_method_at(i);
    if (!m) return -1;
    memset(out, 0, sizeof *out);
    out->name = m->name;
    out->summary = m->summary ? m->summary : "";
    for (int k = 0; k < m->nparams && k < ALLOY_METHOD_MAX_PARAMS; k++) {
        out->params[k].name = m->params[k].name;
        out->params[k].per_model = m->params[k].scope == ALLOY_PARAM_TENSOR;
        out->params[k].def = m->params[k].def;
        out->nparams = k + 1;
    }
    return 0;
}

int alloy_method_param(const struct alloy_method *m, const char *name)
{
    for (int k = 0; k < m->nparams; k++)
        if (strcmp(m->params[k].name, name) == 0) return k;
    return -1;
}
