// kiln_layers.h: templated layer functions for kiln's generated HLS C++ (io_parallel).
//
// Every tensor is a flat array of raw fixed-point integers of its own type (kiln_fixed.h:
// `kiln::raw_t<W, S>`, a typedef per tensor in the generated header), batch dimension
// dropped, channels first (C, H, W). The templates are generic over those types (XT input,
// YT output, WT weights, BT bias, PT product): the generated code names the product type and
// the compiler deduces the rest from the arrays. Dot products accumulate exactly in the
// layer's output type YT (kiln's exact accumulator type: the K-term sum of x * w plus the
// bias): each product x_raw * w_raw is formed in PT (fraction Fx + Fw), SHIFT aligns the sum
// to YT's fraction bits and BSHIFT aligns the bias (kiln.ir.fixed_arith.finish_dot).
// Narrowing to the layer's precision is a separate kiln::requantize_array call, as in kiln's IR.
//
// Pruned weights cost nothing: dense layers take their weights as compressed sparse rows
// (row_ptr / col / val over the non-zero weights only, built by kiln at generation time), so
// no multiplier exists for a zero weight. Convolutions take dense kernels.
// Flatten / reshape are free: the generated code aliases the same array.
#ifndef KILN_LAYERS_H
#define KILN_LAYERS_H

#include "kiln_fixed.h"

namespace kiln {

template <int NI, int NO, int NNZ, int SHIFT, int BSHIFT, bool HAS_BIAS, typename PT,
          typename XT, typename YT, typename WT, typename BT>
void dense(const XT x[NI], YT y[NO], const int row_ptr[NO + 1], const int col[],
           const WT val[], const BT bias[]) {
Outputs:
    for (int o = 0; o < NO; o++) {
        YT acc = 0;
    Terms:
        for (int k = row_ptr[o]; k < row_ptr[o + 1]; k++) {
            acc += mul<PT>(x[col[k]], val[k]);
        }
        acc = shl<SHIFT>(acc);
        if (HAS_BIAS) acc += shl<BSHIFT>((YT)bias[o]);
        y[o] = acc;
    }
}

// Grouped 2-D convolution (conv1d: H = KH = 1). Padding reads zeros.
template <int C, int H, int W, int O, int KH, int KW, int SH, int SW, int PT, int PL, int DH,
          int DW, int G, int OH, int OW, int SHIFT, int BSHIFT, bool HAS_BIAS, typename P_T,
          typename XT, typename YT, typename WT, typename BT>
void conv2d(const XT x[C * H * W], YT y[O * OH * OW], const WT w[], const BT bias[]) {
    const int CG = C / G, OG = O / G;
Channels:
    for (int o = 0; o < O; o++) {
        const int g = o / OG;
    Rows:
        for (int oh = 0; oh < OH; oh++) {
        Cols:
            for (int ow = 0; ow < OW; ow++) {
                YT acc = 0;
                for (int c = 0; c < CG; c++) {
                    for (int kh = 0; kh < KH; kh++) {
                        const int ih = oh * SH - PT + kh * DH;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < KW; kw++) {
                            const int iw = ow * SW - PL + kw * DW;
                            if (iw < 0 || iw >= W) continue;
                            acc += mul<P_T>(x[((g * CG + c) * H + ih) * W + iw],
                                            w[((o * CG + c) * KH + kh) * KW + kw]);
                        }
                    }
                }
                acc = shl<SHIFT>(acc);
                if (HAS_BIAS) acc += shl<BSHIFT>((YT)bias[o]);
                y[(o * OH + oh) * OW + ow] = acc;
            }
        }
    }
}

// Max pool with PyTorch's padding (padded taps never win: -inf) and ceil_mode windows (taps
// past the input are skipped); every window holds at least one input tap (kiln's verifier:
// padding < window span, the last window starts inside the input).
template <int C, int H, int W, int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW,
          int OH, int OW, typename XT, typename YT>
