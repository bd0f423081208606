/*
 * arena.c — see arena.h. Chunks form a list through their header; a string
 * that does not fit in the rest of the current chunk starts a new one (the
 * rest is left unused, at most one string's length per chunk).
 */
#include "core/arena.h"
#include "core/internal.h"

struct alloy_arena_chunk {
    struct alloy_arena_chunk *next;
    char data[];
};

char *alloy_arena_strndup(struct alloy_arena *a, const char *s, size_t n)
{
    if (n >= SIZE_MAX - sizeof(struct alloy_arena_chunk)) return NULL;
    if (!a->head || a->cap - a->used < n + 1) {
        size_t cap = n + 1 > ALLOY_ARENA_CHUNK ? n + 1 : ALLOY_ARENA_CHUNK;
        struct alloy_arena_chunk *c = alloy_xmalloc(sizeof *c + cap);
        if (!c) return NULL;
        c->next = a->head;
        a->head = c;
        a->used = 0;
        a->cap = cap;
    }
    char *p = a->head->data + a->used;
    memcpy(p, s, n);
    p[n] = '\0';
    a->used += n + 1;
    return p;
}

void alloy_arena_free(struct alloy_arena *a)
{
    for (struct alloy_arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    *a = (struct alloy_arena){0};
}
