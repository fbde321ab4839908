/* kiln_qops.c: see kiln_qops.h. */
#include "kiln_qops.h"

#include <string.h>

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

/* kiln_qops_out of 16 int32 lanes as 16 bytes: the int64 products of the even
 * lanes and of the odd lanes (vpmuldq reads the low dword of each qword, sign-extended).
 * With t >= 32 the high dwords of the rounded products are (p + r) >> 32, which fits int32
 * (|p + r| < 2^62 + 2^61): they are merged into one vector and shifted by t - 32 in 32-bit lanes
 * (floor(floor(x / 2^32) / 2^k) = floor(x / 2^(32+k))). Below 32, the shift, offset and clamp
 * stay in int64 before the merge. */
static inline __m128i kiln_qops_req16(const kiln_qops_vout* o, __m512i s) {
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
    return _mm512_cvtepi32_epi8(v);
}

/* kiln_qops_req16 stored as 16 bytes at y + i. */
static inline void kiln_qops_out16(const kiln_qops_vout* o, __m512i s, void* y, long i) {
    _mm_storeu_si128((__m128i*)((uint8_t*)y + i), kiln_qops_req16(o, s));
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

#if KILN_QOPS_PACK4
/* 16 pixels (m: the valid ones) of one gated channel as packed bytes: kiln_qmul_invariant's
 * arithmetic, then the uint8 flip of the convolution's input. */
static inline __m128i kiln_qops_gated16(const kiln_qops_vout* o, const uint8_t* p,
                                        int is_unsigned, __m512i vz, __m512i vg, __mmask16 m,
                                        __m128i flip) {
    const __m128i raw = _mm_maskz_loadu_epi8(m, p);
    const __m512i a = is_unsigned ? _mm512_cvtepu8_epi32(raw) : _mm512_cvtepi8_epi32(raw);
    return _mm_xor_si128(kiln_qops_req16(o, _mm512_mullo_epi32(_mm512_sub_epi32(a, vz), vg)),
                         flip);
}

/* The packed byte of every stored byte r for the factor g: T[r] = out((a(r) - zx) * g) ^ flip,
 * 16 bytes at a time by the arithmetic above. */
static void kiln_qops_table(const kiln_qops_vout* o, int is_unsigned, __m512i vz, int32_t g,
                            __m128i flip, uint8_t* T) {
    const __m512i vg = _mm512_set1_epi32(g);
    __m128i r = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 0; i < 256; i += 16) {
        uint8_t raw[16];
        _mm_storeu_si128((__m128i*)raw, r);
        _mm_storeu_si128((__m128i*)(T + i),
                         kiln_qops_gated16(o, raw, is_unsigned, vz, vg, 0xFFFF, flip));
        r = _mm_add_epi8(r, _mm_set1_epi8(16));
    }
}

/* T[v] for 64 bytes v (T: 256 bytes, read from L1 at each use rather than held in registers,
 * which GCC spilled): two 128-entry permutes by the low 7 bits, picked by the top bit. */
static inline __m512i kiln_qops_lookup64(const uint8_t* T, __m512i v) {
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)T), v,
                                                _mm512_loadu_si512((const void*)(T + 64)));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)(T + 128)), v,
                                                _mm512_loadu_si512((const void*)(T + 192)));
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi);
}

/* 4 channels of 64 pixels (r[t]: channel t's bytes) interleaved into 256 bytes, out[q] holding
 * pixels 16q .. 16q + 15 as 4 bytes each: channel pairs by byte permutes, then the pairs by
 * word permutes (8 two-source permutes). */
static inline void kiln_qops_interleave4(const __m512i r[4], __m512i out[4]) {
    static const uint8_t pairs[64] = {
        0, 64, 1, 65, 2, 66, 3, 67, 4, 68, 5, 69, 6, 70, 7, 71, 8, 72, 9, 73, 10, 74,
        11, 75, 12, 76, 13, 77, 14, 78, 15, 79, 16, 80, 17, 81, 18, 82, 19, 83, 20, 84, 21, 85,
        22, 86, 23, 87, 24, 88, 25, 89, 26, 90, 27, 91, 28, 92, 29, 93, 30, 94, 31, 95};
    static const uint16_t quads[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46,
                                       15, 47};
    const __m512i lo = _mm512_loadu_si512((const void*)pairs);
    const __m512i hi = _mm512_add_epi8(lo, _mm512_set1_epi8(32));
    const __m512i w0 = _mm512_loadu_si512((const void*)quads);
    const __m512i w1 = _mm512_add_epi16(w0, _mm512_set1_epi16(16));
    const __m512i a_lo = _mm512_permutex2var_epi8(r[0], lo, r[1]);
    const __m512i a_hi = _mm512_permutex2var_epi8(r[0], hi, r[1]);
    const __m512i b_lo = _mm512_permutex2var_epi8(r[2], lo, r[3]);
    const __m512i b_hi = _mm512_permutex2var_epi8(r[2], hi, r[3]);
    out[0] = _mm512_permutex2var_epi16(a_lo, w0, b_lo);
    out[1] = _mm512_permutex2var_epi16(a_lo, w1, b_lo);
    out[2] = _mm512_permutex2var_epi16(a_hi, w0, b_hi);
    out[3] = _mm512_permutex2var_epi16(a_hi, w1, b_hi);
}
/* One image of kiln_qmul_pack4 by tables: the factor of a row takes 256 values at most, so
 * each one met gets a 256-byte table of the packed results (built on first use, in `tables`
 * of 256 * 256 bytes, `built` flags), and a row is 64 bytes per lookup. The 4 channels of a
 * group are interleaved by byte (pairs of channels) then word (pairs of pairs) permutes. */
