/* kiln runtime: sparse-weight kernels (layouts and API: kiln_sparse.h).
 *
 * kiln_spmm walks B in chunks of columns, whole vectors: `nv` vectors per chunk (a constant
 * after inlining, so the accumulators live in registers), then single vectors, then a scalar
 * tail when B's rows may not be read past n. Inside a chunk every output row streams its
 * non-zeros: one broadcast and nv fused multiply-adds per non-zero (csr and nm keep two
 * accumulator sets, alternating, to hide the FMA latency); a block row of r outputs loads each
 * of its c rows of B once for r multiply-adds. Common block shapes are specialised below (r and
 * c constant); other shapes run a row at a time. kiln_spmv (a few rows) runs scalar chains;
 * kiln_sparse_linear moves a linear layer's rows to and from the column layout kiln_spmm wants
 * with VLEN x VLEN register transposes.
 */
#include "kiln_sparse.h"

/* Vectorized by hand: GCC's loop vectorizer has nothing to add here and would spend seconds
 * of compile time on the specialised variants (as in kiln_gemm.c). */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-vectorize")

#define KILN_SP_WIDE 4 /* vectors per column chunk (csr, nm, r <= 2 blocks) */

KILN_INLINE float kiln_sp_clamp(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

KILN_INLINE kiln_vf kiln_sp_vclamp(kiln_vf v, float lo, float hi) {
    return kiln_vmin(kiln_vmax(v, kiln_splat(lo)), kiln_splat(hi));
}

/* `nc` (<= nv vectors) columns of one output row: c[j * cs_c] = clamp(acc[j] + bias). */
KILN_INLINE void kiln_sp_store(const int nv, const kiln_vf* acc, int nc, float bias, float lo,
                               float hi, float* c, ptrdiff_t cs_c) {
    if (cs_c == 1 && nc == nv * KILN_VLEN) {
        for (int v = 0; v < nv; ++v)
            kiln_storeu(c + v * KILN_VLEN, kiln_sp_vclamp(acc[v] + bias, lo, hi));
        return;
    }
    float tmp[KILN_SP_WIDE * KILN_VLEN];
    for (int v = 0; v < nv; ++v) kiln_storeu(tmp + v * KILN_VLEN, acc[v]);
    const int kept = kiln_imin(nc, nv * KILN_VLEN);
    for (int j = 0; j < kept; ++j) c[j * cs_c] = kiln_sp_clamp(tmp[j] + bias, lo, hi);
}

KILN_INLINE float kiln_sp_bias(const float* bias, int o) { return bias ? bias[o] : 0.0f; }

/* -- csr ------------------------------------------------------------------------------------ */
KILN_INLINE void kiln_sp_csr_chunk(const int nv, const kiln_sparse* w, const float* b,
                                   ptrdiff_t ldb, int nc, float* c, ptrdiff_t rs_c,
                                   ptrdiff_t cs_c, const float* bias, float lo, float hi) {
    const float* val = w->values;
    const kiln_i32_a* idx = w->indices;
    for (int o = 0; o < w->rows; ++o) {
        kiln_vf a0[KILN_SP_WIDE], a1[KILN_SP_WIDE];
        for (int v = 0; v < nv; ++v) a0[v] = a1[v] = (kiln_vf){0};
        int j = w->indptr[o];
        const int end = w->indptr[o + 1];
        for (; j + 1 < end; j += 2) {
            const float* b0 = b + (ptrdiff_t)idx[j] * ldb;
            const float* b1 = b + (ptrdiff_t)idx[j + 1] * ldb;
            kiln_vf w0 = kiln_splat(val[j]), w1 = kiln_splat(val[j + 1]);
            for (int v = 0; v < nv; ++v) {
                a0[v] += w0 * kiln_loadu(b0 + v * KILN_VLEN);
                a1[v] += w1 * kiln_loadu(b1 + v * KILN_VLEN);
            }
        }
        if (j < end) {
            const float* b0 = b + (ptrdiff_t)idx[j] * ldb;
            kiln_vf w0 = kiln_splat(val[j]);
            for (int v = 0; v < nv; ++v) a0[v] += w0 * kiln_loadu(b0 + v * KILN_VLEN);
        }
        for (int v = 0; v < nv; ++v) a0[v] += a1[v];
        kiln_sp_store(nv, a0, nc, kiln_sp_bias(bias, o), lo, hi, c + o * rs_c, cs_c);
    }
}

/* -- n:m ------------------------------------------------------------------------------------ */
KILN_INLINE void kiln_sp_nm_chunk(const int nv, const int n, const int m, const kiln_sparse* w,
                                  const float* b, ptrdiff_t ldb, int nc, float* c,
                                  ptrdiff_t rs_c, ptrdiff_t cs_c, const float* bias, float lo,
                                  float hi) {
    const int groups = w->cols / m;
    for (int o = 0; o < w->rows; ++o) {
        const float* val = w->values + (ptrdiff_t)o * groups * n;
        const unsigned char* pos = w->pos + (ptrdiff_t)o * groups * n;
        kiln_vf a0[KILN_SP_WIDE], a1[KILN_SP_WIDE];
        for (int v = 0; v < nv; ++v) a0[v] = a1[v] = (kiln_vf){0};
        for (int g = 0; g < groups; ++g) {
            const float* bg = b + (ptrdiff_t)g * m * ldb;
            for (int t = 0; t < n; ++t) {
                const int q = g * n + t;
                const float* bk = bg + (ptrdiff_t)pos[q] * ldb;
                kiln_vf wv = kiln_splat(val[q]);
                for (int v = 0; v < nv; ++v) {
                    if (t & 1) a1[v] += wv * kiln_loadu(bk + v * KILN_VLEN);
                    else a0[v] += wv * kiln_loadu(bk + v * KILN_VLEN);
                }
            }
        }
        for (int v = 0; v < nv; ++v) a0[v] += a1[v];
        kiln_sp_store(nv, a0, nc, kiln_sp_bias(bias, o), lo, hi, c + o * rs_c, cs_c);
    }
}

/* -- blocks --------------------------------------------------------------------------------- */
/* r x c blocks with r * nv <= 16 accumulators (r, c, nv constant after inlining). */
KILN_INLINE void kiln_sp_block_chunk(const int r, const int c, const int nv,
                                     const kiln_sparse* w, const float* b, ptrdiff_t ldb,
                                     int nc, float* out, ptrdiff_t rs_c, ptrdiff_t cs_c,
                                     const float* bias, float lo, float hi) {
    for (int bi = 0; bi < w->rows / r; ++bi) {
        kiln_vf acc[8][KILN_SP_WIDE];
        for (int rr = 0; rr < r; ++rr)
            for (int v = 0; v < nv; ++v) acc[rr][v] = (kiln_vf){0};
        for (int j = w->indptr[bi]; j < w->indptr[bi + 1]; ++j) {
            const float* blk = w->values + (ptrdiff_t)j * r * c;
            const float* bb = b + (ptrdiff_t)w->indices[j] * c * ldb;
            for (int cc = 0; cc < c; ++cc) {
                kiln_vf bv[KILN_SP_WIDE];
                for (int v = 0; v < nv; ++v) bv[v] = kiln_loadu(bb + cc * ldb + v * KILN_VLEN);
                for (int rr = 0; rr < r; ++rr) {
                    kiln_vf wv = kiln_splat(blk[rr * c + cc]);
                    for (int v = 0; v < nv; ++v) acc[rr][v] += wv * bv[v];
                }
            }
        }
        for (int rr = 0; rr < r; ++rr) {
            const int o = bi * r + rr;
            kiln_sp_store(nv, acc[rr], nc, kiln_sp_bias(bias, o), lo, hi, out + o * rs_c, cs_c);
        }
    }
}

/* Any block shape, one output row at a time. */
KILN_INLINE void kiln_sp_block_rows(const int nv, const kiln_sparse* w, const float* b,
                                    ptrdiff_t ldb, int nc, float* out, ptrdiff_t rs_c,
                                    ptrdiff_t cs_c, const float* bias, float lo, float hi) {
    const int r = w->p0, c = w->p1;
    for (int o = 0; o < w->rows; ++o) {
        const int bi = o / r, rr = o % r;
        kiln_vf acc[KILN_SP_WIDE];
        for (int v = 0; v < nv; ++v) acc[v] = (kiln_vf){0};
        for (int j = w->indptr[bi]; j < w->indptr[bi + 1]; ++j) {
            const float* row = w->values + ((ptrdiff_t)j * r + rr) * c;
            const float* bb = b + (ptrdiff_t)w->indices[j] * c * ldb;
            for (int cc = 0; cc < c; ++cc) {
                kiln_vf wv = kiln_splat(row[cc]);
                for (int v = 0; v < nv; ++v)
                    acc[v] += wv * kiln_loadu(bb + cc * ldb + v * KILN_VLEN);
            }
        }
        kiln_sp_store(nv, acc, nc, kiln_sp_bias(bias, o), lo, hi, out + o * rs_c, cs_c);
    }
}

/* Vectors per chunk for a block shape: at most 16 accumulators. */
static int kiln_sp_block_wide(int r) { return r <= 2 ? 4 : 2; }

#define KILN_SP_ARGS w, b, ldb, nc, c, rs_c, cs_c, bias, lo, hi
#define KILN_SP_BLOCK_CASE(R, C)                                                               \
    if (r == R && cc == C) {                                                                   \
        if (nv > 1) kiln_sp_block_chunk(R, C, R <= 2 ? 4 : 2, KILN_SP_ARGS);                  \
        else kiln_sp_block_chunk(R, C, 1, KILN_SP_ARGS);                                       \
        return;                                                                                \
    }

static void kiln_sp_block_dispatch(int nv, const kiln_sparse* w, const float* b, ptrdiff_t ldb,
                                   int nc, float* c, ptrdiff_t rs_c, ptrdiff_t cs_c,
                                   const float* bias, float lo, float hi) {
    const int r = w->p0, cc = w->p1;
    KILN_SP_BLOCK_CASE(4, 4) KILN_SP_BLOCK_CASE(2, 2) KILN_SP_BLOCK_CASE(8, 1)
    KILN_SP_BLOCK_CASE(1, 8) KILN_SP_BLOCK_CASE(4, 1) KILN_SP_BLOCK_CASE(1, 4)
    if (nv == 4) kiln_sp_block_rows(4, KILN_SP_ARGS);
    else if (nv == 2) kiln_sp_block_rows(2, KILN_SP_ARGS);
    else kiln_sp_block_rows(1, KILN_SP_ARGS);
}

/* -- the column-chunk driver ---------------------------------------------------------------- */
static void kiln_sp_chunk(int nv, const kiln_sparse* w, const float* b, ptrdiff_t ldb, int nc,
                          float* c, ptrdiff_t rs_c, ptrdiff_t cs_c, const float* bias,
                          float lo, float hi) {
    if (w->format == KILN_SP_BLOCK) {
        kiln_sp_block_dispatch(nv, KILN_SP_ARGS);
    } else if (w->format == KILN_SP_NM) {
        if (w->p0 == 2 && w->p1 == 4) {
            if (nv == KILN_SP_WIDE) kiln_sp_nm_chunk(KILN_SP_WIDE, 2, 4, KILN_SP_ARGS);
            else kiln_sp_nm_chunk(1, 2, 4, KILN_SP_ARGS);
        } else if (nv == KILN_SP_WIDE) {
            kiln_sp_nm_chunk(KILN_SP_WIDE, w->p0, w->p1, KILN_SP_ARGS);
        } else {
            kiln_sp_nm_chunk(1, w->p0, w->p1, KILN_SP_ARGS);
        }
    } else if (nv == KILN_SP_WIDE) {
        kiln_sp_csr_chunk(KILN_SP_WIDE, KILN_SP_ARGS);
    } else {
        kiln_sp_csr_chunk(1, KILN_SP_ARGS);
    }
}

/* Column j of every output (fewer than a vector of columns left, B not padded). */
static void kiln_sp_column(const kiln_sparse* w, const float* b, ptrdiff_t ldb, float* c,
                           ptrdiff_t rs_c, const float* bias, float lo, float hi) {
    for (int o = 0; o < w->rows; ++o) {
        float s = 0.0f;
        if (w->format == KILN_SP_CSR) {
            for (int j = w->indptr[o]; j < w->indptr[o + 1]; ++j)
                s += w->values[j] * b[(ptrdiff_t)w->indices[j] * ldb];
        } else if (w->format == KILN_SP_NM) {
            const int n = w->p0, m = w->p1, per = w->cols / m * n;
            for (int q = 0; q < per; ++q) {
                ptrdiff_t k = (ptrdiff_t)(q / n) * m + w->pos[(ptrdiff_t)o * per + q];
                s += w->values[(ptrdiff_t)o * per + q] * b[k * ldb];
            }
        } else {
            const int r = w->p0, cc = w->p1, bi = o / r;
            for (int j = w->indptr[bi]; j < w->indptr[bi + 1]; ++j)
                for (int t = 0; t < cc; ++t)
                    s += w->values[((ptrdiff_t)j * r + o % r) * cc + t] *
                         b[((ptrdiff_t)w->indices[j] * cc + t) * ldb];
        }
        c[o * rs_c] = kiln_sp_clamp(s + kiln_sp_bias(bias, o), lo, hi);
    }
}

void kiln_spmm(const kiln_sparse* w, const float* b, ptrdiff_t ldb, int n, int b_padded,
               float* c, ptrdiff_t rs_c, ptrdiff_t cs_c, const float* bias, float lo,
               float hi) {
    const int wide = w->format == KILN_SP_BLOCK ? kiln_sp_block_wide(w->p0) : KILN_SP_WIDE;
    int j = 0;
    for (; j + wide * KILN_VLEN <= n; j += wide * KILN_VLEN)
        kiln_sp_chunk(wide, w, b + j, ldb, wide * KILN_VLEN, c + j * cs_c, rs_c, cs_c, bias,
                      lo, hi);
    for (; j + KILN_VLEN <= n || (b_padded && j < n); j += KILN_VLEN)
        kiln_sp_chunk(1, w, b + j, ldb, kiln_imin(KILN_VLEN, n - j), c + j * cs_c, rs_c, cs_c,
                      bias, lo, hi);
    for (; j < n; ++j) kiln_sp_column(w, b + j, ldb, c + j * cs_c, rs_c, bias, lo, hi);
}

/* -- batch < KILN_SP_MIN_BATCH: gathers ------------------------------------------------------ */
/* One row x: y(o) = W(o, :) . x for csr, four independent scalar chains. Measured on AVX-512
 * (AMD EPYC): this beats gathering VLEN lanes into a vector (lane inserts: 1.5x slower) and
 * the hardware gather (vgatherdps: 2.4x slower) for 256..1024-wide layers. */
static void kiln_spmv_csr(const kiln_sparse* w, const float* x, float* y, const float* bias,
                          float lo, float hi) {
    const float* val = w->values;
    const kiln_i32_a* idx = w->indices;
    for (int o = 0; o < w->rows; ++o) {
        int j = w->indptr[o];
        const int end = w->indptr[o + 1];
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (; j + 4 <= end; j += 4) {
            s0 += val[j] * x[idx[j]];
            s1 += val[j + 1] * x[idx[j + 1]];
            s2 += val[j + 2] * x[idx[j + 2]];
            s3 += val[j + 3] * x[idx[j + 3]];
        }
        float s = (s0 + s1) + (s2 + s3);
        for (; j < end; ++j) s += val[j] * x[idx[j]];
        y[o] = kiln_sp_clamp(s + kiln_sp_bias(bias, o), lo, hi);
    }
}

KILN_INLINE void kiln_spmv_nm_row(const int n, const int m, const kiln_sparse* w,
                                  const float* x, float* y, const float* bias, float lo,
                                  float hi) {
    const int groups = w->cols / m;
    for (int o = 0; o < w->rows; ++o) {
        const float* val = w->values + (ptrdiff_t)o * groups * n;
        const unsigned char* pos = w->pos + (ptrdiff_t)o * groups * n;
        float s0 = 0.0f, s1 = 0.0f;
        for (int g = 0; g < groups; ++g) {
            const float* xg = x + g * m;
            for (int t = 0; t < n; ++t) {
                float p = val[g * n + t] * xg[pos[g * n + t]];
                if (t & 1) s1 += p;
                else s0 += p;
            }
        }
        y[o] = kiln_sp_clamp(s0 + s1 + kiln_sp_bias(bias, o), lo, hi);
    }
}

KILN_INLINE void kiln_spmv_block_row(const int r, const int c, const kiln_sparse* w,
                                     const float* x, float* y, const float* bias, float lo,
                                     float hi) {
    for (int bi = 0; bi < w->rows / r; ++bi) {
        float acc[64];
        for (int rr = 0; rr < r; ++rr) acc[rr] = 0.0f;
        for (int j = w->indptr[bi]; j < w->indptr[bi + 1]; ++j) {
            const float* blk = w->values + (ptrdiff_t)j * r * c;
            const float* xb = x + (ptrdiff_t)w->indices[j] * c;
            for (int rr = 0; rr < r; ++rr)
                for (int cc = 0; cc < c; ++cc) acc[rr] += blk[rr * c + cc] * xb[cc];
        }
        for (int rr = 0; rr < r; ++rr) {
            const int o = bi * r + rr;
            y[o] = kiln_sp_clamp(acc[rr] + kiln_sp_bias(bias, o), lo, hi);
        }
    }
}

static void kiln_spmv_one(const kiln_sparse* w, const float* x, float* y, const float* bias,
                          float lo, float hi) {
    if (w->format == KILN_SP_CSR) {
        kiln_spmv_csr(w, x, y, bias, lo, hi);
    } else if (w->format == KILN_SP_NM) {
        if (w->p0 == 2 && w->p1 == 4) kiln_spmv_nm_row(2, 4, w, x, y, bias, lo, hi);
        else kiln_spmv_nm_row(w->p0, w->p1, w, x, y, bias, lo, hi);
    } else if (w->p0 == 4 && w->p1 == 4) {
        kiln_spmv_block_row(4, 4, w, x, y, bias, lo, hi);
    } else if (w->p0 <= 64) {
        kiln_spmv_block_row(w->p0, w->p1, w, x, y, bias, lo, hi);
    } else { /* tall blocks: kiln_spmm over a single column */
        kiln_spmm(w, x, 1, 1, 0, y, 1, 1, bias, lo, hi);
    }
}

void kiln_spmv(const kiln_sparse* w, const float* x, ptrdiff_t ldx, int m, float* y,
               ptrdiff_t ldy, const float* bias, float lo, float hi) {
    for (int i = 0; i < m; ++i) kiln_spmv_one(w, x + i * ldx, y + i * ldy, bias, lo, hi);
}

/* -- linear layers -------------------------------------------------------------------------- */
/* Lanes of the block swap at distance h: `lo` takes a's lane j where (j & h) == 0, else b's
 * lane j - h; `hi` takes a's lane j + h, else b's lane j. Constants once unrolled. */
KILN_INLINE kiln_vi kiln_sp_swap_mask(int h, int hi) {
    kiln_vi mask;
    for (int j = 0; j < KILN_VLEN; ++j)
        mask[j] = (j & h) ? (hi ? KILN_VLEN + j : KILN_VLEN + j - h) : (hi ? j + h : j);
    return mask;
}

/* A VLEN x VLEN tile, in registers: log2(VLEN) rounds of swapping off-diagonal blocks
 * (masks[0][s], masks[1][s]: the lo/hi masks of round s, distance VLEN/2 >> s). */
KILN_INLINE void kiln_sp_tile_transpose(const float* src, ptrdiff_t lds, float* dst,
                                        ptrdiff_t ldd, const kiln_vi masks[2][4]) {
    kiln_vf r[KILN_VLEN];
#pragma GCC unroll 16
    for (int i = 0; i < KILN_VLEN; ++i) r[i] = kiln_loadu(src + i * lds);
#pragma GCC unroll 4
    for (int h = KILN_VLEN / 2, s = 0; h >= 1; h /= 2, ++s) {
        const kiln_vi lo = masks[0][s], hi = masks[1][s];
#pragma GCC unroll 16
        for (int i = 0; i < KILN_VLEN; ++i) {
            if (i & h) continue;
            kiln_vf a = r[i], b = r[i + h];
            r[i] = __builtin_shuffle(a, b, lo);
            r[i + h] = __builtin_shuffle(a, b, hi);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < KILN_VLEN; ++i) kiln_storeu(dst + i * ldd, r[i]);
}

/* dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols. */
static void kiln_sp_transpose_any(const float* src, int rows, int cols, ptrdiff_t lds,
                                  float* dst, ptrdiff_t ldd) {
    const int rv = rows / KILN_VLEN * KILN_VLEN, cv = cols / KILN_VLEN * KILN_VLEN;
    kiln_vi masks[2][4];
    for (int h = KILN_VLEN / 2, s = 0; h >= 1; h /= 2, ++s) {
        masks[0][s] = kiln_sp_swap_mask(h, 0);
        masks[1][s] = kiln_sp_swap_mask(h, 1);
    }
    for (int i = 0; i < rv; i += KILN_VLEN)
        for (int j = 0; j < cv; j += KILN_VLEN)
            kiln_sp_tile_transpose(src + i * lds + j, lds, dst + j * ldd + i, ldd,
                                   (const kiln_vi(*)[4])masks);
    for (int i = 0; i < rows; ++i)
        for (int j = i < rv ? cv : 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

void kiln_sp_transpose(const float* x, int m, int k, ptrdiff_t ldx, float* xt, int ldt) {
    kiln_sp_transpose_any(x, m, k, ldx, xt, ldt);
    for (int kk = 0; kk < k; ++kk)
        for (int i = m; i < ldt; ++i) xt[(ptrdiff_t)kk * ldt + i] = 0.0f;
}

static int kiln_sp_padded(int m) { return (m + KILN_VLEN - 1) / KILN_VLEN * KILN_VLEN; }

size_t kiln_sparse_linear_scratch(int m, int k, int n) {
    return m < KILN_SP_MIN_BATCH ? 0 : (size_t)(k + n) * kiln_sp_padded(m);
}

void kiln_sparse_linear(const kiln_sparse* w, const float* x, ptrdiff_t ldx, int m, float* y,
                        ptrdiff_t ldy, const float* bias, float lo, float hi, float* scratch) {
    if (m < KILN_SP_MIN_BATCH || scratch == NULL) {
        kiln_spmv(w, x, ldx, m, y, ldy, bias, lo, hi);
        return;
    }
    const int ldt = kiln_sp_padded(m);
    float* yt = scratch + (size_t)w->cols * ldt;
    kiln_sp_transpose(x, m, w->cols, ldx, scratch, ldt);
    kiln_spmm(w, scratch, ldt, m, 1, yt, ldt, 1, bias, lo, hi);
    kiln_sp_transpose_any(yt, w->rows, m, ldt, y, ldy);
}

#pragma GCC pop_options
