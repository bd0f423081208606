/*
 * llama.c — weight loading and the float32 forward pass of Llama-family
 * causal language models (Llama, Mistral, Qwen2, Qwen3, Gemma through the hooks of
 * llama_gemma.c, and the MoE blocks of llama_moe.c); config.json is read by llama_config.c.
 *
 * DESIGN
 *   The forward pass is HF `LlamaForCausalLM` with eager attention, in
 *   float32: RMSNorm (w * (x * rsqrt(mean(x^2) + eps))), GQA attention with
 *   half-split RoPE (rope_theta, rope_scaling "linear" or "llama3" computed
 *   as transformers' _compute_*_parameters do), optional q/k/v(/o) biases,
 *   Qwen3's per-head RMSNorm of q and k (q_norm, k_norm) before RoPE,
 *   causal (and Mistral sliding-window) mask, float32 softmax, SiLU-gated MLP.
 *   Weights are converted once from the memory-mapped safetensors into one
 *   float32 arena (exact upcast), with q/k/v and gate/up stacked so a layer is
 *   four cblas_sgemm calls over all tokens of a batch of sequences.
 *
 * INVARIANTS
 *   - Matrices are row-major [out][in] like nn.Linear.weight; y = x W^T.
 *   - A workspace is used by one thread at a time; the model is read-only
 *     after alloy_llama_new, so several threads may run forward passes.
 *   - Sequences in a batch are independent: positions restart at 0 in each,
 *     and attention never crosses a sequence boundary.
 */
#include "eval/eval.h"
#include "eval/llama_impl.h"
#include "core/internal.h"
#include "formats/tensor_file.h"

#include <cblas.h>
#include "sources/source.h"
#include <math.h>
#include <stdio.h>

#define LOGIT_ROWS 64 /* rows of logits materialised at a time by alloy_llama_nll */
#define ATT_BLOCK 32  /* query rows per causal attention block */

/* ------------------------------------------------------------ weights */

static void shape_str(const int64_t *s, int nd, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < nd && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Checks tensor `name` (shape [d0], d1 < 0, or [d0, d1], a float dtype) and
 * converts it into dst; dst NULL only checks. */
int alloy_llama_load_tensor(const struct alloy_model *mod, const char *dir, const char *name, int64_t d0,
                            int64_t d1, float *dst, struct alloy_err *err)
{
    int64_t want[2] = {d0, d1};
    int nd = d1 < 0 ? 1 : 2;
    char ws[64], fs[160];
    shape_str(want, nd, ws, sizeof ws);
    const struct alloy_tensor *t = alloy_model_find(mod, name);
    if (!t)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: tensor not found (expected shape %s)", dir, name, ws);
    const char *file = alloy_tensor_file_path(t->file);
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        shape_str(t->shape, t->ndim, fs, sizeof fs);
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: %s: expected shape %s (from config.json), found %s", file, name,
                             ws, fs);
    }
    if (!alloy_dtype_traits(t->dtype)->mergeable)
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: expected a float or GGUF quantized dtype (F32, F16, "
                             "BF16, F64, Q8_0, Q4_K, ...), found %s", file, name, alloy_dtype_traits(t->dtype)->name);
    if (!dst) return ALLOY_OK;
    /* through the model's source: a `model+adapter` tensor with its LoRA applied, GGUF blocks dequantized */
    int rc = alloy_model_read_f32(mod, t, dst, err);
    alloy_tensor_release(t);
    return rc;
}

static void compute_inv_freq(const struct alloy_llama_config *c, float *inv)
{
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)c->head_dim;
        inv[i] = 1.0f / powf((float)c->rope_theta, e);
    }
    if (c->rope_kind == ALLOY_ROPE_LINEAR) {
        for (int i = 0; i < half; i++) inv[i] = inv[i] / (float)c->rope_factor;
    } else if (c->rope_kind == ALLOY_ROPE_LLAMA3) {
        /* transformers' _compute_llama3_parameters, elementwise in float32 */
        float factor = (float)c->rope_factor, lo = (float)c->rope_low_freq_factor, hi = (float)c->rope_high_freq_factor;
        float old = (float)c->rope_original_max_pos;
        float low_wavelen = old / lo, high_wavelen = old / hi;
        for (int i = 0; i < half; i++) {
            float wavelen = (float)(2.0 * M_PI) / inv[i];
            float f = wavelen > low_wavelen ? inv[i] / factor : inv[i];
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (old / wavelen - lo) / (hi - lo);
                f = (1.0f - smooth) * f / factor + smooth * f;
            }
            inv[i] = f;
        }
    }
}