static void kiln_qops_pack4_tables(const kiln_qops_vout* o, const uint8_t* src, int x_unsigned,
                                   __m512i vz, const uint8_t* gates, int gate_unsigned,
                                   int32_t zg, __m128i flip, uint8_t pad, int C, long HW,
                                   long plane, uint8_t* image, uint8_t* tables,
                                   uint8_t built[256]) {
    const __m512i pads = _mm512_set1_epi8((char)pad);
    for (int c4 = 0; c4 < (C + 3) / 4; ++c4) {
        const uint8_t* t[4];
        int live[4];
        for (int k = 0; k < 4; ++k) {
            const int c = 4 * c4 + k;
            live[k] = c < C;
            t[k] = NULL;
            if (!live[k]) continue;
            const uint8_t gb = gates[c];
            uint8_t* T = tables + 256 * gb;
            if (!built[gb]) {
                const int32_t g = (gate_unsigned ? (int32_t)gb : (int32_t)(int8_t)gb) - zg;
                kiln_qops_table(o, x_unsigned, vz, g, flip, T);
                built[gb] = 1;
            }
            t[k] = T;
        }
        uint8_t* dst = image + c4 * plane;
        for (long p = 0; p < HW; p += 64) {
            const long n = HW - p < 64 ? HW - p : 64;
            const __mmask64 m = n == 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1;
            __m512i r[4];
            for (int k = 0; k < 4; ++k)
                r[k] = live[k] ? kiln_qops_lookup64(t[k], _mm512_maskz_loadu_epi8(
                                     m, src + (long)(4 * c4 + k) * HW + p))
                               : pads;
            __m512i out[4];
            kiln_qops_interleave4(r, out);
            for (int q = 0; q < 4 && 16 * q < n; ++q) {
                const long left = 4 * (n - 16 * q);
                const __mmask64 keep = left >= 64 ? ~(__mmask64)0
                                                  : ((__mmask64)1 << left) - 1;
                _mm512_mask_storeu_epi8(dst + 4 * (p + 16 * q), keep, out[q]);
            }
        }
    }
}
#endif

