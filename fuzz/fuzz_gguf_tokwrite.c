/*
 * fuzz_gguf_tokwrite.c — libFuzzer target for the GGUF writer's tokenizer
 * keys (src/sinks/gguf_tok_write.c) built from an untrusted tokenizer.json.
 *
 * DESIGN
 *   The input is the tokenizer.json text; its length also picks the
 *   vocabulary size, 1..300 rows, so ids past the end, padding and
 *   overlapping added tokens are all reached. Accepted input must yield a key
 *   buffer that a GGUF reader walks to its end: the tokens and token_type
 *   arrays hold exactly that many entries. A refusal must say why in one
 *   line.
 */
#include "fuzz.h"
#include "sinks/gguf_out.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t n_vocab = 1 + (int64_t)(size % 300);
    json_error_t je;
    json_t *tok = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(tok)) {
        json_decref(tok);
        return 0;
    }
    json_t *config = json_pack("{s:i, s:i}", "bos_token_id", 1, "eos_token_id", 2);
    struct gguf_buf b = {0};
    struct alloy_err err = {0};
    int rc = gguf_tokenizer_keys(&b, tok, NULL, config, "tokenizer.json", NULL, n_vocab, &err);
    if (rc) check(err.msg[0] && !strchr(err.msg, '\n'));
    else if (!b.oom) {
        check(b.nkv >= 4);
        /* tokenizer.ggml.model, .pre, then the tokens array: key, type ARRAY, elem STRING, count n_vocab */
        size_t at = 0;
        for (int k = 0; k < 2; k++) {
            uint64_t kl, vl;
            memcpy(&kl, b.p + at, 8);
            at += 8 + kl + 4;
            memcpy(&vl, b.p + at, 8);
            at += 8 + vl;
        }
        uint64_t kl, count;
        memcpy(&kl, b.p + at, 8);
        at += 8 + kl + 4 + 4;
        memcpy(&count, b.p + at, 8);
        check(count == (uint64_t)n_vocab);
    }
    free(b.p);
    json_decref(tok);
    json_decref(config);
    return 0;
}
