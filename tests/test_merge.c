/*
 * test_merge.c — end-to-end merges through the CLI on the bundled models,
 * checked tensor by tensor against values computed here from the inputs
 * (with this file's own bf16 rounding), plus the output folder contract:
 * shards and index, config.json, tokenizer copy, model card, atomic
 * replacement, refusal to overwrite inputs, exit codes and messages.
 */
#include "test.h"
#include "alloy.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define M(name) "tests/data/tiny-llama/" name

/* Independent float32 -> bf16 rounding (nearest even), written from the definition. */
static uint16_t ref_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t lower = u & 0xffff, upper = u >> 16;
    if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) upper++;
    return (uint16_t)upper;
}

static float bf16_val(const uint8_t *p, uint64_t i)
{
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int merge(const char *yaml, const char *out, const char *extra, char **log)
{
    const char *dir = test_tmpdir();
    char cfg[512], cmd[2048];
    snprintf(cfg, sizeof cfg, "%s/config.yml", dir);
    test_write_text(cfg, yaml);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet %s", test_alloy_bin(), cfg, out, extra ? extra : "");
    return test_run(cmd, log);
}

static struct alloy_model *open_model(const char *dir)
{
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    if (alloy_model_open(dir, &m, &err) != ALLOY_OK) test_fail(__FILE__, __LINE__, "open %s: %s", dir, err.msg);
    return m;
}

TEST(merge_linear_bf16_matches_formula)
{
    char out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/out", test_tmpdir());
    int rc = merge("merge_method: linear\n"
                   "models:\n"
                   "  - model: " M("code") "\n    parameters: {weight: 0.7}\n"
                   "  - model: " M("prose") "\n    parameters: {weight: 0.3}\n"
                   "dtype: bfloat16\n",
                   out, "--threads 2", &log);
    CHECK_MSG(rc == 0, "merge failed (%d): %s", rc, log);
    free(log);
    struct alloy_model *o = open_model(out), *a = open_model(M("code")), *b = open_model(M("prose"));
    if (!o || !a || !b) goto done;
    CHECK_INT(alloy_model_count(o), 39);
    uint64_t total = 0, exact = 0, off_by_one = 0;
    for (size_t i = 0; i < alloy_model_count(a); i++) {
        const struct alloy_tensor *ta = alloy_model_tensor(a, i);
        const struct alloy_tensor *tb = alloy_model_find(b, ta->name), *to = alloy_model_find(o, ta->name);
        CHECK_MSG(to && tb, "tensor %s missing", ta->name);
        if (!to || !tb) continue;
        CHECK_INT(to->dtype, ALLOY_DTYPE_BF16);
        CHECK_INT(to->numel, ta->numel);
        for (uint64_t e = 0; e < ta->numel; e++) {
            double xa = bf16_val(ta->data, e), xb = bf16_val(tb->data, e);
            double want = (0.7 * xa + 0.3 * xb) / (0.7 + 0.3);
            uint16_t w = ref_bf16((float)want), got;
            memcpy(&got, to->data + 2 * e, 2);
            total++;
            exact += got == w;
            /* one bf16 ulp, or float32 cancellation error when the two terms nearly cancel */
            uint32_t gu = (uint32_t)got << 16;
            float gf;
            memcpy(&gf, &gu, 4);
            off_by_one += got != w && (got == w + 1 || got + 1 == w || fabs(gf - want) <= 1e-6 * (0.7 * fabs(xa) + 0.3 * fabs(xb)) + 0x1p-126);
        }
    }
    CHECK_MSG(exact + off_by_one == total, "%llu of %llu elements differ by more than one bf16 ulp",
              (unsigned long long)(total - exact - off_by_one), (unsigned long long)total);
    CHECK_MSG(exact * 1000 >= total * 999, "only %llu of %llu exact", (unsigned long long)exact, (unsigned long long)total);
done:
    alloy_model_close(o);
    alloy_model_close(a);
    alloy_model_close(b);
}

TEST(merge_linear_f32_normalize_false)
{
    char out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/out", test_tmpdir());
    int rc = merge("merge_method: linear\n"
                   "models:\n"
                   "  - model: " M("base-f32") "\n    parameters: {weight: 0.5}\n"
                   "  - model: " M("code") "\n    parameters: {weight: 0.25}\n"
                   "parameters: {normalize: false}\n"
                   "dtype: float32\n",
                   out, NULL, &log);
    CHECK_MSG(rc == 0, "merge failed: %s", log);
    free(log);
    struct alloy_model *o = open_model(out), *a = open_model(M("base-f32")), *b = open_model(M("code"));
    if (!o || !a || !b) goto done;
    double maxrel = 0;
    for (size_t i = 0; i < alloy_model_count(a); i++) {
        const struct alloy_tensor *ta = alloy_model_tensor(a, i), *tb = alloy_model_find(b, ta->name),
                                  *to = alloy_model_find(o, ta->name);
        if (!to || !tb) { CHECK(0); continue; }
        CHECK_INT(to->dtype, ALLOY_DTYPE_F32);
        for (uint64_t e = 0; e < ta->numel; e++) {
            float fa, fo;
            memcpy(&fa, ta->data + 4 * e, 4);
            memcpy(&fo, to->data + 4 * e, 4);
            double want = 0.5 * fa + 0.25 * bf16_val(tb->data, e);
            double rel = fabs(fo - want) / (fabs(want) + 1e-30);
            if (rel > maxrel) maxrel = rel;
        }
    }
    CHECK_MSG(maxrel < 1e-6, "max relative error %g", maxrel);
done:
    alloy_model_close(o);
    alloy_model_close(a);
    alloy_model_close(b);
}

TEST(merge_output_folder_contract)
{
    char out[512], path[1024], *log = NULL;
    snprintf(out, sizeof out, "%s/merged", test_tmpdir());
    const char *yaml = "# a comment kept verbatim\n"
                       "merge_method: linear\n"
                       "base_model: " M("base") "\n"
                       "models:\n"
                       "  - model: " M("base") "\n    parameters: {weight: 0.5}\n"
                       "  - model: " M("code") "\n    parameters: {weight: 0.5}\n"
                       "dtype: float16\n";
    int rc = merge(yaml, out, "--out-shard-size 600K", &log);
    CHECK_MSG(rc == 0, "merge failed: %s", log);
    free(log);
    /* shards of at most 600 kB, plus an index covering every tensor */
    int nshards = 0;
    DIR *d = opendir(out);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strncmp(e->d_name, "model-", 6) == 0) {
            nshards++;
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", out, e->d_name);
            stat(path, &st);
            CHECK_MSG(st.st_size <= 600000 + 8192, "%s is %lld bytes", e->d_name, (long long)st.st_size);
            CHECK_STR_CONTAINS(e->d_name, "-of-0000");
        }
    if (d) closedir(d);
    CHECK_MSG(nshards >= 2, "expected several shards, got %d", nshards);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    char *index = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(index, "\"total_size\": 1585408"); /* 792,704 params x 2 bytes */
    CHECK_STR_CONTAINS(index, "\"lm_head.weight\": \"model-0000");
    free(index);
    struct alloy_model *o = open_model(out);
    if (o) {
        CHECK_INT(alloy_model_count(o), 39);
        CHECK_INT(alloy_model_find(o, "model.norm.weight")->dtype, ALLOY_DTYPE_F16);
    }
    alloy_model_close(o);
    snprintf(path, sizeof path, "%s/config.json", out);
    char *cfg = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(cfg, "\"torch_dtype\": \"float16\"");
    CHECK_STR_CONTAINS(cfg, "\"num_hidden_layers\": 4");
    free(cfg);
    snprintf(path, sizeof path, "%s/mergekit_config.yml", out);
    char *mk = test_read_file(path, NULL);
    CHECK(mk && strcmp(mk, yaml) == 0);
    free(mk);
    snprintf(path, sizeof path, "%s/README.md", out);
    char *card = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(card, "---\n");
    CHECK_STR_CONTAINS(card, "- merge\n");
    CHECK_STR_CONTAINS(card, "using " M("base") " as a base");
    CHECK_STR_CONTAINS(card, "# a comment kept verbatim");
    free(card);
    const char *copied[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", out, copied[i]);
        CHECK_MSG(access(path, F_OK) == 0, "%s not copied", copied[i]);
    }
}

