// kiln_stream_transformer.h: io_stream stages of transformer layers, one token row per beat.
//
// A row-streamed tensor travels as one beat per index of its beat axis (the token axis), every
// other axis packed row-major into the beat's lanes (`kiln::pixel<T, LANES>`): a [S, D] tensor
// is S beats of D raws; [H, S, Dh] after a head split (a transpose that keeps the other axes'
// order) is the same S beats of H*Dh raws. Every stage runs the io_parallel template of
// kiln_transformer.h / kiln_layers.h on one beat (ROWS = 1, or the rows a beat packs), so the
// arithmetic and the bits are exactly io_parallel's and kiln's interpreter's; the result goes
// through the stage's epilogue (EPI, kiln_stream_layers.h) into the output stream's raw type.
//
// The attention products need a whole operand: `matmul_stream` first reads every beat of its
// second operand (keys or values, all heads) into a buffer, then streams the first operand's
// rows, one output row per input row. The FIFO on the first operand's path must hold the rows
// that arrive meanwhile; kiln's stream estimator sizes it (kiln/targets/cost/fpga_stream.py).
#ifndef KILN_STREAM_TRANSFORMER_H
#define KILN_STREAM_TRANSFORMER_H

#include "kiln_stream_layers.h"
#include "kiln_transformer.h"

namespace kiln {

// Linear over the last axis of every row of a beat (NR rows of NI lanes -> NR rows of NO).
template <int P, int NR, int NI, int NO, int SHIFT, int BSHIFT, bool HAS_BIAS, typename AT,
          typename EPI, int RF, typename WT, typename BT, typename XT, typename YT>
void dense_rows_stream(hls::stream<pixel<XT, NR * NI> >& in,
                       hls::stream<pixel<YT, NR * NO> >& out, const WT w[NO * NI],
                       const BT bias[]) {
Rows:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = RF
        const pixel<XT, NR * NI> x = in.read();
        AT acc[NR * NO];
        dense_rows<NR, NI, NO, SHIFT, BSHIFT, HAS_BIAS>(x.v, acc, w, bias);
        pixel<YT, NR * NO> y;
        for (int o = 0; o < NR * NO; o++) y.v[o] = EPI::apply(acc[o]);
        out.write(y);
    }
}

// Layer norm of every row (NR rows of D lanes) of a beat: kiln::layer_norm on one beat.
template <int P, int NR, int D, int CSHIFT, int LOG2N, int SG, int SB, int FA, int W, int FO,
          bool S, Rounding Q, Overflow O, typename RT, typename EPI, typename GT, typename BT,
          typename TT, typename XT, typename YT>
void layer_norm_stream(hls::stream<pixel<XT, NR * D> >& in,
                       hls::stream<pixel<YT, NR * D> >& out, const GT gamma[D],
                       const BT beta[D], const TT table[], int64_t eps_term) {
Rows:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, NR * D> x = in.read();
        RT r[NR * D];
        layer_norm<NR, D, CSHIFT, LOG2N, SG, SB, FA, W, FO, S, Q, O>(x.v, r, gamma, beta,
                                                                     table, eps_term);
        pixel<YT, NR * D> y;
        for (int i = 0; i < NR * D; i++) y.v[i] = EPI::apply(r[i]);
        out.write(y);
    }
}

// GELU of every lane of a beat: kiln::gelu on one beat.
template <int P, int C, int TSIZE, int SHIFT, int FP, int W, int FO, bool S, Rounding Q,
          Overflow O, typename RT, typename EPI, typename TT, typename XT, typename YT>
void gelu_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out,
                 const TT table[TSIZE]) {
Rows:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, C> x = in.read();
        RT r[C];
        gelu<C, TSIZE, SHIFT, FP, W, FO, S, Q, O>(x.v, r, table);
        pixel<YT, C> y;
        for (int i = 0; i < C; i++) y.v[i] = EPI::apply(r[i]);
        out.write(y);
    }
}

// Every lane of a beat times one constant raw (kiln::scale on one beat).
template <int P, int C, typename RT, typename EPI, typename CT, typename XT, typename YT>
void scale_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out,
                  const CT c[1]) {
Rows:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, C> x = in.read();
        RT r[C];
        scale<C>(x.v, r, c);
        pixel<YT, C> y;
        for (int i = 0; i < C; i++) y.v[i] = EPI::apply(r[i]);
        out.write(y);
    }
}

// Softmax over each group of K lanes (the last axis) of every beat: kiln::softmax_row.
template <int P, int NR, int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S,
          Rounding Q, Overflow O, typename ET, typename IT, typename RT, typename EPI,
          typename XT, typename YT>
void softmax_rows_stream(hls::stream<pixel<XT, NR * K> >& in,
                         hls::stream<pixel<YT, NR * K> >& out, const ET exp_table[T],
                         const IT inv_table[1 << MBITS]) {
Rows:
    for (int p = 0; p < P; p++) {
        const pixel<XT, NR * K> x = in.read();
        RT r[NR * K];
        lut_softmax<NR, K, T, SHIFT, MBITS, TB, W, FO, S, Q, O, ET, IT>(x.v, r, exp_table,
                                                                        inv_table);
        pixel<YT, NR * K> y;
        for (int i = 0; i < NR * K; i++) y.v[i] = EPI::apply(r[i]);
        out.write(y);
    }
}

// Batched matmul a[B][M][K] x b[B][K][N] with `a` streamed along M (beat m: lanes (h, k)) and
// `b` along K (B_ALONG_K: beat k, lanes (h, n)) or along N (beat n, lanes (h, k)). All of b
// is buffered first (BK beats), then each row of a gives one output beat (lanes (h, n)) by
// kiln::matmul on that row (M = 1).
template <int B, int M, int K, int N, int SHIFT, bool B_ALONG_K, typename AT, typename EPI,
          typename XT, typename ZT, typename YT>
void matmul_stream(hls::stream<pixel<XT, B * K> >& a,
                   hls::stream<pixel<ZT, B_ALONG_K ? B * N : B * K> >& b,
                   hls::stream<pixel<YT, B * N> >& out) {
    ZT buf[B * K * N];
Buffer:
    for (int j = 0; j < (B_ALONG_K ? K : N); j++) {
#pragma HLS PIPELINE II = 1
        const pixel<ZT, B_ALONG_K ? B * N : B * K> z = b.read();
        for (int h = 0; h < B; h++) {
            for (int i = 0; i < (B_ALONG_K ? N : K); i++) {
                const int k = B_ALONG_K ? j : i, n = B_ALONG_K ? i : j;
                buf[(h * K + k) * N + n] = z.v[h * (B_ALONG_K ? N : K) + i];
            }
        }
    }
Rows:
    for (int m = 0; m < M; m++) {
        const pixel<XT, B * K> x = a.read();
        AT acc[B * N];
        matmul<B, 1, K, N, SHIFT>(x.v, buf, acc);
        pixel<YT, B * N> y;
        for (int i = 0; i < B * N; i++) y.v[i] = EPI::apply(acc[i]);
        out.write(y);
    }
}

}  // namespace kiln

#endif  // KILN_STREAM_TRANSFORMER_H
