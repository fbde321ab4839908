// kiln_transformer.h: HLS layer templates for transformer layers (io_parallel), bit-exact with
// kiln's integer specs (kiln/ir/ops/fixed_norm.py for layer norm and GELU, kiln.matmul /
// kiln.linear / kiln.transpose / kiln.mul for the rest).
//
// Every template is generic over its arrays' element types (deduced from the arguments: plain
// integers in a g++ C-simulation, ap_int<W> under synthesis); arithmetic is exact in int64_t,
// where kiln's type rules guarantee every intermediate fits (the IR verifier checks the layer
// norm's widest one), and the only narrowing is kiln::requantize (kiln_fixed.h, exact-width
// intermediate under the vendor types), which mirrors ap_fixed's converting assignment.
#ifndef KILN_TRANSFORMER_H
#define KILN_TRANSFORMER_H

#include "kiln_fixed.h"
#include "kiln_layers.h"  // kiln::lut_index

namespace kiln {

// v * 2^s for s >= 0 without shifting a negative value (undefined behaviour before C++20).
inline int64_t up_shift(int64_t v, int s) {
    return v * ((int64_t)1 << s);
}

// A linear layer on each of ROWS rows (a linear over the last axis of a [ROWS, NI] tensor):
// dense weights w[NO][NI]; products carry Fx + Fw fraction bits, SHIFT aligns them to the
// accumulator's, BSHIFT the bias (kiln.ir.fixed_arith.finish_dot).
template <int ROWS, int NI, int NO, int SHIFT, int BSHIFT, bool HAS_BIAS, typename XT,
          typename YT, typename WT, typename BT>
void dense_rows(const XT x[ROWS * NI], YT y[ROWS * NO], const WT w[NO * NI],
                const BT bias[]) {
Rows:
    for (int r = 0; r < ROWS; r++) {
    Outputs:
        for (int o = 0; o < NO; o++) {
            int64_t acc = 0;
            for (int i = 0; i < NI; i++) acc += (int64_t)x[r * NI + i] * (int64_t)w[o * NI + i];
            acc = up_shift(acc, SHIFT);
            if (HAS_BIAS) acc += up_shift((int64_t)bias[o], BSHIFT);
            y[r * NO + o] = (YT)acc;
        }
    }
}

// Batched matmul of two activations, a[B][M][K] x b[B][K][N] -> y[B][M][N], exact sums of
// products (Fa + Fb fraction bits, aligned by SHIFT to the result type).
template <int B, int M, int K, int N, int SHIFT, typename AT, typename BT, typename YT>
void matmul(const AT a[B * M * K], const BT b[B * K * N], YT y[B * M * N]) {
Batch:
    for (int h = 0; h < B; h++) {
    Rows:
        for (int m = 0; m < M; m++) {
        Cols:
            for (int n = 0; n < N; n++) {
                int64_t acc = 0;
                for (int k = 0; k < K; k++) {
                    acc += (int64_t)a[(h * M + m) * K + k] * (int64_t)b[(h * K + k) * N + n];
                }
                y[(h * M + m) * N + n] = (YT)up_shift(acc, SHIFT);
            }
        }
    }
}

// A permutation of up to four axes: output dims D0..D3 (leading ones padded with 1), input
// strides S0..S3 of the input axis each output axis reads. Wiring only (no arithmetic).
template <int D0, int D1, int D2, int D3, int S0, int S1, int S2, int S3, typename XT,
          typename YT>
void transpose(const XT x[D0 * D1 * D2 * D3], YT y[D0 * D1 * D2 * D3]) {
    for (int i0 = 0; i0 < D0; i0++) {
        for (int i1 = 0; i1 < D1; i1++) {
            for (int i2 = 0; i2 < D2; i2++) {
                for (int i3 = 0; i3 < D3; i3++) {
                    y[((i0 * D1 + i1) * D2 + i2) * D3 + i3] =
                        (YT)x[i0 * S0 + i1 * S1 + i2 * S2 + i3 * S3];
                }
            }
        }
    }
}

// x times one constant raw c (kiln.mul by a scalar weight): the exact product.
template <int N, typename XT, typename YT, typename CT>
void scale(const XT x[N], YT y[N], const CT c[1]) {
    for (int i = 0; i < N; i++) y[i] = (YT)((int64_t)x[i] * (int64_t)c[0]);
}

// floor(log2 v) of v > 0 (a priority encoder in hardware).
inline int leading_one64(int64_t v) {
    int p = 0;
    for (int b = 1; b < 63; b++) p = (v >> b) != 0 ? b : p;
    return p;
}

// Layer norm over rows of D raws (kiln.fixed_layer_norm): c_i = (D x_i - sum x) >> CSHIFT
// (floored; CSHIFT > 0 only for wide inputs); T = sum c_i^2
// + EPS_TERM; T = m 4^k (m in [1, 4)); R = table[floor(T N / 4^(k+1)) - N/4] (sqrt(D/m) with
// 16 fraction bits); n_i = round_half_up(c_i R / 2^k) (16 fraction bits); y_i = n_i gamma_i
// (SG aligns to FA fraction bits) + beta_i (SB aligns), converted to fixed<W, ., S, Q, O>.
template <int ROWS, int D, int CSHIFT, int LOG2N, int SG, int SB, int FA, int W, int FO, bool S,
          Rounding Q, Overflow O, typename XT, typename YT, typename GT, typename BT,
          typename RT>
void layer_norm(const XT x[ROWS * D], YT y[ROWS * D], const GT gamma[D], const BT beta[D],
                const RT table[], int64_t eps_term) {
Rows:
    for (int r = 0; r < ROWS; r++) {
        int64_t total = 0;
        for (int i = 0; i < D; i++) total += (int64_t)x[r * D + i];
        int64_t c[D];
        int64_t t = eps_term;
    Variance:
        for (int i = 0; i < D; i++) {
            c[i] = ((int64_t)D * (int64_t)x[r * D + i] - total) >> CSHIFT;  // floor
            t += c[i] * c[i];
        }
        t = t < 1 ? 1 : t;
        const int k = leading_one64(t) / 2;
        const int shift = 2 * k + 2 - LOG2N;
        const int64_t idx = shift >= 0 ? (t >> shift) : up_shift(t, -shift);
        const int64_t inv = (int64_t)table[idx - (1 << LOG2N) / 4];
        const int64_t half = k > 0 ? ((int64_t)1 << (k - 1)) : 0;
    Scale:
        for (int i = 0; i < D; i++) {
            const int64_t n = (c[i] * inv + half) >> k;  // arithmetic shift: floor
            const int64_t acc = up_shift(n * (int64_t)gamma[i], SG) +
                                up_shift((int64_t)beta[i], SB);
            y[r * D + i] = (YT)requantize<FA, W, FO, S, Q, O>(acc);
        }
    }
}

// GELU = x Phi(x) (kiln.fixed_gelu): Phi from a table (TB fraction bits) indexed like
// kiln::lut_index; the exact product (F + TB fraction bits) is converted to the result type.
template <int N, int TSIZE, int SHIFT, int FP, int W, int FO, bool S, Rounding Q, Overflow O,
          typename XT, typename YT, typename PT>
void gelu(const XT x[N], YT y[N], const PT table[TSIZE]) {
    for (int i = 0; i < N; i++) {
        const int64_t v = (int64_t)x[i];
        const int64_t p = (int64_t)table[lut_index<TSIZE, SHIFT>(v)];
        y[i] = (YT)requantize<FP, W, FO, S, Q, O>(v * p);
    }
}

}  // namespace kiln

#endif  // KILN_TRANSFORMER_H
