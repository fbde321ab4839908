/* kiln_qvnni.c: see kiln_qvnni.h. Without VNNI the same functions run as plain loops over the
 * same layouts (for tests and portability; generated code then uses the int16 kernels). */
#include "kiln_qvnni.h"

#include <string.h>
#if KILN_QVNNI
#include <immintrin.h>
#endif

static long kiln_qoffset(const kiln_qgeom* g, int p) {
    int oy = p / g->ow, ox = p % g->ow;
    return ((long)oy * g->sh * g->wp + (long)ox * g->sw) * g->elem;
}

int kiln_qtiles(const kiln_qgeom* g, kiln_qtile* tiles) {
    const int pixels = g->oh * g->ow, tap = g->elem == 4 ? 1 : g->dw;
    int n = 0;
    for (int p = 0; p < pixels; ++n) {
        kiln_qtile* t = tiles + n;
        long base = kiln_qoffset(g, p);
        int count = 1;
        while (count < 16 && p + count < pixels &&
               kiln_qoffset(g, p + count) - base + 3 * tap < 128)
            ++count;
        t->base = (int32_t)base;
        t->p0 = p;
        t->count = count;
        t->dense = 1;
        for (int j = 0; j < 16; ++j) {
            long off = kiln_qoffset(g, p + (j < count ? j : 0)) - base;
            for (int k = 0; k < 4; ++k) t->idx[4 * j + k] = (uint8_t)(off + k * tap);
            if (j < count && (off != 4 * j || tap != 1)) t->dense = 0;
        }
        p += count;
    }
    if (n % 2) {
        tiles[n] = tiles[n - 1];
        tiles[n++].count = 0;
    }
    return n;
}

long kiln_qpack_bytes(int C, const kiln_qgeom* g) {
    long planes = g->elem == 4 ? (C + 3) / 4 : C;
    return planes * g->hp * g->wp * g->elem + 128;
}

#if KILN_QVNNI
/* One padded row of 4 interleaved channels: 16 pixels of each of the 4 rows (NULL: the
 * channel is past C and holds the pad byte) into 64 bytes by one vpermb. */
static void kiln_qpack_row4(const uint8_t* const rows[4], int W, uint8_t flip, uint8_t pad,
                            uint8_t* dst) {
    static const uint8_t order[64] = {
        0, 16, 32, 48, 1, 17, 33, 49, 2, 18, 34, 50, 3, 19, 35, 51, 4, 20, 36, 52, 5, 21,
        37, 53, 6, 22, 38, 54, 7, 23, 39, 55, 8, 24, 40, 56, 9, 25, 41, 57, 10, 26, 42, 58,
        11, 27, 43, 59, 12, 28, 44, 60, 13, 29, 45, 61, 14, 30, 46, 62, 15, 31, 47, 63};
    const __m512i idx = _mm512_loadu_si512((const void*)order);
    const __m128i pads = _mm_set1_epi8((char)pad), flips = _mm_set1_epi8((char)flip);
    for (int x = 0; x < W; x += 16) {
        const int n = W - x < 16 ? W - x : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1u);
        __m128i part[4];
        for (int t = 0; t < 4; ++t)
            part[t] = rows[t] ? _mm_xor_si128(_mm_maskz_loadu_epi8(m, rows[t] + x), flips)
                              : pads;
        __m512i v = _mm512_inserti32x4(_mm512_castsi128_si512(part[0]), part[1], 1);
        v = _mm512_inserti32x4(_mm512_inserti32x4(v, part[2], 2), part[3], 3);
        const __mmask64 bytes = n == 16 ? ~(__mmask64)0 : ((__mmask64)1 << (4 * n)) - 1;
        _mm512_mask_storeu_epi8(dst + 4 * x, bytes, _mm512_permutexvar_epi8(idx, v));
    }
}
#endif