void kiln_qmul_pack4(const void* x, int x_unsigned, int32_t zx, const void* gate,
                     int gate_unsigned, int32_t zg, const kiln_qout* out, int flip, int pad,
                     int C, long HW, int N, int images, uint8_t* tables, uint8_t* P) {
    const int c4n = (C + 3) / 4;
    const long plane = HW * 4 * images, chunk = plane * c4n;
#if KILN_QOPS_PACK4
    const uint8_t* src = (const uint8_t*)x;
    static const uint8_t order[64] = {
        0, 16, 32, 48, 1, 17, 33, 49, 2, 18, 34, 50, 3, 19, 35, 51, 4, 20, 36, 52, 5, 21,
        37, 53, 6, 22, 38, 54, 7, 23, 39, 55, 8, 24, 40, 56, 9, 25, 41, 57, 10, 26, 42, 58,
        11, 27, 43, 59, 12, 28, 44, 60, 13, 29, 45, 61, 14, 30, 46, 62, 15, 31, 47, 63};
    const __m512i idx = _mm512_loadu_si512((const void*)order);
    const kiln_qops_vout vo = kiln_qops_vout_of(out);
    const __m512i vz = _mm512_set1_epi32(zx);
    const __m128i flips = _mm_set1_epi8((char)flip), pads = _mm_set1_epi8((char)pad);
    uint8_t built[256];
    memset(built, 0, sizeof built);
#else
    (void)tables;
#endif
    for (int n = 0; n < N; ++n) {
        uint8_t* image = P + (long)(n / images) * chunk + (long)(n % images) * HW * 4;
#if KILN_QOPS_PACK4
        if (tables) {
            kiln_qops_pack4_tables(&vo, src + (long)n * C * HW, x_unsigned, vz,
                                   (const uint8_t*)gate + (long)n * C, gate_unsigned, zg,
                                   flips, (uint8_t)pad, C, HW, plane, image, tables, built);
            continue;
        }
        for (int c4 = 0; c4 < c4n; ++c4) {
            __m512i vg[4];
            const uint8_t* rows[4];
            for (int t = 0; t < 4; ++t) {
                const int c = 4 * c4 + t;
                rows[t] = c < C ? src + ((long)n * C + c) * HW : NULL;
                vg[t] = _mm512_set1_epi32(
                    c < C ? kiln_qops_load(gate, gate_unsigned, (long)n * C + c) - zg : 0);
            }
            uint8_t* dst = image + c4 * plane;
            for (long p = 0; p < HW; p += 16) {
                const long k = HW - p < 16 ? HW - p : 16;
                const __mmask16 m = (__mmask16)((1u << k) - 1u);
                __m128i part[4];
                for (int t = 0; t < 4; ++t)
                    part[t] = rows[t] ? kiln_qops_gated16(&vo, rows[t] + p, x_unsigned, vz,
                                                          vg[t], m, flips)
                                      : pads;
                __m512i v = _mm512_inserti32x4(_mm512_castsi128_si512(part[0]), part[1], 1);
                v = _mm512_inserti32x4(_mm512_inserti32x4(v, part[2], 2), part[3], 3);
                const __mmask64 bytes = k == 16 ? ~(__mmask64)0 : ((__mmask64)1 << (4 * k)) - 1;
                _mm512_mask_storeu_epi8(dst + 4 * p, bytes, _mm512_permutexvar_epi8(idx, v));
            }
        }
#else
        for (int c = 0; c < 4 * c4n; ++c) {
            uint8_t* dst = image + (long)(c / 4) * plane + c % 4;
            if (c >= C) {
                for (long p = 0; p < HW; ++p) dst[4 * p] = (uint8_t)pad;
                continue;
            }
            const long row = (long)n * C + c;
            const int32_t g = kiln_qops_load(gate, gate_unsigned, row) - zg;
            for (long p = 0; p < HW; ++p) {
                const int32_t v = kiln_qops_out(out, (kiln_qops_load(x, x_unsigned,
                                                                     row * HW + p) - zx) * g);
                dst[4 * p] = (uint8_t)((v & 0xFF) ^ flip);
            }
        }
#endif
    }
}

uint8_t* kiln_qpacked_stack(const void* packed, int stack, int stacks, long bytes,
                            uint8_t* scratch) {
    const uint8_t* p = (const uint8_t*)packed + (long)stack * bytes;
    /* in place where the stacks after it in the buffer cover the 128 bytes the tiles may read
     * past it (only read by the caller); small stacks near the end are copied */
    if ((long)(stacks - 1 - stack) * bytes >= 128) return (uint8_t*)(uintptr_t)p;
    memcpy(scratch, p, (size_t)bytes);
    memset(scratch + bytes, 0, 128);
    return scratch;
}

void kiln_qrow_sums(const void* x, int x_unsigned, long rows, long count, int32_t* sums) {
    const uint8_t* p = (const uint8_t*)x;
    long r = 0;
#if KILN_QOPS_AVX512
    /* Sums of bytes by vpsadbw against 0 (8 bytes to a 64-bit lane); int8 is read + 128
     * (x ^ 0x80) and 128 per byte taken off again. */
    const __m512i flip = _mm512_set1_epi8(x_unsigned ? 0 : (char)0x80), zero =
        _mm512_setzero_si512();
    const int32_t bias = x_unsigned ? 0 : (int32_t)(-128 * count);
    if (count == 16) { /* 4 rows a load: lanes 2k, 2k + 1 hold row k's halves */
        for (; r + 4 <= rows; r += 4) {
            __m512i s = _mm512_sad_epu8(
                _mm512_xor_si512(_mm512_loadu_si512((const void*)(p + r * 16)), flip), zero);
            s = _mm512_add_epi64(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
            const __m256i four = _mm512_cvtepi64_epi32(_mm512_maskz_compress_epi64(0x55, s));
            _mm_storeu_si128((__m128i*)(sums + r),
                             _mm_add_epi32(_mm256_castsi256_si128(four), _mm_set1_epi32(bias)));
        }
    }
    for (; r < rows; ++r) {
        const uint8_t* row = p + r * count;
        __m512i acc = zero;
        for (long j = 0; j < count; j += 64) {
            const __mmask64 m = count - j >= 64 ? ~(__mmask64)0
                                                : ((__mmask64)1 << (count - j)) - 1;
            const __m512i v = _mm512_maskz_mov_epi8(
                m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, row + j), flip));
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
        }
        sums[r] = (int32_t)_mm512_reduce_add_epi64(acc) + bias;
    }
#endif
    for (; r < rows; ++r) {
        int32_t s = 0;
        for (long j = 0; j < count; ++j) s += kiln_qops_load(p, x_unsigned, r * count + j);
        sums[r] = s;
    }
}
