/* kiln_qdw.h: direct int8 depthwise convolution on AVX-512 VNNI, reading the NCHW planes as
 * they lie in the arena (no packed, padded copy), bit-exact with kiln/ir/requant.py.
 *
 * Lanes are 16 consecutive output pixels of one channel (flat oy * ow + ox, possibly across
 * output rows: small planes fill a vector with several rows). One vpdpbusd sums the taps of
 * one kernel row (kw <= 4; taps past kw meet zero weights): lane j's 4 bytes are gathered by
 * one byte permute from a window of at most 128 bytes of the input plane that holds every
 * byte the tile reads, so a 3x3 kernel costs 3 permutes and 3 vpdpbusd per 16 outputs.
 * The window is read by masked loads (nothing outside the plane is touched). Taps in the
 * padding index a byte holding the zero point, so they contribute x - zx = 0 exactly as the
 * interpreter's padding: byte 64 (the permute's second source, a register of zero points) when
 * the window fits one register (span < 64), else byte `span` of the two windows, the first
 * one past those loaded (the masked-off bytes of the second load hold the zero point).
 * Activations are read as uint8 as in kiln_qvnni.h: int8 storage flipped by +128, the zero
 * point zx' = zx + 128, and -zx' * sum(w) folded into the bias by the emitter; sums of at most
 * 16 products of 255 * 128 are exact in int32. Requantization uses kiln_qchannels' constants
 * (int32 lanes where proven exact, else int64; see kiln_qvnni.h).
 *
 * The tiles are computed at compile time (kiln/codegen/c/emit_qdw.py) and emitted as static
 * data: 16 output pixels at most, grown while the window spans at most KILN_QDW_SPAN bytes
 * (so a geometry fits when one pixel's taps do: (kh - 1) * dh * W + (kw - 1) * dw + 1 <= 127).
 * Without VNNI the same functions run as plain loops over the same tiles (tests,
 * portability). */
#ifndef KILN_QDW_H
#define KILN_QDW_H

#include <stdint.h>

#include "kiln_qvnni.h"

#define KILN_QDW_KH 4
/* Most kernel rows (and taps per row) of a direct depthwise convolution. */
#define KILN_QDW_SPAN 127
/* Most bytes of a tile's window (one of the 128 bytes of two registers stays the pad). */

/* One image plane and the convolution over it (pt, pl: padding above and left). */
typedef struct {
    int H, W, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw;
} kiln_qdwgeom;

typedef struct {
    int32_t start; /* plane byte at window byte 0 */
    int32_t span;  /* bytes [start, start + span) are loaded (one register when < 64) */
    int32_t p0;    /* first output pixel */
    int32_t count; /* output pixels, 1..16 */
    uint8_t idx[KILN_QDW_KH][64]; /* row ky: window byte of lane j's tap k at [ky][4j + k]
                                     (padding: max(span, 64), a zero point) */
} kiln_qdwtile;

/* Depthwise convolution of `images` images of C channels (x: C x H x W bytes each, int8 or
 * uint8; zx: the zero point as uint8, zx + 128 for int8 storage) into y (C x oh x ow each):
 * y[c][p] = requant(sum + bias'[c]) with channel c's constants at ch[c]; B holds channel c's
 * row ky as the int32 word B[c * kh + ky] of taps 0..3 (zero past kw). (A following
 * kiln.qlut is not fused into the stores: looking 16 bytes up in registers (two vpermi2b and
 * a blend) costs as much as 64, and measured on MobileNet's layers the fused stores took 1.19x the time
 * of this kernel plus the separate 64-byte qlut pass.) */
void kiln_qdw_direct_vnni(const kiln_qdwgeom* g, const kiln_qdwtile* tiles, int ntiles,
                          const void* x, int x_unsigned, int zx, int C, const int32_t* B,
                          const kiln_qch* ch, int mode, void* y, int images);

#endif
