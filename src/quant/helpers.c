/*
 * helpers.c — ggml's scale searches (make_qx_quants, make_q3_quants,
 * make_qkx2/qkx3_quants, make_qp_quants), bit-exact.
 *
 * DESIGN
 *   Each function searches a scale (and for the asymmetric one a min) that
 *   minimises a weighted error over a small group of values, trying a fixed
 *   ladder of candidate inverse scales and, for q3/qp, a few sweeps of
 *   coordinate descent on the integer codes. Everything is float32, summed
 *   sequentially from element 0 with the products written in ggml's order;
 *   the file is compiled with -ffp-contract=off (Makefile) so no a*b+c
 *   becomes an FMA. gguf.md §3.2 describes each step.
 *   Speed without changing a bit: the candidate scales of make_qx_quants
 *   and make_qkx_quants are evaluated side by side, one candidate per SIMD
 *   lane (GCC vector extensions, 4 lanes: SSE2 or NEON), each lane's sums
 *   running over the elements in order exactly as the scalar loop's. The
 *   choice among them is then made in candidate order. make_qkx's winner
 *   changes the min the later candidates use, so its batch is evaluated
 *   speculatively and the candidates after a winner are evaluated again.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#include "quant/helpers.h"

#include <math.h>

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static inline float qx_weight(const float *w, const float *x, int i, int rmse_type)
{
    if (w) return w[i];
    switch (rmse_type) {
    case 1: return x[i] * x[i];
    case 2: return 1;
    case 3: return fabsf(x[i]);
    default: return sqrtf(fabsf(x[i]));
    }
}

/* The signed value of largest magnitude (first wins); *amax its magnitude. */
static float signed_max(int n, const float *x, float *amax)
{
    float max = 0, a = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > a) {
            a = ax;
            max = x[i];
        }
    }
    *amax = a;
    return max;
}

/* Up to QX_MAXC candidate inverse scales, in groups of 4 lanes. */
#define QX_MAXC 20
typedef float v4sf __attribute__((vector_size(16)));
typedef int32_t v4si __attribute__((vector_size(16)));
/* lane-wise max and min of finite floats */
#if defined(__SSE2__)
#include <emmintrin.h>
#define VMAX(a, b) ((v4sf)_mm_max_ps((__m128)(a), (__m128)(b)))
#define VMIN(a, b) ((v4sf)_mm_min_ps((__m128)(a), (__m128)(b)))
#else
#define VSEL(m, a, b) ((v4sf)(((v4si)(a) & (m)) | ((v4si)(b) & ~(m))))
#define VMAX(a, b) __extension__({ v4sf a_ = (a), b_ = (b); VSEL(a_ > b_, a_, b_); })
#define VMIN(a, b) __extension__({ v4sf a_ = (a), b_ = (b); VSEL(a_ < b_, a_, b_); })
#endif

/* For the nc candidate inverse scales is[c]: sumlx[c] = sum of wi*x_i*l and suml2[c] = sum of wi*l*l with
 * l = clamp(nearest_int(is[c]*x_i), -nmax, nmax-1), each sum taken from i = 0 in float32 with the products in
 * make_qx_quants's order. The lanes of a vector are different candidates, never different elements, so
 * every candidate's sum is the scalar loop's, bit for bit; the candidates only run side by side. */
static void qx_sums(int n, int nmax, const float *x, const float *wt, const float *is, int nc, float *sumlx,
                    float *suml2)
{
    enum { G = QX_MAXC / 4 };
    v4sf vis[G], slx[G], sl2[G];
    const int ng = (nc + 3) / 4;
    for (int g = 0; g < ng; g++) {
        for (int k = 0; k < 4; k++) vis[g][k] = is[4 * g + k < nc ? 4 * g + k : 0];
        slx[g] = sl2[g] = (v4sf){0, 0, 0, 0};
    }
    /* |is*x| <= nmax + 0.9 here, so is*x + 1.5*2^23 is exactly 1.5*2^23 plus alloy_nearest_int(is*x):
     * clamping that sum to 1.5*2^23 + [-nmax, nmax-1] and subtracting 1.5*2^23 gives the clamped code as a
     * float, exactly (the int conversions of the scalar loop are not needed) */
    const v4sf magic = {12582912.f, 12582912.f, 12582912.f, 12582912.f}, lo = magic - (float)nmax, hi = magic + (float)(nmax - 1);
    for (int i = 0; i < n; ++i) {
        const float wx = wt[i] * x[i], wi = wt[i];
        for (int g = 0; g < ng; g++) {
            v4sf lf = VMIN(VMAX(vis[g] * x[i] + magic, lo), hi) - magic;
            slx[g] += wx * lf;
            sl2[g] += wi * lf * lf;
        }
    }
    for (int c = 0; c < nc; c++) {
        sumlx[c] = slx[c / 4][c % 4];
        suml2[c] = sl2[c / 4][c % 4];
    }
}

