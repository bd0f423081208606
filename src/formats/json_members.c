/*
 * json_members.c — the member scanner of json_members.h.
 *
 * DESIGN
 *   A single forward pass with a bracket depth counter (no recursion, no
 *   allocation for text in memory). Scalars (numbers, true, false, null) are
 *   skipped as runs of characters up to the next delimiter; jansson judges
 *   them later. The scanner reads the text through a window (struct
 *   json_stream): for text in memory the window is the whole text; for a
 *   file it is a buffer refilled with pread as the scan moves on. A walk
 *   that holds its members keeps each member's first byte in the window
 *   (the window grows for a member longer than it); the bytes before are
 *   dropped on the next refill, so a file costs its window, not its size.
 *   Positions are offsets in the whole text, so every message is the same
 *   whether the text was read whole or in pieces.
 */
#include "formats/json_members.h"
#include "core/internal.h"

#include <errno.h>
#include <unistd.h>

struct scan {
    struct json_stream *js;
    const char *w;  /* the window's bytes: text[base + k] is w[k] */
    size_t o, lim;  /* the position in the window; the window's bytes that belong to the region */
    size_t to;      /* the end of the scanned region (an offset in the text) */
    size_t keep;    /* the first byte the window must keep when refilled */
    int follow;     /* 1: keep follows the position (members are not held) */
};

enum { WS = 1, DELIM = 2 };
static const unsigned char g_class[256] = {
    [' '] = WS | DELIM, ['\t'] = WS | DELIM, ['\n'] = WS | DELIM, ['\r'] = WS | DELIM,
    [','] = DELIM, [':'] = DELIM, ['{'] = DELIM, ['}'] = DELIM, ['['] = DELIM, [']'] = DELIM, ['"'] = DELIM,
};

static inline size_t pos(const struct scan *c) { return c->js->base + c->o; }

static int is_ws(int c) { return c >= 0 && (g_class[c] & WS); }

/* Makes text[keep, need] readable: drops the window's bytes before keep, grows it when needed, reads on. */
static int js_fill(struct json_stream *js, size_t keep, size_t need)
{
    if (js->fd < 0 || need >= js->size || js->err) return -1;
    if (keep < js->base || keep > js->base + js->len) { /* a region before or past the window: start afresh */
        js->base = keep;
        js->len = 0;
    } else if (keep > js->base) {
        memmove(js->buf, js->buf + (keep - js->base), js->len - (keep - js->base));
        js->len -= keep - js->base;
        js->base = keep;
    }
    if (need - js->base >= js->cap) {
        size_t ncap = js->cap ? js->cap : 4096;
        while (ncap <= need - js->base) ncap *= 2;
        char *nb = alloy_xrealloc(js->buf, ncap);
        if (!nb) return js->err = ENOMEM, -1;
        js->buf = nb;
        js->cap = ncap;
    }
    size_t want = js->size - js->base < js->cap ? js->size - js->base : js->cap; /* fill the window */
    while (js->len < want) {
        ssize_t r = pread(js->fd, js->buf + js->len, want - js->len, (off_t)(js->base + js->len));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return js->err = r < 0 ? errno : EIO, -1; /* EIO: the file shrank while read */
        js->len += (size_t)r;
    }
    return 0;
}

/* Points the scan at the window (after a fill, or to start). */
static void sync_window(struct scan *c, size_t i)
{
    struct json_stream *js = c->js;
    c->w = js->buf;
    c->o = i - js->base;
    c->lim = c->to - js->base < js->len ? c->to - js->base : js->len;
}

/* The byte at the position, or -1 at the end of the region (or when the window cannot be filled). */
static int at_slow(struct scan *c)
{
    size_t i = pos(c);
    if (i >= c->to || js_fill(c->js, c->follow ? i : c->keep, i)) return -1;
    sync_window(c, i);
    return (unsigned char)c->w[c->o];
}

static inline int at(struct scan *c)
{
    return c->o < c->lim ? (unsigned char)c->w[c->o] : at_slow(c);
}

