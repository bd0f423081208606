/*
 * strmap.c — see strmap.h. FNV-1a hashing, linear probing, load <= 1/2.
 */
#include "core/strmap.h"
#include "core/internal.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static int grow(struct alloy_strmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    const char **nk = alloy_xcalloc(ncap, sizeof *nk);
    size_t *nv = alloy_xcalloc(ncap, sizeof *nv);
    if (!nk || !nv) { free(nk); free(nv); return -1; }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_str(m->keys[i]) & (ncap - 1);
        while (nk[j]) j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i];
        nv[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = nk;
    m->vals = nv;
    m->cap = ncap;
    return 0;
}

int alloy_strmap_put(struct alloy_strmap *m, const char *key, size_t val, int *existing)
{
    if (existing) *existing = 0;
    if ((m->count + 1) * 2 > m->cap && grow(m) != 0) return -1;
    size_t j = hash_str(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) {
            if (existing) *existing = 1;
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = key;
    m->vals[j] = val;
    m->count++;
    return 0;
}

int alloy_strmap_get(const struct alloy_strmap *m, const char *key, size_t *val)
{
    if (!m->cap) return 0;
    size_t j = hash_str(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) {
            if (val) *val = m->vals[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void alloy_strmap_free(struct alloy_strmap *m)
{
    free(m->keys);
    free(m->vals);
    *m = (struct alloy_strmap){0};
}
