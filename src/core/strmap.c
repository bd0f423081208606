/*
 * strmap.c — see strmap.h.
 *
 * DESIGN
 *   Linear probing in a power-of-two table kept at most half full. Each
 *   key's 64-bit hash (seeded per process, read eight bytes at a time) picks
 *   its home slot with the low bits, and its high 32 bits are stored beside
 *   the key as a tag, so a probe compares strings only
 *   when the tags match (almost only for the key itself). Growing rehashes
 *   each key once; alloy_strmap_reserve sizes the table up front when the
 *   count is known (a header's tensors), so large tables are built without
 *   regrowth.
 */
#include "core/strmap.h"
#include "core/internal.h"

#include <stdatomic.h>
#include <sys/auxv.h>

/* A per-process key from the kernel's AT_RANDOM bytes: names that collide in one run do not in the next, so a
 * header cannot be built to make every probe walk the whole table. */
static uint64_t hash_seed(void)
{
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    uint64_t k = 0x9e3779b97f4a7c15ull;
    if (r) memcpy(&k, r + 8, sizeof k);
    return k | 1;
}

/* Eight bytes at a time: multiply-rotate rounds, then a final avalanche (all 64 bits feed the slot's low bits). */
static uint64_t hash_str(const char *s)
{
    static _Atomic uint64_t seed; /* racing threads store the same value */
    uint64_t h = atomic_load_explicit(&seed, memory_order_relaxed), w;
    if (!h) atomic_store_explicit(&seed, h = hash_seed(), memory_order_relaxed);
    size_t n = strlen(s), i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        h = ((h ^ w) * 0x9e3779b97f4a7c15ull);
        h = (h << 29) | (h >> 35);
    }
    w = 0;
    memcpy(&w, s + i, n - i);
    h = (h ^ w ^ ((uint64_t)n << 56)) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 29);
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
