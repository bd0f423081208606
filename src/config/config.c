/*
 * config.c — reads a mergekit YAML merge config into struct alloy_config.
 *
 * DESIGN
 *   Two stages. (1) yaml_tree.c turns the text into a bounded tree of nodes
 *   with their line:column. (2) Here, the tree is converted to
 *   the structs of config.h against mergekit's schema (mergekit/config.py,
 *   mergekit/common.py, mergekit/tokenizer/config.py; spec §2): every key is
 *   checked (unknown keys are errors here, pydantic ignores them), every
 *   value typed, and messages read "<path>:<line>:<col>: <key>: <expected,
 *   found>".
 *
 * INVARIANTS
 *   The library never prints. On error *out is NULL and everything is freed.
 *   Recursion in stage 2 follows the schema, whose depth is fixed (< 12);
 *   aliases may make several places share one ynode, so every visit is
 *   charged to a budget (ALLOY_CONFIG_MAX_EXPAND) and copied string bytes to
 *   another, bounding the size of the result.
 */
#include "config/yaml_tree.h"
#include "core/internal.h"
#include "core/strmap.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <yaml.h>

#define KEY_MAX 256 /* a key path in messages: slices[0].sources[1].parameters.weight */

/* ---------------------------------------------------------------- model references */

/* Validates and normalises PATH[@REV] (one part of a string reference). */
static const char *part_problem(const char *s, size_t len)
{
    const char *at = memchr(s, '@', len);
    if (at && memchr(at + 1, '@', len - (size_t)(at + 1 - s))) return "more than one '@' (expected PATH or PATH@REVISION)";
    if (len == 0 || at == s) return "the model path is empty";
    if (at && at + 1 == s + len) return "the revision after '@' is empty";
    return NULL;
}

/* PATH[@REV] or, for a LoRA adapter applied to the model, PATH[@REV]+ADAPTER[@REV]. */
const char *alloy_config_ref_problem(const char *s, size_t len)
{
    const char *plus = memchr(s, '+', len);
    if (!plus) return part_problem(s, len);
    size_t first = (size_t)(plus - s);
    if (memchr(plus + 1, '+', len - first - 1)) return "more than one '+' (expected PATH[@REVISION][+LORA[@REVISION]])";
    if (first + 1 == len) return "the adapter path after '+' is empty";
    const char *why = part_problem(s, first);
    return why ? why : part_problem(plus + 1, len - first - 1);
}

static int model_path(struct cfgp *P, const struct ynode *n, const char *key, const char *s, size_t len, char **out)
{
    const char *why = alloy_config_ref_problem(s, len);
    if (why)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "invalid model reference '%.*s': %s", (int)(len > 200 ? 200 : len),
                    s, why);
    if (!(*out = alloy_xmalloc(len + 1))) return alloy_cfg_nomem(P);
    memcpy(*out, s, len);
    (*out)[len] = 0;
    return 0;
}

/* {model: ..., lora: ADAPTER}: the reference becomes MODEL+ADAPTER (null: no adapter). */
static int add_lora(struct cfgp *P, const struct ynode *v, const char *key, char **out)
{
    if (!v || alloy_cfg_is_null(v) || !*out) return 0;
    if (v->kind != Y_SCALAR || !v->len || strchr(v->text, '+') || strchr(*out, '+'))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected the path of a LoRA adapter folder");
    if (alloy_cfg_charge(P, v, v->len + 1)) return (int)P->err->status;
    char *both = alloy_xasprintf("%s+%s", *out, v->text);
    if (!both) return alloy_cfg_nomem(P);
    free(*out);
    *out = both;
    return 0;
}

/* A model reference: "path[@rev][+lora[@rev]]" or {model, lora, override_architecture} (lora: see
 * model_ref). Null leaves *out NULL. */