/* Walks the tensors config.json implies, in arena order (embed, per layer:
 * norms, q/k/v stacked, biases, o, gate/up stacked, down, MLP biases; final
 * norm; lm_head unless tied), adding their sizes into *total. With arena NULL
 * it only checks them, so the arena is sized from tensors that exist (at most
 * what the files hold), never from config numbers alone. */
static int walk_tensors(struct alloy_llama *m, const struct alloy_model *mod, const char *dir, float *arena,
                        uint64_t *total, struct alloy_err *err)
{
    const struct alloy_llama_config *c = &m->cfg;
    int64_t H = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, hd = c->head_dim;
    int64_t Q = (int64_t)c->num_heads * hd, KV = (int64_t)c->num_kv_heads * hd;
    uint64_t off = 0;
    char name[256];
    int rc;
#define PTR(field) do { if (arena) (field) = arena + off; } while (0)
#define LOAD(nm, d0, d1)                                                                                 \
    do {                                                                                                 \
        if ((rc = alloy_llama_load_tensor(mod, dir, nm, d0, d1, arena ? arena + off : NULL, err))) return rc;        \
        off += (uint64_t)(d0) * ((d1) < 0 ? 1u : (uint64_t)(d1));                                        \
    } while (0)
#define LLOAD(suffix, d0, d1)                                                                            \
    do {                                                                                                 \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                    \
        LOAD(name, d0, d1);                                                                              \
    } while (0)
    PTR(m->embed);
    LOAD("model.embed_tokens.weight", V, H);
    for (int l = 0; l < c->num_layers; l++) {
        struct llama_layer *L = &m->layers[l];
        PTR(L->attn_norm); LLOAD("input_layernorm.weight", H, -1);
        PTR(L->ffn_norm);  LLOAD("post_attention_layernorm.weight", H, -1);
        PTR(L->wqkv);
        LLOAD("self_attn.q_proj.weight", Q, H);
        LLOAD("self_attn.k_proj.weight", KV, H);
        LLOAD("self_attn.v_proj.weight", KV, H);
        if (c->qkv_bias) {
            PTR(L->bqkv);
            LLOAD("self_attn.q_proj.bias", Q, -1);
            LLOAD("self_attn.k_proj.bias", KV, -1);
            LLOAD("self_attn.v_proj.bias", KV, -1);
        }
        if (c->qk_norm) {
            PTR(L->qnorm); LLOAD("self_attn.q_norm.weight", hd, -1);
            PTR(L->knorm); LLOAD("self_attn.k_norm.weight", hd, -1);
        }
        PTR(L->wo); LLOAD("self_attn.o_proj.weight", H, Q);
        if (c->o_bias) { PTR(L->bo); LLOAD("self_attn.o_proj.bias", H, -1); }
        if (alloy_llama_layer_sparse(c, l)) { /* router, experts (llama_moe.c) */
            if ((rc = alloy_llama_moe_load(m, mod, dir, l, arena, &off, err))) return rc;
            continue;
        }
        PTR(L->wgu);
        LLOAD("mlp.gate_proj.weight", F, H);
        LLOAD("mlp.up_proj.weight", F, H);
        PTR(L->wdown); LLOAD("mlp.down_proj.weight", H, F);
        if (c->mlp_bias) {
            PTR(L->bgu);
            LLOAD("mlp.gate_proj.bias", F, -1);
            LLOAD("mlp.up_proj.bias", F, -1);
            PTR(L->bdown);
            LLOAD("mlp.down_proj.bias", H, -1);
        }
    }
    PTR(m->norm);
    LOAD("model.norm.weight", H, -1);
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        if (!alloy_model_find(mod, "lm_head.weight"))
            return alloy_err_set(err, ALLOY_ERR_FORMAT,
                                 "%s: lm_head.weight: tensor not found and tie_word_embeddings is false in config.json",
                                 dir);
        PTR(m->lm_head);
        LOAD("lm_head.weight", V, H);
    }
