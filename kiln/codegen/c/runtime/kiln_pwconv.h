/* kiln runtime: pointwise convolutions (1x1, stride 1, no padding) straight from NCHW images,
 * with their epilogue applied as the results are stored.
 *
 *   y[n, co, p] = act(clamp(bias[co] + sum_k W[co, k] x[n, k, p] (+ res[n, co, p]), lo, hi))
 *
 * A 1x1 conv's implicit im2col matrix is the image itself (C rows of P pixels), so B needs no
 * gather: a register tile of KILN_MR output channels x KILN_PW_NV vectors of pixels reads each
 * vector straight from its image (the vectors of one tile may come from different images, so
 * 4x4 planes fill every lane and pay no call per image). The accumulators start at the bias;
 * the residual add, the clamp and hardswish are applied in registers before the one store, so
 * mobilenet's expand convs (hardswish) and projects (+ residual) need no epilogue tile and no
 * second pass over memory. The weights are kiln_gemm.h's packed A (KILN_MR-row panels, zero
 * rows past Cout), packed once at build time.
 *
 * With AVX-512 a vector's last pixels of a plane are a masked load and store; elsewhere
 * partial vectors go through a small buffer.
 */
#ifndef KILN_PWCONV_H
#define KILN_PWCONV_H

#include "kiln_gemm.h"

/* Pixel vectors per register tile: KILN_MR x 3 accumulators (24 of AVX-512's 32 registers
 * with MR = 8), 3 loads per 8 broadcasts and 24 FMAs. */
#define KILN_PW_NV 3

/* The activation after the clamp. */
enum { KILN_PW_NONE = 0, KILN_PW_HARDSWISH = 1 };

typedef struct {
    const float* x;     /* image n, channel k, pixel p at x[n * x_image + k * P + p] */
    ptrdiff_t x_image;
    const float* w;     /* (Cout, C) packed in KILN_MR-row panels */
    const float* bias;  /* Cout values or NULL */
    const float* res;   /* NULL, or added before the clamp: laid out as y */
    float* y;           /* image n, channel co, pixel p at y[n * y_image + co * ldy + p - p0] */
    ptrdiff_t y_image, ldy;
    int C, Cout, P;
    float lo, hi;       /* clamp bounds (-INFINITY / INFINITY for none) */
    int act;            /* KILN_PW_NONE or KILN_PW_HARDSWISH */
} kiln_pw_args;

/* Images [n0, n1), pixels [p0, p1) of each, every output channel. */
void kiln_pwconv(const kiln_pw_args* a, int n0, int n1, int p0, int p1);

#endif /* KILN_PWCONV_H */
