/*
 * moe_config.c — reads the YAML of `alloy moe` into struct alloy_moe_config
 * (moe_config.h).
 *
 * DESIGN
 *   Stage 1 is the merge config's (yaml_tree.c); stage 2 walks mergekit-moe's
 *   fixed schema
 *
 *     base_model: M   gate_mode: G   dtype: D   experts_per_token: K
 *     architecture: A
 *     experts / shared_experts: [{source_model, positive_prompts,
 *                                 negative_prompts, noise_scale, residual_scale}]
 *
 *   with config.c's typed access, then applies mergekit's checks that need
 *   no model (moe/config.py is_bad_config; shared experts' prompts on all or
 *   none, as scripts/moe.py asserts). The checks that need the models (the
 *   output architecture, same shapes) are the assembler's (engine/moe.c).
 */
#include "core/internal.h"
#include "config/moe_config.h"
#include "config/yaml_tree.h"

#include <float.h>
#include <math.h>
#include <stdio.h>

static const char *const g_gates[] = {"hidden", "hidden_avg", "hidden_last", "cheap_embed", "random",
                                      "uniform_random", NULL};

const char *alloy_moe_gate_name(enum alloy_moe_gate g) { return g_gates[g]; }

static int prompts(struct cfgp *P, const struct ynode *e, const char *name, const char *where, char ***out, size_t *n)
{
    char key[96], d[96];
    snprintf(key, sizeof key, "%s.%s", where, name);
    const struct ynode *v = alloy_cfg_map_val(e, name);
    if (!v) return 0;
    if (v->kind != Y_SEQ || v->n > ALLOY_MOE_MAX_PROMPTS)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected a list of at most %d strings, found %s",
                             ALLOY_MOE_MAX_PROMPTS, alloy_cfg_describe(v, d, sizeof d));
    if (!(*out = alloy_xcalloc(v->n ? v->n : 1, sizeof **out))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < v->n; i++) {
        *n = i + 1;
        if (v->kids[i]->kind != Y_SCALAR)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->kids[i]->pos, key, "expected a string, found %s",
                                 alloy_cfg_describe(v->kids[i], d, sizeof d));
        if (alloy_cfg_get_string(P, v->kids[i], key, &(*out)[i])) return (int)P->err->status;
        if (!(*out)[i]) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->kids[i]->pos, key, "expected a string, found null");
    }
    return 0;
}

static int scale(struct cfgp *P, const struct ynode *e, const char *name, const char *where, double *out, int *has)
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s", where, name);
    const struct ynode *v = alloy_cfg_map_val(e, name);
    if (!v) return 0;
    if (alloy_cfg_get_number(P, v, key, out)) return (int)P->err->status;
    if (!isfinite(*out) || *out < 0 || *out > FLT_MAX) /* past float32's range every nonzero weight becomes Inf */
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected a finite number from 0 to 3.4e38 (float32's "
                             "range), found %s", v->text);
    if (has) *has = 1;
    return 0;
}

static int expert(struct cfgp *P, const struct ynode *e, const char *where, struct alloy_moe_expert *x)
{
    static const char *const keys[] = {"source_model", "positive_prompts", "negative_prompts", "noise_scale",
                                       "residual_scale", NULL};
    char key[96];
    if (alloy_cfg_check_map(P, e, where, where, keys)) return (int)P->err->status;
    x->pos = e->pos;
    x->residual_scale = 1;
    snprintf(key, sizeof key, "%s.source_model", where);
    const struct ynode *v = alloy_cfg_map_val(e, "source_model");
    if (!v) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, e->pos, key, "expected a model, found nothing");
    if (alloy_cfg_get_string(P, v, key, &x->source_model)) return (int)P->err->status;
    if (!x->source_model || !x->source_model[0])
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected a model, found ''");
    if (prompts(P, e, "positive_prompts", where, &x->positive, &x->npositive) ||
        prompts(P, e, "negative_prompts", where, &x->negative, &x->nnegative) ||
        scale(P, e, "noise_scale", where, &x->noise_scale, NULL) ||
        scale(P, e, "residual_scale", where, &x->residual_scale, &x->has_residual_scale))
        return (int)P->err->status;
    return 0;
}