TEST(merge_passthrough_frankenmerge)
{
    char out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/franken", test_tmpdir());
    int rc = merge("merge_method: passthrough\n"
                   "slices:\n"
                   "  - sources:\n      - model: " M("code") "\n        layer_range: [0, 3]\n"
                   "  - sources:\n      - model: " M("prose") "\n        layer_range: [1, 4]\n"
                   "dtype: bfloat16\n",
                   out, NULL, &log);
    CHECK_MSG(rc == 0, "merge failed: %s", log);
    free(log);
    struct alloy_model *o = open_model(out), *a = open_model(M("code")), *b = open_model(M("prose"));
    if (!o || !a || !b) goto done;
    CHECK_INT(alloy_model_count(o), 3 + 6 * 9);
    /* out layers 0-2 = code 0-2, out 3-5 = prose 1-3; embeddings from code, norm and lm_head from prose */
    const char *parts[] = {"self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"};
    for (int l = 0; l < 6; l++)
        for (int k = 0; k < 3; k++) {
            char on[128], in[128];
            snprintf(on, sizeof on, "model.layers.%d.%s", l, parts[k]);
            snprintf(in, sizeof in, "model.layers.%d.%s", l < 3 ? l : l - 2, parts[k]);
            const struct alloy_tensor *to = alloy_model_find(o, on), *ti = alloy_model_find(l < 3 ? a : b, in);
            CHECK_MSG(to && ti && to->nbytes == ti->nbytes && memcmp(to->data, ti->data, ti->nbytes) == 0,
                      "%s differs from its source %s", on, in);
        }
    const struct alloy_tensor *emb = alloy_model_find(o, "model.embed_tokens.weight");
    CHECK(emb && memcmp(emb->data, alloy_model_find(a, "model.embed_tokens.weight")->data, emb->nbytes) == 0);
    const struct alloy_tensor *head = alloy_model_find(o, "lm_head.weight");
    CHECK(head && memcmp(head->data, alloy_model_find(b, "lm_head.weight")->data, head->nbytes) == 0);
    CHECK(alloy_model_find(o, "model.layers.6.mlp.up_proj.weight") == NULL);
    CHECK_STR_CONTAINS(alloy_model_config_text(o), "\"num_hidden_layers\": 6");
done:
    alloy_model_close(o);
    alloy_model_close(a);
    alloy_model_close(b);
}

