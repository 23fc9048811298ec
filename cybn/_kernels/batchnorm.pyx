"""Batch-normalization kernels (training statistics, normalisation, backward), nogil + prange.

All kernels see the input as a C-contiguous (N, C, S) array, S = H*W (S = 1 for (N, C) input),
and trust their arguments (``cybn.functional.batchnorm`` validates). Two memory layouts:

* "plane" mode (S > 1): each (n, c) plane is S contiguous values;
* "column" mode (S == 1): a row n holds the C channels side by side, so loops run over c in the
  innermost position (contiguous, vectorisable, no loop-carried float dependency).

Determinism: the chunked reductions split the N rows into ``_ntasks(N, S)`` chunks chosen from the
SHAPE ONLY (never from the thread count); each chunk is reduced by exactly one thread into its own
partial slot with a fixed summation order, and the partials are merged serially in chunk order.
Hence results are bit-identical for any thread count, not only repeatable.

(Channel-fused variants, one thread per channel running the reduction and the elementwise pass
back to back from L2, were measured 1.1-1.6x SLOWER on (128, 64, 16, 16) and (128, 128, 8, 8):
a channel's planes are strided by C*H*W, which defeats the prefetchers; every pass here sweeps
memory sequentially instead.)

Statistics are numerically stable and accumulated in double: blocks of at most BLOCK values per
channel are summed in one pass as sums shifted by the block's first value, and blocks are merged
with Chan et al.'s pairwise formula (see ``_stats_chunk``): one pass over memory, no
E[x^2] - E[x]^2 cancellation. The hot double-accumulating loops are small C functions using
vector extensions (8 fixed lanes), because GCC may not vectorise a float reduction without
-ffast-math, which we never use.

Elementwise passes subtract the mean as ``(x - mean_hi) - mean_lo`` with the double mean split
into two values of the input type, so a float32 channel with mean 1e4 and std 1e-2 is centred
exactly although float(mean) alone would be off by ~5% of a standard deviation.
"""
import numpy as np

cimport cython
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrt
from libc.stdint cimport uint8_t

from cybn._kernels._common cimport (floating, cybn_team, cybn_team_init, cybn_claim,
                                    cybn_team_flag, cybn_team_barrier, cybn_team_end)

cdef enum:
    # Values per channel and statistics block: bounds the shifted-sum error to BLOCK * 2^-53.
    BLOCK = 16384
    # Upper bound on row chunks per reduction (partials are combined serially: C * chunks work).
    MAX_TASKS = 64
    # Lower bound on values per channel in one chunk (see _ntasks).
    MIN_CHUNK = 256


