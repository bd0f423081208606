/*
 * test_eval_tokenizer.c — tokenizer.json handling for `alloy eval`.
 *
 * Small tokenizers are written here by hand (vocab + merges) and the expected
 * ids were worked out by hand, merge by merge (see the comments); the split
 * regexes are checked piece by piece against what the GPT-2 / Llama-3 / Qwen2
 * patterns match. Also: the bundled byte-level fixture, round trips, and the
 * errors for malformed or unsupported files.
 */
#include "test.h"
#include "eval/eval.h"

#include <stdlib.h>
#include <time.h>

static struct alloy_tokenizer *parse_tok(const char *json)
{
    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_parse(json, "tok.json", &t, &err);
    CHECK_MSG(rc == 0, "parse: %s", err.msg);
    return t;
}

/* Encodes text and compares with the expected ids; then checks decode(encode(text)) == text. */
static void expect_ids(const struct alloy_tokenizer *t, const char *text, const int *want, size_t nwant)
{
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_encode(t, text, strlen(text), "text", &ids, &n, &err);
    CHECK_MSG(rc == 0, "encode \"%s\": %s", text, err.msg);
    if (rc) return;
    int same = n == nwant;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        char got[512] = "", exp[512] = "";
        for (size_t i = 0; i < n && strlen(got) < 480; i++) snprintf(got + strlen(got), 20, "%d ", ids[i]);
        for (size_t i = 0; i < nwant && strlen(exp) < 480; i++) snprintf(exp + strlen(exp), 20, "%d ", want[i]);
        CHECK_MSG(0, "encode \"%s\": got [%s], expected [%s]", text, got, exp);
    }
    char *back = NULL;
    size_t blen = 0;
    rc = alloy_tokenizer_decode(t, ids, n, &back, &blen, &err);
    CHECK_MSG(rc == 0 && blen == strlen(text) && !memcmp(back, text, blen), "round trip of \"%s\" gave \"%s\"", text,
              back ? back : err.msg);
    free(back);
    free(ids);
}

#define IDS(...) (const int[]){__VA_ARGS__}, sizeof((const int[]){__VA_ARGS__}) / sizeof(int)

static void expect_parse_error(const char *json, const char *needle)
{
    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_parse(json, "tok.json", &t, &err);
    CHECK_MSG(rc != 0, "expected an error containing \"%s\"", needle);
    CHECK_STR_CONTAINS(err.msg, needle);
    alloy_tokenizer_free(t);
}

static void expect_encode_error(const struct alloy_tokenizer *t, const char *text, size_t len, const char *needle)
{
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_encode(t, text, len, "text.txt", &ids, &n, &err);
    CHECK_MSG(rc != 0, "expected an error containing \"%s\"", needle);
    CHECK_STR_CONTAINS(err.msg, needle);
    free(ids);
}

/* ------------------------------------------------------------ the bundled fixture */

