/*
 * test_spm.c — SentencePiece tokenizer.model: the protobuf reader
 * (src/formats/spm.c) and the GGUF "llama" vocabulary written from it.
 *
 * DESIGN
 *   The files are built here by a tiny protobuf writer (varints, tags,
 *   length-delimited fields, fixed32 floats), so no sentencepiece package
 *   is needed: a well-formed model with every piece type, trainer and
 *   normalizer fields and unknown fields to skip, then hostile ones, one
 *   rule each (truncated varint, length past the end, group wire type,
 *   wrong wire type, bad enum, bad UTF-8, NUL, duplicate, no pieces, too
 *   many pieces, deep nesting that must cost nothing). The GGUF test writes
 *   tiny-llama with a tokenizer.model beside its tokenizer.json and checks
 *   the keys llama.cpp's converter writes (_create_vocab_sentencepiece).
 */
#include "test.h"

#include "alloy.h"
#include "formats/gguf.h"
#include "formats/spm.h"

#include <stdlib.h>
#include <unistd.h>

struct pb {
    unsigned char *p;
    size_t len, cap;
};

static void pb_raw(struct pb *b, const void *v, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) abort();
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, v, n);
    b->len += n;
}

static void pb_varint(struct pb *b, uint64_t v)
{
    do {
        unsigned char c = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v) c |= 0x80;
        pb_raw(b, &c, 1);
    } while (v);
}

static void pb_tag(struct pb *b, unsigned field, unsigned wire) { pb_varint(b, (uint64_t)field << 3 | wire); }
static void pb_uint(struct pb *b, unsigned field, uint64_t v)
{
    pb_tag(b, field, 0);
    pb_varint(b, v);
}

static void pb_bytes(struct pb *b, unsigned field, const void *v, size_t n)
{
    pb_tag(b, field, 2);
    pb_varint(b, n);
    pb_raw(b, v, n);
}

