/* kiln runtime, private to the Winograd sources (kiln_winograd.c, kiln_winograd_pad.c): the
 * vector types they share. GCC vector extensions: 8-float vectors on every machine (two SSE
 * registers without AVX), and KILN_WG_LANES-float transform vectors; the functions that pass
 * them are static and always inlined, so no call ABI is involved. */
#ifndef KILN_WINOGRAD_VEC_H
#define KILN_WINOGRAD_VEC_H

#include "kiln_winograd.h"

#pragma GCC diagnostic ignored "-Wpsabi"

typedef float kiln_w8 __attribute__((vector_size(32)));
typedef float kiln_w8_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t kiln_wi8 __attribute__((vector_size(32)));

KILN_INLINE kiln_w8 kiln_wg_load(const float* p) { return *(const kiln_w8_u*)p; }
KILN_INLINE void kiln_wg_store(float* p, kiln_w8 v) { *(kiln_w8_u*)p = v; }

/* The transforms and the GEMM-domain loads and stores run on vectors of KILN_WG_LANES tiles:
 * 16 with AVX-512 (half the instructions of 8; the 32 registers hold a patch), else 8. The
 * 16-lane path splits vectors with __builtin_shufflevector (GCC 12, clang). */
#if defined(__AVX512F__) && (defined(__clang__) || __GNUC__ >= 12)
#define KILN_WG_LANES 16
#else
#define KILN_WG_LANES 8
#endif
#if KILN_WG_LANES > KILN_WG_SLACK
#error "kiln_winograd_vec.h: the buffers' slack must hold a transform vector"
#endif
typedef float kiln_wv __attribute__((vector_size(KILN_WG_LANES * 4)));
typedef float kiln_wv_u __attribute__((vector_size(KILN_WG_LANES * 4), aligned(4), may_alias));
typedef int32_t kiln_wvi __attribute__((vector_size(KILN_WG_LANES * 4)));
typedef float kiln_w4_u __attribute__((vector_size(16), aligned(4), may_alias));

/* Walks the (m+2)^2 position streams by pointer steps the compiler cannot fold into
 * precomputed offsets: it hoisted all 36 offsets, which did not fit the registers, and
 * reloaded each from the stack before its load or store. */
#define KILN_WG_OPAQUE(p) __asm__("" : "+r"(p))

KILN_INLINE kiln_wv kiln_wv_load(const float* p) { return *(const kiln_wv_u*)p; }
KILN_INLINE void kiln_wv_store(float* p, kiln_wv v) { *(kiln_wv_u*)p = v; }

#endif /* KILN_WINOGRAD_VEC_H */
