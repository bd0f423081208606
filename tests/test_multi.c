/*
 * test_multi.c — multi-stage merges (mergekit-multi configs): a two-stage
 * and a three-stage recipe on the bundled tiny-llama models give the bits of
 * the same merges run one at a time (each stage a separate alloy_merge into
 * a folder, the next one naming that folder), with intermediates in memory
 * or in --intermediate-dir; dependency order whatever the document order;
 * cycles, unknown and duplicate names, a second unnamed document; --lazy
 * reuse (the folder's files are not rewritten: same inode) and what undoes
 * it; a failing middle stage leaves no output and no partial intermediate;
 * the memory budget; --dry-run; the document splitter's line numbers; the
 * mergekit-multi command.
 */
#include "test.h"
#include "alloy.h"
#include "config/config.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define M(name) "tests/data/tiny-llama/" name

/* ------------------------------------------------------------ recipes (%s: a stage's reference) */

static const char k_mid[] = "merge_method: linear\nmodels:\n"
                            "  - model: " M("code") "\n    parameters: {weight: 0.5}\n"
                            "  - model: " M("prose") "\n    parameters: {weight: 0.5}\ndtype: bfloat16\n";
static const char k_top[] = "merge_method: slerp\nbase_model: " M("base") "\nmodels:\n"
                            "  - model: " M("base") "\n  - model: %s\nparameters: {t: 0.3}\ndtype: bfloat16\n";
static const char k_soup[] = "merge_method: ties\nbase_model: " M("base") "\nmodels:\n"
                             "  - model: " M("code") "\n    parameters: {weight: 1.0, density: 0.5}\n"
                             "  - model: " M("prose") "\n    parameters: {weight: 1.0, density: 0.7}\n"
                             "dtype: bfloat16\n";
static const char k_tv[] = "merge_method: task_arithmetic\nbase_model: " M("base") "\nmodels:\n"
                           "  - model: %s\n    parameters: {weight: 0.7}\n"
                           "  - model: " M("code") "\n    parameters: {weight: 0.5}\ndtype: bfloat16\n";
static const char k_final3[] = "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 0.6}\n"
                               "  - model: %s\n    parameters: {weight: 0.4}\ndtype: float32\n";

struct logbuf { char text[8192]; size_t len; };

static void capture(void *user, int level, const char *msg)
{
    struct logbuf *b = user;
    (void)level;
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "%s\n", msg);
    if (n > 0 && b->len + (size_t)n < sizeof b->text) b->len += (size_t)n;
}

static int merge(const char *text, const char *out, const char *inter, struct alloy_merge_options *extra,
                 struct alloy_err *err, struct logbuf *log)
{
    struct alloy_merge_options o;
    if (extra) o = *extra;
    else alloy_merge_options_init(&o);
    o.config_text = text;
    o.config_path = "multi.yml";
    o.out_dir = out;
    o.intermediate_dir = inter;
    o.threads = 2;
    if (log) o.log = capture, o.log_user = log;
    memset(err, 0, sizeof *err);
    return alloy_merge(&o, err);
}

