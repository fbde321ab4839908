/* kiln runtime: row kernels — softmax, log-softmax, layer norm — and local response norm.
 *
 * A row is L contiguous floats. Each kernel reads a whole row before writing any of it, and
 * writes element i only after its last read of element i, so y may equal x (in place).
 * Sums run in KILN_VLEN-wide partial sums (then a butterfly across the lanes): faster and no
 * less accurate than one serial float accumulator.
 */
#ifndef KILN_NORM_H
#define KILN_NORM_H

#include <math.h>
#include "kiln_math.h"

/* Lane indices 0..KILN_VLEN-1, for the butterfly masks below. */
#if KILN_VLEN == 16
#define KILN_NORM_LANES {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#elif KILN_VLEN == 8
#define KILN_NORM_LANES {0, 1, 2, 3, 4, 5, 6, 7}
#else
#define KILN_NORM_LANES {0, 1, 2, 3}
#endif

/* Sum / max of a vector's lanes, broadcast to every lane: log2(KILN_VLEN) butterfly steps
 * (lane i meets lane i ^ w), a short dependency chain where a lane-by-lane scalar reduction is
 * KILN_VLEN serial adds — the cost that dominates a row of 16 floats. */
KILN_INLINE kiln_vf kiln_allsum(kiln_vf v) {
    const kiln_vi lanes = KILN_NORM_LANES;
    for (int w = KILN_VLEN / 2; w >= 1; w /= 2) v += __builtin_shuffle(v, lanes ^ w);
    return v;
}

KILN_INLINE kiln_vf kiln_allmax(kiln_vf v) {
    const kiln_vi lanes = KILN_NORM_LANES;
    for (int w = KILN_VLEN / 2; w >= 1; w /= 2) v = kiln_vmax(v, __builtin_shuffle(v, lanes ^ w));
    return v;
}

KILN_INLINE float kiln_row_max(const float* x, int L) {
    int i = 0;
    float m = -INFINITY;
    if (L >= KILN_VLEN) {
        kiln_vf vm = kiln_loadu(x);
        for (i = KILN_VLEN; i + KILN_VLEN <= L; i += KILN_VLEN) vm = kiln_vmax(vm, kiln_loadu(x + i));
        m = kiln_allmax(vm)[0];
    }
    for (; i < L; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

KILN_INLINE float kiln_row_sum(const float* x, int L, float shift) {
    int i = 0;
    kiln_vf acc = kiln_splat(0.0f);
    for (; i + KILN_VLEN <= L; i += KILN_VLEN) acc += kiln_loadu(x + i) - shift;
    float s = kiln_allsum(acc)[0];
    for (; i < L; ++i) s += x[i] - shift;
    return s;
}

/* sum_i (x_i - mean)^2 */
KILN_INLINE float kiln_row_sqdev(const float* x, int L, float mean) {
    int i = 0;
    kiln_vf acc = kiln_splat(0.0f);
    for (; i + KILN_VLEN <= L; i += KILN_VLEN) {
        kiln_vf d = kiln_loadu(x + i) - mean;
        acc += d * d;
    }
    float s = kiln_allsum(acc)[0];
    for (; i < L; ++i) s += (x[i] - mean) * (x[i] - mean);
    return s;
}

/* y = exp(x - max) / sum, or (log_mode) y = x - max - log(sum). */
void kiln_softmax_rows(const float* x, float* y, int rows, int L, int log_mode);

/* y = (x - mean) / sqrt(var + eps) * w + b over each row (w, b: L values or NULL). */
void kiln_layer_norm_rows(const float* x, const float* w, const float* b, float* y,
                          int rows, int L, float eps);

/* Local response norm over channels: x / (k + alpha * mean over the window of x^2) ^ beta,
 * the window of channel c being [c - size/2, c + (size-1)/2]. Not in place. */
void kiln_lrn(const float* x, float* y, int N, int C, int S, int size, float alpha,
              float beta, float k);

#endif /* KILN_NORM_H */
