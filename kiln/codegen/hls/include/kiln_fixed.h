// kiln_fixed.h: kiln's fixed-point conversions for HLS C++ that builds with plain g++.
//
// A value of kiln's `fixed<W,I,signed,Q,O>` (ap_fixed<W,I,Q,O>) is held as its raw integer
// (value = raw * 2^-(W-I)) in an int64_t. Arithmetic on raws is exact: kiln's type rules
// (kiln/ir/fixed_arith.py, the same as ap_fixed's) give every product and accumulator enough
// bits, so int64 never overflows. Narrowing happens only in kiln::requantize, which mirrors
// ap_fixed's converting assignment bit for bit:
//   rounding  (Q): KILN_TRN floor, KILN_TRN_ZERO toward zero, KILN_RND ties up,
//                  KILN_RND_ZERO ties toward zero, KILN_RND_MIN_INF ties down,
//                  KILN_RND_INF ties away from zero, KILN_RND_CONV ties to even;
//   overflow  (O): KILN_WRAP two's-complement wrap, KILN_SAT clamp, KILN_SAT_ZERO zero when out
//                  of range, KILN_SAT_SYM clamp to [-max, max] (signed; the most negative
//                  raw itself becomes -max, as in kiln.ir.fixed).
// AP_WRAP_SM is not emitted by kiln's HLS generator (the generator refuses it).
//
// The same header serves C-simulation under g++ and synthesis: raws are plain integers; the
// generated code only shifts, adds, multiplies and compares them.
#ifndef KILN_FIXED_H
#define KILN_FIXED_H

#include <stdint.h>

namespace kiln {

enum Rounding { KILN_TRN, KILN_TRN_ZERO, KILN_RND, KILN_RND_ZERO, KILN_RND_MIN_INF,
                KILN_RND_INF, KILN_RND_CONV };
enum Overflow { KILN_WRAP, KILN_SAT, KILN_SAT_ZERO, KILN_SAT_SYM };

typedef __int128 wide_t;

// floor(raw / 2^d) plus the rounding increment of mode Q (d > 0): the rounded integer.
template <Rounding Q>
inline wide_t round_shift(wide_t raw, int d) {
    if (d > 100) d = 100;  // |raw| < 2^63: any shift beyond 64 bits rounds the same way
    const wide_t one = 1;
    const wide_t q = raw >> d;  // arithmetic shift: floor
    const wide_t r = raw - q * (one << d);  // 0 <= r < 2^d (q * 2^d: q may be negative,
    // and a left shift of a negative value is undefined behaviour before C++20)
    const wide_t half = one << (d - 1);
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
    return q + (up ? 1 : 0);
}

// Raw of fixed<W, W-DST_F, S, Q, O> for a raw with `src_f` fraction bits (ap_fixed's
// operator=); the source's fraction bits may be known only at run time (softmax).
template <int W, int DST_F, bool S, Rounding Q, Overflow O>
inline int64_t requantize_dyn(int64_t raw, int src_f) {
    const int d = src_f - DST_F;
    wide_t v = raw;
    if (d > 0) {
        v = round_shift<Q>(v, d);
    } else if (d < 0) {
        const int up = -d > 64 ? 64 : -d;
        v = v * (wide_t(1) << up);  // exact in 128 bits for |raw| < 2^63 (no shift of a
        // negative value: undefined behaviour before C++20)
    }
    const wide_t one = 1;
    const wide_t hi = S ? (one << (W - 1)) - 1 : (one << W) - 1;
    const wide_t lo = S ? -(one << (W - 1)) : 0;
    // sat_sym never yields the most negative raw of a signed type: it counts as underflow
    if (O == KILN_SAT_SYM && S && W > 1 && v == lo) return (int64_t)(-hi);
    if (v >= lo && v <= hi) return (int64_t)v;
    switch (O) {
        case KILN_SAT: return (int64_t)(v > hi ? hi : lo);
        case KILN_SAT_ZERO: return 0;
        case KILN_SAT_SYM: return (int64_t)(v > hi ? hi : (S ? (W == 1 ? -1 : -hi) : lo));
        case KILN_WRAP: break;
    }
    const wide_t mask = (one << W) - 1;
    wide_t low = v & mask;
    if (S && (low >> (W - 1)) != 0) low -= one << W;
    return (int64_t)low;
}

// The same with the source's fraction bits known at compile time.
template <int SRC_F, int W, int DST_F, bool S, Rounding Q, Overflow O>
inline int64_t requantize(int64_t raw) {
    return requantize_dyn<W, DST_F, S, Q, O>(raw, SRC_F);
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
