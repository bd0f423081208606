/*
 * build.c — configs given as structs (alloy.h: alloy_config_new, _set_*,
 * _add_model): the builder fills the same struct alloy_config the YAML reader
 * fills, for `models:` configs.
 *
 * DESIGN
 *   A built config is what config.c makes of `models:` YAML: one slice whose
 *   sources have no layer range (from_slices = 0), created with the first
 *   model, top-level and per-model parameters as ordered maps of settings
 *   (a setter replaces an earlier value in place, so the order of first use
 *   is kept). Values are checked with the reader's own rules and words
 *   (alloy_config_ref_problem, alloy_config_dtype_name) and the method name
 *   against the registry. After every change the config's YAML text is
 *   written again from the structs (to_yaml), so mergekit_config.yml and the
 *   model card show it, and parsing that text gives back the same config.
 *   Positions are 0:0 (no file); messages name "<built config>".
 */
#include "config/config.h"
#include "core/internal.h"
#include "methods/method.h"

#include <math.h>
#include <stdarg.h>

#define BUILT_PATH "<built config>"

void alloy_config_unknown_method(const char *name, char *buf, size_t size)
{
    size_t pos = (size_t)snprintf(buf, size, "merge_method: unknown method '%.100s' (known: ", name);
    for (size_t i = 0; i < alloy_method_count() && pos < size; i++)
        pos += (size_t)snprintf(buf + pos, size - pos, "%s%s", i ? ", " : "", alloy_method_at(i)->name);
    if (pos < size) snprintf(buf + pos, size - pos, ")");
}

/* ------------------------------------------------------------ YAML text */

struct text { char *buf; size_t len, cap; int oom; };

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    for (int tries = 0; tries < 2 && !t->oom; tries++) {
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { t->oom = 1; return; }
        if (t->buf && t->len + (size_t)n < t->cap) { t->len += (size_t)n; return; }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *b = alloy_xrealloc(t->buf, cap);
        if (!b) { t->oom = 1; return; }
        t->buf = b;
        t->cap = cap;
    }
}

/* A YAML double-quoted string. */
static void put_str(struct text *t, const char *s)
{
    put(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') put(t, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) put(t, "\\x%02x", *p);
        else put(t, "%c", *p);
    }
    put(t, "\"");
}

/* A number as YAML 1.1 reads it back exactly (%.17g; .inf, -.inf, .nan). */
static void put_num(struct text *t, double v)
{
    if (isnan(v)) put(t, ".nan");
    else if (isinf(v)) put(t, "%s.inf", v < 0 ? "-" : "");
    else put(t, "%.17g", v);
}

static void put_params(struct text *t, const struct alloy_params *p, const char *indent)
{
    for (size_t i = 0; i < p->n; i++) {
        const struct alloy_setting *s = &p->values[i];
        put(t, "%s", indent);
        put_str(t, p->names[i]);
        put(t, ": ");
        if (s->kind == ALLOY_SETTING_GRADIENT) {
            put(t, "[");
            for (size_t k = 0; k < s->ngrad; k++) {
                put(t, k ? ", " : "");
                put_num(t, s->grad[k]);
            }
            put(t, "]");
        } else {
            put_num(t, s->value);
        }
        put(t, "\n");
    }
}

static int to_yaml(struct alloy_config *c, struct alloy_err *err)
{
    struct text t = {0};
    put(&t, "merge_method: ");
    put_str(&t, c->merge_method);
    put(&t, "\n");
    if (c->base_model) {
        put(&t, "base_model: ");
        put_str(&t, c->base_model);
        put(&t, "\n");
    }
    put(&t, "models:%s\n", c->nslices ? "" : " []");
    for (size_t i = 0; c->nslices && i < c->slices[0].nsources; i++) {
        const struct alloy_source *src = &c->slices[0].sources[i];
        put(&t, "  - model: ");
        put_str(&t, src->model);
        put(&t, "\n");
        if (src->params.n) put(&t, "    parameters:\n");
        put_params(&t, &src->params, "      ");
    }
    if (c->params.n) put(&t, "parameters:\n");
    put_params(&t, &c->params, "  ");
    if (c->has_dtype) put(&t, "dtype: %s\n", alloy_dtype_traits(c->dtype)->torch);
    if (c->has_out_dtype) put(&t, "out_dtype: %s\n", alloy_dtype_traits(c->out_dtype)->torch);
    if (t.oom) {
        free(t.buf);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", c->path);
    }
    free(c->text);
    c->text = t.buf;
    c->text_len = t.len;
    return ALLOY_OK;
}

