/*
 * names.c — what a tensor's name says: its layer, and whether it is an
 * embedding.
 *
 * DESIGN
 *   No per-architecture template: a layer is the first all-digit path
 *   component of a name (`model.layers.12.mlp...`, `h.3.attn...`,
 *   `blocks.0...`), at most 8 digits; the text before it is the stack's
 *   prefix. Embeddings are recognised by the words the common architectures
 *   use for them; "pre" embeddings (inputs) come before the layers, output
 *   heads (lm_head, embed_out) after.
 */
#include "core/internal.h"
#include "plan/plan.h"

#include <ctype.h>

long long alloy_name_layer(const char *name, size_t *prefix_len, const char **suffix)
{
    for (const char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        const char *d = p + 1;
        if (!isdigit((unsigned char)*d)) continue;
        const char *e = d;
        long long v = 0;
        while (isdigit((unsigned char)*e) && v < 100000000) v = v * 10 + (*e++ - '0');
        if (*e != '.' || e - d > 8) continue;
        if (prefix_len) *prefix_len = (size_t)(p - name);
        if (suffix) *suffix = e + 1;
        return v;
    }
    return -1;
}

static const char *const g_embed_words[] = {"embed_tokens", "lm_head", "wte", "word_embeddings", "tok_embeddings",
                                            "embed_in", "embed_out", "token_embd", "embeddings.weight"};

int alloy_name_is_embed(const char *name)
{
    if (alloy_name_layer(name, NULL, NULL) >= 0) return 0;
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_embed_words); i++)
        if (strstr(name, g_embed_words[i])) return 1;
    return 0;
}

int alloy_name_is_vocab_rows(const char *name)
{
    return alloy_name_is_embed(name) && !strstr(name, "position") && !strstr(name, "token_type");
}

int alloy_name_is_pre(const char *name)
{
    return alloy_name_is_embed(name) && !strstr(name, "lm_head") && !strstr(name, "embed_out");
}
