/* kiln runtime: float32 kernels for sparse weights (csr, N:M, block r x c).
 *
 * The sparse operand is always the weight, in its matrix view W (rows = outputs, columns = the
 * reduction K; kiln's Python `kiln.ir.sparse.encode` writes the arrays at build time):
 *
 *   csr:   row o holds values[indptr[o] .. indptr[o+1]) at columns indices[...] (int32);
 *   nm:    every group of m columns of a row keeps exactly n values (zero-padded), row o's
 *          values at values[o * K/m * n ...], positions 0..m-1 inside the group as uint8;
 *   block: block row i (r output rows) holds blocks[indptr[i] .. indptr[i+1]), each r*c floats
 *          row-major, at block columns indices[...] (int32).
 *
 * Two kernels, because what makes sparsity pay differs with the batch:
 *
 *   kiln_spmm  C(o, j) = clamp(sum_k W(o, k) B(k, j) + bias(o)): B is column-contiguous (an
 *              im2col buffer, a 1x1 conv's image, or transposed activations). Each non-zero
 *              broadcasts once and multiply-adds a whole row of B: vector work proportional to
 *              the non-zeros, no index per lane. Block formats reuse each loaded row of B for r
 *              outputs (register blocking), as the dense micro-kernel does.
 *   kiln_spmv  a few activation rows (batch < KILN_SP_MIN_BATCH): y = W x per row, gathering x
 *              at the non-zeros' columns: the bytes read shrink with the density.
 *
 * `kiln_sparse_linear` picks between them for a linear layer's rows (transposing the rows into
 * the caller's scratch for kiln_spmm). Index arrays travel in kiln's float32 weights blob as
 * raw bits, hence the may_alias pointer types.
 */
#ifndef KILN_SPARSE_H
#define KILN_SPARSE_H

#include "kiln_vec.h"

#define KILN_SP_CSR 0
#define KILN_SP_NM 1
#define KILN_SP_BLOCK 2

#define KILN_SP_MIN_BATCH 8 /* activation rows from which a linear layer uses kiln_spmm */

typedef int32_t kiln_i32_a __attribute__((may_alias));

typedef struct {
    int rows, cols;            /* W is rows x cols: outputs x reduction */
    int format;                /* KILN_SP_CSR / KILN_SP_NM / KILN_SP_BLOCK */
    int p0, p1;                /* nm: n, m; block: r, c; csr: unused */
    const float* values;       /* csr, nm: the values; block: the r*c blocks */
    const kiln_i32_a* indices; /* csr: columns; block: block columns; nm: NULL */
    const unsigned char* pos;  /* nm: positions inside the group; else NULL */
    const kiln_i32_a* indptr;  /* csr: rows + 1 entries; block: rows / r + 1; nm: NULL */
} kiln_sparse;

/* C(o, j) for every output o and columns j in [0, n): B(k, j) = b[k * ldb + j] and
 * C(o, j) = c[o * rs_c + j * cs_c]. With `b_padded` the rows of B are readable up to n rounded
 * up to KILN_VLEN (whole vectors), else the last columns are read one at a time. */
void kiln_spmm(const kiln_sparse* w, const float* b, ptrdiff_t ldb, int n, int b_padded,
               float* c, ptrdiff_t rs_c, ptrdiff_t cs_c, const float* bias, float lo,
               float hi);

/* y[i * ldy + o] = clamp(sum_k W(o, k) x[i * ldx + k] + bias(o)) for rows i in [0, m). */
void kiln_spmv(const kiln_sparse* w, const float* x, ptrdiff_t ldx, int m, float* y,
               ptrdiff_t ldy, const float* bias, float lo, float hi);

/* xt[k * ldt + i] = x[i * ldx + k] for i < m, zero for m <= i < ldt. */
void kiln_sp_transpose(const float* x, int m, int k, ptrdiff_t ldx, float* xt, int ldt);

/* Floats of scratch `kiln_sparse_linear` needs for m rows of a K-input, N-output layer. */
size_t kiln_sparse_linear_scratch(int m, int k, int n);

/* A linear layer's rows: y[i * ldy + o] = clamp(x[i, :] . W(o, :) + bias(o)), i in [0, m).
 * Batches of KILN_SP_MIN_BATCH rows or more go through kiln_spmm on transposed rows, its
 * result transposed back (both in `scratch`, kiln_sparse_linear_scratch(m, K, N) floats;
 * VLEN x VLEN tiles transposed in registers), smaller ones through kiln_spmv. */
void kiln_sparse_linear(const kiln_sparse* w, const float* x, ptrdiff_t ldx, int m, float* y,
                        ptrdiff_t ldy, const float* bias, float lo, float hi, float* scratch);

#endif /* KILN_SPARSE_H */
