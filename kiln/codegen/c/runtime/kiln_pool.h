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