static int model_ref_body(struct cfgp *P, const struct ynode *n, const char *key, char **out)
{
    static const char *const ref_keys[] = {"model", "lora", "override_architecture", NULL};
    static const char *const path_keys[] = {"path", "revision", NULL};
    char d[96], sub[KEY_MAX];
    *out = NULL;
    if (n->kind == Y_SEQ)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a model reference (PATH[@REVISION] or "
                    "{model: {path, revision}}), found a list");
    if (n->kind == Y_SCALAR) {
        if (alloy_cfg_charge(P, n, n->len + 1)) return (int)P->err->status;
        if (alloy_cfg_is_null(n)) return 0;
        const char *plus = strchr(n->text, '+');
        if (plus && strchr(plus + 1, '+'))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "can't parse model reference '%.200s': more than one '+' "
                        "(expected PATH[@REVISION][+LORA[@REVISION]])", n->text);
        return model_path(P, n, key, n->text, n->len, out);
    }
    snprintf(sub, sizeof sub, "%.180s", key);
    if (alloy_cfg_check_map(P, n, key, sub, ref_keys)) return (int)P->err->status;
    const struct ynode *v;
    snprintf(sub, sizeof sub, "%.180s.override_architecture", key);
    if ((v = alloy_cfg_map_val(n, "override_architecture")))
        return alloy_cfg_err(P, ALLOY_ERR_UNSUPPORTED, v->pos, sub, "override_architecture is not supported yet");
    const struct ynode *m = alloy_cfg_map_val(n, "model");
    snprintf(sub, sizeof sub, "%.180s.model", key);
    if (!m) return alloy_cfg_missing(P, n, key, "model");
    if (m->kind == Y_SCALAR) {
        if (alloy_cfg_charge(P, m, m->len + 1)) return (int)P->err->status;
        return model_path(P, m, sub, m->text, m->len, out);
    }
    if (alloy_cfg_check_map(P, m, sub, sub, path_keys)) return (int)P->err->status;
    char *path = NULL, *rev = NULL;
    const struct ynode *pn = alloy_cfg_map_val(m, "path"), *rn = alloy_cfg_map_val(m, "revision");
    if (!pn) return alloy_cfg_missing(P, m, sub, "path");
    char pk[KEY_MAX], rk[KEY_MAX];
    snprintf(pk, sizeof pk, "%.180s.path", sub);
    snprintf(rk, sizeof rk, "%.180s.revision", sub);
    if (alloy_cfg_get_string(P, pn, pk, &path)) return (int)P->err->status;
    if (rn && alloy_cfg_get_string(P, rn, rk, &rev)) { free(path); return (int)P->err->status; }
    int rc = 0;
    if (strchr(path, '@'))
        rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, pn->pos, pk, "'%.200s' contains '@'; give the revision under revision:", path);
    else if (!path[0])
        rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, pn->pos, pk, "the model path is empty");
    else if (rev && (!rev[0] || strchr(rev, '@')))
        rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, rn->pos, rk, "expected a revision (branch, tag or commit), found %s",
                  alloy_cfg_describe(rn, d, sizeof d));
    else if (rev && !(*out = alloy_xasprintf("%s@%s", path, rev)))
        rc = alloy_cfg_nomem(P);
    else if (!rev) { *out = path; path = NULL; }
    free(path);
    free(rev);
    return rc;
}

static int model_ref(struct cfgp *P, const struct ynode *n, const char *key, char **out)
{
    int rc = model_ref_body(P, n, key, out);
    if (rc || n->kind == Y_SCALAR) return rc;
    char lkey[KEY_MAX];
    snprintf(lkey, sizeof lkey, "%.180s.lora", key);
    rc = add_lora(P, alloy_cfg_map_val(n, "lora"), lkey, out);
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* A model reference that must be present and not null. */
static int required_ref(struct cfgp *P, const struct ynode *m, const char *where, const char *key, char **out)
{
    const struct ynode *v = alloy_cfg_map_get(m, "model");
    if (!v) return alloy_cfg_missing(P, m, where, "model");
    if (model_ref(P, v, key, out)) return (int)P->err->status;
    if (!*out)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, key, "expected a model reference (PATH[@REVISION]), found null");
    return 0;
}

/* ---------------------------------------------------------------- parameter settings */

/* A number, or a list of numbers (gradient). */
static int scalar_or_gradient(struct cfgp *P, const struct ynode *n, const char *key, struct alloy_setting *out)
{
    char d[96], ik[KEY_MAX];
    out->pos = n->pos;
    if (n->kind == Y_SCALAR) {
        out->kind = ALLOY_SETTING_SCALAR;
        return alloy_cfg_get_number(P, n, key, &out->value);
    }
    if (n->kind != Y_SEQ || n->n == 0)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a number or a list of numbers, found %s",
                    alloy_cfg_describe(n, d, sizeof d));
    out->kind = ALLOY_SETTING_GRADIENT;
    if (!(out->grad = alloy_xcalloc(n->n, sizeof *out->grad))) return alloy_cfg_nomem(P);
    out->ngrad = n->n;
    for (size_t i = 0; i < n->n; i++) {
        snprintf(ik, sizeof ik, "%.180s[%zu]", key, i);
        if (n->kids[i]->kind != Y_SCALAR)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->kids[i]->pos, ik, "a gradient is a list of numbers, found %s",
                        alloy_cfg_describe(n->kids[i], d, sizeof d));
        if (alloy_cfg_get_number(P, n->kids[i], ik, &out->grad[i])) return (int)P->err->status;
    }
    return 0;
}

