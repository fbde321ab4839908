/* kiln runtime test shim: exported wrappers around the header-only kernels, so that kiln's
 * tests can build this file as a shared library and compare each kernel with NumPy through
 * ctypes (tests/unit/test_codegen_runtime.py). Not part of generated models.
 * kiln_test_sgemm's b_packed: bit 0 packed, bit 1 padded (see kiln_gemm_args). */
#include <stdlib.h>

#include "kiln_runtime.h"

#define KILN_EXPORT __attribute__((visibility("default")))

KILN_EXPORT int kiln_test_vlen(void) { return KILN_VLEN; }
KILN_EXPORT int kiln_test_mr(void) { return KILN_MR; }
KILN_EXPORT int kiln_test_nr(void) { return KILN_NR; }

/* which: 0 exp, 1 log, 2 tanh, 3 erf, 4 sigmoid, 5 gelu, 6 gelu_tanh (scalar functions). */
KILN_EXPORT void kiln_test_unary(int which, const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) {
        switch (which) {
            case 0: y[i] = kiln_expf(x[i]); break;
            case 1: y[i] = kiln_logf(x[i]); break;
            case 2: y[i] = kiln_tanhf(x[i]); break;
            case 3: y[i] = kiln_erff(x[i]); break;
            case 4: y[i] = kiln_sigmoidf(x[i]); break;
            case 5: y[i] = kiln_geluf(x[i]); break;
            default: y[i] = kiln_gelu_tanhf(x[i]); break;
        }
    }
}

/* The vector exp over whole vectors, the scalar one on the tail. */
KILN_EXPORT void kiln_test_exp_vf(const float* x, float* y, int n) {
    int i = 0;
    for (; i + KILN_VLEN <= n; i += KILN_VLEN) kiln_storeu(y + i, kiln_exp_vf(kiln_loadu(x + i)));
    for (; i < n; ++i) y[i] = kiln_expf(x[i]);
}

KILN_EXPORT void kiln_test_pack(const float* src, int rows, int K, int width, float* dst) {
    kiln_pack_panels(src, rows, K, width, dst);
}

KILN_EXPORT void kiln_test_sgemm(int M, int N, int K, const float* A, int lda, int a_packed,
                                 const float* B, int ldb, int b_packed, float* C, int ldc,
                                 const float* bias_row, const float* bias_col, float lo,
                                 float hi) {
    kiln_gemm_args g = {M, N, K, A, lda, a_packed, B, ldb, b_packed & 1, b_packed >> 1, C, ldc,
                        bias_row, bias_col, lo, hi};
    kiln_sgemm(&g, 0, M, 0, N);
}

/* shape: C H W KH KW sh sw pt pl dh dw OH OW; ld: row pitch of col (>= OH*OW) */
KILN_EXPORT void kiln_test_im2col(const float* x, const int* shape, float* col, int ld) {
    kiln_conv_shape s = {shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6],
                         shape[7], shape[8], shape[9], shape[10], shape[11], shape[12]};
    kiln_im2col(x, &s, col, ld);
}

KILN_EXPORT void kiln_test_conv_direct(const float* x, const float* w, const float* bias,
                                       float* y, const int* shape, int cout, int groups) {
    kiln_conv_shape s = {shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6],
                         shape[7], shape[8], shape[9], shape[10], shape[11], shape[12]};
    kiln_conv2d_direct(x, NULL, w, bias, y, 0, cout, cout, groups, &s, -INFINITY, INFINITY,
                       NULL);
    if (s.sh != 1 || s.sw != 1) return;
    /* stride 1: the padded-grid path must agree with the row path (else NaN the output) */
    float* xp = (float*)malloc(sizeof(float) * KILN_DIRECT_PADDED(&s));
    float* acc = (float*)malloc(sizeof(float) * KILN_DIRECT_ACC(&s));
    float* y2 = (float*)malloc(sizeof(float) * (size_t)cout * s.OH * s.OW);
    kiln_conv_pad(x, &s, xp);
    kiln_conv2d_direct(x, xp, w, bias, y2, 0, cout, cout, groups, &s, -INFINITY, INFINITY, acc);
    for (size_t i = 0; i < (size_t)cout * s.OH * s.OW; ++i)
        if (!(y2[i] - y[i] < 1e-4f && y[i] - y2[i] < 1e-4f)) y[i] = NAN;
    free(xp);
    free(acc);
    free(y2);
}

/* shape: H W KH KW sh sw pt pl pb pr dh dw OH OW; mode 0 max, 1 avg, 2 avg without pads. */
KILN_EXPORT void kiln_test_pool(const float* x, float* y, int planes, const int* shape,
                                int mode) {
    kiln_pool_shape s = {shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6],
                         shape[7], shape[8], shape[9], shape[10], shape[11], shape[12],
                         shape[13]};
    if (mode == 0) kiln_maxpool2d(x, y, planes, &s);
    else kiln_avgpool2d(x, y, planes, &s, mode == 1);
}

KILN_EXPORT void kiln_test_softmax(const float* x, float* y, int rows, int L, int log_mode) {
    kiln_softmax_rows(x, y, rows, L, log_mode);
}

KILN_EXPORT void kiln_test_layer_norm(const float* x, const float* w, const float* b, float* y,
                                      int rows, int L, float eps) {
    kiln_layer_norm_rows(x, w, b, y, rows, L, eps);
}
