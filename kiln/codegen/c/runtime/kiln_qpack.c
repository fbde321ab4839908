/* kiln_qpack.c: packing int8/uint8 activations into the layouts the VNNI kernels read (see
 * kiln_qvnni.h): padded images with 4 interleaved channels or one channel per plane, and the
 * rows of a linear layer as a 1 x M image of K channels. Kept apart from the kernels because
 * packing is byte shuffling with no arithmetic in common with them. */
#include "kiln_qvnni.h"

#include <string.h>
#if KILN_QVNNI
#include <immintrin.h>
#endif

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

#if KILN_QVNNI
#define KILN_QCHUNKS 48
/* A 64-byte chunk of a padded elem-1 plane: which bytes hold data (the rest the pad), the
 * source bytes it holds (from `src` of the source plane, `load` of them readable), and the
 * vpermb index placing them. */
typedef struct {
    __m512i idx;
    __mmask64 data, load;
    long src;
} kiln_qchunk;

/* The chunks of a padded hp x wp plane holding an H x W plane at (pt, pl); 0 when there are
 * more than KILN_QCHUNKS. A chunk's data bytes lie within 64 bytes of the source (rows are no
 * wider there), so one load serves it. Built once per call, used for every channel. */
static int kiln_qchunks(int H, int W, int pt, int pl, const kiln_qgeom* g, kiln_qchunk* ck) {
    const long n = (long)g->hp * g->wp, plane = (long)H * W;
    const int count = (int)((n + 63) / 64);
    if (count > KILN_QCHUNKS) return 0;
    uint8_t iota[64];
    for (int j = 0; j < 64; ++j) iota[j] = (uint8_t)j;
    const __m512i lanes = _mm512_loadu_si512((const void*)iota);
    for (int c = 0; c < count; ++c) {
        const long q0 = 64L * c, q1 = q0 + 64 < n ? q0 + 64 : n;
        kiln_qchunk* k = ck + c;
        k->idx = _mm512_setzero_si512();
        k->data = 0;
        k->src = -1;
        for (long y = q0 / g->wp; y * g->wp < q1; ++y) {
            const long iy = y - pt, a0 = y * g->wp + pl, b0 = a0 + W;
            const long a = a0 > q0 ? a0 : q0, b = b0 < q1 ? b0 : q1;
            if (iy < 0 || iy >= H || a >= b) continue;
            const long first = iy * W + (a - a0);
            if (k->src < 0) k->src = first;
            const __mmask64 seg = (b - q0 == 64 ? ~(__mmask64)0 : ((__mmask64)1 << (b - q0)) - 1) &
                                  ~(((__mmask64)1 << (a - q0)) - 1);
            k->idx = _mm512_mask_add_epi8(k->idx, seg, lanes,
                                          _mm512_set1_epi8((char)(first - k->src - (a - q0))));
            k->data |= seg;
        }
        k->src = k->src < 0 ? 0 : k->src;
        k->load = plane - k->src >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (plane - k->src)) - 1;
    }
    return count;
}
#endif

/* Packs one image whose packed planes lie `plane` bytes apart from P (a plane of one image, or
 * of several stacked: kiln_qpack_images). */
static void kiln_qpack_image(const uint8_t* src, uint8_t flip, int pad, int C, int H, int W,
                             int pt, int pl, const kiln_qgeom* g, long plane, uint8_t* P) {
    const int e = g->elem;
    const long n = (long)g->hp * g->wp * e; /* bytes of this image's part of a plane */
#if KILN_QVNNI
    if (e == 4 && g->hp == H && g->wp == W) { /* unpadded: whole planes at once */
        for (int c4 = 0; c4 < (C + 3) / 4; ++c4) {
            const uint8_t* rows[4];
            for (int t = 0; t < 4; ++t)
                rows[t] = 4 * c4 + t < C ? src + (long)(4 * c4 + t) * H * W : NULL;
            kiln_qpack_row4(rows, H * W, flip, (uint8_t)pad, P + c4 * plane);
        }
        return;
    }
    kiln_qchunk ck[KILN_QCHUNKS];
    const int chunks = e == 1 ? kiln_qchunks(H, W, pt, pl, g, ck) : 0;
    if (chunks) { /* small planes: 64 padded bytes at a time, no memset */
        const __m512i pads = _mm512_set1_epi8((char)pad), flips = _mm512_set1_epi8((char)flip);
        const __mmask64 last = n % 64 ? ((__mmask64)1 << (n % 64)) - 1 : ~(__mmask64)0;
        for (int c = 0; c < C; ++c)
            for (int i = 0; i < chunks; ++i) {
                const kiln_qchunk* k = ck + i;
                const __m512i v = _mm512_permutexvar_epi8(k->idx, _mm512_maskz_loadu_epi8(
                    k->load, src + (long)c * H * W + k->src));
                _mm512_mask_storeu_epi8(P + c * plane + 64L * i,
                                        i == chunks - 1 ? last : ~(__mmask64)0,
                                        _mm512_mask_blend_epi8(k->data, pads,
                                                               _mm512_xor_si512(v, flips)));
            }
        return;
    }
#endif
    const int planes = e == 4 ? (C + 3) / 4 : C;
    for (int c = 0; c < planes; ++c) memset(P + c * plane, pad, (size_t)n);
#if KILN_QVNNI
    if (e == 4) {
        for (int c4 = 0; c4 < planes; ++c4)
            for (int y = 0; y < H; ++y) {
                const uint8_t* rows[4];
                for (int t = 0; t < 4; ++t)
                    rows[t] = 4 * c4 + t < C ? src + ((long)(4 * c4 + t) * H + y) * W : NULL;
                kiln_qpack_row4(rows, W, flip, (uint8_t)pad,
                                P + c4 * plane + ((long)(y + pt) * g->wp + pl) * 4);
            }
        return;
    }
    const __m512i flips = _mm512_set1_epi8((char)flip);
    for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y) {
            const uint8_t* row = src + ((long)c * H + y) * W;
            uint8_t* dst = P + c * plane + (long)(y + pt) * g->wp + pl;
            for (int i = 0; i < W; i += 64) {
                const __mmask64 m = W - i >= 64 ? ~(__mmask64)0
                                                : ((__mmask64)1 << (W - i)) - 1;
                _mm512_mask_storeu_epi8(dst + i, m, _mm512_xor_si512(
                    _mm512_maskz_loadu_epi8(m, row + i), flips));
            }
        }