#undef PTR
#undef LOAD
#undef LLOAD
    *total = off;
    return ALLOY_OK;
}

int alloy_llama_config_of(const struct alloy_model *mod, struct alloy_llama_config *cfg, struct alloy_err *err)
{
    char *label = alloy_xasprintf("%s/config.json", alloy_model_dir(mod));
    int rc;
    if (!label) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    else if (!alloy_model_config_text(mod))
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: file not found (evaluation needs the model's config)", label);
    else rc = alloy_llama_config_parse(alloy_model_config_text(mod), label, cfg, err);
    free(label);
    return rc;
}

int alloy_llama_new(const struct alloy_model *mod, struct alloy_llama **out, struct alloy_err *err)
{
    const char *dir = alloy_model_dir(mod);
    struct alloy_llama *m = alloy_xcalloc(1, sizeof *m);
    uint64_t total = 0, total2 = 0;
    int rc;
    if (!m) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if ((rc = alloy_llama_config_of(mod, &m->cfg, err))) goto fail;
    const struct alloy_llama_config *c = &m->cfg;
    m->dir = alloy_xstrdup(dir);
    m->layers = alloy_xcalloc((size_t)c->num_layers, sizeof *m->layers);
    m->inv_freq = alloy_xmalloc((size_t)c->head_dim / 2 * sizeof(float));
    if (!m->dir || !m->layers || !m->inv_freq) { rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory"); goto fail; }
    /* check every tensor first: the arena is sized only from tensors that exist */
    if ((rc = walk_tensors(m, mod, dir, NULL, &total, err))) goto fail;
    if (total > ((uint64_t)1 << 40)) {
        rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s/config.json: model too large (%llu parameters)", dir,
                           (unsigned long long)total);
        goto fail;
    }
    m->n_params = total;
    m->arena = alloy_xmalloc(total * sizeof(float));
    if (!m->arena) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory for %llu float32 weights", dir,
                           (unsigned long long)total);
        goto fail;
    }
    if ((rc = walk_tensors(m, mod, dir, m->arena, &total2, err))) goto fail;
    if (c->gemma) alloy_gemma_prepare(m);
    compute_inv_freq(c, m->inv_freq);
    *out = m;
    return ALLOY_OK;
fail:
    alloy_llama_close(m);
    return rc;
}

int alloy_llama_open(const char *ref, struct alloy_llama **out, struct alloy_err *err)
{
    struct alloy_model *mod = NULL;
    int rc = alloy_model_open(ref, &mod, err);
    if (!rc) rc = alloy_llama_new(mod, out, err);
    alloy_model_close(mod);
    return rc;
}

void alloy_llama_close(struct alloy_llama *m)
{
    if (!m) return;
    free(m->arena);
    free(m->layers);
    free(m->inv_freq);
    free(m->dir);
    free(m);
}

const struct alloy_llama_config *alloy_llama_cfg(const struct alloy_llama *m) { return &m->cfg; }
const char *alloy_llama_dir(const struct alloy_llama *m) { return m->dir; }
uint64_t alloy_llama_n_params(const struct alloy_llama *m) { return m->n_params; }

/* ------------------------------------------------------------ workspace */