static int setting(struct cfgp *P, const struct ynode *n, const char *key, struct alloy_setting *out)
{
    static const char *const cond_keys[] = {"filter", "value", NULL};
    char ik[KEY_MAX], vk[KEY_MAX];
    out->pos = n->pos;
    if (n->kind == Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "a {filter, value} entry must be inside a list: write "
                    "'- filter: ...' (mergekit rejects a bare mapping when it evaluates it)");
    if (n->kind == Y_SCALAR || n->n == 0 || n->kids[0]->kind != Y_MAP) {
        if (n->kind == Y_SEQ)
            for (size_t i = 0; i < n->n; i++)
                if (n->kids[i]->kind == Y_MAP) {
                    snprintf(ik, sizeof ik, "%.180s[%zu]", key, i);
                    return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->kids[i]->pos, ik, "a list holds either numbers (a gradient) "
                                "or {filter, value} entries, not both");
                }
        return scalar_or_gradient(P, n, key, out);
    }
    out->kind = ALLOY_SETTING_COND;
    if (!(out->conds = alloy_xcalloc(n->n, sizeof *out->conds))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < n->n; i++) {
        const struct ynode *e = n->kids[i];
        snprintf(ik, sizeof ik, "%.180s[%zu]", key, i);
        if (e->kind != Y_MAP)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, e->pos, ik, "a list holds either numbers (a gradient) or {filter, value} "
                        "entries, not both");
        if (alloy_cfg_check_map(P, e, ik, ik, cond_keys)) return (int)P->err->status;
        struct alloy_cond *c = &out->conds[out->nconds++];
        const struct ynode *f = alloy_cfg_map_val(e, "filter"), *v = alloy_cfg_map_get(e, "value");
        if (!v) return alloy_cfg_missing(P, e, ik, "value");
        snprintf(vk, sizeof vk, "%.180s.filter", ik);
        if (f && alloy_cfg_get_string(P, f, vk, &c->filter)) return (int)P->err->status;
        snprintf(vk, sizeof vk, "%.180s.value", ik);
        if (v->kind == Y_MAP || (v->kind == Y_SEQ && v->n && v->kids[0]->kind == Y_MAP))
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, vk, "expected a number or a list of numbers (conditional entries "
                        "do not nest)");
        if (scalar_or_gradient(P, v, vk, &c->value)) return (int)P->err->status;
    }
    return 0;
}

static int params(struct cfgp *P, const struct ynode *n, const char *key, struct alloy_params *out)
{
    char d[96], pk[KEY_MAX];
    if (!n || alloy_cfg_is_null(n)) return 0;
    if (n->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a mapping of parameter names to values, found %s",
                    alloy_cfg_describe(n, d, sizeof d));
    size_t cnt = n->n / 2;
    if (!cnt) return 0;
    out->names = alloy_xcalloc(cnt, sizeof *out->names);
    out->values = alloy_xcalloc(cnt, sizeof *out->values);
    out->pos = alloy_xcalloc(cnt, sizeof *out->pos);
    if (!out->names || !out->values || !out->pos) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < cnt; i++) {
        const struct ynode *k = n->kids[2 * i], *v = n->kids[2 * i + 1];
        if (alloy_cfg_charge(P, k, k->len + 1)) return (int)P->err->status;
        if (!(out->names[i] = alloy_xstrdup(k->text))) return alloy_cfg_nomem(P);
        out->pos[i] = k->pos;
        out->n = i + 1;
        snprintf(pk, sizeof pk, "%.180s.%.60s", key, k->text);
        if (setting(P, v, pk, &out->values[i])) return (int)P->err->status;
    }
    return 0;
}

/* ---------------------------------------------------------------- models / slices */

static void slice_free(struct alloy_slice *s)
{
    for (size_t i = 0; i < s->nsources; i++) {
        free(s->sources[i].model);
        alloy_params_free(&s->sources[i].params);
    }
    free(s->sources);
    free(s->base_model);
    alloy_params_free(&s->params);
}