void max_pool2d(const XT x[C * H * W], YT y[C * OH * OW]) {
    for (int c = 0; c < C; c++) {
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                XT best = 0;
                bool seen = false;
                for (int kh = 0; kh < KH; kh++) {
                    const int ih = oh * SH - PT + kh * DH;
                    if (ih < 0 || ih >= H) continue;
                    for (int kw = 0; kw < KW; kw++) {
                        const int iw = ow * SW - PL + kw * DW;
                        if (iw < 0 || iw >= W) continue;
                        const XT v = x[(c * H + ih) * W + iw];
                        if (!seen || v > best) best = v;
                        seen = true;
                    }
                }
                y[(c * OH + oh) * OW + ow] = best;
            }
        }
    }
}

// The divisor of an average-pool window [lo, lo + K) along one axis of length L with paddings
// P0 / P1 (PyTorch's rule, kiln.ir.ops.nn_pool._avg_counts): with count_include_pad, the
// positions up to the right padding's end; without, the input positions only.
template <int L, int K, int P1, bool INCLUDE_PAD>
inline int avg_count(int lo) {
    int a = lo, b = lo + K;
    if (b > L + P1) b = L + P1;
    if (!INCLUDE_PAD) {
        a = a < 0 ? 0 : a;
        b = b > L ? L : b;
    }
    return b - a;
}

// Average pooling: PyTorch's adaptive bins (bin i covers [floor(i*L/O), ceil((i+1)*L/O))) or
// fixed windows with padding (zeros) and ceil_mode; the exact sum (in AT, the window-sum type)
// divided by avg_count, rounded with Q.
template <int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PT, int PL,
          int PB, int PR, bool ADAPTIVE, bool INCLUDE_PAD, Rounding Q, typename AT, typename XT,
          typename YT>
void avg_pool2d(const XT x[C * H * W], YT y[C * OH * OW]) {
    for (int c = 0; c < C; c++) {
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                const int h0 = ADAPTIVE ? oh * H / OH : oh * SH - PT;
                const int h1 = ADAPTIVE ? ((oh + 1) * H + OH - 1) / OH : h0 + KH;
                const int w0 = ADAPTIVE ? ow * W / OW : ow * SW - PL;
                const int w1 = ADAPTIVE ? ((ow + 1) * W + OW - 1) / OW : w0 + KW;
                const int count = ADAPTIVE ? (h1 - h0) * (w1 - w0)
                                           : avg_count<H, KH, PB, INCLUDE_PAD>(h0) *
                                                 avg_count<W, KW, PR, INCLUDE_PAD>(w0);
                AT total = 0;
                for (int h = h0 < 0 ? 0 : h0; h < (h1 > H ? H : h1); h++) {
                    for (int w = w0 < 0 ? 0 : w0; w < (w1 > W ? W : w1); w++) {
                        total += x[(c * H + h) * W + w];
                    }
                }
                y[(c * OH + oh) * OW + ow] = (YT)divide_round<Q>(wide(total), count);
            }
        }
    }
}

template <int N, int SRC_F, int W, int DST_F, bool S, Rounding Q, Overflow O, typename XT,
          typename YT>
void requantize_array(const XT x[N], YT y[N]) {
    for (int i = 0; i < N; i++) y[i] = requantize<SRC_F, W, DST_F, S, Q, O>(x[i]);
}

// relu, relu6 and clamp: bounds are raws of the input's type (kiln rounds them inward and
// limits them to the type's range).
template <int N, typename XT, typename YT>
void clamp(const XT x[N], YT y[N], int64_t lo, int64_t hi) {
    for (int i = 0; i < N; i++) {
        const int64_t v = wide(x[i]);
        y[i] = (YT)(v < lo ? lo : (v > hi ? hi : v));
    }
}

// Binary elementwise on equal shapes: operands aligned to the result's fraction bits (in the
// result type YT, which holds both aligned operands and the exact result).
enum BinaryOp { KILN_ADD, KILN_SUB, KILN_MAX, KILN_MIN };
template <int SA, int SB, BinaryOp OP, typename YT, typename AT, typename BT>
inline YT binary_raw(const AT& a, const BT& b) {
    const YT u = shl<SA>((YT)a), v = shl<SB>((YT)b);
    switch (OP) {
        case KILN_ADD: return u + v;
        case KILN_SUB: return u - v;
        case KILN_MAX: return u > v ? u : v;
        case KILN_MIN: return u < v ? u : v;
    }
    return u;
}

