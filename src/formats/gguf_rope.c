/*
 * gguf_rope.c — RoPE scaling between config.json's rope_scaling and GGUF:
 * Llama 3.1's generated rope_freqs.weight, Phi-3's long-rope factor
 * tensors, and the linear scaling keys.
 *
 * DESIGN
 *   Writing (gguf_llama3_factors): Meta's llama3 rule as
 *   convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors evaluates it
 *   (gguf.md §1.2), operation by operation in float32 because every
 *   operand there is a float32 torch tensor and Python scalars are cast to
 *   float32: f = 1 / θ^(2i/d), wavelen = (1/f)·2π, compared with the
 *   float32 of old/high and old/low; in the band between,
 *   s = ((1/wavelen)·old − low)/(high − low) and the factor is
 *   1/((1 − s)/factor + s). The one operation that is not correctly
 *   rounded on either side is θ^x (torch's vectorised pow vs. libm's
 *   powf), so a band value may differ from the converter's in its last bit.
 *
 *   Reading (gguf_rope_config): the converter writes no rope_scaling key
 *   for llama3, only the factors, and they fix the ratios old/low and
 *   old/high but not the three numbers. alloy rebuilds rope_scaling with
 *   factor = the lowest frequency's factor and Meta's published
 *   low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings
 *   8192 (every Llama 3.1/3.2/3.3), and accepts that only when those
 *   parameters give back every stored factor (to 1e-6 relative, the
 *   rounding of powf): a file they do not explain is refused, not read
 *   with other frequencies. Phi-3's long/short factors are stored values
 *   and come back exactly; "linear" scaling comes back from its keys.
 */
#include "core/internal.h"
#include "formats/gguf.h"
#include "formats/gguf_arch.h"
#include "formats/tensor_file.h"

#include <math.h>

void gguf_llama3_factors(double theta, int64_t dim, double factor, double lo, double hi, double old, float *out)
{
    const float two_pi = (float)(2.0 * M_PI), high_wavelen = (float)(old / hi), low_wavelen = (float)(old / lo);
    for (int64_t i = 0; i < dim / 2; i++) {
        float x = (float)(2 * i) / (float)dim;
        float f = 1.0f / powf((float)theta, x);
        float wavelen = (1.0f / f) * two_pi;
        if (wavelen < high_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > low_wavelen) {
            out[i] = (float)factor;
        } else {
            float s = (1.0f / wavelen) * (float)old;
            s = (s - (float)lo) / (float)(hi - lo);
            float d = (1.0f - s) / (float)factor;
            out[i] = 1.0f / (d + s);
        }
    }
}

static const char *path_of(const struct alloy_gguf *g) { return alloy_gguf_base((struct alloy_gguf *)g)->path; }

/* A derived tensor's n values (a 1-D F32 [n]) into a malloc'd *out; 0 when absent. */
static int derived_values(const struct alloy_gguf *g, const char *name, int64_t n, float **out, struct alloy_err *err)
{
    const struct alloy_tensor *t = alloy_gguf_derived(g, name);
    *out = NULL;
    if (!t) return 0;
    if (t->ndim != 1 || t->shape[0] != n || n <= 0)
        return alloy_err_set(err, ALLOY_ERR_SHAPE, "%s: tensor '%s': [%lld] (half the rotary dimension), found %d "
                             "dims of %lld", path_of(g), name, (long long)n, t->ndim, (long long)t->shape[0]), -1;
    if (!(*out = alloy_xmalloc((size_t)n * sizeof **out)))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "%s: out of memory", path_of(g)), -1;
    if (alloy_tensor_read_f32(t, 0, (size_t)n, *out, err)) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite((*out)[i]) || (*out)[i] <= 0)
            return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor '%s': positive factors, found %g at %lld",
                                 path_of(g), name, (*out)[i], (long long)i), -1;
    return 1;
}