#else
    for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y) {
            const uint8_t* row = src + ((long)c * H + y) * W;
            uint8_t* dst = P + (e == 4 ? c / 4 : c) * plane + ((long)(y + pt) * g->wp + pl) * e +
                           (e == 4 ? c % 4 : 0);
            for (int i = 0; i < W; ++i) dst[(long)i * e] = (uint8_t)(row[i] ^ flip);
        }
#endif
}

void kiln_qpack(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt, int pl,
                const kiln_qgeom* g, uint8_t* P) {
    const long bytes = kiln_qpack_bytes(C, g);
    memset(P + bytes - 128, 0, 128);
    kiln_qpack_image((const uint8_t*)x, x_unsigned ? 0 : 0x80, pad, C, H, W, pt, pl, g,
                     (long)g->hp * g->wp * g->elem, P);
}

void kiln_qpack_images(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt,
                       int pl, const kiln_qgeom* g, int images, long x_stride, uint8_t* P) {
    const long part = (long)g->hp * g->wp * g->elem, plane = part * images;
    memset(P + (kiln_qpack_bytes(C, g) - 128) * images, 0, 128);
    for (int i = 0; i < images; ++i)
        kiln_qpack_image((const uint8_t*)x + i * x_stride, x_unsigned ? 0 : 0x80, pad, C, H, W,
                         pt, pl, g, plane, P + i * part);
}

#if KILN_QVNNI
/* Transposes 16 x 16 int32 words in place (r[i] word j <-> r[j] word i): within 128-bit lanes
 * by unpacks (4 x 4 blocks), then across lanes by two rounds of shuffle_i32x4. */
static void kiln_qtranspose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) { /* u[4i + j]: columns j, j + 4, j + 8, j + 12 of rows 4i.. */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; ++j) {
        const __m512i p = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
        const __m512i q = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
        const __m512i p2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
        const __m512i q2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_i32x4(p, p2, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(p, p2, 0xDD);
        r[8 + j] = _mm512_shuffle_i32x4(q, q2, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(q, q2, 0xDD);
    }
}
#endif

void kiln_qpack_rows(const void* x, int x_unsigned, int pad, int M, int K, uint8_t* P) {
    const uint8_t* src = (const uint8_t*)x;
    const uint8_t flip = x_unsigned ? 0 : 0x80;
    const int k4 = (K + 3) / 4;
    memset(P + (long)k4 * M * 4, 0, 128);
#if KILN_QVNNI
    /* Blocks of 16 rows x 16 words: rows loaded (bytes past K hold the pad), transposed, and
     * each word stored for the block's rows. */
    const __m512i pads = _mm512_set1_epi8((char)pad), flips = _mm512_set1_epi8((char)flip);
    for (int m0 = 0; m0 < M; m0 += 16) {
        const int rows = M - m0 < 16 ? M - m0 : 16;
        for (int k0 = 0; k0 < K; k0 += 64) {
            const int n = K - k0 < 64 ? K - k0 : 64, words = (n + 3) / 4;
            const __mmask64 kmask = n == 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1;
            __m512i r[16];
            for (int i = 0; i < 16; ++i)
                r[i] = i < rows ? _mm512_mask_blend_epi8(
                                      kmask, pads, _mm512_xor_si512(_mm512_maskz_loadu_epi8(
                                          kmask, src + (long)(m0 + i) * K + k0), flips))
                                : pads;
            kiln_qtranspose16(r);
            for (int w = 0; w < words; ++w)
                _mm512_mask_storeu_epi32(P + ((long)(k0 / 4 + w) * M + m0) * 4,
                                         (__mmask16)((1u << rows) - 1u), r[w]);
        }
    }
#else
    for (int m = 0; m < M; ++m) {
        const uint8_t* row = src + (long)m * K;
        for (int k = 0; k < 4 * k4; ++k)
            P[((long)(k / 4) * M + m) * 4 + k % 4] = k < K ? (uint8_t)(row[k] ^ flip)
                                                           : (uint8_t)pad;
    }
#endif
}
