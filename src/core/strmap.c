/*
 * strmap.c — see strmap.h.
 *
 * DESIGN
 *   Linear probing in a power-of-two table kept at most half full. Each key's
 *   64-bit FNV-1a hash picks its home slot with the low bits, and its high 32
 *   bits are stored beside the key as a tag, so a probe compares strings only
 *   when the tags match (almost only for the key itself). Growing rehashes
 *   each key once; alloy_strmap_reserve sizes the table up front when the
 *   count is known (a header's tensors), so large tables are built without
 *   regrowth.
 */
#include "core/strmap.h"
#include "core/internal.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h ^ (h >> 29); /* the low bits pick the slot: fold the better-mixed high bits in */
}

static int resize(struct alloy_strmap *m, size_t ncap)
{
    const char **nk = alloy_xcalloc(ncap, sizeof *nk);
    uint32_t *nt = alloy_xcalloc(ncap, sizeof *nt);
    size_t *nv = alloy_xcalloc(ncap, sizeof *nv);
    if (!nk || !nt || !nv) { free(nk); free(nt); free(nv); return -1; }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_str(m->keys[i]) & (ncap - 1);
        while (nk[j]) j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i];
        nt[j] = m->tags[i];
        nv[j] = m->vals[i];
    }
    free(m->keys);
    free(m->tags);
    free(m->vals);
    m->keys = nk;
    m->tags = nt;
    m->vals = nv;
    m->cap = ncap;
    return 0;
}

int alloy_strmap_reserve(struct alloy_strmap *m, size_t n)
{
    size_t cap = m->cap ? m->cap : 16;
    while (cap / 2 < n) {
        if (cap > SIZE_MAX / 4 / sizeof(size_t)) return -1;
        cap *= 2;
    }
    return cap == m->cap ? 0 : resize(m, cap);
}

/* The slot holding key, or the empty slot where it belongs. */
static size_t probe(const struct alloy_strmap *m, const char *key, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    size_t j = h & (m->cap - 1);
    while (m->keys[j] && (m->tags[j] != tag || strcmp(m->keys[j], key) != 0)) j = (j + 1) & (m->cap - 1);
    return j;
}

int alloy_strmap_put(struct alloy_strmap *m, const char *key, size_t val, int *existing)
{
    if (existing) *existing = 0;
    if ((m->count + 1) * 2 > m->cap && resize(m, m->cap ? m->cap * 2 : 16) != 0) return -1;
    uint64_t h = hash_str(key);
    size_t j = probe(m, key, h);
    if (m->keys[j]) {
        if (existing) *existing = 1;
        return 0;
    }
    m->keys[j] = key;
    m->tags[j] = (uint32_t)(h >> 32);
    m->vals[j] = val;
    m->count++;
    return 0;
}

int alloy_strmap_get(const struct alloy_strmap *m, const char *key, size_t *val)
{
    if (!m->cap) return 0;
    size_t j = probe(m, key, hash_str(key));
    if (!m->keys[j]) return 0;
    if (val) *val = m->vals[j];
    return 1;
}

void alloy_strmap_free(struct alloy_strmap *m)
{
    free(m->keys);
    free(m->tags);
    free(m->vals);
    *m = (struct alloy_strmap){0};
}
