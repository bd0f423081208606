/*
 * lora_merge_config.c — reads the YAML of `alloy lora merge` into struct
 * alloy_lora_merge_config (lora_merge_config.h).
 *
 * DESIGN
 *   Stage 1 is the merge config's (yaml_tree.c: bounded tree, line:column on
 *   every node); stage 2 walks the small fixed schema
 *
 *     merge_method: NAME
 *     models: [{model: DIR, parameters: {weight: W}}, ...]
 *     rank: N   density: D   majority_sign_method: total|frequency   svd_clamp: Q
 *
 *   with config.c's typed access. An option that the chosen method does not
 *   use is an error rather than silently ignored (PEFT ignores it), and so is
 *   a missing density for a pruning method (PEFT fails deep inside torch).
 */
#include "config/lora_merge_config.h"
#include "config/yaml_tree.h"

#include <float.h>
#include <math.h>
#include <stdio.h>

#define KEY_MAX 96

static int input_entry(struct cfgp *P, const struct ynode *e, size_t i, struct alloy_lora_input *in)
{
    static const char *const keys[] = {"model", "parameters", NULL}, *const pkeys[] = {"weight", NULL};
    char k[32], sub[KEY_MAX];
    snprintf(k, sizeof k, "models[%zu]", i);
    if (alloy_cfg_check_map(P, e, k, k, keys)) return (int)P->err->status;
    in->pos = e->pos;
    const struct ynode *v = alloy_cfg_map_val(e, "model");
    snprintf(sub, sizeof sub, "%s.model", k);
    if (!v) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, e->pos, sub, "expected an adapter folder, found nothing");
    if (alloy_cfg_get_string(P, v, sub, &in->adapter)) return (int)P->err->status;
    if (!in->adapter[0]) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, sub, "expected an adapter folder, found ''");
    const struct ynode *pm = alloy_cfg_map_val(e, "parameters");
    snprintf(sub, sizeof sub, "%s.parameters", k);
    if (!pm) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, e->pos, sub, "expected {weight: W}, found nothing");
    if (alloy_cfg_check_map(P, pm, sub, sub, pkeys)) return (int)P->err->status;
    snprintf(sub, sizeof sub, "%s.parameters.weight", k);
    if (!(v = alloy_cfg_map_val(pm, "weight")))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, pm->pos, sub, "expected a number, found nothing");
    if (alloy_cfg_get_number(P, v, sub, &in->weight)) return (int)P->err->status;
    if (!isfinite(in->weight) || fabs(in->weight) > FLT_MAX) /* past float32's range the merged factors overflow */
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, sub, "expected a finite number within float32's range "
                             "(|w| <= 3.4e38), found %s", v->text);
    return 0;
}

static int inputs(struct cfgp *P, const struct ynode *root, struct alloy_lora_merge_config *c)
{
    char d[96];
    const struct ynode *n = alloy_cfg_map_val(root, "models");
    if (!n || n->kind != Y_SEQ || n->n == 0)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n ? n->pos : root->pos, "models", "expected a non-empty list of "
                             "{model: ADAPTER, parameters: {weight: W}}, found %s",
                             n ? alloy_cfg_describe(n, d, sizeof d) : "nothing");
    if (n->n > ALLOY_LORA_MAX_ADAPTERS)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, "models", "expected at most %d adapters, found %zu",
                             ALLOY_LORA_MAX_ADAPTERS, n->n);
    if (!(c->inputs = alloy_xcalloc(n->n, sizeof *c->inputs))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < n->n; i++) {
        c->ninputs = i + 1; /* freed by alloy_lora_merge_config_free even when incomplete */
        if (input_entry(P, n->kids[i], i, &c->inputs[i])) return (int)P->err->status;
    }
    return 0;
}

/* A number option in (lo, hi] that only some methods take; *out unchanged when absent. */
static int option(struct cfgp *P, const struct ynode *root, const char *key, const struct alloy_lora_method *m,
                  int allowed, const char *who, double lo, double hi, double *out)
{
    const struct ynode *v = alloy_cfg_map_val(root, key);
    if (!v) return 0;
    if (!allowed)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "used only by %s, found it with merge_method %s", who, m->name);
    if (alloy_cfg_get_number(P, v, key, out)) return (int)P->err->status;
    if (!(*out > lo && *out <= hi))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected a number in (%g, %g], found %s", lo, hi, v->text);
    return 0;
}

