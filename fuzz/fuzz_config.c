/*
 * fuzz_config.c — libFuzzer target for the YAML config reader.
 *
 * DESIGN
 *   Feeds arbitrary bytes to alloy_config_parse (not NUL-terminated: the
 *   parser must honour the length) and, when a config comes back, evaluates
 *   every parameter setting so the evaluation code is exercised on whatever
 *   shapes the parser accepted. Invariants checked: on success *out is set,
 *   on failure *out is NULL and the message is one non-empty line. Any
 *   crash, leak, hang or sanitizer report is a bug. Seeds: fuzz/corpus/config/.
 */
#include "config/config.h"
#include "fuzz.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void touch(const struct alloy_params *p)
{
    static const char *const names[] = {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight", ""};
    for (size_t i = 0; i < p->n; i++)
        for (size_t k = 0; k < 3; k++)
            for (int j = 0; j <= 4; j++) {
                double v;
                alloy_setting_eval(&p->values[i], names[k], j / 4.0, &v);
            }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_config_parse((const char *)data, size, "fuzz.yml", &c, &err);
    if (rc == 0) {
        if (!c) abort();
        touch(&c->params);
        for (size_t i = 0; i < c->nslices; i++) {
            touch(&c->slices[i].params);
            for (size_t j = 0; j < c->slices[i].nsources; j++) touch(&c->slices[i].sources[j].params);
        }
        alloy_config_free(c);
    } else if (c || !err.msg[0] || strchr(err.msg, '\n') || (int)err.status != rc) {
        abort();
    }
    return 0;
}