/* rope_freqs.weight -> rope_scaling {llama3, factor, 1, 4, 8192} when those parameters reproduce it. */
static int llama3_scaling(const struct alloy_gguf *g, json_t *o, double theta, int64_t dim, struct alloy_err *err)
{
    float *v = NULL, *want = NULL;
    int has = derived_values(g, "rope_freqs.weight", dim / 2, &v, err), rc = ALLOY_OK;
    if (has <= 0) return has < 0 ? (int)err->status : ALLOY_OK;
    double factor = v[dim / 2 - 1];
    if (!(want = alloy_xmalloc((size_t)(dim / 2) * sizeof *want))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) gguf_llama3_factors(theta, dim, factor, 1.0, 4.0, 8192.0, want);
    for (int64_t i = 0; !rc && i < dim / 2; i++)
        if (fabs((double)v[i] - want[i]) > 1e-6 * fabs((double)want[i]))
            rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: tensor 'rope_freqs.weight': the llama3 factors of "
                               "factor %g, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings "
                               "8192 (what alloy can rebuild rope_scaling from), found %.9g at %lld instead of %.9g",
                               path_of(g), factor, v[i], (long long)i, want[i]);
    json_t *rs = rc || factor == 1 ? NULL
                                   : json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", factor,
                                               "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                               "original_max_position_embeddings", 8192);
    if (!rc && factor != 1 && (!rs || json_object_set_new(o, "rope_scaling", rs)))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    free(v);
    free(want);
    return rc;
}

/* n float values as a JSON array (NULL when out of memory). */
static json_t *float_array(const float *v, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_real(v[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* Phi-3's rope_factors_long/short -> rope_scaling {longrope, long_factor, short_factor}. */
static int longrope_scaling(const struct alloy_gguf *g, json_t *o, int64_t dim, struct alloy_err *err)
{
    float *lf = NULL, *sf = NULL;
    int hl = derived_values(g, "rope_factors_long.weight", dim / 2, &lf, err);
    int hs = hl < 0 ? -1 : derived_values(g, "rope_factors_short.weight", dim / 2, &sf, err);
    int rc = hl < 0 || hs < 0 ? (int)err->status : ALLOY_OK;
    if (!rc && hl != hs)
        rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor 'rope_factors_%s.weight': present with its pair, found "
                           "it missing", path_of(g), hl ? "short" : "long");
    if (!rc && hl) {
        json_t *rs = json_pack("{s:s, s:o, s:o}", "type", "longrope", "long_factor", float_array(lf, dim / 2),
                               "short_factor", float_array(sf, dim / 2));
        if (!rs || json_object_set_new(o, "rope_scaling", rs)) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    free(lf);
    free(sf);
    return rc;
}

/* {arch}.rope.scaling.type: none (or absent) and linear are carried over; others are refused. */
static int scaling_keys(const struct alloy_gguf *g, json_t *o, struct alloy_err *err)
{
    char key[128];
    const char *s;
    uint64_t len;
    double factor = 0;
    snprintf(key, sizeof key, "%s.rope.scaling.type", alloy_gguf_arch(g));
    int has = alloy_gguf_str(g, key, &s, &len, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has || (len == 4 && memcmp(s, "none", 4) == 0)) return ALLOY_OK;
    if (!(len == 6 && memcmp(s, "linear", 6) == 0))
        return alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: %s: \"none\" or \"linear\" (the scalings alloy rebuilds "
                             "rope_scaling from), found \"%.*s\"", path_of(g), key, (int)(len < 40 ? len : 40), s);
    snprintf(key, sizeof key, "%s.rope.scaling.factor", alloy_gguf_arch(g));
    has = alloy_gguf_float(g, key, &factor, err);
    if (has < 0) return ALLOY_ERR_FORMAT;
    if (!has || !isfinite(factor) || factor <= 0)
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: %s: a positive factor, found %s", path_of(g), key,
                             has ? "another value" : "none");
    json_t *rs = json_pack("{s:s, s:f}", "rope_type", "linear", "factor", factor);
    return !rs || json_object_set_new(o, "rope_scaling", rs) ? alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory")
                                                            : ALLOY_OK;
}

int gguf_rope_config(const struct alloy_gguf *g, json_t *o, int64_t rot_dim, struct alloy_err *err)
{
    const struct gguf_arch *a = gguf_arch_named(alloy_gguf_arch(g));
    int rc = scaling_keys(g, o, err);
    if (rc || !a || rot_dim < 2) return rc;
    if (a->id == GA_PHI3) return longrope_scaling(g, o, rot_dim, err);
    if (json_object_get(o, "rope_scaling") && alloy_gguf_derived(g, "rope_freqs.weight"))
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: tensor 'rope_freqs.weight': absent next to a rope.scaling.type "
                             "other than none, found both", path_of(g));
    return llama3_scaling(g, o, json_number_value(json_object_get(o, "rope_theta")), rot_dim, err);
}
