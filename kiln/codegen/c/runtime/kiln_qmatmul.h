/* kiln_qmatmul.h: the int8 matmul of two quantized activations (kiln.qmatmul), bit-exact with
 * QMatMul in kiln/ir/ops/qnn.py and the requantization contract of kiln/ir/requant.py:
 *
 *   acc[m][n] = sum_k (a[m][k] - za) * (b[k][n] - zb[n])      wrapped to int32
 *   y[m][n]   = clamp(((acc * M + 2^(t-1)) >> t) + zo, lo, hi),   t = 31 - shift
 *
 * Both operands are run-time tensors (attention's Q.K^T and P.V), so nothing can be packed at
 * build time: each call shifts A and B by their zero points into int32 scratch, then runs a
 * 4-row x 16-column micro-kernel on GCC vector extensions (one zmm per row with AVX-512) with
 * the requantization fused into the store. Self-contained on purpose (its own rounding): the
 * int8 GEMMs of kiln_qgemm.c can change their packing without touching this file. */
#ifndef KILN_QMATMUL_H
#define KILN_QMATMUL_H

#include <stdint.h>

/* The quantization of one kiln.qmatmul: storage kinds, zero points, requantization. */
typedef struct {
    int a_unsigned, b_unsigned, out_unsigned; /* uint8_t (1) or int8_t (0) storage */
    int32_t za;                               /* lhs zero point */
    const int32_t* zb;                        /* rhs zero points: one, or one per column */
    int zb_per_column;
    const int32_t* mult;                      /* multipliers/shifts: one, or one per column */
    const int32_t* shift;
    int per_column;
    int zo, lo, hi;                           /* output zero point and clamp (stored ints) */
} kiln_qmatmul_params;

/* int32 elements of scratch kiln_qmatmul needs: the shifted A (M x K) and B (K x N, its rows
 * padded to a multiple of 16 columns). */
#define KILN_QMATMUL_SCRATCH(M, N, K) \
    ((long)(M) * (K) + (long)(K) * (((N) + 15) / 16 * 16))

/* out (M x N, row-major, 8-bit) = requant(A (M x K) @ B (K x N)), A and B 8-bit row-major;
 * scratch: KILN_QMATMUL_SCRATCH(M, N, K) int32, 4-byte aligned. */
void kiln_qmatmul(int M, int N, int K, const void* a, const void* b,
                  const kiln_qmatmul_params* p, void* out, int32_t* scratch);

#endif
