/* kiln runtime: convolution helpers (NCHW activations, OIHW weights, one image at a time).
 *
 * A general convolution is an implicit GEMM: `kiln_im2col` lays the receptive fields of one
 * image out as a (C*KH*KW) x (OH*OW) matrix, and the GEMM multiplies the packed weights by it.
 * Depthwise convolutions (one filter per channel) and layers with few taps per output run
 * directly (`kiln_conv2d_direct`): there is little or no reduction to feed a GEMM, and im2col
 * would cost more than the arithmetic. Transposed convolutions gather directly as well.
 * A 1-D convolution is the 2-D one with H = KH = 1.
 */
#ifndef KILN_CONV_H
#define KILN_CONV_H

#include "kiln_vec.h"

typedef struct {
    int C, H, W;        /* input channels (per group for im2col), height, width */
    int KH, KW;         /* kernel */
    int sh, sw;         /* stride */
    int pt, pl;         /* padding at the top and left (bottom/right follow from OH, OW) */
    int dh, dw;         /* dilation */
    int OH, OW;         /* output size */
} kiln_conv_shape;

/* col[(c*KH + ky)*KW + kx][oy*OW + ox] = x[c][oy*sh - pt + ky*dh][ox*sw - pl + kx*dw] or 0,
 * rows `ld` >= OH*OW floats apart (the columns past OH*OW are zeroed: a GEMM may read them). */
void kiln_im2col(const float* x, const kiln_conv_shape* s, float* col, int ld);

/* Direct convolution: output channels [c0, c1) of y (which points at channel c0) from x (the
 * whole image, all s->C channels), weight (Cout, C/groups, KH, KW), optional bias, clamped to
 * [lo, hi] — for depthwise convolutions and layers with few taps (Cin*KH*KW small), where an
 * im2col would cost more than the arithmetic. With stride 1 and `xp` (the image padded by
 * kiln_conv_pad) every tap is one long vector sweep over a grid as wide as the padded rows,
 * accumulated in `acc` (KILN_DIRECT_ACC(s) floats); otherwise (xp NULL, or strided) each tap
 * sweeps the output rows of x. */
void kiln_conv2d_direct(const float* x, const float* xp, const float* w, const float* bias,
                        float* y, int c0, int c1, int Cout, int groups,
                        const kiln_conv_shape* s, float lo, float hi, float* acc);

/* The padded planes of a stride-1 direct convolution: KILN_DIRECT_ROWS(s) + 1 rows (one of
 * slack for the last taps) of KILN_DIRECT_PITCH(s) floats per channel, zero outside x. */
#define KILN_DIRECT_PITCH(s) ((s)->OW + ((s)->KW - 1) * (s)->dw)
#define KILN_DIRECT_ROWS(s) ((s)->OH + ((s)->KH - 1) * (s)->dh)
#define KILN_DIRECT_PADDED(s) ((size_t)(s)->C * (KILN_DIRECT_ROWS(s) + 1) * KILN_DIRECT_PITCH(s))
#define KILN_DIRECT_ACC(s) ((size_t)(s)->OH * KILN_DIRECT_PITCH(s))
void kiln_conv_pad(const float* x, const kiln_conv_shape* s, float* xp);

/* Depthwise (groups = C = Cout): kiln_conv2d_direct with one input channel per output. */
void kiln_dwconv2d(const float* x, const float* w, const float* bias, float* y,
                   int c0, int c1, const kiln_conv_shape* s, float lo, float hi);

/* Transposed convolution of one image, gathered: y[co][oy][ox] sums x[ci][iy][ix] w[ci][co'][ky][kx]
 * over oy = iy*sh - pt + ky*dh (same for x). `s` describes the *output* as OH x OW and the
 * input as C x H x W (C = all input channels); weight is (C, Cout/groups, KH, KW). */
void kiln_conv_transpose2d(const float* x, const float* w, const float* bias, float* y,
                           int Cout, int groups, const kiln_conv_shape* s);

#endif /* KILN_CONV_H */
