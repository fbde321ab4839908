/* kiln_qdw.c: see kiln_qdw.h. */
#include "kiln_qdw.h"
#include "kiln_qrequant.h"

#if KILN_QVNNI
#include <immintrin.h>
#endif

#if KILN_QVNNI
#define KILN_QDW_INLINE static inline __attribute__((always_inline))

/* One tile of every channel of one image: the window by one or two masked loads, flipped to
 * uint8, then per kernel row one two-source byte permute (the second source: the second
 * window, or the pad) and one vpdpbusd; requantized, one masked 16-byte store. padraw: the
 * pad as stored (before the flip), pad: as uint8. */
KILN_QDW_INLINE void kiln_qdw_tile(const kiln_qdwtile* t, int kh, int two, const uint8_t* x,
                                   long plane, __m512i padraw, __m512i flip, __m512i pad, int C,
                                   const int32_t* B, const kiln_qch* ch, int mode, uint8_t* y,
                                   long out_plane) {
    __m512i idx[KILN_QDW_KH];
    for (int ky = 0; ky < kh; ++ky) idx[ky] = _mm512_loadu_si512((const void*)t->idx[ky]);
    const int span = t->span;
    const __mmask64 m0 = span >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << span) - 1);
    const __mmask64 m1 = span > 64 ? (((__mmask64)1 << (span - 64)) - 1) : 0;
    const __mmask16 store = (__mmask16)((1u << t->count) - 1u);
    const uint8_t* a = x + t->start;
    uint8_t* o = y + t->p0;
    for (int c = 0; c < C; ++c, a += plane, o += out_plane) {
        /* one window: the pad is the second permute source (index 64), the load zero-masked
         * (no merge); two: the second window's masked-off bytes hold it */
        const __m512i w0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m0, a), flip);
        __m512i w1 = pad;
        if (two) w1 = _mm512_xor_si512(_mm512_mask_loadu_epi8(padraw, m1, a + 64), flip);
        __m512i acc = _mm512_set1_epi32(ch[c].bias);
        for (int ky = 0; ky < kh; ++ky) {
            const __m512i q = _mm512_permutex2var_epi8(w0, idx[ky], w1);
            acc = _mm512_dpbusd_epi32(acc, q, _mm512_set1_epi32(B[(long)c * kh + ky]));
        }
        _mm_mask_storeu_epi8(o, store, kiln_qrequant16(acc, ch + c, mode));
    }
}

/* Every tile of one image; one window or two per tile, kh = 3 specialized. */
KILN_QDW_INLINE void kiln_qdw_image(const kiln_qdwgeom* g, const kiln_qdwtile* tiles, int ntiles,
                                    const uint8_t* x, __m512i padraw, __m512i flip, __m512i pad,
                                    int C, const int32_t* B, const kiln_qch* ch, int mode,
                                    uint8_t* y) {
    const long plane = (long)g->H * g->W, out_plane = (long)g->oh * g->ow;
    for (int i = 0; i < ntiles; ++i) {
        const kiln_qdwtile* t = tiles + i;
        if (g->kh == 3 && t->span < 64)
            kiln_qdw_tile(t, 3, 0, x, plane, padraw, flip, pad, C, B, ch, mode, y, out_plane);
        else if (g->kh == 3)
            kiln_qdw_tile(t, 3, 1, x, plane, padraw, flip, pad, C, B, ch, mode, y, out_plane);
        else
            kiln_qdw_tile(t, g->kh, t->span >= 64, x, plane, padraw, flip, pad, C, B, ch, mode,
                          y, out_plane);
    }
}

KILN_QDW_INLINE void kiln_qdw_images(const kiln_qdwgeom* g, const kiln_qdwtile* tiles,
                                     int ntiles, const uint8_t* x, int x_unsigned, int zx, int C,
                                     const int32_t* B, const kiln_qch* ch, int mode, uint8_t* y,
                                     int images) {
    const __m512i flip = _mm512_set1_epi8((char)(x_unsigned ? 0 : 0x80));
    const __m512i padraw = _mm512_set1_epi8((char)(x_unsigned ? zx : zx ^ 0x80));
    const __m512i pad = _mm512_set1_epi8((char)zx);
    const long in = (long)C * g->H * g->W, out = (long)C * g->oh * g->ow;
    for (int b = 0; b < images; ++b)
        kiln_qdw_image(g, tiles, ntiles, x + b * in, padraw, flip, pad, C, B, ch, mode,
                       y + b * out);
}
#endif

void kiln_qdw_direct_vnni(const kiln_qdwgeom* g, const kiln_qdwtile* tiles, int ntiles,
                          const void* x, int x_unsigned, int zx, int C, const int32_t* B,
                          const kiln_qch* ch, int mode, void* y, int images) {
    const uint8_t* in = (const uint8_t*)x;
    uint8_t* out = (uint8_t*)y;
#if KILN_QVNNI
    switch (mode) { /* one specialization per requantization mode */
    case 1: kiln_qdw_images(g, tiles, ntiles, in, x_unsigned, zx, C, B, ch, 1, out, images); break;
    case 2: kiln_qdw_images(g, tiles, ntiles, in, x_unsigned, zx, C, B, ch, 2, out, images); break;
    case 3: kiln_qdw_images(g, tiles, ntiles, in, x_unsigned, zx, C, B, ch, 3, out, images); break;
    default: kiln_qdw_images(g, tiles, ntiles, in, x_unsigned, zx, C, B, ch, 0, out, images);
    }
#else
    (void)mode;
    const uint8_t flip = x_unsigned ? 0 : 0x80;
    const long plane = (long)g->H * g->W, out_plane = (long)g->oh * g->ow;
    for (int b = 0; b < images; ++b)
        for (int i = 0; i < ntiles; ++i) {
            const kiln_qdwtile* t = tiles + i;
            for (int c = 0; c < C; ++c) {
                const uint8_t* a = in + ((long)b * C + c) * plane + t->start;
                const kiln_qch* k = ch + c;
                for (int j = 0; j < t->count; ++j) {
                    uint32_t acc = (uint32_t)k->bias;
                    for (int ky = 0; ky < g->kh; ++ky) {
                        const uint32_t word = (uint32_t)B[(long)c * g->kh + ky];
                        for (int q = 0; q < 4; ++q) {
                            const int at = t->idx[ky][4 * j + q];
                            const int v = at < t->span ? a[at] ^ flip : zx;
                            acc += (uint32_t)(v * (int)(int8_t)(uint8_t)(word >> (8 * q)));
                        }
                    }
                    int64_t r = kiln_rmulshift((int32_t)acc, k->mult, 31 - k->t) + k->zo;
                    r = r < k->lo ? k->lo : (r > k->hi ? k->hi : r);
                    out[((long)b * C + c) * out_plane + t->p0 + j] = (uint8_t)r;
                }
            }
        }
#endif
}
