/*
 * test_lora_extract.c — `alloy lora extract` (src/lora/extract*.c) checked
 * from the outside: the adapter it writes is read back (safetensors reader,
 * jansson), its applied delta s·B·A is formed here in double and compared
 * with the delta of the two models and with the Eckart–Young optimum from
 * an independent Jacobi SVD (tests/svd_ref.c); the adapter applied back to
 * the base is evaluated with the library's evaluator against the fine-tune.
 */
#include "test.h"

#include "formats/formats.h"
#include "svd_ref.h"

#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct adapter {
    struct alloy_st_file *st;
    json_t *cfg;
};

static int adapter_open(const char *dir, struct adapter *a)
{
    char path[4200];
    struct alloy_err err = {0};
    memset(a, 0, sizeof *a);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (alloy_st_open(path, &a->st, &err)) return test_fail(__FILE__, __LINE__, "%s", err.msg), -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    a->cfg = json_load_file(path, 0, NULL);
    return a->cfg ? 0 : -1;
}

static void adapter_close(struct adapter *a)
{
    alloy_st_close(a->st);
    json_decref(a->cfg);
}

static double *tensor_f64(const struct alloy_tensor *t)
{
    float *f = malloc(sizeof(float) * t->numel);
    double *d = malloc(sizeof(double) * t->numel);
    alloy_to_f32(t->dtype, t->data, f, t->numel);
    for (uint64_t i = 0; i < t->numel; i++) d[i] = f[i];
    free(f);
    return d;
}

/* PEFT's scaling of `module`: pattern-resolved alpha / r (the patterns hold full module paths here). */
static double module_scale(const struct adapter *a, const char *module, int *rank)
{
    json_t *rp = json_object_get(json_object_get(a->cfg, "rank_pattern"), module);
    json_t *ap = json_object_get(json_object_get(a->cfg, "alpha_pattern"), module);
    double r = rp ? json_number_value(rp) : json_number_value(json_object_get(a->cfg, "r"));
    double al = ap ? json_number_value(ap) : json_number_value(json_object_get(a->cfg, "lora_alpha"));
    *rank = (int)r;
    return al / r;
}

/* s·B·A of a Linear module as [out, in] (row-major, double), or NULL when the adapter has no LoRA there. */
static double *applied_delta(const struct adapter *a, const char *module, int *rank)
{
    char ka[512], kb[512];
    snprintf(ka, sizeof ka, "base_model.model.%s.lora_A.weight", module);
    snprintf(kb, sizeof kb, "base_model.model.%s.lora_B.weight", module);
    const struct alloy_tensor *ta = alloy_st_find(a->st, ka), *tb = alloy_st_find(a->st, kb);
    if (!ta || !tb) return NULL;
    double s = module_scale(a, module, rank);
    CHECK_INT(ta->shape[0], *rank);
    CHECK_INT(tb->shape[1], *rank);
    size_t r = (size_t)ta->shape[0], in = (size_t)ta->shape[1], out = (size_t)tb->shape[0];
    double *A = tensor_f64(ta), *B = tensor_f64(tb), *p = calloc(out * in, sizeof(double));
    for (size_t i = 0; i < out; i++)
        for (size_t t = 0; t < r; t++)
            for (size_t j = 0; j < in; j++) p[i * in + j] += s * B[i * r + t] * A[t * in + j];
    free(A);
    free(B);
    return p;
}

static int extract(const char *ft, const char *base, const char *out, int rank, const char *const *excl, size_t nexcl,
                   double energy, double eps, struct alloy_err *err)
{
    struct alloy_lora_extract_options o;
    alloy_lora_extract_options_init(&o);
    o.model = ft;
    o.base_model = base;
    o.out_dir = out;
    o.max_rank = rank;
    o.exclude_regexes = excl;
    o.nexclude = nexcl;
    o.rank_energy = energy;
    o.sv_epsilon = eps;
    o.threads = 2;
    return alloy_lora_extract(&o, err);
}