TEST(eval_tok_fixture_bytes)
{
    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_load(test_data("tiny-llama/base/tokenizer.json"), &t, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    CHECK_INT(alloy_tokenizer_kind(t), ALLOY_TOK_BYTES);
    CHECK_INT(alloy_tokenizer_n_ids(t), 260);
    CHECK_INT(alloy_tokenizer_token_id(t, "<s>"), 256);
    CHECK_INT(alloy_tokenizer_token_id(t, "<0x41>"), 0x41);
    /* ids = bytes, UTF-8 included, between added tokens matched first as Hugging Face does ("<s>" is 256) */
    expect_ids(t, "h\xc3\xa9 <s>\n", IDS(0x68, 0xc3, 0xa9, 0x20, 256, 0x0a));
    expect_ids(t, "<s <\xff", IDS(0x3c, 0x73, 0x20, 0x3c, 0xff)); /* any bytes, partial matches are bytes */
    alloy_tokenizer_free(t);
}

/* ------------------------------------------------------------ byte-level BPE */

/* GPT-2 byte mapping: ' ' -> U+0120 "Ġ" (\u0120), '\n' -> U+010A "Ċ" (\u010a). */
#define BL_VOCAB                                                                                              \
    "\"h\":0,\"e\":1,\"l\":2,\"o\":3,\"w\":4,\"r\":5,\"d\":6,\"\\u0120\":7,\"ll\":8,\"he\":9,\"hell\":10,"   \
    "\"\\u0120w\":11,\"or\":12,\"\\u0120wor\":13,\"hello\":14,\"!\":15,\"\\u010a\":16,\"'\":17,\"s\":18"
#define BL_MERGES_STR "\"l l\",\"h e\",\"he ll\",\"\\u0120 w\",\"o r\",\"\\u0120w or\",\"hell o\""
#define BL_MERGES_ARR                                                                                         \
    "[\"l\",\"l\"],[\"h\",\"e\"],[\"he\",\"ll\"],[\"\\u0120\",\"w\"],[\"o\",\"r\"],[\"\\u0120w\",\"or\"],"  \
    "[\"hell\",\"o\"]"

static char *bl_json(const char *pre, const char *vocab_extra, const char *merges, int ignore_merges)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":20,\"content\":\"<|eot|>\",\"special\":true}],"
             "\"normalizer\":null,\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
             "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":\"\","
             "\"end_of_word_suffix\":\"\",\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":%s,"
             "\"vocab\":{" BL_VOCAB "%s},\"merges\":[%s]}}",
             pre, ignore_merges ? "true" : "false", vocab_extra, merges);
    return buf;
}

#define GPT2_PRE "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}"

TEST(eval_tok_bytelevel_gpt2)
{
    for (int fmt = 0; fmt < 2; fmt++) { /* merges as "a b" strings, then as [a, b] pairs */
        struct alloy_tokenizer *t = parse_tok(bl_json(GPT2_PRE, "", fmt ? BL_MERGES_ARR : BL_MERGES_STR, 0));
        if (!t) return;
        CHECK_INT(alloy_tokenizer_kind(t), ALLOY_TOK_BYTELEVEL_BPE);
        /* "hello": h e l l o -> (l l) rank 0 -> h e ll o -> (h e) 1 -> he ll o -> (he ll) 2 -> hell o -> (hell o) 6 -> hello
         * " world" -> Ġ w o r l d -> (Ġ w) 3 -> Ġw o r l d -> (o r) 4 -> Ġw or l d -> (Ġw or) 5 -> Ġwor l d */
        expect_ids(t, "hello world", IDS(14, 13, 2, 6));
        /* GPT-2 split: "hello" " world" "!" "\n" */
        expect_ids(t, "hello world!\n", IDS(14, 13, 2, 6, 15, 16));
        /* "he's" -> "he" "'s" (contraction) -> he | ' s */
        expect_ids(t, "he's", IDS(9, 17, 18));
        /* added tokens are matched before splitting */
        expect_ids(t, "hello<|eot|>hello", IDS(14, 20, 14));
        /* "  hello" splits as " " | " hello" (\s+(?!\S) leaves one space to the word): Ġ | Ġ hello */
        expect_ids(t, "  hello", IDS(7, 7, 14));
        expect_encode_error(t, "hex", 3, "text.txt: character U+0078 is not in the tokenizer's vocabulary");
        alloy_tokenizer_free(t);
    }
}

TEST(eval_tok_bytelevel_prefix_space_and_ignore_merges)
{
    struct alloy_tokenizer *t = parse_tok(
        bl_json("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}", "", BL_MERGES_STR, 0));
    if (!t) return;
    /* " hello" -> Ġ h e l l o -> ... -> Ġ hello (no merge joins Ġ with h) */
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tokenizer_encode(t, "hello", 5, "text", &ids, &n, &err), 0);
    CHECK_INT(n, 2);
    if (n == 2) { CHECK_INT(ids[0], 7); CHECK_INT(ids[1], 14); }
    free(ids);
    alloy_tokenizer_free(t);

    /* ignore_merges (Llama-3): a pre-token that is in the vocab is one token, even if merges would differ */
    t = parse_tok(bl_json(GPT2_PRE, ",\"\\u0120world\":19", BL_MERGES_STR, 1));
    if (!t) return;
    expect_ids(t, "hello world", IDS(14, 19));
    alloy_tokenizer_free(t);
    t = parse_tok(bl_json(GPT2_PRE, ",\"\\u0120world\":19", BL_MERGES_STR, 0));
    if (!t) return;
    expect_ids(t, "hello world", IDS(14, 13, 2, 6));
    alloy_tokenizer_free(t);
}