static void pb_f32(struct pb *b, unsigned field, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    unsigned char le[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
    pb_tag(b, field, 5);
    pb_raw(b, le, 4);
}

/* One SentencePiece message appended to model b as field 1; type 0 leaves the field out (NORMAL). */
static void pb_piece(struct pb *b, const char *piece, float score, int type)
{
    struct pb m = {0};
    pb_bytes(&m, 1, piece, strlen(piece));
    pb_f32(&m, 2, score);
    if (type) pb_uint(&m, 3, (uint64_t)type);
    pb_bytes(b, 1, m.p, m.len);
    free(m.p);
}

struct piece { const char *s; float score; int type; };

static const struct piece k_pieces[] = {
    {"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}, {"<0x00>", 0, 6}, {"<0x41>", 0, 6},
    {"\xe2\x96\x81", -1.25f, 0}, {"\xe2\x96\x81t", -2.5f, 1}, {"<tool>", 0, 4}, {"old", -7, 5}, {"h\xc3\xa9", -3.5f, 1},
};

/* A model with k_pieces, a trainer spec (BPE, byte_fallback, pad_id -1 as a 10-byte varint), a normalizer
 * with add_dummy_prefix false, and unknown fields of every wire type to skip. */
static struct pb good_model(void)
{
    struct pb b = {0}, t = {0}, n = {0};
    for (size_t i = 0; i < sizeof k_pieces / sizeof *k_pieces; i++)
        pb_piece(&b, k_pieces[i].s, k_pieces[i].score, k_pieces[i].type);
    pb_bytes(&t, 1, "input.txt", 9); /* a repeated string field: skipped */
    pb_uint(&t, 3, 2);
    pb_uint(&t, 35, 1);
    pb_uint(&t, 40, 0);
    pb_uint(&t, 41, 1);
    pb_uint(&t, 42, 2);
    pb_uint(&t, 43, (uint64_t)(int64_t)-1);
    pb_f32(&t, 10, 0.9995f); /* character_coverage */
    pb_bytes(&b, 2, t.p, t.len);
    pb_uint(&n, 3, 0);
    pb_bytes(&n, 2, "\x01\x02\x03", 3); /* precompiled_charsmap */
    pb_bytes(&b, 3, n.p, n.len);
    pb_tag(&b, 9, 1); /* an unknown fixed64 */
    pb_raw(&b, "12345678", 8);
    pb_bytes(&b, 5, "", 0); /* denormalizer_spec, empty */
    free(t.p);
    free(n.p);
    return b;
}

TEST(spm_reads_pieces_and_specs)
{
    struct pb b = good_model();
    struct alloy_spm *s = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_spm_parse(b.p, b.len, "m/tokenizer.model", &s, &err) == ALLOY_OK, "%s", err.msg);
    if (s) {
        CHECK_INT(s->n, sizeof k_pieces / sizeof *k_pieces);
        for (size_t i = 0; i < s->n && i < sizeof k_pieces / sizeof *k_pieces; i++) {
            CHECK_MSG(!strcmp(s->piece[i], k_pieces[i].s), "piece %zu: %s", i, s->piece[i]);
            CHECK(s->score[i] == k_pieces[i].score);
            CHECK_INT(s->type[i], k_pieces[i].type ? k_pieces[i].type : ALLOY_SPM_NORMAL);
        }
        CHECK(s->model_type == 2 && s->byte_fallback == 1 && s->add_dummy_prefix == 0);
        CHECK(s->unk_id == 0 && s->bos_id == 1 && s->eos_id == 2 && s->pad_id == -1);
    }
    alloy_spm_free(s);
    /* the proto defaults when the specs are absent */
    struct pb m = {0};
    pb_piece(&m, "a", 0, 0);
    s = NULL;
    CHECK_MSG(alloy_spm_parse(m.p, m.len, "tokenizer.model", &s, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(s && s->model_type == 1 && !s->byte_fallback && s->add_dummy_prefix == 1 && s->unk_id == 0 &&
          s->bos_id == 1 && s->eos_id == 2 && s->pad_id == -1);
    alloy_spm_free(s);
    free(m.p);
    free(b.p);
}

/* buf must be refused with one line naming tokenizer.model and containing want. */
static void refused(const struct pb *b, const char *want)
{
    struct alloy_spm *s = (struct alloy_spm *)1;
    struct alloy_err err = {0};
    int rc = alloy_spm_parse(b->p, b->len, "dir/tokenizer.model", &s, &err);
    CHECK_MSG(rc == ALLOY_ERR_FORMAT && s == NULL, "%s: rc %d", want, rc);
    CHECK_MSG(strstr(err.msg, "dir/tokenizer.model: ") == err.msg && strstr(err.msg, want) && !strchr(err.msg, '\n'),
              "want \"%s\", got \"%s\"", want, err.msg);
}

TEST(spm_hostile_files_refused)
{
    struct pb b = {0};
    refused(&b, "pieces: at least one piece, found none");
    pb_raw(&b, "\x0a\x80", 2); /* field 1, length varint cut */
    refused(&b, "truncated or running past the end");
    b.len = 0;
    pb_raw(&b, "\x0a\x05" "ab", 4); /* 5 bytes announced, 2 present */
    refused(&b, "field 1's payload inside its message");
    b.len = 0;
    pb_raw(&b, "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11); /* an 11-byte varint value */
    refused(&b, "ModelProto at byte 0: field 1's payload inside its message");
    b.len = 0;
    pb_raw(&b, "\x88\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 11); /* an 11-byte tag */
    refused(&b, "a field tag (a varint of at most 10 bytes, field number >= 1), found a malformed one");
    b.len = 0;
    pb_raw(&b, "\x0b\x0c", 2); /* a group */
    refused(&b, "wire type 0, 1, 2 or 5, found 3");
    b.len = 0;
    pb_uint(&b, 1, 7); /* pieces as a varint */
    refused(&b, "pieces: wire type 2, found 0");
    struct pb m = {0};
    b.len = 0;
    pb_piece(&b, "x", 0, 9);
    refused(&b, "pieces[0].type: 1 to 6 (NORMAL ... BYTE), found 9");
    b.len = 0;
    pb_piece(&b, "\xc0\xaf", 0, 0); /* overlong '/' */
    refused(&b, "pieces[0].piece: 1 to 4096 bytes of UTF-8 without NUL, found 2 bytes that are not");
    b.len = 0;
    pb_bytes(&m, 1, "a\0b", 3);
    pb_bytes(&b, 1, m.p, m.len);
    refused(&b, "pieces[0].piece: 1 to 4096 bytes of UTF-8 without NUL");
    b.len = m.len = 0;
    pb_f32(&m, 2, 1);
    pb_bytes(&b, 1, m.p, m.len);
    refused(&b, "pieces[0].piece: a piece string, found none");
    b.len = 0;
    pb_piece(&b, "a", 0, 0);
    pb_piece(&b, "b", 0, 0);
    pb_piece(&b, "a", 0, 0);
    refused(&b, "pieces[2].piece: a piece not defined before, found a repeat of pieces[0]");
    b.len = m.len = 0;
    pb_piece(&b, "a", NAN, 0);
    refused(&b, "pieces[0].score: a finite float, found NaN");
    b.len = m.len = 0;
    pb_piece(&b, "a", 0, 0);
    pb_uint(&m, 3, 7);
    pb_bytes(&b, 2, m.p, m.len);
    refused(&b, "trainer_spec.model_type: 1 to 4 (UNIGRAM, BPE, WORD, CHAR), found 7");
    free(m.p);
    free(b.p);
}

/* A piece count past the limit stops in the counting pass, before any allocation per piece; an unknown field
 * nested 100,000 deep is skipped by its length without recursion. */
TEST(spm_huge_count_and_deep_nesting)
{
    struct pb b = {0};
    for (size_t i = 0; i <= ALLOY_SPM_MAX_PIECES; i++) pb_raw(&b, "\x0a\x00", 2);
    refused(&b, "pieces: at most 4194304, found more");
    enum { DEPTH = 100000 };
    static uint64_t lens[DEPTH + 1]; /* lens[d]: bytes of the message nested d deep from the inside */
    for (int d = 0; d < DEPTH; d++) {
        uint64_t v = lens[d], vb = 1;
        while (v >>= 7) vb++;
        lens[d + 1] = lens[d] + 1 + vb;
    }
    struct pb inner = {0};
    for (int d = DEPTH - 1; d >= 0; d--) { /* message 7 { message 7 { ... } } */
        pb_tag(&inner, 7, 2);
        pb_varint(&inner, lens[d]);
    }
    CHECK_INT(inner.len, lens[DEPTH]);
    b.len = 0;
    pb_piece(&b, "a", 0, 0);
    pb_raw(&b, inner.p, inner.len);
    struct alloy_spm *s = NULL;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_spm_parse(b.p, b.len, "tokenizer.model", &s, &err) == ALLOY_OK, "%s", err.msg);
    CHECK(s && s->n == 1);
    alloy_spm_free(s);
    free(inner.p);
    free(b.p);
}

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* gguf string array element i of key (walks the array). */
static int gguf_tok_eq(struct alloy_gguf *g, uint64_t i, const char *want)
{
    uint32_t t, elem;
    uint64_t n, len;
    const uint8_t *p = NULL;
    if (!alloy_gguf_kv(g, "tokenizer.ggml.tokens", &t, &elem, &n, &p) || i >= n) return 0;
    for (uint64_t k = 0; k < i; k++) {
        memcpy(&len, p, 8);
        p += 8 + len;
    }
    memcpy(&len, p, 8);
    return len == strlen(want) && memcmp(p + 8, want, len) == 0;
}

static float gguf_score(struct alloy_gguf *g, uint64_t i)
{
    uint32_t t, elem;
    uint64_t n;
    const uint8_t *p = NULL;
    float f = NAN;
    if (alloy_gguf_kv(g, "tokenizer.ggml.scores", &t, &elem, &n, &p) && i < n) memcpy(&f, p + 4 * i, 4);
    return f;
}

/* tiny-llama (260 rows) with tokenizer.model next to its tokenizer.json: the GGUF's vocabulary comes from
 * tokenizer.model as the converter builds it; without tokenizer.json it works the same. */
TEST(spm_gguf_llama_vocab_from_tokenizer_model)
{
    char dir[512], path[600], out[600], cmd[2048];
    snprintf(dir, sizeof dir, "%s/spm", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp tests/data/tiny-llama/base/config.json "
             "tests/data/tiny-llama/base/model.safetensors tests/data/tiny-llama/base/tokenizer.json %s/", dir, dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    struct pb b = good_model();
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    CHECK_INT(write_bytes(path, b.p, b.len), 0);
    free(b.p);
    snprintf(path, sizeof path, "%s/added_tokens.json", dir);
    CHECK_INT(test_write_text(path, "{\"<extra>\": 12, \"<far>\": 999}"), 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK_INT(test_write_text(path, "{\"add_bos_token\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", "
                                    "\"add_prefix_space\": false, \"added_tokens_decoder\": {"
                                    "\"20\": {\"content\": \"<pad>\", \"special\": false}, "
                                    "\"21\": {\"content\": \"a\xe2\x96\x81z\", \"special\": false}, "
                                    "\"22\": {\"content\": \"<|im|>\", \"special\": true}}}"), 0);
    for (int pass = 0; pass < 2; pass++) {
        snprintf(out, sizeof out, "%s/spm%d.gguf", test_tmpdir(), pass);
        snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q 2>&1", test_alloy_bin(), dir, out);
        char *log = NULL;
        CHECK_MSG(test_run(cmd, &log) == 0, "%s", log ? log : "");
        free(log);
        struct alloy_gguf *g = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_gguf_open(out, &g, &err) == ALLOY_OK, "%s", err.msg);
        if (!g) return;
        const char *s = NULL;
        uint64_t sl = 0, n = 0;
        CHECK(alloy_gguf_str(g, "tokenizer.ggml.model", &s, &sl, &err) == 1 && sl == 5 && !memcmp(s, "llama", 5));
        CHECK(alloy_gguf_array(g, "tokenizer.ggml.tokens", GGUF_STRING, &n, &err) == 1 && n == 260);
        static const int types[] = {2, 3, 3, 6, 6, 1, 1, 1, 5, 1}; /* USER_DEFINED (7) reads as NORMAL */
        for (int i = 0; i < 10; i++) {
            CHECK_MSG(gguf_tok_eq(g, (uint64_t)i, k_pieces[i].s), "token %d", i);
            CHECK(gguf_score(g, (uint64_t)i) == k_pieces[i].score);
            CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", (uint64_t)i), types[i]);
        }
        CHECK(gguf_tok_eq(g, 11, "[PAD11]") && gguf_score(g, 11) == -10000.0f);
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 11), 5);
        CHECK(gguf_tok_eq(g, 12, "<extra>") && gguf_score(g, 12) == -1000.0f);
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 12), 4);
        CHECK(gguf_tok_eq(g, 20, "<pad>") && gguf_score(g, 20) == -1000.0f); /* looks special */
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 20), 3);
        CHECK(gguf_tok_eq(g, 21, "a z")); /* user-defined: U+2581 becomes a space */
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 21), 4);
        CHECK_INT(alloy_gguf_array_int(g, "tokenizer.ggml.token_type", 22), 3);
        CHECK(gguf_tok_eq(g, 259, "[PAD259]"));
        int64_t id = -1;
        int flag = -1;
        /* as gguf-py's SpecialVocab: "<s>" looked up in tokenizer.json's added_tokens (256 there), and without
         * tokenizer.json config.json's bos_token_id (256 too); never the piece's own id 1 */
        CHECK(alloy_gguf_int(g, "tokenizer.ggml.bos_token_id", &id, &err) == 1 && id == 256);
        CHECK(alloy_gguf_int(g, "tokenizer.ggml.eos_token_id", &id, &err) == 1 && id == 257);
        CHECK(alloy_gguf_int(g, "tokenizer.ggml.unk_token_id", &id, &err) == 0);
        CHECK(alloy_gguf_bool(g, "tokenizer.ggml.add_space_prefix", &flag, &err) == 1 && flag == 0);
        uint32_t t, elem;
        const uint8_t *p;
        CHECK(!alloy_gguf_kv(g, "tokenizer.ggml.merges", &t, &elem, &n, &p));
        alloy_gguf_base(g)->ops->close(alloy_gguf_base(g));
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        unlink(path); /* the second pass: tokenizer.model alone */
    }
    /* alloy eval does not run SentencePiece: the folder is refused with the way to evaluate it */
    snprintf(cmd, sizeof cmd, "%s eval %s --text tests/data/eval_code.txt --ctx 32 2>&1", test_alloy_bin(), dir);
    char *log = NULL;
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_MSG(log && strstr(log, "alloy: error: ") && strstr(log, "spm/tokenizer.json: the tokenizer.json alloy eval "
              "runs, found only tokenizer.model") && test_count_lines(log, "") == 1, "%s", log ? log : "");
    free(log);
}

/* A broken tokenizer.model stops the GGUF writer with its name, and leaves no file. */
TEST(spm_gguf_broken_tokenizer_model_refused)
{
    char dir[512], path[600], out[600], cmd[2048];
    snprintf(dir, sizeof dir, "%s/spmbad", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp tests/data/tiny-llama/base/config.json "
             "tests/data/tiny-llama/base/model.safetensors %s/", dir, dir);
    CHECK_INT(test_run(cmd, NULL), 0);
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    CHECK_INT(write_bytes(path, "\x0a\x05" "ab", 4), 0);
    snprintf(out, sizeof out, "%s/bad.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert %s %s --outtype f32 -q 2>&1", test_alloy_bin(), dir, out);
    char *log = NULL;
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_MSG(log && strstr(log, "alloy: error: ") && strstr(log, "spmbad/tokenizer.model: ModelProto at byte 0") &&
              test_count_lines(log, "") == 1, "%s", log ? log : "");
    free(log);
    CHECK(access(out, F_OK) != 0);
}