/* The delta of one 2-D module of the bundled pair, with its exact singular values. */
struct delta {
    const char *name;
    size_t m, n;
    double *d, *sv, norm;
};

static size_t code_deltas(struct alloy_model *ft, struct alloy_model *base, struct delta *out)
{
    size_t nd = 0;
    for (size_t i = 0; i < alloy_model_count(ft); i++) {
        const struct alloy_tensor *t = alloy_model_tensor(ft, i);
        if (t->ndim != 2 || strstr(t->name, "embed") || strstr(t->name, "lm_head")) continue;
        struct delta *d = &out[nd++];
        d->name = t->name;
        d->m = (size_t)t->shape[0], d->n = (size_t)t->shape[1];
        d->d = tensor_f64(t);
        double *b = tensor_f64(alloy_model_find(base, t->name)), n2 = 0;
        for (size_t k = 0; k < d->m * d->n; k++) {
            d->d[k] -= b[k];
            n2 += d->d[k] * d->d[k];
        }
        free(b);
        d->norm = sqrt(n2);
        d->sv = malloc(sizeof(double) * (d->m < d->n ? d->m : d->n));
        jacobi_sv(d->d, d->m, d->n, d->sv);
    }
    return nd;
}

/* The rank --rank-energy F gives delta dl: the smallest keeping F of ||delta||^2, at most max_rank. */
static size_t energy_rank(const struct delta *dl, double f, int max_rank)
{
    size_t mn = dl->m < dl->n ? dl->m : dl->n, r = 0;
    double acc = 0;
    while (r < mn && r < (size_t)max_rank && (r == 0 || acc < f * dl->norm * dl->norm)) {
        acc += dl->sv[r] * dl->sv[r];
        r++;
    }
    return r;
}

/* Checks every module of the adapter in dir against the rule, at rank min(max_rank, m, n) or, with
 * energy > 0, energy_rank(); returns how many modules were checked. */
static size_t check_rule(const char *dir, const struct delta *dl, size_t nd, int max_rank, double energy)
{
    struct adapter a;
    if (adapter_open(dir, &a)) return 0;
    size_t checked = 0;
    double worst = 0;
    for (size_t i = 0; i < nd; i++) {
        char module[256];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(dl[i].name) - 7), dl[i].name);
        int rank;
        double *p = applied_delta(&a, module, &rank);
        CHECK_MSG(p != NULL, "%s: no LoRA", module);
        if (!p) continue;
        size_t mn = dl[i].m < dl[i].n ? dl[i].m : dl[i].n, want_rank = (size_t)max_rank < mn ? (size_t)max_rank : mn;
        if (energy > 0) want_rank = energy_rank(&dl[i], energy, max_rank);
        CHECK_INT(rank, want_rank);
        double e2 = 0, opt2 = 0;
        for (size_t k = 0; k < dl[i].m * dl[i].n; k++) e2 += (p[k] - dl[i].d[k]) * (p[k] - dl[i].d[k]);
        for (size_t j = want_rank; j < mn; j++) opt2 += dl[i].sv[j] * dl[i].sv[j];
        CHECK_MSG(sqrt(e2) <= 1.01 * sqrt(opt2) + 1e-5 * dl[i].norm, "%s rank %d: error %.9g, optimum %.9g", module,
                  rank, sqrt(e2), sqrt(opt2));
        if (sqrt(opt2) > 1e-3 * dl[i].norm && sqrt(e2) / sqrt(opt2) > worst) worst = sqrt(e2) / sqrt(opt2);
        checked++;
        free(p);
    }
    if (getenv("ALLOY_TEST_VERBOSE")) printf("%s: worst error / optimum %.7f\n", dir, worst);
    adapter_close(&a);
    return checked;
}

