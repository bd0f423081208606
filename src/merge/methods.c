/*
 * methods.c — the registry of merge methods, by mergekit name.
 *
 * DESIGN
 *   Each method lives in its own file under src/methods/ and exports one
 *   `const struct alloy_method alloy_method_<name>`. The table below is the
 *   only list; its order is the order of `alloy merge --help` and
 *   docs/methods.md.
 */
#include "merge/method.h"

#include <string.h>

#define METHODS(X)                                                                               \
    X(linear) X(slerp) X(nuslerp) X(multislerp) X(karcher) X(task_arithmetic) X(ties) X(dare_linear) \
    X(dare_ties) X(breadcrumbs) X(breadcrumbs_ties) X(della) X(della_linear) X(model_stock) X(sce)      \
    X(nearswap) X(arcee_fusion) X(ram) X(ramplus_tl) X(passthrough)

#define DECLARE(n) extern const struct alloy_method alloy_method_##n __attribute__((weak));
METHODS(DECLARE)
#undef DECLARE

#define ENTRY(n) &alloy_method_##n,
static const struct alloy_method *const g_all[] = {METHODS(ENTRY)};
#undef ENTRY

static size_t g_count;
static const struct alloy_method *g_methods[sizeof g_all / sizeof g_all[0]];

static void init_registry(void)
{
    if (g_count) return;
    for (size_t i = 0; i < sizeof g_all / sizeof g_all[0]; i++)
        if (g_all[i]) g_methods[g_count++] = g_all[i];
}

const struct alloy_method *alloy_method_find(const char *name)
{
    init_registry();
    for (size_t i = 0; i < g_count; i++)
        if (strcmp(g_methods[i]->name, name) == 0) return g_methods[i];
    return NULL;
}

size_t alloy_method_count(void)
{
    init_registry();
    return g_count;
}

const struct alloy_method *alloy_method_at(size_t i)
{
    init_registry();
    return i < g_count ? g_methods[i] : NULL;
}

int alloy_method_param(const struct alloy_method *m, const char *name)
{
    for (int k = 0; k < m->nparams; k++)
        if (strcmp(m->params[k].name, name) == 0) return k;
    return -1;
}
