/*
 * adapter_config.c — adapter_config.json of a PEFT LoRA adapter: PEFT's
 * LoraConfig fields, the rank/alpha patterns, the module selections.
 *
 * DESIGN
 *   The file is parsed with jansson, duplicate keys refused; jansson keeps an
 *   object's keys in file order, which is the order PEFT tries rank_pattern
 *   and alpha_pattern keys in (first match wins). Only the fields that change
 *   the merged weights are read; informational and training-only keys are
 *   ignored as PEFT ignores unknown keys. Mechanisms that are not plain LoRA
 *   (trainable tokens, target_parameters, layer replication, aLoRA, ...) are
 *   refused when set.
 *
 *   Patterns and target regexes are Python `re` expressions; alloy matches
 *   them with POSIX extended regexes. alloy_lora_regex translates the Python
 *   spellings POSIX ERE lacks and refuses what it cannot express, so a
 *   pattern never silently means something else.
 */
#include "lora/lora_config.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>

/* ------------------------------------------------------------ Python re -> POSIX ERE */

static const char *class_body(char c)
{
    switch (c) {
    case 'd': return "0-9";
    case 'w': return "A-Za-z0-9_";
    case 's': return " \t\n\r\f\v";
    default: return NULL;
    }
}

/* Appends s to the growing buffer; -1 when full. */
static int put(char *out, size_t cap, size_t *k, const char *s)
{
    size_t n = strlen(s);
    if (*k + n >= cap) return -1;
    memcpy(out + *k, s, n);
    *k += n;
    out[*k] = '\0';
    return 0;
}

/* The escape at py[i] ('\\' then one char), translated; -1 with why for what ERE cannot say. */
static int escape(const char *py, size_t *i, int in_bracket, char *out, size_t cap, size_t *k, char *why, size_t wl)
{
    char c = py[*i + 1], buf[64];
    if (!c) return snprintf(why, wl, "a trailing backslash"), -1;
    *i += 2;
    const char *body = class_body((char)tolower((unsigned char)c));
    if (body && isupper((unsigned char)c)) {
        if (in_bracket) return snprintf(why, wl, "\\%c inside [...] has no POSIX spelling", c), -1;
        snprintf(buf, sizeof buf, "[^%s]", body);
    } else if (body) {
        snprintf(buf, sizeof buf, in_bracket ? "%s" : "[%s]", body);
    } else if (isalnum((unsigned char)c)) {
        return snprintf(why, wl, "\\%c (a back-reference or Python-only escape) has no POSIX spelling", c), -1;
    } else if (in_bracket) {
        if (c == ']' || c == '\\' || c == '^' || c == '-') return snprintf(why, wl, "\\%c inside [...]", c), -1;
        snprintf(buf, sizeof buf, "%c", c);
    } else {
        snprintf(buf, sizeof buf, "\\%c", c);
    }
    return put(out, cap, k, buf);
}

/* The translation of py into out (cap bytes); -1 with why. */
static int translate(const char *py, char *out, size_t cap, char *why, size_t wl)
{
    size_t k = 0, i = 0;
    int in_bracket = 0;
    out[0] = '\0';
    while (py[i]) {
        char c = py[i];
        char one[2] = {c, 0};
        int rc = 0;
        if (c == '\\') {
            rc = escape(py, &i, in_bracket, out, cap, &k, why, wl);
            if (rc) return rc;
            continue;
        }
        if (in_bracket) {
            if (c == ']' && !(k && (out[k - 1] == '[' || (out[k - 1] == '^' && k > 1 && out[k - 2] == '['))))
                in_bracket = 0;
        } else if (c == '[') {
            in_bracket = 1;
        } else if (c == '(' && py[i + 1] == '?') {
            if (py[i + 2] != ':') return snprintf(why, wl, "(?%c...) has no POSIX spelling", py[i + 2] ? py[i + 2] : ' '), -1;
            i += 3;
            if (put(out, cap, &k, "(")) goto long_;
            continue;
        } else if (c == '?' && i && strchr("*+?}", py[i - 1]) && (i < 2 || py[i - 2] != '\\')) {
            i++; /* lazy quantifier: the same set of whole-string matches as the greedy one */
            continue;
        }
        if (put(out, cap, &k, one)) goto long_;
        i++;
    }
    return 0;
long_:
    snprintf(why, wl, "longer than %zu bytes", cap / 2);
    return -1;
}

