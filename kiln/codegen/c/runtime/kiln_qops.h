/* kiln_qops.h: the int8 elementwise kernels of the cpu target (kiln.qadd, kiln.qmul with a
 * loop-invariant operand), bit-exact with kiln/ir/requant.py.
 *
 * Why a runtime file: the straight C of these ops multiplies in int64 per element, and GCC
 * vectorizes that into 64-bit lane multiplies with widening shuffles, about 2 cycles an element.
 * Here one operand rescale of kiln.qadd runs in 32-bit lanes through an exact split of its
 * multiplier (below), and only the final requantization multiplies in 64 bits (AVX-512
 * vpmuldq on the even and odd lanes, no widening shuffles).
 *
 * The split. An input rescale of kiln.qadd is sa = (d * 2^ls * M + 2^(t-1)) >> t with
 * d = a - za a 9-bit value. With u = t - ls >= 1 that equals (d * M + 2^(u-1)) >> u (numerator
 * and denominator divided by 2^ls), and with M = hi * 2^u + lo (0 <= lo < 2^u)
 *     sa = d * hi + ((d * lo + 2^(u-1)) >> u)
 * exactly (floor((X * 2^u + Z) / 2^u) = X + floor(Z / 2^u) for integer X). The emitter uses it
 * only where every intermediate fits int32 for all 256 stored values (it checks all of them),
 * and folds the zero point into constants: sa = a * hi + bias + ((a * lo + round) >> u).
 * TFLite's parameters rescale the larger-scale input by exactly 1/2, so one term usually has
 * lo = 0 and is a single multiply (kiln_qadd has a loop for that).
 *
 * The final requantization multiplies the int32 sum by M in int64 lanes; with t >= 32 the
 * high dwords of the rounded products already are the results >> 32, so the even and odd
 * halves merge into one vector before the remaining shift, offset and clamp (32-bit lanes).
 * AVX-512F/BW only; the last n % 16 elements take the same formulas in scalar C. */
#ifndef KILN_QOPS_H
#define KILN_QOPS_H

#include <stdint.h>

/* 1 where kiln_qops.c has its AVX-512 loops. The generated code calls these kernels only then:
 * elsewhere its plain loops with literal constants vectorize better than the generic scalar
 * code here (which then only finishes the last n % 16 elements). */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define KILN_QOPS_AVX512 1
#else
#define KILN_QOPS_AVX512 0
#endif

/* One operand's rescale in the split form above (a is the stored value). */
typedef struct {
    int32_t hi, bias;   /* a * hi + bias = (a - za) * hi */
    int32_t lo, round;  /* a * lo + round = (a - za) * lo + 2^(u-1) */
    int u;              /* 0..31 */
    int is_unsigned;    /* uint8_t (1) or int8_t (0) storage */
} kiln_qterm;

/* The final requantization: clamp(((s * mult + 2^(t-1)) >> t) + zo, lo, hi), int64 product. */
typedef struct {
    int32_t mult;
    int t;              /* 31 - shift: 1..62 */
    int zo, lo, hi;
} kiln_qout;

/* kiln.qadd of n elements: y = out(wrap32(term(a) + term(b))). */
void kiln_qadd(const void* a, const kiln_qterm* ta, const void* b, const kiln_qterm* tb,
               const kiln_qout* out, long n, void* y);

/* kiln.qmul with a loop-invariant second factor g = b - zb: y = out((x - zx) * g), n elements. */
void kiln_qmul_invariant(const void* x, int x_unsigned, int32_t zx, int32_t g,
                         const kiln_qout* out, long n, void* y);

#endif
