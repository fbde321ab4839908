/* kiln runtime: elementwise math, scalar and vector.
 *
 * The scalar functions are branch-free (selects, not jumps) and read float bits through
 * memcpy, so GCC vectorizes loops that call them; generated epilogues use them element by
 * element. The `_vf` versions take a whole kiln_vf and serve the hand-vectorized kernels
 * (softmax, layer norm). exp and log are Cephes-style range reduction + minimax polynomial,
 * within 2 ulp of libm over the float range; erf/tanh are within a few 1e-7 relative.
 * NaN propagates like PyTorch's CPU kernels (relu(NaN) = NaN, max(NaN, x) = NaN).
 */
#ifndef KILN_MATH_H
#define KILN_MATH_H

#include <math.h>
#include "kiln_vec.h"

KILN_INLINE uint32_t kiln_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
KILN_INLINE float kiln_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

#define KILN_EXP_HI 88.72283935546875f
#define KILN_EXP_LO -103.972076416015625f
#define KILN_LOG2E 1.44269504088896341f
#define KILN_LN2_HI 0.693359375f
#define KILN_LN2_LO -2.12194440e-4f
#define KILN_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */
#define KILN_ROUND_BITS 0x4B400000u

/* y * 2^n for n in [-252, 254], applied as two normal factors one after the other (2^n
 * itself may not be a float). */
KILN_INLINE float kiln_ldexpf(float y, int32_t n) {
    int32_t n1 = n / 2, n2 = n - n1;
    return y * kiln_u2f((uint32_t)(n1 + 127) << 23) * kiln_u2f((uint32_t)(n2 + 127) << 23);
}

KILN_INLINE float kiln_exp_poly(float r) {
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * z + r + 1.0f;
}

/* e^x: n = round(x / ln 2), r = x - n ln 2 (Cody-Waite), e^x = P(r) * 2^n. */
KILN_INLINE float kiln_expf(float x) {
    float c = x < KILN_EXP_LO ? KILN_EXP_LO : (x > KILN_EXP_HI ? KILN_EXP_HI : x);
    float t = c * KILN_LOG2E + KILN_ROUND_MAGIC;
    int32_t n = (int32_t)(kiln_f2u(t) - KILN_ROUND_BITS);
    float fn = t - KILN_ROUND_MAGIC;
    float r = c - fn * KILN_LN2_HI - fn * KILN_LN2_LO;
    float y = kiln_ldexpf(kiln_exp_poly(r), n);
    y = x > KILN_EXP_HI ? INFINITY : y;
    y = x < KILN_EXP_LO ? 0.0f : y;
    return x != x ? x : y;
}

/* log x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log x = log1p(m - 1) + e ln 2. */
KILN_INLINE float kiln_logf(float x) {
    int tiny = x < 1.17549435e-38f;
    float s = tiny ? x * 8388608.0f : x; /* denormals: scale by 2^23 first */
    uint32_t u = kiln_f2u(s);
    int32_t e = (int32_t)((u >> 23) & 0xffu) - 126 - (tiny ? 23 : 0);
    float m = kiln_u2f((u & 0x007fffffu) | 0x3f000000u); /* in [0.5, 1) */
    int small = m < 0.707106781186547524f;
    e -= small;
    m = (small ? m + m : m) - 1.0f;
    float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    float fe = (float)e;
    float y = p * m * z + fe * KILN_LN2_LO - 0.5f * z;
    y = m + y + fe * KILN_LN2_HI;
    y = x == INFINITY ? x : y;
    y = x == 0.0f ? -INFINITY : y;
    y = x < 0.0f ? NAN : y;
    return x != x ? x : y;
}

KILN_INLINE float kiln_tanhf(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    float big = 1.0f - 2.0f / (kiln_expf(a + a) + 1.0f);
    big = x < 0.0f ? -big : big;
    return a < 0.625f ? small : big;
}