void kiln_qpack(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt, int pl,
                const kiln_qgeom* g, uint8_t* P) {
    const long bytes = kiln_qpack_bytes(C, g);
    const uint8_t* src = (const uint8_t*)x;
    const uint8_t flip = x_unsigned ? 0 : 0x80;
    const int e = g->elem;
    memset(P + bytes - 128, 0, 128);
#if KILN_QVNNI
    if (e == 4 && g->hp == H && g->wp == W) { /* unpadded: whole planes at once */
        for (int c4 = 0; c4 < (C + 3) / 4; ++c4) {
            const uint8_t* rows[4];
            for (int t = 0; t < 4; ++t)
                rows[t] = 4 * c4 + t < C ? src + (long)(4 * c4 + t) * H * W : NULL;
            kiln_qpack_row4(rows, H * W, flip, (uint8_t)pad, P + (long)c4 * H * W * 4);
        }
        return;
    }
#endif
    memset(P, pad, (size_t)(bytes - 128));
#if KILN_QVNNI
    if (e == 4) {
        for (int c4 = 0; c4 < (C + 3) / 4; ++c4)
            for (int y = 0; y < H; ++y) {
                const uint8_t* rows[4];
                for (int t = 0; t < 4; ++t)
                    rows[t] = 4 * c4 + t < C ? src + ((long)(4 * c4 + t) * H + y) * W : NULL;
                kiln_qpack_row4(rows, W, flip, (uint8_t)pad,
                                P + (((long)c4 * g->hp + y + pt) * g->wp + pl) * 4);
            }
        return;
    }
    const __m512i flips = _mm512_set1_epi8((char)flip);
    for (int c = 0; e == 1 && c < C; ++c)
        for (int y = 0; y < H; ++y) {
            const uint8_t* row = src + ((long)c * H + y) * W;
            uint8_t* dst = P + ((long)c * g->hp + y + pt) * g->wp + pl;
            for (int i = 0; i < W; i += 64) {
                const __mmask64 m = W - i >= 64 ? ~(__mmask64)0
                                                : ((__mmask64)1 << (W - i)) - 1;
                _mm512_mask_storeu_epi8(dst + i, m, _mm512_xor_si512(
                    _mm512_maskz_loadu_epi8(m, row + i), flips));
            }
        }
    if (e == 1) return;
#endif
    for (int c = 0; c < C; ++c) {
        const long plane = e == 4 ? (long)(c / 4) * g->hp : (long)c * g->hp;
        for (int y = 0; y < H; ++y) {
            const uint8_t* row = src + ((long)c * H + y) * W;
            uint8_t* dst = P + ((plane + y + pt) * g->wp + pl) * e + (e == 4 ? c % 4 : 0);
            if (e == 1) {
                for (int i = 0; i < W; ++i) dst[i] = (uint8_t)(row[i] ^ flip);
            } else {
                for (int i = 0; i < W; ++i) dst[(long)i * 4] = (uint8_t)(row[i] ^ flip);
            }
        }
    }
}

void kiln_qpack_rows(const void* x, int x_unsigned, int pad, int M, int K, uint8_t* P) {
    const uint8_t* src = (const uint8_t*)x;
    const uint8_t flip = x_unsigned ? 0 : 0x80;
    const int k4 = (K + 3) / 4;
    memset(P + (long)k4 * M * 4, 0, 128);
    for (int m = 0; m < M; ++m) {
        const uint8_t* row = src + (long)m * K;
        for (int k = 0; k < 4 * k4; ++k)
            P[((long)(k / 4) * M + m) * 4 + k % 4] = k < K ? (uint8_t)(row[k] ^ flip)
                                                           : (uint8_t)pad;
    }
}

/* Requantizes 16 lanes of channel c (lanes past the tile's count are not stored). */
static void kiln_qstore_lanes(const int32_t acc[16], const kiln_requant* rq, int c, int ch0,
                              const kiln_qtile* t, void* out, long rs, long cs) {
    uint8_t* o = (uint8_t*)out + (long)c * cs;
    c += ch0;
    const int i = rq->per_channel ? c : 0;
    for (int j = 0; j < t->count; ++j) {
        int32_t s = (int32_t)((uint32_t)acc[j] + (uint32_t)rq->bias[c]);
        int64_t y = kiln_rmulshift(s, rq->mult[i], rq->shift[i]) + rq->zo;
        y = y < rq->lo ? rq->lo : (y > rq->hi ? rq->hi : y);
        o[(long)(t->p0 + j) * rs] = (uint8_t)y;
    }
}

/* Steps of the dot product: ceil(C / 4) * kh * kw (elem 4) or C * kh * ceil(kw / 4). */
static long kiln_qnsteps(const kiln_qgeom* g, int C) {
    return g->elem == 4 ? (long)(C + 3) / 4 * g->kh * g->kw
                        : (long)C * g->kh * ((g->kw + 3) / 4);
}

/* Byte offsets of each step's taps (elem 4: channel group, row, column; elem 1: channel, row,
 * group of 4 columns). */
static void kiln_qsteps(const kiln_qgeom* g, int C, long* offsets) {
    int s = 0;
    const int e = g->elem, cols = e == 4 ? g->kw : (g->kw + 3) / 4, step = e == 4 ? 1 : 4;
    for (int c = 0; c < (e == 4 ? (C + 3) / 4 : C); ++c)
        for (int ky = 0; ky < g->kh; ++ky)
            for (int kx = 0; kx < cols; ++kx)
                offsets[s++] = (((long)c * g->hp + (long)ky * g->dh) * g->wp +
                                (long)kx * step * g->dw) * e;
}

