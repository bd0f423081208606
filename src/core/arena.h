/*
 * arena.h — a bump allocator for many small strings freed together.
 *
 * DESIGN
 *   Strings are appended to chunks of at least ALLOY_ARENA_CHUNK bytes (a
 *   longer string gets a chunk of its own); nothing is freed until
 *   alloy_arena_free releases every chunk. A million tensor names cost one
 *   allocation per chunk instead of one malloc (and its 16-byte header and
 *   rounding) per name.
 */
#ifndef ALLOY_ARENA_H
#define ALLOY_ARENA_H

#include <stddef.h>

#define ALLOY_ARENA_CHUNK ((size_t)1 << 20)

struct alloy_arena_chunk;

struct alloy_arena {
    struct alloy_arena_chunk *head; /* the chunk being filled; older chunks follow its next */
    size_t used, cap;               /* bytes of head's data in use, and its size */
};

/* A NUL-terminated copy of s[0, n) in the arena; NULL on allocation failure. */
char *alloy_arena_strndup(struct alloy_arena *a, const char *s, size_t n);
void  alloy_arena_free(struct alloy_arena *a);

#endif