/* A list that must not be empty; returns its node (or NULL with an error). */
static const struct ynode *expect_list(struct cfgp *P, const struct ynode *n, const char *key, const char *what)
{
    char d[96];
    if (n->kind != Y_SEQ) {
        alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a list of %s, found %s", what, alloy_cfg_describe(n, d, sizeof d));
        return NULL;
    }
    if (n->n == 0) {
        alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected at least one entry (a list of %s), found an empty list", what);
        return NULL;
    }
    return n;
}

static int models_list(struct cfgp *P, const struct ynode *n, struct alloy_config *c)
{
    static const char *const keys[] = {"model", "parameters", NULL};
    char ek[KEY_MAX], sub[KEY_MAX];
    if (!expect_list(P, n, "models", "{model: ..., parameters: ...} entries")) return (int)P->err->status;
    if (!(c->slices = alloy_xcalloc(1, sizeof *c->slices))) return alloy_cfg_nomem(P);
    c->nslices = 1;
    struct alloy_slice *s = &c->slices[0];
    s->pos = n->pos;
    if (!(s->sources = alloy_xcalloc(n->n, sizeof *s->sources))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i < n->n; i++) {
        const struct ynode *e = n->kids[i];
        snprintf(ek, sizeof ek, "models[%zu]", i);
        if (alloy_cfg_check_map(P, e, ek, ek, keys)) return (int)P->err->status;
        struct alloy_source *src = &s->sources[s->nsources++];
        src->pos = e->pos;
        snprintf(sub, sizeof sub, "%.180s.model", ek);
        if (required_ref(P, e, ek, sub, &src->model)) return (int)P->err->status;
        snprintf(sub, sizeof sub, "%.180s.parameters", ek);
        if (params(P, alloy_cfg_map_get(e, "parameters"), sub, &src->params)) return (int)P->err->status;
    }
    return 0;
}

static int layer_range(struct cfgp *P, const struct ynode *n, const char *key, long long out[2])
{
    char d[96], ik[KEY_MAX];
    if (n->kind != Y_SEQ)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected [start, end] (two layer indices, end exclusive), "
                    "found %s", alloy_cfg_describe(n, d, sizeof d));
    if (n->n != 2)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected [start, end] (two layer indices, end exclusive), "
                    "found a list of %zu", n->n);
    for (int i = 0; i < 2; i++) {
        const struct ynode *v = n->kids[i];
        double x = 0;
        snprintf(ik, sizeof ik, "%.180s[%d]", key, i);
        if (alloy_cfg_charge(P, v, 0)) return (int)P->err->status;
        if (alloy_cfg_to_number(v, &x) || x != floor(x) || fabs(x) > 2147483647.0)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, ik, "expected a layer index (an integer), found %s",
                        alloy_cfg_describe(v, d, sizeof d));
        out[i] = (long long)x;
    }
    if (out[0] < 0 || out[0] >= out[1])
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected 0 <= start < end, found [%lld, %lld]", out[0], out[1]);
    return 0;
}

