// kiln_stream_layers.h: templated layer functions for kiln's io_stream HLS architecture.
//
// Every tensor travels as a stream of pixels: one beat per spatial position (raster order:
// row by row, column by column; 1-D tensors are a single beat), each beat packing all C
// channels of that position (`kiln::pixel<T, C>`, hls4ml's `nnet::array<T, n_chan>`, T the
// tensor's raw type from kiln_fixed.h). A tensor of logical shape (C, H, W) is H*W beats of C
// raws; element (c, p) of the channels-first flat tensor is beat p, lane c. A flatten of such
// a tensor is the same stream (the dense layer that reads it indexes its input as c * P + p,
// the channels-first order of the IR).
//
// Convolutions and pools consume their input pixel by pixel into a line buffer holding the
// last R input rows (R = the rows one window spans) and emit each output pixel as soon as the
// last input pixel its window needs has arrived (`window_scan`). The arithmetic per output is
// exactly kiln_layers.h's (exact accumulation in the layer's accumulator type AT, products in
// PT, then the stage's epilogue), so a stream design is bit-exact with the parallel one and
// with kiln's interpreter.
//
// EPI is the stage's epilogue: the elementwise ops kiln fused into the layer (requantize to
// the layer's precision, relu, clamp), a struct whose `static YT apply(AT)` maps one raw of
// the layer's result type to one raw of the stage's output stream (`Identity`: no epilogue).
// RF is the layer's reuse factor: each output pixel's multiplies share ceil(n / RF)
// multipliers (`PIPELINE II=RF`), exactly as in the parallel architecture.
#ifndef KILN_STREAM_LAYERS_H
#define KILN_STREAM_LAYERS_H

#include "kiln_fixed.h"
#include "kiln_layers.h"
#include "kiln_stream.h"

