/*
 * params.c — parameter values: how YAML scalars become numbers, and how a
 * setting is evaluated for one tensor.
 *
 * DESIGN
 *   mergekit reads its config with PyYAML's safe_load (YAML 1.1 implicit
 *   typing) and validates it with pydantic in lax mode. A value therefore
 *   becomes a number in two steps, reproduced here:
 *     1. alloy_yaml_resolve(): an unquoted scalar is typed by PyYAML's
 *        resolver regexes — null (~, null, empty), bool (yes/no/true/false/
 *        on/off in three casings), int (0b.., 0.. octal, decimal, 0x..,
 *        base-60 1:30), float (needs a '.', exponent needs a sign, .inf,
 *        .nan, base-60), underscores allowed; anything else is a string.
 *        So `1e-5` and `09` are strings for YAML...
 *     2. alloy_yaml_coerce_number(): ...which pydantic still turns into a
 *        float: surrounding whitespace stripped, then Rust's f64 grammar
 *        ([+-]? digits[.digits][e[+-]digits], inf, infinity, nan; no
 *        underscores, no hex). Quoted numbers ('0.5') take this path too.
 *   Booleans become 1/0 (pydantic: True -> 1.0).
 *
 *   alloy_setting_eval() is mergekit's evaluate_setting (mergekit/config.py):
 *   scalar as is; gradient s = t*(L-1), i0 = floor(s), i1 = min(L-1, i0+1),
 *   f = s - i0, value = (1-f)*v[i0] + f*v[i1] (the same double operations
 *   in the same order); conditional lists: the first entry whose filter is
 *   absent, "*", or a substring of a non-empty tensor name is evaluated with
 *   the same t; no match is "unset" (returns 0).
 *
 *   alloy_params_free() releases what config.c built.
 *
 * INVARIANTS
 *   Evaluation allocates nothing and never recurses deeper than
 *   ALLOY_SETTING_MAX_DEPTH; t outside [0, 1] (or NaN) is clamped, so a
 *   gradient is never indexed out of bounds.
 */
#include "config/config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALLOY_SETTING_MAX_DEPTH 8
#define NUM_BUF 128 /* longest numeric literal we convert (longer: a string) */

/* ---------------------------------------------------------------- YAML 1.1 typing */

static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_odigit(int c) { return c >= '0' && c <= '7'; }
static int is_bdigit(int c) { return c == '0' || c == '1'; }
static int is_xdigit_(int c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int eq_any(const char *s, size_t len, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == len && memcmp(s, *words, len) == 0) return 1;
    return 0;
}

/* Matches `[0-9_]*` etc.: advances *i over characters accepted by pred or '_'. */
static size_t span_us(const char *s, size_t len, size_t i, int (*pred)(int))
{
    while (i < len && (pred((unsigned char)s[i]) || s[i] == '_')) i++;
    return i;
}

/* `(?::[0-5]?[0-9])+` starting at i; returns the end or 0 when no group matched. */
static size_t span_base60(const char *s, size_t len, size_t i)
{
    size_t groups = 0;
    while (i < len && s[i] == ':') {
        size_t j = i + 1;
        if (j + 1 < len && s[j] >= '0' && s[j] <= '5' && is_digit((unsigned char)s[j + 1])) j += 2;
        else if (j < len && is_digit((unsigned char)s[j])) j += 1;
        else break;
        i = j;
        groups++;
    }
    return groups ? i : 0;
}

/* `[eE][-+][0-9]+` optional; returns the end (== i when absent) or 0 on a malformed exponent. */
static size_t span_exp(const char *s, size_t len, size_t i)
{
    if (i >= len || (s[i] != 'e' && s[i] != 'E')) return i;
    if (i + 1 >= len || (s[i + 1] != '+' && s[i + 1] != '-')) return 0;
    size_t j = i + 2, k = j;
    while (k < len && is_digit((unsigned char)s[k])) k++;
    return k > j ? k : 0;
}

