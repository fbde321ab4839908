/* kiln runtime: the hand-written kernel library every generated model.c uses.
 *
 * C99 with GCC vector extensions and attributes, nothing but libc/libm (and OpenMP when built
 * with threads > 1). The elementwise math (kiln_math.h, kiln_vec.h) is static inline, so the
 * generated epilogue loops inline and vectorize it; the kernels (GEMM, convolution helpers,
 * pooling, row kernels) are compiled once in kiln_*.c and linked with every model. Build with
 * `-std=c99 -O3 -march=native -ffp-contract=fast -fno-math-errno` (FMA contraction and
 * errno-free sqrt are what let the loops vectorize), and the same kiln_config.h (KILN_MR,
 * KILN_NR: the GEMM tile the weights were packed for) for the runtime and the model. Every
 * kernel is tested on its own through kiln_testlib.c.
 */
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#define KILN_RUNTIME_VERSION 1

#include "kiln_vec.h"
#include "kiln_math.h"
#include "kiln_gemm.h"
#include "kiln_conv.h"
#include "kiln_conv_gemm.h"
#include "kiln_dwconv.h"
#include "kiln_pwconv.h"
#include "kiln_pool.h"
#include "kiln_norm.h"
#include "kiln_qgemm.h"
#include "kiln_qmatmul.h"
#include "kiln_qops.h"
#include "kiln_qdw.h"
#include "kiln_sparse.h"
#include "kiln_winograd.h"

/* sum_i word_i * (2i + 1) mod 2^64 over the little-endian 64-bit words of a weights payload:
 * how `<model>_init` checks that a blob is the one its model was built with (kiln's Python
 * `params.checksum` computes the same). */
uint64_t kiln_checksum(const unsigned char* p, size_t n);

#endif /* KILN_RUNTIME_H */
