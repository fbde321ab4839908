// kiln_layers.h: templated layer functions for kiln's generated HLS C++ (io_parallel).
//
// Every tensor is a flat array of raw fixed-point integers (kiln_fixed.h), batch dimension
// dropped, channels first (C, H, W). Dot products accumulate exactly in int64: the products
// x_raw * w_raw carry Fx + Fw fraction bits; SHIFT aligns them to the accumulator type's
// fraction bits and BSHIFT aligns the bias (kiln.ir.fixed_arith.finish_dot). Narrowing to the
// layer's precision is a separate kiln::requantize_array call, as in kiln's IR.
//
// Pruned weights cost nothing: dense layers take their weights as compressed sparse rows
// (row_ptr / col / val over the non-zero weights only, built by kiln at generation time), so
// no multiplier exists for a zero weight. Convolutions take dense kernels.
// Flatten / reshape are free: the generated code aliases the same array.
#ifndef KILN_LAYERS_H
#define KILN_LAYERS_H

#include "kiln_fixed.h"

namespace kiln {

template <int NI, int NO, int NNZ, int SHIFT, int BSHIFT, bool HAS_BIAS, typename WT,
          typename BT>
void dense(const int64_t x[NI], int64_t y[NO], const int row_ptr[NO + 1], const int col[],
           const WT val[], const BT bias[]) {
Outputs:
    for (int o = 0; o < NO; o++) {
        int64_t acc = 0;
    Terms:
        for (int k = row_ptr[o]; k < row_ptr[o + 1]; k++) {
            acc += x[col[k]] * (int64_t)val[k];
        }
        acc = acc * ((int64_t)1 << SHIFT);
        if (HAS_BIAS) acc += (int64_t)bias[o] * ((int64_t)1 << BSHIFT);
        y[o] = acc;
    }
}

// Grouped 2-D convolution (conv1d: H = KH = 1). Padding reads zeros.
template <int C, int H, int W, int O, int KH, int KW, int SH, int SW, int PT, int PL, int DH,
          int DW, int G, int OH, int OW, int SHIFT, int BSHIFT, bool HAS_BIAS, typename WT,
          typename BT>
void conv2d(const int64_t x[C * H * W], int64_t y[O * OH * OW], const WT w[], const BT bias[]) {
    const int CG = C / G, OG = O / G;
Channels:
    for (int o = 0; o < O; o++) {
        const int g = o / OG;
    Rows:
        for (int oh = 0; oh < OH; oh++) {
        Cols:
            for (int ow = 0; ow < OW; ow++) {
                int64_t acc = 0;
                for (int c = 0; c < CG; c++) {
                    for (int kh = 0; kh < KH; kh++) {
                        const int ih = oh * SH - PT + kh * DH;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < KW; kw++) {
                            const int iw = ow * SW - PL + kw * DW;
                            if (iw < 0 || iw >= W) continue;
                            const int64_t wv = w[((o * CG + c) * KH + kh) * KW + kw];
                            acc += x[((g * CG + c) * H + ih) * W + iw] * wv;
                        }
                    }
                }
                acc = acc * ((int64_t)1 << SHIFT);
                if (HAS_BIAS) acc += (int64_t)bias[o] * ((int64_t)1 << BSHIFT);
                y[(o * OH + oh) * OW + ow] = acc;
            }
        }
    }
}

template <int C, int H, int W, int KH, int KW, int SH, int SW, int DH, int DW, int OH, int OW>
void max_pool2d(const int64_t x[C * H * W], int64_t y[C * OH * OW]) {
    for (int c = 0; c < C; c++) {
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                int64_t best = x[(c * H + oh * SH) * W + ow * SW];
                for (int kh = 0; kh < KH; kh++) {
                    for (int kw = 0; kw < KW; kw++) {
                        const int64_t v = x[(c * H + oh * SH + kh * DH) * W + ow * SW + kw * DW];
                        best = v > best ? v : best;
                    }
                }
                y[(c * OH + oh) * OW + ow] = best;
            }
        }
    }
}

// Average pooling with PyTorch's adaptive bins (a plain pool is the same with fixed bins):
// bin i covers [floor(i*L/O), ceil((i+1)*L/O)); the exact sum / count is rounded with Q.
template <int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, bool ADAPTIVE,
          Rounding Q>
void avg_pool2d(const int64_t x[C * H * W], int64_t y[C * OH * OW]) {
    for (int c = 0; c < C; c++) {
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                const int h0 = ADAPTIVE ? oh * H / OH : oh * SH;
                const int h1 = ADAPTIVE ? ((oh + 1) * H + OH - 1) / OH : h0 + KH;
                const int w0 = ADAPTIVE ? ow * W / OW : ow * SW;
                const int w1 = ADAPTIVE ? ((ow + 1) * W + OW - 1) / OW : w0 + KW;
                int64_t total = 0;
                for (int h = h0; h < h1; h++) {
                    for (int w = w0; w < w1; w++) total += x[(c * H + h) * W + w];
                }
                y[(c * OH + oh) * OW + ow] = divide_round<Q>(total, (h1 - h0) * (w1 - w0));
            }
        }
    }
}

template <int N, int SRC_F, int W, int DST_F, bool S, Rounding Q, Overflow O>
void requantize_array(const int64_t x[N], int64_t y[N]) {
    for (int i = 0; i < N; i++) y[i] = requantize<SRC_F, W, DST_F, S, Q, O>(x[i]);
}

// relu, relu6 and clamp: bounds are raws of the input's type (kiln rounds them inward).
template <int N>
void clamp(const int64_t x[N], int64_t y[N], int64_t lo, int64_t hi) {
    for (int i = 0; i < N; i++) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}

// Binary elementwise on equal shapes: operands aligned to the result's fraction bits.
enum BinaryOp { KILN_ADD, KILN_SUB, KILN_MAX, KILN_MIN };
template <int N, int SA, int SB, BinaryOp OP>
void binary(const int64_t a[N], const int64_t b[N], int64_t y[N]) {
    for (int i = 0; i < N; i++) {
        const int64_t u = a[i] * ((int64_t)1 << SA), v = b[i] * ((int64_t)1 << SB);
        switch (OP) {
            case KILN_ADD: y[i] = u + v; break;
            case KILN_SUB: y[i] = u - v; break;
            case KILN_MAX: y[i] = u > v ? u : v; break;
            case KILN_MIN: y[i] = u < v ? u : v; break;
        }
    }
}

}  // namespace kiln

#endif  // KILN_LAYERS_H
