/*
 * json_members.h — walking the members of a large JSON object one at a time.
 *
 * DESIGN
 *   jansson builds a tree that costs about 18 bytes of memory per byte of
 *   JSON (issue 13). For a big object whose members are small (a safetensors
 *   header: one member per tensor; an index's weight_map) this scanner finds where each member's key
 *   and value begin and end, so the caller hands jansson one member at a time
 *   and frees it before the next. The scanner checks structure only (strings
 *   closed, brackets balanced, commas and colons in place): every key and
 *   value is still parsed, and so validated, by jansson, except the plain
 *   strings and integers that json_plain_string / json_plain_uint accept
 *   (their text is their value, valid by construction). It never recurses;
 *   O(n) in the text. Text in memory costs nothing more; a file walked with
 *   json_stream_members costs a window of it (refilled with pread), never
 *   its whole size. json_part bounds each tree: a member other than a
 *   string is parsed only up to JSON_PART_MAX bytes.
 */
#ifndef ALLOY_FORMATS_JSON_MEMBERS_H
#define ALLOY_FORMATS_JSON_MEMBERS_H

#include <jansson.h>
#include <stddef.h>

struct alloy_err;

/* One member: key s[ks, ke) (with its quotes), value s[vs, ve), where s is the text handed to the callback;
 * base is the offset of s[0] in the whole text (0 for text in memory), for positions in messages. */
struct json_member { size_t ks, ke, vs, ve, base; };

typedef int (*json_member_fn)(void *ctx, const char *s, const struct json_member *m);

/* Walks the object that is the whole of s[from, to) (surrounding whitespace
 * allowed). For each member calls fn (when not NULL); a nonzero return stops
 * the walk and is returned. Counts members in *count. A structural error
 * returns -1 with *what (a description) and *at (its byte offset in s). */
int json_members(const char *s, size_t from, size_t to, json_member_fn fn, void *ctx, size_t *count,
                 const char **what, size_t *at);

/* A file read in pieces: a window of its bytes [base, base + len), refilled with pread as a walk moves on. */
struct json_stream {
    int fd;             /* borrowed, read with pread */
    size_t size;        /* the file's size when opened: the text is bytes [0, size) */
    char *buf;          /* the window (owned) */
    size_t base, len, cap;
    int err;            /* errno of a failed read (EIO: the file ended early; ENOMEM: the window could not grow) */
};

/* A stream over fd with a window of cap bytes (at most size); 0, or -1 when the window cannot be allocated. */
int json_stream_init(struct json_stream *js, int fd, size_t size, size_t cap);
/* json_members over bytes [from, to) of the file: the same walk, counts, errors and positions (offsets in the
 * file). held = 1: each member is in the window when fn is called (the window grows for a longer one);
 * held = 0: only the key is (a value, however long, costs no memory; fn reads it with json_stream_window).
 * Returns -2 when the file could not be read (js->err says why). */
int json_stream_members(struct json_stream *js, size_t from, size_t to, int held, json_member_fn fn, void *ctx,
                        size_t *count, const char **what, size_t *at);
/* Bytes [a, b) of the file, read into the window (which they replace); NULL when they cannot be read. */
const char *json_stream_window(struct json_stream *js, size_t a, size_t b);
void json_stream_free(struct json_stream *js);

/* The most bytes of a value json_part parses into a tree (strings excepted, whose copy costs about their
 * size): a member of a header or an index past it cannot be a tensor record or index metadata. */
#define JSON_PART_MAX ((size_t)1 << 20)

/* jansson's parse of s[a, b) (any JSON value, duplicate keys refused); NULL on
 * error, with *rc set to "<label>: <prefix>: <jansson's message> (byte N)"; a
 * value that is not a string and spans more than JSON_PART_MAX bytes is refused
 * unparsed. */
json_t *json_part(const char *s, size_t a, size_t b, const char *label, const char *prefix, int *rc,
                  struct alloy_err *err);
/* The same for bytes s[a, b) that stand at offset origin + a of the whole text (for the positions reported). */
json_t *json_part_at(const char *s, size_t a, size_t b, size_t origin, const char *label, const char *prefix,
                     int *rc, struct alloy_err *err);

/* The fast path for the common key or value: when s[a, b) is a string token whose contents are printable
 * ASCII without escapes (what jansson would decode to the same bytes), sets *p and *n to the contents and
 * returns 1. Otherwise returns 0, and the caller parses the token with json_part (which decodes escapes and
 * reports errors). */
int json_plain_string(const char *s, size_t a, size_t b, const char **p, size_t *n);

/* The same for a non-negative integer token s[a, b) of at most 18 digits without a leading zero (any value
 * jansson reads as that integer); 1 with *v set, else 0. */
int json_plain_uint(const char *s, size_t a, size_t b, unsigned long long *v);

#endif
