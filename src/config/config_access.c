/*
 * config_access.c — typed access to the YAML tree for the config readers
 * (config.c, lora_merge_config.c, moe_config.c, documents.c).
 *
 * DESIGN
 *   Every read of a value goes through these functions, so each visit is
 *   charged to the stage-2 budgets (ALLOY_CONFIG_MAX_EXPAND visits, 64 MiB of
 *   copied string bytes: aliases cannot make a small text expand without
 *   bound), and a value of the wrong kind gets one message in the house form
 *   "<path>:<line>:<col>: <key>: expected ..., found ...". An unknown key in
 *   a mapping is named with the allowed ones and, when one is within two
 *   edits, a "did you mean".
 */
#include "config/yaml_tree.h"
#include "core/internal.h"

#include <stdio.h>
#include <string.h>

#define MAX_COPY_BYTES ((size_t)64 << 20) /* string bytes copied into the result */

/* Charges one visit (and copied bytes) to the stage-2 budgets. */
int alloy_cfg_charge(struct cfgp *P, const struct ynode *n, size_t bytes)
{
    if (++P->work > ALLOY_CONFIG_MAX_EXPAND || (P->bytes += bytes) > MAX_COPY_BYTES)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, NULL, "the config expands (through aliases) to more than %zu values "
                    "or %zu bytes", (size_t)ALLOY_CONFIG_MAX_EXPAND, MAX_COPY_BYTES);
    return 0;
}

/* A short description of a value for "found ..." in messages. */
const char *alloy_cfg_describe(const struct ynode *n, char *buf, size_t size)
{
    double v;
    if (n->kind == Y_SEQ) return n->n ? "a list" : "an empty list";
    if (n->kind == Y_MAP) return "a mapping";
    switch (alloy_yaml_scalar_type(n, &v)) {
    case ALLOY_YAML_NULL: return "null (an empty value)";
    case ALLOY_YAML_BOOL: snprintf(buf, size, "the boolean %s", n->text); break;
    case ALLOY_YAML_INT:
    case ALLOY_YAML_FLOAT: snprintf(buf, size, "the number %.60s", n->text); break;
    default: snprintf(buf, size, "'%.40s%s'", n->text, n->len > 40 ? "..." : ""); break;
    }
    return buf;
}

/* A string value. Null gives *out = NULL (an absent optional key). */
int alloy_cfg_get_string(struct cfgp *P, const struct ynode *n, const char *key, char **out)
{
    char d[96];
    *out = NULL;
    if (n->kind != Y_SCALAR)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a string, found %s", alloy_cfg_describe(n, d, sizeof d));
    if (alloy_cfg_charge(P, n, n->len + 1)) return (int)P->err->status;
    if (alloy_yaml_scalar_type(n, NULL) == ALLOY_YAML_NULL) return 0;
    if (!(*out = alloy_xstrdup(n->text))) return alloy_cfg_nomem(P);
    return 0;
}

/* The value mergekit would get for a float field: YAML numbers and booleans,
 * and strings pydantic can convert. -1 otherwise (no message). */
int alloy_cfg_to_number(const struct ynode *n, double *out)
{
    if (n->kind != Y_SCALAR) return -1;
    int t = alloy_yaml_scalar_type(n, out);
    if (t == ALLOY_YAML_BOOL || t == ALLOY_YAML_INT || t == ALLOY_YAML_FLOAT) return 0;
    if (t == ALLOY_YAML_STR && alloy_yaml_coerce_number(n->text, n->len, out) == 0) return 0;
    return -1;
}

int alloy_cfg_get_number(struct cfgp *P, const struct ynode *n, const char *key, double *out)
{
    char d[96];
    if (alloy_cfg_charge(P, n, 0)) return (int)P->err->status;
    if (alloy_cfg_to_number(n, out) == 0) return 0;
    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a number, found %s", alloy_cfg_describe(n, d, sizeof d));
}

int alloy_cfg_is_null(const struct ynode *n) { return n->kind == Y_SCALAR && alloy_yaml_scalar_type(n, NULL) == ALLOY_YAML_NULL; }

/* Value of key `name` in mapping m, or NULL. */
struct ynode *alloy_cfg_map_get(const struct ynode *m, const char *name)
{
    for (size_t i = 0; i + 1 < m->n; i += 2)
        if (strcmp(m->kids[i]->text, name) == 0) return m->kids[i + 1];
    return NULL;
}

/* Like map_get, but a null value counts as absent. */
struct ynode *alloy_cfg_map_val(const struct ynode *m, const char *name)
{
    struct ynode *v = alloy_cfg_map_get(m, name);
    return v && !alloy_cfg_is_null(v) ? v : NULL;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[40];
    if (la >= 40 || lb >= 40) return 99;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* m must be a mapping whose keys are all in `allowed` (NULL-terminated). */
int alloy_cfg_check_map(struct cfgp *P, const struct ynode *m, const char *key, const char *where,
                     const char *const *allowed)
{
    char d[96];
    if (m->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, m->pos, key, "expected a mapping, found %s", alloy_cfg_describe(m, d, sizeof d));
    if (alloy_cfg_charge(P, m, 0)) return (int)P->err->status;
    for (size_t i = 0; i < m->n; i += 2) {
        const struct ynode *k = m->kids[i];
        const char *const *a = allowed;
        while (*a && strcmp(*a, k->text) != 0) a++;
        if (*a) continue;
        char list[256] = "", hint[96] = "";
        size_t used = 0;
        for (a = allowed; *a; a++) {
            used += (size_t)snprintf(list + used, used < sizeof list ? sizeof list - used : 0, "%s%s",
                                     a == allowed ? "" : ", ", *a);
            if (used >= sizeof list) break;
            if (!hint[0] && edit_distance(k->text, *a) <= 2) snprintf(hint, sizeof hint, "; did you mean '%s'?", *a);
        }
        char shown[64];
        snprintf(shown, sizeof shown, "%.60s", k->text);
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, k->pos, NULL, "unknown key '%s' in %s (expected one of: %s)%s", shown, where,
                    list, hint);
    }
    return 0;
}

int alloy_cfg_missing(struct cfgp *P, const struct ynode *m, const char *where, const char *name)
{
    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, m->pos, NULL, "%s: missing required key '%s'", where, name);
}