/* Ranks 4, 16 and 64 of the bundled code fine-tune, and --rank-energy: every module within 1 % of the optimum. */
TEST(lora_extract_code_eckart_young)
{
    struct alloy_model *ft, *base;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open(test_data("tiny-llama/code"), &ft, &err), 0);
    CHECK_INT(alloy_model_open(test_data("tiny-llama/base"), &base, &err), 0);
    struct delta dl[64];
    size_t nd = code_deltas(ft, base, dl);
    CHECK_INT(nd, 28);
    static const int ranks[] = {4, 16, 64};
    for (size_t r = 0; r < 3; r++) {
        char out[4096];
        snprintf(out, sizeof out, "%s/r%d", test_tmpdir(), ranks[r]);
        CHECK_MSG(extract(test_data("tiny-llama/code"), test_data("tiny-llama/base"), out, ranks[r], NULL, 0, 0, 0,
                          &err) == 0, "%s", err.msg);
        CHECK_INT(check_rule(out, dl, nd, ranks[r], 0), 28);
    }
    char out[4096]; /* --rank-energy 0.8: each module's own rank, in rank_pattern */
    snprintf(out, sizeof out, "%s/energy", test_tmpdir());
    CHECK_MSG(extract(test_data("tiny-llama/code"), test_data("tiny-llama/base"), out, 64, NULL, 0, 0.8, 0, &err) == 0,
              "%s", err.msg);
    CHECK_INT(check_rule(out, dl, nd, 64, 0.8), 28);
    for (size_t i = 0; i < nd; i++) {
        free(dl[i].d);
        free(dl[i].sv);
    }
    alloy_model_close(ft);
    alloy_model_close(base);
}

/* ------------------------------------------------------------ small models built here */

static uint64_t g_seed = 77;
static float grand(void)
{
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_seed >> 11) * 0x1p-53 * 2 - 1);
}

/* A delta of true rank r: [m, r] x [r, n]. */
static void low_rank(float *d, size_t m, size_t n, size_t r)
{
    float L[64 * 8], R[8 * 64];
    for (size_t i = 0; i < m * r; i++) L[i] = grand();
    for (size_t i = 0; i < r * n; i++) R[i] = grand();
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double v = 0;
            for (size_t t = 0; t < r; t++) v += (double)L[i * r + t] * R[t * n + j];
            d[i * n + j] = (float)v;
        }
}

#define NSYN 6
static const char *const k_syn_names[NSYN] = {
    "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
    "model.layers.1.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight"};
static const long long k_syn_shape[NSYN][2] = {{10, 8}, {8, 8}, {12, 8}, {12, 8}, {8, 0}, {10, 8}};
static const size_t k_syn_rank[NSYN] = {2, 2, 3, 1, 0, 2}; /* true rank of each 2-D delta */

struct syn {
    char dir[1024], base[1100], ft[1100];
    float w[NSYN][128], d[NSYN][128]; /* base weights and deltas */
};

static size_t syn_numel(int i) { return (size_t)k_syn_shape[i][0] * (size_t)(k_syn_shape[i][1] ? k_syn_shape[i][1] : 1); }

/* base and ft = base + delta (low rank per module, a changed norm) under test_tmpdir(); mutate edits ft's
 * tensors before writing (for the error cases). */