/* ------------------------------------------------------------ builder */

static int nomem(struct alloy_err *err) { return alloy_err_set(err, ALLOY_ERR_NOMEM, BUILT_PATH ": out of memory"); }

/* Setters change configs made by alloy_config_new only: a parsed config keeps the text it came from. */
static int built_only(const struct alloy_config *c, struct alloy_err *err)
{
    if (c->built) return ALLOY_OK;
    return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: a parsed config cannot be changed (build one with "
                         "alloy_config_new)", c->path);
}

int alloy_config_new(const char *merge_method, struct alloy_config **out, struct alloy_err *err)
{
    if (!out) return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": no output pointer");
    *out = NULL;
    if (!merge_method || !merge_method[0])
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": merge_method: expected a method name (linear, "
                             "slerp, ties, ...), found nothing");
    if (!alloy_method_find(merge_method)) {
        char msg[700];
        alloy_config_unknown_method(merge_method, msg, sizeof msg);
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": %s", msg);
    }
    struct alloy_config *c = alloy_xcalloc(1, sizeof *c);
    if (!c || !(c->path = alloy_xstrdup(BUILT_PATH)) || !(c->merge_method = alloy_xstrdup(merge_method))) {
        alloy_config_free(c);
        return nomem(err);
    }
    c->built = 1;
    int rc = to_yaml(c, err);
    if (rc) {
        alloy_config_free(c);
        return rc;
    }
    *out = c;
    return ALLOY_OK;
}

/* A checked copy of a model reference into *out. */
static int checked_ref(const char *ref, const char *key, char **out, struct alloy_err *err)
{
    const char *why = ref ? alloy_config_ref_problem(ref, strlen(ref)) : "the model path is empty";
    if (why)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": %s: invalid model reference '%.200s': %s", key,
                             ref ? ref : "", why);
    return (*out = alloy_xstrdup(ref)) ? ALLOY_OK : nomem(err);
}

int alloy_config_set_base(struct alloy_config *c, const char *model_ref, struct alloy_err *err)
{
    char *s = NULL;
    int rc = built_only(c, err);
    if (rc || (rc = checked_ref(model_ref, "base_model", &s, err))) return rc;
    free(c->base_model);
    c->base_model = s;
    return to_yaml(c, err);
}

int alloy_config_add_model(struct alloy_config *c, const char *model_ref, int *index, struct alloy_err *err)
{
    char key[48];
    size_t n = c->nslices ? c->slices[0].nsources : 0;
    char *s = NULL;
    snprintf(key, sizeof key, "models[%zu].model", n);
    int rc = built_only(c, err);
    if (rc || (rc = checked_ref(model_ref, key, &s, err))) return rc;
    if (!c->nslices && !(c->slices = alloy_xcalloc(1, sizeof *c->slices))) { free(s); return nomem(err); }
    c->nslices = 1;
    struct alloy_slice *sl = &c->slices[0];
    struct alloy_source *src = alloy_xrealloc(sl->sources, (n + 1) * sizeof *src);
    if (!src) { free(s); return nomem(err); }
    sl->sources = src;
    memset(&src[n], 0, sizeof src[n]);
    src[n].model = s;
    sl->nsources = n + 1;
    if (index) *index = (int)n;
    return to_yaml(c, err);
}

/* Stores setting v under name in the top-level (model -1) or a model's parameters; v's gradient is
 * owned by the config afterwards, or freed on error. */
