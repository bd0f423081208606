/*
 * test_strmap.c — the name map (src/core/strmap.c) and the string arena
 * (src/core/arena.c) that planning 10^6 tensors rests on: every key found
 * with its value after growth and after reservation, duplicates reported
 * and left unchanged, absent keys (sharing prefixes and lengths with present
 * ones, across the 8-byte hash steps) not found; arena copies exact across
 * chunk boundaries and for strings longer than a chunk.
 */
#include "test.h"
#include "core/arena.h"
#include "core/internal.h"
#include "core/strmap.h"

#include <stdio.h>

enum { NKEYS = 50000 };

static void check_map(struct alloy_strmap *m, char (*keys)[40])
{
    for (size_t i = 0; i < NKEYS; i++) {
        int dup = -1;
        CHECK_INT(alloy_strmap_put(m, keys[i], i, &dup), 0);
        CHECK_INT(dup, 0);
    }
    CHECK_INT(m->count, NKEYS);
    for (size_t i = 0; i < NKEYS; i += 7) {
        int dup = 0;
        CHECK_INT(alloy_strmap_put(m, keys[i], i + 1, &dup), 0); /* a duplicate keeps the first value */
        CHECK_INT(dup, 1);
    }
    size_t bad = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        size_t v = SIZE_MAX;
        bad += !alloy_strmap_get(m, keys[i], &v) || v != i;
    }
    CHECK_INT(bad, 0);
    char probe[48];
    for (size_t i = 0; i < 1000; i++) { /* absent: a suffix more, or one byte changed */
        size_t l = strlen(keys[i]);
        memcpy(probe, keys[i], l);
        memcpy(probe + l, "x", 2);
        CHECK(!alloy_strmap_get(m, probe, NULL));
        probe[l] = '\0';
        probe[0] = 'X';
        CHECK(!alloy_strmap_get(m, probe, NULL));
    }
    CHECK(!alloy_strmap_get(m, "", NULL));
    CHECK_INT(m->count, NKEYS);
}

TEST(strmap_grown_and_reserved_agree)
{
    static char keys[NKEYS][40];
    for (size_t i = 0; i < NKEYS; i++) /* lengths 1..39 cross the hash's 8-byte steps */
        snprintf(keys[i], sizeof keys[i], "%.*s%zu", (int)(i % 32), "model.layers.0.mlp.down_proj.weig", i);
    struct alloy_strmap grown = {0}, reserved = {0};
    check_map(&grown, keys);
    CHECK_INT(alloy_strmap_reserve(&reserved, NKEYS), 0);
    size_t cap = reserved.cap;
    CHECK(cap >= 2 * NKEYS);
    check_map(&reserved, keys);
    CHECK_INT(reserved.cap, cap); /* no regrowth after the reservation */
    CHECK_INT(alloy_strmap_reserve(&reserved, 10), 0); /* never shrinks */
    CHECK_INT(reserved.cap, cap);
    alloy_strmap_free(&grown);
    alloy_strmap_free(&reserved);
}

TEST(arena_copies_exact_across_chunks)
{
    struct alloy_arena a = {0};
    enum { N = 40000 };
    static char *got[N];
    char want[64];
    for (size_t i = 0; i < N; i++) { /* about 1.6 MB: two chunks at least */
        snprintf(want, sizeof want, "tensor.%zu.%.*s", i, (int)(i % 30), "abcdefghijklmnopqrstuvwxyzABCD");
        got[i] = alloy_arena_strndup(&a, want, strlen(want));
        CHECK(got[i] != NULL);
    }
    size_t long_len = ALLOY_ARENA_CHUNK + 5;
    char *big = malloc(long_len);
    CHECK(big != NULL);
    if (big) {
        for (size_t i = 0; i < long_len; i++) big[i] = (char)('a' + i % 26);
        char *copy = alloy_arena_strndup(&a, big, long_len);
        CHECK(copy && memcmp(copy, big, long_len) == 0 && copy[long_len] == '\0');
    }
    char *after = alloy_arena_strndup(&a, "after", 3); /* n bytes copied, then NUL */
    CHECK(after && strcmp(after, "aft") == 0);
    size_t bad = 0;
    for (size_t i = 0; i < N; i++) {
        snprintf(want, sizeof want, "tensor.%zu.%.*s", i, (int)(i % 30), "abcdefghijklmnopqrstuvwxyzABCD");
        bad += !got[i] || strcmp(got[i], want) != 0;
    }
    CHECK_INT(bad, 0);
    free(big);
    alloy_arena_free(&a);
    CHECK(a.head == NULL);
}
