/*
 * gguf_out.h — pieces of the GGUF sink (gguf.c): the metadata buffer, the
 * model keys from config.json (gguf_meta_write.c) and the tokenizer keys
 * from tokenizer.json (gguf_tok_write.c).
 *
 * DESIGN
 *   The header of a GGUF file is built whole in memory before any tensor
 *   data: the key/value pairs are appended to a growing byte buffer in the
 *   file's own encoding (formats.md §3.1), so the header's length, and with
 *   it every tensor's data offset, is known when the file is created.
 *   Appends never fail one by one: an allocation failure sets `oom`, which
 *   the caller checks once.
 */
#ifndef ALLOY_GGUF_OUT_H
#define ALLOY_GGUF_OUT_H

#include "core/internal.h"
#include "formats/gguf.h"
#include "formats/gguf_arch.h"
#include "formats/spm.h"

#include <jansson.h>

struct gguf_buf {
    uint8_t *p;
    size_t len, cap;
    uint64_t nkv;   /* key/value pairs appended */
    int oom;
};

void gguf_buf_bytes(struct gguf_buf *b, const void *v, size_t n);
void gguf_buf_u32(struct gguf_buf *b, uint32_t v);
void gguf_buf_u64(struct gguf_buf *b, uint64_t v);
void gguf_buf_str(struct gguf_buf *b, const char *s, size_t len);
/* One pair each (the key counted in nkv). */
void gguf_kv_str(struct gguf_buf *b, const char *key, const char *s);
void gguf_kv_u32(struct gguf_buf *b, const char *key, uint32_t v);
void gguf_kv_i32(struct gguf_buf *b, const char *key, int32_t v);
void gguf_kv_f32(struct gguf_buf *b, const char *key, float v);
void gguf_kv_bool(struct gguf_buf *b, const char *key, int v);
/* An array's key, element type and count; the caller appends the n elements. */
void gguf_kv_array(struct gguf_buf *b, const char *key, enum gguf_vtype elem, uint64_t n);

/* What the tensors and keys need from config.json. */
struct gguf_model_info {
    const struct gguf_arch *ga;
    const char *arch;          /* general.architecture: "llama", "qwen2", ... */
    int permute_qk;            /* llama: Q/K rows reordered per head (gguf.md §1.3) */
    int64_t n_head, n_head_kv, n_embd, head_dim, n_vocab;
    uint64_t n_params;         /* values in the tensors written (general.size_label) */
};

/* Reads the architecture and head counts from config.json (path names it in messages). */
int gguf_model_info(json_t *config, const char *path, struct gguf_model_info *mi, struct alloy_err *err);
/* general.* and {arch}.* keys from config.json; name is general.name, file_type general.file_type. */
int gguf_model_keys(struct gguf_buf *b, json_t *config, const char *path, const struct gguf_model_info *mi,
                    const char *name, uint32_t file_type, struct alloy_err *err);
/* A tensor the converter generates from config.json (gguf.md §1.2): Llama 3.1's rope_freqs, Phi-3's
 * rope_factors_long/short; F32 [n], v malloc'd. */
struct gguf_extra {
    const char *name;
    float *v;
    int64_t n;
};
#define GGUF_MAX_EXTRA 2
/* The generated tensors of config.json's rope_scaling into x (*n of them; free each x[i].v). */
int gguf_extra_tensors(json_t *config, const char *path, const struct gguf_model_info *mi, struct gguf_extra *x,
                       size_t *n, struct alloy_err *err);
/* 1 when tokenizer.json is written in SentencePiece's "llama" form (gguf_tok_write.c). */
int gguf_tokenizer_is_spm(json_t *tok);

/* tokenizer.* keys from tokenizer.json (tok) and tokenizer_config.json (tcfg, may be NULL); config.json
 * supplies special ids tokenizer_config.json lacks; n_vocab rows (shorter lists are padded). pre: the
 * tokenizer.ggml.pre to write (a GGUF donor's), NULL: named from the pre-tokenizer. */
int gguf_tokenizer_keys(struct gguf_buf *b, json_t *tok, json_t *tcfg, json_t *config, const char *path,
                        const char *pre, int64_t n_vocab, struct alloy_err *err);
/* The "llama" tokenizer.* keys from SentencePiece's tokenizer.model (s, read from path) as llama.cpp's
 * converter writes them, with added_tokens.json (added, may be NULL) and tokenizer_config.json (tcfg, may be
 * NULL) over it; special ids as gguf-py's SpecialVocab: tokenizer_config.json's names looked up in
 * tokenizer.json's added_tokens (tok, may be NULL), else config.json's ids. add_space_prefix: space_prefix
 * when >= 0 (Gemma: 0), else tokenizer_config.json's add_prefix_space when it is a boolean (llama). */
int gguf_tokenizer_keys_spm(struct gguf_buf *b, const struct alloy_spm *s, json_t *added, json_t *tcfg,
                            json_t *tok, json_t *config, const char *path, int64_t n_vocab, int space_prefix,
                            struct alloy_err *err);

#endif