/* 1 when the two files have the same bytes. */
static int same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = test_read_file(a, &la), *y = test_read_file(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void check_same_output(const char *a, const char *b)
{
    char fa[700], fb[700];
    static const char *const files[] = {"model.safetensors", "config.json", "tokenizer.json"};
    for (int k = 0; k < 3; k++) {
        snprintf(fa, sizeof fa, "%s/%s", a, files[k]);
        snprintf(fb, sizeof fb, "%s/%s", b, files[k]);
        CHECK_MSG(same_file(fa, fb), "%s differs from %s", fa, fb);
    }
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ------------------------------------------------------------ results equal the stages run one at a time */

TEST(multi_two_stage_equals_one_at_a_time)
{
    const char *d = test_tmpdir();
    char s1[600], s2[600], cfg2[1200], multi[2400], out[600], out_dir[600], inter[600], im[700];
    struct alloy_err err;
    snprintf(s1, sizeof s1, "%s/s1", d);
    snprintf(s2, sizeof s2, "%s/s2", d);
    CHECK_MSG(merge(k_mid, s1, NULL, NULL, &err, NULL) == 0, "%s", err.msg);
    snprintf(cfg2, sizeof cfg2, k_top, s1);
    CHECK_MSG(merge(cfg2, s2, NULL, NULL, &err, NULL) == 0, "%s", err.msg);

    char top[600];
    snprintf(top, sizeof top, k_top, "mid");
    snprintf(multi, sizeof multi, "name: mid\n%s---\n%s", k_mid, top);
    snprintf(out, sizeof out, "%s/mem", d);
    CHECK_MSG(merge(multi, out, NULL, NULL, &err, NULL) == 0, "in memory: %s", err.msg);
    check_same_output(s2, out);
    snprintf(out_dir, sizeof out_dir, "%s/disk", d);
    snprintf(inter, sizeof inter, "%s/inter", d);
    CHECK_MSG(merge(multi, out_dir, inter, NULL, &err, NULL) == 0, "on disk: %s", err.msg);
    check_same_output(s2, out_dir);
    snprintf(im, sizeof im, "%s/mid", inter);
    check_same_output(s1, im);
    /* the intermediate records its own document, not the file's */
    snprintf(im, sizeof im, "%s/mid/mergekit_config.yml", inter);
    char *rec = test_read_file(im, NULL);
    CHECK_MSG(rec && !strncmp(rec, "name: mid\n", 10) && !strstr(rec, "slerp"), "recorded: %s", rec ? rec : "(none)");
    free(rec);
}

/* The final document first, a stage used twice (diamond): the order comes from the references. */
static void three_stage_text(char *buf, size_t size)
{
    char fin[800], tv[800];
    snprintf(fin, sizeof fin, k_final3, "tv", "soup");
    snprintf(tv, sizeof tv, k_tv, "soup");
    snprintf(buf, size, "%s---\nname: tv\n%s---\nname: soup\n%s", fin, tv, k_soup);
}

TEST(multi_three_stage_equals_one_at_a_time)
{
    const char *d = test_tmpdir();
    char soup[600], tv[600], fin[600], cfg[1600], multi[4000], out[600], inter[600], im[700];
    struct alloy_err err;
    snprintf(soup, sizeof soup, "%s/soup1", d);
    snprintf(tv, sizeof tv, "%s/tv1", d);
    snprintf(fin, sizeof fin, "%s/final1", d);
    CHECK_MSG(merge(k_soup, soup, NULL, NULL, &err, NULL) == 0, "%s", err.msg);
    snprintf(cfg, sizeof cfg, k_tv, soup);
    CHECK_MSG(merge(cfg, tv, NULL, NULL, &err, NULL) == 0, "%s", err.msg);
    snprintf(cfg, sizeof cfg, k_final3, tv, soup);
    CHECK_MSG(merge(cfg, fin, NULL, NULL, &err, NULL) == 0, "%s", err.msg);

    three_stage_text(multi, sizeof multi);
    struct logbuf log = {0};
    snprintf(out, sizeof out, "%s/mem", d);
    CHECK_MSG(merge(multi, out, NULL, NULL, &err, &log) == 0, "in memory: %s", err.msg);
    check_same_output(fin, out);
    char card[700];
    snprintf(card, sizeof card, "%s/README.md", out);
    char *text = test_read_file(card, NULL); /* in-memory intermediates are named, not linked as Hub repos */
    CHECK_STR_CONTAINS(text, "\n* tv\n* soup\n");
    CHECK(text && !strstr(text, "huggingface.co/tv") && !strstr(text, "base_model:\n- tv"));
    free(text);
    CHECK_STR_CONTAINS(log.text, "stage 1/3: merging soup into memory\n");
    CHECK_STR_CONTAINS(log.text, "stage 2/3: merging tv into memory\n");
    CHECK_STR_CONTAINS(log.text, "stage 3/3: the final merge");
    snprintf(out, sizeof out, "%s/disk", d);
    snprintf(inter, sizeof inter, "%s/inter", d);
    CHECK_MSG(merge(multi, out, inter, NULL, &err, NULL) == 0, "on disk: %s", err.msg);
    check_same_output(fin, out);
    snprintf(im, sizeof im, "%s/tv", inter);
    check_same_output(tv, im);

    /* the final merge held in memory by the caller: the same tensors */
    struct alloy_model *m = NULL, *ref = NULL;
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.out_model = &m;
    CHECK_MSG(merge(multi, NULL, NULL, &o, &err, NULL) == 0, "%s", err.msg);
    CHECK(alloy_model_open(fin, &ref, &err) == 0);
    CHECK(m && ref && alloy_model_count(m) == alloy_model_count(ref));
    for (size_t i = 0; m && ref && i < alloy_model_count(ref); i++) {
        const struct alloy_tensor *a = alloy_model_tensor(ref, i), *b = alloy_model_find(m, a->name);
        CHECK_MSG(b && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes), "%s differs", a->name);
    }
    alloy_model_close(m);
    alloy_model_close(ref);
}

/* ------------------------------------------------------------ errors */

static void check_error(const char *text, const char *inter, const char *want)
{
    char out[600];
    struct alloy_err err;
    snprintf(out, sizeof out, "%s/never", test_tmpdir());
    CHECK_MSG(merge(text, out, inter, NULL, &err, NULL) != 0, "accepted: %s", text);
    CHECK_STR_CONTAINS(err.msg, want);
    CHECK_MSG(!strchr(err.msg, '\n'), "two lines: %s", err.msg);
    CHECK(!exists(out));
}

TEST(multi_config_errors)
{
    char t[4000], a[800], b[800];
    snprintf(a, sizeof a, k_tv, "b");
    snprintf(b, sizeof b, k_tv, "a");
    snprintf(t, sizeof t, "name: a\n%s---\nname: b\n%s---\n%s", a, b, k_mid);
    check_error(t, NULL, "multi.yml:1:7: name: 'a': expected merges that do not use their own results, found the "
                         "cycle 'a' -> 'b' -> 'a'");
    snprintf(t, sizeof t, "name: a\n%s---\n%s", b, k_mid); /* a uses itself */
    check_error(t, NULL, "found the cycle 'a' -> 'a'");
    snprintf(a, sizeof a, k_top, "mdi");
    snprintf(t, sizeof t, "name: mid\n%s---\n%s", k_mid, a);
    check_error(t, NULL, "multi.yml:14:5: model: 'mdi': expected the name of a document (mid) or a model folder, "
                         "found neither");
    snprintf(t, sizeof t, "name: mid\n%s---\nname: mid\n%s", k_mid, k_mid);
    check_error(t, test_tmpdir(), "multi.yml:10:7: name: 'mid' names one document, found a second one (the first is "
                                  "at line 1)");
    snprintf(t, sizeof t, "%s---\n%s", k_mid, k_mid);
    check_error(t, NULL, "multi.yml:9:15: name: one unnamed document (the final merge) expected, found a second one");
    snprintf(t, sizeof t, "name: ../up\n%s---\n%s", k_mid, k_mid);
    check_error(t, test_tmpdir(), "name: expected a folder name");
    snprintf(t, sizeof t, "name: \"a\\e[2J\"\n%s---\n%s", k_mid, k_mid); /* a terminal escape */
    check_error(t, test_tmpdir(), "name: expected a folder name");
    snprintf(t, sizeof t, "name: lone\n%s---\n%s", k_mid, k_mid);
    check_error(t, NULL, "name: 'lone' is used by no other document: expected an intermediate folder");
    snprintf(a, sizeof a, k_top, "mid");
    snprintf(t, sizeof t, "name: mid\n%s---\nname: top\n%s", k_mid, a);
    check_error(t, test_tmpdir(), "every document is named: expected one unnamed document");
    /* an error inside a later document points at its line in the whole file */
    snprintf(t, sizeof t, "name: mid\n%s---\n%sbogus: 1\n", k_mid, a);
    check_error(t, NULL, "multi.yml:17:1: unknown key 'bogus'");
}

TEST(multi_documents_split)
{
    static const char text[] = "# recipe\nname: x\nmerge_method: linear\nmodels: [{model: a/b}]\n"
                               "---\nmerge_method: linear\nmodels: [{model: x}]\n...\n--- \n"
                               "name: y\nmerge_method: linear\nmodels: [{model: c/d}]\n";
    struct alloy_config **c = NULL;
    size_t n = 0;
    struct alloy_err err = {0};
    CHECK_MSG(alloy_config_parse_docs(text, strlen(text), "t.yml", &c, &n, &err) == 0, "%s", err.msg);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK(c[0]->name && !strcmp(c[0]->name, "x") && !c[1]->name && c[2]->name && !strcmp(c[2]->name, "y"));
        CHECK(!strcmp(c[0]->text, "# recipe\nname: x\nmerge_method: linear\nmodels: [{model: a/b}]\n"));
        CHECK(!strcmp(c[1]->text, "---\nmerge_method: linear\nmodels: [{model: x}]\n...\n"));
        CHECK_INT(c[2]->name_pos.line, 10);
        CHECK_INT(c[1]->merge_method_pos.line, 6);
    }
    alloy_config_free_docs(c, n);
    CHECK(alloy_config_parse_docs("a: [\n---\n", 9, "t.yml", &c, &n, &err) != 0 && !c && !n);
    CHECK_STR_CONTAINS(err.msg, "t.yml:");
}