cdef inline Py_ssize_t _ntasks(Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    """Row chunks of a reduction: a function of the shape only, so results do not depend on threads.

    At least MIN_CHUNK values per channel per chunk, because every chunk costs C partial-statistics
    merges (a division each), which would dominate for short chunks of wide (N, C) input.
    """
    cdef Py_ssize_t t = (N * S) // MIN_CHUNK
    if t > MAX_TASKS:
        t = MAX_TASKS
    if t > N:
        t = N
    return t if t > 0 else 1


cdef inline Py_ssize_t _chunk_start(Py_ssize_t t, Py_ssize_t N, Py_ssize_t ntask) noexcept nogil:
    return (t * N) // ntask


cdef extern from *:
    """
    /* Streams read ahead by 2 KB (measured best of 0.5-4 KB for the backward sums: 3.7x faster
       cold at 2 threads than without). */
    #define CYBN_PREFETCH(p) CYBN_PREFETCH_AHEAD(p, 2048)
    /* Hot inner loops of the reductions, in C so that the double accumulation is SIMD without
       -ffast-math: 8 accumulator lanes (two 4-wide vectors, element i goes to lane i % 8), then a
       fixed combination tree (CYBN_SUM_4_4), then the tail in order. The scalar fallback
       (compilers without vector extensions) uses the same lanes and tree (CYBN_SUM8), so every
       build gives the same bits. The vector types, loads, sums and CYBN_CLONES_EXACT (an AVX2
       clone without FMA: identical bits) come from _common.h. */
    #ifdef CYBN_HAVE_VECTOR_EXT
    /* One 8-lane vector per sum (element i to lane i % 8, combined by CYBN_SUM8): one AVX-512
       register in the avx512f clone, two AVX2 or four SSE registers in the others, the same
       operations in the same order in every clone. */
    /* *sd += sum(x - k), *sq += sum((x - k)^2): shifted sums of one block. */
    #define CYBN_SHIFTED(T) \
    CYBN_CLONES_EXACT_WIDE static void cybn_shifted_##T(const T *p, Py_ssize_t n, double k, double *sd, double *sq) { \
        cybn_d8 kk = {k, k, k, k, k, k, k, k}, a = {0}, q = {0}, d; \
        Py_ssize_t i = 0; double s, r; \
        for (; i + 8 <= n; i += 8) { CYBN_PREFETCH(p + i); CYBN_LOAD8_##T(d, p + i); d -= kk; a += d; q += d * d; } \
        s = CYBN_SUM8(a); r = CYBN_SUM8(q); \
        for (; i < n; i++) { double e = (double)p[i] - k; s += e; r += e * e; } \
        *sd += s; *sq += r; \
    }
    /* *sg += sum(g), *sgx += sum(g * (x - mu)): the two backward reductions of one plane. */
    #define CYBN_BWD(T) \
    CYBN_CLONES_EXACT_WIDE static void cybn_bwd_##T(const T *g, const T *x, Py_ssize_t n, double mu, double *sg, double *sgx) { \
        cybn_d8 mm = {mu, mu, mu, mu, mu, mu, mu, mu}, a = {0}, b = {0}, gv, xv; \
        Py_ssize_t i = 0; double s, t; \
        for (; i + 8 <= n; i += 8) { \
            CYBN_PREFETCH(g + i); CYBN_PREFETCH(x + i); \
            CYBN_LOAD8_##T(gv, g + i); CYBN_LOAD8_##T(xv, x + i); a += gv; b += gv * (xv - mm); \
        } \
        s = CYBN_SUM8(a); t = CYBN_SUM8(b); \
        for (; i < n; i++) { double gi = (double)g[i]; s += gi; t += gi * ((double)x[i] - mu); } \
        *sg += s; *sgx += t; \
    }
    /* The same for the gradient of ReLU(BN(x)): g counts only where the pre-activation
       z = ((x - h) - l) * s + b, recomputed in T exactly as the forward computed it, is > 0 (so
       the mask is the forward's, bit for bit; a NaN z masks like ReLU's backward: 0). */
    #define CYBN_MASK8_float(dst, p, h, l, s, b) do { cybn_f8 v_; memcpy(&v_, (p), sizeof v_); \
        v_ = ((v_ - (h)) - (l)) * (s) + (b); (dst) = __builtin_convertvector(v_ > 0, cybn_l8); } while (0)
    #define CYBN_MASK8_double(dst, p, h, l, s, b) do { cybn_d8 v_; memcpy(&v_, (p), sizeof v_); \
        v_ = ((v_ - (h)) - (l)) * (s) + (b); (dst) = (cybn_l8)(v_ > 0); } while (0)
    #define CYBN_BWD_RELU(T) \
    CYBN_CLONES_EXACT_WIDE static void cybn_bwd_relu_##T(const T *g, const T *x, Py_ssize_t n, double mu, T h, T l, T sc, T sh, double *sg, double *sgx) { \
        cybn_d8 mm = {mu, mu, mu, mu, mu, mu, mu, mu}, a = {0}, b = {0}, gv, xv; \
        cybn_l8 m; Py_ssize_t i = 0; double s, t; \
        for (; i + 8 <= n; i += 8) { \
            CYBN_PREFETCH(g + i); CYBN_PREFETCH(x + i); \
            CYBN_LOAD8_##T(gv, g + i); CYBN_LOAD8_##T(xv, x + i); CYBN_MASK8_##T(m, x + i, h, l, sc, sh); \
            gv = (cybn_d8)((cybn_l8)gv & m); a += gv; b += gv * (xv - mm); \
        } \
        s = CYBN_SUM8(a); t = CYBN_SUM8(b); \
        for (; i < n; i++) { T z = ((x[i] - h) - l) * sc + sh; double gi = z > 0 ? (double)g[i] : 0.0; \
                             s += gi; t += gi * ((double)x[i] - mu); } \
        *sg += s; *sgx += t; \
    }
    #else
    #define CYBN_SHIFTED(T) \
    static void cybn_shifted_##T(const T *p, Py_ssize_t n, double k, double *sd, double *sq) { \
        double a[8] = {0}, q8[8] = {0}, s, q, d; Py_ssize_t i = 0; int j; \
        for (; i + 8 <= n; i += 8) for (j = 0; j < 8; j++) { \
            d = (double)p[i + j] - k; a[j] += d; q8[j] += d * d; } \
        s = CYBN_SUM8(a); q = CYBN_SUM8(q8); \
        for (; i < n; i++) { d = (double)p[i] - k; s += d; q += d * d; } \
        *sd += s; *sq += q; \
    }
    #define CYBN_BWD(T) \
    static void cybn_bwd_##T(const T *g, const T *x, Py_ssize_t n, double mu, double *sg, double *sgx) { \
        double a[8] = {0}, b[8] = {0}, s, t, gi; Py_ssize_t i = 0; int j; \
        for (; i + 8 <= n; i += 8) for (j = 0; j < 8; j++) { \
            gi = (double)g[i + j]; a[j] += gi; b[j] += gi * ((double)x[i + j] - mu); } \
        s = CYBN_SUM8(a); t = CYBN_SUM8(b); \
        for (; i < n; i++) { gi = (double)g[i]; s += gi; t += gi * ((double)x[i] - mu); } \
        *sg += s; *sgx += t; \
    }
    #define CYBN_BWD_RELU(T) \
    static void cybn_bwd_relu_##T(const T *g, const T *x, Py_ssize_t n, double mu, T h, T l, T sc, T sh, double *sg, double *sgx) { \
        double a[8] = {0}, b[8] = {0}, s, t, gi; Py_ssize_t i = 0; int j; T z; \
        for (; i + 8 <= n; i += 8) for (j = 0; j < 8; j++) { \
            z = ((x[i + j] - h) - l) * sc + sh; gi = z > 0 ? (double)g[i + j] : 0.0; \
            a[j] += gi; b[j] += gi * ((double)x[i + j] - mu); } \
        s = CYBN_SUM8(a); t = CYBN_SUM8(b); \
        for (; i < n; i++) { z = ((x[i] - h) - l) * sc + sh; gi = z > 0 ? (double)g[i] : 0.0; \
                             s += gi; t += gi * ((double)x[i] - mu); } \
        *sg += s; *sgx += t; \
    }
    #endif
    CYBN_SHIFTED(float)
    CYBN_SHIFTED(double)
    CYBN_BWD(float)
    CYBN_BWD(double)
    CYBN_BWD_RELU(float)
    CYBN_BWD_RELU(double)

    /* The backward sums of (N, C) rows n0..n1 (S == 1): sdy[c] += sum(g), sdyx[c] += sum(g * (x
       - mean[c])), four rows at a time in a fixed tree, then the rest row by row; g = dy, or
       with sc != NULL dy masked by the fused ReLU's recomputed pre-activation (as
       CYBN_BWD_RELU). In C so the loop over c vectorises with a branch-free mask: written in
       Cython it was scalar with a branch per element that the ReLU's zeros make unpredictable
       (218 us for (128, 256), more than the rest of the layer's step). */
    /* g of row element k (0..3) at channel c: the mask is a macro so it inlines into the
       clones (an inline function of the default target stays a call there, and unvectorised). */
    #define CYBN_ROW_G(k) (sc ? (((p[c + (k) * C] - mhi[c]) - mlo[c]) * sc[c] + sh[c] > 0 \
                                 ? d[c + (k) * C] : 0) : d[c + (k) * C])
    #define CYBN_BWD_ROWS_LOOP(T, n, n1) \
        for (; n + 4 <= n1; n += 4) { \
            const T *d = dy + n * C, *p = x + n * C; \
            for (c = 0; c < C; c++) { \
                double g0 = CYBN_ROW_G(0), g1 = CYBN_ROW_G(1), g2 = CYBN_ROW_G(2), \
                       g3 = CYBN_ROW_G(3), m = mean[c]; \
                sdy[c] = sdy[c] + ((g0 + g1) + (g2 + g3)); \
                sdyx[c] = sdyx[c] + ((g0 * (p[c] - m) + g1 * (p[c + C] - m)) \
                                     + (g2 * (p[c + 2 * C] - m) + g3 * (p[c + 3 * C] - m))); \
            } \
        } \
        for (; n < n1; n++) { \
            const T *d = dy + n * C, *p = x + n * C; \
            for (c = 0; c < C; c++) { \
                double g0 = CYBN_ROW_G(0); \
                sdy[c] = sdy[c] + g0; \
                sdyx[c] = sdyx[c] + g0 * (p[c] - mean[c]); \
            } \
        }
    #define CYBN_BWD_ROWS(T) \
    CYBN_CLONES_EXACT_WIDE CYBN_NO_TRAPPING_MATH static void cybn_bwd_rows_##T( \
            const T *CYBN_RESTRICT dy, const T *CYBN_RESTRICT x, const double *CYBN_RESTRICT mean, \
            Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1, double *CYBN_RESTRICT sdy, \
            double *CYBN_RESTRICT sdyx, const T *CYBN_RESTRICT mhi, const T *CYBN_RESTRICT mlo, \
            const T *CYBN_RESTRICT sc, const T *CYBN_RESTRICT sh) { \
        Py_ssize_t n = n0, c; \
        if (sc) { CYBN_BWD_ROWS_LOOP(T, n, n1) } \
        else { CYBN_BWD_ROWS_LOOP(T, n, n1) }  /* the same loop, its mask test hoisted */ \
    }
    CYBN_BWD_ROWS(float)
    CYBN_BWD_ROWS(double)
    /* dx of one (C,) row: a * g + (b * ((x - mhi) - mlo) + d), g as in CYBN_BWD_ROWS. */
    #define CYBN_DX_ROW_LOOP for (c = 0; c < C; c++) \
        dx[c] = a[c] * CYBN_ROW_G(0) + (b[c] * ((p[c] - mhi[c]) - mlo[c]) + dd[c]);
    #define CYBN_DX_ROW(T) \
    CYBN_CLONES_EXACT_WIDE CYBN_NO_TRAPPING_MATH static void cybn_dx_row_##T( \
            const T *CYBN_RESTRICT d, const T *CYBN_RESTRICT p, T *CYBN_RESTRICT dx, \
            const T *CYBN_RESTRICT mhi, const T *CYBN_RESTRICT mlo, const T *CYBN_RESTRICT a, \
            const T *CYBN_RESTRICT b, const T *CYBN_RESTRICT dd, const T *CYBN_RESTRICT sc, \
            const T *CYBN_RESTRICT sh, Py_ssize_t C) { \
        Py_ssize_t c; \
        if (sc) { CYBN_DX_ROW_LOOP } else { CYBN_DX_ROW_LOOP } \
    }
    CYBN_DX_ROW(float)
    CYBN_DX_ROW(double)

    /* BN -> ReLU -> 2x2/stride-2 max-pool over one (H, W) plane (H, W even): the pre-activations
       as affine_normalize computes them, ReLU'd as it does, pooled by max_pool2d's rule
       (row-major scan, move on a strictly larger value or the window's first NaN); code[q]: the
       window position (0..3, row-major) of the maximum when it is > 0, else 4 (the ReLU passes
       no gradient to that window). Both this and the expansion below work on pieces of <= 256
       windows (whole window rows, or a piece of one row when a row has more) in flat arrays, so
       the arithmetic runs as one long vector loop whatever the row length (a loop per row of 4
       or 8 windows would pay its set-up on every row). Selects are branch-free on the bit
       patterns (U: the unsigned integer of T's width), since ties and the ReLU's zeros make
       them unpredictable, and the codes go through a U buffer: a uint8 in the arithmetic loop
       would ask for 32 vector lanes. */
    static inline ptrdiff_t cybn_pool2_piece(ptrdiff_t q0, ptrdiff_t L, ptrdiff_t Wo) {
        ptrdiff_t n = Wo <= 256 ? (256 / Wo) * Wo : (Wo - q0 % Wo < 256 ? Wo - q0 % Wo : 256);
        return n < L - q0 ? n : L - q0;
    }
    #define CYBN_BN_RELU_POOL_PLANE(T, U) \
    CYBN_CLONES_EXACT_WIDE static void cybn_bn_relu_pool_plane_##T( \
            const T *CYBN_RESTRICT x, ptrdiff_t H, ptrdiff_t W, T h, T l, T s, T b, \
            T *CYBN_RESTRICT y, uint8_t *CYBN_RESTRICT co) { \
        T A[256], B[256], C[256], D[256]; U kb[256]; \
        ptrdiff_t Wo = W / 2, L = (H / 2) * Wo, q0, q, n, j, r, j0; \
        for (q0 = 0; q0 < L; q0 += n) { \
            n = cybn_pool2_piece(q0, L, Wo); \
            for (q = 0; q < n; q += j) { \
                const T *CYBN_RESTRICT a0; \
                r = (q0 + q) / Wo; j0 = (q0 + q) - r * Wo; \
                a0 = x + 2 * r * W + 2 * j0; \
                CYBN_PREFETCH(a0); CYBN_PREFETCH(a0 + W); \
                for (j = 0; j < Wo - j0 && q + j < n; j++) { \
                    A[q + j] = a0[2 * j]; B[q + j] = a0[2 * j + 1]; \
                    C[q + j] = a0[W + 2 * j]; D[q + j] = a0[W + 2 * j + 1]; \
                } \
            } \
            for (q = 0; q < n; q++) { \
                T v0 = ((A[q] - h) - l) * s + b, v1 = ((B[q] - h) - l) * s + b; \
                T v2 = ((C[q] - h) - l) * s + b, v3 = ((D[q] - h) - l) * s + b, m; \
                U k = 0, t; \
                v0 = cybn_select_##T(v0 <= 0, (T)0, v0); v1 = cybn_select_##T(v1 <= 0, (T)0, v1); \
                v2 = cybn_select_##T(v2 <= 0, (T)0, v2); v3 = cybn_select_##T(v3 <= 0, (T)0, v3); \
                m = v0; \
                t = (U)(v1 > m) | ((U)(v1 != v1) & (U)(m == m)); m = cybn_select_##T(t, v1, m); k = t ? 1 : k; \
                t = (U)(v2 > m) | ((U)(v2 != v2) & (U)(m == m)); m = cybn_select_##T(t, v2, m); k = t ? 2 : k; \
                t = (U)(v3 > m) | ((U)(v3 != v3) & (U)(m == m)); m = cybn_select_##T(t, v3, m); k = t ? 3 : k; \
                y[q0 + q] = m; \
                kb[q] = m > 0 ? k : 4; \
            } \
            for (q = 0; q < n; q++) co[q0 + q] = (uint8_t)kb[q]; \
        } \
    }
    /* The gradient reaching one (2 Ho, 2 Wo) input plane of that op: dp[q] at its window's code
       position, +0 elsewhere; exactly what max_pool2d_backward and the ReLU's mask give. Each
       piece's two rows of windows are built in flat arrays, then copied to the plane's rows.
       Returns nonzero when a code is above 4 (not the forward's: the caller raises). */
    #define CYBN_POOL2_EXPAND(T, U) \
    CYBN_CLONES_EXACT_WIDE static int cybn_pool2_expand_##T(const T *CYBN_RESTRICT dp, \
            const uint8_t *CYBN_RESTRICT co, ptrdiff_t Ho, ptrdiff_t Wo, T *CYBN_RESTRICT g) { \
        T e0[512], e1[512]; U kb[256], bad = 0; ptrdiff_t q0, q, n, i, r, L = Ho * Wo; \
        for (q0 = 0; q0 < L; q0 += n) { \
            n = cybn_pool2_piece(q0, L, Wo); \
            CYBN_PREFETCH(dp + q0); CYBN_PREFETCH(co + q0); \
            for (q = 0; q < n; q++) { kb[q] = co[q0 + q]; bad |= (U)(kb[q] > 4); } \
            for (q = 0; q < n; q++) { \
                U v = cybn_bits_##T(dp[q0 + q]), k = kb[q]; \
                e0[2 * q] = cybn_from_bits_##T(v & -(U)(k == 0)); \
                e0[2 * q + 1] = cybn_from_bits_##T(v & -(U)(k == 1)); \
                e1[2 * q] = cybn_from_bits_##T(v & -(U)(k == 2)); \
                e1[2 * q + 1] = cybn_from_bits_##T(v & -(U)(k == 3)); \
            } \
            r = q0 / Wo; \
            if (Wo <= 256) { \
                for (i = 0; i < n / Wo; i++) { \
                    memcpy(g + 4 * (r + i) * Wo, e0 + 2 * i * Wo, 2 * Wo * sizeof(T)); \
                    memcpy(g + (4 * (r + i) + 2) * Wo, e1 + 2 * i * Wo, 2 * Wo * sizeof(T)); \
                } \
            } else {  /* n windows of row r, from window q0 - r * Wo */ \
                memcpy(g + 4 * r * Wo + 2 * (q0 - r * Wo), e0, 2 * n * sizeof(T)); \
                memcpy(g + (4 * r + 2) * Wo + 2 * (q0 - r * Wo), e1, 2 * n * sizeof(T)); \
            } \
        } \
        return bad != 0; \
    }
    CYBN_BN_RELU_POOL_PLANE(float, uint32_t)
    CYBN_BN_RELU_POOL_PLANE(double, uint64_t)
    CYBN_POOL2_EXPAND(float, uint32_t)
    CYBN_POOL2_EXPAND(double, uint64_t)
    """
    void cybn_shifted_float(const float* p, Py_ssize_t n, double k, double* sd, double* sq) noexcept nogil
    void cybn_shifted_double(const double* p, Py_ssize_t n, double k, double* sd, double* sq) noexcept nogil
    void cybn_bwd_float(const float* g, const float* x, Py_ssize_t n, double mu, double* sg,
                        double* sgx) noexcept nogil
    void cybn_bwd_double(const double* g, const double* x, Py_ssize_t n, double mu, double* sg,
                         double* sgx) noexcept nogil
    void cybn_bwd_relu_float(const float* g, const float* x, Py_ssize_t n, double mu, float h,
                             float l, float sc, float sh, double* sg, double* sgx) noexcept nogil
    void cybn_bwd_relu_double(const double* g, const double* x, Py_ssize_t n, double mu, double h,
                              double l, double sc, double sh, double* sg,
                              double* sgx) noexcept nogil
    void cybn_bn_relu_pool_plane_float(const float* x, Py_ssize_t H, Py_ssize_t W, float h,
                                       float l, float s, float b, float* y,
                                       uint8_t* co) noexcept nogil
    void cybn_bn_relu_pool_plane_double(const double* x, Py_ssize_t H, Py_ssize_t W, double h,
                                        double l, double s, double b, double* y,
                                        uint8_t* co) noexcept nogil
    void cybn_bwd_rows_float(const float* dy, const float* x, const double* mean, Py_ssize_t C,
                             Py_ssize_t n0, Py_ssize_t n1, double* sdy, double* sdyx,
                             const float* mhi, const float* mlo, const float* sc,
                             const float* sh) noexcept nogil
    void cybn_bwd_rows_double(const double* dy, const double* x, const double* mean,
                              Py_ssize_t C, Py_ssize_t n0, Py_ssize_t n1, double* sdy,
                              double* sdyx, const double* mhi, const double* mlo,
                              const double* sc, const double* sh) noexcept nogil
    void cybn_dx_row_float(const float* dy, const float* x, float* dx, const float* mhi,
                           const float* mlo, const float* a, const float* b, const float* d,
                           const float* sc, const float* sh, Py_ssize_t C) noexcept nogil
    void cybn_dx_row_double(const double* dy, const double* x, double* dx, const double* mhi,
                            const double* mlo, const double* a, const double* b,
                            const double* d, const double* sc, const double* sh,
                            Py_ssize_t C) noexcept nogil
    int cybn_pool2_expand_float(const float* dp, const uint8_t* co, Py_ssize_t Ho, Py_ssize_t Wo,
                                float* g) noexcept nogil
    int cybn_pool2_expand_double(const double* dp, const uint8_t* co, Py_ssize_t Ho,
                                 Py_ssize_t Wo, double* g) noexcept nogil


cdef inline void _shifted(const floating* p, Py_ssize_t n, double k, double* sd,
                          double* sq) noexcept nogil:
    if floating is float:
        cybn_shifted_float(p, n, k, sd, sq)
    else:
        cybn_shifted_double(p, n, k, sd, sq)


cdef inline void _bwd_plane(const floating* g, const floating* x, Py_ssize_t n, double mu,
                            double* sg, double* sgx) noexcept nogil:
    if floating is float:
        cybn_bwd_float(g, x, n, mu, sg, sgx)
    else:
        cybn_bwd_double(g, x, n, mu, sg, sgx)


cdef inline void _bwd_relu_plane(const floating* g, const floating* x, Py_ssize_t n, double mu,
                                 floating h, floating l, floating sc, floating sh, double* sg,
                                 double* sgx) noexcept nogil:
    if floating is float:
        cybn_bwd_relu_float(g, x, n, mu, h, l, sc, sh, sg, sgx)
    else:
        cybn_bwd_relu_double(g, x, n, mu, h, l, sc, sh, sg, sgx)


cdef inline floating _relu_if(floating v, bint relu) noexcept nogil:
    """ReLU (NaN passes, as in ``relu_forward``) when fused, else v."""
    if relu and v <= 0:
        return 0
    return v


cdef inline void _merge(double* mean_a, double* m2_a, double na,
                        double mean_b, double m2_b, double nb) noexcept nogil:
    """Chan et al.: merge (count, mean, M2) of a block b into the running a (stable)."""
    cdef double n, delta
    if na == 0:
        mean_a[0] = mean_b
        m2_a[0] = m2_b
        return
    n = na + nb
    delta = mean_b - mean_a[0]
    mean_a[0] = mean_a[0] + delta * (nb / n)
    m2_a[0] = m2_a[0] + m2_b + delta * delta * (na * nb / n)


cdef inline void _column4(const floating* r0, Py_ssize_t C, const double* k, double* sd,
                          double* sq) noexcept nogil:
    """Shifted sums of 4 consecutive rows of (N, C) input into sd, sq (vectorised over c)."""
    cdef const floating* r1 = r0 + C
    cdef const floating* r2 = r1 + C
    cdef const floating* r3 = r2 + C
    cdef Py_ssize_t c
    cdef double d0, d1, d2, d3
    for c in range(C):
        d0 = r0[c] - k[c]
        d1 = r1[c] - k[c]
        d2 = r2[c] - k[c]
        d3 = r3[c] - k[c]
        sd[c] = sd[c] + ((d0 + d1) + (d2 + d3))
        sq[c] = sq[c] + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))


