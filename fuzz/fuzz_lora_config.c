/*
 * fuzz_lora_merge_config.c — libFuzzer target for the `alloy lora merge` YAML
 * reader (src/config/lora_merge_config.c).
 *
 * DESIGN
 *   Feeds arbitrary bytes (not NUL-terminated: the parser must honour the
 *   length) to alloy_lora_merge_config_parse. Invariants checked: on success *out
 *   is set and holds a method, at least one adapter, finite weights and
 *   options in their ranges; on failure *out is NULL and the message is one
 *   non-empty line whose status is the return value. Any crash, leak, hang
 *   or sanitizer report is a bug. Seeds: fuzz/corpus/lora_config/.
 */
#include "config/lora_merge_config.h"
#include "fuzz.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_lora_merge_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_lora_merge_config_parse((const char *)data, size, "fuzz.yml", &c, &err);
    if (rc == 0) {
        if (!c || !c->method || !c->ninputs || c->rank > ALLOY_LORA_MAX_RANK || !(c->density > 0 && c->density <= 1))
            abort();
        for (size_t i = 0; i < c->ninputs; i++)
            if (!c->inputs[i].adapter || !isfinite(c->inputs[i].weight)) abort();
        alloy_lora_merge_config_free(c);
    } else if (c || !err.msg[0] || strchr(err.msg, '\n') || (int)err.status != rc) {
        abort();
    }
    return 0;
}