TEST(merge_passthrough_scale_filter)
{
    char out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/scaled", test_tmpdir());
    int rc = merge("merge_method: passthrough\n"
                   "models:\n  - model: " M("code") "\n"
                   "parameters:\n  scale:\n    - filter: o_proj\n      value: 0\n    - value: 1\n",
                   out, NULL, &log);
    CHECK_MSG(rc == 0, "merge failed: %s", log);
    free(log);
    struct alloy_model *o = open_model(out), *a = open_model(M("code"));
    if (!o || !a) goto done;
    int zeroed = 0;
    for (size_t i = 0; i < alloy_model_count(o); i++) {
        const struct alloy_tensor *t = alloy_model_tensor(o, i), *src = alloy_model_find(a, t->name);
        int all_zero = 1;
        for (uint64_t e = 0; e < t->numel; e++) all_zero &= bf16_val(t->data, e) == 0.0f;
        if (strstr(t->name, "o_proj")) { CHECK(all_zero); zeroed++; }
        else CHECK(src && memcmp(t->data, src->data, t->nbytes) == 0);
    }
    CHECK_INT(zeroed, 4);
done:
    alloy_model_close(o);
    alloy_model_close(a);
}

TEST(merge_dry_run_writes_nothing)
{
    char out[512], *log = NULL;
    snprintf(out, sizeof out, "%s/never", test_tmpdir());
    int rc = merge("merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: [0, 1]}\n"
                   "  - model: " M("prose") "\n    parameters: {weight: 1}\n",
                   out, "--dry-run", &log);
    CHECK_INT(rc, 0);
    CHECK_STR_CONTAINS(log, "model.layers.3.mlp.up_proj.weight");
    CHECK_STR_CONTAINS(log, "weight=0.333333"); /* gradient [0, 1] at layer 1 of 4: t = 1/3 */
    CHECK_STR_CONTAINS(log, "linear");
    CHECK(access(out, F_OK) != 0);
    free(log);
}