/* erfc(a) for a >= 0: Numerical Recipes' erfcc (1.2e-7 relative), no cancellation. */
KILN_INLINE float kiln_erfc_posf(float a) {
    float t = 1.0f / (1.0f + 0.5f * a);
    float q = 0.17087277f;
    q = q * t - 0.82215223f;
    q = q * t + 1.48851587f;
    q = q * t - 1.13520398f;
    q = q * t + 0.27886807f;
    q = q * t - 0.18628806f;
    q = q * t + 0.09678418f;
    q = q * t + 0.37409196f;
    q = q * t + 1.00002368f;
    return t * kiln_expf(q * t - a * a - 1.26551223f);
}
/* erf: Taylor series below 0.5, 1 - erfc (Numerical Recipes' erfcc, 1.2e-7 relative) above. */
KILN_INLINE float kiln_erff(float x) {
    float a = fabsf(x);
    float z = x * x;
    float s = -1.0f / 1320.0f;
    s = s * z + 1.0f / 216.0f;
    s = s * z - 1.0f / 42.0f;
    s = s * z + 1.0f / 10.0f;
    s = s * z - 1.0f / 3.0f;
    float small = (s * z + 1.0f) * x * 1.12837916709551257f;
    float big = 1.0f - kiln_erfc_posf(a); /* a * a == z exactly */
    big = x < 0.0f ? -big : big;
    return a < 0.5f ? small : big;
}

KILN_INLINE float kiln_relu(float x) { return x < 0.0f ? 0.0f : x; }
KILN_INLINE float kiln_clampf(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}
KILN_INLINE float kiln_relu6(float x) { return kiln_clampf(x, 0.0f, 6.0f); }
KILN_INLINE float kiln_leaky_reluf(float x, float slope) { return x >= 0.0f ? x : x * slope; }
KILN_INLINE float kiln_sigmoidf(float x) { return 1.0f / (1.0f + kiln_expf(-x)); }
KILN_INLINE float kiln_siluf(float x) { return x * kiln_sigmoidf(x); }
KILN_INLINE float kiln_hardsigmoidf(float x) { return kiln_clampf(x / 6.0f + 0.5f, 0.0f, 1.0f); }
KILN_INLINE float kiln_hardswishf(float x) { return x * kiln_clampf(x + 3.0f, 0.0f, 6.0f) / 6.0f; }
/* gelu(x) = x/2 (1 + erf(x/sqrt 2)) = x/2 erfc(-x/sqrt 2), with e = erfc(|x|/sqrt 2): x/2 e
 * for x < 0, x/2 (2 - e) otherwise. Neither side cancels (2 - e lies in [1, 2]), so no
 * switch to erf's Taylor series near 0 is needed, and the negative tail keeps its relative
 * accuracy (1 + erf cancels there: 4% off at x = -4.8). One erfc (a division and an exp) per
 * element: a vectorized loop computes both sides of every select, so branches would cost. */
KILN_INLINE float kiln_geluf(float x) {
    float e = kiln_erfc_posf(fabsf(x * 0.707106781186547524f));
    return 0.5f * x * (x < 0.0f ? e : 2.0f - e);
}
KILN_INLINE float kiln_gelu_tanhf(float x) {
    return 0.5f * x * (1.0f + kiln_tanhf(0.797884560802865356f * (x + 0.044715f * x * x * x)));
}
/* maximum/minimum where NaN wins (numpy.maximum semantics). */
KILN_INLINE float kiln_maxf(float a, float b) { return (a > b || a != a) ? a : b; }
KILN_INLINE float kiln_minf(float a, float b) { return (a < b || a != a) ? a : b; }
KILN_INLINE float kiln_powf(float a, float b) { return powf(a, b); }
KILN_INLINE float kiln_rsqrtf(float x) { return 1.0f / sqrtf(x); }
KILN_INLINE float kiln_batch_normf(float x, float scale, float bias, float mean, float var,
                                   float eps) {
    return (x - mean) / sqrtf(var + eps) * scale + bias;
}

/* ---- vector versions for hand-vectorized kernels ---------------------------------------- */

KILN_INLINE kiln_vf kiln_exp_vf(kiln_vf x) {
    kiln_vf c = kiln_vmin(kiln_vmax(x, kiln_splat(KILN_EXP_LO)), kiln_splat(KILN_EXP_HI));
    kiln_vf t = c * KILN_LOG2E + KILN_ROUND_MAGIC;
    kiln_vi n = (kiln_vi)t - (kiln_vi)kiln_splat(KILN_ROUND_MAGIC);
    kiln_vf fn = t - KILN_ROUND_MAGIC;
    kiln_vf r = c - fn * KILN_LN2_HI - fn * KILN_LN2_LO;
    kiln_vf z = r * r;
    kiln_vf p = kiln_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    kiln_vi n1 = n / 2, n2 = n - n1;
    kiln_vf y = p * (kiln_vf)((n1 + 127) << 23) * (kiln_vf)((n2 + 127) << 23);
    y = kiln_select(x > KILN_EXP_HI, kiln_splat(INFINITY), y);
    y = kiln_select(x < KILN_EXP_LO, kiln_splat(0.0f), y);
    return kiln_select(x != x, x, y);
}

#endif /* KILN_MATH_H */