int alloy_lora_regex(const char *py, const char *pre, const char *post, regex_t *re, char *why, size_t whylen)
{
    char body[2048], full[2200];
    if (translate(py, body, sizeof body, why, whylen)) return -1;
    snprintf(full, sizeof full, "%s(%s)%s", pre, body, post);
    int rc = regcomp(re, full, REG_EXTENDED | REG_NOSUB);
    if (rc) {
        char msg[128];
        regerror(rc, re, msg, sizeof msg);
        snprintf(why, whylen, "not a valid regular expression (%s)", msg);
        return -1;
    }
    return 0;
}

int alloy_lora_regex_match(const regex_t *re, const char *s) { return regexec(re, s, 0, NULL, 0) == 0; }

/* ------------------------------------------------------------ fields */

struct cfg_ctx {
    const char *path;
    struct alloy_err *err;
    size_t entries, regexes; /* pattern keys and list entries so far, those compiled as regexes */
};

/* 1 when the Python regex k has no operator but '.': it is matched by literal_match, never compiled. */
static int literal_key(const char *k)
{
    if (!*k) return 0;
    for (; *k; k++)
        if (!isalnum((unsigned char)*k) && *k != '_' && *k != '-' && *k != '.') return 0;
    return 1;
}

/* Counts one more entry of key (a regex when is_re) against the limits of lora_config.h. */
static int count_entry(struct cfg_ctx *C, const char *key, int is_re)
{
    if (++C->entries > ALLOY_LORA_MAX_ENTRIES)
        return alloy_err_set(C->err, ALLOY_ERR_FORMAT, "%s: %s: expected at most %d module patterns and names in all, "
                             "found more", C->path, key, ALLOY_LORA_MAX_ENTRIES);
    if (is_re && ++C->regexes > ALLOY_LORA_MAX_REGEX)
        return alloy_err_set(C->err, ALLOY_ERR_FORMAT, "%s: %s: expected at most %d regular expressions in all, "
                             "found more (patterns of letters, digits, '_', '-' and '.' do not count)", C->path, key,
                             ALLOY_LORA_MAX_REGEX);
    return ALLOY_OK;
}

static int bad(const struct cfg_ctx *C, const char *key, const char *expected, const json_t *v)
{
    char found[96];
    if (!v || json_is_null(v)) snprintf(found, sizeof found, "null");
    else if (json_is_string(v)) snprintf(found, sizeof found, "\"%.60s\"", json_string_value(v));
    else if (json_is_integer(v)) snprintf(found, sizeof found, "%lld", (long long)json_integer_value(v));
    else if (json_is_number(v)) snprintf(found, sizeof found, "%g", json_number_value(v));
    else if (json_is_boolean(v)) snprintf(found, sizeof found, "%s", json_is_true(v) ? "true" : "false");
    else snprintf(found, sizeof found, "%s", json_is_array(v) ? "a list" : "an object");
    return alloy_err_set(C->err, ALLOY_ERR_FORMAT, "%s: %s: expected %s, found %s", C->path, key, expected, found);
}

static int get_bool(const struct cfg_ctx *C, const json_t *root, const char *key, int *out)
{
    const json_t *v = json_object_get(root, key);
    *out = 0;
    if (!v || json_is_null(v)) return ALLOY_OK;
    if (!json_is_boolean(v)) return bad(C, key, "true or false", v);
    *out = json_is_true(v);
    return ALLOY_OK;
}

static int get_rank(const struct cfg_ctx *C, const char *key, const json_t *v, uint32_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24))
        return bad(C, key, "a rank (an integer from 1 to 16777216)", v);
    *out = (uint32_t)json_integer_value(v);
    return ALLOY_OK;
}