static void skip_ws(struct scan *c)
{
    do
        while (c->o < c->lim && (g_class[(unsigned char)c->w[c->o]] & WS)) c->o++;
    while (c->o >= c->lim && is_ws(at_slow(c)));
}

/* Eight bytes at a time: 1 when no byte of the word at p is '"' or '\\' (a zero byte of v ^ q is a q). */
static inline int word_plain(const char *p)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t v, q, b;
    memcpy(&v, p, 8);
    q = v ^ (ones * '"');
    b = v ^ (ones * '\\');
    return !(((q - ones) & ~q) & highs) && !(((b - ones) & ~b) & highs);
}

/* At a '"': moves past the closing quote; each window's run of plain bytes is skipped in one tight loop. */
static int skip_string(struct scan *c)
{
    c->o++;
    while (at(c) >= 0) {
        const char *p = c->w + c->o, *e = c->w + c->lim;
        while (e - p >= 8 && word_plain(p)) p += 8;
        while (p < e && *p != '"' && *p != '\\') p++;
        c->o = (size_t)(p - c->w);
        if (p == e) continue;
        c->o += *p == '"' ? 1 : 2; /* a backslash escapes the next byte, whatever it is */
        if (*p == '"') return 0;
    }
    return -1;
}

/* Moves past one value (brackets balanced outside strings). */
static int skip_value(struct scan *c)
{
    size_t depth = 0;
    do {
        skip_ws(c);
        int ch = at(c);
        if (ch < 0) return -1;
        if (ch == '"') {
            if (skip_string(c)) return -1;
        } else if (ch == '{' || ch == '[') {
            depth++;
            c->o++;
        } else if (ch == '}' || ch == ']') {
            if (!depth) return -1;
            depth--;
            c->o++;
        } else if (ch == ',' || ch == ':') {
            if (!depth) return -1;
            c->o++;
        } else {
            do c->o++; while ((ch = at(c)) >= 0 && !(g_class[ch] & DELIM));
        }
    } while (depth);
    return 0;
}

static int fail(const char **what, size_t *at_, const char *msg, size_t i)
{
    *what = msg;
    *at_ = i;
    return -1;
}

/* Calls fn for member m: held, the member is in the window; else only its key is brought back into it. */
static int call_member(struct scan *c, json_member_fn fn, void *ctx, struct json_member m)
{
    struct json_stream *js = c->js;
    size_t i = pos(c);
    if (c->follow && !json_stream_window(js, m.ks, m.ke)) return -2; /* js->err says why */
    m.base = js->base;
    m.ks -= m.base, m.ke -= m.base, m.vs -= m.base, m.ve -= m.base;
    int rc = fn(ctx, js->buf, &m);
    sync_window(c, i); /* fn may have read other bytes into the window */
    return rc;
}

/* One member at the position: its extent in *m; 0, or -1 with *what and *at. */
static int scan_member(struct scan *c, struct json_member *m, const char **what, size_t *at_)
{
    c->keep = pos(c);
    if (at(c) != '"') return fail(what, at_, "expected a string key", pos(c));
    m->ks = pos(c);
    if (skip_string(c)) return fail(what, at_, "unterminated string", m->ks);
    m->ke = pos(c);
    skip_ws(c);
    if (at(c) != ':') return fail(what, at_, "expected ':'", pos(c));
    c->o++;
    skip_ws(c);
    m->vs = pos(c);
    if (skip_value(c)) return fail(what, at_, "unbalanced or truncated value", m->vs);
    m->ve = pos(c);
    return 0;
}

/* Whitespace between members: nothing before it needs keeping (a held member keeps only its own bytes). */
static void skip_gap(struct scan *c)
{
    int follow = c->follow;
    c->follow = 1;
    skip_ws(c);
    c->follow = follow;
}