TEST(merge_errors_and_atomicity)
{
    const char *dir = test_tmpdir();
    char out[512], marker[600], *log = NULL;
    snprintf(out, sizeof out, "%s/existing", dir);
    mkdir(out, 0755);
    snprintf(marker, sizeof marker, "%s/keep.txt", out);
    test_write_text(marker, "old");
    /* a missing model: exit 1, one line naming it, the old folder untouched, no temp left */
    int rc = merge("merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: 1}\n"
                   "  - model: /no/such/model\n    parameters: {weight: 1}\n",
                   out, NULL, &log);
    CHECK_INT(rc, 1);
    CHECK_STR_CONTAINS(log, "alloy: error: ");
    CHECK_STR_CONTAINS(log, "/no/such/model");
    free(log);
    CHECK(access(marker, F_OK) == 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c alloy-tmp", dir);
    char *ls = NULL;
    test_run(cmd, &ls);
    CHECK(ls && atoi(ls) == 0);
    free(ls);
    /* a successful merge replaces the existing folder as a whole (keep.txt is not model output: --overwrite) */
    rc = merge("merge_method: passthrough\nmodels:\n  - model: " M("code") "\n", out, "--overwrite", &log);
    CHECK_MSG(rc == 0, "%s", log);
    free(log);
    CHECK(access(marker, F_OK) != 0);
    /* the output may not be an input */
    rc = merge("merge_method: passthrough\nmodels:\n  - model: " M("code") "\n", M("code"), NULL, &log);
    CHECK_INT(rc, 1);
    CHECK_STR_CONTAINS(log, "never overwrites its inputs");
    free(log);
    /* a shape mismatch names the tensor, the models and the shapes */
    rc = merge("merge_method: linear\nmodels:\n  - model: " M("code") "\n    parameters: {weight: 1}\n"
               "  - model: " M("code") "\n    parameters: {weight: 1}\n", out, NULL, &log);
    CHECK_INT(rc, 0); /* the same model twice is fine */
    free(log);
    /* usage errors exit 2 */
    snprintf(cmd, sizeof cmd, "%s merge", test_alloy_bin());
    CHECK_INT(test_run(cmd, NULL), 2);
    snprintf(cmd, sizeof cmd, "%s merge a.yml b --bogus", test_alloy_bin());
    CHECK_INT(test_run(cmd, NULL), 2);
    snprintf(cmd, sizeof cmd, "%s merge a.yml b --out-shard-size lots", test_alloy_bin());
    CHECK_INT(test_run(cmd, NULL), 2);
    /* a config that does not exist */
    snprintf(cmd, sizeof cmd, "%s merge /no/such.yml %s/x", test_alloy_bin(), dir);
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK_STR_CONTAINS(log, "/no/such.yml");
    free(log);
}

TEST(merge_shape_mismatch_message)
{
    /* a model whose q_proj has another shape */
    const char *dir = test_tmpdir();
    char mdir[600], path[700], out[600], *log = NULL;
    snprintf(mdir, sizeof mdir, "%s/odd", dir);
    mkdir(mdir, 0755);
    float w[4 * 8] = {0};
    struct test_tensor t[] = {{"model.layers.0.self_attn.q_proj.weight", "F32", 2, {4, 8}, w}};
    snprintf(path, sizeof path, "%s/model.safetensors", mdir);
    CHECK_INT(test_write_safetensors(path, t, 1), 0);
    snprintf(path, sizeof path, "%s/config.json", mdir);
    test_write_text(path, "{\"num_hidden_layers\": 1}");
    char other[600];
    snprintf(other, sizeof other, "%s/other", dir);
    mkdir(other, 0755);
    float w2[4 * 4] = {0};
    struct test_tensor t2[] = {{"model.layers.0.self_attn.q_proj.weight", "F32", 2, {4, 4}, w2}};
    snprintf(path, sizeof path, "%s/model.safetensors", other);
    test_write_safetensors(path, t2, 1);
    snprintf(path, sizeof path, "%s/config.json", other);
    test_write_text(path, "{\"num_hidden_layers\": 1}");
    char yaml[2000];
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", mdir, other);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK_INT(merge(yaml, out, NULL, &log), 1);
    CHECK_STR_CONTAINS(log, "model.layers.0.self_attn.q_proj.weight");
    CHECK_STR_CONTAINS(log, "[4, 4]");
    CHECK_STR_CONTAINS(log, "[4, 8]");
    free(log);
}

/* Streaming: merging two models whose single tensor (64 MiB as F32) is far
 * larger than the engine's working set must not make the process grow. */
TEST(merge_memory_bounded_by_chunks)
{
    const char *dir = test_tmpdir();
    const long long rows = 4096, cols = 4096; /* 16 Mi elements: 64 MiB in F32 per model */
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    char a[600], b[600], path[700], out[600];
    for (int k = 0; k < 2; k++) {
        for (long long i = 0; i < rows * cols; i++) w[i] = (float)((i % 1000) * 0.001 * (k + 1));
        snprintf(k ? b : a, 600, "%s/m%d", dir, k);
        mkdir(k ? b : a, 0755);
        struct test_tensor t[] = {{"model.embed_tokens.weight", "F32", 2, {rows, cols}, w}};
        snprintf(path, sizeof path, "%s/model.safetensors", k ? b : a);
        CHECK_INT(test_write_safetensors(path, t, 1), 0);
        snprintf(path, sizeof path, "%s/config.json", k ? b : a);
        test_write_text(path, "{\"num_hidden_layers\": 0}");
    }
    free(w);
    char yaml[2000], cfg[700], cmd[2000];
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\n", a, b);
    snprintf(cfg, sizeof cfg, "%s/c.yml", dir);
    test_write_text(cfg, yaml);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --threads 2", test_alloy_bin(), cfg, out);
    long rss = 0;
    CHECK_INT(test_run_rss(cmd, &rss), 0);
    /* inputs are 128 MiB and the output 64 MiB; the bound is the chunk scratch (2 threads x 3 x 1 MiB) plus
       input pages of the tensor in flight that the kernel has not reclaimed yet */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) /* sanitizers add shadow memory */
    CHECK_MSG(rss < 48 * 1024, "peak RSS %ld KiB for a 64 MiB tensor", rss);
#endif
    struct alloy_model *o = open_model(out);
    if (o) {
        const struct alloy_tensor *t = alloy_model_find(o, "model.embed_tokens.weight");
        float v;
        memcpy(&v, t->data + 4 * 1234567, 4);
        CHECK_NEAR(v, (1234567 % 1000) * 0.001 * 1.5, 1e-6);
    }
    alloy_model_close(o);
}