#define LLAMA3_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"

TEST(eval_tok_bytelevel_llama3_sequence)
{
    const char *pre = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"" LLAMA3_RE
                      "\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                      "\"trim_offsets\":true,\"use_regex\":false}]}";
    struct alloy_tokenizer *t = parse_tok(bl_json(pre, "", BL_MERGES_STR, 1));
    if (!t) return;
    CHECK_INT(alloy_tokenizer_kind(t), ALLOY_TOK_BYTELEVEL_BPE);
    expect_ids(t, "hello world", IDS(14, 13, 2, 6));
    /* Llama-3 keeps "!\n" together ( ?[^\s\p{L}\p{N}]+[\r\n]*): "!" then "\n" are still separate BPE symbols */
    expect_ids(t, "hello!\n", IDS(14, 15, 16));
    /* case-insensitive contraction: "he'S" would be he | 'S; 'S not in vocab -> error names U+0053 */
    expect_encode_error(t, "he'S", 4, "U+0053");
    alloy_tokenizer_free(t);
}

/* ------------------------------------------------------------ split regexes */

static void expect_split(enum alloy_pretok_regex re, const char *text, const char *want)
{
    uint32_t cps[256];
    size_t offs[257], ends[256], n = 0;
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, len = strlen(text);
    while (i < len) {
        offs[n] = i;
        uint32_t c = s[i];
        size_t l = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (l > 1) c &= 0x3F >> (l - 1);
        for (size_t k = 1; k < l; k++) c = (c << 6) | (s[i + k] & 0x3F);
        cps[n++] = c;
        i += l;
    }
    offs[n] = len;
    size_t np = alloy_pretok_split(re, cps, n, ends);
    char got[1024] = "";
    size_t g = 0, from = 0;
    for (size_t p = 0; p < np; p++) {
        if (p) got[g++] = '|';
        memcpy(got + g, text + offs[from], offs[ends[p]] - offs[from]);
        g += offs[ends[p]] - offs[from];
        from = ends[p];
    }
    got[g] = '\0';
    CHECK_MSG(!strcmp(got, want), "split %d of \"%s\": got \"%s\", expected \"%s\"", (int)re, text, got, want);
}