static int walk(struct scan *c, json_member_fn fn, void *ctx, size_t *count, const char **what, size_t *at_)
{
    *count = 0;
    skip_gap(c);
    if (at(c) != '{') return fail(what, at_, "expected an object", pos(c));
    c->o++;
    skip_gap(c);
    if (at(c) == '}') {
        c->o++;
    } else {
        for (;;) {
            struct json_member m = {0};
            skip_gap(c);
            if (scan_member(c, &m, what, at_)) return -1;
            ++*count;
            int rc = fn ? call_member(c, fn, ctx, m) : 0;
            if (rc) return rc;
            skip_gap(c);
            int ch = at(c);
            if (ch == ',') { c->o++; continue; }
            if (ch == '}') { c->o++; break; }
            return fail(what, at_, "expected ',' or '}'", pos(c));
        }
    }
    skip_gap(c);
    if (pos(c) != c->to) return fail(what, at_, "end of text expected after the object", pos(c));
    return 0;
}

int json_members(const char *s, size_t from, size_t to, json_member_fn fn, void *ctx, size_t *count,
                 const char **what, size_t *at_)
{
    struct json_stream js = {.fd = -1, .size = to, .buf = (char *)s, .len = to}; /* only read */
    struct scan c = {.js = &js, .to = to, .keep = from};
    sync_window(&c, from);
    return walk(&c, fn, ctx, count, what, at_);
}

/* ------------------------------------------------------------ a file read in pieces */

int json_stream_init(struct json_stream *js, int fd, size_t size, size_t cap)
{
    *js = (struct json_stream){.fd = fd, .size = size, .cap = cap < size ? cap : size};
    if (js->cap && !(js->buf = alloy_xmalloc(js->cap))) return -1;
    return 0;
}

int json_stream_members(struct json_stream *js, size_t from, size_t to, int held, json_member_fn fn, void *ctx,
                        size_t *count, const char **what, size_t *at_)
{
    struct scan c = {.js = js, .to = to, .keep = from, .follow = !held};
    sync_window(&c, from);
    int rc = walk(&c, fn, ctx, count, what, at_);
    return js->err ? -2 : rc;
}

const char *json_stream_window(struct json_stream *js, size_t a, size_t b)
{
    if (b <= a) return "";
    if ((a < js->base || b > js->base + js->len) && js_fill(js, a, b - 1)) return NULL;
    return js->buf + (a - js->base);
}

void json_stream_free(struct json_stream *js)
{
    free(js->buf);
    js->buf = NULL;
}

json_t *json_part_at(const char *s, size_t a, size_t b, size_t origin, const char *label, const char *prefix,
                     int *rc, struct alloy_err *err)
{
    size_t v = a;
    while (v < b && is_ws(s[v])) v++;
    if (v < b && s[v] != '"' && b - v > JSON_PART_MAX) { /* a tree would cost ~18 bytes per byte; a string ~1 */
        *rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: byte %zu: expected a string or a JSON value of at most %zu "
                            "bytes, found %zu bytes", label, origin + v, (size_t)JSON_PART_MAX, b - v);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(s + a, b - a, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j)
        *rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: %s (byte %zu)", label, prefix, jerr.text,
                            origin + a + (size_t)jerr.position);
    return j;
}

json_t *json_part(const char *s, size_t a, size_t b, const char *label, const char *prefix, int *rc,
                  struct alloy_err *err)
{
    return json_part_at(s, a, b, 0, label, prefix, rc, err);
}

int json_plain_string(const char *s, size_t a, size_t b, const char **p, size_t *n)
{
    if (b - a < 2 || s[a] != '"' || s[b - 1] != '"') return 0;
    size_t i = a + 1;
    for (; i + 8 <= b - 1; i += 8) { /* eight printable ASCII bytes, none '"' or '\\' */
        const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
        uint64_t v;
        memcpy(&v, s + i, 8);
        if (((v - ones * 0x20) | (v + ones * 0x01)) & highs || !word_plain(s + i)) break;
    }
    for (; i < b - 1; i++)
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