/* ------------------------------------------------------------ lazy reuse */

static void stat_of(const char *dir, const char *name, struct stat *sb)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s/model.safetensors", dir, name);
    memset(sb, 0, sizeof *sb);
    CHECK_MSG(stat(p, sb) == 0, "no %s", p);
}

TEST(multi_lazy_reuse)
{
    const char *d = test_tmpdir();
    char multi[4000], out[600], inter[600];
    struct alloy_err err;
    struct stat soup0, tv0, soup1, tv1;
    three_stage_text(multi, sizeof multi);
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(inter, sizeof inter, "%s/inter", d);
    struct logbuf log = {0};
    CHECK_MSG(merge(multi, out, inter, NULL, &err, &log) == 0, "%s", err.msg);
    CHECK_INT(test_count_lines(log.text, "") - 3, 0); /* three stage notes, nothing reused */
    stat_of(inter, "soup", &soup0);
    stat_of(inter, "tv", &tv0);
    memset(&log, 0, sizeof log);
    CHECK_MSG(merge(multi, out, inter, NULL, &err, &log) == 0, "%s", err.msg);
    CHECK_STR_CONTAINS(log.text, "stage 1/3: ");
    CHECK_STR_CONTAINS(log.text, "/inter/soup: finished with the same config, reused");
    CHECK_STR_CONTAINS(log.text, "/inter/tv: finished with the same config, reused");
    CHECK_INT(test_count_lines(log.text, "stage "), 3);
    stat_of(inter, "soup", &soup1);
    stat_of(inter, "tv", &tv1);
    CHECK(soup0.st_ino == soup1.st_ino && tv0.st_ino == tv1.st_ino);

    /* --no-lazy merges both again */
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.lazy = 0;
    memset(&log, 0, sizeof log);
    CHECK_MSG(merge(multi, out, inter, &o, &err, &log) == 0, "%s", err.msg);
    CHECK(!strstr(log.text, "reused"));
    stat_of(inter, "soup", &soup0);
    stat_of(inter, "tv", &tv0);
    CHECK(soup0.st_ino != soup1.st_ino && tv0.st_ino != tv1.st_ino);

    /* a changed document is merged again, and so is what uses it (tv's own text did not change) */
    char *at = strstr(multi, "density: 0.7");
    CHECK(at != NULL);
    if (at) at[11] = '6';
    memset(&log, 0, sizeof log);
    CHECK_MSG(merge(multi, out, inter, NULL, &err, &log) == 0, "%s", err.msg);
    CHECK(!strstr(log.text, "reused"));
    stat_of(inter, "soup", &soup1);
    stat_of(inter, "tv", &tv1);
    CHECK(soup0.st_ino != soup1.st_ino && tv0.st_ino != tv1.st_ino);
}

