/*
 * fuzz_llama_config.c — libFuzzer target for the config.json reader of
 * `alloy eval` (alloy_llama_config_parse in src/eval/llama.c).
 *
 * DESIGN
 *   The input (up to its first NUL byte) is config.json text. An accepted
 *   config must hold the invariants the forward pass relies on before it
 *   sizes any buffer from them: positive sizes, heads divisible by kv heads,
 *   an even head_dim, positive eps and theta. A rejection must be one line
 *   naming the file.
 */
#include "alloy.h"
#include "fuzz.h"
#include "eval/eval.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    struct alloy_llama_config c;
    struct alloy_err err = {0};
    int rc = alloy_llama_config_parse(text, "config.json", &c, &err);
    free(text);
    if (rc != ALLOY_OK) {
        check(strncmp(err.msg, "config.json", 11) == 0 && memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0);
    check(c.num_heads > 0 && c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0);
    check(c.head_dim > 0 && c.head_dim % 2 == 0 && c.max_position_embeddings > 0);
    check(c.rms_norm_eps > 0 && c.rope_theta > 0);
    check(memchr(c.model_type, 0, sizeof c.model_type) != NULL);
    return 0;
}
