/* kiln_qmatmul.c: see kiln_qmatmul.h. */
#include "kiln_qmatmul.h"
#include "kiln_qgemm.h" /* kiln_rmulshift: requant.py's single rounding */

#include <string.h>

/* Columns per block (one 512-bit vector of int32) and rows per micro-tile. Blocks are full:
 * the shifted B is stored with its rows padded to a multiple of KILN_QMM_NB with zeros. */
#define KILN_QMM_NB 16
#define KILN_QMM_MR 4

/* 16 uint32 lanes (one zmm with AVX-512; GCC splits it on narrower machines). uint32: the
 * exact sums wrapped to int32, without signed overflow. */
typedef uint32_t kiln_qmm_v __attribute__((vector_size(4 * KILN_QMM_NB)));

/* The helpers stay out of line: inlined into kiln_qmatmul, GCC 12 spills the micro-kernel's
 * accumulators and a 16x16x16 call takes twice as long. */
#define KILN_QMM_HELPER __attribute__((noinline)) static

/* n values of 8-bit storage minus zero point(s) as int32: zp[j] per element or zp[0]. */
KILN_QMM_HELPER void kiln_qmm_shift(const void* x, int x_unsigned, const int32_t* zp,
                                    int zp_each, long n, int32_t* out) {
    if (zp_each) {
        if (x_unsigned)
            for (long j = 0; j < n; ++j) out[j] = (int32_t)((const uint8_t*)x)[j] - zp[j];
        else
            for (long j = 0; j < n; ++j) out[j] = (int32_t)((const int8_t*)x)[j] - zp[j];
        return;
    }
    const int32_t z = zp[0];
    if (x_unsigned)
        for (long j = 0; j < n; ++j) out[j] = (int32_t)((const uint8_t*)x)[j] - z;
    else
        for (long j = 0; j < n; ++j) out[j] = (int32_t)((const int8_t*)x)[j] - z;
}

/* B (K x N) minus its zero point(s) into rows of np >= N int32 (the padding zeroed). */
static void kiln_qmm_shift_b(const void* b, const kiln_qmatmul_params* p, int K, int N, int np,
                             int32_t* bs) {
    if (np == N && !p->zb_per_column) {  /* no padding: one flat pass */
        kiln_qmm_shift(b, p->b_unsigned, p->zb, 0, (long)K * N, bs);
        return;
    }
    for (int k = 0; k < K; ++k) {
        int32_t* dst = bs + (long)k * np;
        kiln_qmm_shift((const char*)b + (long)k * N, p->b_unsigned, p->zb, p->zb_per_column, N,
                       dst);
        for (int n = N; n < np; ++n) dst[n] = 0;
    }
}

/* y = clamp(((acc * M + 2^(t-1)) >> t) + zo), t = 31 - shift, for one block of columns
 * starting at column n0, nn of them real: requant.py's single rounding in int64. */
KILN_QMM_HELPER void kiln_qmm_requant(const kiln_qmatmul_params* p, const uint32_t* acc,
                                      int n0, int nn, int32_t* y) {
    const int64_t zo = p->zo, lo = p->lo, hi = p->hi;
    if (!p->per_column) {  /* loop-invariant multiplier and shift: vectorizes */
        const int32_t m = p->mult[0];
        const int e = p->shift[0];
        for (int n = 0; n < KILN_QMM_NB; ++n) {
            int64_t v = kiln_rmulshift((int32_t)acc[n], m, e) + zo;
            y[n] = (int32_t)(v < lo ? lo : (v > hi ? hi : v));
        }
        return;
    }
    for (int n = 0; n < nn; ++n) {  /* per column: no multipliers past column N */
        int64_t v = kiln_rmulshift((int32_t)acc[n], p->mult[n0 + n], p->shift[n0 + n]) + zo;
        y[n] = (int32_t)(v < lo ? lo : (v > hi ? hi : v));
    }
}

/* Requantize and store the first nn columns of one block row. */
KILN_QMM_HELPER void kiln_qmm_store(const kiln_qmatmul_params* p, const uint32_t* acc, int n0,
                                    int nn, void* out) {
    int32_t y[KILN_QMM_NB];
    kiln_qmm_requant(p, acc, n0, nn, y);
    if (p->out_unsigned) {
        uint8_t* dst = (uint8_t*)out + n0;
        if (nn == KILN_QMM_NB)
            for (int n = 0; n < KILN_QMM_NB; ++n) dst[n] = (uint8_t)y[n];
        else
            for (int n = 0; n < nn; ++n) dst[n] = (uint8_t)y[n];
    } else {
        int8_t* dst = (int8_t*)out + n0;
        if (nn == KILN_QMM_NB)
            for (int n = 0; n < KILN_QMM_NB; ++n) dst[n] = (int8_t)y[n];
        else
            for (int n = 0; n < nn; ++n) dst[n] = (int8_t)y[n];
    }
}

void kiln_qmatmul(int M, int N, int K, const void* a, const void* b,
                  const kiln_qmatmul_params* p, void* out, int32_t* scratch) {
    const int np = (N + KILN_QMM_NB - 1) / KILN_QMM_NB * KILN_QMM_NB;
    int32_t* as = scratch;
    int32_t* bs = scratch + (long)M * K;
    kiln_qmm_shift(a, p->a_unsigned, &p->za, 0, (long)M * K, as);
    kiln_qmm_shift_b(b, p, K, N, np, bs);
    for (int m0 = 0; m0 < M; m0 += KILN_QMM_MR) {
        const int mr = M - m0 < KILN_QMM_MR ? M - m0 : KILN_QMM_MR;
        const int32_t* rows[KILN_QMM_MR];
        for (int r = 0; r < KILN_QMM_MR; ++r) rows[r] = as + (long)(m0 + (r < mr ? r : 0)) * K;
        for (int n0 = 0; n0 < N; n0 += KILN_QMM_NB) {
            kiln_qmm_v acc[KILN_QMM_MR] = {{0}};
            for (int k = 0; k < K; ++k) {
                kiln_qmm_v col;
                memcpy(&col, bs + (long)k * np + n0, sizeof col);
                for (int r = 0; r < KILN_QMM_MR; ++r) acc[r] += (uint32_t)rows[r][k] * col;
            }
            const int nn = N - n0 < KILN_QMM_NB ? N - n0 : KILN_QMM_NB;
            for (int r = 0; r < mr; ++r) {
                uint32_t sums[KILN_QMM_NB];
                memcpy(sums, &acc[r], sizeof sums);
                kiln_qmm_store(p, sums, n0, nn, (char*)out + (long)(m0 + r) * N);
            }
        }
    }
}