TEST(merge_tokenizer_source_and_chat_template)
{
    const char *dir = test_tmpdir();
    char tokdir[600], path[900], out[600], cmd[1600], *log = NULL;
    /* a tokenizer source with one more added token: the output's tokenizer is built from it (mergekit §6) */
    snprintf(tokdir, sizeof tokdir, "%s/tok", dir);
    snprintf(cmd, sizeof cmd, "cp -r " M("prose") " %s && sed -i 's/\"added_tokens\": \\[/\"added_tokens\": [{\"id\": "
             "260, \"content\": \"<marker>\", \"special\": true},/' %s/tokenizer.json", tokdir, tokdir);
    CHECK_INT(system(cmd), 0);
    char yaml[1200];
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nmodels:\n  - model: " M("code") "\n"
             "tokenizer_source: model:%s\nchat_template: chatml\n", tokdir);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK_MSG(merge(yaml, out, NULL, &log) == 0, "%s", log);
    free(log);
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    char *tok = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(tok, "<marker>");
    free(tok);
    snprintf(path, sizeof path, "%s/config.json", out);
    char *config = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(config, "\"vocab_size\": 261");
    free(config);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
    char *tc = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(tc, "<|im_start|>");
    free(tc);
    /* --no-copy-tokenizer writes no tokenizer files */
    snprintf(yaml, sizeof yaml, "merge_method: passthrough\nmodels:\n  - model: " M("code") "\n");
    CHECK_MSG(merge(yaml, out, "--no-copy-tokenizer --no-write-model-card", &log) == 0, "%s", log);
    free(log);
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "%s/README.md", out);
    CHECK(access(path, F_OK) != 0);
}

