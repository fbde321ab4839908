/* kiln runtime (private): the 16-lane int32 -> int8 requantization the VNNI kernels store
 * with (kiln_qvnni.c's convolutions, kiln_qdw.c's depthwise), one definition for both. Bit for
 * bit kiln.ir.requant; which mode a layer may take is decided per channel by kiln_qchannels. */
#ifndef KILN_QREQUANT_H
#define KILN_QREQUANT_H

#include "kiln_qvnni.h"

#if KILN_QVNNI
#include <immintrin.h>

/* 16 lanes (bias included) requantized to bytes. mode 0: even and odd lanes through the int64
 * rounding multiply-shift, clamped to [lo - zo, hi - zo], + zo. Else the int32 form: the high
 * words of the products gathered by one vpermt2d, + round (zo folded in), shifted, clamped
 * below at lo and above at hi (mode 1) or by the saturating narrowing (hi the storage
 * maximum: 2 signed, 3 unsigned). */
static inline __attribute__((always_inline)) __m128i kiln_qrequant16(__m512i acc, const kiln_qch* k, int mode) {
    const __m512i m = _mm512_set1_epi32(k->mult);
    __m512i e = _mm512_mul_epi32(acc, m);
    __m512i o = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), m);
    __m512i y;
    if (mode) {
        const __m512i high = _mm512_set_epi32(31, 15, 29, 13, 27, 11, 25, 9, 23, 7, 21, 5, 19,
                                              3, 17, 1);
        y = _mm512_permutex2var_epi32(e, high, o);
        y = _mm512_srav_epi32(_mm512_add_epi32(y, _mm512_set1_epi32(k->round)),
                              _mm512_set1_epi32(k->shift));
        y = _mm512_max_epi32(y, _mm512_set1_epi32(k->lo));
        if (mode == 2) return _mm512_cvtsepi32_epi8(y);
        if (mode == 3) return _mm512_cvtusepi32_epi8(y);
        return _mm512_cvtepi32_epi8(_mm512_min_epi32(y, _mm512_set1_epi32(k->hi)));
    }
    const __m512i round = _mm512_set1_epi64((int64_t)1 << (k->t - 1));
    const __m512i lo = _mm512_set1_epi64((int64_t)k->lo - k->zo);
    const __m512i hi = _mm512_set1_epi64((int64_t)k->hi - k->zo);
    const __m128i t = _mm_cvtsi32_si128(k->t);
    e = _mm512_sra_epi64(_mm512_add_epi64(e, round), t);
    o = _mm512_sra_epi64(_mm512_add_epi64(o, round), t);
    e = _mm512_min_epi64(_mm512_max_epi64(e, lo), hi);
    o = _mm512_min_epi64(_mm512_max_epi64(o, lo), hi);
    y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, e, _mm512_slli_epi64(o, 32));
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(y, _mm512_set1_epi32(k->zo)));
}

#endif /* KILN_QVNNI */
#endif /* KILN_QREQUANT_H */