static int match_float(const char *s, size_t len)
{
    size_t i = 0;
    if (len == 0) return 0;
    static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
    if (eq_any(s, len, nans)) return 1;
    if (s[0] == '-' || s[0] == '+') i = 1;
    static const char *const infs[] = {".inf", ".Inf", ".INF", NULL};
    if (eq_any(s + i, len - i, infs)) return 1;
    if (i == 0 && s[0] == '.') { /* \.[0-9][0-9_]*(exp)? */
        if (len < 2 || !is_digit((unsigned char)s[1])) return 0;
        size_t j = span_us(s, len, 2, is_digit);
        return span_exp(s, len, j) == len;
    }
    if (i >= len || !is_digit((unsigned char)s[i])) return 0;
    size_t j = span_us(s, len, i + 1, is_digit);
    if (j < len && s[j] == '.') { /* [0-9][0-9_]*\.[0-9_]*(exp)? */
        size_t k = span_us(s, len, j + 1, is_digit);
        return span_exp(s, len, k) == len;
    }
    size_t k = span_base60(s, len, j); /* [0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]* */
    if (!k || k >= len || s[k] != '.') return 0;
    return span_us(s, len, k + 1, is_digit) == len;
}

static int match_int(const char *s, size_t len)
{
    size_t i = 0;
    if (len && (s[0] == '-' || s[0] == '+')) i = 1;
    if (i >= len || !is_digit((unsigned char)s[i])) return 0;
    if (s[i] == '0') {
        if (i + 1 == len) return 1;
        if (s[i + 1] == 'b') return i + 2 < len && span_us(s, len, i + 2, is_bdigit) == len;
        if (s[i + 1] == 'x') return i + 2 < len && span_us(s, len, i + 2, is_xdigit_) == len;
        return span_us(s, len, i + 1, is_odigit) == len;
    }
    size_t j = span_us(s, len, i + 1, is_digit);
    if (j == len) return 1;
    return span_base60(s, len, j) == len;
}

/* Copies s without '_' into buf (NUL-terminated); 0 if it does not fit. */
static int strip_us(const char *s, size_t len, char *buf)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '_') continue;
        if (o + 1 >= NUM_BUF) return 0;
        buf[o++] = s[i];
    }
    buf[o] = 0;
    return 1;
}

/* Value of a matched int or float literal (PyYAML construct_yaml_int/float). */
static int construct_number(const char *s, size_t len, int is_float, double *out)
{
    char buf[NUM_BUF];
    if (!strip_us(s, len, buf)) return -1;
    char *p = buf;
    double sign = 1;
    if (*p == '-' || *p == '+') { if (*p == '-') sign = -1; p++; }
    if (is_float) {
        if (p[0] == '.' && (p[1] == 'i' || p[1] == 'I')) { *out = sign * INFINITY; return 0; }
        if (p[0] == '.' && (p[1] == 'n' || p[1] == 'N')) { *out = NAN; return 0; }
    }
    if (strchr(p, ':')) { /* base 60: digits of the last group may be fractional for floats */
        double v = 0;
        for (char *tok = p; tok; ) {
            char *colon = strchr(tok, ':');
            if (colon) *colon = 0;
            v = v * 60 + strtod(tok, NULL);
            tok = colon ? colon + 1 : NULL;
        }
        *out = sign * v;
        return 0;
    }
    if (is_float) { *out = sign * strtod(p, NULL); return 0; }
    int base = 10;
    if (p[0] == '0' && p[1] == 'b') { base = 2; p += 2; }
    else if (p[0] == '0' && p[1] == 'x') { base = 16; p += 2; }
    else if (p[0] == '0' && p[1]) { base = 8; p += 1; }
    if (!*p) return -1; /* "0b_": PyYAML would crash; call it a string */
    double v = 0;
    for (; *p; p++) {
        int d = is_digit((unsigned char)*p) ? *p - '0' : ((*p | 0x20) - 'a' + 10);
        v = v * base + d;
    }
    *out = sign * v;
    return 0;
}

enum alloy_yaml_type alloy_yaml_resolve(const char *s, size_t len, double *num)
{
    static const char *const nulls[] = {"~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", NULL};
    static const char *const falses[] = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", NULL};
    double v = 0;
    enum alloy_yaml_type t = ALLOY_YAML_STR;
    if (len == 0 || eq_any(s, len, nulls)) t = ALLOY_YAML_NULL;
    else if (eq_any(s, len, trues)) { t = ALLOY_YAML_BOOL; v = 1; }
    else if (eq_any(s, len, falses)) { t = ALLOY_YAML_BOOL; v = 0; }
    else if (match_float(s, len)) { if (construct_number(s, len, 1, &v) == 0) t = ALLOY_YAML_FLOAT; }
    else if (match_int(s, len)) { if (construct_number(s, len, 0, &v) == 0) t = ALLOY_YAML_INT; }
    if (num) *num = v;
    return t;
}