static int slices_list(struct cfgp *P, const struct ynode *n, struct alloy_config *c)
{
    static const char *const slice_keys[] = {"sources", "base_model", "parameters", "residual_weight", NULL};
    static const char *const source_keys[] = {"model", "layer_range", "parameters", NULL};
    char sk[KEY_MAX], k2[KEY_MAX], k3[KEY_MAX];
    if (!expect_list(P, n, "slices", "{sources: [...]} entries")) return (int)P->err->status;
    if (!(c->slices = alloy_xcalloc(n->n, sizeof *c->slices))) return alloy_cfg_nomem(P);
    c->from_slices = 1;
    for (size_t i = 0; i < n->n; i++) {
        const struct ynode *e = n->kids[i];
        snprintf(sk, sizeof sk, "slices[%zu]", i);
        if (alloy_cfg_check_map(P, e, sk, sk, slice_keys)) return (int)P->err->status;
        struct alloy_slice *s = &c->slices[c->nslices++];
        s->pos = e->pos;
        const struct ynode *srcs = alloy_cfg_map_val(e, "sources"), *v;
        if (!srcs) return alloy_cfg_missing(P, e, sk, "sources");
        snprintf(k2, sizeof k2, "%.180s.sources", sk);
        if (!expect_list(P, srcs, k2, "{model, layer_range} entries")) return (int)P->err->status;
        if (!(s->sources = alloy_xcalloc(srcs->n, sizeof *s->sources))) return alloy_cfg_nomem(P);
        for (size_t j = 0; j < srcs->n; j++) {
            const struct ynode *se = srcs->kids[j];
            snprintf(k2, sizeof k2, "%.180s.sources[%zu]", sk, j);
            if (alloy_cfg_check_map(P, se, k2, k2, source_keys)) return (int)P->err->status;
            struct alloy_source *src = &s->sources[s->nsources++];
            src->pos = se->pos;
            snprintf(k3, sizeof k3, "%.180s.model", k2);
            if (required_ref(P, se, k2, k3, &src->model)) return (int)P->err->status;
            if (!(v = alloy_cfg_map_val(se, "layer_range"))) return alloy_cfg_missing(P, se, k2, "layer_range");
            snprintf(k3, sizeof k3, "%.180s.layer_range", k2);
            if (layer_range(P, v, k3, src->layer_range)) return (int)P->err->status;
            src->has_range = 1;
            long long want = s->sources[0].layer_range[1] - s->sources[0].layer_range[0];
            long long got = src->layer_range[1] - src->layer_range[0];
            if (got != want)
                return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, k3, "spans %lld layers but sources[0] spans %lld (all inputs "
                            "to a slice must contain the same number of layers)", got, want);
            snprintf(k3, sizeof k3, "%.180s.parameters", k2);
            if (params(P, alloy_cfg_map_get(se, "parameters"), k3, &src->params)) return (int)P->err->status;
        }
        snprintf(k2, sizeof k2, "%.180s.base_model", sk);
        if ((v = alloy_cfg_map_get(e, "base_model")) && model_ref(P, v, k2, &s->base_model)) return (int)P->err->status;
        snprintf(k2, sizeof k2, "%.180s.residual_weight", sk);
        double rw;
        if ((v = alloy_cfg_map_val(e, "residual_weight")) && alloy_cfg_get_number(P, v, k2, &rw)) return (int)P->err->status;
        snprintf(k2, sizeof k2, "%.180s.parameters", sk);
        if (params(P, alloy_cfg_map_get(e, "parameters"), k2, &s->params)) return (int)P->err->status;
    }
    return 0;
}

/* ---------------------------------------------------------------- top level */

int alloy_config_dtype_name(const char *s, enum alloy_dtype *out)
{
    static const struct { const char *name; enum alloy_dtype dt; } names[] = {
        {"bfloat16", ALLOY_DTYPE_BF16}, {"float16", ALLOY_DTYPE_F16}, {"float32", ALLOY_DTYPE_F32}};
    const char *name = strncmp(s, "torch.", 6) == 0 ? s + 6 : s;
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(names); i++)
        if (strcmp(name, names[i].name) == 0) { *out = names[i].dt; return 0; }
    return strcmp(name, "int64") == 0 ? 1 : -1;
}

static int dtype_value(struct cfgp *P, const struct ynode *n, const char *key, int *has, enum alloy_dtype *out)
{
    char *s = NULL, d[96];
    if (alloy_cfg_get_string(P, n, key, &s)) return (int)P->err->status;
    if (!s) return 0;
    int rc = 0, kind = alloy_config_dtype_name(s, out);
    if (kind == 0)
        *has = 1;
    else if (kind == 1)
        rc = alloy_cfg_err(P, ALLOY_ERR_UNSUPPORTED, n->pos, key, ALLOY_CONFIG_INT64_MSG);
    else
        rc = alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, ALLOY_CONFIG_DTYPE_MSG ", found %s", alloy_cfg_describe(n, d, sizeof d));
    free(s);
    return rc;
}

static int chat_template(struct cfgp *P, const struct ynode *n, struct alloy_config *c)
{
    static const char *const builtin[] = {"auto", "alpaca", "chatml", "llama3", "mistral", "exaone", NULL};
    char d[96];
    if (alloy_cfg_get_string(P, n, "chat_template", &c->chat_template)) return (int)P->err->status;
    const char *t = c->chat_template;
    if (!t) return 0;
    for (const char *const *b = builtin; *b; b++)
        if (strcmp(t, *b) == 0) return 0;
    if (strlen(t) < 20 || !strchr(t, '{'))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, "chat_template", "invalid chat template %s: expected auto, alpaca, "
                    "chatml, llama3, mistral, exaone or a Jinja template (at least 20 characters, containing '{')",
                    alloy_cfg_describe(n, d, sizeof d));
    return 0;
}

