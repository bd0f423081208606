/*
 * json_members.c — the member scanner of json_members.h.
 *
 * DESIGN
 *   A single forward pass with a bracket depth counter (no recursion, no
 *   allocation). Scalars (numbers, true, false, null) are skipped as runs of
 *   characters up to the next delimiter; jansson judges them later.
 */
#include "formats/json_members.h"
#include "core/internal.h"

struct scan { const char *s; size_t i, n; };

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_delim(char c) { return is_ws(c) || c == ',' || c == ':' || c == '{' || c == '}' || c == '[' || c == ']' || c == '"'; }

static void skip_ws(struct scan *c)
{
    while (c->i < c->n && is_ws(c->s[c->i])) c->i++;
}

/* At a '"': moves past the closing quote. */
static int skip_string(struct scan *c)
{
    for (c->i++; c->i < c->n; c->i++) {
        if (c->s[c->i] == '\\') c->i++;
        else if (c->s[c->i] == '"') { c->i++; return 0; }
    }
    return -1;
}

/* Moves past one value (brackets balanced outside strings). */
static int skip_value(struct scan *c)
{
    size_t depth = 0;
    do {
        skip_ws(c);
        if (c->i >= c->n) return -1;
        char ch = c->s[c->i];
        if (ch == '"') {
            if (skip_string(c)) return -1;
        } else if (ch == '{' || ch == '[') {
            depth++;
            c->i++;
        } else if (ch == '}' || ch == ']') {
            if (!depth) return -1;
            depth--;
            c->i++;
        } else if (ch == ',' || ch == ':') {
            if (!depth) return -1;
            c->i++;
        } else {
            do c->i++; while (c->i < c->n && !is_delim(c->s[c->i]));
        }
    } while (depth);
    return 0;
}

static int fail(const char **what, size_t *at, const char *msg, size_t i)
{
    *what = msg;
    *at = i;
    return -1;
}

int json_members(const char *s, size_t from, size_t to, int (*fn)(void *ctx, const char *s, const struct json_member *m),
                 void *ctx, size_t *count, const char **what, size_t *at)
{
    struct scan c = {s, from, to};
    *count = 0;
    skip_ws(&c);
    if (c.i >= c.n || s[c.i] != '{') return fail(what, at, "expected an object", c.i);
    c.i++;
    skip_ws(&c);
    if (c.i < c.n && s[c.i] == '}') {
        c.i++;
    } else {
        for (;;) {
            struct json_member m;
            skip_ws(&c);
            if (c.i >= c.n || s[c.i] != '"') return fail(what, at, "expected a string key", c.i);
            m.ks = c.i;
            if (skip_string(&c)) return fail(what, at, "unterminated string", m.ks);
            m.ke = c.i;
            skip_ws(&c);
            if (c.i >= c.n || s[c.i] != ':') return fail(what, at, "expected ':'", c.i);
            c.i++;
            skip_ws(&c);
            m.vs = c.i;
            if (skip_value(&c)) return fail(what, at, "unbalanced or truncated value", m.vs);
            m.ve = c.i;
            ++*count;
            int rc = fn ? fn(ctx, s, &m) : 0;
            if (rc) return rc;
            skip_ws(&c);
            if (c.i < c.n && s[c.i] == ',') { c.i++; continue; }
            if (c.i < c.n && s[c.i] == '}') { c.i++; break; }
            return fail(what, at, "expected ',' or '}'", c.i);
        }
    }
    skip_ws(&c);
    if (c.i != c.n) return fail(what, at, "end of text expected after the object", c.i);
    return 0;
}

json_t *json_part(const char *s, size_t a, size_t b, const char *label, const char *prefix, int *rc,
                  struct alloy_err *err)
{
    size_t v = a;
    while (v < b && is_ws(s[v])) v++;
    if (v < b && s[v] != '"' && b - v > JSON_PART_MAX) { /* a tree would cost ~18 bytes per byte; a string ~1 */
        *rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: byte %zu: expected a string or a JSON value of at most %zu "
                            "bytes, found %zu bytes", label, v, (size_t)JSON_PART_MAX, b - v);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(s + a, b - a, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j)
        *rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: %s (byte %zu)", label, prefix, jerr.text,
                            a + (size_t)jerr.position);
    return j;
}

int json_plain_string(const char *s, size_t a, size_t b, const char **p, size_t *n)
{
    if (b - a < 2 || s[a] != '"' || s[b - 1] != '"') return 0;
    for (size_t i = a + 1; i < b - 1; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e || s[i] == '\\' || s[i] == '"') return 0;
    *p = s + a + 1;
    *n = b - a - 2;
    return 1;
}

int json_plain_uint(const char *s, size_t a, size_t b, unsigned long long *v)
{
    if (a >= b || b - a > 18 || (s[a] == '0' && b - a > 1)) return 0;
    unsigned long long x = 0;
    for (size_t i = a; i < b; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        x = x * 10 + (unsigned)(s[i] - '0');
    }
    *v = x;
    return 1;
}
