/*
 * test_index_stream.c — the index read in pieces (src/formats/model_index.c
 * over json_stream_members, src/formats/json_members.c).
 *
 * The reference is the whole-text walk (json_members over the text in
 * memory, as the index was read before): for texts built here, every prefix
 * of them (a truncated file) and with garbage after them, the windowed walk
 * must give the same members, count, error and byte position for every
 * window size from 1 byte up, with members held and not held. End to end,
 * a sharded model opens to the same tensors, and a corrupt index fails with
 * the same message, whatever the window; names longer than the window are
 * read whole; the messages for a truncated index and for garbage after it
 * name the byte found by searching the text here.
 */
#include "test.h"
#include "alloy.h"
#include "formats/json_members.h"
#include "formats/model_index.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------ the walker against the whole-text walk */

enum { MAXM = 64 };

/* What a walk saw: members (offsets in the text, key bytes) and its result. */
struct seen {
    int n;
    size_t ks[MAXM], ke[MAXM], vs[MAXM], ve[MAXM];
    char key[MAXM][320];
    int rc;
    size_t count, at;
    const char *what;
};

static int record(void *ctx, const char *s, const struct json_member *m)
{
    struct seen *r = ctx;
    if (r->n == MAXM) return 99;
    size_t kl = m->ke - m->ks < sizeof r->key[0] - 1 ? m->ke - m->ks : sizeof r->key[0] - 1;
    memcpy(r->key[r->n], s + m->ks, kl);
    r->key[r->n][kl] = '\0';
    r->ks[r->n] = m->base + m->ks, r->ke[r->n] = m->base + m->ke;
    r->vs[r->n] = m->base + m->vs, r->ve[r->n] = m->base + m->ve;
    r->n++;
    return 0;
}

static void same_walk(const struct seen *a, const struct seen *b, size_t len, size_t window, int held)
{
    int ok = a->rc == b->rc && a->count == b->count && a->n == b->n;
    if (ok && a->rc == -1) ok = a->at == b->at && strcmp(a->what, b->what) == 0;
    for (int i = 0; ok && i < a->n; i++)
        ok = a->ks[i] == b->ks[i] && a->ke[i] == b->ke[i] && a->vs[i] == b->vs[i] && a->ve[i] == b->ve[i] &&
             strcmp(a->key[i], b->key[i]) == 0;
    if (!ok)
        test_fail(__FILE__, __LINE__, "text of %zu bytes, window %zu, held %d: rc %d/%d count %zu/%zu at %zu/%zu %s/%s",
                  len, window, held, a->rc, b->rc, a->count, b->count, a->at, b->at, a->what ? a->what : "-",
                  b->what ? b->what : "-");
}

/* Walks text[0, len) (the file holds more: only len bytes are the text) with each window and both modes. */
static void check_text(int fd, const char *text, size_t len)
{
    static const size_t windows[] = {1, 2, 3, 5, 8, 13, 64, 4096};
    struct seen ref = {0};
    ref.rc = json_members(text, 0, len, record, &ref, &ref.count, &ref.what, &ref.at);
    for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
        for (int held = 0; held <= 1; held++) {
            struct json_stream js;
            struct seen got = {0};
            CHECK_INT(json_stream_init(&js, fd, len, windows[w]), 0);
            got.rc = json_stream_members(&js, 0, len, held, record, &got, &got.count, &got.what, &got.at);
            same_walk(&ref, &got, len, windows[w], held);
            CHECK(held || js.cap <= (windows[w] > 256 ? windows[w] : 256)); /* not held: the window keeps its size */
            json_stream_free(&js);
        }
    }
}