struct alloy_llama_ws *alloy_llama_ws_new(const struct alloy_llama *m, int max_len, int max_seqs)
{
    const struct alloy_llama_config *c = &m->cfg;
    if (max_len < 1 || max_seqs < 1) return NULL;
    struct alloy_llama_ws *ws = alloy_xcalloc(1, sizeof *ws);
    if (!ws) return NULL;
    size_t T = (size_t)max_len * (size_t)max_seqs, H = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    if ((size_t)c->moe_intermediate_size > F) F = (size_t)c->moe_intermediate_size;
    size_t hd = (size_t)c->head_dim, Q = (size_t)c->num_heads * hd, QKV = Q + 2 * (size_t)c->num_kv_heads * hd;
    size_t half = hd / 2, rows = T < LOGIT_ROWS ? T : LOGIT_ROWS;
    ws->max_len = max_len;
    ws->max_seqs = max_seqs;
    ws->h = alloy_xmalloc(T * H * sizeof(float));
    ws->a = alloy_xmalloc(T * H * sizeof(float));
    ws->qkv = alloy_xmalloc(T * QKV * sizeof(float));
    ws->att = alloy_xmalloc(T * Q * sizeof(float));
    ws->gu = alloy_xmalloc(T * 2 * F * sizeof(float));
    ws->act = alloy_xmalloc(T * F * sizeof(float));
    ws->scores = alloy_xmalloc((size_t)max_len * (size_t)max_len * sizeof(float));
    ws->logits = alloy_xmalloc(rows * (size_t)c->vocab_size * sizeof(float));
    ws->sel = alloy_xmalloc(rows * H * sizeof(float));
    ws->cos = alloy_xmalloc((size_t)max_len * half * sizeof(float));
    ws->sin = alloy_xmalloc((size_t)max_len * half * sizeof(float));
    if (!ws->h || !ws->a || !ws->qkv || !ws->att || !ws->gu || !ws->act || !ws->scores || !ws->logits || !ws->sel || !ws->cos ||
        !ws->sin || (c->n_experts && alloy_llama_moe_ws(m, ws, T))) {
        alloy_llama_ws_free(ws);
        return NULL;
    }
    /* HF: freqs = inv_freq (f32) * position (f32); cos/sin in float32 */
    for (int p = 0; p < max_len; p++)
        for (size_t i = 0; i < half; i++) {
            float ang = (float)p * m->inv_freq[i];
            ws->cos[(size_t)p * half + i] = (float)cos((double)ang);
            ws->sin[(size_t)p * half + i] = (float)sin((double)ang);
        }
    return ws;
}

void alloy_llama_ws_free(struct alloy_llama_ws *ws)
{
    if (!ws) return;
    free(ws->h);
    free(ws->a);
    free(ws->qkv);
    free(ws->att);
    free(ws->gu);
    free(ws->act);
    free(ws->scores);
    free(ws->logits);
    free(ws->sel);
    free(ws->cos);
    free(ws->sin);
    free(ws->route);
    free(ws->mx);
    free(ws->my);
    free(ws);
}

/* ------------------------------------------------------------ forward */

/* y[T][N] = x[T][K] W[N][K]^T (+ b) */
static void linear(const float *x, const float *W, const float *b, float *y, size_t T, size_t N, size_t K)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)N, (int)K, 1.0f, x, (int)K, W, (int)K, 0.0f, y,
                (int)N);
    if (b)
        for (size_t t = 0; t < T; t++)
            for (size_t n = 0; n < N; n++) y[t * N + n] += b[n];
}

static void rope(float *x, const float *cosr, const float *sinr, size_t half)
{
    for (size_t i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cosr[i] + (-x2) * sinr[i];
        x[i + half] = x2 * cosr[i] + x1 * sinr[i];
    }
}

/* Element-wise kernels on 8-float vectors (GCC vector extensions: SSE2 at
 * baseline, an AVX2 clone chosen at load time on x86-64). exp is Cephes'
 * single-precision polynomial (about 1 ulp, like the vectorised expf that
 * PyTorch uses on CPU). Tails are padded into a local vector. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* No clones under ThreadSanitizer: their ifunc resolvers run before the TSan
 * runtime is initialised and crash the program at load time. */
#if defined(ALLOY_HAVE_AVX2) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VEC_CLONES
#endif

#define V8(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})

/* Selects a where mask (all ones) else b. */
#define V8_SEL(mask, a, b) ((v8f)(((mask) & (v8i)(a)) | (~(mask) & (v8i)(b))))

/* *v = exp(*v); pointers rather than vector values keep the function ABI-neutral. */
static inline void v8_exp(v8f *v)
{
    v8f x = *v;
    /* clamp so 2^n stays a normal float; comparisons are false for NaN, which passes through */
    x = V8_SEL(x > V8(88.3762626647949f), V8(88.3762626647949f), x);
    x = V8_SEL(x < V8(-87.3365447504f), V8(-87.3365447504f), x);
    v8f fx = x * V8(1.44269504088896341f) + V8(0.5f);
    v8f fl = __builtin_convertvector(__builtin_convertvector(fx, v8i), v8f);
    fl = V8_SEL(fl > fx, fl - V8(1.0f), fl); /* floor */
    x = x - fl * V8(0.693359375f) - fl * V8(-2.12194440e-4f);
    v8f z = x * x;
    v8f y = V8(1.9875691500e-4f);
    y = y * x + V8(1.3981999507e-3f);
    y = y * x + V8(8.3334519073e-3f);
    y = y * x + V8(4.1665795894e-2f);
    y = y * x + V8(1.6666665459e-1f);
    y = y * x + V8(5.0000001201e-1f);
    y = y * z + x + V8(1.0f);
    v8i e = (__builtin_convertvector(fl, v8i) + 127) << 23;
    *v = y * (v8f)e;
}

