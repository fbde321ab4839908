/* kiln_qops.h: the int8 elementwise kernels of the cpu target (kiln.qadd, kiln.qmul with a
 * loop-invariant operand, also written packed for the convolution reading it, and the row sums
 * of kiln.qreduce_mean), bit-exact with kiln/ir/requant.py.
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
/* 1 where kiln_qmul_pack4 interleaves channels by vpermb (AVX-512 VBMI). */
#if KILN_QOPS_AVX512 && defined(__AVX512VBMI__)
#define KILN_QOPS_PACK4 1
#else
#define KILN_QOPS_PACK4 0
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

/* kiln_qmul_invariant of a tensor [N][C][HW] by the gates [N][C] (g = gate - zg per image and
 * channel: the squeeze-excitation product), written straight into the elem-4 packed layout of
 * the 1x1 convolution that is its only reader (kiln_qvnni.h, kiln_qpack_images), so the
 * product is never stored NCHW and packed again. Images go in stacks of `images` (N a
 * multiple): stack s is HW * 4 * images * ceil(C / 4) bytes from P + s times that, its plane
 * c / 4 holds image i at i * HW * 4 bytes, pixel p's 4 bytes at 4p (byte c % 4). Each byte is
 * the qmul's stored byte ^ flip (0x80: an int8 result read as uint8); channels past C hold
 * pad. No slack is written: the reader copies the last stack into its own padded scratch.
 * `tables` (256 * 256 bytes of scratch, or NULL): with AVX-512 VBMI, each gate value met gets
 * a table of its 256 results, and rows are looked up 64 bytes at a time (long rows: far
 * fewer instructions than the arithmetic per element); NULL computes every element. */
void kiln_qmul_pack4(const void* x, int x_unsigned, int32_t zx, const void* gate,
                     int gate_unsigned, int32_t zg, const kiln_qout* out, int flip, int pad,
                     int C, long HW, int N, int images, uint8_t* tables, uint8_t* P);

/* The sum of the stored values of each of `rows` rows of `count` bytes (count * 255 < 2^31):
 * kiln.qreduce_mean's numerator, by byte sums of absolute differences (vpsadbw), 4 rows a
 * vector when count is 16 (GCC's own loop widened every byte to 32 bits and summed each row
 * horizontally). */
void kiln_qrow_sums(const void* x, int x_unsigned, long rows, long count, int32_t* sums);

/* The packed input of stack `stack` (of `stacks`, `bytes` each) of a kiln_qmul_pack4 buffer,
 * for the convolution to read in place: inside the buffer when the stacks after it hold the
 * 128 bytes of slack the VNNI tiles may read past it; otherwise (the last stack, and small
 * stacks near the end) copied into `scratch` (bytes + 128, the slack zeroed). */
uint8_t* kiln_qpacked_stack(const void* packed, int stack, int stacks, long bytes,
                            uint8_t* scratch);

#endif