TEST(eval_tok_split_regexes)
{
    enum alloy_pretok_regex re;
    CHECK_INT(alloy_pretok_regex_lookup("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", &re), 0);
    CHECK_INT(re, ALLOY_SPLIT_LLAMA3);
    CHECK_INT(alloy_pretok_regex_lookup("\\w+", &re), -1);

    const enum alloy_pretok_regex G = ALLOY_SPLIT_GPT2, L3 = ALLOY_SPLIT_LLAMA3, Q2 = ALLOY_SPLIT_QWEN2;
    expect_split(G, "Hello world", "Hello| world");
    expect_split(L3, "Hello world", "Hello| world");
    expect_split(G, "I'M fine", "I|'|M| fine");      /* GPT-2 contractions are lower case only */
    expect_split(L3, "I'M fine", "I|'M| fine");      /* (?i:...) */
    expect_split(G, "don't stop", "don|'t| stop");
    expect_split(L3, "don't stop", "don|'t| stop");
    expect_split(G, "12345 abc", "12345| abc");
    expect_split(L3, "12345 abc", "123|45| abc");    /* \p{N}{1,3} */
    expect_split(Q2, "12345 abc", "1|2|3|4|5| abc");  /* \p{N} */
    expect_split(G, " 123", " 123");
    expect_split(L3, " 123", " |123");               /* numbers take no leading space */
    expect_split(G, "a  b", "a| | b");               /* \s+(?!\S) gives one space back */
    expect_split(L3, "a  b", "a| | b");
    expect_split(G, "a  ", "a|  ");                  /* at the end of text the whole run */
    expect_split(L3, "a  ", "a|  ");
    expect_split(G, "x\n\n  y", "x|\n\n | y");
    expect_split(L3, "x\n\n  y", "x|\n\n| | y");     /* \s*[\r\n]+ stops at the last newline */
    expect_split(G, "foo!!\n\nbar", "foo|!!|\n|\n|bar");
    expect_split(L3, "foo!!\n\nbar", "foo|!!\n\n|bar"); /* [\r\n]* after punctuation */
    expect_split(G, "(hello", "(|hello");
    expect_split(L3, "(hello", "(hello");            /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    expect_split(L3, "\t\tx", "\t|\tx");
    expect_split(G, "na\xc3\xafve caf\xc3\xa9", "na\xc3\xafve| caf\xc3\xa9");            /* ï, é are letters */
    expect_split(L3, "\xe4\xbd\xa0\xe5\xa5\xbd \xe4\xb8\x96\xe7\x95\x8c", "\xe4\xbd\xa0\xe5\xa5\xbd| \xe4\xb8\x96\xe7\x95\x8c");
    expect_split(L3, "\xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6", "\xd9\xa3\xd9\xa4\xd9\xa5|\xd9\xa6"); /* Arabic-Indic digits are \p{N} */
    expect_split(G, "x\xc2\xa0y", "x|\xc2\xa0|y");   /* NBSP is \s */
    CHECK_INT(alloy_uni_class(0x4E2D), 1);
    CHECK_INT(alloy_uni_class(0x0663), 2);
    CHECK_INT(alloy_uni_class(0x00BD), 2);           /* ½ is No */
    CHECK_INT(alloy_uni_class(0x2014), 0);
    CHECK(alloy_uni_is_space(0x3000));
    CHECK(!alloy_uni_nfc_quick_yes(0x0301));
    CHECK(alloy_uni_nfc_quick_yes(0x00E9));
}

/* ------------------------------------------------------------ SentencePiece-style BPE */

/* ids: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258, then pieces. "▁" is \u2581. */
static char *sp_json(const char *normalizer, const char *pre, int byte_fallback)
{
    static char buf[16384];
    size_t k = 0;
    k += (size_t)snprintf(buf + k, sizeof buf - k,
                          "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
                          "{\"id\":1,\"content\":\"<s>\",\"special\":true},{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
                          "\"normalizer\":%s,\"pre_tokenizer\":%s,\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\","
                          "\"fuse_unk\":true,\"byte_fallback\":%s,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2",
                          normalizer, pre, byte_fallback ? "true" : "false");
    for (int b = 0; b < 256; b++) k += (size_t)snprintf(buf + k, sizeof buf - k, ",\"<0x%02X>\":%d", b, 3 + b);
    snprintf(buf + k, sizeof buf - k,
             ",\"\\u2581\":259,\"h\":260,\"i\":261,\"\\u2581h\":262,\"\\u2581hi\":263,\"t\":264,\"e\":265,\"r\":266,"
             "\"he\":267,\"\\u2581t\":268,\"\\u2581the\":269,\"re\":270,\"\\u2581there\":271},"
             "\"merges\":[\"\\u2581 h\",\"\\u2581h i\",\"\\u2581 t\",\"h e\",\"\\u2581t he\",\"r e\",\"\\u2581the re\"]}}");
    return buf;
}

#define SP_NORMALIZER                                                                                     \
    "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"              \
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]}"