/* ------------------------------------------------------------ failures */

struct stopper { volatile int flag; int starts; };

static void stop_in_stage_two(void *user, const struct alloy_progress *p)
{
    struct stopper *s = user;
    if (p->tensors_done == 0) s->starts++;
    if (s->starts == 2 && p->tensors_done == 5) s->flag = 1;
}

TEST(multi_failed_middle_stage)
{
    const char *d = test_tmpdir();
    char multi[4000], out[600], inter[600], p[700];
    struct alloy_err err;
    three_stage_text(multi, sizeof multi);
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(inter, sizeof inter, "%s/inter", d);
    struct stopper s = {0};
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.progress = stop_in_stage_two;
    o.progress_user = &s;
    o.interrupt = &s.flag;
    CHECK_INT(merge(multi, out, inter, &o, &err, NULL), ALLOY_ERR_INTERRUPTED);
    CHECK(!exists(out));
    snprintf(p, sizeof p, "%s/tv", inter);
    CHECK(!exists(p));
    CHECK_INT(test_leftovers(inter), 0);
    CHECK_INT(test_leftovers(d), 0);
    snprintf(p, sizeof p, "%s/soup/model.safetensors", inter);
    CHECK(exists(p)); /* finished before the failure: complete, and reusable */

    /* a middle stage that cannot be planned: nothing after it starts */
    char bad[800], text[4000];
    snprintf(bad, sizeof bad, k_tv, "soup");
    char *c = strstr(bad, M("code"));
    if (c) memcpy(c, "tests/data/no-such", 18);
    char fin[800];
    snprintf(fin, sizeof fin, k_final3, "tv", "soup");
    snprintf(text, sizeof text, "%s---\nname: tv\n%s---\nname: soup\n%s", fin, bad, k_soup);
    CHECK(merge(text, out, NULL, NULL, &err, NULL) != 0);
    CHECK_STR_CONTAINS(err.msg, "no-such");
    CHECK(!exists(out));
}

