/* kiln runtime: direct convolution over padded lines, for depthwise convolutions and layers
 * with few taps per output (kiln_conv.h says when the code generator picks it).
 *
 * Each input channel a block needs is copied once into "lines": every input row, zero-padded
 * left and right and split into `sw` phases (phase p holds padded columns p, p + sw, ...), so
 * the tap kx of an output vector is one contiguous unaligned load whatever the stride, and the
 * left/right borders cost nothing; taps on rows above and below the image read a zero line.
 * Accumulators are vectors along the output width (KILN_VLEN lanes), for up to four output
 * channels (a group's channels share every loaded input vector) and up to four output rows;
 * bias and the clamp (relu, relu6) — and with kiln_dwconv_act hardswish, so MobileNet's
 * depthwise layers need no second pass for it — are applied as the results are stored. 3x3
 * and 5x5 kernels at stride 1 and 2 (no dilation) have specialised loops with compile-time
 * sizes; everything else takes the generic loop.
 *
 * With AVX-512, depthwise layers and planes narrower than a vector take the flat path
 * instead (kiln_dwconv.c): the output plane as one flat array, 16 values per vector across
 * rows, each tap a masked load straight from the input (stride 1, OW == W) or from its
 * stride-2 phase, so small planes (8x8, 4x4) leave no lane idle and stride 1 copies nothing.
 */
#ifndef KILN_DWCONV_H
#define KILN_DWCONV_H

#include "kiln_conv.h"

/* Strides along the width up to this run here; wider ones take kiln_conv2d_direct. */
#define KILN_DW_MAX_STRIDE 4

/* Floats per phase of a line: the output width rounded up to 16 (the widest vector, so the
 * code generator can size the scratch without knowing the machine) plus the kernel's reach. */
#define KILN_DW_PHASE(s) (((s)->OW + 15) / 16 * 16 + ((s)->KW - 1) * (s)->dw / (s)->sw + 1)
#define KILN_DW_LINE(s) ((size_t)(s)->sw * KILN_DW_PHASE(s))
/* Scratch (floats) for kiln_dwconv: the lines of one group's input channels, a zero line
 * that the taps above and below the image read, and the padded rows of one plane (stride 2)
 * with vector slack; plus, for the flat path (AVX-512, kiln_dwconv.c), the 4 stride-2 phases
 * (ceil(H/2) rows of OW) of the cin_g input planes of up to 4 groups. */
#define KILN_DW_LINES_SCRATCH(s, cin_g) \
    (((size_t)(cin_g) * (s)->H + 1 + (s)->H) * KILN_DW_LINE(s) + 32)
#define KILN_DW_SCRATCH(s, cin_g) \
    (KILN_DW_LINES_SCRATCH(s, cin_g) + (size_t)16 * (cin_g) * (((s)->H + 1) / 2) * (s)->OW)

/* Output channels [c0, c1) of y (y points at channel c0) from the whole image x (s->C
 * channels), weight (Cout, C/groups, KH, KW), optional bias, clamped to [lo, hi]; `lines`
 * holds KILN_DW_SCRATCH(s, C/groups) floats. Any padding and dilation, strides up to
 * KILN_DW_MAX_STRIDE along the width (the code generator sends wider ones elsewhere). */
void kiln_dwconv(const float* x, const float* w, const float* bias, float* y, int c0, int c1,
                 int Cout, int groups, const kiln_conv_shape* s, float lo, float hi,
                 float* lines);

/* The activation kiln_dwconv_act applies after the clamp, as it stores (no second pass). */
enum { KILN_DW_NONE = 0, KILN_DW_HARDSWISH = 1 };

/* kiln_dwconv, then `act` on every stored value. */
void kiln_dwconv_act(const float* x, const float* w, const float* bias, float* y, int c0,
                     int c1, int Cout, int groups, const kiln_conv_shape* s, float lo, float hi,
                     int act, float* lines);

#endif /* KILN_DWCONV_H */