TEST(eval_tok_sentencepiece_bpe)
{
    struct alloy_tokenizer *t = parse_tok(sp_json(SP_NORMALIZER, "null", 1));
    if (!t) return;
    CHECK_INT(alloy_tokenizer_kind(t), ALLOY_TOK_SP_BPE);
    /* "hi there" -> "▁hi▁there": ▁ h i ▁ t h e r e
     *   (▁ h)0 @0 -> ▁h i ...; (▁h i)1 -> ▁hi; (▁ t)2 @3 -> ▁t; (h e)3 @5 -> he; (▁t he)4 -> ▁the;
     *   (r e)5 -> re; (▁the re)6 -> ▁there */
    expect_ids(t, "hi there", IDS(263, 271));
    /* é is not in the vocab: byte fallback to <0xC3> <0xA9> = 3 + 0xC3, 3 + 0xA9 */
    expect_ids(t, "hi \xc3\xa9", IDS(263, 259, 3 + 0xC3, 3 + 0xA9));
    /* added tokens split the text; each segment gets its own "▁" from the Prepend normalizer */
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tokenizer_encode(t, "<s>hi", 5, "text", &ids, &n, &err), 0);
    CHECK_INT(n, 2);
    if (n == 2) { CHECK_INT(ids[0], 1); CHECK_INT(ids[1], 263); }
    free(ids);
    alloy_tokenizer_free(t);

    /* the same model with a Metaspace pre-tokenizer (prepend_scheme "first") */
    t = parse_tok(sp_json("null", "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\","
                                  "\"split\":false}", 1));
    if (!t) return;
    expect_ids(t, "hi there", IDS(263, 271));
    CHECK_INT(alloy_tokenizer_encode(t, "<s>hi", 5, "text", &ids, &n, &err), 0);
    CHECK_INT(n, 3); /* "first": no "▁" after the special token: <s> h i */
    if (n == 3) { CHECK_INT(ids[0], 1); CHECK_INT(ids[1], 260); CHECK_INT(ids[2], 261); }
    free(ids);
    alloy_tokenizer_free(t);

    /* Metaspace split=true: "▁hi" "▁there" are BPE'd separately (same ids here) */
    t = parse_tok(sp_json("null", "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"add_prefix_space\":true}", 1));
    if (!t) return;
    expect_ids(t, "hi there hi", IDS(263, 271, 263));
    alloy_tokenizer_free(t);

    /* without byte_fallback, unknown characters become <unk>, consecutive ones fused */
    t = parse_tok(sp_json(SP_NORMALIZER, "null", 0));
    if (!t) return;
    CHECK_INT(alloy_tokenizer_encode(t, "hi \xc3\xa9\xc3\xa9", 7, "text", &ids, &n, &err), 0);
    CHECK_INT(n, 3);
    if (n == 3) { CHECK_INT(ids[0], 263); CHECK_INT(ids[1], 259); CHECK_INT(ids[2], 0); }
    free(ids);
    expect_encode_error(t, "hi\xff", 3, "text.txt: byte 2: invalid UTF-8");
    alloy_tokenizer_free(t);
}

TEST(eval_tok_long_text_is_fast)
{
    /* a 200 KB SentencePiece "word" must not be quadratic */
    struct alloy_tokenizer *t = parse_tok(sp_json(SP_NORMALIZER, "null", 1));
    if (!t) return;
    size_t reps = 22222, len = 9 * reps;
    char *text = malloc(len + 1);
    for (size_t i = 0; i < len; i += 9) memcpy(text + i, "hi there ", 9);
    text[len] = '\0';
    int32_t *ids = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tokenizer_encode(t, text, len, "text", &ids, &n, &err), 0);
    CHECK_INT(n, 2 * reps + 1); /* ▁hi ▁there per repeat, and the trailing "▁" */
    free(ids);
    free(text);
    alloy_tokenizer_free(t);
}

/* ------------------------------------------------------------ errors */

TEST(eval_tok_errors)
{
    expect_parse_error("{\"model\": ", "tok.json: not valid JSON");
    expect_parse_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}",
                       "tok.json: model.type: \"WordPiece\" is not supported (BPE is)");
    expect_parse_error("{\"model\":{\"type\":\"BPE\",\"vocab\":[]}}",
                       "tok.json: model.vocab: expected an object of token -> id, found an array");
    expect_parse_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a zz\"]}}",
                       "tok.json: model.merges[0]: token \"zz\" is not in model.vocab");
    expect_parse_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"ab\"]}}",
                       "tok.json: model.merges[1]: expected \"a b\" or [\"a\", \"b\"]");
    expect_parse_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"}}}",
                       "tok.json: model.vocab: \"a\": expected an id");
    expect_parse_error("{\"normalizer\":{\"type\":\"NFKC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
                       "tok.json: normalizer.type: \"NFKC\" is not supported");
    expect_parse_error("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                       "{\"Regex\":\"\\\\w+\"},\"behavior\":\"Isolated\"}]},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
                       "tok.json: pre_tokenizer.pretokenizers[0].pattern: this split pattern is not supported");
    expect_parse_error("{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
                       "tok.json: pre_tokenizer.type: \"Whitespace\" is not supported");
    expect_parse_error("{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0}}}",
                       "tok.json: model.unk_token: \"<unk>\" is not in model.vocab");

    /* NFC normalizer: text that is already NFC passes, text that may change is refused */
    struct alloy_tokenizer *t = parse_tok("{\"normalizer\":{\"type\":\"NFC\"},\"model\":{\"type\":\"BPE\","
                                          "\"byte_fallback\":true,\"vocab\":{\"a\":0,\"<0xCC>\":1,\"<0x81>\":2,\"e\":3}}}");
    if (!t) return;
    expect_ids(t, "ae", IDS(0, 3));
    expect_encode_error(t, "ae\xcc\x81", 4, "text.txt: byte 2: U+0301 may change under the tokenizer's NFC normalizer");
    alloy_tokenizer_free(t);
}