template <int N, int SA, int SB, BinaryOp OP, typename AT, typename BT, typename YT>
void binary(const AT a[N], const BT b[N], YT y[N]) {
    for (int i = 0; i < N; i++) y[i] = binary_raw<SA, SB, OP, YT>(a[i], b[i]);
}

// Exact product (fraction bits add up, as in kiln.mul; YT is the exact product type); b is
// either of a's size (NB = N) or a per-channel scale (NB = C, P = N / C positions per channel:
// squeeze-excitation).
template <int N, int NB, int P, typename AT, typename BT, typename YT>
void multiply(const AT a[N], const BT b[NB], YT y[N]) {
    for (int i = 0; i < N; i++) y[i] = mul<YT>(a[i], b[i / P]);
}

// -- activations (kiln.ir.ops.lut: the same tables and integer steps, bit for bit) ----------
// Table index of a raw: clamp(floor(raw * 2^SHIFT) + N/2, 0, N-1) (N a power of two).
template <int N, int SHIFT, typename T>
inline int lut_index(const T& raw) {
    int64_t v = wide(raw);
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
template <int F, int W, int FO, bool S, Rounding Q, Overflow O, typename T>
inline raw_t<W, S> hardsigmoid_raw(const T& raw) {
    const int64_t one = 1, x = wide(raw);
    int64_t q = divide_round<Q>((x + 3 * (one << F)) * (one << FO), 6 * (one << F));
    q = q < 0 ? 0 : (q > (one << FO) ? (one << FO) : q);
    return requantize<FO, W, FO, S, Q, O>(q);
}

// hardswish = x * clamp(x + 3, 0, 6) / 6, the exact value rounded once (Q) into the result.
template <int F, int W, int FO, bool S, Rounding Q, Overflow O, typename T>
inline raw_t<W, S> hardswish_raw(const T& raw) {
    const int64_t one = 1, x = wide(raw);
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
// e * inv has TB-1+p fraction bits and is requantized into the result type. The row's
// differences, table reads and sum are int64 (the sum of K table entries of TB bits).
template <int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S, Rounding Q,
          Overflow O, typename ET, typename IT, typename XT, typename YT>
void softmax_row(const XT x[K], YT y[K], const ET exp_table[T],
                 const IT inv_table[1 << MBITS]) {
    int64_t m = wide(x[0]);
    for (int k = 1; k < K; k++) m = wide(x[k]) > m ? wide(x[k]) : m;
    int64_t e[K];
    int64_t total = 0;
    const int64_t cap = (int64_t)T << (SHIFT < 0 ? -SHIFT : 0);
Exp:
    for (int k = 0; k < K; k++) {
        int64_t d = m - wide(x[k]);
        d = d < cap ? d : cap;
        const int up = SHIFT > 0 ? SHIFT : 0, down = SHIFT < 0 ? -SHIFT : 0;
        d = SHIFT >= 0 ? d * ((int64_t)1 << up) : d >> down;
        e[k] = wide(exp_table[d < T - 1 ? d : T - 1]);
        total += e[k];
    }
    int p = 0;  // the leading one's position (a priority encoder in hardware; total > 0)
LeadingOne:
    for (int b = 1; b < 63; b++) p = (total >> b) != 0 ? b : p;
    const int64_t rem = total - ((int64_t)1 << p);
    const int64_t j = p >= MBITS ? rem >> (p - MBITS) : rem * ((int64_t)1 << (MBITS - p));
    const int64_t inv = wide(inv_table[j]);
Normalize:
    for (int k = 0; k < K; k++) {
        y[k] = (YT)requantize_dyn<W, FO, S, Q, O>(e[k] * inv, p + TB - 1);
    }
}

template <int ROWS, int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S,
          Rounding Q, Overflow O, typename ET, typename IT, typename XT, typename YT>
void lut_softmax(const XT x[ROWS * K], YT y[ROWS * K], const ET exp_table[T],
                 const IT inv_table[1 << MBITS]) {
    for (int r = 0; r < ROWS; r++) {
        softmax_row<K, T, SHIFT, MBITS, TB, W, FO, S, Q, O, ET, IT>(x + r * K, y + r * K,
                                                                      exp_table, inv_table);
    }
}

}  // namespace kiln

#endif  // KILN_LAYERS_H