namespace kiln {

template <typename T, int N>
struct pixel {
    T v[N];
};

struct Identity {
    template <typename T>
    static T apply(const T& v) { return v; }
};

// Window bounds along one axis of length L with O outputs: input rows lo(o) .. hi(o)
// (inclusive, before clipping to [0, L)); `last` is the last row that exists.
template <int L, int O, int K, int S, int P, int D, bool ADAPTIVE>
struct Axis {
    static int lo(int o) { return ADAPTIVE ? o * L / O : o * S - P; }
    static int hi(int o) {
        return ADAPTIVE ? ((o + 1) * L + O - 1) / O - 1 : o * S - P + (K - 1) * D;
    }
    static int last(int o) {
        const int h = hi(o);
        return h < 0 ? 0 : (h >= L ? L - 1 : h);
    }
};

// The last R rows of a (C, H, W) input, row h in slot h % R (R >= the rows a window spans).
template <typename T, int C, int W, int R>
struct LineBuffer {
    T rows[R][W][C];
    void put(int h, int w, const pixel<T, C>& p) {
        for (int c = 0; c < C; c++) rows[h % R][w][c] = p.v[c];
    }
    T at(int h, int w, int c) const { return rows[h % R][w][c]; }
};

// Read the input pixel by pixel; after each one, emit every output pixel whose window is
// complete (in raster order). The triggers (AH::last(oh), AW::last(ow)) never decrease in
// raster order, so a window's rows are still in the R-row buffer when it is computed.
template <int C, int H, int W, int R, int OH, int OW, int O, int RF, typename AH,
          typename AW, typename KERNEL, typename XT, typename YT>
void window_scan(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, O> >& out,
                 const KERNEL& k) {
    LineBuffer<XT, C, W, R> lb;
    int oh = 0, ow = 0;
Rows:
    for (int h = 0; h < H; h++) {
    Cols:
        for (int w = 0; w < W; w++) {
            lb.put(h, w, in.read());
        Emit:
            while (oh < OH && (AH::last(oh) < h || (AH::last(oh) == h && AW::last(ow) <= w))) {
#pragma HLS PIPELINE II = RF
                pixel<YT, O> y;
                k.compute(lb, oh, ow, y);
                out.write(y);
                if (++ow == OW) {
                    ow = 0;
                    oh++;
                }
            }
        }
    }
}

// Grouped convolution of one output pixel from the line buffer (conv1d: H = KH = 1).
template <int C, int H, int W, int R, int O, int KH, int KW, int SH, int SW, int PT, int PL,
          int DH, int DW, int G, int SHIFT, int BSHIFT, bool HAS_BIAS, typename AT, typename P_T,
          typename WT, typename BT, typename EPI>
struct ConvKernel {
    const WT* w;
    const BT* bias;
    template <typename XT, typename YT>
    void compute(const LineBuffer<XT, C, W, R>& lb, int oh, int ow, pixel<YT, O>& y) const {
        const int CG = C / G, OG = O / G;
    Channels:
        for (int o = 0; o < O; o++) {
            const int g = o / OG;
            AT acc = 0;
            for (int c = 0; c < CG; c++) {
                for (int kh = 0; kh < KH; kh++) {
                    const int ih = oh * SH - PT + kh * DH;
                    if (ih < 0 || ih >= H) continue;
                    for (int kw = 0; kw < KW; kw++) {
                        const int iw = ow * SW - PL + kw * DW;
                        if (iw < 0 || iw >= W) continue;
                        acc += mul<P_T>(lb.at(ih, iw, g * CG + c),
                                        w[((o * CG + c) * KH + kh) * KW + kw]);
                    }
                }
            }
            acc = shl<SHIFT>(acc);
            if (HAS_BIAS) acc += shl<BSHIFT>((AT)bias[o]);
            y.v[o] = EPI::apply(acc);
        }
    }
};

template <int C, int H, int W, int R, int O, int KH, int KW, int SH, int SW, int PT, int PL,
          int DH, int DW, int G, int OH, int OW, int SHIFT, int BSHIFT, bool HAS_BIAS,
          typename AT, typename P_T, typename EPI, int RF, typename WT, typename BT,
          typename XT, typename YT>
void conv2d_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, O> >& out,
                   const WT w[], const BT bias[]) {
    ConvKernel<C, H, W, R, O, KH, KW, SH, SW, PT, PL, DH, DW, G, SHIFT, BSHIFT, HAS_BIAS, AT,
               P_T, WT, BT, EPI> k = {w, bias};
    window_scan<C, H, W, R, OH, OW, O, RF, Axis<H, OH, KH, SH, PT, DH, false>,
                Axis<W, OW, KW, SW, PL, DW, false> >(in, out, k);
}

// Max pool of one output pixel: padded taps never win, taps past the input are skipped
// (kiln_layers.h max_pool2d).
template <int C, int H, int W, int R, int KH, int KW, int DH, int DW, typename AH,
          typename AW, typename EPI>
struct MaxPoolKernel {
    template <typename XT, typename YT>
    void compute(const LineBuffer<XT, C, W, R>& lb, int oh, int ow, pixel<YT, C>& y) const {
        for (int c = 0; c < C; c++) {
            XT best = 0;
            bool seen = false;
            for (int kh = 0; kh < KH; kh++) {
                const int ih = AH::lo(oh) + kh * DH;
                if (ih < 0 || ih >= H) continue;
                for (int kw = 0; kw < KW; kw++) {
                    const int iw = AW::lo(ow) + kw * DW;
                    if (iw < 0 || iw >= W) continue;
                    const XT v = lb.at(ih, iw, c);
                    if (!seen || v > best) best = v;
                    seen = true;
                }
            }
            y.v[c] = EPI::apply(best);
        }
    }
};

template <int C, int H, int W, int R, int KH, int KW, int SH, int SW, int PT, int PL, int DH,
          int DW, int OH, int OW, typename EPI, typename XT, typename YT>
