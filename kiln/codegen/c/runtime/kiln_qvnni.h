/* kiln_qvnni.h: int8 convolutions and GEMMs on AVX-512 VNNI (vpdpbusd: 64 u8 x s8 products
 * summed by fours into 16 int32 lanes per instruction), bit-exact with kiln/ir/requant.py.
 *
 * Lanes are 16 output pixels of one output channel, so results store as contiguous bytes of
 * an NCHW tensor. Activations are read as uint8: int8 storage is flipped by +128 (x ^ 0x80)
 * and the zero point moves with it (zx' = zx + 128). Weights are symmetric int8 (zero point
 * 0; the emitter falls back to the int16 kernels otherwise), so
 *     sum (x - zx) * w = sum x' * w - zx' * sum w,
 * and the emitter folds -zx' * sum w (per output channel, wrapped to int32) into the bias.
 * Padding holds zx', so a padded tap contributes x' - zx' = 0 exactly as the interpreter's.
 * vpdpbusd does not saturate: with K * 255 * 128 < 2^31 (K <= 65793, the emitter checks) the
 * int32 sums are exact.
 *
 * The input of one image (and group) is first packed, padded, into one of two layouts of
 * `elem` bytes per padded pixel:
 *   elem 4: 4 channels interleaved, P[(((c/4) * hp + y) * wp + x) * 4 + c % 4] (channels past
 *           C hold zx' and meet zero weights); 4 consecutive k of the dot product are 4 channels;
 *   elem 1: one channel per plane, P[(c * hp + y) * wp + x]; 4 consecutive k are 4 horizontal
 *           taps of one row (taps past kw meet zero weights): depthwise convolutions, where
 *           channels do not mix, and convolutions of fewer channels than taps in a row (the
 *           emitter picks the layout that wastes fewer multiplies).
 * A tile is up to 16 consecutive output pixels (flat oy * ow + ox, possibly across rows) whose
 * 4-byte groups lie in two 64-byte windows at a tap: one vpermi2b gathers them (one plain load
 * when they are contiguous). Accumulators start at the (folded) bias; requantization runs in
 * int32 lanes when every channel shifts right by t >= 33 (hi32(s * m) + 2^(t-33), arithmetic
 * shift by t - 32: exact, since the rounding term 2^(t-1) is a multiple of 2^32), else in
 * int64 lanes. */
#ifndef KILN_QVNNI_H
#define KILN_QVNNI_H

#include <stdint.h>

#include "kiln_qgemm.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#define KILN_QVNNI 1
#else
#define KILN_QVNNI 0
#endif

#define KILN_QVNR 8
/* Output channels per block of packed conv weights. */

/* KILN_QVNNI of the build (1: the vector kernels; 0: the same functions as plain loops). */
int kiln_qvnni_enabled(void);

/* Padded input and convolution geometry (the padded size is the input's plus its padding). */
typedef struct {
    int hp, wp;
    int oh, ow, kh, kw, sh, sw, dh, dw;
    int elem; /* bytes per padded pixel: 4 or 1 (see above) */
} kiln_qgeom;

typedef struct {
    int32_t base;    /* byte offset of lane 0's first tap in the packed input */
    int32_t p0;      /* first output pixel */
    int32_t count;   /* output pixels of the tile, 1..16 */
    int32_t dense;   /* lane j's bytes are 4j..4j+3 (a plain load gathers them) */
    int32_t hi;      /* offset of the second 64-byte window (>= 64) */
    uint8_t idx[64]; /* vpermi2b index of lane j's byte t (4j + t) in the two windows at a tap:
                        i < 64 at byte i, else at byte hi + i - 64 */
} kiln_qtile;

/* The tiles of a geometry (at most oh * ceil(ow / 16)), written to `tiles`; returns their
 * number. Each tile's bytes lie in two 64-byte windows, at its base and `hi` past it (a tile
 * may span output rows: the second window starts at the next row's bytes). Needs
 * 15 * sw * elem + 3 * (elem == 4 ? 1 : dw) < 128. */