static int options(struct cfgp *P, const struct ynode *root, struct alloy_lora_merge_config *c)
{
    const struct alloy_lora_method *m = c->method;
    double rank = 0;
    if (option(P, root, "rank", m, m->svd, "the svd types", 0, ALLOY_LORA_MAX_RANK, &rank)) return (int)P->err->status;
    if (rank != floor(rank))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, alloy_cfg_map_val(root, "rank")->pos, "rank",
                             "expected a whole number, found %g", rank);
    c->rank = (uint32_t)rank;
    int prunes = m->prune != ALLOY_LORA_PRUNE_NONE;
    c->density = 0;
    if (option(P, root, "density", m, prunes, "the ties, dare and magnitude_prune types", 0, 1, &c->density))
        return (int)P->err->status;
    if (prunes && c->density == 0)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, "density", "merge_method %s needs density: (the fraction "
                             "kept, in (0, 1]), found nothing", m->name);
    if (!prunes) c->density = 1;
    if (option(P, root, "svd_clamp", m, m->svd, "the svd types", 0, 1, &c->svd_clamp)) return (int)P->err->status;
    const struct ynode *v = alloy_cfg_map_val(root, "majority_sign_method");
    if (!v) return 0;
    if (!m->ties)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "majority_sign_method", "used only by the ties types, found "
                             "it with merge_method %s", m->name);
    char *s = NULL, d[96];
    if (alloy_cfg_get_string(P, v, "majority_sign_method", &s)) return (int)P->err->status;
    int ok = s && (strcmp(s, "total") == 0 || strcmp(s, "frequency") == 0);
    c->frequency = ok && strcmp(s, "frequency") == 0;
    free(s);
    if (!ok)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "majority_sign_method", "expected total or frequency, found %s",
                             alloy_cfg_describe(v, d, sizeof d));
    return 0;
}

static int top_level(struct cfgp *P, const struct ynode *root, struct alloy_lora_merge_config *c)
{
    static const char *const keys[] = {"merge_method", "models", "rank", "density", "majority_sign_method",
                                       "svd_clamp", NULL};
    char d[96];
    if (root->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, NULL, "expected a mapping with merge_method: and models:, "
                             "found %s", alloy_cfg_describe(root, d, sizeof d));
    if (alloy_cfg_check_map(P, root, NULL, "the top level", keys)) return (int)P->err->status;
    const struct ynode *v = alloy_cfg_map_val(root, "merge_method");
    if (!v) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, "merge_method", "expected one of: %s, found nothing",
                                 alloy_lora_method_names);
    if (v->kind != Y_SCALAR || !(c->method = alloy_lora_method_find(v->text)))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "merge_method", "expected one of: %s, found %s",
                             alloy_lora_method_names, alloy_cfg_describe(v, d, sizeof d));
    if (inputs(P, root, c)) return (int)P->err->status;
    return options(P, root, c);
}

void alloy_lora_merge_config_free(struct alloy_lora_merge_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->ninputs; i++) free(c->inputs[i].adapter);
    free(c->inputs);
    free(c->path);
    free(c);
}

int alloy_lora_merge_config_parse(const char *text, size_t len, const char *path, struct alloy_lora_merge_config **out,
                            struct alloy_err *err)
{
    if (!path) path = "<config>";
    *out = NULL;
    if (len > ALLOY_CONFIG_MAX_BYTES)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: config is %zu bytes, more than the %zu allowed", path, len,
                             (size_t)ALLOY_CONFIG_MAX_BYTES);
    struct alloy_lora_merge_config *c = alloy_xcalloc(1, sizeof *c);
    if (!c || !(c->path = alloy_xstrdup(path))) {
        alloy_lora_merge_config_free(c);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    struct cfgp P = {.path = path, .text = text ? text : "", .len = text ? len : 0, .err = err};
    struct ynode *root = NULL;
    int rc = alloy_yaml_tree_build(&P, &root);
    if (!rc && (!root || (root->kind == Y_SCALAR && alloy_yaml_scalar_type(root, NULL) == ALLOY_YAML_NULL)))
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: empty config: expected merge_method: and models:", path);
    if (!rc) rc = top_level(&P, root, c);
    alloy_yaml_tree_free(&P);
    if (rc) {
        alloy_lora_merge_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int alloy_lora_merge_config_load(const char *path, struct alloy_lora_merge_config **out, struct alloy_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = alloy_read_file(path, ALLOY_CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = alloy_lora_merge_config_parse(text, len, path, out, err);
    free(text);
    return rc;
}
