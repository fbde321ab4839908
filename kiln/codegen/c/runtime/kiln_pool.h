/* kiln runtime: 2-D pooling over NCHW planes (1-D pooling is the H = 1 case).
 *
 * Semantics follow PyTorch (and kiln's reference ops): max pooling ignores padding (it pads
 * with -inf) and lets NaN win; average pooling divides by PyTorch's count — with
 * count_include_pad the window counts padded positions but not the part past the end padding,
 * without it only input positions; adaptive pooling uses bins [floor(i*S/O), ceil((i+1)*S/O)).
 */
#ifndef KILN_POOL_H
#define KILN_POOL_H

#include <math.h>
#include "kiln_vec.h"

typedef struct {
    int H, W, KH, KW, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW;
} kiln_pool_shape;

void kiln_maxpool2d(const float* x, float* y, int planes, const kiln_pool_shape* s);

/* 2x2 windows, stride 2, no padding (LeNet's and most CNNs' pools), inline so that the
 * generated code, which calls it with literal sizes, gets a copy specialised for them.
 *
 * A block of N outputs of one output row: four loads (2N columns of both input rows), the
 * vertical max, then the horizontal one between the even and the odd columns (two shuffles).
 * Rows wider than a block end with one more block aligned to the row's end, overlapping the
 * last full one (pooling twice is harmless), so no row has a scalar tail unless it is narrower
 * than 4. No branch depends on the data: LeNet-5's two pools took 1.8 and 1.1 us as scalar
 * compare-and-select loops, 0.5 and 0.4 us in blocks (AVX-512). NaN wins every comparison,
 * as in torch. Requires 2*OH <= H and 2*OW <= W. */
typedef float kiln_pool_v4 __attribute__((vector_size(16), aligned(4), may_alias));
typedef float kiln_pool_v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef float kiln_pool_v16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t kiln_pool_i4 __attribute__((vector_size(16)));
typedef int32_t kiln_pool_i8 __attribute__((vector_size(32)));
typedef int32_t kiln_pool_i16 __attribute__((vector_size(64)));

#define KILN_POOL_MAX2X2_BLOCK(N, EVEN)                                                    \
    KILN_INLINE kiln_pool_v##N kiln_pool_nanmax_##N(kiln_pool_v##N a, kiln_pool_v##N b) { \
        const kiln_pool_i##N take = (b > a) | (b != b);                                   \
        return (kiln_pool_v##N)(((kiln_pool_i##N)b & take) | ((kiln_pool_i##N)a & ~take)); \
    }                                                                                     \
    KILN_INLINE void kiln_pool_max2x2_##N(const float* r0, const float* r1, float* y) {  \
        const kiln_pool_v##N a0 = *(const kiln_pool_v##N*)r0;                            \
        const kiln_pool_v##N a1 = *(const kiln_pool_v##N*)(r0 + N);                      \
        const kiln_pool_v##N b0 = *(const kiln_pool_v##N*)r1;                            \
        const kiln_pool_v##N b1 = *(const kiln_pool_v##N*)(r1 + N);                      \
        const kiln_pool_v##N v0 = kiln_pool_nanmax_##N(a0, b0);                          \
        const kiln_pool_v##N v1 = kiln_pool_nanmax_##N(a1, b1);                          \
        const kiln_pool_i##N even = EVEN;                                                 \
        const kiln_pool_v##N e = __builtin_shuffle(v0, v1, even);                        \
        const kiln_pool_v##N o = __builtin_shuffle(v0, v1, even + 1);                    \
        *(kiln_pool_v##N*)y = kiln_pool_nanmax_##N(e, o);                                 \
    }
/* Blocks no wider than the machine's vectors (wider ones would pass vectors by value
 * through registers it does not have: a psABI warning, and no gain). */
KILN_POOL_MAX2X2_BLOCK(4, ((kiln_pool_i4){0, 2, 4, 6}))
#if KILN_VLEN >= 8
KILN_POOL_MAX2X2_BLOCK(8, ((kiln_pool_i8){0, 2, 4, 6, 8, 10, 12, 14}))
#endif
#if KILN_VLEN >= 16
KILN_POOL_MAX2X2_BLOCK(16, ((kiln_pool_i16){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                            28, 30}))
#endif

KILN_INLINE float kiln_pool_nanmax(float a, float b) { return ((b > a) | (b != b)) ? b : a; }

/* The widest block for a row of OW outputs (0: narrower than every block). */
KILN_INLINE int kiln_pool_block(int OW) {
    return OW >= 16 && KILN_VLEN >= 16 ? 16 : OW >= 8 && KILN_VLEN >= 8 ? 8 : OW >= 4 ? 4 : 0;
}

KILN_INLINE void kiln_pool_max2x2_n(int n, const float* r0, const float* r1, float* y) {
#if KILN_VLEN >= 16
    if (n == 16) {
        kiln_pool_max2x2_16(r0, r1, y);
        return;
    }
#endif
#if KILN_VLEN >= 8
    if (n == 8) {
        kiln_pool_max2x2_8(r0, r1, y);
        return;
    }
#endif
    (void)n;
    kiln_pool_max2x2_4(r0, r1, y);
}

KILN_INLINE void kiln_maxpool2x2(const float* x, float* y, int planes, int H, int W, int OH,
                                 int OW) {
    const int n = kiln_pool_block(OW);
    for (int p = 0; p < planes; ++p)
        for (int oy = 0; oy < OH; ++oy) {
            const float* r0 = x + ((size_t)p * H + 2 * oy) * W;
            const float* r1 = r0 + W;
            float* yr = y + ((size_t)p * OH + oy) * OW;
            if (n == 0) {
                for (int ox = 0; ox < OW; ++ox)
                    yr[ox] = kiln_pool_nanmax(kiln_pool_nanmax(r0[2 * ox], r0[2 * ox + 1]),
                                              kiln_pool_nanmax(r1[2 * ox], r1[2 * ox + 1]));
                continue;
            }
            for (int ox = 0;; ox += n) {
                const int at = ox + n <= OW ? ox : OW - n;
                kiln_pool_max2x2_n(n, r0 + 2 * at, r1 + 2 * at, yr + at);
                if (at + n >= OW) break;
            }
        }
}

/* One axis of an average window: input range [*lo, *hi) and the divisor's factor. */
KILN_INLINE int kiln_avg_axis(int o, int size, int k, int s, int pad0, int pad1, int include_pad,
                              int* lo, int* hi) {
    int start = o * s - pad0;
    int end = kiln_imin(start + k, size + pad1);
    *lo = kiln_imax(start, 0);
    *hi = kiln_imin(start + k, size);
    return include_pad ? end - start : kiln_imin(end, size) - kiln_imax(start, 0);
}

void kiln_avgpool2d(const float* x, float* y, int planes, const kiln_pool_shape* s,
                    int include_pad);

void kiln_adaptive_avgpool2d(const float* x, float* y, int planes, int H, int W,
                             int OH, int OW);

#endif /* KILN_POOL_H */
