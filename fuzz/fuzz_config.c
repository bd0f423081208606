/*
 * fuzz_config.c — libFuzzer target for the YAML config reader.
 *
 * DESIGN
 *   Feeds arbitrary bytes to alloy_config_parse (not NUL-terminated: the
 *   parser must honour the length) and to the multi-document reader
 *   alloy_config_parse_docs (mergekit-multi configs) and, when configs come
 *   back, evaluates every parameter setting so the evaluation code is
 *   exercised on whatever shapes the parser accepted. Invariants checked: on
 *   success *out is set (every document, each with its own text inside the
 *   input), on failure *out is NULL and the message is one non-empty line. Any
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

static void touch_config(const struct alloy_config *c)
{
    touch(&c->params);
    for (size_t i = 0; i < c->nslices; i++) {
        touch(&c->slices[i].params);
        for (size_t j = 0; j < c->slices[i].nsources; j++) touch(&c->slices[i].sources[j].params);
    }
}

static void check_failure(int rc, const struct alloy_err *err, int got_output)
{
    if (got_output || !err->msg[0] || strchr(err->msg, '\n') || (int)err->status != rc) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct alloy_config *c = NULL;
    struct alloy_err err = {0};
    int rc = alloy_config_parse((const char *)data, size, "fuzz.yml", &c, &err);
    if (rc == 0) {
        if (!c) abort();
        touch_config(c);
        alloy_config_free(c);
    } else {
        check_failure(rc, &err, c != NULL);
    }
    struct alloy_config **docs = NULL;
    size_t n = 0;
    memset(&err, 0, sizeof err);
    rc = alloy_config_parse_docs((const char *)data, size, "fuzz.yml", &docs, &n, &err);
    if (rc == 0) {
        if (!docs || !n) abort();
        for (size_t i = 0; i < n; i++) {
            if (docs[i]->text_len > size || docs[i]->text[docs[i]->text_len] != 0) abort();
            touch_config(docs[i]);
        }
        alloy_config_free_docs(docs, n);
    } else {
        check_failure(rc, &err, docs != NULL || n != 0);
    }
    return 0;
}