static inline void v8_load(v8f *v, const float *p, size_t n, float pad)
{
    if (n == 8) { memcpy(v, p, sizeof *v); return; } /* one unaligned load */
    *v = V8(pad);
    memcpy(v, p, n * sizeof(float));
}

static inline void v8_store(float *p, const v8f *v, size_t n)
{
    if (n == 8) memcpy(p, v, sizeof *v);
    else memcpy(p, v, n * sizeof(float));
}

/* o = silu(g) * u = g / (1 + exp(-g)) * u */
VEC_CLONES static void silu_mul(const float *g, const float *u, float *o, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        size_t k = n - i < 8 ? n - i : 8;
        v8f gv, uv, e;
        v8_load(&gv, g + i, k, 0);
        v8_load(&uv, u + i, k, 0);
        e = -gv;
        v8_exp(&e);
        v8f r = gv / (V8(1.0f) + e) * uv;
        v8_store(o + i, &r, k);
    }
}

VEC_CLONES static void add_inplace(float *h, const float *a, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        size_t k = n - i < 8 ? n - i : 8;
        v8f x, y;
        v8_load(&x, h + i, k, 0);
        v8_load(&y, a + i, k, 0);
        v8f r = x + y;
        v8_store(h + i, &r, k);
    }
}

/* Softmax of r[lo..hi) in place; r[0..lo) and r[hi..n) become 0 (masked). */
VEC_CLONES static void softmax_causal(float *r, size_t lo, size_t hi, size_t n)
{
    v8f vmx = V8(-INFINITY), sum = V8(0.0f), x;
    for (size_t t = lo; t < hi; t += 8) {
        v8_load(&x, r + t, hi - t < 8 ? hi - t : 8, -INFINITY);
        vmx = V8_SEL(x > vmx, x, vmx);
    }
    float mx = vmx[0];
    for (int j = 1; j < 8; j++) mx = vmx[j] > mx ? vmx[j] : mx;
    for (size_t t = lo; t < hi; t += 8) {
        size_t k = hi - t < 8 ? hi - t : 8;
        v8_load(&x, r + t, k, 0);
        x = x - V8(mx);
        v8_exp(&x);
        for (size_t j = k; j < 8; j++) x[j] = 0;
        sum += x;
        v8_store(r + t, &x, k);
    }
    float s = 0;
    for (int j = 0; j < 8; j++) s += sum[j];
    v8f inv = V8(1.0f / s);
    for (size_t t = lo; t < hi; t += 8) {
        size_t k = hi - t < 8 ? hi - t : 8;
        v8_load(&x, r + t, k, 0);
        x = x * inv;
        v8_store(r + t, &x, k);
    }
    memset(r, 0, lo * sizeof(float));
    memset(r + hi, 0, (n - hi) * sizeof(float));
}

/* out = w * (x * rsqrt(mean(x^2) + eps)) per row of H; the mean in float32 lanes as PyTorch does. */
VEC_CLONES static void rmsnorm(const float *x, const float *w, float *out, size_t T, size_t H, float eps)
{
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * H;
        float *o = out + t * H;
        v8f acc = V8(0.0f), v, wv;
        for (size_t i = 0; i < H; i += 8) {
            v8_load(&v, xr + i, H - i < 8 ? H - i : 8, 0);
            acc += v * v;
        }
        float ss = 0;
        for (int j = 0; j < 8; j++) ss += acc[j];
        float inv = 1.0f / sqrtf(ss / (float)H + eps);
        for (size_t i = 0; i < H; i += 8) {
            size_t k = H - i < 8 ? H - i : 8;
            v8_load(&v, xr + i, k, 0);
            v8_load(&wv, w + i, k, 0);
            v = wv * (v * V8(inv));
            v8_store(o + i, &v, k);
        }
    }
}