/* "base", "union" or a model reference (legacy spelling "model:REF" too). */
static int tokenizer_src(struct cfgp *P, const struct ynode *n, const char *key, struct alloy_config *c)
{
    c->tokenizer_pos = n->pos;
    if (n->kind == Y_SCALAR && !alloy_cfg_is_null(n)) {
        if (strcmp(n->text, "base") == 0 || strcmp(n->text, "union") == 0) {
            if (!(c->tokenizer_source = alloy_xstrdup(n->text))) return alloy_cfg_nomem(P);
            return 0;
        }
        if (strncmp(n->text, "model:", 6) == 0) {
            struct ynode tmp = *n;
            tmp.text = n->text + 6;
            tmp.len = n->len - 6;
            tmp.tag = YT_STR; /* "model:" alone is an empty path, not null */
            return model_ref(P, &tmp, key, &c->tokenizer_source);
        }
    }
    return model_ref(P, n, key, &c->tokenizer_source);
}

/* A whole number >= lo, for an int field. */
static int get_count(struct cfgp *P, const struct ynode *n, const char *key, long long lo, long long *out)
{
    char d[96];
    double v;
    if (alloy_cfg_charge(P, n, 0)) return (int)P->err->status;
    int t = n->kind == Y_SCALAR ? alloy_yaml_scalar_type(n, &v) : -1;
    if (t != ALLOY_YAML_INT || v < (double)lo || v > 9e15)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a whole number >= %lld, found %s", lo,
                    alloy_cfg_describe(n, d, sizeof d));
    *out = (long long)v;
    return 0;
}

/* A token's source: a model reference, {kind: model_token, model, token_id | token} or {kind: zero}. */
static int token_source(struct cfgp *P, const struct ynode *n, const char *key, struct alloy_token_cfg *t)
{
    static const char *const mt_keys[] = {"kind", "model", "token_id", "token", NULL};
    static const char *const zero_keys[] = {"kind", NULL};
    char sub[KEY_MAX], d[96];
    const struct ynode *kind = n->kind == Y_MAP ? alloy_cfg_map_val(n, "kind") : NULL;
    t->token_id = -1;
    if (!kind) {
        t->kind = ALLOY_TOKEN_MODEL;
        if (model_ref(P, n, key, &t->model)) return (int)P->err->status;
        if (!t->model)
            return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "expected a model reference, found null");
        return 0;
    }
    snprintf(sub, sizeof sub, "%.200s.kind", key);
    if (kind->kind == Y_SCALAR && strcmp(kind->text, "zero") == 0) {
        t->kind = ALLOY_TOKEN_ZERO;
        return alloy_cfg_check_map(P, n, key, key, zero_keys);
    }
    if (kind->kind != Y_SCALAR || strcmp(kind->text, "model_token") != 0)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, kind->pos, sub, "expected model_token or zero, found %s",
                    alloy_cfg_describe(kind, d, sizeof d));
    t->kind = ALLOY_TOKEN_MODEL_TOKEN;
    if (alloy_cfg_check_map(P, n, key, key, mt_keys)) return (int)P->err->status;
    snprintf(sub, sizeof sub, "%.200s.model", key);
    if (required_ref(P, n, key, sub, &t->model)) return (int)P->err->status;
    const struct ynode *id = alloy_cfg_map_val(n, "token_id"), *tok = alloy_cfg_map_val(n, "token");
    if (!id == !tok)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, key, "give exactly one of token_id and token, found %s",
                    id ? "both" : "neither");
    snprintf(sub, sizeof sub, "%.200s.%s", key, id ? "token_id" : "token");
    if (id) return get_count(P, id, sub, 0, &t->token_id);
    if (alloy_cfg_get_string(P, tok, sub, &t->src_token)) return (int)P->err->status;
    return 0;
}

