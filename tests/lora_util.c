/*
 * lora_util.c — test helpers for LoRA adapters (lora_util.h).
 */
#include "lora_util.h"

#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

double *lt_values(size_t n, unsigned seed, double scale)
{
    double *v = malloc((n ? n : 1) * sizeof *v);
    uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (size_t i = 0; v && i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = ((double)(x >> 11) * 0x1p-53 * 2 - 1) * scale;
    }
    return v;
}

double lt_bf16(double x)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* The tensors encoded (F32 or BF16) for test_write_safetensors; bufs freed by the caller. */
static int encode(const struct lt_tensor *t, int n, struct test_tensor *out, void **bufs)
{
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        int bf = !strcmp(t[i].dtype, "BF16");
        bufs[i] = malloc(numel * (bf ? 2 : 4) + 1);
        if (!bufs[i]) return -1;
        for (size_t k = 0; k < numel; k++) {
            float f = (float)(bf ? lt_bf16(t[i].v[k]) : t[i].v[k]);
            uint32_t u;
            memcpy(&u, &f, 4);
            if (bf) ((uint16_t *)bufs[i])[k] = (uint16_t)(u >> 16);
            else ((float *)bufs[i])[k] = f;
        }
        out[i] = (struct test_tensor){t[i].name, t[i].dtype, t[i].ndim, {t[i].shape[0], t[i].shape[1]}, bufs[i]};
    }
    return 0;
}

static int write_st(const char *path, const struct lt_tensor *t, int n)
{
    struct test_tensor tt[64] = {0};
    void *bufs[64] = {0};
    int rc = n > 64 ? -1 : encode(t, n, tt, bufs);
    if (!rc) rc = test_write_safetensors(path, tt, n);
    for (int i = 0; i < n && i < 64; i++) free(bufs[i]);
    return rc;
}

int lt_write_model(const char *dir, const struct lt_tensor *t, int n)
{
    char path[1024];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (write_st(path, t, n)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return test_write_text(path, "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"]}\n");
}

int lt_write_adapter(const char *dir, const char *config, const struct lt_tensor *t, int n)
{
    char path[1024];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (test_write_text(path, config)) return -1;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    return write_st(path, t, n);
}

struct alloy_model *lt_apply(const char *ref, const char *out_dtype, struct alloy_err *err)
{
    char cfg[2048];
    snprintf(cfg, sizeof cfg, "merge_method: passthrough\nmodels:\n  - model: %s\n%s%s\n", ref,
             out_dtype ? "dtype: " : "", out_dtype ? out_dtype : "");
    struct alloy_merge_options o;
    struct alloy_model *m = NULL;
    alloy_merge_options_init(&o);
    o.config_text = cfg;
    o.out_model = &m;
    o.threads = 2;
    return alloy_merge(&o, err) == ALLOY_OK ? m : NULL;
}

double *lt_tensor_values(const struct alloy_tensor *t)
{
    double *v = malloc((size_t)t->numel * sizeof *v + 1);
    for (uint64_t i = 0; v && i < t->numel; i++) {
        uint32_t u = 0;
        float f;
        if (t->dtype == ALLOY_DTYPE_BF16) u = (uint32_t)(t->data[2 * i] | t->data[2 * i + 1] << 8) << 16;
        else memcpy(&u, t->data + 4 * i, 4);
        memcpy(&f, &u, 4);
        v[i] = f;
    }
    return v;
}

double *lt_read(const struct alloy_model *m, const char *name, size_t *n)
{
    const struct alloy_tensor *t = alloy_model_find(m, name);
    if (!t) return NULL;
    *n = (size_t)t->numel;
    return lt_tensor_values(t);
}

double lt_maxrel(const double *got, const double *want, size_t n, double floor)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]) / fmax(fabs(want[i]), floor);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

size_t lt_bf16_over_ulp(const double *got, const double *want, const double *mag, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        int e;
        frexp(want[i], &e);
        double ulp = ldexp(1.0, e - 8); /* bfloat16: 8 significant bits, value in [2^(e-1), 2^e) */
        if (mag && 1e-6 * mag[i] > ulp) ulp = 1e-6 * mag[i]; /* float32 sums of terms of size mag */
        bad += !(fabs(got[i] - want[i]) <= ulp);
    }
    return bad;
}

void lt_formula(const double *w, const double *a, const double *b, const double *mag, int embedding, long long rows,
                long long cols, long long r, double s, double *out, double *size)
{
    for (long long i = 0; i < rows; i++)
        for (long long j = 0; j < cols; j++) {
            double acc = 0, abs_acc = 0;
            for (long long k = 0; k < r; k++) {
                double term = embedding ? b[j * r + k] * a[k * rows + i] : b[i * r + k] * a[k * cols + j];
                acc += term;
                abs_acc += fabs(term);
            }
            out[i * cols + j] = w[i * cols + j] + s * acc;
            if (size) size[i * cols + j] = fabs(w[i * cols + j]) + fabs(s) * abs_acc;
        }
    if (!mag) return;
    for (long long i = 0; i < (embedding ? cols : rows); i++) {
        double ss = 0;
        for (long long j = 0; j < (embedding ? rows : cols); j++) {
            double x = embedding ? out[j * cols + i] : out[i * cols + j];
            ss += x * x;
        }
        for (long long j = 0; j < (embedding ? rows : cols); j++) *(embedding ? &out[j * cols + i] : &out[i * cols + j]) *= mag[i] / sqrt(ss);
    }
}