static void ffn(const struct alloy_llama *m, const float *wgu, const float *bgu, const float *wdown, const float *bdown,
                const float *x, float *gu, float *act, float *y, size_t T, size_t F)
{
    size_t H = (size_t)m->cfg.hidden_size;
    linear(x, wgu, bgu, gu, T, 2 * F, H);
    for (size_t t = 0; t < T; t++)
        (m->cfg.gemma ? alloy_gemma_gelu_mul : silu_mul)(gu + t * 2 * F, gu + t * 2 * F + F, act + t * F, F);
    linear(act, wdown, bdown, y, T, H, F);
}

/* What forward_hidden's taps receive: the last position's states, or their sum over the positions; the
 * sum with every position's attention masked out (each row attends to nothing, its attention output 0). */
enum tap_mode { TAP_LAST, TAP_SUM, TAP_UNATTENDED };

static void tap(float *dst, const float *h, size_t n, size_t H, enum tap_mode mode)
{
    if (mode == TAP_LAST) {
        memcpy(dst, h + (n - 1) * H, H * sizeof(float));
        return;
    }
    memset(dst, 0, H * sizeof(float));
    for (size_t t = 0; t < n; t++) add_inplace(dst, h + t * H, H);
}

/* Runs the layers; leaves the final-normed hidden states [nseq*len][H] in ws->a. taps (NULL: none)
 * receives the residual stream of sequence 0 (per `mode`) entering each layer and after the last one,
 * [(num_layers + 1) * H]. */
static void forward_hidden(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int nseq,
                           int len, float *taps, enum tap_mode mode)
{
    const struct alloy_llama_config *c = &m->cfg;
    size_t T = (size_t)nseq * (size_t)len, H = (size_t)c->hidden_size;
    size_t hd = (size_t)c->head_dim, half = hd / 2, nh = (size_t)c->num_heads, nkv = (size_t)c->num_kv_heads;
    size_t Q = nh * hd, QKV = Q + 2 * nkv * hd, group = nh / nkv;
    float eps = (float)c->rms_norm_eps, scale = (float)(1.0 / sqrt((double)hd));
    size_t n = (size_t)len;

    for (size_t t = 0; t < T; t++) memcpy(ws->h + t * H, m->embed + (size_t)ids[t] * H, H * sizeof(float));
    if (c->gemma) alloy_gemma_embed_scale(c, ws->h, T);
    for (int l = 0; l < c->num_layers; l++) {
        const struct llama_layer *L = &m->layers[l];
        if (taps) tap(taps + (size_t)l * H, ws->h, n, H, mode);
        rmsnorm(ws->h, L->attn_norm, ws->a, T, H, eps);
        linear(ws->a, L->wqkv, L->bqkv, ws->qkv, T, QKV, H);
        for (size_t t = 0; t < T; t++) {
            size_t pos = t % n;
            float *row = ws->qkv + t * QKV;
            const float *cr = ws->cos + pos * half, *sr = ws->sin + pos * half;
            if (L->qnorm) { /* Qwen3: each head normed over head_dim, before RoPE */
                rmsnorm(row, L->qnorm, row, nh, hd, eps);
                rmsnorm(row + Q, L->knorm, row + Q, nkv, hd, eps);
            }
            for (size_t j = 0; j < nh + nkv; j++) rope(row + j * hd, cr, sr, half); /* q heads, then k heads */
        }
        if (mode == TAP_UNATTENDED) memset(ws->att, 0, T * Q * sizeof(float));
        for (size_t s = 0; s < (size_t)nseq && mode != TAP_UNATTENDED; s++) {
            const float *base = ws->qkv + s * n * QKV;
            for (size_t j = 0; j < nh; j++) {
                size_t kvh = j / group;
                const float *q = base + j * hd, *k = base + Q + kvh * hd, *v = base + Q + nkv * hd + kvh * hd;
                float *S = ws->scores;
                /* Causal attention in row blocks: rows [i0, i1) only need keys [0, i1). */
                for (size_t i0 = 0; i0 < n; i0 += ATT_BLOCK) {
                    size_t i1 = i0 + ATT_BLOCK < n ? i0 + ATT_BLOCK : n;
                    /* (q k^T) * scale: OpenBLAS applies alpha to the finished dot product, as HF does */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(i1 - i0), (int)i1, (int)hd, scale,
                                q + i0 * QKV, (int)QKV, k, (int)QKV, 0.0f, S + i0 * n, (int)n);
                    for (size_t i = i0; i < i1; i++) {
                        size_t lo = 0;
                        if (c->sliding_window > 0 && i + 1 > (size_t)c->sliding_window)
                            lo = i + 1 - (size_t)c->sliding_window;
                        softmax_causal(S + i * n, lo, i + 1, i1);
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(i1 - i0), (int)hd, (int)i1, 1.0f,
                                S + i0 * n, (int)n, v, (int)QKV, 0.0f, ws->att + (s * n + i0) * Q + j * hd, (int)Q);
                }
            }
        }
        linear(ws->att, L->wo, L->bo, ws->a, T, H, Q);
        add_inplace(ws->h, ws->a, T * H);
        rmsnorm(ws->h, L->ffn_norm, ws->a, T, H, eps);
        if (L->router) alloy_llama_moe_block(m, L, ws, T, ffn);
        else ffn(m, L->wgu, L->bgu, L->wdown, L->bdown, ws->a, ws->gu, ws->act, ws->a, T, (size_t)c->intermediate_size);
        add_inplace(ws->h, ws->a, T * H);
    }
    if (taps) tap(taps + (size_t)c->num_layers * H, ws->h, n, H, mode);
    rmsnorm(ws->h, m->norm, ws->a, T, H, eps);
}