static int write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(text, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* An index-like text: metadata with nested brackets and strings holding brackets, escapes, a long key. */
static char *sample_text(void)
{
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    char *t = malloc(2048);
    if (!t) return NULL;
    snprintf(t, 2048,
             "{\n  \"metadata\": {\"total_size\": 12, \"x\": [1, {\"y\": \"}]\\\"\"}, -2.5e3, true, null]},\n"
             "  \"weight_map\": {\n    \"a.weight\": \"s1.safetensors\",\n    \"b\\\\c\\\"d\": \"s2.safetensors\",\n"
             "    \"%s\": \"s1.safetensors\",\n    \"e\\u002ef\": \"s2.safetensors\"\n  }\n}\n",
             longname);
    return t;
}

TEST(index_stream_walk_matches_whole_text_walk)
{
    char path[512];
    snprintf(path, sizeof path, "%s/text.json", test_tmpdir());
    char *t = sample_text();
    CHECK(t != NULL);
    if (!t) return;
    size_t len = strlen(t);
    /* the text, then garbage after it: each prefix of the file is a text (truncated, or with garbage) */
    char *file = malloc(len + 16);
    CHECK(file != NULL);
    if (!file) { free(t); return; }
    memcpy(file, t, len);
    memcpy(file + len, " }x", 4);
    CHECK_INT(write_file(path, file, len + 3), 0);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    for (size_t n = 0; fd >= 0 && n <= len + 3; n++) check_text(fd, file, n);
    if (fd >= 0) close(fd);
    /* the reference saw the whole text's members: the walk compared above did not pass over them */
    struct seen ref = {0};
    CHECK_INT(json_members(t, 0, len, record, &ref, &ref.count, &ref.what, &ref.at), 0);
    CHECK_INT(ref.n, 2);
    free(file);
    free(t);
}

/* ------------------------------------------------------------ end to end: a sharded model */

static char g_long[201];

static void write_sharded(const char *dir)
{
    static const float v[4] = {1, 2, 3, 4};
    memset(g_long, 'q', sizeof g_long - 1);
    g_long[sizeof g_long - 1] = '\0';
    struct test_tensor s1[] = {{"model.layers.0.w", "F32", 1, {2}, v}, {g_long, "F32", 1, {1}, v},
                               {"lm_head.weight", "F32", 1, {1}, v}};
    struct test_tensor s2[] = {{"model.embed_tokens.weight", "F32", 1, {2}, v}, {"model.norm.weight", "F32", 1, {1}, v},
                               {"unlisted", "F32", 1, {1}, v}};
    char path[600];
    snprintf(path, sizeof path, "%s/s1.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, s1, 3), 0);
    snprintf(path, sizeof path, "%s/s2.safetensors", dir);
    CHECK_INT(test_write_safetensors(path, s2, 3), 0);
}

static char *index_text(void)
{
    char *t = malloc(1024);
    if (t)
        snprintf(t, 1024, "{\"metadata\": {\"total_size\": 28},\n \"weight_map\": {\n"
                          "  \"model.embed_tokens.weight\": \"s2.safetensors\",\n  \"model.layers.0.w\": \"s1.safetensors\",\n"
                          "  \"%s\": \"s1.safetensors\",\n  \"model.norm\\u002eweight\": \"s2.safetensors\",\n"
                          "  \"lm_head.weight\": \"s1.safetensors\"}}\n", g_long);
    return t;
}

/* Opens dir with the index read through `window` bytes; the message (or "" when it opened) in msg. */
static struct alloy_model *open_with(const char *dir, size_t window, char *msg, size_t cap)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    alloy_index_set_window(window);
    int rc = alloy_model_open(dir, &m, &err);
    alloy_index_set_window(0);
    snprintf(msg, cap, "%s", rc ? err.msg : "");
    return m;
}

TEST(index_stream_model_same_for_every_window)
{
    const char *dir = test_tmpdir();
    write_sharded(dir);
    char path[600], msg[1100];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *t = index_text();
    CHECK(t != NULL);
    if (!t) return;
    CHECK_INT(test_write_text(path, t), 0);
    /* shard s2 first (first named), then s1, each in data order; "unlisted" is left out */
    static const char *const order[] = {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.w", NULL,
                                        "lm_head.weight"};
    static const size_t windows[] = {1, 4, 16, 0};
    for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
        struct alloy_model *m = open_with(dir, windows[w], msg, sizeof msg);
        if (msg[0]) test_fail(__FILE__, __LINE__, "window %zu: %s", windows[w], msg);
        CHECK(m != NULL);
        if (!m) continue;
        CHECK_INT(alloy_model_count(m), 5);
        for (size_t i = 0; i < 5 && i < alloy_model_count(m); i++) {
            const char *want = order[i] ? order[i] : g_long; /* longer than the window: read whole */
            CHECK(strcmp(alloy_model_tensor(m, i)->name, want) == 0);
            CHECK(alloy_model_find(m, want) == alloy_model_tensor(m, i));
        }
        CHECK(alloy_model_find(m, "unlisted") == NULL);
        alloy_model_close(m);
    }
    free(t);
}

TEST(index_stream_corrupt_index_same_message_for_every_window)
{
    const char *dir = test_tmpdir();
    write_sharded(dir);
    char path[600], ref[1100], got[1100];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *t = index_text();
    CHECK(t != NULL);
    if (!t) return;
    size_t len = strlen(t);
    /* every truncation, then garbage after the object: the default window reads each whole */
    for (size_t n = 0; n <= len + 2; n += n < len ? 3 : 1) {
        char *c = malloc(len + 3);
        if (!c) break;
        memcpy(c, t, len);
        memcpy(c + len, "x\n", 2);
        CHECK_INT(write_file(path, c, n < len + 2 ? n : len + 2), 0);
        free(c);
        struct alloy_model *m = open_with(dir, 0, ref, sizeof ref);
        alloy_model_close(m);
        CHECK(n == len || n == len - 1 ? m != NULL : m == NULL); /* the whole text, with or without its newline */
        m = open_with(dir, 3, got, sizeof got);
        alloy_model_close(m);
        if (strcmp(ref, got) != 0) test_fail(__FILE__, __LINE__, "%zu bytes: '%s' against '%s'", n, got, ref);
    }
    /* the messages themselves: the byte found here by searching the text */
    char want[1200];
    size_t cut = (size_t)(strstr(t, "\"lm_head") - t), wm = (size_t)(strchr(strstr(t, "\"weight_map\":"), '{') - t);
    CHECK_INT(write_file(path, t, cut), 0);
    alloy_model_close(open_with(dir, 2, got, sizeof got));
    snprintf(want, sizeof want, "%s: not valid JSON: unbalanced or truncated value (byte %zu)", path, wm);
    CHECK(strcmp(got, want) == 0);
    char *g = malloc(len + 8);
    if (g) {
        memcpy(g, t, len);
        memcpy(g + len, "  [", 3);
        CHECK_INT(write_file(path, g, len + 3), 0);
        alloy_model_close(open_with(dir, 2, got, sizeof got));
        snprintf(want, sizeof want, "%s: not valid JSON: end of text expected after the object (byte %zu)", path, len + 2);
        CHECK(strcmp(got, want) == 0);
        free(g);
    }
    free(t);
}