static void syn_write(struct syn *s, void (*mutate)(struct test_tensor *t, float (*ftw)[128]))
{
    const char *cfg = "{\"model_type\": \"llama\", \"vocab_size\": 10}";
    struct test_tensor tb[NSYN], tf[NSYN];
    static float ftw[NSYN][128];
    for (int i = 0; i < NSYN; i++) {
        size_t n = syn_numel(i);
        for (size_t k = 0; k < n; k++) s->w[i][k] = grand();
        if (k_syn_shape[i][1]) low_rank(s->d[i], (size_t)k_syn_shape[i][0], (size_t)k_syn_shape[i][1], k_syn_rank[i]);
        else for (size_t k = 0; k < n; k++) s->d[i][k] = 0.01f * grand();
        for (size_t k = 0; k < n; k++) ftw[i][k] = s->w[i][k] + s->d[i][k];
        for (size_t k = 0; k < n; k++) s->d[i][k] = ftw[i][k] - s->w[i][k]; /* the float32 delta */
        tb[i] = (struct test_tensor){k_syn_names[i], "F32", k_syn_shape[i][1] ? 2 : 1,
                                     {k_syn_shape[i][0], k_syn_shape[i][1]}, s->w[i]};
        tf[i] = tb[i];
        tf[i].data = ftw[i];
    }
    if (mutate) mutate(tf, ftw);
    snprintf(s->dir, sizeof s->dir, "%s", test_tmpdir());
    snprintf(s->base, sizeof s->base, "%s/base", s->dir);
    snprintf(s->ft, sizeof s->ft, "%s/ft", s->dir);
    CHECK_INT(test_write_model(s->base, tb, NSYN, cfg), 0);
    CHECK_INT(test_write_model(s->ft, tf, NSYN, cfg), 0);
}

static double frob_diff(const double *p, const float *d, size_t n, double *norm)
{
    double e2 = 0, n2 = 0;
    for (size_t k = 0; k < n; k++) {
        e2 += (p[k] - d[k]) * (p[k] - d[k]);
        n2 += (double)d[k] * d[k];
    }
    *norm = sqrt(n2);
    return sqrt(e2);
}

/* Deltas of true rank <= r come back exactly; --sv-epsilon cuts each rank to the true one and the config
 * carries it in rank_pattern and alpha_pattern (every scaling 1); norms and embeddings are saved in full. */
TEST(lora_extract_exact_low_rank)
{
    struct syn s;
    syn_write(&s, NULL);
    char out[4200];
    snprintf(out, sizeof out, "%s/adapter", s.dir);
    struct alloy_err err = {0};
    CHECK_MSG(extract(s.ft, s.base, out, 6, NULL, 0, 0, 1e-4, &err) == 0, "%s", err.msg);
    struct adapter a;
    if (adapter_open(out, &a)) return;
    CHECK_INT(json_integer_value(json_object_get(a.cfg, "r")), 3);
    CHECK_INT(json_object_size(json_object_get(a.cfg, "rank_pattern")), 2);
    for (int i = 1; i <= 3; i++) {
        char module[128];
        snprintf(module, sizeof module, "%.*s", (int)strlen(k_syn_names[i]) - 7, k_syn_names[i]);
        int rank;
        double norm, *p = applied_delta(&a, module, &rank);
        CHECK_MSG(p != NULL, "%s missing", module);
        if (!p) continue;
        CHECK_INT(rank, k_syn_rank[i]);
        double e = frob_diff(p, s.d[i], syn_numel(i), &norm);
        CHECK_MSG(e <= 1e-6 * norm, "%s: error %g of %g", module, e, norm);
        free(p);
    }
    static const int full[] = {0, 4, 5};
    for (int k = 0; k < 3; k++) {
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s", k_syn_names[full[k]]);
        const struct alloy_tensor *t = alloy_st_find(a.st, key);
        CHECK_MSG(t != NULL, "%s not saved in full", key);
        float v[128];
        if (t) alloy_to_f32(t->dtype, t->data, v, t->numel);
        for (size_t j = 0; t && j < t->numel; j++) CHECK(v[j] == s.w[full[k]][j] + s.d[full[k]][j]);
    }
    CHECK_INT(json_array_size(json_object_get(a.cfg, "modules_to_save")), 3);
    CHECK_INT(json_array_size(json_object_get(a.cfg, "target_modules")), 2); /* q_proj, up_proj */
    adapter_close(&a);

    /* --lora-dtype bfloat16: the factors rounded to BF16 (within 1 % of the delta), full copies unchanged */
    struct alloy_lora_extract_options o;
    alloy_lora_extract_options_init(&o);
    snprintf(out, sizeof out, "%s/bf16", s.dir);
    o.model = s.ft, o.base_model = s.base, o.out_dir = out, o.max_rank = 6, o.lora_dtype = ALLOY_DTYPE_BF16;
    CHECK_MSG(alloy_lora_extract(&o, &err) == 0, "%s", err.msg);
    if (adapter_open(out, &a)) return;
    const struct alloy_tensor *t = alloy_st_find(a.st, "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight");
    CHECK(t && t->dtype == ALLOY_DTYPE_BF16);
    t = alloy_st_find(a.st, "base_model.model.lm_head.weight");
    CHECK(t && t->dtype == ALLOY_DTYPE_F32);
    int rank;
    double norm, *p = applied_delta(&a, "model.layers.0.mlp.up_proj", &rank);
    if (p) CHECK(frob_diff(p, s.d[2], syn_numel(2), &norm) <= 0.01 * norm);
    free(p);
    adapter_close(&a);
}