cdef void _stats_chunk(const floating* x, Py_ssize_t C, Py_ssize_t S,
                       Py_ssize_t n0, Py_ssize_t n1,
                       double* pmean, double* pm2, double* bk, double* bsd,
                       double* bsq) noexcept nogil:
    """Mean and M2 per channel of rows [n0, n1) into pmean/pm2 (C each); b* are C-sized scratch.

    Blocks of at most BLOCK values per channel are summed in ONE pass as shifted sums around
    k = the block's first value: mean_b = k + sum(d)/n, M2_b = sum(d^2) - sum(d)^2/n, d = x - k.
    As k is one of the block's values, (k - mean_b)^2 <= n * var_b, so the cancellation costs at
    most a factor n <= BLOCK of double precision (~2e-12 relative): stable for any offset.
    Blocks are merged with Chan's formula.
    """
    cdef Py_ssize_t n, c, b0, b1, G
    cdef const floating* row
    cdef double nb, d
    if S == 1:
        # Column mode: channels side by side in a row; inner loops over c are contiguous.
        b0 = n0
        while b0 < n1:
            b1 = b0 + BLOCK
            if b1 > n1:
                b1 = n1
            nb = <double>(b1 - b0)
            row = x + b0 * C
            for c in range(C):
                bk[c] = row[c]
                bsd[c] = 0
                bsq[c] = 0
            n = b0
            while n + 4 <= b1:
                # 4 rows at a time: a quarter of the accumulator loads/stores
                _column4(x + n * C, C, bk, bsd, bsq)
                n = n + 4
            while n < b1:
                row = x + n * C
                for c in range(C):
                    d = row[c] - bk[c]
                    bsd[c] = bsd[c] + d
                    bsq[c] = bsq[c] + d * d
                n = n + 1
            for c in range(C):
                _merge(&pmean[c], &pm2[c], <double>(b0 - n0), bk[c] + bsd[c] / nb,
                       bsq[c] - bsd[c] * bsd[c] / nb, nb)
            b0 = b1
        return
    if S > BLOCK:
        # Huge planes: each BLOCK-sized piece of a plane is a block.
        for n in range(n0, n1):
            for c in range(C):
                _plane_pieces(x + (n * C + c) * S, S, <double>((n - n0) * S), &pmean[c], &pm2[c])
        return
    # Plane mode: a block is G = BLOCK // S consecutive planes of a channel, shifted by the
    # block's first value; rows are visited in memory order (row by row, all channels).
    G = BLOCK // S
    b0 = n0
    while b0 < n1:
        b1 = b0 + G
        if b1 > n1:
            b1 = n1
        nb = <double>((b1 - b0) * S)
        row = x + b0 * C * S
        for c in range(C):
            bk[c] = row[c * S]
            bsd[c] = 0
            bsq[c] = 0
        for n in range(b0, b1):
            row = x + n * C * S
            for c in range(C):
                _shifted(row + c * S, S, bk[c], &bsd[c], &bsq[c])
        for c in range(C):
            _merge(&pmean[c], &pm2[c], <double>((b0 - n0) * S), bk[c] + bsd[c] / nb,
                   bsq[c] - bsd[c] * bsd[c] / nb, nb)
        b0 = b1