static int get_alpha(const struct cfg_ctx *C, const char *key, const json_t *v, double *out)
{
    if (!json_is_number(v) || !isfinite(json_number_value(v))) return bad(C, key, "a number", v);
    *out = json_number_value(v);
    return ALLOY_OK;
}

/* rank_pattern / alpha_pattern: an object (or null), its keys in file order. */
static int get_patterns(struct cfg_ctx *C, const json_t *root, const char *key, int is_rank,
                        struct alloy_lora_pattern **out, size_t *n)
{
    const json_t *obj = json_object_get(root, key);
    if (!obj || json_is_null(obj)) return ALLOY_OK;
    if (!json_is_object(obj)) return bad(C, key, "an object of module pattern -> value", obj);
    size_t cnt = json_object_size(obj);
    if (!cnt) return ALLOY_OK;
    if (!(*out = alloy_xcalloc(cnt, sizeof **out))) return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        struct alloy_lora_pattern *p = &(*out)[*n];
        char sub[300], why[200];
        snprintf(sub, sizeof sub, "%s.%.200s", key, k);
        uint32_t r = 0;
        int rc = is_rank ? get_rank(C, sub, v, &r) : get_alpha(C, sub, v, &p->value);
        if (rc) return rc;
        if (is_rank) p->value = r;
        if ((rc = count_entry(C, sub, !literal_key(k)))) return rc;
        if (!(p->key = alloy_xstrdup(k))) return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
        p->is_re = !literal_key(k);
        if (p->is_re && alloy_lora_regex(k, "^(.*\\.)?", "$", &p->re, why, sizeof why)) {
            free(p->key);
            p->key = NULL;
            return alloy_err_set(C->err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected a regular expression, found %s",
                                 C->path, sub, why);
        }
        (*n)++;
    }
    return ALLOY_OK;
}

/* A list of names (or, with allow_regex, one regex string) into sel; regexes wrapped pre(...)post. */
static int get_sel(struct cfg_ctx *C, const json_t *root, const char *key, int allow_regex, const char *pre,
                   const char *post, int compile_names, struct alloy_lora_sel *sel)
{
    const json_t *v = json_object_get(root, key);
    char why[200];
    if (!v || json_is_null(v)) return ALLOY_OK;
    if (json_is_string(v) && allow_regex) {
        if (strcmp(json_string_value(v), "all-linear") == 0) return sel->kind = SEL_ALL_LINEAR, ALLOY_OK;
        if (!(sel->res = alloy_xcalloc(1, sizeof *sel->res))) return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
        if (alloy_lora_regex(json_string_value(v), pre, post, sel->res, why, sizeof why))
            return alloy_err_set(C->err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected a regular expression, found %s", C->path,
                                 key, why);
        sel->nres = 1;
        sel->kind = SEL_REGEX;
        return ALLOY_OK;
    }
    if (!json_is_array(v)) return bad(C, key, allow_regex ? "a list of module names or a regex" : "a list of module names", v);
    size_t n = json_array_size(v);
    sel->kind = SEL_LIST;
    if (!n) return ALLOY_OK;
    if (!(sel->names = alloy_xcalloc(n, sizeof *sel->names)) ||
        (compile_names && (!(sel->res = alloy_xcalloc(n, sizeof *sel->res)) || !(sel->is_re = alloy_xcalloc(n, 1)))))
        return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    sel->nres = compile_names ? 1 : 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e)) return bad(C, key, "a list of module names", e);
        if (!(sel->names[i] = alloy_xstrdup(json_string_value(e))))
            return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
        sel->n++;
        int is_re = compile_names && !literal_key(sel->names[i]), rc = count_entry(C, key, is_re);
        if (rc || !is_re) {
            if (rc) return rc;
            continue;
        }
        if (alloy_lora_regex(sel->names[i], "^(.*\\.)?", "(\\..*)?$", &sel->res[i], why, sizeof why))
            return alloy_err_set(C->err, ALLOY_ERR_UNSUPPORTED, "%s: %s[%zu]: expected a regular expression, found %s",
                                 C->path, key, i, why);
        sel->is_re[i] = 1;
    }
    return ALLOY_OK;
}