/* --distribute-scale splits sqrt(S) over both factors; --no-distribute-scale leaves B = U orthonormal.
 * --embed-lora: the embedding as lora_embedding_A [r, vocab] / _B [dim, r] with (B A)ᵀ = delta. */
TEST(lora_extract_scale_split_and_embed_lora)
{
    struct syn s;
    syn_write(&s, NULL);
    for (int dist = 0; dist < 2; dist++) {
        char out[4200];
        snprintf(out, sizeof out, "%s/a%d", s.dir, dist);
        struct alloy_lora_extract_options o;
        alloy_lora_extract_options_init(&o);
        o.model = s.ft, o.base_model = s.base, o.out_dir = out, o.max_rank = 2, o.distribute_scale = dist;
        o.embed_lora = 1;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_lora_extract(&o, &err) == 0, "%s", err.msg);
        struct adapter a;
        if (adapter_open(out, &a)) continue;
        const struct alloy_tensor *ta = alloy_st_find(a.st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        const struct alloy_tensor *tb = alloy_st_find(a.st, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        CHECK(ta && tb);
        if (ta && tb) {
            double *A = tensor_f64(ta), *B = tensor_f64(tb);
            for (int j = 0; j < 2; j++) {
                double na = 0, nb = 0;
                for (int c = 0; c < 8; c++) na += A[j * 8 + c] * A[j * 8 + c];
                for (int r = 0; r < 8; r++) nb += B[r * 2 + j] * B[r * 2 + j];
                if (dist) CHECK_NEAR(sqrt(na), sqrt(nb), 1e-5 * sqrt(na)); /* both sqrt(sigma_j) */
                else CHECK_NEAR(nb, 1, 1e-5);                              /* U's columns */
            }
            free(A);
            free(B);
        }
        const struct alloy_tensor *ea = alloy_st_find(a.st, "base_model.model.model.embed_tokens.lora_embedding_A");
        const struct alloy_tensor *eb = alloy_st_find(a.st, "base_model.model.model.embed_tokens.lora_embedding_B");
        CHECK(ea && eb && ea->shape[0] == 2 && ea->shape[1] == 10 && eb->shape[0] == 8 && eb->shape[1] == 2);
        if (ea && eb) { /* delta[v][d] = sum_t B[d][t] A[t][v] */
            double *A = tensor_f64(ea), *B = tensor_f64(eb), e2 = 0, n2 = 0;
            for (int v = 0; v < 10; v++)
                for (int d = 0; d < 8; d++) {
                    double p = B[d * 2] * A[v] + B[d * 2 + 1] * A[10 + v], want = s.d[0][v * 8 + d];
                    e2 += (p - want) * (p - want);
                    n2 += want * want;
                }
            CHECK_MSG(sqrt(e2) <= 1e-6 * sqrt(n2), "embedding error %g of %g", sqrt(e2), sqrt(n2));
            free(A);
            free(B);
        }
        CHECK(alloy_st_find(a.st, "base_model.model.lm_head.lora_A.weight") != NULL);
        CHECK(alloy_st_find(a.st, "base_model.model.model.embed_tokens.weight") == NULL);
        adapter_close(&a);
    }
}

/* -e drops modules (target_modules then names full paths, so PEFT puts no LoRA on the excluded one);
 * -i keeps only the matching ones. */
TEST(lora_extract_regexes)
{
    struct syn s;
    syn_write(&s, NULL);
    char out[4200];
    snprintf(out, sizeof out, "%s/ex", s.dir);
    const char *const excl[] = {"layers\\.1\\."};
    struct alloy_err err = {0};
    CHECK_MSG(extract(s.ft, s.base, out, 4, excl, 1, 0, 0, &err) == 0, "%s", err.msg);
    struct adapter a;
    if (!adapter_open(out, &a)) {
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight") == NULL);
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight") != NULL);
        json_t *tm = json_object_get(a.cfg, "target_modules");
        CHECK_INT(json_array_size(tm), 2);
        CHECK(!strcmp(json_string_value(json_array_get(tm, 1)), "model.layers.0.mlp.up_proj"));
        adapter_close(&a);
    }
    struct alloy_lora_extract_options o;
    alloy_lora_extract_options_init(&o);
    const char *const incl[] = {"mlp"};
    snprintf(out, sizeof out, "%s/in", s.dir);
    o.model = s.ft, o.base_model = s.base, o.out_dir = out, o.include_regexes = incl, o.ninclude = 1;
    CHECK_MSG(alloy_lora_extract(&o, &err) == 0, "%s", err.msg);
    if (!adapter_open(out, &a)) {
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == NULL);
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight") != NULL);
        CHECK(alloy_st_find(a.st, "base_model.model.model.embed_tokens.weight") == NULL); /* filtered like the rest */
        CHECK_INT(alloy_st_count(a.st), 4);
        adapter_close(&a);
    }
    const char *const bad[] = {"(unclosed"};
    o.include_regexes = bad;
    CHECK_INT(alloy_lora_extract(&o, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "--include-regexes: (unclosed: a POSIX extended regex expected");
}

static void drop_lm_head(struct test_tensor *t, float (*ftw)[128]) { (void)ftw; t[5].name = "lm_head.other"; }
static void narrow_q(struct test_tensor *t, float (*ftw)[128]) { (void)ftw; t[1].shape[1] = 4; t[1].shape[0] = 16; }
static void nan_up(struct test_tensor *t, float (*ftw)[128]) { (void)t; ftw[2][5] = NAN; }

/* Refusals: each one line naming the file and tensor, and no output folder. */
TEST(lora_extract_errors)
{
    struct alloy_err err = {0};
    char out[4200];
    struct stat st;
    struct syn s;
    syn_write(&s, narrow_q); /* base [8, 8], fine-tune [16, 4] */
    snprintf(out, sizeof out, "%s/never", s.dir);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_SHAPE);
    CHECK_STR_CONTAINS(err.msg, "model.layers.0.self_attn.q_proj.weight: shape [16, 4] (the fine-tune's) expected, found [8, 8]");
    CHECK_INT(extract(s.base, s.ft, out, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_SHAPE);
    syn_write(&s, drop_lm_head); /* a tensor the base lacks */
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_SHAPE);
    CHECK_STR_CONTAINS(err.msg, "/base: lm_head.other: a tensor of the fine-tune's shape expected, found none");
    syn_write(&s, nan_up);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_FORMAT);
    CHECK_STR_CONTAINS(err.msg, "model.layers.0.mlp.up_proj.weight: svd: matrix [12, 8]: finite values expected, found NaN");
    syn_write(&s, NULL);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 1e9, &err), ALLOY_ERR_CONFIG); /* every rank cut to 0 */
    CHECK_STR_CONTAINS(err.msg, "a LoRA rank >= 1 expected, found 0");
    CHECK_INT(extract(s.ft, s.base, out, 0, NULL, 0, 0, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 1.5, 0, &err), ALLOY_ERR_CONFIG);
    snprintf(out, sizeof out, "%s/never", s.dir);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 1e9, &err), ALLOY_ERR_CONFIG);
    CHECK(stat(out, &st) != 0);
    /* out path rules (foreign files: test_lora_write.c): never an input folder or inside one */
    snprintf(out, sizeof out, "%s/inner", s.base);
    CHECK_INT(extract(s.ft, s.base, out, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "lies inside the input model");
    CHECK_INT(extract(s.ft, s.base, s.ft, 4, NULL, 0, 0, 0, &err), ALLOY_ERR_CONFIG);
    CHECK_STR_CONTAINS(err.msg, "is the input model");
    CHECK(stat(out, &st) != 0);
    CHECK_INT(test_leftovers(s.dir), 0);
}