cdef void _plane_pieces(const floating* p, Py_ssize_t S, double na, double* mean,
                        double* m2) noexcept nogil:
    """Merge one plane larger than BLOCK, piece by piece, into (na values, *mean, *m2)."""
    cdef Py_ssize_t e0 = 0, L
    cdef double sd, sq, k
    while e0 < S:
        L = S - e0
        if L > BLOCK:
            L = BLOCK
        k = p[e0]
        sd = 0
        sq = 0
        _shifted(p + e0, L, k, &sd, &sq)
        _merge(mean, m2, na + e0, k + sd / L, sq - sd * sd / L, <double>L)
        e0 = e0 + L


cdef inline void _merge_channel(const double[:, :, ::1] part, Py_ssize_t c, Py_ssize_t N,
                                Py_ssize_t S, double* mean, double* var) noexcept nogil:
    """Channel c's mean and biased variance from the chunk partials of ``_stats_chunk``, merged
    in chunk order."""
    cdef Py_ssize_t ntask = part.shape[0], t, n0, n1
    cdef double na = 0, nb
    mean[0] = 0
    var[0] = 0
    for t in range(ntask):
        n0 = _chunk_start(t, N, ntask)
        n1 = _chunk_start(t + 1, N, ntask)
        nb = <double>((n1 - n0) * S)
        if nb == 0:
            continue
        _merge(mean, var, na, part[t, 0, c], part[t, 1, c], nb)
        na = na + nb
    var[0] = var[0] / na