/* ------------------------------------------------------------ limits (issue 13) */

/* Time limits for the refusals below; sanitizers slow jansson's parse several times. The time is the
 * process's CPU time, so other work on a shared machine does not count (the quadratic behaviour the limits
 * catch took tens of seconds). */
#define FAST_S (SANITIZER_BUILD ? 10.0 : 1.0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A tokenizer.json whose normalizer is a Sequence of `steps` copies of `step`. */
static char *steps_json(const char *step, size_t steps)
{
    size_t sl = strlen(step), cap = steps * (sl + 1) + 256;
    char *s = malloc(cap), *p = s;
    p += sprintf(p, "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[");
    for (size_t i = 0; i < steps; i++) p += sprintf(p, "%s%s", i ? "," : "", step);
    sprintf(p, "]},\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"a\":0}}}");
    return s;
}

TEST(eval_tok_normalizer_growth_is_capped)
{
    /* "a" -> "aa" forty times would grow one byte to 2^40: refused once past 16 x n + 4 KiB */
    char *json = steps_json("{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aa\"}", 40);
    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tokenizer_parse(json, "dir/tokenizer.json", &t, &err), 0);
    free(json);
    if (!t) return;
    double t0 = now_s();
    expect_encode_error(t, "aaaa", 4,
                        "dir/tokenizer.json: normalizer step 10 (Replace) would grow the text past 4160 bytes");
    CHECK_MSG(now_s() - t0 < FAST_S, "refusing took %.2f s", now_s() - t0);
    alloy_tokenizer_free(t);

    /* a Prepend of a long string on a short segment is refused the same way */
    char step[8192];
    snprintf(step, sizeof step, "{\"type\":\"Prepend\",\"prepend\":\"%05000d\"}", 0);
    json = steps_json(step, 1);
    CHECK_INT(alloy_tokenizer_parse(json, "tokenizer.json", &t, &err), 0);
    free(json);
    if (!t) return;
    expect_encode_error(t, "a", 1, "tokenizer.json: normalizer step 0 (Prepend) would grow the text past 4112 bytes");
    alloy_tokenizer_free(t);
}

TEST(eval_tok_step_count_is_capped)
{
    /* 200,000 normalizer steps are refused at parse time, at once */
    char *json = steps_json("{\"type\":\"NFC\"}", 200000);
    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    double t0 = now_s();
    CHECK(alloy_tokenizer_parse(json, "dir/tokenizer.json", &t, &err) != 0);
    CHECK_MSG(now_s() - t0 < FAST_S, "refusing took %.2f s", now_s() - t0);
    CHECK_STR_CONTAINS(err.msg, "dir/tokenizer.json: normalizer: more than 4096 steps");
    free(json);
    /* 4096 steps are accepted and encode in O(steps x text) */
    json = steps_json("{\"type\":\"Replace\",\"pattern\":{\"String\":\"b\"},\"content\":\"a\"}", 4096);
    t = parse_tok(json);
    free(json);
    if (!t) return;
    expect_ids(t, "aaaa", IDS(0, 0, 0, 0));
    alloy_tokenizer_free(t);
}
