/*
 * fuzz_tokenizer.c — libFuzzer target for the tokenizer.json loader and the
 * encoder/decoder it configures (src/eval/tokenizer.c).
 *
 * DESIGN
 *   The input is split at its first NUL byte: the part before is the
 *   tokenizer.json text given to alloy_tokenizer_parse, the part after (or,
 *   without a NUL, a fixed sample with ASCII, multi-byte UTF-8, an invalid
 *   byte and added-token look-alikes) is the text to encode. A loaded
 *   tokenizer must encode that text to ids in [0, n_ids) (or refuse it with
 *   one line), decode its own ids, and refuse an id outside the vocabulary
 *   instead of reading past its tables. Input size is capped by libFuzzer's
 *   -max_len (fuzz/run.sh uses 8192), which bounds the BPE work per run.
 */
#include "alloy.h"
#include "fuzz.h"
#include "eval/eval.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char g_sample[] = "Hello, world! \xc3\xa9t\xc3\xa9 \xe2\x96\x81 \xf0\x9f\x98\x80 <s>x</s> \xff  tabs\tand\nlines 12345";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    char *json = malloc(jlen + 1);
    if (!json) return 0;
    memcpy(json, data, jlen);
    json[jlen] = '\0';
    const char *text = nul ? (const char *)nul + 1 : g_sample;
    size_t tlen = nul ? size - jlen - 1 : sizeof g_sample - 1;

    struct alloy_tokenizer *t = NULL;
    struct alloy_err err = {0};
    int rc = alloy_tokenizer_parse(json, "tokenizer.json", &t, &err);
    free(json);
    if (rc != ALLOY_OK) {
        check(t == NULL && err.msg[0] && memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    int n_ids = alloy_tokenizer_n_ids(t);
    check(n_ids > 0);
    (void)alloy_tok_kind_name(alloy_tokenizer_kind(t));
    (void)alloy_tokenizer_token_id(t, "<s>");
    int32_t *ids = NULL;
    size_t n = 0;
    rc = alloy_tokenizer_encode(t, text, tlen, "text", &ids, &n, &err);
    if (rc == ALLOY_OK) {
        for (size_t i = 0; i < n; i++) check(ids[i] >= 0 && ids[i] < n_ids);
        char *out = NULL;
        size_t olen = 0;
        if (alloy_tokenizer_decode(t, ids, n, &out, &olen, &err) == ALLOY_OK) check(out && strlen(out) <= olen);
        free(out);
    } else {
        check(err.msg[0] && memchr(err.msg, '\n', sizeof err.msg) == NULL);
    }
    free(ids);
    /* ids the vocabulary does not have must be refused, not looked up */
    int32_t probe[4] = {-1, n_ids, 0, n_ids - 1};
    char *out = NULL;
    size_t olen = 0;
    check(alloy_tokenizer_decode(t, probe, 2, &out, &olen, &err) != ALLOY_OK);
    if (alloy_tokenizer_decode(t, probe + 2, 2, &out, &olen, &err) == ALLOY_OK) free(out);
    alloy_tokenizer_free(t);
    return 0;
}