def batch_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var, int num_threads):
    """Per-channel mean and biased variance of x (N, C, S) into mean, var (C,) float64."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t ntask = _ntasks(N, S), t, c
    cdef double[:, :, ::1] part = np.zeros((ntask, 5, C), dtype=np.float64)
    cdef const floating* px = &x[0, 0, 0]
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule='static'):
            _stats_chunk(px, C, S, _chunk_start(t, N, ntask), _chunk_start(t + 1, N, ntask),
                         &part[t, 0, 0], &part[t, 1, 0], &part[t, 2, 0], &part[t, 3, 0],
                         &part[t, 4, 0])
        for c in range(C):
            _merge_channel(part, c, N, S, &mean[c], &var[c])


cdef inline double _affine_channel(floating[:, ::1] coef, Py_ssize_t c, double mean, double var,
                                   double eps, floating weight, floating bias) noexcept nogil:
    """coef[0..3, c] = (hi, lo, scale, shift) of y = ((x - hi) - lo) * scale + shift, rounded as
    ``cybn.functional.batchnorm._affine`` rounds them (mean split into hi + lo in x's type,
    scale = invstd * weight); returns invstd = 1/sqrt(var + eps)."""
    cdef double invstd = 1.0 / sqrt(var + eps)
    coef[0, c] = <floating>mean
    coef[1, c] = <floating>(mean - <double>coef[0, c])
    coef[2, c] = <floating>(invstd * <double>weight)
    coef[3, c] = bias
    return invstd


def batch_norm_forward(const floating[:, :, ::1] x, const floating[::1] weight,
                       const floating[::1] bias, double eps, double[::1] mean, double[::1] var,
                       floating[:, :, ::1] y, uint8_t[:, :, ::1] code, bint relu, bint pool,
                       Py_ssize_t H, Py_ssize_t W, floating[::1] running_mean,
                       floating[::1] running_var, bint track, double momentum, double unbias,
                       int num_threads):
    """The training forward in one parallel region: ``batch_stats``, then per channel
    invstd = 1/sqrt(var + eps), mean split into hi + lo in x's type, scale = invstd * weight
    and shift = bias (as ``cybn.functional.batchnorm._affine`` rounds them), then
    ``affine_normalize`` (``relu``) or, with ``pool``, ``affine_relu_pool2`` into y and code.
    The same operations as those kernels, so the same bits; one team wake-up instead of two,
    and no return to Python between them. With ``track``, the running statistics are updated
    per channel as ``update_running_stats`` computes it (r = (1 - momentum) * r + momentum *
    batch in double, var * unbias for the variance, rounded once to their type)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], L = (H // 2) * (W // 2)
    # t, c, lo, hi initialised: Cython makes them firstprivate in the parallel block
    cdef Py_ssize_t ntask = _ntasks(N, S), t = 0, c = 0, lo = 0, hi = 0
    cdef cybn_team team
    cdef double[:, :, ::1] part = np.zeros((ntask, 5, C), dtype=np.float64)
    coef_arr = np.empty((4, C), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] coef = coef_arr
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* py = &y[0, 0, 0]
    cdef uint8_t* pc = &code[0, 0, 0] if pool else NULL
    if N * C * S == 0:
        return
    # The phases share work through a cybn_team (see _common.h): the thread woken for the
    # region joins ~45 us after the caller, so guided pieces let the caller take more, and no
    # thread sleeps at a barrier between them. Every chunk and channel writes only its own
    # results: the same bits.
    cybn_team_init(&team)
    with nogil, parallel(num_threads=num_threads):
        lo = hi = 0  # assigned in the block, so Cython makes them thread-private
        while cybn_claim(&team, 0, ntask, &lo, &hi):
            for t in range(lo, hi):
                _stats_chunk(px, C, S, _chunk_start(t, N, ntask),
                             _chunk_start(t + 1, N, ntask), &part[t, 0, 0], &part[t, 1, 0],
                             &part[t, 2, 0], &part[t, 3, 0], &part[t, 4, 0])
        cybn_team_barrier(&team)
        while cybn_claim(&team, 1, C, &lo, &hi):
            for c in range(lo, hi):
                _merge_channel(part, c, N, S, &mean[c], &var[c])
                _affine_channel(coef, c, mean[c], var[c], eps, weight[c], bias[c])
                if track:
                    running_mean[c] = <floating>((1.0 - momentum) * <double>running_mean[c]
                                                 + momentum * mean[c])
                    running_var[c] = <floating>((1.0 - momentum) * <double>running_var[c]
                                                + momentum * (var[c] * unbias))
        cybn_team_barrier(&team)
        while cybn_claim(&team, 2, N if S == 1 else N * C, &lo, &hi):
            for t in range(lo, hi):
                c = t % C
                if S == 1:
                    _normalize_row(px + t * C, py + t * C, &coef[0, 0], &coef[1, 0],
                                   &coef[2, 0], &coef[3, 0], C, relu)
                elif pool:
                    _bn_relu_pool_plane(px + t * S, H, W, coef[0, c], coef[1, c], coef[2, c],
                                        coef[3, c], py + t * L, pc + t * L)
                else:
                    _normalize_plane(px + t * S, py + t * S, S, coef[0, c], coef[1, c],
                                     coef[2, c], coef[3, c], relu)
        cybn_team_end(&team)


def affine_normalize(const floating[:, :, ::1] x, const floating[::1] mhi,
                     const floating[::1] mlo, const floating[::1] scale,
                     const floating[::1] shift, floating[:, :, ::1] y, bint relu, int num_threads):
    """y = ((x - mhi[c]) - mlo[c]) * scale[c] + shift[c], then ReLU when ``relu`` (fused BN +
    ReLU); one read of x, one write of y."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t t, c
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* py = &y[0, 0, 0]
    if N * C * S == 0:
        return
    with nogil:
        if S == 1:
            for t in prange(N, num_threads=num_threads, schedule='static'):
                _normalize_row(px + t * C, py + t * C, &mhi[0], &mlo[0], &scale[0], &shift[0], C,
                               relu)
        else:
            for t in prange(N * C, num_threads=num_threads, schedule='static'):
                c = t % C
                _normalize_plane(px + t * S, py + t * S, S, mhi[c], mlo[c], scale[c], shift[c],
                                 relu)


cdef inline void _normalize_plane(const floating* x, floating* y, Py_ssize_t S, floating h,
                                  floating l, floating s, floating b, bint relu) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(S):
        y[i] = _relu_if(((x[i] - h) - l) * s + b, relu)


cdef inline void _normalize_row(const floating* x, floating* y, const floating* mhi,
                                const floating* mlo, const floating* scale,
                                const floating* shift, Py_ssize_t C, bint relu) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        y[c] = _relu_if(((x[c] - mhi[c]) - mlo[c]) * scale[c] + shift[c], relu)


cdef void _bwd_chunk(const floating* dy, const floating* x, const double* mean,
                     Py_ssize_t C, Py_ssize_t S, Py_ssize_t n0, Py_ssize_t n1,
                     double* sdy, double* sdyx, const floating* mhi, const floating* mlo,
                     const floating* sc, const floating* sh) noexcept nogil:
    """sdy[c] += sum(g), sdyx[c] += sum(g * (x - mean[c])) over rows [n0, n1), in double, with
    g = dy, or (sc != NULL) dy masked by the fused ReLU (rows: ``cybn_bwd_rows_T``)."""
    cdef Py_ssize_t n, c
    if S == 1:
        if floating is float:
            cybn_bwd_rows_float(dy, x, mean, C, n0, n1, sdy, sdyx, mhi, mlo, sc, sh)
        else:
            cybn_bwd_rows_double(dy, x, mean, C, n0, n1, sdy, sdyx, mhi, mlo, sc, sh)
        return
    for n in range(n0, n1):
        for c in range(C):
            if sc == NULL:
                _bwd_plane(dy + (n * C + c) * S, x + (n * C + c) * S, S, mean[c], &sdy[c],
                           &sdyx[c])
            else:
                _bwd_relu_plane(dy + (n * C + c) * S, x + (n * C + c) * S, S, mean[c], mhi[c],
                                mlo[c], sc[c], sh[c], &sdy[c], &sdyx[c])


cdef inline void _sum_channel(const double[:, :, ::1] part, Py_ssize_t c, double* sum_dy,
                              double* sum_dyxc) noexcept nogil:
    """*sum_dy, *sum_dyxc = the chunks' partials part[t, 0 / 1, c], added in chunk order."""
    cdef Py_ssize_t t
    sum_dy[0] = 0
    sum_dyxc[0] = 0
    for t in range(part.shape[0]):
        sum_dy[0] = sum_dy[0] + part[t, 0, c]
        sum_dyxc[0] = sum_dyxc[0] + part[t, 1, c]


cdef void _sum_partials(const double[:, :, ::1] part, double[::1] sum_dy,
                       double[::1] sum_dyxc) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(part.shape[2]):
        _sum_channel(part, c, &sum_dy[c], &sum_dyxc[c])


cdef inline void _dx_coefficients(floating[:, ::1] coef, Py_ssize_t c, double sum_dy,
                                  double sum_dyxc, double gamma, double invstd,
                                  double m) noexcept nogil:
    """coef[4..6, c] = (a, b, d) of dx = a*g + b*(x - mean) + d: a = gamma*invstd,
    b = -a * invstd * invstd * sum_dyxc / m, d = -a * sum_dy / m, evaluated left to right in
    double (as NumPy evaluates the same expressions), then rounded once to x's type."""
    cdef double a = gamma * invstd
    coef[4, c] = <floating>a
    coef[5, c] = <floating>((((-a) * invstd) * invstd) * sum_dyxc / m)
    coef[6, c] = <floating>((-a) * sum_dy / m)


def backward_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                  const double[::1] mean, double[::1] sum_dy, double[::1] sum_dyxc,
                  const floating[::1] mhi, const floating[::1] mlo, const floating[::1] scale,
                  const floating[::1] shift, bint relu, int num_threads):
    """sum_dy[c] = sum(g), sum_dyxc[c] = sum(g * (x - mean[c])): one fused read of dy and x.

    g = dy; with ``relu`` (fused BN + ReLU), dy where the forward's pre-activation
    ((x - mhi) - mlo) * scale + shift is > 0, else 0 (mhi/mlo/scale/shift as given to the
    forward; unused otherwise)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t ntask = _ntasks(N, S), t
    cdef double[:, :, ::1] part = np.zeros((ntask, 2, C), dtype=np.float64)
    cdef const floating* pdy = &dy[0, 0, 0]
    cdef const floating* px = &x[0, 0, 0]
    cdef const double* pm = &mean[0]
    cdef const floating* psc = &scale[0] if relu else NULL
    cdef const floating* psh = &shift[0] if relu else NULL
    with nogil:
        for t in prange(ntask, num_threads=num_threads, schedule='static'):
            _bwd_chunk(pdy, px, pm, C, S, _chunk_start(t, N, ntask),
                       _chunk_start(t + 1, N, ntask), &part[t, 0, 0], &part[t, 1, 0],
                       &mhi[0], &mlo[0], psc, psh)
        _sum_partials(part, sum_dy, sum_dyxc)


def backward_dx(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                const floating[::1] mhi, const floating[::1] mlo, const floating[::1] a,
                const floating[::1] b, const floating[::1] d, floating[:, :, ::1] dx,
                const floating[::1] scale, const floating[::1] shift, bint relu, int num_threads):
    """dx = a[c]*g + b[c]*((x - mhi[c]) - mlo[c]) + d[c]; one read of dy, x and one write of dx.

    g = dy, or with ``relu`` dy masked as in ``backward_sums``."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t t, i, c
    cdef const floating* pdy = &dy[0, 0, 0]
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0]
    cdef const floating* gp
    cdef const floating* xp
    cdef floating* op
    cdef floating h, l, ca, cb, cd
    cdef const floating* psc
    cdef const floating* psh
    if N * C * S == 0:
        return
    psc = &scale[0] if relu else NULL
    psh = &shift[0] if relu else NULL
    with nogil:
        if S == 1:
            for t in prange(N, num_threads=num_threads, schedule='static'):
                _dx_row(pdy + t * C, px + t * C, pdx + t * C, &mhi[0], &mlo[0], &a[0], &b[0],
                        &d[0], psc, psh, C)
        else:
            for t in prange(N * C, num_threads=num_threads, schedule='static'):
                c = t % C
                h = mhi[c]
                l = mlo[c]
                ca = a[c]
                cb = b[c]
                cd = d[c]
                gp = pdy + t * S
                xp = px + t * S
                op = pdx + t * S
                if relu:
                    _dx_relu_plane(gp, xp, op, S, h, l, ca, cb, cd, psc[c], psh[c])
                else:
                    _dx_plane(gp, xp, op, S, h, l, ca, cb, cd)


