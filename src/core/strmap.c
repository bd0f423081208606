/*
 * strmap.c — see strmap.h.
 *
 * DESIGN
 *   Linear probing in a power-of-two table kept at most half full. Each
 *   key's 64-bit hash (seeded per process, read eight bytes at a time) picks
 *   its home slot with the low bits, and its high 32 bits are stored beside
 *   the key as a tag, with its length and value, in one 24-byte slot: a
 *   probe touches one slot and compares bytes only when tag and length
 *   match (almost only for the key itself). Growing rehashes
 *   each key once; alloy_strmap_reserve sizes the table up front when the
 *   count is known (a header's tensors), so large tables are built without
 *   regrowth; a large table asks for huge pages (fewer TLB misses).
 */
#include "core/strmap.h"
#include "core/internal.h"

#include <stdatomic.h>
#include <sys/auxv.h>
#include <sys/mman.h>

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
static uint64_t hash_mem(const char *s, size_t n)
{
    static _Atomic uint64_t seed; /* racing threads store the same value */
    uint64_t h = atomic_load_explicit(&seed, memory_order_relaxed), w;
    if (!h) atomic_store_explicit(&seed, h = hash_seed(), memory_order_relaxed);
    size_t i = 0;
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

/* A zeroed table. A large one is probed at random all over: on 2 MiB pages (where the kernel has them on
 * request) its probes miss the TLB far less often than on 4 KiB pages. */
static struct alloy_strmap_slot *new_slots(size_t n)
{
    size_t bytes = n * sizeof(struct alloy_strmap_slot), huge = (size_t)2 << 20;
    if (bytes < 2 * huge) return alloy_xcalloc(n, sizeof(struct alloy_strmap_slot));
    void *p = alloy_xaligned(huge, bytes);
    if (!p) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE); /* advice only: without it the table works the same */
    memset(p, 0, bytes);
    return p;
}

static int resize(struct alloy_strmap *m, size_t ncap)
{
    struct alloy_strmap_slot *ns = new_slots(ncap);
    if (!ns) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        const struct alloy_strmap_slot *o = &m->slots[i];
        if (!o->key) continue;
        size_t j = hash_mem(o->key, o->len) & (ncap - 1);
        while (ns[j].key) j = (j + 1) & (ncap - 1);
        ns[j] = *o;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

int alloy_strmap_reserve(struct alloy_strmap *m, size_t n)
{
    size_t cap = m->cap ? m->cap : 16;
    while (cap / 2 < n) {
        if (cap > SIZE_MAX / 4 / sizeof *m->slots) return -1;
        cap *= 2;
    }
    return cap == m->cap ? 0 : resize(m, cap);
}

/* The slot holding key, or the empty slot where it belongs. */
static size_t probe(const struct alloy_strmap *m, const char *key, size_t len, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    size_t j = h & (m->cap - 1);
    for (;; j = (j + 1) & (m->cap - 1)) {
        const struct alloy_strmap_slot *s = &m->slots[j];
        if (!s->key || (s->tag == tag && s->len == len && memcmp(s->key, key, len) == 0)) return j;
    }
}

int alloy_strmap_putn(struct alloy_strmap *m, const char *key, size_t len, size_t val, int *existing)
{
    if (existing) *existing = 0;
    if (len > UINT32_MAX) return -1;
    if ((m->count + 1) * 2 > m->cap && resize(m, m->cap ? m->cap * 2 : 16) != 0) return -1;
    uint64_t h = hash_mem(key, len);
    struct alloy_strmap_slot *s = &m->slots[probe(m, key, len, h)];
    if (s->key) {
        if (existing) *existing = 1;
        return 0;
    }
    *s = (struct alloy_strmap_slot){key, val, (uint32_t)(h >> 32), (uint32_t)len};
    m->count++;
    return 0;
}

int alloy_strmap_put(struct alloy_strmap *m, const char *key, size_t val, int *existing)
{
    return alloy_strmap_putn(m, key, strlen(key), val, existing);
}

struct alloy_strmap_slot *alloy_strmap_find(struct alloy_strmap *m, const char *key, size_t len)
{
    if (!m->cap || len > UINT32_MAX) return NULL;
    struct alloy_strmap_slot *s = &m->slots[probe(m, key, len, hash_mem(key, len))];
    return s->key ? s : NULL;
}

int alloy_strmap_getn(const struct alloy_strmap *m, const char *key, size_t len, size_t *val)
{
    const struct alloy_strmap_slot *s = alloy_strmap_find((struct alloy_strmap *)m, key, len); /* only read */
    if (s && val) *val = s->val;
    return s != NULL;
}

int alloy_strmap_get(const struct alloy_strmap *m, const char *key, size_t *val)
{
    return alloy_strmap_getn(m, key, strlen(key), val);
}

void alloy_strmap_prefetch(const struct alloy_strmap *m, const char *key, size_t len)
{
    if (m->cap) __builtin_prefetch(&m->slots[hash_mem(key, len) & (m->cap - 1)]);
}

void alloy_strmap_remap(struct alloy_strmap *m, const size_t *to)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key) m->slots[i].val = to[m->slots[i].val];
}

void alloy_strmap_free(struct alloy_strmap *m)
{
    free(m->slots);
    *m = (struct alloy_strmap){0};
}