TEST(merge_mergekit_yaml_alias)
{
    const char *dir = test_tmpdir();
    char link[600], cmd[1600], real[4096], *log = NULL;
    if (!realpath(test_alloy_bin(), real)) { CHECK(0); return; }
    snprintf(link, sizeof link, "%s/mergekit-yaml", dir);
    CHECK_INT(symlink(real, link), 0);
    snprintf(cmd, sizeof cmd, "%s examples/linear.yml %s/out --lazy-unpickle --cuda --copy-tokenizer --allow-crimes "
             "--out-shard-size 5B -j 2", link, dir);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "%s", log);
    CHECK_STR_CONTAINS(log, "--lazy-unpickle has no effect");
    free(log);
    snprintf(cmd, sizeof cmd, "%s/out/model.safetensors", dir);
    CHECK(access(cmd, F_OK) == 0);
}

TEST(merge_chat_template_auto_majority)
{
    const char *dir = test_tmpdir();
    char cmd[2400], path[900], out[600], yaml[1600], *log = NULL;
    const char *tpl[3] = {"{{ 'B' }}{% for m in messages %}{{ m }}{% endfor %}",
                          "{{ 'A' }}{% for m in messages %}{{ m }}{% endfor %}",
                          "{{ 'A' }}{% for m in messages %}{{ m }}{% endfor %}"};
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "cp -r " M("code") " %s/m%d", dir, i);
        CHECK_INT(system(cmd), 0);
        snprintf(path, sizeof path, "%s/m%d/tokenizer_config.json", dir, i);
        char body[300];
        snprintf(body, sizeof body, "{\"chat_template\": \"%s\"}", tpl[i]);
        test_write_text(path, body);
    }
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s/m0\n    parameters: {weight: 1}\n"
             "  - model: %s/m1\n    parameters: {weight: 1}\n  - model: %s/m2\n    parameters: {weight: 1}\n"
             "chat_template: auto\n", dir, dir, dir);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK_MSG(merge(yaml, out, NULL, &log) == 0, "%s", log);
    free(log);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
    char *tc = test_read_file(path, NULL);
    CHECK_STR_CONTAINS(tc, "{{ 'A' }}"); /* two of three models agree */
    free(tc);
}

/* Non-finite outputs are counted once each and reported per tensor, also where a 2 MiB staging
 * segment of the writer (writer.h) cuts a float32 element in two: tensor "a" (3 bf16 values, 6 bytes)
 * puts "b" at an offset of 2 mod 4, and b's 10,000 Inf/NaN values cover file offset 2 MiB. */
