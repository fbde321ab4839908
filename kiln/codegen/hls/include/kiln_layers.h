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

// Exact product (fraction bits add up, as in kiln.mul); b is either of a's size (NB = N) or a
// per-channel scale (NB = C, P = N / C positions per channel: squeeze-excitation).
template <int N, int NB, int P>
void multiply(const int64_t a[N], const int64_t b[NB], int64_t y[N]) {
    for (int i = 0; i < N; i++) y[i] = a[i] * b[i / P];
}

// -- activations (kiln.ir.ops.lut: the same tables and integer steps, bit for bit) ----------
// Table index of a raw: clamp(floor(raw * 2^SHIFT) + N/2, 0, N-1) (N a power of two).
template <int N, int SHIFT>
inline int lut_index(int64_t raw) {
    int64_t v = raw;
    if (SHIFT > 0) {
        v = v < -N ? -N : (v > N ? N : v);  // beyond +-N the index is clamped anyway
        v = v * ((int64_t)1 << (SHIFT > 0 ? SHIFT : 0));
    } else if (SHIFT < 0) {
        v = v >> (SHIFT < 0 ? -SHIFT : 0);  // arithmetic shift: floor
    }
    v += N / 2;
    return v < 0 ? 0 : (v >= N ? N - 1 : (int)v);
}

// hardsigmoid = clamp(x/6 + 1/2, 0, 1), the exact value rounded once (Q) into the result type.
template <int F, int W, int FO, bool S, Rounding Q, Overflow O>
inline int64_t hardsigmoid_raw(int64_t x) {
    const int64_t one = 1;
    int64_t q = divide_round<Q>((x + 3 * (one << F)) * (one << FO), 6 * (one << F));
    q = q < 0 ? 0 : (q > (one << FO) ? (one << FO) : q);
    return requantize<FO, W, FO, S, Q, O>(q);
}

// hardswish = x * clamp(x + 3, 0, 6) / 6, the exact value rounded once (Q) into the result.
template <int F, int W, int FO, bool S, Rounding Q, Overflow O>
inline int64_t hardswish_raw(int64_t x) {
    const int64_t one = 1;
    int64_t c = x + 3 * (one << F);
    c = c < 0 ? 0 : (c > 6 * (one << F) ? 6 * (one << F) : c);
    const int EXTRA = FO - 2 * F;  // the product x * c has 2F fraction bits
    const int64_t num = x * c * (one << (EXTRA > 0 ? EXTRA : 0));
    const int64_t den = 6 * (one << (EXTRA < 0 ? -EXTRA : 0));
    return requantize<FO, W, FO, S, Q, O>(divide_round<Q>(num, den));
}

// Softmax of one row of K raws (hls4ml's stable softmax): d = max - x reads the exp table
// (T entries, index min(floor(d * 2^SHIFT), T-1)), the exact sum S = m * 2^p is normalized
// like a float and 1/m read from the inverse table (2^MBITS entries over [1, 2)); each
// e * inv has TB-1+p fraction bits and is requantized into the result type.
template <int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S, Rounding Q,
          Overflow O, typename ET, typename IT>
void softmax_row(const int64_t x[K], int64_t y[K], const ET exp_table[T],
                 const IT inv_table[1 << MBITS]) {
    int64_t m = x[0];
    for (int k = 1; k < K; k++) m = x[k] > m ? x[k] : m;
    int64_t e[K];
    int64_t total = 0;
    const int64_t cap = (int64_t)T << (SHIFT < 0 ? -SHIFT : 0);
Exp:
    for (int k = 0; k < K; k++) {
        int64_t d = m - x[k];
        d = d < cap ? d : cap;
        const int up = SHIFT > 0 ? SHIFT : 0, down = SHIFT < 0 ? -SHIFT : 0;
        d = SHIFT >= 0 ? d * ((int64_t)1 << up) : d >> down;
        e[k] = exp_table[d < T - 1 ? d : T - 1];
        total += e[k];
    }
    int p = 0;  // the leading one's position (a priority encoder in hardware; total > 0)
LeadingOne:
    for (int b = 1; b < 63; b++) p = (total >> b) != 0 ? b : p;
    const int64_t rem = total - ((int64_t)1 << p);
    const int64_t j = p >= MBITS ? rem >> (p - MBITS) : rem * ((int64_t)1 << (MBITS - p));
    const int64_t inv = inv_table[j];
Normalize:
    for (int k = 0; k < K; k++) y[k] = requantize_dyn<W, FO, S, Q, O>(e[k] * inv, p + TB - 1);
}

template <int ROWS, int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S,
          Rounding Q, Overflow O, typename ET, typename IT>
void lut_softmax(const int64_t x[ROWS * K], int64_t y[ROWS * K], const ET exp_table[T],
                 const IT inv_table[1 << MBITS]) {
    for (int r = 0; r < ROWS; r++) {
        softmax_row<K, T, SHIFT, MBITS, TB, W, FO, S, Q, O, ET, IT>(x + r * K, y + r * K,
                                                                      exp_table, inv_table);
    }
}

}  // namespace kiln

#endif  // KILN_LAYERS_H