/* layers_to_transform (int or list) and layers_pattern (string or list of one). */
static int get_layers(const struct cfg_ctx *C, const json_t *root, struct alloy_lora_cfg *c)
{
    const json_t *v = json_object_get(root, "layers_to_transform"), *p = json_object_get(root, "layers_pattern");
    if (p && json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
    if (p && !json_is_null(p)) {
        if (!json_is_string(p)) return bad(C, "layers_pattern", "a name such as \"layers\"", p);
        if (!(c->layers_pattern = alloy_xstrdup(json_string_value(p))))
            return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (!v || json_is_null(v)) return ALLOY_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_integer(v)) return bad(C, "layers_to_transform", "a layer index or a list of them", v);
    if (!(c->layers = alloy_xcalloc(n ? n : 1, sizeof *c->layers))) return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e)) return bad(C, "layers_to_transform", "a layer index or a list of them", e);
        c->layers[c->nlayers++] = json_integer_value(e);
    }
    return ALLOY_OK;
}

/* Keys of mechanisms that are not plain LoRA: refused unless null, false, empty or 0. */
static int check_unsupported(const struct cfg_ctx *C, const json_t *root)
{
    static const char *const keys[] = {"trainable_token_indices", "target_parameters", "layer_replication",
                                       "alora_invocation_tokens", "arrow_config", "velora_config", "kasa_config",
                                       "use_bdlora", "use_qalora", "monteclora_config", "megatron_config", NULL};
    for (int i = 0; keys[i]; i++) {
        const json_t *v = json_object_get(root, keys[i]);
        int unset = !v || json_is_null(v) || json_is_false(v) || (json_is_array(v) && !json_array_size(v)) ||
                    (json_is_object(v) && !json_object_size(v));
        if (!unset)
            return alloy_err_set(C->err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected null (a plain LoRA), found a setting "
                                 "of a LoRA variant alloy does not merge", C->path, keys[i]);
    }
    return ALLOY_OK;
}

static int get_scalars(const struct cfg_ctx *C, const json_t *root, struct alloy_adapter *a)
{
    const json_t *v = json_object_get(root, "peft_type");
    if (!json_is_string(v) || strcmp(json_string_value(v), "LORA") != 0)
        return v ? bad(C, "peft_type", "\"LORA\"", v)
                 : alloy_err_set(C->err, ALLOY_ERR_FORMAT, "%s: peft_type: expected \"LORA\", found no such key", C->path);
    a->r = 8;
    a->lora_alpha = 8;
    int rc, ffio;
    if ((v = json_object_get(root, "r")) && (rc = get_rank(C, "r", v, &a->r))) return rc;
    if ((v = json_object_get(root, "lora_alpha")) && (rc = get_alpha(C, "lora_alpha", v, &a->lora_alpha))) return rc;
    if ((rc = get_bool(C, root, "use_rslora", &a->use_rslora)) || (rc = get_bool(C, root, "use_dora", &a->use_dora)) ||
        (rc = get_bool(C, root, "lora_bias", &a->lora_bias)) || (rc = get_bool(C, root, "fan_in_fan_out", &ffio)))
        return rc; /* fan_in_fan_out only concerns GPT-2 Conv1D weights; PEFT resets it for Linear/Embedding */
    if ((v = json_object_get(root, "bias")) && !json_is_null(v)) {
        const char *b = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(b, "none") == 0) a->cfg->bias = LORA_BIAS_NONE;
        else if (strcmp(b, "all") == 0) a->cfg->bias = LORA_BIAS_ALL;
        else if (strcmp(b, "lora_only") == 0) a->cfg->bias = LORA_BIAS_LORA_ONLY;
        else return bad(C, "bias", "\"none\", \"all\" or \"lora_only\"", v);
    }
    a->cfg->lora_bias = a->lora_bias;
    if (a->use_dora && a->lora_bias)
        return alloy_err_set(C->err, ALLOY_ERR_FORMAT, "%s: lora_bias: expected false with use_dora (PEFT refuses "
                             "both), found true", C->path);
    if ((v = json_object_get(root, "base_model_name_or_path")) && json_is_string(v) &&
        !(a->base_model = alloy_xstrdup(json_string_value(v))))
        return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    return check_unsupported(C, root);
}

