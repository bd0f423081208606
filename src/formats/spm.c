/*
 * spm.c — a strict reader of SentencePiece's tokenizer.model.
 *
 * DESIGN
 *   The file is a protobuf ModelProto. The reader walks the wire format
 *   itself (no protobuf library): a field is a varint tag (field number <<
 *   3 | wire type) and a payload — a varint (0), 8 bytes (1), a varint
 *   length and that many bytes (2), or 4 bytes (5). Groups (3, 4) are
 *   obsolete and refused. Three messages are decoded, one level each:
 *     ModelProto     1 pieces (repeated), 2 trainer_spec, 3 normalizer_spec
 *     SentencePiece  1 piece (string), 2 score (float), 3 type (enum)
 *     TrainerSpec    3 model_type, 35 byte_fallback, 40-43 unk/bos/eos/pad id
 *     NormalizerSpec 3 add_dummy_prefix
 *   Every other field is skipped by its length without being looked at, so
 *   nesting never recurses and a deeply nested file costs nothing. A known
 *   field with the wrong wire type, a varint longer than 10 bytes, a length
 *   past the end of its message, a piece type or model type out of range, a
 *   piece that is empty-texted, not UTF-8, holds a NUL, is longer than
 *   ALLOY_SPM_MAX_PIECE or repeats an earlier piece, a non-finite score,
 *   and more than ALLOY_SPM_MAX_PIECES pieces are errors. Pieces are counted
 *   in a first pass and allocated once. Every error is one line naming the
 *   file, the field and what was expected.
 */
#include "formats/spm.h"

#include "core/internal.h"
#include "core/strmap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cur {
    const uint8_t *p, *end, *base; /* base: the file's first byte, for offsets in errors */
};

struct field {
    uint32_t num;
    int wire;
    uint64_t v;          /* wire 0, 1, 5 */
    const uint8_t *data; /* wire 2 */
    size_t len;
};

static int varint(struct cur *c, uint64_t *v)
{
    uint64_t r = 0;
    for (int i = 0; i < 10; i++) {
        if (c->p >= c->end) return -1;
        uint8_t b = *c->p++;
        if (i == 9 && b > 1) return -1;
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) return *v = r, 0;
    }
    return -1;
}

/* The next field of the message c walks; "<path>: <what> at byte N: ..." on a malformed one. */
static int next_field(struct cur *c, struct field *f, const char *path, const char *what, struct alloy_err *err)
{
    size_t at = (size_t)(c->p - c->base);
    uint64_t tag, n;
    if (varint(c, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s at byte %zu: a field tag (a varint of at most 10 bytes, "
                             "field number >= 1), found a malformed one", path, what, at);
    f->num = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    switch (f->wire) {
    case 0:
        if (varint(c, &f->v)) break;
        return ALLOY_OK;
    case 1:
    case 5: {
        size_t w = f->wire == 1 ? 8 : 4;
        if ((size_t)(c->end - c->p) < w) break;
        f->v = 0;
        for (size_t i = 0; i < w; i++) f->v |= (uint64_t)c->p[i] << (8 * i);
        c->p += w;
        return ALLOY_OK;
    }
    case 2:
        if (varint(c, &n) || n > (uint64_t)(c->end - c->p)) break;
        f->data = c->p;
        f->len = (size_t)n;
        c->p += n;
        return ALLOY_OK;
    default:
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s at byte %zu: wire type 0, 1, 2 or 5, found %d", path,
                             what, at, f->wire);
    }
    return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s at byte %zu: field %u's payload inside its message, found it "
                         "truncated or running past the end", path, what, at, f->num);
}

static int want_wire(const struct field *f, int wire, const char *path, const char *what, struct alloy_err *err)
{
    if (f->wire == wire) return ALLOY_OK;
    return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: wire type %d, found %d", path, what, wire, f->wire);
}

/* Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF); the offset of the first bad byte,
 * or len when all is well. */