static int is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static int ieq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if ((a[i] | 0x20) != b[i]) return 0;
    return 1;
}

int alloy_yaml_coerce_number(const char *s, size_t len, double *out)
{
    while (len && is_space((unsigned char)*s)) { s++; len--; }
    while (len && is_space((unsigned char)s[len - 1])) len--;
    size_t i = 0;
    double sign = 1;
    if (len && (s[0] == '+' || s[0] == '-')) { sign = s[0] == '-' ? -1 : 1; i = 1; }
    if (ieq(s + i, len - i, "inf") || ieq(s + i, len - i, "infinity")) { *out = sign * INFINITY; return 0; }
    if (ieq(s + i, len - i, "nan")) { *out = NAN; return 0; }
    size_t d0 = i;
    while (i < len && is_digit((unsigned char)s[i])) i++;
    size_t nint = i - d0, nfrac = 0;
    if (i < len && s[i] == '.') {
        size_t f0 = ++i;
        while (i < len && is_digit((unsigned char)s[i])) i++;
        nfrac = i - f0;
    }
    if (nint + nfrac == 0) return -1;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        size_t e0 = i;
        while (i < len && is_digit((unsigned char)s[i])) i++;
        if (i == e0) return -1;
    }
    if (i != len || len >= NUM_BUF) return -1;
    char buf[NUM_BUF];
    memcpy(buf, s, len);
    buf[len] = 0;
    *out = strtod(buf, NULL);
    return 0;
}

/* ---------------------------------------------------------------- evaluation */

static void setting_free(struct alloy_setting *s, int depth)
{
    free(s->grad);
    for (size_t i = 0; i < s->nconds; i++) {
        free(s->conds[i].filter);
        if (depth < ALLOY_SETTING_MAX_DEPTH) setting_free(&s->conds[i].value, depth + 1);
    }
    free(s->conds);
    memset(s, 0, sizeof *s);
}

void alloy_params_free(struct alloy_params *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->names[i]);
        setting_free(&p->values[i], 0);
    }
    free(p->names);
    free(p->values);
    free(p->pos);
    memset(p, 0, sizeof *p);
}

const struct alloy_setting *alloy_params_get(const struct alloy_params *p, const char *name)
{
    if (!p || !name) return NULL;
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->names[i], name) == 0) return &p->values[i];
    return NULL;
}

static int filter_matches(const char *filter, const char *tensor)
{
    if (!filter || strcmp(filter, "*") == 0) return 1;
    return tensor && *tensor && strstr(tensor, filter) != NULL;
}

static int eval_at(const struct alloy_setting *s, const char *tensor, double t, double *out, int depth)
{
    if (!s || depth > ALLOY_SETTING_MAX_DEPTH) return 0;
    switch (s->kind) {
    case ALLOY_SETTING_SCALAR:
        *out = s->value;
        return 1;
    case ALLOY_SETTING_GRADIENT: {
        if (!s->grad || s->ngrad == 0) return 0;
        if (!(t >= 0)) t = 0; /* also NaN */
        if (t > 1) t = 1;
        size_t last = s->ngrad - 1;
        double scaled = t * (double)last;
        size_t i0 = (size_t)scaled; /* int(): floor for scaled >= 0 */
        if (i0 > last) i0 = last;
        size_t i1 = i0 + 1 < last ? i0 + 1 : last;
        double frac = scaled - (double)i0;
        *out = (1 - frac) * s->grad[i0] + frac * s->grad[i1];
        return 1;
    }
    case ALLOY_SETTING_COND:
        for (size_t i = 0; i < s->nconds; i++)
            if (filter_matches(s->conds[i].filter, tensor))
                return eval_at(&s->conds[i].value, tensor, t, out, depth + 1);
        return 0;
    }
    return 0;
}

int alloy_setting_eval(const struct alloy_setting *s, const char *tensor, double t, double *out)
{
    double v;
    if (!eval_at(s, tensor, t, &v, 0)) return 0;
    if (out) *out = v;
    return 1;
}