/* The CLI and its mergekit alias: options, the no-op note, usage errors. */
TEST(lora_extract_cli)
{
    struct syn s;
    syn_write(&s, NULL);
    char cmd[16384], link[4200], *log = NULL;
    snprintf(link, sizeof link, "%s/mergekit-extract-lora", s.dir);
    char real[4096];
    CHECK(realpath(test_alloy_bin(), real) != NULL);
    CHECK_INT(symlink(real, link), 0);
    snprintf(cmd, sizeof cmd, "%s --model %s --base-model %s --out-path %s/cli --max-rank 2 --cuda --no-distribute-scale "
             "--save-module q_proj -e 'layers\\.1' 2>&1", link, s.ft, s.base, s.dir);
    CHECK_INT(test_run(cmd, &log), 0);
    CHECK_STR_CONTAINS(log, "alloy: note: --cuda has no effect");
    free(log);
    struct adapter a;
    snprintf(link, sizeof link, "%s/cli", s.dir);
    if (!adapter_open(link, &a)) {
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.0.self_attn.q_proj.weight") != NULL);
        CHECK(alloy_st_find(a.st, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight") != NULL);
        adapter_close(&a);
    }
    snprintf(cmd, sizeof cmd, "%s lora extract --model %s --base-model %s 2>&1", test_alloy_bin(), s.ft, s.base);
    CHECK_INT(test_run(cmd, &log), 2);
    CHECK_STR_CONTAINS(log, "--out-path are required");
    free(log);
    snprintf(cmd, sizeof cmd, "%s lora extract --model %s --base-model %s --out-path %s --max-rank 2 2>&1",
             test_alloy_bin(), s.ft, s.base, s.base);
    CHECK_INT(test_run(cmd, &log), 1);
    CHECK(test_count_lines(log, "alloy: error: ") == 1);
    free(log);
}

/* ------------------------------------------------------------ the adapter applied back */

/* W_base + s·B·A for the LoRA modules, the adapter's full copies, the base elsewhere: an in-memory F32 model. */
static struct alloy_model *apply_adapter(const struct alloy_model *base, const char *adapter_dir)
{
    struct adapter a;
    if (adapter_open(adapter_dir, &a)) return NULL;
    size_t n = alloy_model_count(base);
    struct alloy_tensor_desc *d = calloc(n, sizeof *d);
    float **vals = calloc(n, sizeof *vals);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const struct alloy_tensor *t = alloy_model_tensor(base, i);
        char key[512], module[256];
        snprintf(key, sizeof key, "base_model.model.%s", t->name);
        snprintf(module, sizeof module, "%.*s", (int)strlen(t->name) - 7, t->name);
        const struct alloy_tensor *full = alloy_st_find(a.st, key);
        vals[i] = malloc(sizeof(float) * t->numel);
        alloy_to_f32((full ? full : t)->dtype, (full ? full : t)->data, vals[i], t->numel);
        int rank;
        double *p = !full && t->ndim == 2 ? applied_delta(&a, module, &rank) : NULL;
        for (uint64_t k = 0; p && k < t->numel; k++) vals[i][k] = (float)(vals[i][k] + p[k]);
        free(p);
        d[i] = (struct alloy_tensor_desc){t->name, ALLOY_DTYPE_F32, t->ndim, t->shape, off, t->numel * 4};
        off += t->numel * 4;
    }
    size_t hlen;
    uint8_t *hdr = alloy_st_header(d, n, &hlen), *image = malloc(hlen + off);
    memcpy(image, hdr, hlen);
    for (size_t i = 0; i < n; i++) {
        memcpy(image + hlen + d[i].offset, vals[i], d[i].nbytes);
        free(vals[i]);
    }
    free(hdr);
    free(vals);
    free(d);
    adapter_close(&a);
    struct alloy_model *m = NULL;
    struct alloy_err err = {0};
    char *cfg = strdup(alloy_model_config_text(base));
    CHECK_MSG(alloy_model_from_image("applied", alloy_model_dir(base), image, hlen + off, cfg, &m, &err) == 0, "%s",
              err.msg);
    return m;
}

static double code_loss(const struct alloy_model *m, const char *text, size_t len)
{
    struct alloy_evaluator *ev = NULL;
    struct alloy_err err = {0};
    struct alloy_eval_options o;
    struct alloy_eval_result r = {0};
    alloy_eval_options_init(&o);
    o.max_windows = 32;
    CHECK_MSG(alloy_evaluator_new(m, &ev, &err) == 0, "%s", err.msg);
    CHECK_MSG(ev && alloy_evaluate_text(ev, text, len, "eval_code.txt", &o, &r, &err) == 0, "%s", err.msg);
    alloy_evaluator_free(ev);
    return r.nll;
}

/* The extracted adapter applied to the base scores the code text like the fine-tune: at full rank (every
 * delta exactly) to float precision, at lower ranks within the tolerance measured for this pair
 * (docs/lora-extract.md), and always closer to the fine-tune than the base is. */
TEST(lora_extract_applied_loss)
{
    struct alloy_model *base, *ft;
    struct alloy_err err = {0};
    CHECK_INT(alloy_model_open(test_data("tiny-llama/base"), &base, &err), 0);
    CHECK_INT(alloy_model_open(test_data("tiny-llama/code"), &ft, &err), 0);
    char *text;
    size_t len;
    CHECK_INT(alloy_eval_read_text(test_data("eval_code.txt"), &text, &len, &err), 0);
    double l_ft = code_loss(ft, text, len), l_base = code_loss(base, text, len);
    CHECK(l_ft < l_base - 0.05);
    static const int ranks[] = {4, 16, 64, 344};
    static const double tol[] = {0.08, 0.035, 0.004, 1e-5}; /* measured: 0.0675, 0.0268, 0.0019, < 1e-6 */
    double prev = INFINITY;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    for (int i = 0; i < 4; i++) {
        char out[1100];
        snprintf(out, sizeof out, "%s/r%d", dir, ranks[i]);
        CHECK_MSG(extract(test_data("tiny-llama/code"), test_data("tiny-llama/base"), out, ranks[i], NULL, 0, 0, 0,
                          &err) == 0, "%s", err.msg);
        struct alloy_model *m = apply_adapter(base, out);
        if (!m) continue;
        double l = code_loss(m, text, len);
        if (getenv("ALLOY_TEST_VERBOSE")) printf("rank %d: loss %.7f (fine-tune %.7f, base %.7f)\n", ranks[i], l, l_ft, l_base);
        CHECK_MSG(fabs(l - l_ft) <= tol[i], "rank %d: loss %.6f, fine-tune %.6f (tol %g)", ranks[i], l, l_ft, tol[i]);
        CHECK(l < l_base && l <= prev + 1e-6); /* a higher rank is never worse */
        prev = l;
        alloy_model_close(m);
    }
    free(text);
    alloy_model_close(base);
    alloy_model_close(ft);
}