static size_t utf8_bad(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t b = s[i];
        size_t k = b < 0x80 ? 0 : (b & 0xe0) == 0xc0 ? 1 : (b & 0xf0) == 0xe0 ? 2 : (b & 0xf8) == 0xf0 ? 3 : 9;
        if (k == 9 || len - i <= k) return i;
        uint32_t cp = k ? b & (0x3f >> k) : b;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return i;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += k + 1;
    }
    return len;
}

static int piece_text(struct alloy_spm *s, size_t i, const struct field *f, const char *path, struct alloy_err *err)
{
    size_t bad = utf8_bad(f->data, f->len);
    if (f->len == 0 || f->len > ALLOY_SPM_MAX_PIECE || memchr(f->data, 0, f->len) || bad < f->len)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: pieces[%zu].piece: 1 to %d bytes of UTF-8 without NUL, found %zu "
                             "bytes%s", path, i, ALLOY_SPM_MAX_PIECE, f->len,
                             f->len && f->len <= ALLOY_SPM_MAX_PIECE ? " that are not" : "");
    free(s->piece[i]);
    if (!(s->piece[i] = alloy_xmalloc(f->len + 1))) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    memcpy(s->piece[i], f->data, f->len);
    s->piece[i][f->len] = '\0';
    return ALLOY_OK;
}

/* SentencePiece message i. */
static int read_piece(struct alloy_spm *s, size_t i, const struct field *msg, const uint8_t *base, const char *path,
                      struct alloy_err *err)
{
    struct cur c = {msg->data, msg->data + msg->len, base};
    char what[64];
    snprintf(what, sizeof what, "pieces[%zu]", i);
    s->type[i] = ALLOY_SPM_NORMAL;
    while (c.p < c.end) {
        struct field f;
        int rc = next_field(&c, &f, path, what, err);
        if (!rc && f.num == 1) rc = want_wire(&f, 2, path, what, err) ? (int)err->status : piece_text(s, i, &f, path, err);
        if (!rc && f.num == 2 && !(rc = want_wire(&f, 5, path, what, err))) {
            uint32_t bits = (uint32_t)f.v;
            memcpy(&s->score[i], &bits, sizeof bits);
            if (!isfinite(s->score[i]))
                rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.score: a finite float, found %s", path, what,
                                   isnan(s->score[i]) ? "NaN" : "Inf");
        }
        if (!rc && f.num == 3 && !(rc = want_wire(&f, 0, path, what, err))) {
            if (f.v < ALLOY_SPM_NORMAL || f.v > ALLOY_SPM_BYTE)
                rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.type: 1 to 6 (NORMAL ... BYTE), found %llu", path, what,
                                   (unsigned long long)f.v);
            else s->type[i] = (int32_t)f.v;
        }
        if (rc) return rc;
    }
    if (!s->piece[i])
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s.piece: a piece string, found none", path, what);
    return ALLOY_OK;
}

/* TrainerSpec (which 2) or NormalizerSpec (which 3): the few scalar fields kept. */
static int read_spec(struct alloy_spm *s, const struct field *msg, int which, const uint8_t *base, const char *path,
                     struct alloy_err *err)
{
    const char *what = which == 2 ? "trainer_spec" : "normalizer_spec";
    struct cur c = {msg->data, msg->data + msg->len, base};
    while (c.p < c.end) {
        struct field f;
        int rc = next_field(&c, &f, path, what, err);
        int known = which == 2 ? f.num == 3 || f.num == 35 || (f.num >= 40 && f.num <= 43) : f.num == 3;
        if (!rc && known) rc = want_wire(&f, 0, path, what, err);
        if (rc) return rc;
        if (!known) continue;
        int32_t v = (int32_t)(uint32_t)f.v; /* int32 fields are sign-extended varints */
        if (which == 3) s->add_dummy_prefix = f.v != 0;
        else if (f.num == 35) s->byte_fallback = f.v != 0;
        else if (f.num == 3 && (f.v < 1 || f.v > 4))
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: trainer_spec.model_type: 1 to 4 (UNIGRAM, BPE, WORD, CHAR), "
                                 "found %llu", path, (unsigned long long)f.v);
        else if (f.num == 3) s->model_type = v;
        else *(f.num == 40 ? &s->unk_id : f.num == 41 ? &s->bos_id : f.num == 42 ? &s->eos_id : &s->pad_id) = v;
    }
    return ALLOY_OK;
}

