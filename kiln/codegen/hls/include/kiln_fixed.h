// kiln_fixed.h: kiln's fixed-point raws and conversions for HLS C++ (g++ C-simulation and
// Vitis HLS synthesis alike).
//
// A value of kiln's `fixed<W,I,signed,Q,O>` (ap_fixed<W,I,Q,O>) is held as its raw integer
// (value = raw * 2^-(W-I)) in a `kiln::raw_t<W, S>`: an integer type of exactly that width.
//   - plain g++ C-simulation: the narrowest native integer that holds the raws (int8_t,
//     int16_t, int32_t or int64_t; an unsigned W-bit raw takes a signed type of W+1 bits, so
//     mixed expressions never go through unsigned C arithmetic);
//   - under Vitis (`__SYNTHESIS__`) or with `-DKILN_USE_AP_TYPES` (a C-simulation against the
//     vendor headers, e.g. Xilinx's ap_int.h shipped with hls4ml): `ap_int<W>` / `ap_uint<W>`,
//     so the synthesized registers, multipliers and adders have the layer's real widths;
//   - `-DKILN_NATIVE_TYPES` forces the native integers (an HLS tool that defines __SYNTHESIS__
//     but ships no ap_int.h, e.g. an ASIC flow with its own bit-accurate types).
// Weight and bias ROMs use `kiln::rom_t<W, S>`: ap_int<W> under __SYNTHESIS__ (a ROM of the
// weights' real width) or with -DKILN_AP_WEIGHTS, the native raw type otherwise, also in a
// KILN_USE_AP_TYPES C-simulation: g++ compiles tens of thousands of ap_int initializers
// very slowly (minutes for lenet5), and the raws read from either are the same integers.
// The generated code declares one typedef per tensor, weight and product type from kiln's type
// rules (kiln/ir/fixed_arith.py, the same as ap_fixed's): every product and accumulator type
// holds its exact result, so no arithmetic on raws ever overflows, in either mode. Products go
// through `kiln::mul<PT>` (the exact product type PT, never a promoted C int), alignments
// through `kiln::shl<S>`, and values are read as int64_t (`kiln::wide`) only inside the
// conversions below. Both modes give the same bits (tests/unit/test_hls_ap_types.py).
//
// Narrowing happens only in kiln::requantize, which mirrors ap_fixed's converting assignment
// bit for bit:
//   rounding  (Q): KILN_TRN floor, KILN_TRN_ZERO toward zero, KILN_RND ties up,
//                  KILN_RND_ZERO ties toward zero, KILN_RND_MIN_INF ties down,
//                  KILN_RND_INF ties away from zero, KILN_RND_CONV ties to even;
//   overflow  (O): KILN_WRAP two's-complement wrap, KILN_SAT clamp, KILN_SAT_ZERO zero when out
//                  of range, KILN_SAT_SYM clamp to [-max, max] (signed; the most negative
//                  raw itself becomes -max, as in kiln.ir.fixed).
// AP_WRAP_SM is not emitted by kiln's HLS generator (the generator refuses it).
#ifndef KILN_FIXED_H
#define KILN_FIXED_H

#include <stdint.h>

#if (defined(__SYNTHESIS__) || defined(KILN_USE_AP_TYPES)) && !defined(KILN_NATIVE_TYPES)
#define KILN_AP_TYPES 1
#include "ap_int.h"
#endif

