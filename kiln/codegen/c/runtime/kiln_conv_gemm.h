/* kiln runtime: convolution as an implicit GEMM with B packed on the fly.
 *
 *   y[m][p] = clamp(sum_k A(m, k) col(k, p) + bias[m], lo, hi)
 *
 * where col is the im2col matrix of one image (k = (c*KH + ky)*KW + kx, p = oy*OW + ox; see
 * kiln_im2col) and A the (M x K) weight packed in MR-row panels (kiln_gemm.h). The im2col
 * matrix is never built: for each NR-pixel panel and each block of `kc` rows of K, the
 * receptive fields are gathered into a small k-major panel (kc x NR floats, sized by kiln's
 * code generator to stay in L1), and every MR-panel of A runs over it, so B comes from L1
 * and each gathered value is used M times before it is evicted. Each panel row is one copy
 * per output row the panel spans (one copy in all for a 1x1, stride-1, unpadded layer),
 * strided with stride > 1, from the image zero-padded once up front (no bounds checks).
 */
#ifndef KILN_CONV_GEMM_H
#define KILN_CONV_GEMM_H

#include "kiln_conv.h"
#include "kiln_gemm.h"

/* The gather reads the image zero-padded to KILN_CG_HP x KILN_CG_WP per channel (pt rows on
 * top, pl columns on the left, as many at the bottom/right as the last taps reach), so it
 * needs no bounds checks: `kiln_conv_gemm_pad` makes that copy of `channels` channels, once
 * per image. When KILN_CG_PADDED(s) is 0 the image itself has that shape and is read as is. */
#define KILN_CG_SPAN(o, st, k, d) (((o) - 1) * (st) + ((k) - 1) * (d) + 1)
#define KILN_CG_HP(s) \
    kiln_imax((s)->H + (s)->pt, KILN_CG_SPAN((s)->OH, (s)->sh, (s)->KH, (s)->dh))
#define KILN_CG_WP(s) \
    kiln_imax((s)->W + (s)->pl, KILN_CG_SPAN((s)->OW, (s)->sw, (s)->KW, (s)->dw))
#define KILN_CG_PADDED(s) \
    ((s)->pt || (s)->pl || KILN_CG_HP(s) > (s)->H || KILN_CG_WP(s) > (s)->W)
void kiln_conv_gemm_pad(const float* x, const kiln_conv_shape* s, int channels, float* xp);

/* Rows [k0, k0+kc) x pixel columns [j, j+nc) of the implicit im2col matrix of the padded
 * image xp, as one k-major panel: bp[(k - k0) * KILN_GEMM_PANEL(nc) + (p - j)], columns
 * past nc zeroed (kiln_gemm.h). */
void kiln_conv_pack_panel(const float* xp, const kiln_conv_shape* s, int j, int nc, int k0,
                          int kc, float* bp);

/* Pixel columns [n0, n1) of y (which points at column n0; rows `ldy` floats apart) for all M
 * output channels of the padded image xp: A packed (MR panels, K = C*KH*KW), bias (M values
 * or NULL), blocks of at most `kc` rows of K, `panel` scratch of kc * KILN_NR floats. */
void kiln_conv_gemm(const float* xp, const kiln_conv_shape* s, const float* A, int M,
                    const float* bias, float* y, ptrdiff_t ldy, int n0, int n1, float lo,
                    float hi, int kc, float* panel);

