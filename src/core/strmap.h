/*
 * strmap.h — an open-addressing hash map from borrowed C strings to indices.
 *
 * Keys are not copied: they must outlive the map (they normally point into
 * the tensor table that owns them). Used for tensor-name lookups. The *n
 * forms take the key's length (the key need not be NUL-terminated for a
 * lookup; a key that is put must stay readable for that many bytes).
 */
#ifndef ALLOY_STRMAP_H
#define ALLOY_STRMAP_H

#include <stddef.h>
#include <stdint.h>

/* One slot: a probe reads one slot (one cache line) and compares bytes only when tag and length match. */
struct alloy_strmap_slot {
    const char *key;    /* NULL: empty */
    size_t val;
    uint32_t tag;       /* the high half of the key's hash */
    uint32_t len;       /* the key's length */
};

struct alloy_strmap {
    size_t cap;         /* power of two, 0 when empty */
    size_t count;
    struct alloy_strmap_slot *slots;
};

/* Returns 0, or -1 on allocation failure (or a key of 2^32 bytes or more). Sets *existing (if non-NULL) to 1
 * and leaves the map unchanged when the key is already present. */
int  alloy_strmap_put(struct alloy_strmap *m, const char *key, size_t val, int *existing);
int  alloy_strmap_putn(struct alloy_strmap *m, const char *key, size_t len, size_t val, int *existing);
/* Returns 1 and sets *val when found, else 0. */
int  alloy_strmap_get(const struct alloy_strmap *m, const char *key, size_t *val);
int  alloy_strmap_getn(const struct alloy_strmap *m, const char *key, size_t len, size_t *val);
/* The slot holding key, or NULL when absent. Its value may be changed in place, and its key pointer replaced
 * by another copy of the same bytes (which must then outlive the map instead). */
struct alloy_strmap_slot *alloy_strmap_find(struct alloy_strmap *m, const char *key, size_t len);
/* A hint that key will be looked up soon: its home slot is brought into the cache meanwhile. */
void alloy_strmap_prefetch(const struct alloy_strmap *m, const char *key, size_t len);
/* Every value v becomes to[v] (each v must index to). */
void alloy_strmap_remap(struct alloy_strmap *m, const size_t *to);
/* Sizes the table for n keys at once (no regrowth while they are put); 0, or -1 on allocation failure. */
int  alloy_strmap_reserve(struct alloy_strmap *m, size_t n);
void alloy_strmap_free(struct alloy_strmap *m);

#endif
