/*
 * gguf.h — library-internal view of an opened GGUF model (gguf.c,
 * gguf_meta.c).
 *
 * DESIGN
 *   gguf.c parses and validates the file (and its split shards), keeps the
 *   key/value pairs as offsets into the first shard's mapping, and presents
 *   the tensors under their Hugging Face names and shapes through the
 *   tensor-file interface. gguf_meta.c turns the metadata into what a
 *   Hugging Face folder would hold: config.json and tokenizer.json texts.
 */
#ifndef ALLOY_GGUF_H
#define ALLOY_GGUF_H

#include "formats/tensor_file.h"

/* GGUF metadata value types (formats.md §3.1). */
enum gguf_vtype {
    GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL,
    GGUF_STRING, GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_VTYPE_COUNT
};

struct alloy_gguf;

/* Opens path (the first shard of a split model, or a single file). */
int alloy_gguf_open(const char *path, struct alloy_gguf **out, struct alloy_err *err);
struct alloy_tensor_file *alloy_gguf_base(struct alloy_gguf *g);
/* f as a GGUF file, or NULL when it is another format. */
struct alloy_gguf *alloy_gguf_of(struct alloy_tensor_file *f);
/* The i-th file f reads (its path; a split GGUF's shards in order), NULL past the last. */
const char *alloy_tensor_file_part(const struct alloy_tensor_file *f, size_t i);
/* general.architecture ("llama"), borrowed. */
const char *alloy_gguf_arch(const struct alloy_gguf *g);
/* A derived tensor by its GGUF name (rope_freqs.weight, rope_factors_long/short.weight): not among the
 * presented tensors; NULL when the file has none. */
const struct alloy_tensor *alloy_gguf_derived(const struct alloy_gguf *g, const char *gguf_name);
/* The GGUF name a presented (or derived) tensor of g is stored under. */
const char *alloy_gguf_stored_name(const struct alloy_gguf *g, const struct alloy_tensor *t);

/* The raw pair: 1 and its type, an array's element type and count, and the value's bytes in the mapping
 * (a STRING: its u64 length then the bytes; an ARRAY: its first element), or 0 when absent. */
int alloy_gguf_kv(const struct alloy_gguf *g, const char *key, uint32_t *type, uint32_t *elem, uint64_t *n,
                  const uint8_t **value);
const char *alloy_gguf_vtype_name(uint32_t t);

/* Typed metadata lookups (gguf_meta.c): 1 when key is present with a value of that kind (any integer type in range,
 * F32/F64, STRING, BOOL), 0 when absent; -1 when present with another type (err says so). */
int alloy_gguf_int(const struct alloy_gguf *g, const char *key, int64_t *v, struct alloy_err *err);
int alloy_gguf_float(const struct alloy_gguf *g, const char *key, double *v, struct alloy_err *err);
int alloy_gguf_bool(const struct alloy_gguf *g, const char *key, int *v, struct alloy_err *err);
/* A STRING value (not NUL-terminated: *len bytes). */
int alloy_gguf_str(const struct alloy_gguf *g, const char *key, const char **s, uint64_t *len, struct alloy_err *err);
/* An ARRAY of elem type: *n elements; the elements themselves through alloy_gguf_array_*. */
int alloy_gguf_array(const struct alloy_gguf *g, const char *key, enum gguf_vtype elem, uint64_t *n,
                     struct alloy_err *err);
/* Walks an array of strings in order: fn(ctx, i, s, len) for each, stopping at a non-zero return. */
int alloy_gguf_array_strings(const struct alloy_gguf *g, const char *key,
                             int (*fn)(void *ctx, uint64_t i, const char *s, uint64_t len), void *ctx);
/* Element i of an integer array (validated by alloy_gguf_array), as int64. */
int64_t alloy_gguf_array_int(const struct alloy_gguf *g, const char *key, uint64_t i);

/* config.json and tokenizer.json texts for the model (malloc'd, NUL-terminated), from the metadata. */
int alloy_gguf_config_json(const struct alloy_gguf *g, char **out, struct alloy_err *err);
int alloy_gguf_tokenizer_json(const struct alloy_gguf *g, char **out, struct alloy_err *err);

#endif