TEST(merge_reports_nonfinite_outputs_once)
{
    const char *dir = test_tmpdir();
    enum { NB = 1 << 20, LO = 520000, HI = 530000 };
    float *b1 = malloc(NB * sizeof *b1), *b2 = malloc(NB * sizeof *b2);
    for (int i = 0; i < NB; i++) {
        b1[i] = (float)(i % 97) * 0.25f;
        b2[i] = (float)(i % 89) * 0.5f;
        if (i >= LO && i < HI) b1[i] = i % 2 ? INFINITY : NAN;
    }
    uint16_t a[3] = {0x3f80, 0x4000, 0x4040}; /* 1, 2, 3 */
    char m1[512], m2[512], f[600], out[512], cfg[600], cmd[2048], *log = NULL;
    snprintf(m1, sizeof m1, "%s/m1", dir);
    snprintf(m2, sizeof m2, "%s/m2", dir);
    for (int k = 0; k < 2; k++) {
        const char *m = k ? m2 : m1;
        mkdir(m, 0755);
        struct test_tensor t[2] = {{"a", "BF16", 1, {3}, a}, {"b", "F32", 1, {NB}, k ? b2 : b1}};
        snprintf(f, sizeof f, "%s/model.safetensors", m);
        CHECK(test_write_safetensors(f, t, 2) == 0);
        snprintf(f, sizeof f, "%s/config.json", m);
        CHECK(test_write_text(f, "{\"model_type\": \"test\"}\n") == 0);
    }
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(cfg, sizeof cfg, "%s/config.yml", dir);
    char yaml[1600];
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 0.5}\n"
             "  - model: %s\n    parameters: {weight: 0.5}\n", m1, m2);
    test_write_text(cfg, yaml);
    snprintf(cmd, sizeof cmd, "%s merge %s %s 2>&1", test_alloy_bin(), cfg, out);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "merge failed (%d): %s", rc, log);
    CHECK_MSG(log && strstr(log, "tensor 'b': 10000 of 1048576 output values are NaN or Inf"),
              "expected the count of b's non-finite outputs: %s", log ? log : "");
    CHECK_MSG(log && !strstr(log, "tensor 'a'"), "a has no non-finite output: %s", log ? log : "");
    free(log);
    struct alloy_model *o = open_model(out);
    const struct alloy_tensor *tb = o ? alloy_model_find(o, "b") : NULL;
    CHECK_MSG(tb && tb->dtype == ALLOY_DTYPE_F32, "b: %s dtype %d", tb ? "found" : "missing", tb ? (int)tb->dtype : -1);
    size_t bad = 0;
    for (int i = 0; tb && i < NB; i++) {
        float v;
        memcpy(&v, tb->data + 4 * (size_t)i, 4);
        float want = (i >= LO && i < HI) ? v : 0.5f * b1[i] + 0.5f * b2[i];
        bad += (i >= LO && i < HI) ? isfinite(v) : fabsf(v - want) > 1e-6f * (fabsf(want) + 1);
    }
    CHECK_MSG(bad == 0, "%zu values of b wrong", bad);
    alloy_model_close(o);
    free(b1);
    free(b2);
}

/* A base that ties its embeddings (no lm_head.weight) and fine-tunes with their own heads: the head is
 * merged with the base's embedding matrix standing in for the base's head (mergekit's tied_names). */
static void write_head_model(const char *dir, int with_head, float e0, float h0)
{
    static float emb[6 * 4], head[6 * 4], w[4 * 4];
    for (int i = 0; i < 24; i++) emb[i] = e0 + 0.25f * (float)i, head[i] = h0 - 0.5f * (float)i;
    for (int i = 0; i < 16; i++) w[i] = e0 + (float)i;
    struct test_tensor t[3] = {
        {"model.embed_tokens.weight", "F32", 2, {6, 4}, emb},
        {"model.layers.0.mlp.up_proj.weight", "F32", 2, {4, 4}, w},
        {"lm_head.weight", "F32", 2, {6, 4}, head},
    };
    CHECK_INT(test_write_model(dir, t, with_head ? 3 : 2, "{\"num_hidden_layers\": 1, \"tie_word_embeddings\": true}"), 0);
}