void alloy_llama_residuals(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int len,
                           float *out)
{
    forward_hidden(m, ws, ids, 1, len, out, TAP_LAST);
}

void alloy_llama_residual_sums(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int len,
                               float *out)
{
    forward_hidden(m, ws, ids, 1, len, out, TAP_SUM);
}

void alloy_llama_unattended_residuals(const struct alloy_llama *m, struct alloy_llama_ws *ws, int32_t id, float *out)
{
    forward_hidden(m, ws, &id, 1, 1, out, TAP_UNATTENDED);
}

void alloy_llama_logits(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids, int nseq,
                        int len, float *logits)
{
    forward_hidden(m, ws, ids, nseq, len, NULL, TAP_LAST);
    linear(ws->a, m->lm_head, NULL, logits, (size_t)nseq * (size_t)len, (size_t)m->cfg.vocab_size,
           (size_t)m->cfg.hidden_size);
}

void alloy_llama_nll(const struct alloy_llama *m, struct alloy_llama_ws *ws, const int32_t *ids,
                     const int32_t *targets, int nseq, int len, double *nll_sum)
{
    size_t T = (size_t)nseq * (size_t)len, V = (size_t)m->cfg.vocab_size, H = (size_t)m->cfg.hidden_size;
    forward_hidden(m, ws, ids, nseq, len, NULL, TAP_LAST);
    /* Only the rows that are scored go through the head: gather them in chunks. */
    for (size_t t0 = 0; t0 < T;) {
        size_t rows = 0, idx[LOGIT_ROWS];
        for (; t0 < T && rows < LOGIT_ROWS; t0++)
            if (targets[t0] >= 0) idx[rows++] = t0;
        if (!rows) continue;
        /* rows that are not contiguous (unscored positions between them) are gathered into ws->sel */
        const float *xin = ws->a + idx[0] * H;
        int contiguous = idx[rows - 1] - idx[0] == rows - 1;
        if (!contiguous) {
            for (size_t r = 0; r < rows; r++) memcpy(ws->sel + r * H, ws->a + idx[r] * H, H * sizeof(float));
            xin = ws->sel;
        }
        linear(xin, m->lm_head, NULL, ws->logits, rows, V, H);
        for (size_t r = 0; r < rows; r++) {
            const float *lg = ws->logits + r * V;
            float mx = lg[0];
            for (size_t v = 1; v < V; v++)
                if (lg[v] > mx) mx = lg[v];
            double sum = 0;
            for (size_t v = 0; v < V; v++) sum += exp((double)lg[v] - (double)mx);
            double lse = (double)mx + log(sum);
            nll_sum[idx[r] / (size_t)len] += lse - (double)lg[targets[idx[r]]];
        }
    }
}