/* tokenizer.tokens: {TOKEN: {source, force}}. */
static int token_list(struct cfgp *P, const struct ynode *n, struct alloy_config *c)
{
    static const char *const keys[] = {"source", "force", NULL};
    char d[96], key[KEY_MAX];
    if (n->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, n->pos, "tokenizer.tokens", "expected a mapping of tokens, found %s",
                    alloy_cfg_describe(n, d, sizeof d));
    if (!(c->tokens = alloy_xcalloc(n->n / 2 + 1, sizeof *c->tokens))) return alloy_cfg_nomem(P);
    for (size_t i = 0; i + 1 < n->n; i += 2) {
        const struct ynode *k = n->kids[i], *v = n->kids[i + 1], *s, *f;
        struct alloy_token_cfg *t = &c->tokens[c->ntokens++];
        t->pos = k->pos;
        snprintf(key, sizeof key, "tokenizer.tokens.%.200s", k->text);
        if (alloy_cfg_charge(P, k, k->len + 1)) return (int)P->err->status;
        if (!(t->token = alloy_xstrdup(k->text))) return alloy_cfg_nomem(P);
        if (alloy_cfg_check_map(P, v, key, key, keys)) return (int)P->err->status;
        if (!(s = alloy_cfg_map_val(v, "source"))) return alloy_cfg_missing(P, v, key, "source");
        char sub[KEY_MAX + 8];
        snprintf(sub, sizeof sub, "%s.source", key);
        if (token_source(P, s, sub, t)) return (int)P->err->status;
        if ((f = alloy_cfg_map_val(v, "force"))) {
            double b;
            snprintf(sub, sizeof sub, "%s.force", key);
            if (f->kind != Y_SCALAR || alloy_yaml_scalar_type(f, &b) != ALLOY_YAML_BOOL)
                return alloy_cfg_err(P, ALLOY_ERR_CONFIG, f->pos, sub, "expected true or false, found %s",
                            alloy_cfg_describe(f, d, sizeof d));
            t->force = b != 0;
        }
    }
    return 0;
}

static int tokenizer_block(struct cfgp *P, const struct ynode *n, struct alloy_config *c)
{
    static const char *const keys[] = {"source", "tokens", "pad_to_multiple_of", NULL};
    if (alloy_cfg_check_map(P, n, "tokenizer", "tokenizer", keys)) return (int)P->err->status;
    const struct ynode *v;
    if ((v = alloy_cfg_map_val(n, "tokens")) && token_list(P, v, c)) return (int)P->err->status;
    if ((v = alloy_cfg_map_val(n, "pad_to_multiple_of")) &&
        get_count(P, v, "tokenizer.pad_to_multiple_of", 0, &c->pad_to_multiple_of))
        return (int)P->err->status;
    if ((v = alloy_cfg_map_val(n, "source"))) return tokenizer_src(P, v, "tokenizer.source", c);
    c->tokenizer_pos = n->pos; /* mergekit's default source is union */
    if (!(c->tokenizer_source = alloy_xstrdup("union"))) return alloy_cfg_nomem(P);
    return 0;
}

static int nonempty(const struct ynode *n)
{
    return n && !alloy_cfg_is_null(n) && !(n->kind != Y_SCALAR && n->n == 0);
}

