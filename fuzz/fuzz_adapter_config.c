/*
 * fuzz_adapter_config.c — libFuzzer target for the adapter_config.json
 * reader of PEFT LoRA adapters (src/lora/adapter_config.c).
 *
 * DESIGN
 *   The input is adapter_config.json text (any bytes). An accepted config
 *   must hold what the tensor grouping relies on: a positive r, a finite
 *   lora_alpha, every pattern compiled with a positive rank, and pattern and
 *   selection lookups that answer for any module name without crashing. A
 *   rejection must be one line naming the file.
 */
#include "alloy.h"
#include "fuzz.h"
#include "lora/lora_config.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_adapter *a = NULL;
    struct alloy_err err = {0};
    int rc = alloy_adapter_parse_config((const char *)data, size, "adapter_config.json", &a, &err);
    if (rc != ALLOY_OK) {
        check(a == NULL && strncmp(err.msg, "adapter_config.json", 19) == 0 && memchr(err.msg, '\n', sizeof err.msg) == NULL);
        return 0;
    }
    check(a->r > 0 && isfinite(a->lora_alpha));
    for (size_t i = 0; i < a->cfg->nrank; i++) check(a->cfg->rank[i].value >= 1);
    static const char *const names[] = {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head",
                                        "model.embed_tokens", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        check(alloy_lora_rank_for(a, names[i]) > 0);
        check(isfinite(alloy_lora_alpha_for(a, names[i])));
        (void)alloy_lora_targeted(a, names[i]);
        (void)alloy_lora_saved(a, names[i]);
    }
    alloy_adapter_close(a);
    return 0;
}