static int expert_list(struct cfgp *P, const struct ynode *root, const char *name, int required,
                       struct alloy_moe_expert **out, size_t *n)
{
    char d[96], where[64];
    const struct ynode *v = alloy_cfg_map_val(root, name);
    if (!v && !required) return 0;
    if (!v || v->kind != Y_SEQ || (required && v->n == 0) || v->n > ALLOY_MOE_MAX_EXPERTS)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v ? v->pos : root->pos, name, "expected a list of 1 to %d "
                             "{source_model: M, positive_prompts: [...]}, found %s", ALLOY_MOE_MAX_EXPERTS,
                             v ? alloy_cfg_describe(v, d, sizeof d) : "nothing");
    if (!(*out = alloy_xcalloc(v->n ? v->n : 1, sizeof **out))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < v->n; i++) {
        *n = i + 1; /* freed by alloy_moe_config_free even when incomplete */
        snprintf(where, sizeof where, "%s[%zu]", name, i);
        if (expert(P, v->kids[i], where, &(*out)[i])) return (int)P->err->status;
    }
    return 0;
}

static int enum_key(struct cfgp *P, const struct ynode *root, const char *name, const char *const *names, int *out)
{
    char d[96], list[160] = "";
    const struct ynode *v = alloy_cfg_map_val(root, name);
    if (!v) return 0;
    for (int i = 0; names[i]; i++) {
        if (v->kind == Y_SCALAR && strcmp(v->text, names[i]) == 0) {
            *out = i;
            return 0;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
    }
    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, name, "expected one of: %s, found %s", list,
                         alloy_cfg_describe(v, d, sizeof d));
}

static int scalars(struct cfgp *P, const struct ynode *root, struct alloy_moe_config *c)
{
    const struct ynode *v = alloy_cfg_map_val(root, "base_model");
    if (!v) return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, "base_model", "expected a model, found nothing");
    if (alloy_cfg_get_string(P, v, "base_model", &c->base_model)) return (int)P->err->status;
    if (!c->base_model || !c->base_model[0])
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "base_model", "expected a model, found ''");
    int g = ALLOY_GATE_HIDDEN;
    if (enum_key(P, root, "gate_mode", g_gates, &g)) return (int)P->err->status;
    c->gate = (enum alloy_moe_gate)g;
    c->experts_per_token = 2;
    if ((v = alloy_cfg_map_val(root, "experts_per_token"))) {
        double k = 0;
        if (alloy_cfg_get_number(P, v, "experts_per_token", &k)) return (int)P->err->status;
        if (!(k >= 1 && k <= ALLOY_MOE_MAX_EXPERTS && k == floor(k)))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "experts_per_token", "expected a whole number >= 1, "
                                 "found %s", v->text);
        c->experts_per_token = (int)k;
    }
    if ((v = alloy_cfg_map_val(root, "architecture")) &&
        alloy_cfg_get_string(P, v, "architecture", &c->architecture))
        return (int)P->err->status;
    if ((v = alloy_cfg_map_val(root, "dtype"))) {
        char d[96];
        if (v->kind != Y_SCALAR || alloy_dtype_parse(v->text, 1, &c->dtype) ||
            !(c->dtype == ALLOY_DTYPE_F32 || c->dtype == ALLOY_DTYPE_F16 || c->dtype == ALLOY_DTYPE_BF16))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "dtype", "expected float32, float16 or bfloat16, "
                                 "found %s", alloy_cfg_describe(v, d, sizeof d));
        c->has_dtype = 1;
    }
    return 0;
}

static int same_prompts(const struct alloy_moe_expert *a, const struct alloy_moe_expert *b)
{
    if (a->npositive != b->npositive) return 0;
    for (size_t i = 0; i < a->npositive; i++)
        if (strcmp(a->positive[i], b->positive[i]) != 0) return 0;
    return 1;
}