static int top_level(struct cfgp *P, const struct ynode *root, struct alloy_config *c)
{
    static const char *const keys[] = {"merge_method", "models", "slices", "modules", "base_model", "parameters",
                                       "dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name",
                                       NULL};
    char d[96];
    if (root->kind != Y_MAP)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, root->pos, NULL, "expected a mapping at the top level (merge_method:, "
                    "models: or slices:, ...), found %s", alloy_cfg_describe(root, d, sizeof d));
    if (alloy_cfg_check_map(P, root, NULL, "the top level", keys)) return (int)P->err->status;
    const struct ynode *v;
    if (!(v = alloy_cfg_map_val(root, "merge_method"))) return alloy_cfg_missing(P, root, "top level", "merge_method");
    if (v->kind != Y_SCALAR || !v->len)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, v->pos, "merge_method", "expected a method name (linear, slerp, ties, ...), "
                    "found %s", alloy_cfg_describe(v, d, sizeof d));
    if (alloy_cfg_get_string(P, v, "merge_method", &c->merge_method)) return (int)P->err->status;
    c->merge_method_pos = v->pos;

    const struct ynode *models = alloy_cfg_map_get(root, "models"), *slices = alloy_cfg_map_get(root, "slices");
    if ((v = alloy_cfg_map_get(root, "modules")) && nonempty(v))
        return alloy_cfg_err(P, ALLOY_ERR_UNSUPPORTED, v->pos, "modules", "multi-module configs are not supported yet; use "
                    "models: or slices:");
    if (nonempty(models) && nonempty(slices))
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, slices->pos, "slices", "both models: and slices: are given; use exactly one");
    if (nonempty(models)) {
        if (models_list(P, models, c)) return (int)P->err->status;
    } else if (nonempty(slices)) {
        if (slices_list(P, slices, c)) return (int)P->err->status;
    } else {
        const struct ynode *at = models ? models : slices ? slices : root;
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, at->pos, NULL, "no models to merge: give a non-empty models: or slices: list");
    }
    if ((v = alloy_cfg_map_get(root, "base_model"))) {
        c->base_model_pos = v->pos;
        if (model_ref(P, v, "base_model", &c->base_model)) return (int)P->err->status;
    }
    if (params(P, alloy_cfg_map_get(root, "parameters"), "parameters", &c->params)) return (int)P->err->status;
    if ((v = alloy_cfg_map_get(root, "dtype")) && dtype_value(P, v, "dtype", &c->has_dtype, &c->dtype))
        return (int)P->err->status;
    if ((v = alloy_cfg_map_get(root, "out_dtype")) && dtype_value(P, v, "out_dtype", &c->has_out_dtype, &c->out_dtype))
        return (int)P->err->status;
    const struct ynode *ts = alloy_cfg_map_val(root, "tokenizer_source"), *tb = alloy_cfg_map_val(root, "tokenizer");
    if (ts && tb)
        return alloy_cfg_err(P, ALLOY_ERR_CONFIG, tb->pos, "tokenizer", "tokenizer_source: and tokenizer: are both given; use "
                    "tokenizer: {source: ...} alone");
    if (ts && tokenizer_src(P, ts, "tokenizer_source", c)) return (int)P->err->status;
    if (tb && tokenizer_block(P, tb, c)) return (int)P->err->status;
    if ((v = alloy_cfg_map_get(root, "chat_template")) && chat_template(P, v, c)) return (int)P->err->status;
    if ((v = alloy_cfg_map_get(root, "name"))) { /* mergekit-multi's intermediate name (documents.c) */
        c->name_pos = v->pos;
        if (alloy_cfg_get_string(P, v, "name", &c->name)) return (int)P->err->status;
    }
    return 0;
}

/* ---------------------------------------------------------------- public API */

void alloy_config_free(struct alloy_config *c)
{
    if (!c) return;
    free(c->path);
    free(c->text);
    free(c->merge_method);
    for (size_t i = 0; i < c->nslices; i++) slice_free(&c->slices[i]);
    free(c->slices);
    free(c->base_model);
    alloy_params_free(&c->params);
    free(c->tokenizer_source);
    for (size_t i = 0; i < c->ntokens; i++) {
        free(c->tokens[i].token);
        free(c->tokens[i].model);
        free(c->tokens[i].src_token);
    }
    free(c->tokens);
    free(c->chat_template);
    free(c->name);
    free(c);
}

int alloy_config_parse(const char *text, size_t len, const char *path, struct alloy_config **out,
                       struct alloy_err *err)
{
    struct alloy_err local;
    if (!err) err = &local;
    err->status = ALLOY_OK;
    err->msg[0] = 0;
    if (!path) path = "<config>";
    if (!out) return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: no output pointer", path);
    *out = NULL;
    if (!text && len) return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: no text", path);
    if (len > ALLOY_CONFIG_MAX_BYTES)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: config is %zu bytes, more than the %zu allowed", path, len,
                             ALLOY_CONFIG_MAX_BYTES);
    struct alloy_config *c = alloy_xcalloc(1, sizeof *c);
    struct cfgp P = {.path = path, .text = text ? text : "", .len = len, .err = err};
    if (!c || !(c->path = alloy_xstrdup(path)) || !(c->text = alloy_xmalloc(len + 1))) {
        alloy_config_free(c);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path);
    }
    if (len) memcpy(c->text, text, len);
    c->text[len] = 0;
    c->text_len = len;
    struct ynode *root = NULL;
    int rc = alloy_yaml_tree_build(&P, &root);
    if (!rc && (!root || alloy_cfg_is_null(root)))
        rc = alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: empty config: expected a mapping with merge_method: and "
                           "models: or slices:", path);
    if (!rc) rc = top_level(&P, root, c);
    alloy_yaml_tree_free(&P);
    if (rc) {
        alloy_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int alloy_config_load(const char *path, struct alloy_config **out, struct alloy_err *err)
{
    char *text = NULL;
    size_t len = 0;
    if (out) *out = NULL;
    int rc = alloy_read_file(path, ALLOY_CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = alloy_config_parse(text, len, path, out, err);
    free(text);
    return rc;
}
