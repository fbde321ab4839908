/* kiln runtime: Winograd convolution F(m x m, 3 x 3), m = 2 or 4, for 3x3 stride-1 convs.
 *
 * A 3x3 convolution computes an m x m output tile from an (m+2) x (m+2) input patch d with
 * (m+2)^2 multiplies per channel pair instead of 9 m^2 (2.25x fewer for m = 2, 4x for m = 4):
 *
 *   Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
 *
 * Per (m+2)^2 "position" the channel sum is a GEMM: M[pos] (Cout x T) = U[pos] (Cout x Cin)
 * x V[pos] (Cin x T), T the number of tiles. U = G g G^T is computed by kiln's code generator
 * (packing.py: `winograd_weights`) and stored as (m+2)^2 packed A operands (MR-row panels,
 * K = Cin, kiln_gemm.h), so only the input transform (V), the GEMMs and the output transform
 * (with bias and clamp) run here. F(2,3) uses the points 0, 1, -1 (and infinity), F(4,3) also
 * 2, -2: the well-conditioned choices. Measured fp32 error (largest over the largest output,
 * random data): F(2,3) 2e-7 (16 channels) to 6e-7 (256), F(4,3) 4e-6 to 1.2e-5.
 *
 * Transform vectors run over 16 neighbouring tiles with AVX-512, else 8 (kiln_winograd_vec.h):
 * of a tile row, or of g tile rows of 4 (or 8) tiles at once, whose lanes would otherwise
 * idle. To make each patch element one contiguous load, `kiln_wg_pad` (kiln_winograd_pad.c)
 * copies the zero-padded image once per image into a phase-split layout: padded row Y,
 * column X lands at xs[((c*HS + Y)*m + X%m)*XS + X/m], so column j of the patches of tiles
 * tx..tx+7 is the vector at phase j%m, offset tx + j/m. The tiles are processed in chunks of
 * `rows` tile rows (transform, GEMMs, output transform while the chunk's V and M stay in
 * L2). Tiles past the right and bottom edges are computed from zero padding and not stored,
 * so any OH, OW and padding (0..2) work. Output tile rows go straight to y when they fill
 * whole output rows; otherwise through row buffers, then their valid pixels (partial tiles,
 * rows split by the caller's pixel range [n0, n1)). Bias and clamp are applied in registers
 * (only the finite bounds).
 */
#ifndef KILN_WINOGRAD_H
#define KILN_WINOGRAD_H

#include "kiln_conv.h"
#include "kiln_gemm.h"

#define KILN_WG_VL 8     /* floats per vector of the phase split (kiln_wg_pad) */
#define KILN_WG_SLACK 16 /* floats past buffers' rows: the widest transform vector */
#define KILN_WG_TH(s, m) (((s)->OH + (m) - 1) / (m))
#define KILN_WG_TW(s, m) (((s)->OW + (m) - 1) / (m))
/* The phase-split padded image: HS rows of m phases of XS floats per channel (the tiles
 * and the one after them), then KILN_WG_SLACK zeros: a row narrower than a vector reads its
 * unused lanes from the rows after it (junk, never stored). */
#define KILN_WG_HS(s, m) (KILN_WG_TH(s, m) * (m) + 2)
#define KILN_WG_XS(s, m) (KILN_WG_TW(s, m) + 1)
#define KILN_WG_IMAGE(s, m) \
    ((size_t)(s)->C * KILN_WG_HS(s, m) * (m) * KILN_WG_XS(s, m) + KILN_WG_SLACK)

/* Floats of `kiln_wg_pad`'s output: KILN_WG_IMAGE. */
size_t kiln_wg_image_floats(const kiln_conv_shape* s, int m);
/* Floats of per-thread scratch `kiln_winograd_conv` needs for M output channels and chunks
 * of `rows` tile rows (V and M of one chunk, the output rows of four tile rows). */
size_t kiln_wg_scratch_floats(const kiln_conv_shape* s, int m, int M, int rows);

/* The image x (C x H x W) zero-padded (pt rows on top, pl columns on the left) and
 * phase-split into xs (KILN_WG_IMAGE floats; see above). */
void kiln_wg_pad(const float* x, const kiln_conv_shape* s, int m, float* xs);

/* Pixel columns [n0, n1) of y (which points at pixel n0; rows `ldy` floats apart) for all M
 * output channels: U the transformed packed weights, bias (M values or NULL), clamped to
 * [lo, hi]. Requires KH = KW = 3, stride 1, dilation 1. */
void kiln_winograd_conv(const float* xs, const kiln_conv_shape* s, int m, const float* U,
                        int M, const float* bias, float* y, ptrdiff_t ldy, int n0, int n1,
                        float lo, float hi, int rows, float* scratch);

#endif /* KILN_WINOGRAD_H */
