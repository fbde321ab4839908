/* kiln runtime: convolution helpers (see kiln_conv.h). */
#include "kiln_conv.h"

/* col[(c*KH + ky)*KW + kx][oy*OW + ox] = x[c][oy*sh - pt + ky*dh][ox*sw - pl + kx*dw] or 0. */
void kiln_im2col(const float* x, const kiln_conv_shape* s, float* col, int ld) {
    const int P = s->OH * s->OW;
    for (int c = 0; c < s->C; ++c)
        for (int ky = 0; ky < s->KH; ++ky)
            for (int kx = 0; kx < s->KW; ++kx) {
                float* row = col + ((size_t)(c * s->KH + ky) * s->KW + kx) * ld;
                for (int p = P; p < ld; ++p) row[p] = 0.0f; /* the padding columns */
                int lo, hi;
                kiln_window_range(s->OW, s->W, s->sw, s->pl, kx * s->dw, &lo, &hi);
                for (int oy = 0; oy < s->OH; ++oy) {
                    float* dst = row + (size_t)oy * s->OW;
                    int iy = oy * s->sh - s->pt + ky * s->dh;
                    if (iy < 0 || iy >= s->H) {
                        for (int ox = 0; ox < s->OW; ++ox) dst[ox] = 0.0f;
                        continue;
                    }
                    const float* src = x + ((size_t)c * s->H + iy) * s->W - s->pl + kx * s->dw;
                    for (int ox = 0; ox < lo; ++ox) dst[ox] = 0.0f;
                    if (s->sw == 1) { /* short rows: a loop beats a memcpy call */
                        for (int ox = lo; ox < hi; ++ox) dst[ox] = src[ox];
                    } else {
                        for (int ox = lo; ox < hi; ++ox) dst[ox] = src[ox * s->sw];
                    }
                    for (int ox = hi; ox < s->OW; ++ox) dst[ox] = 0.0f;
                }
            }
}

void kiln_conv_pad(const float* x, const kiln_conv_shape* s, float* xp) {
    const int wp = KILN_DIRECT_PITCH(s), hp = KILN_DIRECT_ROWS(s);
    for (int c = 0; c < s->C; ++c) {
        float* plane = xp + (size_t)c * (hp + 1) * wp;
        for (int i = 0; i < (hp + 1) * wp; ++i) plane[i] = 0.0f;
        for (int iy = 0; iy < s->H; ++iy) {
            int row = iy + s->pt;
            if (row >= hp) break;
            const float* src = x + ((size_t)c * s->H + iy) * s->W;
            float* dst = plane + (size_t)row * wp + s->pl;
            int n = kiln_imin(s->W, wp - s->pl);
            for (int ix = 0; ix < n; ++ix) dst[ix] = src[ix];
        }
    }
}

/* Stride 1 over padded planes: output (oy, ox) sits at q = oy*wp + ox of a grid as wide as the
 * padded input, so every tap is one long contiguous multiply-add sweep over the grid. */
static void kiln_direct_flat(const float* xp, const float* w, float bias, float* yc, int c,
                             int first, int cin_g, const kiln_conv_shape* s, float lo, float hi,
                             float* acc) {
    const int wp = KILN_DIRECT_PITCH(s), hp = KILN_DIRECT_ROWS(s), n = s->OH * wp;
    for (int q = 0; q < n; ++q) acc[q] = bias;
    for (int ci = 0; ci < cin_g; ++ci) {
        const float* plane = xp + (size_t)(first + ci) * (hp + 1) * wp;
        const float* wc = w + ((size_t)c * cin_g + ci) * s->KH * s->KW;
        for (int ky = 0; ky < s->KH; ++ky)
            for (int kx = 0; kx < s->KW; ++kx) {
                const float wv = wc[ky * s->KW + kx];
                const float* src = plane + (size_t)ky * s->dh * wp + kx * s->dw;
                for (int q = 0; q < n; ++q) acc[q] += wv * src[q];
            }
    }
    for (int oy = 0; oy < s->OH; ++oy)
        for (int ox = 0; ox < s->OW; ++ox) {
            float v = acc[(size_t)oy * wp + ox];
            yc[(size_t)oy * s->OW + ox] = v < lo ? lo : (v > hi ? hi : v);
        }
}

