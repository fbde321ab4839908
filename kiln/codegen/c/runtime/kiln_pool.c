/* kiln runtime: pooling (see kiln_pool.h). */
#include "kiln_pool.h"

/* Row by row: for each kernel tap, sweep the output row over the columns whose input is
 * inside the image (kiln_window_range), so the inner loops have no bounds checks and
 * vectorize; padding never enters (max pads with -inf, average counts by PyTorch's rule). */
void kiln_maxpool2d(const float* x, float* y, int planes, const kiln_pool_shape* s) {
    if (s->KH == 2 && s->KW == 2 && s->sh == 2 && s->sw == 2 && s->dh == 1 && s->dw == 1 &&
        s->pt == 0 && s->pl == 0 && 2 * s->OH <= s->H && 2 * s->OW <= s->W) {
        kiln_maxpool2x2(x, y, planes, s->H, s->W, s->OH, s->OW);
        return;
    }
    for (int p = 0; p < planes; ++p) {
        const float* xp = x + (size_t)p * s->H * s->W;
        for (int oy = 0; oy < s->OH; ++oy) {
            float* yr = y + ((size_t)p * s->OH + oy) * s->OW;
            for (int ox = 0; ox < s->OW; ++ox) yr[ox] = -INFINITY;
            for (int ky = 0; ky < s->KH; ++ky) {
                int iy = oy * s->sh - s->pt + ky * s->dh;
                if (iy < 0 || iy >= s->H) continue;
                for (int kx = 0; kx < s->KW; ++kx) {
                    int lo, hi;
                    kiln_window_range(s->OW, s->W, s->sw, s->pl, kx * s->dw, &lo, &hi);
                    const float* xr = xp + (size_t)iy * s->W - s->pl + kx * s->dw;
                    for (int ox = lo; ox < hi; ++ox) {
                        float v = xr[ox * s->sw], m = yr[ox];
                        yr[ox] = ((v > m) | (v != v)) ? v : m; /* NaN wins, as in torch */
                    }
                }
            }
        }
    }
}

void kiln_avgpool2d(const float* x, float* y, int planes, const kiln_pool_shape* s,
                    int include_pad) {
    for (int p = 0; p < planes; ++p) {
        const float* xp = x + (size_t)p * s->H * s->W;
        for (int oy = 0; oy < s->OH; ++oy) {
            float* yr = y + ((size_t)p * s->OH + oy) * s->OW;
            int y0, y1, x0, x1;
            int ch = kiln_avg_axis(oy, s->H, s->KH, s->sh, s->pt, s->pb, include_pad, &y0, &y1);
            for (int ox = 0; ox < s->OW; ++ox) yr[ox] = 0.0f;
            for (int iy = y0; iy < y1; ++iy)
                for (int kx = 0; kx < s->KW; ++kx) {
                    int lo, hi;
                    kiln_window_range(s->OW, s->W, s->sw, s->pl, kx, &lo, &hi);
                    const float* xr = xp + (size_t)iy * s->W - s->pl + kx;
                    for (int ox = lo; ox < hi; ++ox) yr[ox] += xr[ox * s->sw];
                }
            for (int ox = 0; ox < s->OW; ++ox) {
                int cw = kiln_avg_axis(ox, s->W, s->KW, s->sw, s->pl, s->pr, include_pad, &x0,
                                       &x1);
                yr[ox] /= (float)(ch * cw);
            }
        }
    }
}

void kiln_adaptive_avgpool2d(const float* x, float* y, int planes, int H, int W, int OH,
                             int OW) {
    if (OH == 1 && OW == 1) { /* global average pooling: vector partial sums */
        const int n = H * W;
        for (int p = 0; p < planes; ++p) {
            const float* xp = x + (size_t)p * n;
            kiln_vf acc = kiln_splat(0.0f);
            int i = 0;
            for (; i + KILN_VLEN <= n; i += KILN_VLEN) acc += kiln_loadu(xp + i);
            float total = kiln_hsum(acc);
            for (; i < n; ++i) total += xp[i];
            y[p] = total / (float)n;
        }
        return;
    }
    for (int p = 0; p < planes; ++p) {
        const float* xp = x + (size_t)p * H * W;
        float* yp = y + (size_t)p * OH * OW;
        for (int oy = 0; oy < OH; ++oy) {
            int y0 = oy * H / OH, y1 = ((oy + 1) * H + OH - 1) / OH;
            for (int ox = 0; ox < OW; ++ox) {
                int x0 = ox * W / OW, x1 = ((ox + 1) * W + OW - 1) / OW;
                float acc = 0.0f;
                for (int iy = y0; iy < y1; ++iy)
                    for (int ix = x0; ix < x1; ++ix) acc += xp[(size_t)iy * W + ix];
                yp[(size_t)oy * OW + ox] = acc / (float)((y1 - y0) * (x1 - x0));
            }
        }
    }
}
