/* kiln_qgemm.h: int8 kernels of the cpu target, bit-exact with kiln/ir/requant.py.
 *
 * Operands are zero-point-shifted to int16 first ((x - zx), (w - zw) are 9-bit values), so the
 * dot products are int16 x int16 -> int32 (vpmaddwd with -march=native) and padding is a plain
 * 0. The requantization is TFLite's single rounding: y = (acc * M + 2^(t-1)) >> t, t = 31 - e,
 * in int64, then + zo and clamp. */
#ifndef KILN_QGEMM_H
#define KILN_QGEMM_H

#include <stdint.h>

/* Requantization of one GEMM: per-channel (per_channel != 0) or per-tensor multipliers. */
typedef struct {
    const int32_t* bias;   /* one per output channel, or NULL */
    const int32_t* mult;
    const int32_t* shift;
    int per_channel;
    int zo, lo, hi;
    int out_unsigned;      /* store uint8_t (1) or int8_t (0) */
} kiln_requant;

/* (x * m + 2^(t-1)) >> t with t = 31 - e, in int64 (inline: the elementwise kernels call it
 * per element). */
static inline int64_t kiln_rmulshift(int32_t x, int32_t m, int e) {
    int t = 31 - e;
    return ((int64_t)x * (int64_t)m + ((int64_t)1 << (t - 1))) >> t;
}

/* M rows of K values x - zp (int8 or uint8 storage) as int16 rows of ld >= K values (the
 * tail zero-filled). */
void kiln_qshift(const void* x, int x_unsigned, int zp, long M, int K, int ld, int16_t* out);

/* im2col of one image (C x H x W, int8/uint8) shifted by zp: col[(oy*OW+ox)*K + (c*KH+ky)*KW+kx],
 * K = C*KH*KW, rows ld >= K apart (tail zero-filled); padded taps are 0. */
void kiln_qim2col(const void* x, int x_unsigned, int zp, int C, int H, int W, int KH, int KW,
                  int sh, int sw, int pt, int pl, int dh, int dw, int OH, int OW, int ld,
                  int16_t* col);

/* out[m*rs + n*cs] = requant(sum_k A[m*lda+k] * B[n*K+k] + bias[n]) for m < M, n < N;
 * channel index of bias/mult/shift is n + ch0. Plain loops: for few output channels. */
void kiln_qgemm(int M, int N, int K, const int16_t* A, int lda, const int16_t* B,
                const kiln_requant* rq, int ch0, void* out, long rs, long cs);

#define KILN_QNB 16
/* The same with B packed for pairwise int16 dot products (vpmaddwd): K padded to Kp (even,
 * = lda), N to a multiple of KILN_QNB; element (n, k) of block nb = n / 16 at
 * B[((nb * Kp/2 + k/2) * 16 + n % 16) * 2 + k % 2]. */
void kiln_qgemm_packed(int M, int N, int Kp, const int16_t* A, const int16_t* B,
                       const kiln_requant* rq, int ch0, void* out, long rs, long cs);

#include "kiln_qvnni.h"

#endif
