/*
 * tokenizer_impl.h — the tokenizer's data structures, shared by tokenizer.c
 * (tokenizer.json parsing) and bpe.c (encoding and decoding). Not installed.
 *
 * DESIGN
 *   A parsed tokenizer is immutable: encode/decode only read it, so one
 *   tokenizer may be used from several threads. Strings are owned by `strs`;
 *   `vocab` maps the model vocabulary (not the added tokens) to ids, `pairs`
 *   maps a pair of ids to its merge rank and result, as `tokenizers` does.
 *
 * LIMITS (issue 13: bounded work per byte of input)
 *   At most TOK_MAX_STEPS normalizer steps and as many pre-tokenizer steps
 *   are parsed (Sequences flattened), so encoding a segment of n bytes costs
 *   O(steps x n). After every step the text of a segment (between added
 *   tokens) may be at most TOK_GROW_FACTOR x n + TOK_GROW_SLACK bytes; a step
 *   that would grow it further is an error naming tokenizer.json and the step,
 *   raised before the larger text is built.
 */
#ifndef ALLOY_EVAL_TOKENIZER_IMPL_H
#define ALLOY_EVAL_TOKENIZER_IMPL_H

#include "eval/eval.h"
#include "core/internal.h"
#include "core/strmap.h"

#define TOK_MAX_STEPS 4096
#define TOK_GROW_FACTOR 16
#define TOK_GROW_SLACK 4096

enum norm_op { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
struct norm_step { enum norm_op op; char *a, *b; };

enum pre_op { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
struct pre_step {
    enum pre_op op;
    enum alloy_pretok_regex re;
    int use_regex, add_prefix_space; /* ByteLevel */
    char *repl;                      /* Metaspace replacement */
    enum prepend_scheme scheme;
    int split;
};

struct added { const char *s; size_t len; int id; };
struct pair_slot { uint64_t key; uint32_t rank; int32_t id; int used; };

struct alloy_tokenizer {
    enum alloy_tok_kind kind;
    const char *label;    /* the tokenizer.json path (or label) it was parsed from, for encode errors */
    uint64_t src_hash;    /* FNV-1a of the tokenizer.json text, and its length: alloy_tokenizer_same */
    size_t src_len;
    int n_ids;
    const char **id_str;  /* [n_ids] token text for decoding, NULL for holes */
    char *id_is_added;    /* [n_ids] */
    char **strs;          /* owned strings */
    size_t nstrs, capstrs;
    struct alloy_strmap vocab; /* model vocab: token -> id */
    struct pair_slot *pairs;
    size_t pcap;
    int byte_fallback, byte_id[256], unk_id, fuse_unk, ignore_merges;
    struct norm_step *norm;
    size_t nnorm;
    struct pre_step *pre;
    size_t npre;
    struct added *added;
    size_t nadded;
    int strip_leading_space; /* decode: a "▁" was prepended while encoding */
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
};

/* ------------------------------------------------------------ small helpers */

struct ivec { int32_t *v; size_t n, cap; };
struct sbuf { char *s; size_t n, cap; };

static inline int ivec_push(struct ivec *v, int32_t x)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *nv = alloy_xrealloc(v->v, nc * sizeof *nv);
        if (!nv) return -1;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = x;
    return 0;
}

static inline int sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = alloy_xrealloc(b->s, nc);
        if (!ns) return -1;
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

static inline size_t utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Strict UTF-8 decode at s[*i]; returns the code point or -1. */
static inline int32_t utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s + *i;
    size_t left = n - *i;
    uint32_t c = u[0];
    if (c < 0x80) { *i += 1; return (int32_t)c; }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (!len || c > 0xF4 || len > left) return -1;
    uint32_t cp = c & (0x3F >> (len - 1));
    for (size_t k = 1; k < len; k++) {
        if ((u[k] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (u[k] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *i += len;
    return (int32_t)cp;
}

static inline size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2; }


static inline int vocab_get(const struct alloy_tokenizer *t, const char *s)
{
    size_t v;
    return alloy_strmap_get(&t->vocab, s, &v) ? (int)v : -1;
}

static inline uint64_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static inline struct pair_slot *pair_find(const struct alloy_tokenizer *t, int32_t a, int32_t b)
{
    if (!t->pcap) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = pair_hash(key) & (t->pcap - 1);; i = (i + 1) & (t->pcap - 1)) {
        if (!t->pairs[i].used) return NULL;
        if (t->pairs[i].key == key) return &t->pairs[i];
    }
}

/* Later merges of the same pair overwrite earlier ones, as in `tokenizers`. */
#endif
