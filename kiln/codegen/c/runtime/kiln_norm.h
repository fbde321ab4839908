/* kiln runtime: row kernels — softmax, log-softmax, layer norm — and local response norm.
 *
 * A row is L contiguous floats. Each kernel reads a whole row before writing any of it, and
 * writes element i only after its last read of element i, so y may equal x (in place).
 * Sums run in KILN_VLEN-wide partial sums (then a horizontal add): faster and no less accurate
 * than one serial float accumulator.
 */
#ifndef KILN_NORM_H
#define KILN_NORM_H

#include <math.h>
#include "kiln_math.h"

KILN_INLINE float kiln_row_max(const float* x, int L) {
    int i = 0;
    float m = -INFINITY;
    if (L >= KILN_VLEN) {
        kiln_vf vm = kiln_loadu(x);
        for (i = KILN_VLEN; i + KILN_VLEN <= L; i += KILN_VLEN) vm = kiln_vmax(vm, kiln_loadu(x + i));
        m = kiln_hmax(vm);
    }
    for (; i < L; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

KILN_INLINE float kiln_row_sum(const float* x, int L, float shift) {
    int i = 0;
    kiln_vf acc = kiln_splat(0.0f);
    for (; i + KILN_VLEN <= L; i += KILN_VLEN) acc += kiln_loadu(x + i) - shift;
    float s = kiln_hsum(acc);
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
    float s = kiln_hsum(acc);
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
