/* kiln runtime: portable SIMD through GCC vector extensions.
 *
 * `kiln_vf` is the widest native float vector: 16 lanes with AVX-512, 8 with AVX/AVX2, 4
 * otherwise (SSE, NEON, or plain scalar code that GCC lowers the vector operations to). The
 * kernels are written once against these types; `gcc -O3 -march=native` turns them into the
 * machine's instructions. Unaligned loads and stores go through a may_alias, 4-byte-aligned
 * vector type, which is well defined for any float pointer.
 */
#ifndef KILN_VEC_H
#define KILN_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define KILN_VLEN 16
#elif defined(__AVX__)
#define KILN_VLEN 8
#else
#define KILN_VLEN 4
#endif

#define KILN_INLINE static inline __attribute__((always_inline))
#define KILN_ALIGN64 __attribute__((aligned(64)))

typedef float kiln_vf __attribute__((vector_size(KILN_VLEN * 4)));
typedef int32_t kiln_vi __attribute__((vector_size(KILN_VLEN * 4)));
typedef float kiln_vf_u __attribute__((vector_size(KILN_VLEN * 4), aligned(4), may_alias));

KILN_INLINE kiln_vf kiln_loadu(const float* p) { return *(const kiln_vf_u*)p; }
KILN_INLINE void kiln_storeu(float* p, kiln_vf v) { *(kiln_vf_u*)p = v; }
/* x - 0 (not 0 + x): exact for every x (-0 too), so gcc folds it to a plain broadcast, which
 * an FMA takes from memory ({1to16}); 0 + x costs a scalar add before every broadcast. */
KILN_INLINE kiln_vf kiln_splat(float x) { return x - (kiln_vf){0}; }

KILN_INLINE float kiln_hsum(kiln_vf v) {
    float s = 0.0f;
    for (int i = 0; i < KILN_VLEN; ++i) s += v[i];
    return s;
}

KILN_INLINE float kiln_hmax(kiln_vf v) {
    float m = v[0];
    for (int i = 1; i < KILN_VLEN; ++i) m = v[i] > m ? v[i] : m;
    return m;
}

/* C has no vector `?:`: select through the all-ones / all-zeros lanes of a comparison. */
KILN_INLINE kiln_vf kiln_select(kiln_vi mask, kiln_vf a, kiln_vf b) {
    return (kiln_vf)(((kiln_vi)a & mask) | ((kiln_vi)b & ~mask));
}
KILN_INLINE kiln_vf kiln_vmax(kiln_vf a, kiln_vf b) { return kiln_select(a > b, a, b); }
KILN_INLINE kiln_vf kiln_vmin(kiln_vf a, kiln_vf b) { return kiln_select(a < b, a, b); }

KILN_INLINE int kiln_imin(int a, int b) { return a < b ? a : b; }
KILN_INLINE int kiln_imax(int a, int b) { return a > b ? a : b; }

/* Output columns [lo, hi) of a sliding window (stride s, left padding p, kernel offset kd)
 * whose input column ox*s - p + kd falls inside [0, size): the part that needs no bounds
 * checks. Shared by im2col, depthwise convolution and pooling. */
KILN_INLINE void kiln_window_range(int out, int size, int s, int p, int kd, int* lo, int* hi) {
    int first = p - kd; /* ox * s >= first */
    int a = first <= 0 ? 0 : (first + s - 1) / s;
    int last = size - 1 + p - kd; /* ox * s <= last */
    int b = last < 0 ? 0 : kiln_imin(out, last / s + 1);
    *lo = kiln_imin(a, out);
    *hi = kiln_imax(b, *lo);
}

#if defined(_OPENMP)
#include <omp.h>
KILN_INLINE int kiln_thread_id(void) { return omp_get_thread_num(); }
#else
KILN_INLINE int kiln_thread_id(void) { return 0; }
#endif

#endif /* KILN_VEC_H */