static int store_setting(struct alloy_config *c, int model, const char *name, struct alloy_setting *v,
                         struct alloy_err *err)
{
    size_t nmodels = c->nslices ? c->slices[0].nsources : 0;
    if (model < -1 || (model >= 0 && (size_t)model >= nmodels))
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": parameters: model %d does not exist (%zu models; "
                             "-1 sets the top-level parameters)", model, nmodels);
    if (!name || !name[0])
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": parameters: expected a parameter name, found nothing");
    struct alloy_params *p = model < 0 ? &c->params : &c->slices[0].sources[model].params;
    size_t i = 0;
    while (i < p->n && strcmp(p->names[i], name) != 0) i++;
    if (i == p->n) {
        char **names = alloy_xrealloc(p->names, (p->n + 1) * sizeof *names);
        if (names) p->names = names;
        struct alloy_setting *vals = names ? alloy_xrealloc(p->values, (p->n + 1) * sizeof *vals) : NULL;
        if (vals) p->values = vals;
        struct alloy_pos *pos = vals ? alloy_xrealloc(p->pos, (p->n + 1) * sizeof *pos) : NULL;
        if (pos) p->pos = pos;
        if (!pos || !(p->names[i] = alloy_xstrdup(name))) return nomem(err);
        memset(&p->values[i], 0, sizeof p->values[i]);
        p->pos[i] = (struct alloy_pos){0, 0};
        p->n++;
    }
    free(p->values[i].grad);
    p->values[i] = *v;
    v->grad = NULL;
    return to_yaml(c, err);
}

static int set_setting(struct alloy_config *c, int model, const char *name, struct alloy_setting *v,
                       struct alloy_err *err)
{
    int rc = built_only(c, err);
    if (!rc) rc = store_setting(c, model, name, v, err);
    free(v->grad);
    return rc;
}

int alloy_config_set_param(struct alloy_config *c, int model, const char *name, double value, struct alloy_err *err)
{
    struct alloy_setting v = {.kind = ALLOY_SETTING_SCALAR, .value = value};
    return set_setting(c, model, name, &v, err);
}

int alloy_config_set_gradient(struct alloy_config *c, int model, const char *name, const double *values, size_t n,
                              struct alloy_err *err)
{
    if (!values || n == 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": parameters: %s: expected a non-empty list of numbers",
                             name ? name : "");
    struct alloy_setting v = {.kind = ALLOY_SETTING_GRADIENT, .ngrad = n};
    if (!(v.grad = alloy_xmalloc(n * sizeof *v.grad))) return nomem(err);
    memcpy(v.grad, values, n * sizeof *v.grad);
    return set_setting(c, model, name, &v, err);
}

static int set_dtype(struct alloy_config *c, const char *key, const char *name, int *has, enum alloy_dtype *out,
                     struct alloy_err *err)
{
    int rc = built_only(c, err);
    if (rc) return rc;
    int kind = name ? alloy_config_dtype_name(name, out) : -1;
    if (kind == 1) return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, BUILT_PATH ": %s: " ALLOY_CONFIG_INT64_MSG, key);
    if (kind < 0)
        return alloy_err_set(err, ALLOY_ERR_CONFIG, BUILT_PATH ": %s: " ALLOY_CONFIG_DTYPE_MSG ", found '%.60s'", key,
                             name ? name : "");
    *has = 1;
    return to_yaml(c, err);
}

int alloy_config_set_dtype(struct alloy_config *c, const char *dtype, struct alloy_err *err)
{
    return set_dtype(c, "dtype", dtype, &c->has_dtype, &c->dtype, err);
}

int alloy_config_set_out_dtype(struct alloy_config *c, const char *dtype, struct alloy_err *err)
{
    return set_dtype(c, "out_dtype", dtype, &c->has_out_dtype, &c->out_dtype, err);
}

const char *alloy_config_text(const struct alloy_config *c) { return c->text; }
