/* kiln runtime: single-precision GEMM with a register-blocked micro-kernel.
 *
 *   C[m, n] = clamp(sum_k A[m, k] B[k, n] + bias_row[m] + bias_col[n], lo, hi)
 *
 * The micro-kernel keeps an MR x NR tile of C in registers (NR = two vectors) and, for each k,
 * broadcasts MR values of A and loads one NR-wide row of B: MR * 2 fused multiply-adds per
 * 2 loads. Either operand may be packed, which is how weights are stored (packed once, at
 * build time, by kiln's Python `pack_panels`, the same layout as `kiln_pack_panels` here):
 *
 *   A packed: MR-row panels; panel p holds rows p*MR.. for every k, MR values per k:
 *             A[(p * K + k) * MR + r] = A(p*MR + r, k)                (rows past M are 0)
 *   B packed: NR-column panels; panel q holds columns q*NR..:
 *             B[(q * K + k) * NR + c] = B(k, q*NR + c)                (columns past N are 0)
 *
 * Unpacked operands are strided (A(m, k) = A[m*lda + k], B(k, n) = B[k*ldb + n]); a strided B
 * is read NR or NR/2 columns at a time, and a last sliver of fewer than NR/2 columns by a scalar
 * kernel, so no load ever leaves the matrix — unless `b_padded` says its rows may be read past
 * N up to a multiple of NR/2 (an im2col buffer laid out so), when whole vectors are read and
 * only the N columns stored. KILN_MR and KILN_NR are chosen by kiln's code
 * generator for the target machine (defaults below); any values run correctly anywhere.
 */
#ifndef KILN_GEMM_H
#define KILN_GEMM_H

#include "kiln_vec.h"

#if defined(__has_include)
#if __has_include("kiln_config.h")
#include "kiln_config.h" /* KILN_MR / KILN_NR chosen by kiln for the target machine */
#endif
#endif

#ifndef KILN_NR
#define KILN_NR (2 * KILN_VLEN)
#endif
#ifndef KILN_MR
#if KILN_VLEN >= 16
#define KILN_MR 8
#elif KILN_VLEN >= 8
#define KILN_MR 6
#else
#define KILN_MR 4
#endif
#endif
#if KILN_MR < 1 || KILN_MR > 8 || KILN_NR % 2 != 0
#error "kiln_gemm.h: KILN_MR must be in 1..8 and KILN_NR even"
#endif

typedef struct {
    int M, N, K;
    const float* A; ptrdiff_t lda; int a_packed;
    const float* B; ptrdiff_t ldb; int b_packed;
    int b_padded;          /* strided B whose rows are readable up to N rounded up to NR/2 */
    float* C; ptrdiff_t ldc;
    const float* bias_row; /* M values or NULL */
    const float* bias_col; /* N values or NULL */
    float lo, hi;          /* clamp bounds: -INFINITY/INFINITY for none, 0/INFINITY for relu */
} kiln_gemm_args;

/* Pack rows of a row-major (rows x K) matrix into `width`-row panels (see the layout above).
 * With width = MR it packs A; applied to the transposed B (N x K, e.g. a linear layer's
 * (out, in) weight) with width = NR it packs B. */
void kiln_pack_panels(const float* src, int rows, int K, int width, float* dst);

/* Rows [m0, m1) x columns [n0, n1) of C. With a packed A, m0 is a multiple of KILN_MR; with a
 * packed B, n0 is a multiple of KILN_NR. */
void kiln_sgemm(const kiln_gemm_args* g, int m0, int m1, int n0, int n1);

/* All rows of a packed A (M rows, K per row: MR-row panels as above) over k in [k0, k0+kc),
 * times one packed B panel `bp` (kc rows, k-major, zero past `nc`) into C[0:M, 0:nc]: the
 * inner step of a GEMM whose B is packed on the fly (kiln_conv_gemm.h). The panel's rows are
 * KILN_GEMM_PANEL(nc) floats: NR, or NR/2 for a narrow last panel (nc <= NR/2), which then
 * costs half the FMAs. `load_c` accumulates onto C (a later block of K); bias_row (NULL:
 * none) is added and the result clamped to [lo, hi] as the tile is stored — give them only
 * with the last block. */
#define KILN_GEMM_PANEL(nc) ((nc) > KILN_NR / 2 ? KILN_NR : KILN_NR / 2)
void kiln_sgemm_bpanel(const float* A, int M, int K, int k0, int kc, const float* bp, float* C,
                       ptrdiff_t ldc, int nc, int load_c, const float* bias_row, float lo,
                       float hi);

#endif /* KILN_GEMM_H */
