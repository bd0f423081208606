/*
 * test_sources.c — the sources read every dtype through the checked reader:
 * an input file that shrinks during a merge (after planning, before its
 * tensors are read) ends the merge with an error naming the file, never a
 * SIGBUS, for a copied integer tensor, an F64 tensor (wider than float32)
 * and an F64 embedding window; and the values read are right when the file
 * stays whole.
 */
#include "test.h"
#include "alloy.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct shrink {
    const char *path;  /* the file to cut */
    off_t to;
    int done;
};

/* The progress callback runs once before the first tensor: the moment to cut the input. */
static void cut_input(void *user, const struct alloy_progress *p)
{
    struct shrink *s = user;
    if (!s->done && p->tensors_done == 0) CHECK_INT(truncate(s->path, s->to), 0);
    s->done = 1;
}

static void write_pair(const char *dir, const char *first_dtype, int vocab_b)
{
    static int32_t ids[1000];
    static double w[64 * 32], wb[80 * 32];
    for (int i = 0; i < 1000; i++) ids[i] = i;
    for (int i = 0; i < 64 * 32; i++) w[i] = 0.5 * i;
    for (int i = 0; i < 80 * 32; i++) wb[i] = -0.25 * i;
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    struct test_tensor ta[2] = {{"model.ids", "I32", 1, {1000}, ids}, {"model.embed_tokens.weight", "F64", 2, {64, 32}, w}};
    struct test_tensor tb[2] = {{"model.ids", "I32", 1, {1000}, ids},
                                {"model.embed_tokens.weight", "F64", 2, {vocab_b, 32}, wb}};
    int skip = strcmp(first_dtype, "F64") == 0; /* F64 only: the merged tensor is the first read */
    CHECK_INT(test_write_model(a, ta + skip, 2 - skip, "{\"num_hidden_layers\": 1}"), 0);
    CHECK_INT(test_write_model(b, tb + skip, 2 - skip, "{\"num_hidden_layers\": 1}"), 0);
}

static int merge_cut(const char *dir, struct shrink *s, struct alloy_err *err, struct alloy_model **out)
{
    char yaml[1600];
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s/a\n    parameters: {weight: 1}\n"
             "  - model: %s/b\n    parameters: {weight: 1}\ndtype: float32\n", dir, dir);
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.config_text = yaml;
    o.out_model = out;
    o.threads = 2;
    o.progress = s ? cut_input : NULL;
    o.progress_user = s;
    return alloy_merge(&o, err);
}

TEST(sources_shrinking_inputs_are_errors)
{
    static const char *const cases[][2] = {{"I32", "a copied I32 tensor"}, {"F64", "an F64 tensor"}};
    for (int c = 0; c < 2; c++) {
        for (int window = 0; window < 2; window++) {
            char dir[600], file[700];
            snprintf(dir, sizeof dir, "%s/%d%d", test_tmpdir(), c, window);
            mkdir(dir, 0755);
            write_pair(dir, cases[c][0], window ? 80 : 64);
            snprintf(file, sizeof file, "%s/a/model.safetensors", dir);
            struct shrink s = {file, 200, 0}; /* inside the header's data: every tensor byte gone */
            struct alloy_err err = {0};
            struct alloy_model *m = NULL;
            int rc = merge_cut(dir, &s, &err, &m);
            CHECK_MSG(rc == ALLOY_ERR_IO, "%s (window %d): rc %d: %s", cases[c][1], window, rc, err.msg);
            CHECK_STR_CONTAINS(err.msg, file);
            CHECK(m == NULL);
        }
    }
}

TEST(sources_f64_window_values)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/w", test_tmpdir());
    mkdir(dir, 0755);
    write_pair(dir, "I32", 80); /* b's embedding has 80 rows: linear rectifies to the common 64 */
    struct alloy_err err = {0};
    struct alloy_model *m = NULL;
    CHECK_MSG(merge_cut(dir, NULL, &err, &m) == ALLOY_OK, "%s", err.msg);
    const struct alloy_tensor *e = m ? alloy_model_find(m, "model.embed_tokens.weight") : NULL;
    CHECK(e && e->dtype == ALLOY_DTYPE_F32 && e->shape[0] == 64 && e->shape[1] == 32);
    for (int i = 0; e && i < 64 * 32; i++) {
        float got;
        memcpy(&got, e->data + 4 * (size_t)i, 4);
        CHECK_NEAR(got, 0.5 * (0.5 * i - 0.25 * i), 1e-6); /* weights 1 and 1, normalized */
    }
    alloy_model_close(m);
}