static void qx_codes(int n, int nmax, const float *x, float iscale, int8_t *L)
{
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(nmax + clampi(alloy_nearest_int(iscale * x[i]), -nmax, nmax - 1));
}

float alloy_make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *w)
{
    float amax, max = signed_max(n, x, &amax);
    if (amax < ALLOY_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    qx_codes(n, nmax, x, iscale, L);
    if (rmse_type == 0) return 1 / iscale;
    int return_early = rmse_type < 0;
    if (return_early) rmse_type = -rmse_type;
    float is[QX_MAXC], sumlx[QX_MAXC], suml2[QX_MAXC], wt[256];
    int nc = 1;
    is[0] = iscale;
    for (int k = -9; k <= 9 && !return_early; ++k)
        if (k) is[nc++] = -(nmax + 0.1f * k) / max;
    for (int i = 0; i < n && i < 256; ++i) wt[i] = qx_weight(w, x, i, rmse_type);
    qx_sums(n, nmax, x, wt, is, nc, sumlx, suml2);
    float scale = suml2[0] ? sumlx[0] / suml2[0] : 0.0f;
    if (return_early) return suml2[0] > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx[0];
    int win = 0;
    for (int c = 1; c < nc; ++c) {
        if (suml2[c] > 0 && sumlx[c] * sumlx[c] > best * suml2[c]) {
            win = c;
            scale = sumlx[c] / suml2[c];
            best = scale * sumlx[c];
        }
    }
    if (win) qx_codes(n, nmax, x, is[win], L);
    return scale;
}

float alloy_make_q3_quants(int n, int nmax, const float *x, int8_t *L)
{
    float amax, max = signed_max(n, x, &amax);
    if (amax < ALLOY_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = clampi(alloy_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = clampi(alloy_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Weighted error of scale*L + min against x: |.| (use_mad) or squared. */
static float qkx_error(int n, const float *x, const float *w, const uint8_t *L, float scale, float min, int use_mad)
{
    float err = 0;
    for (int i = 0; i < n; ++i) {
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float wi = w ? w[i] : x[i] * x[i];
        err += wi * diff;
    }
    return err;
}

/* QKX_LANES candidates of make_qkx_quants evaluated side by side, one per SIMD lane (never one element per
 * lane: each lane's sums run from element 0 in float32 as the scalar loop's do, so they are bit-identical). */
#define QKX_GROUPS 1
#define QKX_LANES (4 * QKX_GROUPS)

struct qkx_batch {
    float is[QKX_LANES];                       /* inverse scales */
    float sum_l[QKX_LANES], sum_l2[QKX_LANES], sum_xl[QKX_LANES];
    float scale[QKX_LANES], min[QKX_LANES];    /* the fitted scale and min, where D > 0 */
    float err[QKX_LANES];
};

/* codes clamp(nearest_int(is*(x - min)), 0, nmax) of one element for 4 lanes, as floats. fast: every
 * |is*(x - min)| of the batch is below 2^22, so the clamp can be taken on is*(x - min) + 1.5*2^23 as a float
 * (exact, as in qx_sums); otherwise alloy_nearest_int's bit trick, whatever it gives out of range. */
#define QKX_CODES(vis, xm, nmax, fast, vlo, vhi)                                                   \
    __extension__({                                                                                \
        v4sf t_ = (vis) * (xm) + 12582912.f, r_;                                                   \
        if (fast) {                                                                                \
            r_ = VMIN(VMAX(t_, (vlo)), (vhi)) - 12582912.f;                                        \
        } else {                                                                                   \
            v4si l_ = ((v4si)t_ & 0x007fffff) - 0x00400000;                                        \
            v4si neg_ = l_ < 0, big_ = l_ > (nmax);                                                \
            r_ = __builtin_convertvector((l_ & ~neg_ & ~big_) | (big_ & (nmax)), v4sf);            \
        }                                                                                          \
        r_;                                                                                        \
    })

/* Pass 1: the sums of every lane's codes (wi*l, wi*l*l, wi*l*x in that product order). */
static void qkx_batch_sums(int n, int nmax, const float *x, const float *wt, float min, int fast,
                           struct qkx_batch *b)
{
    v4sf vis[QKX_GROUPS], sl[QKX_GROUPS], sl2[QKX_GROUPS], sxl[QKX_GROUPS];
    const v4sf vlo = {12582912.f, 12582912.f, 12582912.f, 12582912.f}, vhi = vlo + (float)nmax;
    for (int g = 0; g < QKX_GROUPS; g++) {
        memcpy(&vis[g], b->is + 4 * g, sizeof vis[g]);
        sl[g] = sl2[g] = sxl[g] = (v4sf){0, 0, 0, 0};
    }
    for (int i = 0; i < n; ++i) {
        const float xm = x[i] - min;
        for (int g = 0; g < QKX_GROUPS; g++) {
            v4sf lf = QKX_CODES(vis[g], xm, nmax, fast, vlo, vhi), wl = wt[i] * lf;
            sl[g] += wl;
            sl2[g] += wl * lf;
            sxl[g] += wl * x[i];
        }
    }
    for (int g = 0; g < QKX_GROUPS; g++) {
        memcpy(b->sum_l + 4 * g, &sl[g], sizeof sl[g]);
        memcpy(b->sum_l2 + 4 * g, &sl2[g], sizeof sl2[g]);
        memcpy(b->sum_xl + 4 * g, &sxl[g], sizeof sxl[g]);
    }
}

/* Pass 2: each lane's weighted error with its fitted scale and min (lanes with D <= 0 are computed and
 * ignored). */
static void qkx_batch_errors(int n, int nmax, const float *x, const float *wt, float min, int use_mad, int fast,
                             struct qkx_batch *b)
{
    v4sf vis[QKX_GROUPS], sc[QKX_GROUPS], mn[QKX_GROUPS], er[QKX_GROUPS];
    const v4sf vlo = {12582912.f, 12582912.f, 12582912.f, 12582912.f}, vhi = vlo + (float)nmax;
    for (int g = 0; g < QKX_GROUPS; g++) {
        memcpy(&vis[g], b->is + 4 * g, sizeof vis[g]);
        memcpy(&sc[g], b->scale + 4 * g, sizeof sc[g]);
        memcpy(&mn[g], b->min + 4 * g, sizeof mn[g]);
        er[g] = (v4sf){0, 0, 0, 0};
    }
    for (int i = 0; i < n; ++i) {
        const float xm = x[i] - min;
        for (int g = 0; g < QKX_GROUPS; g++) {
            v4sf diff = sc[g] * QKX_CODES(vis[g], xm, nmax, fast, vlo, vhi) + mn[g] - x[i];
            if (use_mad) diff = (v4sf)((v4si)diff & 0x7fffffff); /* fabsf */
            else diff = diff * diff;
            er[g] += wt[i] * diff;
        }
    }
    for (int g = 0; g < QKX_GROUPS; g++) memcpy(b->err + 4 * g, &er[g], sizeof er[g]);
}

float alloy_make_qkx_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                            float rmin, float rdelta, int nstep, int use_mad, int x3)
{
    float wt[256];
    if (n < 1 || n > 256) return *the_min = 0, 0.f; /* callers pass 16 or 32 */
    for (int i = 0; i < n; ++i) wt[i] = w ? w[i] : x[i] * x[i];
    float min = x[0], max = x[0];
    float sum_w = wt[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += wt[i];
        sum_x += wt[i] * x[i];
    }
    if (min > 0) min = 0;
    if (x3 ? max <= min : max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min), code_min = min;
    float scale = 1 / iscale;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)clampi(alloy_nearest_int(iscale * (x[i] - min)), 0, nmax);
    float best_mad = qkx_error(n, x, wt, L, scale, min, use_mad);
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    int won = 0;
    /* Candidates is = 0..nstep in order; one that wins changes min, which the later ones use, so a batch is
     * scanned in order and the candidates after a winner are evaluated again in the next batch. */
    for (int is = 0; is <= nstep;) {
        struct qkx_batch b;
        int nb = nstep - is + 1 < QKX_LANES ? nstep - is + 1 : QKX_LANES, next = is + nb;
        for (int c = 0; c < QKX_LANES; c++) b.is[c] = (rmin + rdelta * (is + (c < nb ? c : 0)) + nmax) / (max - min);
        float span = 0, is_max = 0; /* the batch's largest |x - min| and |is| */
        for (int i = 0; i < n; ++i) span = fabsf(x[i] - min) > span ? fabsf(x[i] - min) : span;
        for (int c = 0; c < QKX_LANES; c++) is_max = fabsf(b.is[c]) > is_max ? fabsf(b.is[c]) : is_max;
        const int fast = span * is_max < 4000000.f; /* false for inf and NaN too */
        qkx_batch_sums(n, nmax, x, wt, min, fast, &b);
        for (int c = 0; c < QKX_LANES; c++) {
            float D = sum_w * b.sum_l2[c] - b.sum_l[c] * b.sum_l[c];
            b.scale[c] = D > 0 ? (sum_w * b.sum_xl[c] - sum_x * b.sum_l[c]) / D : 0;
            b.min[c] = D > 0 ? (b.sum_l2[c] * sum_x - b.sum_l[c] * b.sum_xl[c]) / D : 0;
            if (D > 0 && b.min[c] > 0) {
                b.min[c] = 0;
                b.scale[c] = b.sum_xl[c] / b.sum_l2[c];
            }
            b.err[c] = D > 0 ? 0 : -1; /* -1: no candidate */
        }
        float D_ok[QKX_LANES];
        memcpy(D_ok, b.err, sizeof D_ok);
        qkx_batch_errors(n, nmax, x, wt, min, use_mad, fast, &b);
        for (int c = 0; c < nb; c++) {
            if (D_ok[c] < 0 || !(b.err[c] < best_mad)) continue;
            best_mad = b.err[c];
            scale = b.scale[c];
            iscale = b.is[c];
            code_min = min;
            min = b.min[c];
            won = 1;
            next = is + c + 1;
            break;
        }
        is = next;
    }
    if (won) /* the last winner's codes, from the min it was evaluated with */
        for (int i = 0; i < n; ++i) L[i] = (uint8_t)clampi(alloy_nearest_int(iscale * (x[i] - code_min)), 0, nmax);
    *the_min = -min;
    return scale;
}

/* Sum of w*(x - scale*l)^2 over the codes min(nmax, nearest_int(iscale*x)). */
static float qp_error(int n, int nmax, const float *x, const float *w, float iscale)
{
    float scale = 1 / iscale, mse = 0;
    for (int i = 0; i < n; ++i) {
        int l = alloy_nearest_int(iscale * x[i]);
        if (l > nmax) l = nmax;
        float diff = x[i] - scale * l;
        mse += w[i] * diff * diff;
    }
    return mse;
}

float alloy_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *w)
{
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < ALLOY_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    float scale = 1 / iscale, best_mse = 0;
    for (int i = 0; i < n; ++i) { /* the first pass is not clamped to nmax */
        float diff = x[i] - scale * alloy_nearest_int(iscale * x[i]);
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float mse = qp_error(n, nmax, x, w, iscale_is);
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = alloy_nearest_int(iscale * x[i]);
        if (l > nmax) l = nmax;
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = alloy_nearest_int(x[i] * sl2 / slx);
                if (new_l > nmax) new_l = nmax;
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0 ? sumlx / suml2 : 0.f;
}