/* target_modules also into the contract's fields (list form, or the regex text). */
static int copy_targets(const struct cfg_ctx *C, const json_t *root, struct alloy_adapter *a)
{
    const struct alloy_lora_sel *t = &a->cfg->target;
    if (t->kind == SEL_REGEX || t->kind == SEL_ALL_LINEAR) {
        a->target_regex = alloy_xstrdup(json_string_value(json_object_get(root, "target_modules")));
        return a->target_regex ? ALLOY_OK : alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (!t->n) return ALLOY_OK;
    if (!(a->target_modules = alloy_xcalloc(t->n, sizeof *a->target_modules)))
        return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n; i++) {
        if (!(a->target_modules[i] = alloy_xstrdup(t->names[i]))) return alloy_err_set(C->err, ALLOY_ERR_NOMEM, "out of memory");
        a->ntarget_modules++;
    }
    return ALLOY_OK;
}

int alloy_lora_cfg_parse(const char *text, size_t len, const char *path, struct alloy_adapter *a,
                         struct alloy_err *err)
{
    struct cfg_ctx C = {path, err};
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", path, jerr.text,
                             jerr.line, jerr.column);
    int rc = ALLOY_OK;
    if (!json_is_object(root)) rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object (a PEFT LoraConfig), "
                                                  "found another JSON value", path);
    else if (!(a->cfg = alloy_xcalloc(1, sizeof *a->cfg))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = get_scalars(&C, root, a);
    if (!rc) rc = get_patterns(&C, root, "rank_pattern", 1, &a->cfg->rank, &a->cfg->nrank);
    if (!rc) rc = get_patterns(&C, root, "alpha_pattern", 0, &a->cfg->alpha, &a->cfg->nalpha);
    if (!rc) rc = get_sel(&C, root, "target_modules", 1, "^", "$", 0, &a->cfg->target);
    if (!rc) rc = get_sel(&C, root, "exclude_modules", 1, "^", "$", 0, &a->cfg->exclude);
    if (!rc) rc = get_sel(&C, root, "modules_to_save", 0, "", "", 1, &a->cfg->save);
    if (!rc) rc = get_layers(&C, root, a->cfg);
    if (!rc) rc = copy_targets(&C, root, a);
    json_decref(root);
    return rc;
}

static void sel_free(struct alloy_lora_sel *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->names[i]);
    if (s->kind == SEL_REGEX) regfree(&s->res[0]);
    for (size_t i = 0; s->is_re && i < s->n; i++)
        if (s->is_re[i]) regfree(&s->res[i]);
    free(s->names);
    free(s->res);
    free(s->is_re);
}

static void patterns_free(struct alloy_lora_pattern *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].key);
        if (p[i].is_re) regfree(&p[i].re);
    }
    free(p);
}

void alloy_lora_cfg_free(struct alloy_lora_cfg *c)
{
    if (!c) return;
    patterns_free(c->rank, c->nrank);
    patterns_free(c->alpha, c->nalpha);
    sel_free(&c->target);
    sel_free(&c->exclude);
    sel_free(&c->save);
    free(c->layers);
    free(c->layers_pattern);
    free(c);
}

/* ------------------------------------------------------------ per-module questions */

/* name[s, s + strlen(key)) matches the literal key, whose '.' matches any character (as in the regex). */
static int literal_at(const char *name, size_t s, const char *key)
{
    for (size_t i = 0; key[i]; i++)
        if (key[i] != '.' && key[i] != name[s + i]) return 0;
    return 1;
}

