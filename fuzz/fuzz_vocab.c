/*
 * fuzz_vocab.c — libFuzzer target for the tokenizer-merge vocabulary steps
 * (src/plan/vocab.c): reading a tokenizer.json as a model's tokenizer,
 * stripping it to a config vocab size, the union and adding a token.
 *
 * DESIGN
 *   The first input byte picks the config vocab size (0: the token count,
 *   else 1..255); the rest is the tokenizer.json text. Every input must
 *   give either a token count or one error line, never a crash or a leak;
 *   an output always holds the added token, so it has at least one token.
 */
#include "fuzz.h"
#include "plan/vocab.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    struct alloy_err err = {0};
    size_t n = 0;
    int rc = alloy_vocab_check_text((const char *)data + 1, size - 1, data[0], "<|im_start|>", &n, &err);
    check(rc != 0 || n >= 1);
    check(rc == 0 || (err.msg[0] && !strchr(err.msg, '\n')));
    return 0;
}
