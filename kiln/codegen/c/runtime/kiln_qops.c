/* kiln_qops.c: see kiln_qops.h. */
#include "kiln_qops.h"

#if KILN_QOPS_AVX512
#include <immintrin.h>
#endif

static inline int32_t kiln_qops_load(const void* p, int is_unsigned, long i) {
    return is_unsigned ? (int32_t)((const uint8_t*)p)[i] : (int32_t)((const int8_t*)p)[i];
}

/* One rescaled operand, scalar (the split form; intermediates fit int32 by the emitter). */
static inline int32_t kiln_qops_term(const kiln_qterm* t, int32_t a) {
    return a * t->hi + t->bias + ((a * t->lo + t->round) >> t->u);
}

/* The final requantization of one int32 sum, scalar. */
static inline int32_t kiln_qops_out(const kiln_qout* o, int32_t s) {
    int64_t v = (((int64_t)s * o->mult + ((int64_t)1 << (o->t - 1))) >> o->t) + o->zo;
    return (int32_t)(v < o->lo ? o->lo : (v > o->hi ? o->hi : v));
}

static inline void kiln_qops_store(void* y, long i, int32_t v) {
    ((uint8_t*)y)[i] = (uint8_t)(v & 0xFF);  /* the stored byte of int8 and uint8 alike */
}

#if KILN_QOPS_AVX512
static inline __m512i kiln_qops_load16(const void* p, int is_unsigned, long i) {
    const __m128i raw = _mm_loadu_si128((const __m128i*)((const uint8_t*)p + i));
    return is_unsigned ? _mm512_cvtepu8_epi32(raw) : _mm512_cvtepi8_epi32(raw);
}

/* A kiln_qterm's constants broadcast once, out of the loops (the stores through void* could
 * alias the struct, so GCC would reload it every iteration). */
typedef struct {
    __m512i hi, bias, lo, round;
    unsigned u;
    int is_unsigned;
} kiln_qops_vterm;

static inline kiln_qops_vterm kiln_qops_vterm_of(const kiln_qterm* t) {
    kiln_qops_vterm v = {_mm512_set1_epi32(t->hi), _mm512_set1_epi32(t->bias),
                         _mm512_set1_epi32(t->lo), _mm512_set1_epi32(t->round),
                         (unsigned)t->u, t->is_unsigned};
    return v;
}

static inline __m512i kiln_qops_term16(const kiln_qops_vterm* t, const void* p, long i) {
    const __m512i a = kiln_qops_load16(p, t->is_unsigned, i);
    const __m512i whole = _mm512_add_epi32(_mm512_mullo_epi32(a, t->hi), t->bias);
    const __m512i part = _mm512_add_epi32(_mm512_mullo_epi32(a, t->lo), t->round);
    return _mm512_add_epi32(whole, _mm512_srai_epi32(part, t->u));
}

/* A kiln_qout's constants, broadcast. */
typedef struct {
    __m512i mult, round, zo64, lo64, hi64, zo, lo, hi;
    unsigned t;
} kiln_qops_vout;

static inline kiln_qops_vout kiln_qops_vout_of(const kiln_qout* o) {
    kiln_qops_vout v = {_mm512_set1_epi64(o->mult), _mm512_set1_epi64((int64_t)1 << (o->t - 1)),
                        _mm512_set1_epi64(o->zo), _mm512_set1_epi64(o->lo),
                        _mm512_set1_epi64(o->hi), _mm512_set1_epi32(o->zo),
                        _mm512_set1_epi32(o->lo), _mm512_set1_epi32(o->hi), (unsigned)o->t};
    return v;
}

/* kiln_qops_out of 16 int32 lanes into 16 bytes at y + i: the int64 products of the even
 * lanes and of the odd lanes (vpmuldq reads the low dword of each qword, sign-extended).
 * With t >= 32 the high dwords of the rounded products are (p + r) >> 32, which fits int32
 * (|p + r| < 2^62 + 2^61): they are merged into one vector and shifted by t - 32 in 32-bit lanes
 * (floor(floor(x / 2^32) / 2^k) = floor(x / 2^(32+k))). Below 32, the shift, offset and clamp
 * stay in int64 before the merge. */