#if KILN_QVNNI
#define KILN_QINLINE static inline __attribute__((always_inline))

/* One channel's requantization constants, broadcast (64-bit lanes for the products). */
typedef struct {
    __m512i bias, mult, round, lo, hi, zo;
    __m128i shift;
} kiln_qrq16;

KILN_QINLINE kiln_qrq16 kiln_qrq_channel(const kiln_requant* rq, int c) {
    const int i = rq->per_channel ? c : 0, t = 31 - rq->shift[i];
    kiln_qrq16 k;
    k.bias = _mm512_set1_epi32(rq->bias[c]);
    k.mult = _mm512_set1_epi64(rq->mult[i]);
    k.round = _mm512_set1_epi64((int64_t)1 << (t - 1));
    k.lo = _mm512_set1_epi64((int64_t)rq->lo - rq->zo);
    k.hi = _mm512_set1_epi64((int64_t)rq->hi - rq->zo);
    k.zo = _mm512_set1_epi32(rq->zo);
    k.shift = _mm_cvtsi32_si128(t);
    return k;
}

/* 16 lanes requantized to bytes: (acc + bias) wrapped to int32; even and odd lanes through
 * the int64 rounding multiply-shift, clamped to [lo - zo, hi - zo]; back together, + zo. */
KILN_QINLINE __m128i kiln_qrequant16(__m512i acc, const kiln_qrq16* k) {
    acc = _mm512_add_epi32(acc, k->bias);
    __m512i e = _mm512_mul_epi32(acc, k->mult);
    __m512i o = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), k->mult);
    e = _mm512_sra_epi64(_mm512_add_epi64(e, k->round), k->shift);
    o = _mm512_sra_epi64(_mm512_add_epi64(o, k->round), k->shift);
    e = _mm512_min_epi64(_mm512_max_epi64(e, k->lo), k->hi);
    o = _mm512_min_epi64(_mm512_max_epi64(o, k->lo), k->hi);
    __m512i y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, e, _mm512_slli_epi64(o, 32));
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(y, k->zo));
}

/* Stores channel c (c + ch0 in rq) of a tile: contiguous masked bytes when rs == 1. */
KILN_QINLINE void kiln_qput16(__m512i acc, const kiln_qrq16* k, const kiln_requant* rq, int c,
                              int ch0, const kiln_qtile* t, void* out, long rs, long cs) {
    if (t->count == 0) return;
    if (rs == 1) {
        const __mmask16 mask = (__mmask16)((1u << t->count) - 1u);
        _mm_mask_storeu_epi8((uint8_t*)out + (long)c * cs + t->p0, mask, kiln_qrequant16(acc, k));
        return;
    }
    int32_t lanes[16];
    _mm512_storeu_si512((void*)lanes, acc);
    kiln_qstore_lanes(lanes, rq, c, ch0, t, out, rs, cs);
}

/* The 16 lanes' 4 bytes at a tap: two loads and one vpermi2b (one load for a dense tile). */
KILN_QINLINE __m512i kiln_qgather(const uint8_t* at, __m512i idx, int dense) {
    if (dense) return _mm512_loadu_si512((const void*)at);
    return _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)at), idx,
                                    _mm512_loadu_si512((const void*)(at + 64)));
}

/* Channels nb..nb+7 of two tiles (dense: both tiles read their lanes' bytes contiguously). */
KILN_QINLINE void kiln_qconv_block(const kiln_qtile* t, const uint8_t* P, const long* offsets,
                                   long S, int nb, int N, const int32_t* w,
                                   const kiln_requant* rq, int ch0, void* out, long rs, long cs,
                                   int dense) {
    __m512i acc0[KILN_QVNR], acc1[KILN_QVNR];
    for (int n = 0; n < KILN_QVNR; ++n) acc0[n] = acc1[n] = _mm512_setzero_si512();
    const __m512i i0 = _mm512_loadu_si512((const void*)t[0].idx);
    const __m512i i1 = _mm512_loadu_si512((const void*)t[1].idx);
    const uint8_t *a0 = P + t[0].base, *a1 = P + t[1].base;
    for (long s = 0; s < S; ++s, w += KILN_QVNR) {
        const __m512i x0 = kiln_qgather(a0 + offsets[s], i0, dense);
        const __m512i x1 = kiln_qgather(a1 + offsets[s], i1, dense);
        for (int n = 0; n < KILN_QVNR; ++n) {
            const __m512i b = _mm512_set1_epi32(w[n]);
            acc0[n] = _mm512_dpbusd_epi32(acc0[n], x0, b);
            acc1[n] = _mm512_dpbusd_epi32(acc1[n], x1, b);
        }
    }
    for (int n = 0; n < KILN_QVNR && nb + n < N; ++n) {
        const kiln_qrq16 k = kiln_qrq_channel(rq, nb + n + ch0);
        kiln_qput16(acc0[n], &k, rq, nb + n, ch0, &t[0], out, rs, cs);
        kiln_qput16(acc1[n], &k, rq, nb + n, ch0, &t[1], out, rs, cs);
    }
}
#endif

