/*
 * strmap.h — an open-addressing hash map from borrowed C strings to indices.
 *
 * Keys are not copied: they must outlive the map (they normally point into
 * the tensor table that owns them). Used for tensor-name lookups.
 */
#ifndef ALLOY_STRMAP_H
#define ALLOY_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct alloy_strmap {
    size_t cap;         /* power of two, 0 when empty */
    size_t count;
    const char **keys;
    uint32_t *tags;     /* the high half of each key's hash: most mismatches end without strcmp */
    size_t *vals;
};

/* Returns 0, or -1 on allocation failure. Sets *existing (if non-NULL) to 1
 * and leaves the map unchanged when the key is already present. */
int  alloy_strmap_put(struct alloy_strmap *m, const char *key, size_t val, int *existing);
/* Returns 1 and sets *val when found, else 0. */
int  alloy_strmap_get(const struct alloy_strmap *m, const char *key, size_t *val);
/* Sizes the table for n keys at once (no regrowth while they are put); 0, or -1 on allocation failure. */
int  alloy_strmap_reserve(struct alloy_strmap *m, size_t n);
void alloy_strmap_free(struct alloy_strmap *m);

#endif
