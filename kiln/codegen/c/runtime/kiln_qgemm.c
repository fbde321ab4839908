/* kiln_qgemm.c: see kiln_qgemm.h. */
#include "kiln_qgemm.h"

#include <string.h>
#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

void kiln_qshift(const void* x, int x_unsigned, int zp, long M, int K, int ld, int16_t* out) {
    for (long m = 0; m < M; ++m) {
        int16_t* row = out + m * ld;
        if (x_unsigned) {
            const uint8_t* u = (const uint8_t*)x + m * K;
            for (int k = 0; k < K; ++k) row[k] = (int16_t)((int)u[k] - zp);
        } else {
            const int8_t* v = (const int8_t*)x + m * K;
            for (int k = 0; k < K; ++k) row[k] = (int16_t)((int)v[k] - zp);
        }
        for (int k = K; k < ld; ++k) row[k] = 0;
    }
}

/* One im2col row set for storage type T: interior windows copy without bounds checks. */
#define KILN_QIM2COL_BODY(T)                                                                   \
    const T* src = (const T*)x;                                                                \
    const int K = C * KH * KW;                                                                 \
    for (int oy = 0; oy < OH; ++oy) {                                                          \
        for (int ox = 0; ox < OW; ++ox) {                                                      \
            int16_t* row = col + ((long)oy * OW + ox) * ld;                                    \
            const int ix0 = ox * sw - pl;                                                      \
            const int inside_x = ix0 >= 0 && ix0 + (KW - 1) * dw < W;                          \
            for (int k = K; k < ld; ++k) row[k] = 0;                                           \
            for (int c = 0; c < C; ++c) {                                                      \
                for (int ky = 0; ky < KH; ++ky, row += KW) {                                   \
                    const int iy = oy * sh - pt + ky * dh;                                     \
                    if (iy < 0 || iy >= H) {                                                   \
                        for (int kx = 0; kx < KW; ++kx) row[kx] = 0;                           \
                        continue;                                                              \
                    }                                                                          \
                    const T* line = src + ((long)c * H + iy) * W;                              \
                    if (inside_x) {                                                            \
                        for (int kx = 0; kx < KW; ++kx)                                        \
                            row[kx] = (int16_t)((int)line[ix0 + kx * dw] - zp);                \
                    } else {                                                                   \
                        for (int kx = 0; kx < KW; ++kx) {                                      \
                            int ix = ix0 + kx * dw;                                            \
                            row[kx] = (int16_t)(ix >= 0 && ix < W ? (int)line[ix] - zp : 0);   \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

void kiln_qim2col(const void* x, int x_unsigned, int zp, int C, int H, int W, int KH, int KW,
                  int sh, int sw, int pt, int pl, int dh, int dw, int OH, int OW, int ld,
                  int16_t* col) {
    if (x_unsigned) {
        KILN_QIM2COL_BODY(uint8_t)
    } else {
        KILN_QIM2COL_BODY(int8_t)
    }
}

static int32_t kiln_qdot(const int16_t* a, const int16_t* b, int K) {
    int32_t acc = 0;
    for (int k = 0; k < K; ++k) acc += (int32_t)a[k] * (int32_t)b[k];
    return acc;
}

static void kiln_qstore(const kiln_requant* rq, int c, int32_t acc, void* out, long at) {
    int64_t wide = (int64_t)acc + (rq->bias ? rq->bias[c] : 0);
    int32_t wrapped = (int32_t)(uint32_t)(uint64_t)wide;
    int i = rq->per_channel ? c : 0;
    int64_t y = kiln_rmulshift(wrapped, rq->mult[i], rq->shift[i]) + rq->zo;
    y = y < rq->lo ? rq->lo : (y > rq->hi ? rq->hi : y);
    if (rq->out_unsigned) ((uint8_t*)out)[at] = (uint8_t)y;
    else ((int8_t*)out)[at] = (int8_t)y;
}

void kiln_qgemm(int M, int N, int K, const int16_t* A, int lda, const int16_t* B,
                const kiln_requant* rq, int ch0, void* out, long rs, long cs) {
    for (int n = 0; n < N; ++n) {
        const int16_t* b = B + (long)n * K;
        for (int m = 0; m < M; ++m) {
            int32_t acc = kiln_qdot(A + (long)m * lda, b, K);
            kiln_qstore(rq, n + ch0, acc, out, (long)m * rs + (long)n * cs);
        }
    }
}

#define KILN_QMR 8

/* acc[r][n] for rows A[r] (r < KILN_QMR) and one block of 16 packed channels. */
static void kiln_qblock(const int16_t* const* rows, int Kp, const int16_t* B,
                        int32_t acc[KILN_QMR][KILN_QNB]) {
#if defined(__AVX512BW__)
    __m512i c[KILN_QMR];
    for (int r = 0; r < KILN_QMR; ++r) c[r] = _mm512_setzero_si512();
    for (int j = 0; j < Kp / 2; ++j) {
        __m512i w = _mm512_loadu_si512((const void*)(B + (long)j * 2 * KILN_QNB));
        for (int r = 0; r < KILN_QMR; ++r) {
            int32_t pair;
            memcpy(&pair, rows[r] + 2 * j, sizeof pair);
            c[r] = _mm512_add_epi32(c[r], _mm512_madd_epi16(_mm512_set1_epi32(pair), w));
        }
    }
    for (int r = 0; r < KILN_QMR; ++r) _mm512_storeu_si512((void*)acc[r], c[r]);
#else
    for (int r = 0; r < KILN_QMR; ++r)
        for (int n = 0; n < KILN_QNB; ++n) acc[r][n] = 0;
    for (int j = 0; j < Kp / 2; ++j) {
        const int16_t* w = B + (long)j * 2 * KILN_QNB;
        for (int r = 0; r < KILN_QMR; ++r) {
            int32_t a0 = rows[r][2 * j], a1 = rows[r][2 * j + 1];
            for (int n = 0; n < KILN_QNB; ++n)
                acc[r][n] += a0 * (int32_t)w[2 * n] + a1 * (int32_t)w[2 * n + 1];
        }
    }
#endif
}

void kiln_qgemm_packed(int M, int N, int Kp, const int16_t* A, const int16_t* B,
                       const kiln_requant* rq, int ch0, void* out, long rs, long cs) {
    const int blocks = (N + KILN_QNB - 1) / KILN_QNB;
    int32_t acc[KILN_QMR][KILN_QNB];
    for (int m0 = 0; m0 < M; m0 += KILN_QMR) {
        const int16_t* rows[KILN_QMR];
        int mr = M - m0 < KILN_QMR ? M - m0 : KILN_QMR;
        for (int r = 0; r < KILN_QMR; ++r) rows[r] = A + (long)(m0 + (r < mr ? r : 0)) * Kp;
        for (int nb = 0; nb < blocks; ++nb) {
            kiln_qblock(rows, Kp, B + (long)nb * Kp * KILN_QNB, acc);
            int nn = N - nb * KILN_QNB < KILN_QNB ? N - nb * KILN_QNB : KILN_QNB;
            for (int r = 0; r < mr; ++r)
                for (int n = 0; n < nn; ++n) {
                    int c = nb * KILN_QNB + n;
                    kiln_qstore(rq, c + ch0, acc[r][n], out, (long)(m0 + r) * rs + (long)c * cs);
                }
        }
    }
}