int kiln_qtiles(const kiln_qgeom* g, kiln_qtile* tiles);

/* Bytes of the packed input of C channels (with 128 bytes of slack that tiles may read). */
long kiln_qpack_bytes(int C, const kiln_qgeom* g);

/* Packs C channels (H x W each, int8 or uint8, row-major planes) with zx' = pad at the
 * padded taps; the image starts at row pt and column pl of the padded planes. */
void kiln_qpack(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt, int pl,
                const kiln_qgeom* g, uint8_t* P);

/* Packs `images` images (x + i * x_stride bytes each, C x H x W) stacked in each packed plane:
 * image i at i * hp * wp * elem bytes of a plane of images * hp * wp * elem bytes, so one
 * convolution over the stacked geometry (hp * images rows) and kiln_qtiles_images covers
 * them all (kiln_qpack_bytes(C, g) - 128 per image, and 128 bytes of slack). */
void kiln_qpack_images(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt,
                       int pl, const kiln_qgeom* g, int images, long x_stride, uint8_t* P);

/* The tiles of `images` stacked images of geometry g: image i's tiles are image 0's with
 * their bases i planes-parts further and their first pixels i * out_stride further (the
 * offset of image i's output). Returns images * kiln_qtiles(g). */
int kiln_qtiles_images(const kiln_qgeom* g, int images, long out_stride, kiln_qtile* tiles);

/* Packs M rows of K values (a [M][K] matrix) into the elem-4 layout of a 1 x M image with K
 * channels (a linear layer as a 1x1 convolution). */
void kiln_qpack_rows(const void* x, int x_unsigned, int pad, int M, int K, uint8_t* P);

/* Requantization constants of one output channel (kiln_qchannels). The int32 form (round,
 * shift) holds when t = 31 - shift >= 33. */
typedef struct {
    int32_t bias, mult, t, lo, hi, zo, round, shift;
} kiln_qch;

/* The constants of channels ch0 .. ch0 + N - 1 of rq into ch[0 .. N), and harmless ones
 * (multiplier 0, a defined shift) in ch[N .. N + 8): blocks of 8 requantize past N without
 * storing. Returns the requantization mode: 0 int64 lanes; else every channel has the int32
 * form, clamped by min/max (1) or, hi being the storage maximum, narrowed with signed (2) or
 * unsigned (3) saturation. Computed once per layer and passed to the kiln_q*ch_vnni kernels. */
int kiln_qchannels(const kiln_requant* rq, int N, int ch0, kiln_qch* ch);

/* Convolution of the packed C channels by N output channels:
 * out[p * rs + n * cs] = requant(sum + bias'[n + ch0]) for output pixel p and channel n; B
 * holds the weights as int32 words of 4 int8 taps, word (block n / 8, step s, n % 8) at
 * B[(n / 8 * S + s) * 8 + n % 8]; elem 4: s = (c4 * kh + ky) * kw + kx, S = ceil(C / 4) * kh * kw;
 * elem 1: s = (c * kh + ky) * G + g (taps 4g..4g+3), G = ceil(kw / 4), S = C * kh * G. */
void kiln_qconv_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                     int C, int N, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                     long rs, long cs);

/* kiln_qconv_vnni with the channel constants of kiln_qchannels (ch: output channel n at
 * ch[n]). */
void kiln_qconvch_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles,
                        const uint8_t* P, int C, int N, const int32_t* B, const kiln_qch* ch,
                        int mode, void* out, long rs, long cs);

/* Depthwise convolution of the packed C channels (elem 1), one output channel each; word s of
 * channel c at B[c * S + s] holds taps 4g..4g+3 of row ky (zero past kw), s = ky * G + g,
 * G = ceil(kw / 4), S = kh * G. */
void kiln_qdw_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                   int C, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                   long rs, long cs);

/* kiln_qdw_vnni with the channel constants of kiln_qchannels. */
void kiln_qdwch_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles,
                      const uint8_t* P, int C, const int32_t* B, const kiln_qch* ch, int mode,
                      void* out, long rs, long cs);

#endif