TEST(merge_untied_heads_on_tied_base)
{
    const char *dir = test_tmpdir();
    char base[600], ft1[600], ft2[600], out[600], yaml[2400], *log = NULL;
    snprintf(base, sizeof base, "%s/base", dir);
    snprintf(ft1, sizeof ft1, "%s/ft1", dir);
    snprintf(ft2, sizeof ft2, "%s/ft2", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    write_head_model(base, 0, 1.0f, 0.0f);
    write_head_model(ft1, 1, 1.5f, 3.0f);
    write_head_model(ft2, 1, 0.5f, -2.0f);
    snprintf(yaml, sizeof yaml, "merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
             "  - model: %s\n    parameters: {weight: 0.5}\n  - model: %s\n    parameters: {weight: 1.0}\n"
             "dtype: float32\n", base, ft1, ft2);
    const char *d = test_tmpdir();
    char cfg[700], cmd[2400];
    snprintf(cfg, sizeof cfg, "%s/tied.yml", d);
    test_write_text(cfg, yaml);
    snprintf(cmd, sizeof cmd, "%s merge %s %s", test_alloy_bin(), cfg, out);
    int rc = test_run(cmd, &log);
    CHECK_MSG(rc == 0, "merge failed (%d): %s", rc, log);
    CHECK_STR_CONTAINS(log ? log : "", "ties its embeddings");
    free(log);
    struct alloy_model *o = rc == 0 ? open_model(out) : NULL;
    const struct alloy_tensor *h = o ? alloy_model_find(o, "lm_head.weight") : NULL;
    CHECK_MSG(h != NULL, "no lm_head.weight in the merged model");
    if (h) {
        CHECK_INT(h->dtype, ALLOY_DTYPE_F32);
        CHECK_INT(h->numel, 24);
        for (int i = 0; i < 24 && h->numel == 24; i++) {
            double eb = 1.0 + 0.25 * i, h1 = 3.0 - 0.5 * i, h2 = -2.0 - 0.5 * i; /* the base's head is its embedding */
            float got;
            memcpy(&got, h->data + 4 * (size_t)i, 4);
            CHECK_NEAR(got, eb + 0.5 * (h1 - eb) + 1.0 * (h2 - eb), 1e-6);
        }
    }
    alloy_model_close(o);
}

/* A tensor whose every output value is NaN or Inf is an error (exit 1, nothing published), not a warning. */
TEST(merge_all_nonfinite_output_is_an_error)
{
    const char *dir = test_tmpdir();
    char a[600], b[600], out[600], yaml[1600], *log = NULL;
    static float ok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bad[8];
    for (int i = 0; i < 8; i++) bad[i] = i % 2 ? INFINITY : NAN;
    struct test_tensor ta[2] = {{"model.norm.weight", "F32", 1, {8}, ok}, {"model.layers.0.w", "F32", 1, {8}, bad}};
    struct test_tensor tb[2] = {{"model.norm.weight", "F32", 1, {8}, ok}, {"model.layers.0.w", "F32", 1, {8}, ok}};
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK_INT(test_write_model(a, ta, 2, "{\"num_hidden_layers\": 1}"), 0);
    CHECK_INT(test_write_model(b, tb, 2, "{\"num_hidden_layers\": 1}"), 0);
    snprintf(yaml, sizeof yaml, "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
             "  - model: %s\n    parameters: {weight: 1}\ndtype: float32\n", a, b);
    int rc = merge(yaml, out, NULL, &log);
    CHECK_INT(rc, 1);
    CHECK_STR_CONTAINS(log ? log : "", "tensor 'model.layers.0.w': every one of its 8 output values is NaN or Inf");
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(test_leftovers(dir), 0);
    free(log);
}

/* The model card is sized from what goes in: forty models with 200-character names (beyond the card's old
 * fixed room) merge, and the card lists them all, instead of failing after the work. */
TEST(merge_card_never_fails_on_long_names)
{
    const char *dir = test_tmpdir();
    char target[1024], out[700], *yaml = malloc(40 * 800 + 200), *log = NULL;
    if (!realpath(M("code"), target)) test_fail(__FILE__, __LINE__, "realpath");
    size_t n = (size_t)sprintf(yaml, "merge_method: linear\nmodels:\n");
    char pad[191];
    memset(pad, 'x', 190);
    pad[190] = '\0';
    for (int i = 0; i < 40; i++) {
        char link[900];
        snprintf(link, sizeof link, "%s/m%02d_%s", dir, i, pad);
        CHECK_INT(symlink(target, link), 0);
        n += (size_t)sprintf(yaml + n, "  - model: %s\n    parameters: {weight: 1}\n", link);
    }
    snprintf(out, sizeof out, "%s/out", dir);
    int rc = merge(yaml, out, NULL, &log);
    CHECK_MSG(rc == 0, "merge failed (%d): %s", rc, log ? log : "");
    char card[800];
    snprintf(card, sizeof card, "%s/README.md", out);
    char *text = test_read_file(card, NULL);
    CHECK(text && strstr(text, "m39_xxxx") && strstr(text, "```\n"));
    free(text);
    free(log);
    free(yaml);
}