#if !KILN_QVNNI
/* Plain loops: the dot product of one lane of a tile with one channel's words. */
static int32_t kiln_qlane(const uint8_t* at, const kiln_qtile* t, int j, const int32_t* w,
                          long stride, int steps, const long* offsets) {
    uint32_t acc = 0;
    for (int s = 0; s < steps; ++s) {
        int32_t word = w[(long)s * stride];
        const int8_t* b = (const int8_t*)&word;
        for (int k = 0; k < 4; ++k)
            acc += (uint32_t)((int32_t)at[offsets[s] + t->idx[4 * j + k]] * b[k]);
    }
    return (int32_t)acc;
}
#endif

void kiln_qconv_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                     int C, int N, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                     long rs, long cs) {
    const long S = kiln_qnsteps(g, C);
    long offsets[S > 0 ? S : 1];
    kiln_qsteps(g, C, offsets);
#if KILN_QVNNI
    for (int t = 0; t < ntiles; t += 2) {
        const int dense = tiles[t].dense && tiles[t + 1].dense;
        for (int nb = 0; nb < N; nb += KILN_QVNR) {
            const int32_t* w = B + nb / KILN_QVNR * S * KILN_QVNR;
            if (dense)
                kiln_qconv_block(tiles + t, P, offsets, S, nb, N, w, rq, ch0, out, rs, cs, 1);
            else
                kiln_qconv_block(tiles + t, P, offsets, S, nb, N, w, rq, ch0, out, rs, cs, 0);
        }
    }
#else
    int32_t lanes[16] = {0};
    for (int t = 0; t < ntiles; ++t)
        for (int n = 0; n < N; ++n) {
            const int32_t* w = B + n / KILN_QVNR * S * KILN_QVNR + n % KILN_QVNR;
            for (int j = 0; j < tiles[t].count; ++j)
                lanes[j] = kiln_qlane(P + tiles[t].base, &tiles[t], j, w, KILN_QVNR, (int)S,
                                      offsets);
            kiln_qstore_lanes(lanes, rq, n, ch0, &tiles[t], out, rs, cs);
        }
#endif
}

void kiln_qdw_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                   int C, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                   long rs, long cs) {
    long offsets[64];
    const int S = (int)kiln_qnsteps(g, 1);
    kiln_qsteps(g, 1, offsets);
    const long plane = (long)g->hp * g->wp;
#if KILN_QVNNI
    for (int t = 0; t < ntiles; t += 2) {
        const __m512i i0 = _mm512_loadu_si512((const void*)tiles[t].idx);
        const __m512i i1 = _mm512_loadu_si512((const void*)tiles[t + 1].idx);
        for (int c = 0; c < C; ++c) {
            const uint8_t *a0 = P + c * plane + tiles[t].base, *a1 = P + c * plane +
                                                                     tiles[t + 1].base;
            __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
            for (int s = 0; s < S; ++s) {
                const __m512i b = _mm512_set1_epi32(B[(long)c * S + s]);
                acc0 = _mm512_dpbusd_epi32(acc0, kiln_qgather(a0 + offsets[s], i0, 0), b);
                acc1 = _mm512_dpbusd_epi32(acc1, kiln_qgather(a1 + offsets[s], i1, 0), b);
            }
            const kiln_qrq16 k = kiln_qrq_channel(rq, c + ch0);
            kiln_qput16(acc0, &k, rq, c, ch0, &tiles[t], out, rs, cs);
            kiln_qput16(acc1, &k, rq, c, ch0, &tiles[t + 1], out, rs, cs);
        }
    }
#else
    int32_t lanes[16] = {0};
    for (int t = 0; t < ntiles; ++t)
        for (int c = 0; c < C; ++c) {
            for (int j = 0; j < tiles[t].count; ++j)
                lanes[j] = kiln_qlane(P + c * plane + tiles[t].base, &tiles[t], j,
                                      B + (long)c * S, 1, S, offsets);
            kiln_qstore_lanes(lanes, rq, c, ch0, &tiles[t], out, rs, cs);
        }
#endif
}

int kiln_qvnni_enabled(void) { return KILN_QVNNI; }
