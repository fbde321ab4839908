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
 * 4-byte groups all lie within 128 bytes of the tile's base: one vpermi2b gathers them. */
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
    int32_t count;   /* output pixels of the tile, 1..16; 0 for the phantom that pads to even */
    int32_t dense;   /* lane j's bytes are 4j..4j+3 (a plain load gathers them) */
    uint8_t idx[64]; /* vpermi2b index of lane j's byte t (4j + t) in the 128 bytes at a tap */
} kiln_qtile;

/* The tiles of a geometry (an even number; at most oh * ceil(ow / 16) + 1), written to
 * `tiles`; returns their number. Needs 15 * sw * elem + 3 * (elem == 4 ? 1 : dw) < 128. */
int kiln_qtiles(const kiln_qgeom* g, kiln_qtile* tiles);

/* Bytes of the packed input of C channels (with 128 bytes of slack that tiles may read). */
long kiln_qpack_bytes(int C, const kiln_qgeom* g);

/* Packs C channels (H x W each, int8 or uint8, row-major planes) with zx' = pad at the
 * padded taps; the image starts at row pt and column pl of the padded planes. */
void kiln_qpack(const void* x, int x_unsigned, int pad, int C, int H, int W, int pt, int pl,
                const kiln_qgeom* g, uint8_t* P);

/* Packs M rows of K values (a [M][K] matrix) into the elem-4 layout of a 1 x M image with K
 * channels (a linear layer as a 1x1 convolution). */
void kiln_qpack_rows(const void* x, int x_unsigned, int pad, int M, int K, uint8_t* P);

/* Convolution of the packed C channels by N output channels:
 * out[p * rs + n * cs] = requant(sum + bias'[n + ch0]) for output pixel p and channel n; B
 * holds the weights as int32 words of 4 int8 taps, word (block n / 8, step s, n % 8) at
 * B[(n / 8 * S + s) * 8 + n % 8]; elem 4: s = (c4 * kh + ky) * kw + kx, S = ceil(C / 4) * kh * kw;
 * elem 1: s = (c * kh + ky) * G + g (taps 4g..4g+3), G = ceil(kw / 4), S = C * kh * G. */
void kiln_qconv_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                     int C, int N, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                     long rs, long cs);

/* Depthwise convolution of the packed C channels (elem 1), one output channel each; word s of
 * channel c at B[c * S + s] holds taps 4g..4g+3 of row ky (zero past kw), s = ky * G + g,
 * G = ceil(kw / 4), S = kh * G. */
void kiln_qdw_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                   int C, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                   long rs, long cs);

#endif