/* mergekit's is_bad_config: what makes a MoE that no router could tell apart. */
static int validate(struct cfgp *P, const struct ynode *root, struct alloy_moe_config *c, int allow_crimes)
{
    const struct ynode *k = alloy_cfg_map_val(root, "experts_per_token"); /* absent: the default 2 */
    for (size_t i = 1; i < c->nshared; i++) /* mergekit's build(): all or none */
        if (!c->shared[i].npositive != !c->shared[0].npositive)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, c->shared[i].pos, "positive_prompts", "expected prompts on "
                                 "every shared expert or on none, found them on shared_experts[%zu] only",
                                 c->shared[0].npositive ? (size_t)0 : i);
    if ((size_t)c->experts_per_token > c->nexperts)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, k ? k->pos : root->pos, "experts_per_token", "expected at most "
                             "the %zu experts, found %d", c->nexperts, c->experts_per_token);
    if (c->gate == ALLOY_GATE_RANDOM) return 0;
    for (size_t i = 0; i < c->nexperts; i++)
        if (!c->experts[i].npositive)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, c->experts[i].pos, "positive_prompts", "expected prompts for "
                                 "experts[%zu] with gate_mode %s (only random needs none), found nothing", i,
                                 g_gates[c->gate]);
    if (allow_crimes || c->nexperts < 2) return 0;
    int prompts_same = 1, models_same = 1;
    for (size_t i = 1; i < c->nexperts; i++) {
        prompts_same &= same_prompts(&c->experts[0], &c->experts[i]);
        models_same &= strcmp(c->experts[0].source_model, c->experts[i].source_model) == 0;
    }
    if (prompts_same)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, c->experts[1].pos, "positive_prompts", "expected different prompts "
                             "per expert (a router cannot tell them apart), found the same for all");
    if (models_same)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, c->experts[1].pos, "source_model", "expected different expert "
                             "models (or --i-understand-this-is-not-useful-without-training), found %s for all",
                             c->experts[0].source_model);
    return 0;
}

static int top_level(struct cfgp *P, const struct ynode *root, struct alloy_moe_config *c, int allow_crimes)
{
    static const char *const keys[] = {"base_model", "experts", "gate_mode", "dtype", "experts_per_token",
                                       "shared_experts", "architecture", NULL};
    char d[96];
    if (root->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, NULL, "expected a mapping with base_model: and experts:, "
                             "found %s", alloy_cfg_describe(root, d, sizeof d));
    if (alloy_cfg_check_map(P, root, NULL, "the top level", keys) || scalars(P, root, c) ||
        expert_list(P, root, "experts", 1, &c->experts, &c->nexperts) ||
        expert_list(P, root, "shared_experts", 0, &c->shared, &c->nshared))
        return (int)P->err->status;
    return validate(P, root, c, allow_crimes);
}

static void free_experts(struct alloy_moe_expert *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(x[i].source_model);
        for (size_t k = 0; k < x[i].npositive; k++) free(x[i].positive[k]);
        for (size_t k = 0; k < x[i].nnegative; k++) free(x[i].negative[k]);
        free(x[i].positive);
        free(x[i].negative);
    }
    free(x);
}

void alloy_moe_config_free(struct alloy_moe_config *c)
{
    if (!c) return;
    free_experts(c->experts, c->nexperts);
    free_experts(c->shared, c->nshared);
    free(c->base_model);
    free(c->architecture);
    free(c->path);
    free(c);
}

int alloy_moe_config_parse(const char *text, size_t len, const char *path, int allow_crimes,
                           struct alloy_moe_config **out, struct alloy_err *err)
{
    if (!path) path = "<config>";
    *out = NULL;
    if (len > ALLOY_CONFIG_MAX_BYTES)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: config is %zu bytes, more than the %zu allowed", path, len,
                             (size_t)ALLOY_CONFIG_MAX_BYTES);
    struct alloy_moe_config *c = alloy_xcalloc(1, sizeof *c);
    if (!c || !(c->path = alloy_xstrdup(path))) {
        alloy_moe_config_free(c);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    struct cfgp P = {.path = path, .text = text ? text : "", .len = text ? len : 0, .err = err};
    struct ynode *root = NULL;
    int rc = alloy_yaml_tree_build(&P, &root);
    if (!rc && (!root || (root->kind == Y_SCALAR && alloy_yaml_scalar_type(root, NULL) == ALLOY_YAML_NULL)))
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: empty config: expected base_model: and experts:", path);
    if (!rc) rc = top_level(&P, root, c, allow_crimes);
    alloy_yaml_tree_free(&P);
    if (rc) {
        alloy_moe_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int alloy_moe_config_load(const char *path, int allow_crimes, struct alloy_moe_config **out, struct alloy_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = alloy_read_file(path, ALLOY_CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = alloy_moe_config_parse(text, len, path, allow_crimes, out, err);
    free(text);
    return rc;
}
