/* kiln runtime: row kernels (see kiln_norm.h). */
#include "kiln_norm.h"

/* Rows of exactly one vector (attention scores of 16 keys with AVX-512): the row stays in a
 * register from load to store, and the loop body is short enough that gcc keeps every
 * constant of exp in a register across rows. */
static void kiln_softmax_vector_rows(const float* x, float* y, int rows, int log_mode) {
    for (int r = 0; r < rows; ++r) {
        const kiln_vf v = kiln_loadu(x + (size_t)r * KILN_VLEN);
        const kiln_vf shifted = v - kiln_allmax(v);
        const kiln_vf e = kiln_exp_vf(shifted);
        const kiln_vf s = kiln_allsum(e);
        kiln_vf out;
        if (log_mode) out = shifted - kiln_logf(s[0]);
        else out = e * (1.0f / s[0]);
        kiln_storeu(y + (size_t)r * KILN_VLEN, out);
    }
}

void kiln_softmax_rows(const float* x, float* y, int rows, int L, int log_mode) {
    if (L == KILN_VLEN) {
        kiln_softmax_vector_rows(x, y, rows, log_mode);
        return;
    }
    for (int r = 0; r < rows; ++r) {
        const float* xr = x + (size_t)r * L;
        float* yr = y + (size_t)r * L;
        const float m = kiln_row_max(xr, L);
        kiln_vf acc = kiln_splat(0.0f);
        int i = 0;
        for (; i + KILN_VLEN <= L; i += KILN_VLEN) {
            kiln_vf e = kiln_exp_vf(kiln_loadu(xr + i) - m);
            if (!log_mode) kiln_storeu(yr + i, e);
            acc += e;
        }
        float s = kiln_allsum(acc)[0];
        for (; i < L; ++i) {
            float e = kiln_expf(xr[i] - m);
            if (!log_mode) yr[i] = e;
            s += e;
        }
        if (log_mode) {
            const float shift = m + kiln_logf(s);
            for (i = 0; i + KILN_VLEN <= L; i += KILN_VLEN)
                kiln_storeu(yr + i, kiln_loadu(xr + i) - shift);
            for (; i < L; ++i) yr[i] = xr[i] - shift;
        } else {
            const float inv = 1.0f / s;
            for (i = 0; i + KILN_VLEN <= L; i += KILN_VLEN)
                kiln_storeu(yr + i, kiln_loadu(yr + i) * inv);
            for (; i < L; ++i) yr[i] *= inv;
        }
    }
}

void kiln_layer_norm_rows(const float* x, const float* w, const float* b, float* y,
                                   int rows, int L, float eps) {
    for (int r = 0; r < rows; ++r) {
        const float* xr = x + (size_t)r * L;
        float* yr = y + (size_t)r * L;
        const float mean = kiln_row_sum(xr, L, 0.0f) / (float)L;
        const float var = kiln_row_sqdev(xr, L, mean) / (float)L;
        const float inv = 1.0f / sqrtf(var + eps);
        int i = 0;
        for (; i + KILN_VLEN <= L; i += KILN_VLEN) {
            kiln_vf v = (kiln_loadu(xr + i) - mean) * inv;
            if (w) v *= kiln_loadu(w + i);
            if (b) v += kiln_loadu(b + i);
            kiln_storeu(yr + i, v);
        }
        for (; i < L; ++i) {
            float v = (xr[i] - mean) * inv;
            if (w) v *= w[i];
            if (b) v += b[i];
            yr[i] = v;
        }
    }
}

void kiln_lrn(const float* x, float* y, int N, int C, int S, int size, float alpha,
                       float beta, float k) {
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            int c0 = kiln_imax(0, c - size / 2), c1 = kiln_imin(C - 1, c + (size - 1) / 2);
            const float* xc = x + ((size_t)n * C + c) * S;
            float* yc = y + ((size_t)n * C + c) * S;
            for (int i = 0; i < S; ++i) {
                float acc = 0.0f;
                for (int j = c0; j <= c1; ++j) {
                    float v = x[((size_t)n * C + j) * S + i];
                    acc += v * v;
                }
                yc[i] = xc[i] / powf(k + alpha * acc / (float)size, beta);
            }
        }
}
