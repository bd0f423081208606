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
 *   (their text is their value, valid by construction). It never recurses
 *   and allocates nothing; O(n) in the text. json_part bounds each tree: a
 *   member other than a string is parsed only up to JSON_PART_MAX bytes.
 */
#ifndef ALLOY_FORMATS_JSON_MEMBERS_H
#define ALLOY_FORMATS_JSON_MEMBERS_H

#include <jansson.h>
#include <stddef.h>

struct alloy_err;

/* One member: key s[ks, ke) (with its quotes), value s[vs, ve). */
struct json_member { size_t ks, ke, vs, ve; };

/* Walks the object that is the whole of s[from, to) (surrounding whitespace
 * allowed). For each member calls fn (when not NULL); a nonzero return stops
 * the walk and is returned. Counts members in *count. A structural error
 * returns -1 with *what (a description) and *at (its byte offset in s). */
int json_members(const char *s, size_t from, size_t to, int (*fn)(void *ctx, const char *s, const struct json_member *m),
                 void *ctx, size_t *count, const char **what, size_t *at);

/* The most bytes of a value json_part parses into a tree (strings excepted, whose copy costs about their
 * size): a member of a header or an index past it cannot be a tensor record or index metadata. */
#define JSON_PART_MAX ((size_t)1 << 20)

/* jansson's parse of s[a, b) (any JSON value, duplicate keys refused); NULL on
 * error, with *rc set to "<label>: <prefix>: <jansson's message> (byte N)"; a
 * value that is not a string and spans more than JSON_PART_MAX bytes is refused
 * unparsed. */
json_t *json_part(const char *s, size_t a, size_t b, const char *label, const char *prefix, int *rc,
                  struct alloy_err *err);

/* The fast path for the common key or value: when s[a, b) is a string token whose contents are printable
 * ASCII without escapes (what jansson would decode to the same bytes), sets *p and *n to the contents and
 * returns 1. Otherwise returns 0, and the caller parses the token with json_part (which decodes escapes and
 * reports errors). */
int json_plain_string(const char *s, size_t a, size_t b, const char **p, size_t *n);

/* The same for a non-negative integer token s[a, b) of at most 18 digits without a leading zero (any value
 * jansson reads as that integer); 1 with *v set, else 0. */
int json_plain_uint(const char *s, size_t a, size_t b, unsigned long long *v);

#endif