/* The regex ^(.*\.)?(key)$, or with any_tail ^(.*\.)?(key)(\..*)?$, for a literal key: the key starts at
 * the name's start or after a '.', and ends at the name's end (or, any_tail, before a '.'). */
static int literal_match(const char *name, const char *key, int any_tail)
{
    size_t n = strlen(name), k = strlen(key);
    for (size_t s = n >= k ? n - k : 1; n >= k; s--) {
        if ((s == 0 || name[s - 1] == '.') && (s + k == n || name[s + k] == '.') && literal_at(name, s, key)) return 1;
        if (!any_tail || s == 0) break;
    }
    return 0;
}

static const struct alloy_lora_pattern *first_match(const struct alloy_lora_pattern *p, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].is_re ? alloy_lora_regex_match(&p[i].re, name) : literal_match(name, p[i].key, 0)) return &p[i];
    return NULL;
}

uint32_t alloy_lora_rank_for(const struct alloy_adapter *a, const char *name)
{
    const struct alloy_lora_pattern *p = first_match(a->cfg->rank, a->cfg->nrank, name);
    return p ? (uint32_t)p->value : a->r;
}

double alloy_lora_alpha_for(const struct alloy_adapter *a, const char *name)
{
    const struct alloy_lora_pattern *p = first_match(a->cfg->alpha, a->cfg->nalpha, name);
    return p ? p->value : a->lora_alpha;
}

/* name equals entry or ends with "." + entry. */
static int suffix_match(const char *name, const char *entry)
{
    size_t n = strlen(name), e = strlen(entry);
    return n == e ? strcmp(name, entry) == 0 : n > e && name[n - e - 1] == '.' && strcmp(name + n - e, entry) == 0;
}

static int sel_match(const struct alloy_lora_sel *s, const char *name)
{
    if (s->kind == SEL_REGEX) return alloy_lora_regex_match(&s->res[0], name);
    if (s->kind == SEL_ALL_LINEAR) return strcmp(name, "lm_head") != 0 && !suffix_match(name, "lm_head");
    for (size_t i = 0; i < s->n; i++)
        if (!s->nres ? suffix_match(name, s->names[i])
                     : s->is_re[i] ? alloy_lora_regex_match(&s->res[i], name) : literal_match(name, s->names[i], 1))
            return 1;
    return 0;
}

/* The layer index of name: after ".<layers_pattern>." when set, else its first all-digit component. */
static long long layer_of(const char *name, const char *pattern)
{
    const char *p = name;
    if (pattern) {
        size_t pl = strlen(pattern);
        for (p = strstr(name, pattern); p; p = strstr(p + 1, pattern))
            if ((p == name || p[-1] == '.') && p[pl] == '.' && isdigit((unsigned char)p[pl + 1])) break;
        if (!p) return -1;
        p += pl + 1;
        return strtoll(p, NULL, 10);
    }
    for (; *p; p++)
        if ((p == name || p[-1] == '.') && isdigit((unsigned char)*p)) {
            const char *q = p;
            while (isdigit((unsigned char)*q)) q++;
            if (*q == '.' || !*q) return strtoll(p, NULL, 10);
        }
    return -1;
}

int alloy_lora_targeted(const struct alloy_adapter *a, const char *name)
{
    const struct alloy_lora_cfg *c = a->cfg;
    if (c->exclude.kind != SEL_NONE && sel_match(&c->exclude, name)) return 0;
    if (c->target.kind != SEL_NONE && !sel_match(&c->target, name)) return 0;
    if (c->layers && c->target.kind == SEL_LIST) {
        long long l = layer_of(name, c->layers_pattern);
        for (size_t i = 0; i < c->nlayers; i++)
            if (c->layers[i] == l) return 1;
        return 0;
    }
    return 1; /* target_modules null: the per-architecture default, which the tensors themselves show */
}

int alloy_lora_saved(const struct alloy_adapter *a, const char *name)
{
    return a->cfg->save.kind != SEL_NONE && sel_match(&a->cfg->save, name);
}
