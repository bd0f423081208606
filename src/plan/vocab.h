/*
 * vocab.h — the output vocabulary of a tokenizer merge (mergekit's
 * build_tokenizer, spec §6.2) and each model's place in it.
 *
 * DESIGN
 *   Every merged model's tokenizer.json is read (vocabulary and added
 *   tokens) with its config vocab size. The base's is stripped of tokens at
 *   or past that size. The output tokenizer.json is built as a JSON document
 *   (the base's, another model's, or the base's plus the union's new tokens
 *   as added tokens), and the permutation of each model — its id of every
 *   output token, or -1 — is what the embedding re-indexing (embed.c) reads.
 */
#ifndef ALLOY_VOCAB_H
#define ALLOY_VOCAB_H

#include "core/internal.h"
#include "core/strmap.h"

#include <jansson.h>

struct alloy_config;
struct alloy_model;

/* One model's tokenizer as read. */
struct alloy_tokdoc {
    char *path;                  /* its tokenizer.json, for messages */
    json_t *doc;
    struct alloy_strmap ids;     /* token -> id, vocabulary and added tokens (keys borrowed from doc) */
    long long size;              /* config vocab size (else the number of tokens) */
};

struct alloy_vocab {
    json_t *tokenizer;           /* the output tokenizer.json */
    int source;                  /* model whose tokenizer files are the output's pattern */
    size_t n;                    /* tokens: ids 0..n-1 */
    uint64_t rows;               /* embedding rows: n padded to pad_to_multiple_of */
    const char **tok;            /* [n] output id -> token (borrowed from tokenizer) */
    struct alloy_strmap index;   /* token -> output id */
    size_t nm;                   /* merged models (plan order) */
    struct alloy_tokdoc *docs;   /* [nm] as read (unstripped) */
    int32_t *perm;               /* [nm * n]: the model's id of output token j, -1 when it lacks it */
};

typedef void (*alloy_vocab_warn_fn)(void *user, const char *msg);

/* Builds the vocabulary for cfg's tokenizer source from models[0..nm) (base index `base`, else 0); `source`
 * is the model index of a model tokenizer source (it may be >= nm: a model only its tokenizer comes from),
 * else -1. */
int  alloy_vocab_build(const struct alloy_config *cfg, struct alloy_model *const *models, size_t nm, int base,
                       int source, alloy_vocab_warn_fn warn, void *user, struct alloy_vocab **out,
                       struct alloy_err *err);
void alloy_vocab_free(struct alloy_vocab *v);
/* The vocabulary steps on one tokenizer.json text (for the fuzz target and tests): read it as a model's
 * tokenizer with config vocab size `size` (<= 0: its token count), strip it to that size, take the union
 * with itself, add `add` (may be NULL) and check the ids; *ntokens = the output's token count. */
int  alloy_vocab_check_text(const char *text, size_t len, long long size, const char *add, size_t *ntokens,
                            struct alloy_err *err);
/* Reads a tokenizer.json of at most ALLOY_TOKENIZER_JSON_MAX bytes: NULL with err set when unreadable, larger
 * or not JSON. */
json_t *alloy_json_load_file(const char *path, struct alloy_err *err);

#endif