static inline void kiln_qops_out16(const kiln_qops_vout* o, __m512i s, void* y, long i) {
    const __m512i ev = _mm512_add_epi64(_mm512_mul_epi32(s, o->mult), o->round);
    const __m512i od = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(s, 32), o->mult),
                                        o->round);
    __m512i v;
    if (o->t >= 32) {
        v = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(ev, 32), od);
        v = _mm512_add_epi32(_mm512_srai_epi32(v, o->t - 32), o->zo);
        v = _mm512_min_epi32(_mm512_max_epi32(v, o->lo), o->hi);
    } else {
        __m512i e = _mm512_add_epi64(_mm512_srai_epi64(ev, o->t), o->zo64);
        __m512i d = _mm512_add_epi64(_mm512_srai_epi64(od, o->t), o->zo64);
        e = _mm512_min_epi64(_mm512_max_epi64(e, o->lo64), o->hi64);
        d = _mm512_min_epi64(_mm512_max_epi64(d, o->lo64), o->hi64);
        v = _mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(d, 32));
    }
    _mm_storeu_si128((__m128i*)((uint8_t*)y + i), _mm512_cvtepi32_epi8(v));
}
#endif

void kiln_qadd(const void* a, const kiln_qterm* ta, const void* b, const kiln_qterm* tb,
               const kiln_qout* out, long n, void* y) {
    long i = 0;
#if KILN_QOPS_AVX512
    if (ta->lo == 0 && tb->lo != 0) {  /* the sum is symmetric: the plain term goes second */
        const void* p = a;
        const kiln_qterm* t = ta;
        a = b, ta = tb, b = p, tb = t;
    }
    const kiln_qops_vterm va = kiln_qops_vterm_of(ta), vb = kiln_qops_vterm_of(tb);
    const kiln_qops_vout vo = kiln_qops_vout_of(out);
    if (tb->lo == 0) {
        /* M a multiple of 2^u (TFLite's rescale of the larger-scale input is exactly 1/2):
         * the rounded part is (2^(u-1)) >> u = 0, the term is b * hi + bias. The two biases
         * fold into one constant (int32 sums wrap alike in any order). */
        const __m512i hb = vb.hi, bias = _mm512_add_epi32(va.bias, vb.bias);
        for (; i + 16 <= n; i += 16) {
            const __m512i x = kiln_qops_load16(a, ta->is_unsigned, i);
            const __m512i part = _mm512_add_epi32(_mm512_mullo_epi32(x, va.lo), va.round);
            __m512i s = _mm512_add_epi32(_mm512_mullo_epi32(x, va.hi),
                                         _mm512_srai_epi32(part, va.u));
            s = _mm512_add_epi32(s, _mm512_mullo_epi32(kiln_qops_load16(b, tb->is_unsigned, i),
                                                       hb));
            kiln_qops_out16(&vo, _mm512_add_epi32(s, bias), y, i);
        }
    }
    for (; i + 16 <= n; i += 16) {
        const __m512i s = _mm512_add_epi32(kiln_qops_term16(&va, a, i),
                                           kiln_qops_term16(&vb, b, i));  /* wraps like int32 */
        kiln_qops_out16(&vo, s, y, i);
    }
#endif
    for (; i < n; ++i) {
        const uint32_t sa = (uint32_t)kiln_qops_term(ta, kiln_qops_load(a, ta->is_unsigned, i));
        const uint32_t sb = (uint32_t)kiln_qops_term(tb, kiln_qops_load(b, tb->is_unsigned, i));
        kiln_qops_store(y, i, kiln_qops_out(out, (int32_t)(sa + sb)));  /* int32 wrap */
    }
}

void kiln_qmul_invariant(const void* x, int x_unsigned, int32_t zx, int32_t g,
                         const kiln_qout* out, long n, void* y) {
    long i = 0;
#if KILN_QOPS_AVX512
    const __m512i vz = _mm512_set1_epi32(zx), vg = _mm512_set1_epi32(g);
    const kiln_qops_vout vo = kiln_qops_vout_of(out);
    for (; i + 16 <= n; i += 16) {
        const __m512i d = _mm512_sub_epi32(kiln_qops_load16(x, x_unsigned, i), vz);
        kiln_qops_out16(&vo, _mm512_mullo_epi32(d, vg), y, i);  /* |d * g| < 2^17 */
    }
#endif
    for (; i < n; ++i)
        kiln_qops_store(y, i, kiln_qops_out(out, (kiln_qops_load(x, x_unsigned, i) - zx) * g));
}