/* First pass: the number of pieces, every top-level field well-formed. */
static int count_pieces(const uint8_t *buf, size_t len, const char *path, size_t *n, struct alloy_err *err)
{
    struct cur c = {buf, buf + len, buf};
    *n = 0;
    while (c.p < c.end) {
        struct field f;
        int rc = next_field(&c, &f, path, "ModelProto", err);
        if (!rc && f.num >= 1 && f.num <= 3) rc = want_wire(&f, 2, path, f.num == 1 ? "pieces" : f.num == 2
                                                                   ? "trainer_spec" : "normalizer_spec", err);
        if (rc) return rc;
        if (f.num == 1 && ++*n > ALLOY_SPM_MAX_PIECES)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: pieces: at most %zu, found more", path, ALLOY_SPM_MAX_PIECES);
    }
    if (*n == 0) return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: pieces: at least one piece, found none", path);
    return ALLOY_OK;
}

static int read_model(struct alloy_spm *s, const uint8_t *buf, size_t len, const char *path, struct alloy_err *err)
{
    struct cur c = {buf, buf + len, buf};
    struct alloy_strmap seen = {0};
    size_t i = 0, dup;
    int rc = alloy_strmap_reserve(&seen, s->n) ? alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory") : ALLOY_OK;
    while (!rc && c.p < c.end) {
        struct field f;
        int existing = 0;
        rc = next_field(&c, &f, path, "ModelProto", err); /* well-formed: the first pass checked */
        if (rc || f.num < 1 || f.num > 3) continue;
        if (f.num != 1) {
            rc = read_spec(s, &f, (int)f.num, buf, path, err);
            continue;
        }
        rc = read_piece(s, i, &f, buf, path, err);
        if (!rc && alloy_strmap_put(&seen, s->piece[i], i, &existing))
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (!rc && existing && alloy_strmap_get(&seen, s->piece[i], &dup))
            rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: pieces[%zu].piece: a piece not defined before, found a "
                               "repeat of pieces[%zu]", path, i, dup);
        i++;
    }
    alloy_strmap_free(&seen);
    return rc;
}

void alloy_spm_free(struct alloy_spm *s)
{
    if (!s) return;
    for (size_t i = 0; s->piece && i < s->n; i++) free(s->piece[i]);
    free(s->piece);
    free(s->score);
    free(s->type);
    free(s);
}

int alloy_spm_parse(const void *buf, size_t len, const char *path, struct alloy_spm **out, struct alloy_err *err)
{
    *out = NULL;
    size_t n;
    int rc = count_pieces(buf, len, path, &n, err);
    if (rc) return rc;
    struct alloy_spm *s = alloy_xcalloc(1, sizeof *s);
    if (s) {
        *s = (struct alloy_spm){n, alloy_xcalloc(n, sizeof(char *)), alloy_xcalloc(n, sizeof(float)),
                                alloy_xcalloc(n, sizeof(int32_t)), 1, 0, 0, 1, 2, -1, 1};
    }
    if (!s || !s->piece || !s->score || !s->type) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = read_model(s, buf, len, path, err);
    if (rc) alloy_spm_free(s);
    else *out = s;
    return rc;
}

int alloy_spm_open(const char *path, struct alloy_spm **out, struct alloy_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = alloy_read_file(path, ALLOY_SPM_MAX_FILE, &text, &len, err);
    if (!rc) rc = alloy_spm_parse(text, len, path, out, err);
    free(text);
    return rc;
}