cdef object _backward_work(Py_ssize_t ntask, const double[::1] mean, const double[::1] var,
                           double eps, const floating[::1] weight, const floating[::1] bias):
    """The work arrays of a training backward: (part, the zeroed (ntask, 2, C) chunk partials of
    the sums; coef (7, C) in x's type with rows 0-3 the forward's (hi, lo, scale, shift);
    invstd (C,)). The C constants are computed serially before the parallel region (no barrier
    needed)."""
    cdef Py_ssize_t C = mean.shape[0], c
    coef_arr = np.empty((7, C), dtype=np.float32 if floating is float else np.float64)
    invstd_arr = np.empty(C, dtype=np.float64)
    cdef floating[:, ::1] coef = coef_arr
    cdef double[::1] invstd = invstd_arr
    with nogil:
        for c in range(C):
            invstd[c] = _affine_channel(coef, c, mean[c], var[c], eps, weight[c], bias[c])
    return np.zeros((ntask, 2, C), dtype=np.float64), coef_arr, invstd_arr


cdef inline void _grads_channel(const double[:, :, ::1] part, Py_ssize_t c, floating[:, ::1] coef,
                                const double[::1] invstd, floating gamma, double m,
                                floating[::1] dweight, floating[::1] dbias) noexcept nogil:
    """Channel c after the sums: dbias = sum(g), dweight = sum(g*(x - mean)) * invstd (each
    rounded once to x's type) and the dx coefficients into coef[4..6, c]."""
    cdef double sdy, sdyx
    _sum_channel(part, c, &sdy, &sdyx)
    dweight[c] = <floating>(sdyx * invstd[c])
    dbias[c] = <floating>sdy
    _dx_coefficients(coef, c, sdy, sdyx, gamma, invstd[c], m)


def backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] var, double eps, const floating[::1] weight,
             const floating[::1] bias, bint relu, floating[:, :, ::1] dx,
             floating[::1] dweight, floating[::1] dbias, int num_threads):
    """The training backward of BN (with ``relu``, of relu(BN(x)), the mask recomputed from the
    forward's constants): dx, dweight, dbias in one parallel region, ``backward_sums`` then per
    channel the gradients and dx coefficients (``_grads_channel``) then ``backward_dx``; the
    same operations as those kernels and ``cybn.functional.batchnorm``'s NumPy, so the same
    bits, without returning to Python between them."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t ntask = _ntasks(N, S), t = 0, c = 0, lo = 0, hi = 0  # as in the forward
    cdef cybn_team team
    cdef double[:, :, ::1] part
    cdef floating[:, ::1] coef
    cdef double[::1] invstd
    part, coef, invstd = _backward_work(ntask, mean, var, eps, weight, bias)
    cdef const floating* pdy = &dy[0, 0, 0]
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0]
    cdef const floating* psc = &coef[2, 0] if relu else NULL
    cdef const floating* psh = &coef[3, 0] if relu else NULL
    cdef double m = <double>(N * S)
    if N * C * S == 0:
        return
    cybn_team_init(&team)
    with nogil, parallel(num_threads=num_threads):  # a cybn_team: see batch_norm_forward
        lo = hi = 0
        while cybn_claim(&team, 0, ntask, &lo, &hi):
            for t in range(lo, hi):
                _bwd_chunk(pdy, px, &mean[0], C, S, _chunk_start(t, N, ntask),
                           _chunk_start(t + 1, N, ntask), &part[t, 0, 0], &part[t, 1, 0],
                           &coef[0, 0], &coef[1, 0], psc, psh)
        cybn_team_barrier(&team)
        while cybn_claim(&team, 1, C, &lo, &hi):
            for c in range(lo, hi):
                _grads_channel(part, c, coef, invstd, weight[c], m, dweight, dbias)
        cybn_team_barrier(&team)
        while cybn_claim(&team, 2, N if S == 1 else N * C, &lo, &hi):
            for t in range(lo, hi):
                c = t % C
                if S == 1:
                    _dx_row(pdy + t * C, px + t * C, pdx + t * C, &coef[0, 0], &coef[1, 0],
                            &coef[4, 0], &coef[5, 0], &coef[6, 0], psc, psh, C)
                elif relu:
                    _dx_relu_plane(pdy + t * S, px + t * S, pdx + t * S, S, coef[0, c],
                                   coef[1, c], coef[4, c], coef[5, c], coef[6, c], psc[c],
                                   psh[c])
                else:
                    _dx_plane(pdy + t * S, px + t * S, pdx + t * S, S, coef[0, c], coef[1, c],
                              coef[4, c], coef[5, c], coef[6, c])
        cybn_team_end(&team)


cdef inline void _dx_relu_plane(const floating* gp, const floating* xp, floating* op,
                                Py_ssize_t S, floating h, floating l, floating ca, floating cb,
                                floating cd, floating s, floating sh) noexcept nogil:
    """One plane of dx for the fused BN + ReLU: g = dy masked by the recomputed pre-activation."""
    cdef Py_ssize_t i
    cdef floating g, xc
    for i in range(S):
        # both loads unconditional: a load in one arm only keeps gcc from turning the select
        # into a vector blend (a mispredicted branch: 9x)
        g = gp[i]
        xc = (xp[i] - h) - l
        g = g if xc * s + sh > 0 else 0
        op[i] = ca * g + (cb * xc + cd)


cdef inline void _dx_plane(const floating* g, const floating* x, floating* dx, Py_ssize_t S,
                           floating h, floating l, floating ca, floating cb,
                           floating cd) noexcept nogil:
    """One (n, c) plane of dx = ca*g + (cb*((x - h) - l) + cd)."""
    cdef Py_ssize_t i
    for i in range(S):
        dx[i] = ca * g[i] + (cb * ((x[i] - h) - l) + cd)


cdef inline void _dx_row(const floating* dy, const floating* x, floating* dx,
                         const floating* mhi, const floating* mlo, const floating* a,
                         const floating* b, const floating* d, const floating* sc,
                         const floating* sh, Py_ssize_t C) noexcept nogil:
    if floating is float:
        cybn_dx_row_float(dy, x, dx, mhi, mlo, a, b, d, sc, sh, C)
    else:
        cybn_dx_row_double(dy, x, dx, mhi, mlo, a, b, d, sc, sh, C)



# ---- BN -> ReLU -> 2x2/stride-2 max-pool, fused ------------------------------------------------
# The forward writes the pooled output and one uint8 code per window (where its maximum is, or 4
# when the ReLU passes no gradient) instead of BN's full-size output and the pool's int64 indices;
# the backward expands (dp, code) into one plane's gradient in a per-thread scratch plane (L1/L2
# resident) and runs the plane code of the BN backward on it, plane by plane in the same order
# as the unfused ops: the same bits, with a quarter of the full-size reads and writes.

cdef inline void _bn_relu_pool_plane(const floating* x, Py_ssize_t H, Py_ssize_t W, floating h,
                                     floating l, floating s, floating b, floating* y,
                                     uint8_t* co) noexcept nogil:
    if floating is float:
        cybn_bn_relu_pool_plane_float(x, H, W, h, l, s, b, y, co)
    else:
        cybn_bn_relu_pool_plane_double(x, H, W, h, l, s, b, y, co)


cdef inline int _pool2_expand(const floating* dp, const uint8_t* co, Py_ssize_t Ho,
                              Py_ssize_t Wo, floating* g) noexcept nogil:
    """Expand one plane's gradient into g; nonzero when one of its codes is above 4."""
    if floating is float:
        return cybn_pool2_expand_float(dp, co, Ho, Wo, g)
    else:
        return cybn_pool2_expand_double(dp, co, Ho, Wo, g)


