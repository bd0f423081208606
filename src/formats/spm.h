/*
 * spm.h — SentencePiece's tokenizer.model (a serialized ModelProto), read
 * for the GGUF writer's "llama" vocabulary.
 *
 * DESIGN
 *   Only what llama.cpp's converter takes from the file is kept: every
 *   piece (its UTF-8 text, f32 score and type), the trainer's model type,
 *   byte_fallback and special ids, and the normalizer's add_dummy_prefix.
 *   Everything else is skipped by its wire type without being decoded.
 *   The reader is strict: see spm.c for the limits.
 */
#ifndef ALLOY_FORMATS_SPM_H
#define ALLOY_FORMATS_SPM_H

#include "alloy.h"

#include <stddef.h>
#include <stdint.h>

/* SentencePiece piece types (= llama.cpp's token types). */
enum { ALLOY_SPM_NORMAL = 1, ALLOY_SPM_UNKNOWN, ALLOY_SPM_CONTROL, ALLOY_SPM_USER_DEFINED, ALLOY_SPM_UNUSED,
       ALLOY_SPM_BYTE };

#define ALLOY_SPM_MAX_PIECES ((size_t)1 << 22) /* 4M pieces (the largest known vocabularies have 256K) */
#define ALLOY_SPM_MAX_PIECE 4096               /* bytes of one piece */
#define ALLOY_SPM_MAX_FILE ((size_t)1 << 28)   /* 256 MiB */

struct alloy_spm {
    size_t n;
    char **piece;     /* [n] NUL-terminated UTF-8, no NUL inside */
    float *score;     /* [n] */
    int32_t *type;    /* [n] ALLOY_SPM_* */
    int32_t model_type; /* 1 UNIGRAM (the default), 2 BPE, 3 WORD, 4 CHAR */
    int byte_fallback;
    int32_t unk_id, bos_id, eos_id, pad_id; /* proto defaults 0, 1, 2, -1 */
    int add_dummy_prefix;                   /* default 1 */
};

/* Parse len bytes; path names the file in errors ("<path>: <field>: <expected>, <found>"). */
int alloy_spm_parse(const void *buf, size_t len, const char *path, struct alloy_spm **out, struct alloy_err *err);
/* Read and parse the file at path (at most ALLOY_SPM_MAX_FILE bytes). */
int alloy_spm_open(const char *path, struct alloy_spm **out, struct alloy_err *err);
void alloy_spm_free(struct alloy_spm *s);

#endif