TEST(multi_memory_budget_and_dry_run)
{
    const char *d = test_tmpdir();
    char multi[4000], out[600], inter[600];
    struct alloy_err err;
    three_stage_text(multi, sizeof multi);
    snprintf(out, sizeof out, "%s/out", d);
    snprintf(inter, sizeof inter, "%s/inter", d);
    struct alloy_merge_options o;
    alloy_merge_options_init(&o);
    o.memory_budget = 2000000; /* soup fits (1585408 tensor bytes), soup + tv do not */
    CHECK(merge(multi, out, NULL, &o, &err, NULL) == ALLOY_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(err.msg, "multi.yml: name: 'tv': an intermediate kept in memory must fit the 414592 bytes left "
                                "of the memory budget, it takes 1585408 bytes (give --intermediate-dir DIR");
    CHECK(!exists(out));
    o.memory_budget = 2 * 1585408;
    CHECK_MSG(merge(multi, out, NULL, &o, &err, NULL) == 0, "%s", err.msg);

    char *plan = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&plan, &len);
    alloy_merge_options_init(&o);
    o.dry_run = 1;
    o.plan_out = f;
    snprintf(out, sizeof out, "%s/dry", d);
    CHECK_MSG(merge(multi, out, NULL, &o, &err, NULL) == 0, "%s", err.msg);
    o.plan_out = f;
    CHECK_MSG(merge(multi, out, inter, &o, &err, NULL) == 0, "%s", err.msg);
    fclose(f);
    CHECK_STR_CONTAINS(plan, "# stage 1/3: 'soup'\n# -> kept in memory\n# alloy merge plan: ties, 39 tensors");
    CHECK_STR_CONTAINS(plan, "# 'tv' held in memory: 1585408 bytes (3170816 of the ");
    CHECK_STR_CONTAINS(plan, "# stage 3/3: the final merge\n# -> ");
    CHECK_STR_CONTAINS(plan, "/inter/tv\n# alloy merge plan: task_arithmetic");
    CHECK(!exists(out) && !exists(inter));
    free(plan);
}

/* ------------------------------------------------------------ the commands */

TEST(multi_cli)
{
    const char *d = test_tmpdir();
    char cfg[600], bin[600], cmd[3000], multi[4000], top[600];
    char *out = NULL;
    snprintf(top, sizeof top, k_top, "mid");
    snprintf(multi, sizeof multi, "name: mid\n%s---\n%s", k_mid, top);
    snprintf(cfg, sizeof cfg, "%s/two.yml", d);
    CHECK(test_write_text(cfg, multi) == 0);
    char *abs = realpath(test_alloy_bin(), NULL);
    snprintf(bin, sizeof bin, "%s/mergekit-multi", d);
    CHECK(abs && symlink(abs, bin) == 0);
    free(abs);
    snprintf(cmd, sizeof cmd, "%s %s -I %s/I --out-path %s/o1 -q -j 2 2>&1 && %s merge %s %s/o2 -q -j 2 2>&1 && "
             "cmp %s/o1/model.safetensors %s/o2/model.safetensors && test -f %s/I/mid/model.safetensors && "
             "test ! -e %s/o2/mid", bin, cfg, d, d, test_alloy_bin(), cfg, d, d, d, d, d);
    CHECK_MSG(test_run(cmd, &out) == 0, "%s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s %s --out-path %s/o3 2>&1", bin, cfg, d);
    CHECK_INT(test_run(cmd, &out), 2);
    CHECK_STR_CONTAINS(out, "alloy: error: mergekit-multi: expected --intermediate-dir DIR");
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge %s --dry-run -q", test_alloy_bin(), cfg);
    CHECK_INT(test_run(cmd, &out), 0);
    CHECK_STR_CONTAINS(out, "# stage 2/2: the final merge\n# -> none\n# alloy merge plan: slerp");
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge %s %s/o4 --memory-budget 1M 2>&1", test_alloy_bin(), cfg, d);
    CHECK_INT(test_run(cmd, &out), 1);
    CHECK_STR_CONTAINS(out, "alloy: error: ");
    CHECK_STR_CONTAINS(out, "give --intermediate-dir DIR");
    free(out);
}