def affine_relu_pool2(const floating[:, :, ::1] x, const floating[::1] mhi,
                      const floating[::1] mlo, const floating[::1] scale,
                      const floating[::1] shift, floating[:, :, ::1] y, uint8_t[:, :, ::1] code,
                      Py_ssize_t H, Py_ssize_t W, int num_threads):
    """y = max_pool2d(relu(((x - mhi[c]) - mlo[c]) * scale[c] + shift[c]), 2) for x (N, C, H*W),
    H and W even, into y and code (N, C, H/2 * W/2); one read of x. Parallel over the planes."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = (H // 2) * (W // 2)
    cdef Py_ssize_t p, c
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* py = &y[0, 0, 0]
    cdef uint8_t* pc = &code[0, 0, 0]
    if N * C * L == 0:
        return
    with nogil:
        for p in prange(N * C, num_threads=num_threads, schedule='static'):
            c = p % C
            _bn_relu_pool_plane(px + p * H * W, H, W, mhi[c], mlo[c], scale[c], shift[c],
                                py + p * L, pc + p * L)


def pool2_backward(const floating[:, :, ::1] dp, const uint8_t[:, :, ::1] code,
                   const floating[:, :, ::1] x, Py_ssize_t W, const double[::1] mean,
                   const double[::1] var, double eps, const floating[::1] weight,
                   const floating[::1] bias, floating[:, :, ::1] dx, floating[::1] dweight,
                   floating[::1] dbias, floating[:, ::1] scratch, int num_threads):
    """``backward`` with relu for ``affine_relu_pool2``, given the gradient dp (N, C, H/2 * W/2)
    of its output and its code, in one parallel region: each plane's gradient is expanded into
    this thread's row of scratch (num_threads, >= H*W) for the sums (the same chunks, planes
    and order), then again for dx = a[c]*g + b[c]*((x - hi[c]) - lo[c]) + d[c]. Returns
    True when a code is above 4 (then the outputs are meaningless: the caller raises)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], L = dp.shape[2]
    cdef Py_ssize_t Wo = W // 2, Ho = L // Wo
    cdef Py_ssize_t ntask = _ntasks(N, S), t = 0, c = 0, n = 0, q = 0, lo = 0, hi = 0
    cdef cybn_team team
    cdef double[:, :, ::1] part
    cdef floating[:, ::1] coef
    cdef double[::1] invstd
    part, coef, invstd = _backward_work(ntask, mean, var, eps, weight, bias)
    cdef const floating* pdp = &dp[0, 0, 0]
    cdef const uint8_t* pc = &code[0, 0, 0]
    cdef const floating* px = &x[0, 0, 0]
    cdef floating* pdx = &dx[0, 0, 0]
    cdef floating* g = NULL
    cdef double m = <double>(N * S)
    if N * C * S == 0:
        return False
    cybn_team_init(&team)
    with nogil, parallel(num_threads=num_threads):  # a cybn_team: see batch_norm_forward
        lo = hi = 0
        g = &scratch[threadid(), 0]
        while cybn_claim(&team, 0, ntask, &lo, &hi):
            for t in range(lo, hi):
                for n in range(_chunk_start(t, N, ntask), _chunk_start(t + 1, N, ntask)):
                    for c in range(C):
                        q = n * C + c
                        if _pool2_expand(pdp + q * L, pc + q * L, Ho, Wo, g):
                            cybn_team_flag(&team)
                        _bwd_plane(g, px + q * S, S, mean[c], &part[t, 0, c], &part[t, 1, c])
        cybn_team_barrier(&team)
        while cybn_claim(&team, 1, C, &lo, &hi):
            for c in range(lo, hi):
                _grads_channel(part, c, coef, invstd, weight[c], m, dweight, dbias)
        cybn_team_barrier(&team)
        while cybn_claim(&team, 2, N * C, &lo, &hi):
            for t in range(lo, hi):
                _pool2_expand(pdp + t * L, pc + t * L, Ho, Wo, g)
                c = t % C
                _dx_plane(g, px + t * S, pdx + t * S, S, coef[0, c], coef[1, c], coef[4, c],
                          coef[5, c], coef[6, c])
        cybn_team_end(&team)
    return team.flag != 0