/* Any stride: each tap sweeps the output rows over the columns inside the image. */
static void kiln_direct_rows(const float* x, const float* w, float bias, float* yc, int c,
                             int first, int cin_g, const kiln_conv_shape* s, float lo,
                             float hi) {
    const int P = s->OH * s->OW;
    for (int i = 0; i < P; ++i) yc[i] = bias;
    for (int ci = 0; ci < cin_g; ++ci) {
        const float* xc = x + (size_t)(first + ci) * s->H * s->W;
        const float* wc = w + ((size_t)c * cin_g + ci) * s->KH * s->KW;
        for (int kx = 0; kx < s->KW; ++kx) {
            int xlo, xhi;
            kiln_window_range(s->OW, s->W, s->sw, s->pl, kx * s->dw, &xlo, &xhi);
            for (int oy = 0; oy < s->OH; ++oy) {
                float* yr = yc + (size_t)oy * s->OW;
                for (int ky = 0; ky < s->KH; ++ky) {
                    int iy = oy * s->sh - s->pt + ky * s->dh;
                    if (iy < 0 || iy >= s->H) continue;
                    const float wv = wc[ky * s->KW + kx];
                    const float* xr = xc + (size_t)iy * s->W - s->pl + kx * s->dw;
                    for (int ox = xlo; ox < xhi; ++ox) yr[ox] += wv * xr[ox * s->sw];
                }
            }
        }
    }
    for (int i = 0; i < P; ++i) yc[i] = yc[i] < lo ? lo : (yc[i] > hi ? hi : yc[i]);
}

void kiln_conv2d_direct(const float* x, const float* xp, const float* w, const float* bias,
                        float* y, int c0, int c1, int Cout, int groups,
                        const kiln_conv_shape* s, float lo, float hi, float* acc) {
    const int cin_g = s->C / groups, cout_g = Cout / groups;
    for (int c = c0; c < c1; ++c) {
        float* yc = y + (size_t)(c - c0) * s->OH * s->OW;
        const float b = bias ? bias[c] : 0.0f;
        const int first = c / cout_g * cin_g; /* the group's first input channel */
        if (xp != NULL && s->sh == 1 && s->sw == 1)
            kiln_direct_flat(xp, w, b, yc, c, first, cin_g, s, lo, hi, acc);
        else
            kiln_direct_rows(x, w, b, yc, c, first, cin_g, s, lo, hi);
    }
}

void kiln_dwconv2d(const float* x, const float* w, const float* bias, float* y, int c0, int c1,
                   const kiln_conv_shape* s, float lo, float hi) {
    kiln_conv2d_direct(x, NULL, w, bias, y, c0, c1, s->C, s->C, s, lo, hi, NULL);
}

void kiln_conv_transpose2d(const float* x, const float* w, const float* bias, float* y,
                                    int Cout, int groups, const kiln_conv_shape* s) {
    const int cin_g = s->C / groups, cout_g = Cout / groups;
    for (int co = 0; co < Cout; ++co) {
        const int g = co / cout_g, cg = co % cout_g;
        for (int oy = 0; oy < s->OH; ++oy)
            for (int ox = 0; ox < s->OW; ++ox) {
                float acc = bias ? bias[co] : 0.0f;
                for (int ci = g * cin_g; ci < (g + 1) * cin_g; ++ci) {
                    const float* wk = w + ((size_t)ci * cout_g + cg) * s->KH * s->KW;
                    for (int ky = 0; ky < s->KH; ++ky) {
                        int ny = oy + s->pt - ky * s->dh;
                        if (ny < 0 || ny % s->sh) continue;
                        int iy = ny / s->sh;
                        if (iy >= s->H) continue;
                        for (int kx = 0; kx < s->KW; ++kx) {
                            int nx = ox + s->pl - kx * s->dw;
                            if (nx < 0 || nx % s->sw) continue;
                            int ix = nx / s->sw;
                            if (ix >= s->W) continue;
                            acc += x[((size_t)ci * s->H + iy) * s->W + ix] * wk[ky * s->KW + kx];
                        }
                    }
                }
                y[((size_t)co * s->OH + oy) * s->OW + ox] = acc;
            }
    }
}