void max_pool2d_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out) {
    typedef Axis<H, OH, KH, SH, PT, DH, false> AH;
    typedef Axis<W, OW, KW, SW, PL, DW, false> AW;
    MaxPoolKernel<C, H, W, R, KH, KW, DH, DW, AH, AW, EPI> k;
    window_scan<C, H, W, R, OH, OW, C, 1, AH, AW>(in, out, k);
}

// Average pool with PyTorch's (adaptive) bins or padded / ceil_mode windows, the exact sum
// (in AT) divided by avg_count and rounded with Q (kiln_layers.h avg_pool2d); RT is the pool's
// result type (its input's).
template <int C, int H, int W, int R, int KH, int KW, int PB, int PR, bool ADAPTIVE,
          bool INCLUDE_PAD, typename AH, typename AW, Rounding Q, typename AT, typename RT,
          typename EPI>
struct AvgPoolKernel {
    template <typename XT, typename YT>
    void compute(const LineBuffer<XT, C, W, R>& lb, int oh, int ow, pixel<YT, C>& y) const {
        const int h0 = AH::lo(oh), h1 = AH::hi(oh) + 1, w0 = AW::lo(ow), w1 = AW::hi(ow) + 1;
        const int count = ADAPTIVE ? (h1 - h0) * (w1 - w0)
                                   : avg_count<H, KH, PB, INCLUDE_PAD>(h0) *
                                         avg_count<W, KW, PR, INCLUDE_PAD>(w0);
        for (int c = 0; c < C; c++) {
            AT total = 0;
            for (int h = h0 < 0 ? 0 : h0; h < (h1 > H ? H : h1); h++) {
                for (int w = w0 < 0 ? 0 : w0; w < (w1 > W ? W : w1); w++) total += lb.at(h, w, c);
            }
            y.v[c] = EPI::apply((RT)divide_round<Q>(wide(total), count));
        }
    }
};

template <int C, int H, int W, int R, int OH, int OW, int KH, int KW, int SH, int SW, int PT,
          int PL, int PB, int PR, bool ADAPTIVE, bool INCLUDE_PAD, Rounding Q, typename AT,
          typename EPI, typename XT, typename YT>
void avg_pool2d_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out) {
    typedef Axis<H, OH, KH, SH, PT, 1, ADAPTIVE> AH;
    typedef Axis<W, OW, KW, SW, PL, 1, ADAPTIVE> AW;
    AvgPoolKernel<C, H, W, R, KH, KW, PB, PR, ADAPTIVE, INCLUDE_PAD, AH, AW, Q, AT, XT, EPI> k;
    window_scan<C, H, W, R, OH, OW, C, 1, AH, AW>(in, out, k);
}

// Global average pool: one running sum (in AT) per channel, no line buffer (same exact sum).
template <int C, int P, Rounding Q, typename AT, typename EPI, typename XT, typename YT>
void global_avg_pool_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out) {
    AT total[C];
    for (int c = 0; c < C; c++) total[c] = 0;
Pixels:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, C> x = in.read();
        for (int c = 0; c < C; c++) total[c] += x.v[c];
    }
    pixel<YT, C> y;
    for (int c = 0; c < C; c++) y.v[c] = EPI::apply((XT)divide_round<Q>(wide(total[c]), P));
    out.write(y);
}

// Dense layer on a stream of P beats of C lanes (channels-first input index c * P + p):
// gather the vector, run kiln::dense (CSR over the non-zero weights) into the layer's
// accumulator type AT, emit one beat through the epilogue.
template <int P, int C, int NO, int NNZ, int SHIFT, int BSHIFT, bool HAS_BIAS, typename AT,
          typename P_T, typename EPI, int RF, typename WT, typename BT, typename XT, typename YT>
