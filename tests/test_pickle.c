/*
 * test_pickle.c — PyTorch .bin checkpoints: torch.save zips read by a pickle
 * interpreter that executes nothing.
 *
 * Files come from the tests' own torch.save (torch_writer.c, byte layout and
 * sources there). The bundled tiny-llama models saved as .bin (single file
 * and sharded with an index) must give the same tensors, the same merge
 * output byte for byte and the same eval losses as their safetensors
 * originals. Hostile files — pickles naming os.system or builtins.eval,
 * compressed entries and zip bombs, views past their storage, truncated and
 * corrupt zips, deep nesting, huge memo indexes, non-contiguous strides —
 * are each refused with one line.
 */
#include "test.h"
#include "alloy.h"
#include "formats/formats.h"
#include "torch_writer.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#define FIX(name) "tests/data/tiny-llama/" name

/* A model folder dir with the fixture's config and tokenizer and its weights as .bin (shards files). */
static int make_bin_model(const char *fixture, const char *dir, int shards)
{
    char cmd[3 * PATH_MAX], src[PATH_MAX];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp " FIX("%s") "/*.json '%s/'", dir, fixture, dir);
    if (system(cmd) != 0) return -1;
    snprintf(src, sizeof src, FIX("%s") "/model.safetensors", fixture);
    return tw_convert(src, dir, shards);
}

static int open_mem(const struct tw_buf *b, struct alloy_tensor_file **f, struct alloy_err *err)
{
    *f = NULL;
    return alloy_pt_open_memory(b->p, b->n, "mem.bin", f, err);
}

/* b must be refused with one line that names the file and contains needle. */
#define REFUSED(b, needle) refused(__LINE__, b, needle)
static void refused(int line, const struct tw_buf *b, const char *needle)
{
    struct alloy_tensor_file *f;
    struct alloy_err err = {0};
    int rc = open_mem(b, &f, &err);
    if (rc == ALLOY_OK) {
        test_fail(__FILE__, line, "accepted, expected a refusal containing \"%s\"", needle);
        alloy_tensor_file_close(f);
        return;
    }
    if (!strstr(err.msg, needle)) test_fail(__FILE__, line, "\"%s\" does not contain \"%s\"", err.msg, needle);
    if (strncmp(err.msg, "mem.bin: ", 9) != 0 || strchr(err.msg, '\n'))
        test_fail(__FILE__, line, "expected one line naming the file, got \"%s\"", err.msg);
}

/* A torch.save zip around a given pickle (and storage "0" = data, when given). */
static struct tw_buf zip_pickle(const struct tw_buf *pk, const void *data, size_t nbytes)
{
    struct tw_zip *z = calloc(1, sizeof *z);
    if (!z) abort();
    tw_zip_add(z, "archive/data.pkl", pk->p, pk->n);
    if (data) tw_zip_add(z, "archive/data/0", data, nbytes);
    tw_zip_add(z, "archive/version", "3\n", 2);
    tw_zip_finish(z, 0);
    struct tw_buf out = z->b;
    free(z);
    return out;
}

static const float k_vals[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 -1, -2, -3, -4, -5, -6, -7, -8, 0.5f, 0.25f, 0.125f, 8, 16, 32, 64, 128};

static struct tw_tensor f32(const char *name, uint64_t numel, uint64_t offset, int ndim, const int64_t *shape,
                            const int64_t *stride, size_t nbytes)
{
    struct tw_tensor t = {.name = name, .type = "FloatStorage", .key = "0", .numel = numel, .offset = offset,
                          .ndim = ndim, .data = k_vals, .nbytes = nbytes};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(t.stride, stride, (size_t)ndim * sizeof *stride);
    return t;
}

/* ------------------------------------------------------------ the bundled models as .bin */

TEST(pickle_bin_tensors_match_safetensors)
{
    const char *dir = test_tmpdir();
    char path[PATH_MAX];
    CHECK_INT(make_bin_model("base", dir, 1), 0);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    struct alloy_tensor_file *bin = NULL, *st = NULL;
    struct alloy_err err = {0};
    CHECK_INT(alloy_tensor_file_open(path, &bin, &err), ALLOY_OK);
    CHECK_INT(alloy_tensor_file_open(FIX("base/model.safetensors"), &st, &err), ALLOY_OK);
    if (!bin || !st) return;
    CHECK_STR_CONTAINS(alloy_tensor_file_format(bin), "pytorch");
    CHECK_INT(alloy_tensor_file_count(bin), alloy_tensor_file_count(st));
    CHECK_INT(alloy_tensor_file_count(bin), 39);
    for (size_t i = 0; i < alloy_tensor_file_count(st); i++) {
        const struct alloy_tensor *a = alloy_tensor_file_tensor(st, i), *b = alloy_tensor_file_find(bin, a->name);
        CHECK_MSG(b != NULL, "%s missing from the .bin", a->name);
        if (!b) continue;
        CHECK_INT(b->dtype, a->dtype);
        CHECK_INT(b->ndim, a->ndim);
        CHECK_INT(b->shape[0], a->shape[0]);
        CHECK_INT(b->shape[a->ndim - 1], a->shape[a->ndim - 1]);
        CHECK_INT(b->nbytes, a->nbytes);
        CHECK_MSG(memcmp(a->data, b->data, a->nbytes) == 0, "%s: bytes differ", a->name);
        CHECK_INT(((uintptr_t)b->data) % 64, 0); /* stored entries aligned as torch aligns them */
        uint8_t x[64], y[64];
        size_t n = a->nbytes < 64 ? a->nbytes : 64;
        CHECK_INT(alloy_tensor_pread(b, a->nbytes - n, x, n, &err), ALLOY_OK);
        memcpy(y, a->data + a->nbytes - n, n);
        CHECK(memcmp(x, y, n) == 0);
    }
    alloy_tensor_file_close(bin);
    alloy_tensor_file_close(st);
}

static int run_merge(const char *yaml, const char *out)
{
    char cfg[PATH_MAX], cmd[3 * PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/merge.yml", test_tmpdir());
    if (test_write_text(cfg, yaml) != 0) return -1;
    snprintf(cmd, sizeof cmd, "%s merge '%s' '%s' --quiet", test_alloy_bin(), cfg, out);
    return test_run(cmd, NULL);
}

static const char *const k_merge_yaml =
    "merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
    "  - model: %s\n    parameters: {weight: 0.7}\n"
    "  - model: %s\n    parameters: {weight: 0.4}\n"
    "dtype: bfloat16\n";

/* task_arithmetic over a .bin base, a sharded .bin model and a safetensors one equals the all-safetensors merge. */
TEST(pickle_bin_merge_equals_safetensors)
{
    const char *dir = test_tmpdir();
    char base[PATH_MAX], code[PATH_MAX], yaml[4 * PATH_MAX], out_st[PATH_MAX], out_bin[PATH_MAX];
    snprintf(base, sizeof base, "%s/base-bin", dir);
    snprintf(code, sizeof code, "%s/code-bin", dir);
    CHECK_INT(make_bin_model("base", base, 1), 0);
    CHECK_INT(make_bin_model("code", code, 3), 0);
    snprintf(yaml, sizeof yaml, "%s/pytorch_model-00002-of-00003.bin", code);
    CHECK(access(yaml, R_OK) == 0);
    snprintf(out_st, sizeof out_st, "%s/out-st", dir);
    snprintf(out_bin, sizeof out_bin, "%s/out-bin", dir);
    snprintf(yaml, sizeof yaml, k_merge_yaml, FIX("base"), FIX("code"), FIX("prose"));
    CHECK_INT(run_merge(yaml, out_st), 0);
    snprintf(yaml, sizeof yaml, k_merge_yaml, base, code, FIX("prose"));
    uint64_t before = test_hash_dir(base) ^ test_hash_dir(code);
    CHECK_INT(run_merge(yaml, out_bin), 0);
    CHECK_MSG((test_hash_dir(base) ^ test_hash_dir(code)) == before, "a merge changed its .bin inputs");
    size_t na = 0, nb = 0, nbase = 0;
    char pa[PATH_MAX + 32], pb[PATH_MAX + 32];
    snprintf(pa, sizeof pa, "%s/model.safetensors", out_st);
    snprintf(pb, sizeof pb, "%s/model.safetensors", out_bin);
    char *a = test_read_file(pa, &na), *b = test_read_file(pb, &nb), *c = test_read_file(FIX("base/model.safetensors"), &nbase);
    CHECK(a && b && c);
    if (a && b && c) {
        CHECK_INT(na, nb);
        CHECK_MSG(na == nb && memcmp(a, b, na) == 0, "the merge of .bin inputs differs from the safetensors merge");
        CHECK_MSG(na != nbase || memcmp(a, c, na) != 0, "the merge equals its base: nothing was merged");
    }
    free(a);
    free(b);
    free(c);
}

static double eval_nll(const char *model, const char *text)
{
    char cmd[3 * PATH_MAX], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s eval '%s' --text '%s' --ctx 32 --json --quiet", test_alloy_bin(), model, text);
    int rc = test_run(cmd, &out);
    const char *at = out ? strstr(out, "\"nll\": ") : NULL;
    double nll = rc == 0 && at ? strtod(at + 7, NULL) : -1;
    free(out);
    return nll;
}

TEST(pickle_bin_eval_equals_safetensors)
{
    const char *dir = test_tmpdir();
    char model[PATH_MAX], text[PATH_MAX];
    snprintf(model, sizeof model, "%s/code-bin", dir);
    snprintf(text, sizeof text, "%s/sample.txt", dir);
    CHECK_INT(make_bin_model("code", model, 2), 0);
    CHECK_INT(test_write_text(text, "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i))\n"), 0);
    double st = eval_nll(FIX("code"), text), bin = eval_nll(model, text);
    CHECK(st > 0);
    CHECK_MSG(st == bin, "eval nll %.17g on the .bin model, %.17g on the safetensors one", bin, st);
}

/* ------------------------------------------------------------ model discovery and the trust rule */

static const char *first_format(const char *dir, struct alloy_err *err)
{
    struct alloy_model *m = NULL;
    static char fmt[32];
    if (alloy_model_open(dir, &m, err) != ALLOY_OK) return NULL;
    snprintf(fmt, sizeof fmt, "%s", alloy_tensor_file_format(alloy_model_tensor(m, 0)->file));
    alloy_model_close(m);
    return fmt;
}

TEST(pickle_model_discovery)
{
    const char *dir = test_tmpdir();
    char m[PATH_MAX], cmd[4 * PATH_MAX], outside[PATH_MAX];
    struct alloy_err err = {0};
    const char *fmt;
    snprintf(m, sizeof m, "%s/bin", dir);
    CHECK_INT(make_bin_model("base", m, 1), 0);
    fmt = first_format(m, &err);
    CHECK_MSG(fmt && strcmp(fmt, "pytorch") == 0, "only a .bin: %s", fmt ? fmt : err.msg);
    /* safetensors present: preferred, the .bin is never opened (here it would be refused) */
    snprintf(cmd, sizeof cmd, "cp " FIX("base/model.safetensors") " '%s/' && printf 'PK\\003\\004junk' > '%s/pytorch_model.bin'", m, m);
    CHECK_INT(system(cmd), 0);
    fmt = first_format(m, &err);
    CHECK_MSG(fmt && strcmp(fmt, "safetensors") == 0, "both: %s", fmt ? fmt : err.msg);
    /* the legacy (pre-1.6) format: a bare pickle starting with torch's magic number */
    snprintf(cmd, sizeof cmd, "rm '%s/model.safetensors' && printf '\\200\\002\\212\\012junk' > '%s/pytorch_model.bin'", m, m);
    CHECK_INT(system(cmd), 0);
    CHECK(first_format(m, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "pytorch_model.bin: expected a torch.save zip (PyTorch >= 1.6), found the legacy");
    /* the trust rule: pytorch_model.bin linking outside the folder is refused */
    snprintf(m, sizeof m, "%s/linked", dir);
    snprintf(outside, sizeof outside, "%s/elsewhere", dir);
    CHECK_INT(make_bin_model("base", outside, 1), 0);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && ln -s '%s/pytorch_model.bin' '%s/pytorch_model.bin'", m, outside, m);
    CHECK_INT(system(cmd), 0);
    CHECK(first_format(m, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "outside the model folder");
    /* a sharded index naming a missing shard */
    snprintf(m, sizeof m, "%s/sharded", dir);
    CHECK_INT(make_bin_model("base", m, 2), 0);
    snprintf(cmd, sizeof cmd, "rm '%s/pytorch_model-00002-of-00002.bin'", m);
    CHECK_INT(system(cmd), 0);
    CHECK(first_format(m, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "pytorch_model-00002-of-00002.bin does not exist");
}

/* ------------------------------------------------------------ views of storages */

TEST(pickle_views_shared_storage_and_zip64)
{
    static const int64_t s44[] = {4, 4}, r44[] = {4, 1}, s16[] = {16}, r16[] = {1}, s141[] = {1, 4, 1}, r141[] = {99, 1, 7};
    struct tw_tensor t[3] = {f32("a", 32, 0, 2, s44, r44, sizeof k_vals), f32("b", 32, 16, 1, s16, r16, 0),
                             f32("c", 32, 28, 3, s141, r141, 0)};
    t[1].data = t[2].data = NULL; /* the same storage "0" again */
    for (int zip64 = 0; zip64 < 2; zip64++) {
        struct tw_buf b = {0};
        struct alloy_tensor_file *f;
        struct alloy_err err = {0};
        tw_torch_save(&b, "archive", t, 3, zip64);
        CHECK_INT(open_mem(&b, &f, &err), ALLOY_OK);
        if (f) {
            const struct alloy_tensor *a = alloy_tensor_file_find(f, "a"), *bb = alloy_tensor_file_find(f, "b"),
                                      *c = alloy_tensor_file_find(f, "c");
            CHECK(a && bb && c);
            if (a && bb && c) {
                CHECK_INT(a->numel, 16);
                CHECK_INT(bb->numel, 16);
                CHECK_INT(c->ndim, 3);
                float x[16];
                memcpy(x, bb->data, sizeof x);
                CHECK_NEAR(x[0], -1, 0);
                CHECK_NEAR(x[8], 0.5, 0);
                memcpy(x, a->data, sizeof x);
                CHECK_NEAR(x[15], 16, 0);
                memcpy(x, c->data, 4 * sizeof *x);
                CHECK_NEAR(x[3], 128, 0);
            }
            alloy_tensor_file_close(f);
        }
        free(b.p);
    }
}

TEST(pickle_hostile_views)
{
    static const int64_t s44[] = {4, 4}, r44[] = {4, 1}, t44[] = {1, 4};
    struct tw_tensor t = f32("w", 16, 8, 2, s44, r44, 64);
    struct tw_buf b = {0};
    tw_torch_save(&b, "archive", &t, 1, 0);
    REFUSED(&b, "w: expected its view (offset 8 + 16 elements) inside storage '0' of 16 elements");
    free(b.p);
    t = f32("w", 16, 0, 2, s44, r44, 32); /* the entry holds half the storage */
    b = (struct tw_buf){0};
    tw_torch_save(&b, "archive", &t, 1, 0);
    REFUSED(&b, "w: expected storage '0' to hold 16 x F32, found 32 bytes");
    free(b.p);
    t = f32("w", 16, 0, 2, s44, t44, 64); /* a transposed view */
    b = (struct tw_buf){0};
    tw_torch_save(&b, "archive", &t, 1, 0);
    REFUSED(&b, "w: expected a contiguous tensor (stride [4,1]), found stride [1,4]");
    free(b.p);
    t = f32("w", 16, 0, 2, s44, r44, 64);
    t.key = "7"; /* names a storage with no entry: tw_torch_save writes data/7, so drop the data */
    struct tw_buf pk = {0};
    tw_pickle(&pk, &t, 1, 0);
    b = zip_pickle(&pk, k_vals, 64);
    REFUSED(&b, "w: expected its storage in entry archive/data/7, found no such entry");
    free(b.p);
    free(pk.p);
    struct tw_tensor two[2] = {f32("w", 16, 0, 2, s44, r44, 64), f32("w", 16, 0, 2, s44, r44, 0)};
    two[1].data = NULL;
    b = (struct tw_buf){0};
    tw_torch_save(&b, "archive", two, 2, 0);
    REFUSED(&b, "w: duplicate tensor name");
    free(b.p);
}

/* ------------------------------------------------------------ hostile pickles */

static struct tw_buf bytes(const void *p, size_t n)
{
    struct tw_buf b = {0};
    tw_put(&b, p, n);
    return b;
}

/* The pickle pk inside a zip must be refused with needle. */
#define PICKLE_REFUSED(lit, needle) pickle_refused(__LINE__, lit, sizeof(lit) - 1, needle)
static void pickle_refused(int line, const char *p, size_t n, const char *needle)
{
    struct tw_buf pk = bytes(p, n), b = zip_pickle(&pk, NULL, 0);
    refused(line, &b, needle);
    free(pk.p);
    free(b.p);
}

TEST(pickle_refuses_code)
{
    const char *dir = test_tmpdir();
    char pwned[PATH_MAX], cmd[PATH_MAX + 16];
    snprintf(pwned, sizeof pwned, "%s/pwned", dir);
    snprintf(cmd, sizeof cmd, "touch %s", pwned);
    /* os.system("touch DIR/pwned") as Python's pickle writes it (protocol 2) */
    struct tw_buf pk = {0};
    tw_put(&pk, "\x80\x02" "cos\nsystem\nq\x00X", 15);
    tw_le(&pk, strlen(cmd), 4);
    tw_put(&pk, cmd, strlen(cmd));
    tw_put(&pk, "q\x01\x85q\x02Rq\x03.", 9);
    struct tw_buf b = zip_pickle(&pk, NULL, 0);
    REFUSED(&b, "expected a global of a state dict");
    REFUSED(&b, "found os.system (refused, never executed)");
    CHECK_MSG(access(pwned, F_OK) != 0, "the pickle ran its command");
    free(pk.p);
    free(b.p);
    /* builtins.eval through protocol 4's FRAME, SHORT_BINUNICODE, MEMOIZE and STACK_GLOBAL */
    PICKLE_REFUSED("\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x08" "builtins\x94\x8c\x04" "eval\x94\x93\x94"
                   "\x8c\x01" "1\x94\x85\x94R\x94.", "found builtins.eval (refused");
    /* the global of older, unsafe torch pickles, and a tensor rebuilt through an unknown function */
    PICKLE_REFUSED("\x80\x02" "ctorch.storage\n_load_from_bytes\nq\x00.", "found torch.storage._load_from_bytes");
    PICKLE_REFUSED("\x80\x02" "ctorch._utils\n_rebuild_qtensor\nq\x00.", "found torch._utils._rebuild_qtensor");
    /* a storage type called as a function, object construction opcodes */
    PICKLE_REFUSED("\x80\x02" "ctorch\nFloatStorage\n)R.", "expected a callable global, found torch.FloatStorage");
    PICKLE_REFUSED("\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lsi.", "found os.system");
    PICKLE_REFUSED("\x80\x02}q\x00X\x01\x00\x00\x00" "a\x81.", "found 0x81 (object construction, refused)");
    PICKLE_REFUSED("\x80\x02(X\x01\x00\x00\x00" "aX\x01\x00\x00\x00" "bio\n.", "found 0x69 (object construction");
}

TEST(pickle_interpreter_bounds)
{
    char deep[200];
    memcpy(deep, "\x80\x02", 2);
    memset(deep + 2, '(', 100);
    memcpy(deep + 102, ".", 1);
    struct tw_buf pk = bytes(deep, 103), b = zip_pickle(&pk, NULL, 0);
    REFUSED(&b, "expected at most 64 open MARKs, found more");
    free(pk.p), free(b.p);
    /* lists nested 40 deep: ] ] a ] a ... built inside out */
    pk = (struct tw_buf){0};
    tw_put(&pk, "\x80\x02", 2);
    for (int i = 0; i < 40; i++) tw_put(&pk, "]", 1);
    for (int i = 0; i < 39; i++) tw_put(&pk, "a", 1);
    tw_put(&pk, ".", 1);
    b = zip_pickle(&pk, NULL, 0);
    REFUSED(&b, "expected containers nested at most 32 deep");
    free(pk.p), free(b.p);
    PICKLE_REFUSED("\x80\x02}r\xf0\xff\xff\xff.", "expected memo index 0 or below (they are assigned in order), found 4294967280");
    PICKLE_REFUSED("\x80\x02}q\x00q\x02.", "expected memo index 1 or below (they are assigned in order), found 2");
    PICKLE_REFUSED("\x80\x02}j\x00\x00\x01\x00.", "expected a stored memo index, found 65536");
    PICKLE_REFUSED("\x80\x02}h\x05.", "expected a stored memo index, found 5");
    PICKLE_REFUSED("\x80\x06}.", "expected pickle protocol 2 to 5, found 6");
    PICKLE_REFUSED("\x80\x02}", "expected STOP, found the end of the pickle");
    PICKLE_REFUSED("\x80\x02}X\xff\xff\xff\x7f", "expected a string of 2147483647 bytes");
    PICKLE_REFUSED("\x80\x02}X\x02\x00\x00\x00\xc3\x28s.", "expected a UTF-8 string");
    PICKLE_REFUSED("\x80\x02s.", "expected a dict and key/value pairs on the stack");
    PICKLE_REFUSED("\x80\x02}K\x01K\x02.", "expected one value at STOP, found 3");
    PICKLE_REFUSED("\x80\x02]q\x00h\x00" "a.", "expected a state dict (a dict of tensors), found list");
    PICKLE_REFUSED("\x80\x02}X\x01\x00\x00\x00wK\x05s.", "'w': expected a tensor, found int");
    PICKLE_REFUSED("\x80\x02}(X\x01\x00\x00\x00wu.", "expected a dict and key/value pairs on the stack, found 1");
    PICKLE_REFUSED("\x80\x02}X\x07\x00\x00\x00storage\x85Q.", "expected a persistent id ('storage'");
    PICKLE_REFUSED("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", "expected an integer of at most 8 bytes");
}

/* Every prefix of a valid file and of its pickle is refused cleanly (one line, no crash). */
TEST(pickle_truncations)
{
    static const int64_t s44[] = {4, 4}, r44[] = {4, 1};
    struct tw_tensor t = f32("w", 16, 0, 2, s44, r44, 64);
    struct tw_buf whole = {0}, pk = {0};
    tw_torch_save(&whole, "archive", &t, 1, 0);
    tw_pickle(&pk, &t, 1, 1);
    for (size_t n = 0; n < whole.n; n++) {
        struct tw_buf cut = bytes(whole.p, n);
        refused(__LINE__, &cut, n < 22 ? "expected an end record" : "zip:");
        free(cut.p);
    }
    for (size_t n = 0; n < pk.n; n++) {
        struct tw_buf cut = bytes(pk.p, n), b = zip_pickle(&cut, k_vals, 64);
        refused(__LINE__, &b, "data.pkl: byte");
        free(cut.p);
        free(b.p);
    }
    free(whole.p);
    free(pk.p);
}

/* ------------------------------------------------------------ hostile zips */

/* A zip whose single entry archive/data.pkl has the given method and sizes in both headers. */
static struct tw_buf zip_entry_claiming(unsigned method, uint32_t csize, uint32_t usize)
{
    struct tw_zip *z = calloc(1, sizeof *z);
    if (!z) abort();
    tw_zip_add(z, "archive/data.pkl", "\x80\x02}.", 4);
    tw_zip_finish(z, 0);
    struct tw_buf b = z->b;
    free(z);
    size_t cd = b.n - 22 - 46 - strlen("archive/data.pkl");
    uint8_t *loc = b.p, *cen = b.p + cd;
    loc[8] = (uint8_t)method, cen[10] = (uint8_t)method;
    for (int i = 0; i < 4; i++) {
        loc[18 + i] = cen[20 + i] = (uint8_t)(csize >> (8 * i));
        loc[22 + i] = cen[24 + i] = (uint8_t)(usize >> (8 * i));
    }
    return b;
}

TEST(pickle_hostile_zips)
{
    struct tw_buf b = zip_entry_claiming(8, 4, 4);
    REFUSED(&b, "archive/data.pkl: expected a stored entry (torch.save never compresses), found compression method 8");
    free(b.p);
    b = zip_entry_claiming(8, 4, 0xfffffff0u); /* a deflate bomb: 4 bytes claiming 4 GiB */
    REFUSED(&b, "found compression method 8, 4 bytes for 4294967280");
    free(b.p);
    b = zip_entry_claiming(0, 0xfffffff0u, 0xfffffff0u); /* stored, claiming more than the file */
    REFUSED(&b, "archive/data.pkl: expected 4294967280 bytes of data before the central directory");
    free(b.p);
    b = zip_entry_claiming(0, 4, 5);
    REFUSED(&b, "found compression method 0, 4 bytes for 5");
    free(b.p);

    static const int64_t s44[] = {4, 4}, r44[] = {4, 1};
    struct tw_tensor t = f32("w", 16, 0, 2, s44, r44, 64);
    struct tw_buf good = {0};
    tw_torch_save(&good, "archive", &t, 1, 0);
    size_t eocd = good.n - 22;
    b = bytes(good.p, good.n);
    b.p[eocd + 19] = 0x40; /* central directory offset: past the end */
    REFUSED(&b, "zip: expected a central directory of 4 entries inside the file");
    free(b.p);
    b = bytes(good.p, good.n);
    b.p[eocd + 16] ^= 0x40; /* inside the file, on no record */
    REFUSED(&b, "zip: expected a central directory record at byte");
    free(b.p);
    b = bytes(good.p, good.n);
    uint32_t cd = (uint32_t)(b.p[eocd + 16] | b.p[eocd + 17] << 8 | b.p[eocd + 18] << 16 | (uint32_t)b.p[eocd + 19] << 24);
    b.p[cd] = 'X'; /* the first central record's signature */
    REFUSED(&b, "zip: expected a central directory record at byte");
    free(b.p);
    b = bytes(good.p, good.n);
    b.p[cd + 42] = 1; /* the first entry's local header offset */
    REFUSED(&b, "archive/data.pkl: expected a local header at byte 1");
    free(b.p);
    b = bytes(good.p, good.n);
    b.p[cd + 8] = 1; /* encrypted */
    REFUSED(&b, "expected an unencrypted entry");
    free(b.p);
    b = bytes(good.p, good.n);
    b.p[eocd + 4] = 1; /* a split archive */
    REFUSED(&b, "expected a single-disk archive");
    free(b.p);
    free(good.p);

    struct tw_buf pk = {0};
    tw_pickle(&pk, &t, 1, 0);
    struct tw_zip *z = calloc(1, sizeof *z);
    if (!z) abort();
    tw_zip_add(z, "data.pkl", pk.p, pk.n);
    tw_zip_finish(z, 0);
    REFUSED(&z->b, "zip: expected entries in an archive folder (archive/data.pkl), found 'data.pkl' first");
    free(z->b.p);
    memset(z, 0, sizeof *z);
    tw_zip_add(z, "archive/version", "3\n", 2);
    tw_zip_finish(z, 0);
    REFUSED(&z->b, "zip: expected an entry archive/data.pkl, found none");
    free(z->b.p);
    memset(z, 0, sizeof *z);
    tw_zip_add(z, "archive/data.pkl", pk.p, pk.n);
    tw_zip_add(z, "archive/byteorder", "big", 3);
    tw_zip_finish(z, 0);
    REFUSED(&z->b, "archive/byteorder: expected \"little\"");
    free(z->b.p);
    free(z);
    free(pk.p);
}

/* ------------------------------------------------------------ what torch.save also emits */

/* Protocol 4 spellings, _rebuild_parameter, a plain dict and a training checkpoint's "state_dict". */
TEST(pickle_accepts_torch_variants)
{
    struct tw_buf pk = {0};
    static const char p4[] =
        "\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"
        "}\x94(\x8c\nstate_dict\x94}\x94\x8c\x01w\x94"
        "\x8c\x0ctorch._utils\x94\x8c\x12_rebuild_parameter\x94\x93\x94"
        "\x8c\x0ctorch._utils\x94\x8c\x12_rebuild_tensor_v2\x94\x93\x94"
        "((\x8c\x07storage\x94\x8c\x05torch\x94\x8c\x0c" "FloatStorage\x94\x93\x94\x8c\x01" "0\x94\x8c\x03" "cpu\x94K\x10t\x94Q"
        "K\x00K\x04K\x04\x86\x94K\x04K\x01\x86\x94\x89\x8c\x0b" "collections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94t\x94R\x94"
        "\x88h\x15)R\x94\x87\x94R\x94s\x8c\x05" "epoch\x94K\x03u.";
    tw_put(&pk, p4, sizeof p4 - 1);
    struct tw_buf b = zip_pickle(&pk, k_vals, 64);
    struct alloy_tensor_file *f;
    struct alloy_err err = {0};
    CHECK_INT(open_mem(&b, &f, &err), ALLOY_OK);
    if (!f) test_fail(__FILE__, __LINE__, "%s", err.msg);
    if (f) {
        CHECK_INT(alloy_tensor_file_count(f), 1);
        const struct alloy_tensor *w = alloy_tensor_file_find(f, "w");
        CHECK(w && w->numel == 16 && w->ndim == 2 && w->dtype == ALLOY_DTYPE_F32);
        if (w) CHECK(memcmp(w->data, k_vals, 64) == 0);
        alloy_tensor_file_close(f);
    }
    free(pk.p);
    free(b.p);
}
