/*
 * fuzz_moe_config.c — libFuzzer target for the `alloy moe` YAML reader
 * (src/config/moe_config.c).
 *
 * DESIGN
 *   Feeds arbitrary bytes (not NUL-terminated: the parser must honour the
 *   length) to alloy_moe_config_parse, with and without the "not useful
 *   without training" override (the first byte's low bit). Invariants
 *   checked: on success *out holds a base model, 1 to ALLOY_MOE_MAX_EXPERTS
 *   experts each with a source model, experts_per_token in [1, experts],
 *   finite non-negative scales, and positive prompts for every expert unless
 *   gate_mode is random; on failure *out is NULL and the message is one
 *   non-empty line whose status is the return value. Any crash, leak, hang
 *   or sanitizer report is a bug. Seeds: fuzz/corpus/moe_config/.
 */
#include "config/moe_config.h"
#include "fuzz.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void verify(const struct alloy_moe_config *c)
{
    if (!c || !c->base_model || !c->nexperts || c->nexperts > ALLOY_MOE_MAX_EXPERTS || c->experts_per_token < 1 ||
        (size_t)c->experts_per_token > c->nexperts)
        abort();
    for (size_t i = 0; i < c->nexperts; i++) {
        const struct alloy_moe_expert *x = &c->experts[i];
        if (!x->source_model || !isfinite(x->noise_scale) || x->noise_scale < 0 || !isfinite(x->residual_scale) ||
            x->residual_scale < 0 || (c->gate != ALLOY_GATE_RANDOM && !x->npositive))
            abort();
        for (size_t k = 0; k < x->npositive; k++)
            if (!x->positive[k]) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_moe_config *c = NULL;
    struct alloy_err err = {0};
    int crimes = size > 0 && (data[0] & 1);
    int rc = alloy_moe_config_parse((const char *)data, size, "fuzz.yml", crimes, &c, &err);
    if (rc == 0) {
        verify(c);
        alloy_moe_config_free(c);
    } else if (c || !err.msg[0] || strchr(err.msg, '\n') || (int)err.status != rc) {
        abort();
    }
    return 0;
}