namespace kiln {

enum Rounding { KILN_TRN, KILN_TRN_ZERO, KILN_RND, KILN_RND_ZERO, KILN_RND_MIN_INF,
                KILN_RND_INF, KILN_RND_CONV };
enum Overflow { KILN_WRAP, KILN_SAT, KILN_SAT_ZERO, KILN_SAT_SYM };

template <bool C, typename A, typename B>
struct pick {
    typedef A type;
};
template <typename A, typename B>
struct pick<false, A, B> {
    typedef B type;
};
template <int W, bool S>
struct native_type {
    static const int BITS = S ? W : W + 1;  // unsigned raws in a signed type (header comment)
    typedef typename pick<BITS <= 8, int8_t, typename pick<BITS <= 16, int16_t,
        typename pick<BITS <= 32, int32_t, int64_t>::type>::type>::type type;
};

#ifdef KILN_AP_TYPES
template <int W, bool S>
struct raw_type {
    typedef ap_int<W> type;
};
template <int W>
struct raw_type<W, false> {
    typedef ap_uint<W> type;
};
typedef ap_int<128> wide_t;  // requantize_dyn's intermediate (no __int128 in synthesis)
#else
template <int W, bool S>
struct raw_type : native_type<W, S> {};
typedef __int128 wide_t;
#endif

// The raw type of fixed<W, I, S, ...> (header comment).
template <int W, bool S>
using raw_t = typename raw_type<W, S>::type;

// The element type of a weight or bias ROM (header comment).
#if defined(KILN_AP_TYPES) && (defined(__SYNTHESIS__) || defined(KILN_AP_WEIGHTS))
template <int W, bool S>
using rom_t = raw_t<W, S>;
#else
template <int W, bool S>
using rom_t = typename native_type<W, S>::type;
#endif

// A raw of any width read as int64_t (kiln's raws never exceed 64 bits).
template <typename T>
inline int64_t wide(const T& v) {
    return (int64_t)v;
}

// The exact product a * b in its product type PT (W = Wa + Wb): ap_int's operator* is exact
// already; native operands are widened to PT first (a promoted `int` product could overflow).
template <typename PT, typename A, typename B>
inline PT mul(const A& a, const B& b) {
#ifdef KILN_AP_TYPES
    return a * b;
#else
    return (PT)((PT)a * (PT)b);
#endif
}

// v * 2^S in v's own type (S >= 0; the type rules make room for the aligned value). A shift on
// ap_int; a multiply in int64 on native types (a left shift of a negative value is undefined
// behaviour before C++20).
template <int S, typename T>
inline T shl(const T& v) {
#ifdef KILN_AP_TYPES
    return v << S;
#else
    return (T)(wide(v) * ((int64_t)1 << S));
#endif
}

// Bits of a raw of type T, sign included (an unsigned type counts one more, as in native_type):
// the width the exact conversion intermediate is sized from (requantize below).
template <typename T>
struct raw_bits {
    static const int value = 8 * (int)sizeof(T) + ((T)(-1) < (T)0 ? 0 : 1);
};
#ifdef KILN_AP_TYPES
template <int N>
struct raw_bits<ap_int<N> > {
    static const int value = N;
};
template <int N>
struct raw_bits<ap_uint<N> > {
    static const int value = N + 1;
};
template <int N, bool S>
struct raw_bits<ap_int_base<N, S> > {
    static const int value = S ? N : N + 1;
};
#endif

template <int A, int B>
struct max_int {
    static const int value = A > B ? A : B;
};

// floor(raw / 2^d) plus the rounding increment of mode Q (0 < d <= the bits of V less two):
// the rounded integer, in V.
template <Rounding Q, typename V>
inline V round_shift(const V& raw, int d) {
    const V one = 1;
    const V q = raw >> d;  // arithmetic shift: floor
    const V r = raw - q * (one << d);  // 0 <= r < 2^d (q * 2^d: q may be negative,
    // and a left shift of a negative value is undefined behaviour before C++20)
    const V half = one << (d - 1);
    const bool neg = raw < 0;
    bool up = false;
    switch (Q) {
        case KILN_TRN: up = false; break;
        case KILN_TRN_ZERO: up = neg && r != 0; break;
        case KILN_RND: up = r >= half; break;
        case KILN_RND_ZERO: up = r > half || (r == half && neg); break;
        case KILN_RND_MIN_INF: up = r > half; break;
        case KILN_RND_INF: up = r > half || (r == half && !neg); break;
        case KILN_RND_CONV: up = r > half || (r == half && (q & 1) != 0); break;
    }
    const V result = up ? V(q + 1) : q;
    return result;
}

// ap_fixed's converting assignment on a raw v held in V, shifted by d = source fraction bits
// - DST_F (d > 0 rounds with Q, d < 0 scales up exactly), then fitted to W bits with O.
// V must hold v << -d, 2^(d+1) and 2^(W+1) (the callers size it so).
template <int W, bool S, Rounding Q, Overflow O, typename V>
inline int64_t convert_raw(V v, int d) {
    if (d > 0) {
        v = round_shift<Q>(v, d);
    } else if (d < 0) {
        v = v * (V(1) << -d);  // exact (no shift of a negative value: undefined before C++20)
    }
    const V one = 1;
    const V hi = S ? V((one << (W - 1)) - 1) : V((one << W) - 1);
    const V lo = S ? V(-(one << (W - 1))) : V(0);
    const V neg_hi = -hi;
    // sat_sym never yields the most negative raw of a signed type: it counts as underflow
    if (O == KILN_SAT_SYM && S && W > 1 && v == lo) return (int64_t)neg_hi;
    if (v >= lo && v <= hi) return (int64_t)v;
    switch (O) {
        case KILN_SAT: return v > hi ? (int64_t)hi : (int64_t)lo;
        case KILN_SAT_ZERO: return 0;
        case KILN_SAT_SYM:
            if (v > hi) return (int64_t)hi;
            return S ? (W == 1 ? -1 : (int64_t)neg_hi) : (int64_t)lo;
        case KILN_WRAP: break;
    }
    const V mask = (one << W) - 1;
    V low = v & mask;
    if (S && (low >> (W - 1)) != 0) low -= one << W;
    return (int64_t)low;
}

// Raw of fixed<W, W-DST_F, S, Q, O> for a raw with `src_f` fraction bits (ap_fixed's
// operator=), when the source's fraction bits are known only at run time (softmax): computed
// in the 128-bit wide_t, as no narrower bound is known at compile time.
template <int W, int DST_F, bool S, Rounding Q, Overflow O>
inline int64_t requantize_dyn(int64_t raw, int src_f) {
    int d = src_f - DST_F;
    d = d > 100 ? 100 : d;  // |raw| < 2^63: any shift beyond 64 bits rounds the same way
    d = d < -64 ? -64 : d;
    return convert_raw<W, S, Q, O>(wide_t(raw), d);
}

// The same with the source's fraction bits known at compile time, from a raw of any type T.
// Under the vendor types the intermediate is ap_int<IW> with IW the exact width the
// conversion needs (the raw's bits, plus the up-shift, plus a rounding carry; or the
// down-shift's 2^(d+1); or the W-bit range bounds), so synthesis gets an adder and
// comparators of that width, not 128-bit ones. A down-shift by more than the raw's bits
// rounds exactly as one by bits + 1 (the quotient is 0 or -1 and the remainder's comparison
// with the half does not change), so it is clamped there. Native C-simulation uses wide_t:
// the same integers, so the same bits.
template <int SRC_F, int W, int DST_F, typename T>
struct convert_width {
    static const int SW = raw_bits<T>::value;
    static const int D = SRC_F - DST_F;
    static const int UP = D < 0 ? -D : 0;
    static const int DOWN = D > SW + 1 ? SW + 1 : (D > 0 ? D : 0);
    static const int SHIFT = D > 0 ? DOWN : -UP;  // the shift convert_raw applies
    static const int value = max_int<max_int<SW + UP + 1, DOWN + 2>::value, W + 2>::value;
};

template <int SRC_F, int W, int DST_F, bool S, Rounding Q, Overflow O, typename T>
inline raw_t<W, S> requantize(const T& raw) {
    typedef convert_width<SRC_F, W, DST_F, T> CW;
#ifdef KILN_AP_TYPES
    typedef ap_int<CW::value> V;
#else
    typedef wide_t V;
#endif
    return (raw_t<W, S>)convert_raw<W, S, Q, O>(V(raw), CW::SHIFT);
}

// Integer division total / count (count > 0) rounded with mode Q: average pools.
template <Rounding Q>
inline int64_t divide_round(int64_t total, int64_t count) {
    int64_t q = total / count, r = total % count;
    if (r < 0) { r += count; q -= 1; }  // floor division
    const bool neg = total < 0;
    const int64_t twice = 2 * r;
    bool up = false;
    switch (Q) {
        case KILN_TRN: up = false; break;
        case KILN_TRN_ZERO: up = neg && r != 0; break;
        case KILN_RND: up = twice >= count; break;
        case KILN_RND_ZERO: up = twice > count || (twice == count && neg); break;
        case KILN_RND_MIN_INF: up = twice > count; break;
        case KILN_RND_INF: up = twice > count || (twice == count && !neg); break;
        case KILN_RND_CONV: up = twice > count || (twice == count && (q & 1) != 0); break;
    }
    return q + (up ? 1 : 0);
}

}  // namespace kiln

#endif  // KILN_FIXED_H