void dense_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, NO> >& out,
                  const int row_ptr[NO + 1], const int col[], const WT val[], const BT bias[]) {
    XT x[P * C];
    AT acc[NO];
Gather:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, C> b = in.read();
        for (int c = 0; c < C; c++) x[c * P + p] = b.v[c];
    }
    dense<P * C, NO, NNZ, SHIFT, BSHIFT, HAS_BIAS, P_T>(x, acc, row_ptr, col, val, bias);
    pixel<YT, NO> y;
    for (int o = 0; o < NO; o++) y.v[o] = EPI::apply(acc[o]);
    out.write(y);
}

// Elementwise stage (requantize / relu / clamp chains): one beat in, one beat out.
template <int P, int C, typename EPI, typename XT, typename YT>
void map_stream(hls::stream<pixel<XT, C> >& in, hls::stream<pixel<YT, C> >& out) {
Pixels:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<XT, C> x = in.read();
        pixel<YT, C> y;
        for (int c = 0; c < C; c++) y.v[c] = EPI::apply(x.v[c]);
        out.write(y);
    }
}

// Binary elementwise join of two streams (residual add): operands aligned to the result
// type RT (kiln_layers.h binary_raw).
template <int P, int C, int SA, int SB, BinaryOp OP, typename RT, typename EPI, typename AT,
          typename BT, typename YT>
void binary_stream(hls::stream<pixel<AT, C> >& a, hls::stream<pixel<BT, C> >& b,
                   hls::stream<pixel<YT, C> >& out) {
Pixels:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<AT, C> x = a.read();
        const pixel<BT, C> z = b.read();
        pixel<YT, C> y;
        for (int c = 0; c < C; c++) y.v[c] = EPI::apply(binary_raw<SA, SB, OP, RT>(x.v[c], z.v[c]));
        out.write(y);
    }
}

// Exact product of two streams in RT (kiln.mul's type); with PER_BEAT false, b is one beat (a
// per-channel scale, squeeze-excitation) read before the first beat of a and applied to every
// beat.
template <int P, int C, bool PER_BEAT, typename RT, typename EPI, typename AT, typename BT,
          typename YT>
void multiply_stream(hls::stream<pixel<AT, C> >& a, hls::stream<pixel<BT, C> >& b,
                     hls::stream<pixel<YT, C> >& out) {
    pixel<BT, C> z = b.read();
Pixels:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const pixel<AT, C> x = a.read();
        if (PER_BEAT && p > 0) z = b.read();
        pixel<YT, C> y;
        for (int c = 0; c < C; c++) y.v[c] = EPI::apply(mul<RT>(x.v[c], z.v[c]));
        out.write(y);
    }
}

// Softmax of a vector (one beat of K lanes) into RT: kiln::softmax_row, then the epilogue.
template <int ROWS, int K, int T, int SHIFT, int MBITS, int TB, int W, int FO, bool S,
          Rounding Q, Overflow O, typename ET, typename IT, typename RT, typename EPI,
          typename XT, typename YT>
void softmax_stream(hls::stream<pixel<XT, K> >& in, hls::stream<pixel<YT, K> >& out,
                    const ET exp_table[T], const IT inv_table[1 << MBITS]) {
    const pixel<XT, K> x = in.read();
    RT y[K];
    softmax_row<K, T, SHIFT, MBITS, TB, W, FO, S, Q, O, ET, IT>(x.v, y, exp_table, inv_table);
    pixel<YT, K> z;
    for (int k = 0; k < K; k++) z.v[k] = EPI::apply(y[k]);
    out.write(z);
}

// Fork: a tensor with two consumers is copied to two streams beat by beat.
template <int P, typename PX>
void duplicate(hls::stream<PX>& in, hls::stream<PX>& a, hls::stream<PX>& b) {
Pixels:
    for (int p = 0; p < P; p++) {
#pragma HLS PIPELINE II = 1
        const PX x = in.read();
        a.write(x);
        b.write(x);
    }
}

}  // namespace kiln

#endif  // KILN_STREAM_LAYERS_H