/* The "wide grid" scheme, with no gather at all: pixels are located on a grid,
 * q = oy*GW + ox, where row k = (c, ky, kx) of the implicit im2col matrix is contiguous in xp,
 * at a per-k offset. With stride 1 the grid is the padded image itself (GW = WP, offset
 * c*HP*WP + ky*dh*WP + kx*dw). With stride > 1 (dilation 1) the padded image is split into
 * phases: phase (py, px) holds padded rows py, py+sh, ... and columns px, px+sw, ..., so tap
 * (ky, kx) of output (oy, ox), padded (oy*sh + ky, ox*sw + kx), is phase (ky%sh, kx%sw) at
 * (oy + ky/sh, ox + kx/sw): again one grid position plus a per-k offset (a stride-2 3x3 conv
 * reads 4 phase planes of a quarter of the image each). The phase split is one pass over the
 * image, where the gather copied it KH*KW times. A tile is MR output channels x two vectors
 * of up to NR/2 consecutive output pixels each; the micro-kernel keeps it in registers over
 * all of K and loads each B row vector straight from xp through that per-k offset table: one
 * load when the vector's pixels are one run of the grid (a wide plane), else two loads and
 * one two-source shuffle that drops the GW - OW padding columns between output rows (small
 * planes: an 8x8 output on a 10-wide grid), so no lane computes a junk column. A vector holds
 * at most as many pixels as span 2 * NR/2 grid columns. Bias and clamp on store, straight to
 * y. Loads run up to NR floats past the last padded image: xp comes from
 * `kiln_conv_gemm_pad_wide`, which pads (and phase-splits) and zeroes KILN_CG_WIDE_SLACK
 * floats after it. K is at most KILN_CG_WIDE_MAXK (the offset table lives on the stack),
 * strides at most KILN_CG_WIDE_MAX_STRIDE, and a strided conv has dilation 1: anything else
 * traps (a code generator bug, never a silent no-op). `kiln_conv_gemm_wide` takes the
 * arguments of kiln_conv_gemm, less the panel. */
/* The grid: KILN_CG_PY x KILN_CG_PX phases (the tap rows and columns that occur modulo the
 * stride) of KILN_CG_GH rows of KILN_CG_GW floats per channel (1 x 1 phase of HP x WP for
 * stride 1). */
#define KILN_CG_PY(s) kiln_imin((s)->sh, (s)->KH)
#define KILN_CG_PX(s) kiln_imin((s)->sw, (s)->KW)
#define KILN_CG_GH(s) ((KILN_CG_HP(s) + (s)->sh - 1) / (s)->sh)
#define KILN_CG_GW(s) ((KILN_CG_WP(s) + (s)->sw - 1) / (s)->sw)
#define KILN_CG_GRID(s) \
    ((size_t)KILN_CG_PY(s) * KILN_CG_PX(s) * KILN_CG_GH(s) * KILN_CG_GW(s))
#define KILN_CG_WIDE_SLACK KILN_NR
#define KILN_CG_WIDE_MAXK 4096
#define KILN_CG_WIDE_MAX_STRIDE 4
void kiln_conv_gemm_pad_wide(const float* x, const kiln_conv_shape* s, int channels,
                             float* xp);
void kiln_conv_gemm_wide(const float* xp, const kiln_conv_shape* s, const float* A, int M,
                         const float* bias, float* y, ptrdiff_t ldy, int n0, int n1, float lo,
                         float hi);

/* The wide scheme over `images` whole images: x and y are the first NCHW image and output
 * (C*H*W and M*OH*OW floats per image), every pixel of every image. Images are padded
 * KILN_CG_WIDE_GROUP at a time into xp (KILN_CG_WIDE_BATCH_FLOATS(s) floats, one call's
 * scratch) and their vectors taken in one sequence, so a tile pairs the last vector of one
 * image with the first of the next: an odd number of vectors per image (a 4x4 or 10x10
 * output: 1 or 7 vectors of 16) wastes no half tile, and the call, offset table and loop
 * set-up are paid once per batch, not per image. */
#define KILN_CG_WIDE_GROUP 2
#define KILN_CG_WIDE_BATCH_FLOATS(s) \
    ((size_t)KILN_CG_WIDE_GROUP * (s)->C * KILN_CG_GRID(s) + KILN_CG_WIDE_SLACK)
void kiln_conv_gemm_wide_batch(const float* x, const kiln_conv_shape* s, const float* A,
                               int M, const float* bias, float* y, int images, float lo,
                               float hi, float* xp);

#endif /* KILN_CONV_GEMM_H */
