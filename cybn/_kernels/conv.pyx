"""2-D convolution kernels: im2col / col2im and Winograd F(2x2,3x3) / F(4x4,3x3), fused per
thread with single-threaded BLAS GEMMs (scipy.linalg.cython_blas sgemm/dgemm, without the GIL).

im2col path (any kernel, stride, padding). Work units (images, or fixed blocks of images for the
backward) are handed out dynamically to the OpenMP threads; a thread unrolls one image into its
private column buffer (K = C*kh*kw rows, P = Ho*Wo columns; ~1 MB, stays in L2/L3) and runs:

    forward   y[n]    (F, P) = W (F, K) @ cols (K, P)           (bias pre-filled, beta = 1)
    backward  dW_blk^T (K, F) += cols (K, P) @ dy[n]^T (P, F)  (per-block partial, beta = 1)
              dcols   (K, P) = W^T (K, F) @ dy[n] (F, P) ;  col2im(dcols) -> dx[n]

Images larger than a byte bound are cut into chunks of whole output rows. Fusing the unrolling
with the products avoids writing and re-reading a whole-batch im2col matrix (150 MB for
128 x 32ch @ 32x32 float32); per-thread GEMMs avoid the BLAS pool's fork/join per product.

Winograd path (3x3, stride 1; forward, and dx as the forward conv of dy with the flipped
kernel): see ``conv2d_winograd`` below: F(2x2): 2.25x fewer GEMM flops, 16 GEMMs
(F, C) @ (C, tiles); F(4x4): 4x fewer, 36 GEMMs. dW by F(4x4) as well
(``conv2d_winograd_backward``: 36 GEMMs (C, tiles) @ (tiles, F) per group of images). The
transforms' hot loops are C with AVX-512 / AVX2 clones chosen at load time
(``target_clones``: one portable baseline build).

The caller must cap the BLAS library at ONE thread while these run (OpenMP provides the
parallelism). Reductions (dW, db) are summed per fixed block of images and the blocks combined
in order, so results are deterministic and the same for any thread count. Kernels trust their
inputs (validation is in cybn.functional.conv).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memset, memcpy

from cybn._kernels._blas cimport gemm_rm
from cybn._kernels._common cimport (floating, CYBN_WTIME, CYBN_PREFETCH_AHEAD, cybn_team,
                                    cybn_team_init, cybn_claim, cybn_claim1, cybn_team_barrier,
                                    cybn_team_end)


cdef inline void _valid_cols(int W, int kw_j, int sw, int pw, int Wo, int* ow0, int* ow1) noexcept nogil:
    """Output columns ow in [ow0, ow1) whose input column ow*sw - pw + j lies inside [0, W).

    In Py_ssize_t: pw + sw alone can exceed a C int (stride and padding each fit one).
    """
    cdef Py_ssize_t lo = 0, hi
    if pw > kw_j:
        lo = (<Py_ssize_t>pw - kw_j + sw - 1) // sw
    if <Py_ssize_t>W - 1 + pw - kw_j < 0:
        hi = 0
    else:
        hi = (<Py_ssize_t>W - 1 + pw - kw_j) // sw + 1
    if hi > Wo:
        hi = Wo
    if lo > hi:
        lo = hi
    ow0[0] = <int>lo
    ow1[0] = <int>hi


cdef void _im2col(const floating* x, floating* cols, int C, int H, int W, int kh, int kw,
                  int sh, int sw, int ph, int pw, int Wo, int oh0, int oh1) noexcept nogil:
    """Output rows [oh0, oh1) of the unrolled image, row length L = (oh1 - oh0) * Wo:
    cols[(c*kh + i)*kw + j, (oh - oh0)*Wo + ow] = x[c, oh*sh - ph + i, ow*sw - pw + j] (0 outside).
    """
    cdef int c, i, j, oh, ow, ih, ow0, ow1
    cdef Py_ssize_t base
    cdef floating* dst = cols
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                _valid_cols(W, j, sw, pw, Wo, &ow0, &ow1)
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= H or ow0 >= ow1:
                        memset(dst, 0, Wo * sizeof(floating))
                    else:
                        base = (<Py_ssize_t>c * H + ih) * W + j - pw
                        for ow in range(ow0):
                            dst[ow] = 0
                        if sw == 1:
                            memcpy(dst + ow0, x + base + ow0, (ow1 - ow0) * sizeof(floating))
                        else:
                            for ow in range(ow0, ow1):
                                dst[ow] = x[base + ow * sw]
                        for ow in range(ow1, Wo):
                            dst[ow] = 0
                    dst += Wo


cdef void _col2im(const floating* cols, floating* dx, int C, int H, int W, int kh, int kw,
                  int sh, int sw, int ph, int pw, int Wo, int oh0, int oh1) noexcept nogil:
    """The adjoint of _im2col for output rows [oh0, oh1): scatter-ADD the rows into dx[c]."""
    cdef int c, i, j, oh, ow, ih, ow0, ow1
    cdef Py_ssize_t base
    cdef const floating* src = cols
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                _valid_cols(W, j, sw, pw, Wo, &ow0, &ow1)
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + i
                    if ih >= 0 and ih < H:
                        base = (<Py_ssize_t>c * H + ih) * W + j - pw
                        if sw == 1:
                            for ow in range(ow0, ow1):
                                dx[base + ow] += src[ow]
                        else:
                            for ow in range(ow0, ow1):
                                dx[base + ow * sw] += src[ow]
                    src += Wo


cdef inline int _block_start(int N, int blk, int nblocks) noexcept nogil:
    """First image of fixed block blk of nblocks (the split depends on N only); returned, not
    written through a pointer, so that prange keeps the caller's variable thread-private."""
    return <int>((<long long>N * blk) // nblocks)


cdef inline double _sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """Sum in double with 8 independent accumulators (fixed order, so deterministic): one
    serial accumulator would be latency-bound, 4 cycles per element."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i, m = n - n % 8
    for i in range(0, m, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    for i in range(m, n):
        s0 += a[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                   const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                   floating[:, ::1] cols, double[::1] gemm_seconds, int sh, int sw, int ph, int pw,
                   int rows, int num_threads):
    """y = conv2d(x, weight) (+ bias), ``rows`` output rows per GEMM.

    cols: (num_threads, K*rows*Wo) scratch, one row per thread. gemm_seconds[t] receives the
    wall time thread t spent inside BLAS (for the benchmarks).
    """
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef int K = C * kh * kw, P = Ho * Wo
    cdef int t, n, f, p, ci, oh0, oh1, L
    cdef floating* yp
    cdef floating* ct
    cdef floating beta = 1 if has_bias else 0
    cdef double t0
    if N == 0:
        return
    # images handed out dynamically: on a shared machine a thread that loses its core does not
    # hold the others up (no reductions here, so the result does not depend on the schedule)
    for n in prange(N, num_threads=num_threads, schedule="dynamic", chunksize=1, nogil=True):
        t = threadid()
        ct = &cols[t, 0]
        for ci in range((Ho + rows - 1) // rows):
            oh0 = ci * rows
            oh1 = oh0 + rows if oh0 + rows < Ho else Ho
            L = (oh1 - oh0) * Wo
            _im2col(&x[n, 0, 0, 0], ct, C, H, W, kh, kw, sh, sw, ph, pw, Wo, oh0, oh1)
            yp = &y[n, 0, 0, 0] + oh0 * Wo
            if has_bias:
                for f in range(F):
                    for p in range(L):
                        yp[<Py_ssize_t>f * P + p] = bias[f]
            t0 = CYBN_WTIME()
            gemm_rm(c'N', c'N', F, L, K, <floating*>&weight[0, 0, 0, 0], K, ct, L, beta, yp, P)
            gemm_seconds[t] += CYBN_WTIME() - t0


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] weight, floating[:, :, :, ::1] dx, bint compute_dx,
                    floating[:, ::1] dw_part, double[::1] dw_acc, double[:, ::1] db_part,
                    floating[:, ::1] cols,
                    floating[:, ::1] dcols, floating[:, :, :, ::1] dweight, floating[::1] dbias,
                    double[::1] gemm_seconds, int sh, int sw, int ph, int pw, int rows,
                    int num_threads):
    """dx (if compute_dx), dweight, dbias of conv2d, ``rows`` output rows per GEMM.

    dw_part (nblocks, K*F: dW^T) / db_part (nblocks, F): per-block partial sums over fixed blocks of
    images, combined here in block order (dw_acc: F*K doubles of scratch): deterministic, and
    independent of the thread count.
    cols / dcols: (num_threads, K*rows*Wo) scratch. gemm_seconds (num_threads,) zeroed by the
    caller, accumulates each thread's seconds inside BLAS.
    """
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3]
    cdef int Ho = dy.shape[2], Wo = dy.shape[3]
    cdef int K = C * kh * kw, P = Ho * Wo
    cdef int t, n, f, n0, n1, q, ci, oh0, oh1, L, blk
    cdef int nblocks = dw_part.shape[0]
    cdef floating* dyp
    cdef floating* ct
    cdef floating* dct
    cdef floating* dwt
    cdef floating beta
    cdef double s, t0
    # Fixed blocks of images (nblocks = dw_part.shape[0] <= N), handed out dynamically; each
    # block owns its dW/db partial, so the sums do not depend on which thread ran which block.
    for blk in prange(nblocks, num_threads=num_threads, schedule="dynamic", chunksize=1,
                      nogil=True):
        t = threadid()
        n0 = _block_start(N, blk, nblocks)
        n1 = _block_start(N, blk + 1, nblocks)
        ct = &cols[t, 0]
        dct = &dcols[t, 0]
        dwt = &dw_part[blk, 0]
        for f in range(F):
            db_part[blk, f] = 0
        for n in range(n0, n1):
            for f in range(F):
                db_part[blk, f] += _sum(&dy[n, f, 0, 0], P)
            if compute_dx:
                memset(&dx[n, 0, 0, 0], 0, <Py_ssize_t>C * H * W * sizeof(floating))
            for ci in range((Ho + rows - 1) // rows):
                oh0 = ci * rows
                oh1 = oh0 + rows if oh0 + rows < Ho else Ho
                L = (oh1 - oh0) * Wo
                dyp = <floating*>&dy[n, 0, 0, 0] + oh0 * Wo
                _im2col(&x[n, 0, 0, 0], ct, C, H, W, kh, kw, sh, sw, ph, pw, Wo, oh0, oh1)
                beta = 0 if (n == n0 and oh0 == 0) else 1
                t0 = CYBN_WTIME()
                # dW^T (K, F) += cols (K, L) @ dy^T (L, F): measured up to 1.4x faster in OpenBLAS
                # than dW = dy @ cols^T for these shapes (the long operand is packed as A)
                gemm_rm(c'N', c'T', K, F, L, ct, L, dyp, P, beta, dwt, F)
                gemm_seconds[t] += CYBN_WTIME() - t0
                if compute_dx:
                    t0 = CYBN_WTIME()
                    gemm_rm(c'T', c'N', K, L, F, <floating*>&weight[0, 0, 0, 0], K, dyp, P,
                             0, dct, L)
                    gemm_seconds[t] += CYBN_WTIME() - t0
                    _col2im(dct, &dx[n, 0, 0, 0], C, H, W, kh, kw, sh, sw, ph, pw, Wo, oh0, oh1)
    # fixed-order combination of the per-block partials (block 0, 1, ...), accumulated in double;
    # blocks outermost so every pass streams through memory
    cdef floating* dwo = &dweight[0, 0, 0, 0]
    cdef double* acc = &dw_acc[0]
    with nogil:
        for q in range(F * K):
            acc[q] = dw_part[0, q]
        for blk in range(1, nblocks):
            for q in range(F * K):
                acc[q] += dw_part[blk, q]
        for f in range(F):  # acc holds dW^T (K, F)
            for q in range(K):
                dwo[<Py_ssize_t>f * K + q] = <floating>acc[<Py_ssize_t>q * F + f]
        for f in range(F):
            s = 0
            for blk in range(nblocks):
                s = s + db_part[blk, f]
            dbias[f] = <floating>s


# ---------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3) for 3x3 / stride 1 (forward, and dx = the same conv of dy with the
# flipped kernel). Per 4x4 input tile d and 3x3 kernel g: y(2x2) = A^T [(G g G^T) * (B^T d B)] A,
#   B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]],
#   A^T = [[1,1,1,0],[0,1,-1,-1]].
# The sum over input channels turns the 16 elementwise products into 16 GEMMs
#   M[xi] (F, T) = V[xi] (F, C) @ U[xi] (C, T),  xi = 4a + b,  T = tiles of a group of images,
# i.e. 16 multiply-adds per 2x2 output tile and (f, c) pair instead of 36: 2.25x fewer GEMM flops
# than im2col, and BLAS packs 4 transformed values per input pixel and channel instead of 9
# unrolled ones. The input/output transforms are additions only (G has 0, +-1, +-0.5).

cdef extern from *:
    """
    /* Tile loops of the Winograd transforms, in C for `restrict` (no aliasing between the
       streams), so the compiler vectorises them (stride-2 loads / interleaved stores). */
    #define CYBN_WINO_IN(T, NAME)                                                        \
    static void NAME(const T* __restrict ta, T* __restrict u0, T* __restrict u1,        \
                     T* __restrict u2, T* __restrict u3, int TW) {                      \
        for (int tw = 0; tw < TW; ++tw) {                                               \
            T e0 = ta[2 * tw], o0 = ta[2 * tw + 1], e1 = ta[2 * tw + 2], o1 = ta[2 * tw + 3]; \
            u0[tw] = e0 - e1; u1[tw] = o0 + e1; u2[tw] = e1 - o0; u3[tw] = o0 - o1;     \
        }                                                                               \
    }
    /* B^T along 4 input rows r0..r3 (a missing row points at zeros), written at column offset
       pw of the padded tile rows t0..t3 of width WZ (zero borders): reads x directly. */
    #define CYBN_WINO_ROWS(T, NAME)                                                      \
    static void NAME(const T* __restrict r0, const T* __restrict r1, const T* __restrict r2, \
                     const T* __restrict r3, T* __restrict t0, T* __restrict t1,        \
                     T* __restrict t2, T* __restrict t3, int W, int pw, int WZ) {       \
        for (int i = 0; i < pw; ++i) { t0[i] = 0; t1[i] = 0; t2[i] = 0; t3[i] = 0; }    \
        for (int i = pw + W; i < WZ; ++i) { t0[i] = 0; t1[i] = 0; t2[i] = 0; t3[i] = 0; } \
        t0 += pw; t1 += pw; t2 += pw; t3 += pw;                                         \
        for (int i = 0; i < W; ++i) {                                                   \
            t0[i] = r0[i] - r2[i]; t1[i] = r1[i] + r2[i];                               \
            t2[i] = r2[i] - r1[i]; t3[i] = r1[i] - r3[i];                               \
        }                                                                               \
    }
    #define CYBN_WINO_OUT(T, NAME)                                                       \
    static void NAME(const T* __restrict m, long FT, T* __restrict o0, T* __restrict o1, \
                     T bf, int tw, int TW) {                                            \
        for (; tw < TW; ++tw) {                                                         \
            const T* q = m + tw;                                                        \
            T s00 = q[0] + q[4 * FT] + q[8 * FT], s01 = q[FT] + q[5 * FT] + q[9 * FT];  \
            T s02 = q[2 * FT] + q[6 * FT] + q[10 * FT], s03 = q[3 * FT] + q[7 * FT] + q[11 * FT]; \
            T s10 = q[4 * FT] - q[8 * FT] - q[12 * FT], s11 = q[5 * FT] - q[9 * FT] - q[13 * FT]; \
            T s12 = q[6 * FT] - q[10 * FT] - q[14 * FT], s13 = q[7 * FT] - q[11 * FT] - q[15 * FT]; \
            o0[2 * tw] = s00 + s01 + s02 + bf; o0[2 * tw + 1] = s01 - s02 - s03 + bf;   \
            o1[2 * tw] = s10 + s11 + s12 + bf; o1[2 * tw + 1] = s11 - s12 - s13 + bf;   \
        }                                                                               \
    }
    CYBN_WINO_IN(float, cybn_wino_in_f_scalar)
    CYBN_WINO_IN(double, cybn_wino_in_d)
    CYBN_WINO_ROWS(float, cybn_wino_rows_f)
    CYBN_WINO_ROWS(double, cybn_wino_rows_d)
    CYBN_WINO_OUT(float, cybn_wino_out_f_scalar)
    CYBN_WINO_OUT(double, cybn_wino_out_d_tail)
    static void cybn_wino_out_d(const double* m, long FT, double* o0, double* o1, double bf,
                                int TW) { cybn_wino_out_d_tail(m, FT, o0, o1, bf, 0, TW); }

    /* float: the stride-2 (de)interleaving done with SSE shuffles, 4 tiles at a time (the
       baseline x86-64 build has SSE but no AVX, and GCC leaves these loops scalar). Same
       operation order as the scalar code, so results do not depend on the path. */
    #if defined(__SSE__) || defined(_M_X64)
    #include <xmmintrin.h>
    static void cybn_wino_in_f(const float* ta, float* u0, float* u1, float* u2, float* u3,
                               int TW) {
        int tw = 0;
        for (; tw + 4 <= TW; tw += 4) {
            __m128 a = _mm_loadu_ps(ta + 2 * tw), b = _mm_loadu_ps(ta + 2 * tw + 4);
            __m128 c = _mm_loadu_ps(ta + 2 * tw + 2), d = _mm_loadu_ps(ta + 2 * tw + 6);
            __m128 e0 = _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 o0 = _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
            __m128 e1 = _mm_shuffle_ps(c, d, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 o1 = _mm_shuffle_ps(c, d, _MM_SHUFFLE(3, 1, 3, 1));
            _mm_storeu_ps(u0 + tw, _mm_sub_ps(e0, e1));
            _mm_storeu_ps(u1 + tw, _mm_add_ps(o0, e1));
            _mm_storeu_ps(u2 + tw, _mm_sub_ps(e1, o0));
            _mm_storeu_ps(u3 + tw, _mm_sub_ps(o0, o1));
        }
        cybn_wino_in_f_scalar(ta + 2 * tw, u0 + tw, u1 + tw, u2 + tw, u3 + tw, TW - tw);
    }
    static void cybn_wino_out_f(const float* m, long FT, float* o0, float* o1, float bf, int TW) {
        int tw = 0;
        __m128 vb = _mm_set1_ps(bf);
        for (; tw + 4 <= TW; tw += 4) {
            const float* q = m + tw;
            #define L(k) _mm_loadu_ps(q + (k) * FT)
            __m128 m4 = L(4), m5 = L(5), m6 = L(6), m7 = L(7);
            __m128 m8 = L(8), m9 = L(9), m10 = L(10), m11 = L(11);
            __m128 s00 = _mm_add_ps(_mm_add_ps(L(0), m4), m8);
            __m128 s01 = _mm_add_ps(_mm_add_ps(L(1), m5), m9);
            __m128 s02 = _mm_add_ps(_mm_add_ps(L(2), m6), m10);
            __m128 s03 = _mm_add_ps(_mm_add_ps(L(3), m7), m11);
            __m128 s10 = _mm_sub_ps(_mm_sub_ps(m4, m8), L(12));
            __m128 s11 = _mm_sub_ps(_mm_sub_ps(m5, m9), L(13));
            __m128 s12 = _mm_sub_ps(_mm_sub_ps(m6, m10), L(14));
            __m128 s13 = _mm_sub_ps(_mm_sub_ps(m7, m11), L(15));
            #undef L
            __m128 e0 = _mm_add_ps(_mm_add_ps(_mm_add_ps(s00, s01), s02), vb);
            __m128 d0 = _mm_add_ps(_mm_sub_ps(_mm_sub_ps(s01, s02), s03), vb);
            __m128 e1 = _mm_add_ps(_mm_add_ps(_mm_add_ps(s10, s11), s12), vb);
            __m128 d1 = _mm_add_ps(_mm_sub_ps(_mm_sub_ps(s11, s12), s13), vb);
            _mm_storeu_ps(o0 + 2 * tw, _mm_unpacklo_ps(e0, d0));
            _mm_storeu_ps(o0 + 2 * tw + 4, _mm_unpackhi_ps(e0, d0));
            _mm_storeu_ps(o1 + 2 * tw, _mm_unpacklo_ps(e1, d1));
            _mm_storeu_ps(o1 + 2 * tw + 4, _mm_unpackhi_ps(e1, d1));
        }
        cybn_wino_out_f_scalar(m, FT, o0, o1, bf, tw, TW);
    }
    #else
    static void cybn_wino_in_f(const float* ta, float* u0, float* u1, float* u2, float* u3,
                               int TW) { cybn_wino_in_f_scalar(ta, u0, u1, u2, u3, TW); }
    static void cybn_wino_out_f(const float* m, long FT, float* o0, float* o1, float bf, int TW)
        { cybn_wino_out_f_scalar(m, FT, o0, o1, bf, 0, TW); }
    #endif
    """
    void cybn_wino_in_f(const float* ta, float* u0, float* u1, float* u2, float* u3, int TW) nogil
    void cybn_wino_in_d(const double* ta, double* u0, double* u1, double* u2, double* u3,
                        int TW) nogil
    void cybn_wino_rows_f(const float* r0, const float* r1, const float* r2, const float* r3,
                          float* t0, float* t1, float* t2, float* t3, int W, int pw, int WZ) nogil
    void cybn_wino_rows_d(const double* r0, const double* r1, const double* r2, const double* r3,
                          double* t0, double* t1, double* t2, double* t3, int W, int pw,
                          int WZ) nogil
    void cybn_wino_out_f(const float* m, long FT, float* o0, float* o1, float bf, int TW) nogil
    void cybn_wino_out_d(const double* m, long FT, double* o0, double* o1, double bf, int TW) nogil


# Winograd F(4x4, 3x3): 6x6 input tiles at stride 4, 36 GEMMs over 16-pixel output tiles,
# i.e. 36/16 = 2.25 multiply-adds per output pixel and (f, c) pair instead of 9 (4x fewer than
# im2col, 1.78x fewer than F(2x2)); the transformed data is 2.25x the image instead of 4x.
#   B^T = [[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],
#          [0,4,0,-5,0,1]],
#   G = [[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]],
#   A^T = [[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]].
# The transforms are written with multiplications by powers of two only (5d = 4d + d), so an
# FMA contraction in a vectorised clone rounds exactly like the separate multiply and add: every
# clone gives the same bits.

cdef extern from *:
    """
    /* One portable baseline build; the hot transform loops get AVX-512 / AVX2 clones that the
       loader picks for the running CPU (GCC on x86-64 Linux; elsewhere, or with
       -DCYBN_NO_CLONES, the plain code). Like _common.h's CYBN_CLONES_EXACT plus an AVX-512
       clone: these transforms multiply by powers of two only, so the FMA contraction of the
       AVX-512 clone cannot change a bit. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
        && !defined(CYBN_NO_CLONES)
    #define CYBN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define CYBN_CLONES
    #endif
    /* The streams of a transform never overlap; `restrict` on local pointers is not enough for
       GCC to vectorise these loops without alias checks (too many streams for them). */
    #if defined(__GNUC__) && !defined(__clang__)
    #define CYBN_IVDEP _Pragma("GCC ivdep")
    #else
    #define CYBN_IVDEP
    #endif
    /* A loop to vectorise across its iterations even with strided loads (GCC builds those
       vectors lane by lane), which its cost model otherwise leaves scalar. */
    #if defined(_OPENMP)
    #define CYBN_SIMD _Pragma("omp simd")
    #else
    #define CYBN_SIMD CYBN_IVDEP
    #endif

    /* z = B^T d for the 6 values d0..d5 of one input column or row (see B^T above). */
    #define CYBN_WINO4_B(T, z, d0, d1, d2, d3, d4, d5) {                                 \
        T p_ = (d4) - (d2), q_ = (d3) - (d1);                                           \
        z[0] = 4 * ((d0) - (d2)) + p_; z[1] = ((d3) + (d4)) - 4 * ((d1) + (d2));        \
        z[2] = ((d4) - (d3)) + 4 * ((d1) - (d2)); z[3] = p_ + 2 * q_; z[4] = p_ - 2 * q_; \
        z[5] = 4 * ((d1) - (d3)) + ((d5) - (d3)); }
    /* B^T along 6 input rows r[0..5] (a missing row points at zeros), written at column offset
       pw of the 6 padded tile rows t + a*WZ (zero borders). */
    #define CYBN_WINO4_ROWS(T, NAME)                                                     \
    CYBN_CLONES static void NAME(const T* const* r, T* t, int W, int pw, int WZ) {      \
        for (int a = 0; a < 6; ++a) {                                                   \
            for (int i = 0; i < pw; ++i) t[a * WZ + i] = 0;                             \
            for (int i = pw + W; i < WZ; ++i) t[a * WZ + i] = 0;                        \
        }                                                                               \
        const T *__restrict r0 = r[0], *__restrict r1 = r[1], *__restrict r2 = r[2];    \
        const T *__restrict r3 = r[3], *__restrict r4 = r[4], *__restrict r5 = r[5];    \
        T *__restrict t0 = t + pw, *__restrict t1 = t0 + WZ, *__restrict t2 = t1 + WZ;  \
        T *__restrict t3 = t2 + WZ, *__restrict t4 = t3 + WZ, *__restrict t5 = t4 + WZ; \
        CYBN_IVDEP                                                                      \
        for (int i = 0; i < W; ++i) {                                                   \
            T z[6];                                                                     \
            CYBN_WINO4_B(T, z, r0[i], r1[i], r2[i], r3[i], r4[i], r5[i])                \
            t0[i] = z[0]; t1[i] = z[1]; t2[i] = z[2];                                   \
            t3[i] = z[3]; t4[i] = z[4]; t5[i] = z[5];                                   \
        }                                                                               \
    }
    /* B along the columns of each tile of one padded row ta: stream b gets u[b*CT + tw]. */
    #define CYBN_WINO4_IN(T, NAME)                                                       \
    CYBN_CLONES static void NAME(const T* __restrict ta, T* __restrict u, long CT, int TW) { \
        T *__restrict u0 = u, *__restrict u1 = u + CT, *__restrict u2 = u + 2 * CT;     \
        T *__restrict u3 = u + 3 * CT, *__restrict u4 = u + 4 * CT, *__restrict u5 = u + 5 * CT; \
        for (int tw = 0; tw < TW; ++tw) {                                               \
            const T* d = ta + 4 * tw;                                                   \
            T z[6];                                                                     \
            CYBN_WINO4_B(T, z, d[0], d[1], d[2], d[3], d[4], d[5])                      \
            u0[tw] = z[0]; u1[tw] = z[1]; u2[tw] = z[2];                                \
            u3[tw] = z[3]; u4[tw] = z[4]; u5[tw] = z[5];                                \
        }                                                                               \
    }
    /* A^T m A (+ bf) of n consecutive tiles: m[xi*FT + t] (xi = 6a + b) -> o[(4i + j)*n + t],
       the 16 output pixels of each tile as 16 streams. The body works on one tile (scalar V)
       or, with GCC vector types, on a 64-byte vector of tiles (the same operations lane by
       lane, so the bits do not depend on the path); GCC leaves the plain loop scalar. */
    #define CYBN_WINO4_OUT_BODY(V, LD, ST)                                               \
        {                                                                               \
            V s[4][6];                                                                  \
            for (int b = 0; b < 6; ++b) {                                               \
                V m0 = LD(q + b * FT), m1 = LD(q + (6 + b) * FT), m2 = LD(q + (12 + b) * FT); \
                V m3 = LD(q + (18 + b) * FT), m4 = LD(q + (24 + b) * FT);               \
                V m5 = LD(q + (30 + b) * FT);                                           \
                V p = m1 + m2, d = m1 - m2, p2 = m3 + m4, d2 = m3 - m4;                 \
                s[0][b] = (m0 + p) + p2; s[1][b] = d + 2 * d2;                          \
                s[2][b] = p + 4 * p2; s[3][b] = (d + 8 * d2) + m5;                      \
            }                                                                           \
            for (int i = 0; i < 4; ++i) {                                               \
                V p = s[i][1] + s[i][2], d = s[i][1] - s[i][2];                         \
                V p2 = s[i][3] + s[i][4], d2 = s[i][3] - s[i][4];                       \
                ST(oo + (4 * i) * n, ((s[i][0] + p) + p2) + bf);                        \
                ST(oo + (4 * i + 1) * n, (d + 2 * d2) + bf);                            \
                ST(oo + (4 * i + 2) * n, (p + 4 * p2) + bf);                            \
                ST(oo + (4 * i + 3) * n, ((d + 8 * d2) + s[i][5]) + bf);                \
            }                                                                           \
        }
    #define CYBN_LD_S(p) (*(p))
    #define CYBN_ST_S(p, v) (*(p) = (v))
    #if defined(__GNUC__)
    typedef float cybn_vf __attribute__((vector_size(64), aligned(4), may_alias));
    typedef double cybn_vd __attribute__((vector_size(64), aligned(8), may_alias));
    #define CYBN_LD_VF(p) (*(const cybn_vf*)(p))
    #define CYBN_ST_VF(p, v) (*(cybn_vf*)(p) = (v))
    #define CYBN_LD_VD(p) (*(const cybn_vd*)(p))
    #define CYBN_ST_VD(p, v) (*(cybn_vd*)(p) = (v))
    #define CYBN_WINO4_OUT_VEC(VT, LDV, STV)                                             \
        for (; t + (long)(sizeof(VT) / sizeof(*m)) <= n; t += sizeof(VT) / sizeof(*m)) { \
            const __typeof__(*m)* q = m + t; __typeof__(*o)* oo = o + t;                \
            CYBN_WINO4_OUT_BODY(VT, LDV, STV)                                           \
        }
    #else
    #define CYBN_WINO4_OUT_VEC(VT, LDV, STV)
    #endif
    #define CYBN_WINO4_OUT(T, VT, LDV, STV, NAME)                                        \
    CYBN_CLONES static void NAME(const T* __restrict m, long FT, T* __restrict o, long n, \
                                 T bf) {                                                \
        long t = 0;                                                                     \
        CYBN_WINO4_OUT_VEC(VT, LDV, STV)                                                \
        for (; t < n; ++t) {                                                            \
            const T* q = m + t; T* oo = o + t;                                          \
            CYBN_WINO4_OUT_BODY(T, CYBN_LD_S, CYBN_ST_S)                                \
        }                                                                               \
    }
    /* One image's output plane (Ho, Wo) from its tiles' streams o (see above; tile
       th*TW + tw): y[4th + i][4tw + j] = o[(4i + j)*n + th*TW + tw]. One call per plane (per
       row, the calls cost more than the copying on small planes). */
    #define CYBN_WINO4_PLANE_ROWS(T)                                                     \
        for (; r < Ho; ++r) {                                                           \
            const T* o0 = o + (4 * (r % 4)) * n + (r / 4) * TW;                         \
            T* yr = y + (long)r * Wo;                                                   \
            int tw = 0;                                                                 \
            for (; 4 * tw + 4 <= Wo; ++tw) {                                            \
                yr[4 * tw] = o0[tw]; yr[4 * tw + 1] = o0[n + tw];                       \
                yr[4 * tw + 2] = o0[2 * n + tw]; yr[4 * tw + 3] = o0[3 * n + tw];       \
            }                                                                           \
            for (int j = 0; 4 * tw + j < Wo; ++j) yr[4 * tw + j] = o0[j * n + tw];      \
        }
    #define CYBN_WINO4_PLANE(T, NAME)                                                    \
    CYBN_CLONES static void NAME(const T* __restrict o, long n, T* __restrict y, int Ho, \
                                 int Wo, int TW) {                                      \
        int r = 0;                                                                      \
        CYBN_WINO4_PLANE_ROWS(T)                                                        \
    }
    /* float, with GCC vector shuffles: 16 tiles of the 4 streams of row i at a time,
       interleaved into 4 vectors of 4 tiles each (a 4x4 transpose per tile; vpermt2ps in the
       AVX-512 clone), when whole tiles of 4 fill the rows (Wo = 4*TW, TW % 4 == 0). */
    #if defined(__GNUC__)
    CYBN_CLONES static void cybn_wino4_plane_f(const float* __restrict o, long n,
                                               float* __restrict y, int Ho, int Wo, int TW) {
        int r = 0;
        if (Wo == 4 * TW && TW % 4 == 0) {
            typedef int cybn_vi __attribute__((vector_size(64)));
            const cybn_vi lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
            const cybn_vi hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
            const cybn_vi p0 = {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23};
            const cybn_vi p1 = {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31};
            int T = ((Ho + 3) / 4) * TW, t0 = 0;
            for (; t0 + 16 <= T; t0 += 16)
                for (int i = 0; i < 4; ++i) {
                    const float* q = o + (4 * i) * n + t0;
                    cybn_vf s0 = CYBN_LD_VF(q), s1 = CYBN_LD_VF(q + n);
                    cybn_vf s2 = CYBN_LD_VF(q + 2 * n), s3 = CYBN_LD_VF(q + 3 * n);
                    cybn_vf l01 = __builtin_shuffle(s0, s1, lo), h01 = __builtin_shuffle(s0, s1, hi);
                    cybn_vf l23 = __builtin_shuffle(s2, s3, lo), h23 = __builtin_shuffle(s2, s3, hi);
                    cybn_vf v[4] = {__builtin_shuffle(l01, l23, p0), __builtin_shuffle(l01, l23, p1),
                                    __builtin_shuffle(h01, h23, p0), __builtin_shuffle(h01, h23, p1)};
                    for (int k = 0; k < 4; ++k) {
                        int t = t0 + 4 * k, rr = 4 * (t / TW) + i;
                        if (rr < Ho) CYBN_ST_VF(y + (long)rr * Wo + 4 * (t % TW), v[k]);
                    }
                }
            r = 4 * (t0 / TW);  /* the tile rows left, row by row */
        }
        CYBN_WINO4_PLANE_ROWS(float)
    }
    #else
    CYBN_WINO4_PLANE(float, cybn_wino4_plane_f)
    #endif
    CYBN_WINO4_ROWS(float, cybn_wino4_rows_f)
    CYBN_WINO4_ROWS(double, cybn_wino4_rows_d)
    CYBN_WINO4_IN(float, cybn_wino4_in_f_scalar)
    CYBN_WINO4_IN(double, cybn_wino4_in_d)
    CYBN_WINO4_OUT(float, cybn_vf, CYBN_LD_VF, CYBN_ST_VF, cybn_wino4_out_f)
    CYBN_WINO4_OUT(double, cybn_vd, CYBN_LD_VD, CYBN_ST_VD, cybn_wino4_out_d)
    CYBN_WINO4_PLANE(double, cybn_wino4_plane_d)

    /* V[(alpha*a + b)*F*C + f*C + c] = (G g G^T)[a, b] in double, rounded once, for every 3x3
       kernel g = w[f, c] (alpha = 4: F(2x2); 6: F(4x4)); ``flipped``: g[i][j] = w[f, c, 2-i, 2-j]
       stored at V[xi, c, f] (the weights of the dx conv). */
    static const double cybn_G2[12] = {1, 0, 0, .5, .5, .5, .5, -.5, .5, 0, 0, 1};
    static const double cybn_G4[18] = {1. / 4, 0, 0, -1. / 6, -1. / 6, -1. / 6,
                                       -1. / 6, 1. / 6, -1. / 6, 1. / 24, 1. / 12, 1. / 6,
                                       1. / 24, -1. / 12, 1. / 6, 0, 0, 1};
    /* ALPHA and G are compile-time constants, so the loops unroll. A block of up to 64
       kernels of one output row is gathered into g[element][kernel] first, so that every step
       of G g G^T is one vector loop over the kernels (AVX-512/AVX2 clones without FMA, so each
       product and sum is rounded as in the scalar code: the same bits); the ALPHA^2 results
       are then stored stream by stream, contiguously (the streams lie F*C apart, often a power
       of two: written kernel by kernel they would share cache sets). */
    #define CYBN_WINO_WEIGHTS_A(T, NAME, ALPHA, G)                                       \
    CYBN_CLONES_EXACT_WIDE static void NAME(const T* w, T* V, int F, int C, int flipped,  \
                                            int o0, int o1) {                          \
        long FC = (long)F * C;                                                          \
        int Q = flipped ? F : C;                                                        \
        double g[9][64], r[ALPHA * 3][64];                                              \
        for (int o = o0; o < o1; ++o)                                                   \
            for (int q0 = 0; q0 < Q; q0 += 64) {                                        \
                int nq = Q - q0 < 64 ? Q - q0 : 64;                                     \
                for (int q = 0; q < nq; ++q) {                                          \
                    long f = flipped ? q0 + q : o, c = flipped ? o : q0 + q;            \
                    const T* k = w + (f * C + c) * 9;                                   \
                    for (int i = 0; i < 9; ++i) g[i][q] = flipped ? k[8 - i] : k[i];    \
                }                                                                       \
                for (int a = 0; a < ALPHA; ++a)                                         \
                    for (int j = 0; j < 3; ++j)                                         \
                        for (int q = 0; q < nq; ++q)                                    \
                            r[a * 3 + j][q] = G[a * 3] * g[j][q] + G[a * 3 + 1] * g[3 + j][q] \
                                              + G[a * 3 + 2] * g[6 + j][q];             \
                for (int a = 0; a < ALPHA; ++a)                                         \
                    for (int b = 0; b < ALPHA; ++b) {                                   \
                        T* v = V + (a * ALPHA + b) * FC + (long)o * Q + q0;             \
                        for (int q = 0; q < nq; ++q)                                    \
                            v[q] = (T)(r[a * 3][q] * G[b * 3] + r[a * 3 + 1][q] * G[b * 3 + 1] \
                                       + r[a * 3 + 2][q] * G[b * 3 + 2]);               \
                    }                                                                   \
            }                                                                           \
    }
    #define CYBN_WINO_WEIGHTS(T, NAME)                                                   \
    CYBN_WINO_WEIGHTS_A(T, NAME##_2, 4, cybn_G2)                                        \
    CYBN_WINO_WEIGHTS_A(T, NAME##_4, 6, cybn_G4)                                        \
    static void NAME(const T* w, T* V, int F, int C, int flipped, int alpha, int o0,    \
                     int o1) {                                                          \
        if (alpha == 4) NAME##_2(w, V, F, C, flipped, o0, o1);                          \
        else NAME##_4(w, V, F, C, flipped, o0, o1);                                     \
    }
    CYBN_WINO_WEIGHTS(float, cybn_wino_weights_f)
    CYBN_WINO_WEIGHTS(double, cybn_wino_weights_d)

    /* dW by F(4x4, 3x3): dL/dV = (A dy A^T) (.) (B^T d B) per tile, dW = G^T (dL/dV) G.
       A = (A^T)^T: z = (d0, d0+d1+d2+d3, d0-d1+d2-d3, d0+2d1+4d2+8d3, d0-2d1+4d2-8d3, d3).
       A d A^T of one 4x4 tile of channel f, rows q, q + ws, q + 2ws, q + 3ws: A down the
       columns, then along the rows; stream 6a + b gets yt[(6a + b)*FT + f]. Named scalars,
       no local arrays, so that GCC vectorises the loop over f around it. */
    #define CYBN_WINO4_A6(T, z0, z1, z2, z3, z4, z5, d0, d1, d2, d3)                     \
        T z0, z1, z2, z3, z4, z5;                                                       \
        { T p_ = (d0) + (d2), q_ = (d1) + (d3), p4_ = (d0) + 4 * (d2);                  \
          T q4_ = 2 * (d1) + 8 * (d3);                                                  \
          z0 = (d0); z1 = p_ + q_; z2 = p_ - q_; z3 = p4_ + q4_; z4 = p4_ - q4_; z5 = (d3); }
    #define CYBN_WINO4_DY_COL(T, j)                                                      \
        CYBN_WINO4_A6(T, v0##j, v1##j, v2##j, v3##j, v4##j, v5##j,                       \
                      q[j], q[ws + j], q[2 * ws + j], q[3 * ws + j])
    #define CYBN_WINO4_DY_ROW(T, a)                                                      \
        { CYBN_WINO4_A6(T, z0, z1, z2, z3, z4, z5, v##a##0, v##a##1, v##a##2, v##a##3)  \
          T* o_ = yt + 6 * a * FT + f;                                                  \
          o_[0] = z0; o_[FT] = z1; o_[2 * FT] = z2; o_[3 * FT] = z3; o_[4 * FT] = z4;    \
          o_[5 * FT] = z5; }
    #define CYBN_WINO4_DY_TILE(T)                                                        \
        CYBN_WINO4_DY_COL(T, 0) CYBN_WINO4_DY_COL(T, 1)                                 \
        CYBN_WINO4_DY_COL(T, 2) CYBN_WINO4_DY_COL(T, 3)                                 \
        CYBN_WINO4_DY_ROW(T, 0) CYBN_WINO4_DY_ROW(T, 1) CYBN_WINO4_DY_ROW(T, 2)         \
        CYBN_WINO4_DY_ROW(T, 3) CYBN_WINO4_DY_ROW(T, 4) CYBN_WINO4_DY_ROW(T, 5)
    /* A dy A^T of every 4x4 tile of one image's dy (F, Ho, Wo), channel-minor: stream 6a + b
       gets y[(6a + b)*FT + tile*F + f], so that the dW GEMMs run over the tiles as an outer
       dimension (measured 1.6-2x the GEMM rate of tiles as both operands' inner dimension).
       The loop over f is the vector loop (strided loads, contiguous stores); a tile's pixels
       past Ho or Wo read zeros (copied into the zero-padded tile e first). */
    #define CYBN_WINO4_DY(T, NAME)                                                       \
    CYBN_CLONES static void NAME(const T* __restrict dy, int F, int Ho, int Wo, int TH,  \
                                 int TW, T* __restrict y, long FT) {                    \
        long P = (long)Ho * Wo;                                                         \
        for (int th = 0; th < TH; ++th)                                                 \
            for (int tw = 0; tw < TW; ++tw) {                                           \
                T* yt = y + (long)(th * TW + tw) * F;                                   \
                int nr = Ho - 4 * th < 4 ? Ho - 4 * th : 4;                             \
                int nc = Wo - 4 * tw < 4 ? Wo - 4 * tw : 4;                             \
                const T* base = dy + (long)(4 * th) * Wo + 4 * tw;                      \
                if (nr == 4 && nc == 4) {                                               \
                    int ws = Wo;                                                        \
                    CYBN_SIMD                                                           \
                    for (int f = 0; f < F; ++f) {                                       \
                        const T* q = base + f * P;                                      \
                        CYBN_WINO4_DY_TILE(T)                                           \
                    }                                                                   \
                } else {                                                                \
                    int ws = 4;                                                         \
                    for (int f = 0; f < F; ++f) {                                       \
                        T e[16];                                                        \
                        for (int i = 0; i < 4; ++i)                                     \
                            for (int j = 0; j < 4; ++j)                                 \
                                e[4 * i + j] = i < nr && j < nc ? base[f * P + i * Wo + j] : 0; \
                        const T* q = e;                                                 \
                        CYBN_WINO4_DY_TILE(T)                                           \
                    }                                                                   \
                }                                                                       \
            }                                                                           \
    }
    CYBN_WINO4_DY(float, cybn_wino4_dy_f)
    CYBN_WINO4_DY(double, cybn_wino4_dy_d)

    /* float: the stride-4 tile (de)interleaving of the F(4x4) transforms with SSE 4x4
       transposes, 4 tiles at a time (GCC leaves these loops scalar even in the AVX-512
       clones); the same operations as the scalar code, so the bits do not depend on the path.
       cybn_wino4_in_f reads 2 floats past the row's last tile (the caller's slack). Cloned as
       well, so that AVX-512 code never calls legacy-SSE code (measured: the SSE/AVX state
       transitions made the dy transform 2x slower than scalar code). */
    #if defined(__SSE__) || defined(_M_X64)
    #define CYBN_T4(r0, r1, r2, r3, d0, d1, d2, d3) {                                    \
        __m128 t0_ = _mm_unpacklo_ps(r0, r1), t1_ = _mm_unpackhi_ps(r0, r1);            \
        __m128 t2_ = _mm_unpacklo_ps(r2, r3), t3_ = _mm_unpackhi_ps(r2, r3);            \
        d0 = _mm_movelh_ps(t0_, t2_); d1 = _mm_movehl_ps(t2_, t0_);                     \
        d2 = _mm_movelh_ps(t1_, t3_); d3 = _mm_movehl_ps(t3_, t1_); }
    CYBN_CLONES static void cybn_wino4_in_f(const float* ta, float* u, long CT, int TW) {
        const __m128 two = _mm_set1_ps(2), four = _mm_set1_ps(4);
        int tw = 0;
        for (; tw + 4 <= TW; tw += 4) {
            const float* d = ta + 4 * tw;
            __m128 r0 = _mm_loadu_ps(d), r1 = _mm_loadu_ps(d + 4), r2 = _mm_loadu_ps(d + 8);
            __m128 r3 = _mm_loadu_ps(d + 12), r4 = _mm_loadu_ps(d + 16);
            __m128 d0, d1, d2, d3;
            CYBN_T4(r0, r1, r2, r3, d0, d1, d2, d3)
            __m128 s0 = _mm_unpacklo_ps(r1, r2), s1 = _mm_unpacklo_ps(r3, r4);
            __m128 d4 = _mm_movelh_ps(s0, s1), d5 = _mm_movehl_ps(s1, s0);
            __m128 p = _mm_sub_ps(d4, d2), q = _mm_sub_ps(d3, d1);
            float* o = u + tw;
            _mm_storeu_ps(o, _mm_add_ps(_mm_mul_ps(four, _mm_sub_ps(d0, d2)), p));
            _mm_storeu_ps(o + CT, _mm_sub_ps(_mm_add_ps(d3, d4),
                                             _mm_mul_ps(four, _mm_add_ps(d1, d2))));
            _mm_storeu_ps(o + 2 * CT, _mm_add_ps(_mm_sub_ps(d4, d3),
                                                 _mm_mul_ps(four, _mm_sub_ps(d1, d2))));
            _mm_storeu_ps(o + 3 * CT, _mm_add_ps(p, _mm_mul_ps(two, q)));
            _mm_storeu_ps(o + 4 * CT, _mm_sub_ps(p, _mm_mul_ps(two, q)));
            _mm_storeu_ps(o + 5 * CT, _mm_add_ps(_mm_mul_ps(four, _mm_sub_ps(d1, d3)),
                                                 _mm_sub_ps(d5, d3)));
        }
        cybn_wino4_in_f_scalar(ta + 4 * tw, u + tw, CT, TW - tw);
    }
    #else
    static void cybn_wino4_in_f(const float* ta, float* u, long CT, int TW)
        { cybn_wino4_in_f_scalar(ta, u, CT, TW); }
    #endif
    /* dw[f, c] (3x3) = G^T dv G for one input channel c and every f, from
       dv[xi*FC + c*F + f] (double, 36 streams), in blocks of 64 f read contiguously; each
       sum runs in its fixed order per kernel, and the loops over the block's kernels are the
       vector loops (one kernel at a time, the sums were latency-bound chains). */
    #define CYBN_WINO4_DW(T, NAME)                                                       \
    CYBN_CLONES_EXACT_WIDE static void NAME(const double* dv, T* dw, int F, int C, int c) { \
        const double* G = cybn_G4;                                                      \
        long FC = (long)F * C;                                                          \
        double buf[36][64], r[3][6][64], o9[9][64];                                     \
        for (int f0 = 0; f0 < F; f0 += 64) {                                            \
            int nf = F - f0 < 64 ? F - f0 : 64;                                         \
            for (int xi = 0; xi < 36; ++xi)                                             \
                for (int q = 0; q < nf; ++q) buf[xi][q] = dv[xi * FC + (long)c * F + f0 + q]; \
            for (int i = 0; i < 3; ++i)                                                 \
                for (int b = 0; b < 6; ++b)                                             \
                    for (int q = 0; q < nf; ++q) {                                      \
                        double s = 0;                                                   \
                        for (int a = 0; a < 6; ++a) s += G[a * 3 + i] * buf[a * 6 + b][q]; \
                        r[i][b][q] = s;                                                 \
                    }                                                                   \
            for (int i = 0; i < 3; ++i)                                                 \
                for (int j = 0; j < 3; ++j)                                             \
                    for (int q = 0; q < nf; ++q) {                                      \
                        double s = 0;                                                   \
                        for (int b = 0; b < 6; ++b) s += r[i][b][q] * G[b * 3 + j];     \
                        o9[i * 3 + j][q] = s;                                           \
                    }                                                                   \
            for (int q = 0; q < nf; ++q) {                                              \
                T* o = dw + ((long)(f0 + q) * C + c) * 9;                               \
                for (int k = 0; k < 9; ++k) o[k] = (T)o9[k][q];                         \
            }                                                                           \
        }                                                                               \
    }
    CYBN_WINO4_DW(float, cybn_wino4_dw_f)
    CYBN_WINO4_DW(double, cybn_wino4_dw_d)
    /* acc[k] = the sum over blocks b = 0..nblocks-1, in that order, of p[b*stride + k] (k < n),
       in double: one row of the dW partials. The rows of consecutive blocks are short and
       far apart, which the hardware prefetcher does not follow: the row eight blocks ahead is
       fetched by hand. With it, and AVX-512 code, the sum's share of a 1-thread cnn7 step in
       perf samples went from 3.2 to 2.6% (it still waits on its loads). */
    #define CYBN_BLOCK_SUM(T, NAME)                                                      \
    CYBN_CLONES static void NAME(const T* p, long stride, int nblocks, double* __restrict acc, \
                                 long n) {                                              \
        for (long k = 0; k < n; ++k) acc[k] = p[k];                                     \
        for (int b = 1; b < nblocks; ++b) {                                             \
            const T* __restrict q = p + b * stride;                                     \
            if (b + 8 < nblocks)                                                        \
                for (long k = 0; k < n * (long)sizeof(T); k += 64)                      \
                    CYBN_PREFETCH_AHEAD(q + 8 * stride, k);                             \
            for (long k = 0; k < n; ++k) acc[k] += q[k];                                \
        }                                                                               \
    }
    CYBN_BLOCK_SUM(float, cybn_block_sum_f)
    CYBN_BLOCK_SUM(double, cybn_block_sum_d)
    """
    void cybn_wino4_rows_f(const float* const* r, float* t, int W, int pw, int WZ) nogil
    void cybn_wino4_rows_d(const double* const* r, double* t, int W, int pw, int WZ) nogil
    void cybn_wino4_in_f(const float* ta, float* u, long CT, int TW) nogil
    void cybn_wino4_in_d(const double* ta, double* u, long CT, int TW) nogil
    void cybn_wino4_out_f(const float* m, long FT, float* o, long n, float bf) nogil
    void cybn_wino4_out_d(const double* m, long FT, double* o, long n, double bf) nogil
    void cybn_wino4_plane_f(const float* o, long n, float* y, int Ho, int Wo, int TW) nogil
    void cybn_wino4_plane_d(const double* o, long n, double* y, int Ho, int Wo, int TW) nogil
    void cybn_wino_weights_f(const float* w, float* V, int F, int C, int flipped, int alpha,
                             int o0, int o1) nogil
    void cybn_wino_weights_d(const double* w, double* V, int F, int C, int flipped,
                             int alpha, int o0, int o1) nogil
    void cybn_wino4_dy_f(const float* dy, int F, int Ho, int Wo, int TH, int TW, float* y,
                         long FT) nogil
    void cybn_wino4_dy_d(const double* dy, int F, int Ho, int Wo, int TH, int TW, double* y,
                         long FT) nogil
    void cybn_wino4_dw_f(const double* dv, float* dw, int F, int C, int c) nogil
    void cybn_wino4_dw_d(const double* dv, double* dw, int F, int C, int c) nogil
    void cybn_block_sum_f(const float* p, long stride, int nblocks, double* acc, long n) nogil
    void cybn_block_sum_d(const double* p, long stride, int nblocks, double* acc, long n) nogil


cdef inline Py_ssize_t _stream(Py_ssize_t n) noexcept nogil:
    """Offset between consecutive transform streams (xi) of n elements: padded by 16 elements,
    since n is often a multiple of 4 KB and the 16-36 streams a transform reads or writes at once
    would otherwise share the same few cache sets (measured: up to 1.3x slower transforms)."""
    return n + 16


cdef void _wino_input(const floating* x, floating* U, floating* Z, floating* tmp, int C, int H,
                      int W, int ph, int pw, int TH, int TW, int Tg, int t0, int m) noexcept nogil:
    """U[xi, c, t0 + th*TW + tw] = (B^T d B)[a, b] for the tiles of one image (ld = Tg), with
    output tiles of m x m (2: F(2x2, 3x3), 4: F(4x4, 3x3)).

    Z: >= W zeros standing in for the padding rows; tmp: m + 2 padded rows of width m*TW + 2.
    """
    cdef int alpha = m + 2, WZ = m * TW + 2
    cdef int c, th, a, k, ih
    cdef Py_ssize_t CT = _stream(<Py_ssize_t>C * Tg), line
    cdef Py_ssize_t ahead_bytes = <Py_ssize_t>m * W * sizeof(floating)
    cdef const char* ahead
    cdef const floating* r[6]
    cdef floating* ta
    cdef floating* u
    memset(Z, 0, W * sizeof(floating))
    for c in range(C):
        for th in range(TH):
            for k in range(alpha):
                ih = m * th - ph + k
                r[k] = x + (<Py_ssize_t>c * H + ih) * W if 0 <= ih < H else Z
            # The row pass waits on its loads: fetch the rows that tile row th + 4 adds (past a
            # plane's end, the next plane's, which follow in memory; a prefetch never faults).
            ahead = <const char*>(x + (<Py_ssize_t>c * H + m * (th + 3) - ph + alpha) * W)
            for line in range(0, ahead_bytes, 64):
                CYBN_PREFETCH_AHEAD(ahead, line)
            u = U + <Py_ssize_t>c * Tg + t0 + th * TW
            # B^T along the rows (unit stride), then B along the columns of each tile
            if m == 4:
                if floating is float:
                    cybn_wino4_rows_f(r, tmp, W, pw, WZ)
                else:
                    cybn_wino4_rows_d(r, tmp, W, pw, WZ)
                for a in range(6):
                    if floating is float:
                        cybn_wino4_in_f(tmp + a * WZ, u + 6 * a * CT, CT, TW)
                    else:
                        cybn_wino4_in_d(tmp + a * WZ, u + 6 * a * CT, CT, TW)
                continue
            if floating is float:
                cybn_wino_rows_f(r[0], r[1], r[2], r[3], tmp, tmp + WZ, tmp + 2 * WZ,
                                 tmp + 3 * WZ, W, pw, WZ)
            else:
                cybn_wino_rows_d(r[0], r[1], r[2], r[3], tmp, tmp + WZ, tmp + 2 * WZ,
                                 tmp + 3 * WZ, W, pw, WZ)
            for a in range(4):
                ta = tmp + a * WZ
                if floating is float:
                    cybn_wino_in_f(ta, u + 4 * a * CT, u + (4 * a + 1) * CT,
                                   u + (4 * a + 2) * CT, u + (4 * a + 3) * CT, TW)
                else:
                    cybn_wino_in_d(ta, u + 4 * a * CT, u + (4 * a + 1) * CT,
                                   u + (4 * a + 2) * CT, u + (4 * a + 3) * CT, TW)


cdef void _wino_output(const floating* M, floating* y, floating* tmp, const floating* bias,
                       bint has_bias, int F, int Ho, int Wo, int TH, int TW, int Tg,
                       int t0) noexcept nogil:
    """F(2x2): y[f] = A^T m A (+ bias) for the tiles of one image; m[xi] = M[xi, f, t0 + tile].

    tmp: 2 rows of width 2*TW (the tile row's output before it is cut to Wo columns)."""
    cdef int f, th, r
    cdef Py_ssize_t FT = _stream(<Py_ssize_t>F * Tg)
    cdef const floating* mp
    cdef floating bf
    for f in range(F):
        bf = bias[f] if has_bias else 0
        for th in range(TH):
            mp = M + <Py_ssize_t>f * Tg + t0 + th * TW
            if floating is float:
                cybn_wino_out_f(mp, FT, tmp, tmp + 2 * TW, bf, TW)
            else:
                cybn_wino_out_d(mp, FT, tmp, tmp + 2 * TW, bf, TW)
            for r in range(2 * th, min(2 * th + 2, Ho)):
                memcpy(y + (<Py_ssize_t>f * Ho + r) * Wo, tmp + (r - 2 * th) * 2 * TW,
                       Wo * sizeof(floating))


cdef void _wino4_output(const floating* M, floating* y, floating* O, const floating* bias,
                        bint has_bias, int F, int Ho, int Wo, int TH, int TW, int Tg,
                        int g0, int g1) noexcept nogil:
    """F(4x4): y[g, f] = A^T m A (+ bias) for the images g0..g1 of a group: per f, all the
    group's tiles at once (a long vector loop) into O (16 * Tg), then cut into the planes of y."""
    cdef int f, g
    cdef int T = TH * TW
    cdef Py_ssize_t FT = _stream(<Py_ssize_t>F * Tg)
    cdef floating bf
    for f in range(F):
        bf = bias[f] if has_bias else 0
        if floating is float:
            cybn_wino4_out_f(M + <Py_ssize_t>f * Tg, FT, O, Tg, bf)
        else:
            cybn_wino4_out_d(M + <Py_ssize_t>f * Tg, FT, O, Tg, bf)
        for g in range(g0, g1):
            if floating is float:
                cybn_wino4_plane_f(O + (g - g0) * T, Tg, y + (<Py_ssize_t>g * F + f) * Ho * Wo,
                                   Ho, Wo, TW)
            else:
                cybn_wino4_plane_d(O + (g - g0) * T, Tg, y + (<Py_ssize_t>g * F + f) * Ho * Wo,
                                   Ho, Wo, TW)


cdef void _wino_group(const floating* x, int C, int H, int W, const floating* V, int F,
                      const floating* bias, bint has_bias, floating* y, int Ho, int Wo,
                      floating* Ut, floating* Mt, floating* Zt, floating* tmpt, floating* Ot,
                      double* gsec, int ph, int pw, int m, int g0, int g1) noexcept nogil:
    """Images g0..g1 of x (N, C, H, W) into y (N, F, Ho, Wo) by F(m x m, 3x3) with the
    transformed kernels V ((m+2)^2, F, C): input transform -> (m+2)^2 GEMMs over the group's
    tiles -> output transform, in this thread's scratch (see ``conv2d_winograd``)."""
    cdef int TH = (Ho + m - 1) // m, TW = (Wo + m - 1) // m, T = TH * TW
    cdef int Tg = (g1 - g0) * T, g, xi
    cdef double tt
    for g in range(g0, g1):
        _wino_input(x + <Py_ssize_t>g * C * H * W, Ut, Zt, tmpt, C, H, W, ph, pw, TH, TW, Tg,
                    (g - g0) * T, m)
    tt = CYBN_WTIME()
    for xi in range((m + 2) * (m + 2)):
        gemm_rm(c'N', c'N', F, Tg, C, <floating*>V + <Py_ssize_t>xi * F * C, C,
                 Ut + xi * _stream(<Py_ssize_t>C * Tg), Tg, 0,
                 Mt + xi * _stream(<Py_ssize_t>F * Tg), Tg)
    gsec[0] += CYBN_WTIME() - tt
    if m == 4:
        _wino4_output(Mt, y, Ot, bias, has_bias, F, Ho, Wo, TH, TW, Tg, g0, g1)
    else:
        for g in range(g0, g1):
            _wino_output(Mt, y + <Py_ssize_t>g * F * Ho * Wo, tmpt, bias, has_bias, F, Ho, Wo,
                         TH, TW, Tg, (g - g0) * T)


def conv2d_winograd(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    bint flipped, floating[:, :, ::1] V, const floating[::1] bias, bint has_bias,
                    floating[:, :, :, ::1] y, floating[:, ::1] U, floating[:, ::1] M,
                    floating[:, ::1] Z, floating[:, ::1] tmp, floating[:, ::1] O,
                    double[::1] gemm_seconds, int ph, int pw, int m, int group, int num_threads):
    """3x3 stride-1 conv y = x * g (+ bias) by Winograd F(m x m, 3x3), m = 2 or 4, with the
    kernels g of w (``flipped``: the dx conv's, see ``winograd_weights``). V ((m+2)^2, F, C) is
    filled with G g G^T first, its rows shared out to the team that then runs the groups: one
    parallel region, and no return to Python between the two.

    Groups of ``group`` images are handed out to the threads dynamically (``_wino_group``).
    Scratch per thread (rows at least): U ((m+2)^2*(C*Tg+16)), M ((m+2)^2*(F*Tg+16)) with
    Tg = group*TH*TW, TH = ceil(Ho/m), TW = ceil(Wo/m); Z (>= W), tmp ((m+2)*(m*TW+2)), O (16*Tg
    for m = 4; unused for m = 2).
    """
    cdef int N = x.shape[0], F = V.shape[1]
    cdef int t = 0, g0 = 0
    cdef Py_ssize_t o = 0, lo = 0, hi = 0, gi = 0  # initialised: Cython makes them firstprivate
    cdef cybn_team team
    if N == 0:
        return
    # The weight rows, then the groups one at a time, shared through a cybn_team (see
    # _common.h): the thread woken for the region joins ~45 us late, the caller takes more,
    # and no thread sleeps at the barrier between them or the caller at the end.
    cybn_team_init(&team)
    with nogil, parallel(num_threads=num_threads):
        lo = hi = 0
        t = threadid()
        while cybn_claim(&team, 0, F, &lo, &hi):
            for o in range(lo, hi):
                _weight_rows(w, V, flipped, o)
        cybn_team_barrier(&team)
        gi = cybn_claim1(&team, 1, (N + group - 1) // group)
        while gi >= 0:
            g0 = gi * group
            _wino_group(&x[0, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], &V[0, 0, 0], F,
                        &bias[0], has_bias, &y[0, 0, 0, 0], y.shape[2], y.shape[3], &U[t, 0],
                        &M[t, 0], &Z[t, 0], &tmp[t, 0], &O[t, 0], &gemm_seconds[t], ph, pw, m,
                        g0, g0 + group if g0 + group < N else N)
            gi = cybn_claim1(&team, 1, (N + group - 1) // group)
        cybn_team_end(&team)


def winograd_weights(const floating[:, :, :, ::1] w, floating[:, :, ::1] V, bint flipped,
                     int num_threads):
    """V[xi] = (G g G^T)[a, b] (xi = alpha*a + b) for every 3x3 kernel g of w (F, C, 3, 3), in
    double; alpha = sqrt(V.shape[0]) (4: F(2x2, 3x3), 6: F(4x4, 3x3)).

    V is (alpha^2, F, C); with ``flipped`` it is (alpha^2, C, F) built from the flipped kernels
    g[i, j] = w[f, c, 2 - i, 2 - j]: the weights of the dx conv (dy convolved with the flipped,
    transposed kernel). Rows of V (f, or c when flipped) are shared out to the threads. The
    conv kernels run the same rows (``_weight_rows``) inside their own parallel region; this
    entry is the transform alone, which tests/test_conv.py checks against G g G^T in float64.
    """
    cdef int o
    for o in prange(V.shape[1], num_threads=num_threads, schedule="static", nogil=True):
        _weight_rows(w, V, flipped, o)


cdef inline void _weight_rows(const floating[:, :, :, ::1] w, floating[:, :, ::1] V,
                              bint flipped, int o) noexcept nogil:
    """Row o of V (output channel f, or c when flipped) of ``winograd_weights``."""
    cdef int alpha = 4 if V.shape[0] == 16 else 6
    if floating is float:
        cybn_wino_weights_f(&w[0, 0, 0, 0], &V[0, 0, 0], w.shape[0], w.shape[1], flipped, alpha,
                            o, o + 1)
    else:
        cybn_wino_weights_d(&w[0, 0, 0, 0], &V[0, 0, 0], w.shape[0], w.shape[1], flipped, alpha,
                            o, o + 1)


cdef void _wino_dw_block(const floating* dy, int F, int Ho, int Wo, const floating* x, int C,
                         int H, int W, floating* dvp, double* dbp, floating* Ut, floating* Yt,
                         floating* Zt, floating* tmpt, double* gsec, int ph, int pw, int group,
                         int n0, int n1) noexcept nogil:
    """One image block n0..n1 of ``conv2d_winograd_backward``'s dW into its partials dvp
    (36*C*F) and dbp (F), groups of ``group`` images at a time, in this thread's scratch."""
    cdef int TH = (Ho + 3) // 4, TW = (Wo + 3) // 4, T = TH * TW
    cdef Py_ssize_t FC = <Py_ssize_t>F * C
    cdef int g0 = n0, g1, g, f, xi, Tg
    cdef floating beta
    cdef double tt
    for f in range(F):
        dbp[f] = 0
    while g0 < n1:
        g1 = g0 + group if g0 + group < n1 else n1
        Tg = (g1 - g0) * T
        for g in range(g0, g1):
            _wino_input(x + <Py_ssize_t>g * C * H * W, Ut, Zt, tmpt, C, H, W, ph, pw, TH, TW, Tg,
                        (g - g0) * T, 4)
            for f in range(F):
                dbp[f] += _sum(dy + (<Py_ssize_t>g * F + f) * Ho * Wo, <Py_ssize_t>Ho * Wo)
            if floating is float:
                cybn_wino4_dy_f(dy + <Py_ssize_t>g * F * Ho * Wo, F, Ho, Wo, TH, TW,
                                Yt + <Py_ssize_t>(g - g0) * T * F, _stream(<Py_ssize_t>F * Tg))
            else:
                cybn_wino4_dy_d(dy + <Py_ssize_t>g * F * Ho * Wo, F, Ho, Wo, TH, TW,
                                Yt + <Py_ssize_t>(g - g0) * T * F, _stream(<Py_ssize_t>F * Tg))
        beta = 0 if g0 == n0 else 1
        tt = CYBN_WTIME()
        for xi in range(36):
            gemm_rm(c'N', c'N', C, F, Tg, Ut + xi * _stream(<Py_ssize_t>C * Tg), Tg,
                     Yt + xi * _stream(<Py_ssize_t>F * Tg), F, beta, dvp + xi * FC, F)
        gsec[0] += CYBN_WTIME() - tt
        g0 = g1


cdef void _wino_dw_combine(const floating* dv_part, int nblocks, double* acc, floating* dweight,
                           int F, int C, int c) noexcept nogil:
    """Input channel c of dW: its 36 rows (xi, c) of the (nblocks, 36, C, F) partials added in
    block order in double, then G^T dV G of its kernels."""
    cdef Py_ssize_t o, stride = <Py_ssize_t>36 * F * C
    cdef int xi
    for xi in range(36):
        o = (<Py_ssize_t>xi * C + c) * F
        if floating is float:
            cybn_block_sum_f(dv_part + o, stride, nblocks, acc + o, F)
        else:
            cybn_block_sum_d(dv_part + o, stride, nblocks, acc + o, F)
    if floating is float:
        cybn_wino4_dw_f(acc, dweight, F, C, c)
    else:
        cybn_wino4_dw_d(acc, dweight, F, C, c)


cdef void _db_combine(const double[:, ::1] db_part, floating[::1] dbias) noexcept nogil:
    """db = the blocks' partial bias gradients added in block order."""
    cdef int f, blk
    cdef double s
    for f in range(dbias.shape[0]):
        s = 0
        for blk in range(db_part.shape[0]):
            s = s + db_part[blk, f]
        dbias[f] = <floating>s


def conv2d_winograd_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                             const floating[:, :, :, ::1] w, bint with_dx, floating[:, :, ::1] V,
                             floating[:, :, :, ::1] dx, floating[:, ::1] dv_part,
                             double[::1] dv_acc, double[:, ::1] db_part, floating[:, ::1] U,
                             floating[:, ::1] M, floating[:, ::1] Z, floating[:, ::1] tmp,
                             floating[:, ::1] O, floating[:, :, :, ::1] dweight,
                             floating[::1] dbias, double[::1] gemm_seconds, int ph, int pw,
                             int dx_group, int dw_group, int num_threads):
    """dweight, dbias (and with ``with_dx`` dx) of a 3x3 stride-1 conv by F(4x4, 3x3) in one
    parallel region.

    dx: the flipped weight transform into V (36, C, F), then ``conv2d_winograd``'s groups on dy
    with it (padding 2 - ph, 2 - pw; groups of ``dx_group``); without ``with_dx`` there are no
    groups and V, dx, O are not touched. The dx groups and the dW blocks are the tasks of one
    dynamic loop (groups first), so no thread waits for the other between the two.
    dW: per tile, dL/dV[xi] = (A dy A^T)[xi] * (B^T d B)[xi]; summed over the tiles of a group
    of images by 36 GEMMs dV[xi]^T (C, F) += U[xi] (C, Tg) @ M[xi] (Tg, F) (dy's transform
    channel-minor, see CYBN_WINO4_DY); dweight = G^T dV G. Fixed blocks of images
    (nblocks = dv_part.shape[0]) each own a partial dV^T (36*C*F) and db, combined in block
    order in double (dv_acc: 36*C*F) after the blocks' barrier: deterministic for any thread
    count. Within a block, images go in groups of ``dw_group``.
    Scratch per thread, rows at least the larger of the two passes' needs: U (36*(C*Tg+16)),
    M (36*(F*Tg+16)), Z (>= W zeros), tmp (6*(4*TW+2)); Tg = group*TH*TW; O (16*Tg of dx).
    """
    cdef int N = x.shape[0], C = x.shape[1], F = dy.shape[1], nblocks = dv_part.shape[0]
    cdef int ndx = (N + dx_group - 1) // dx_group if with_dx else 0
    cdef int t = 0, g0 = 0, blk = 0
    cdef Py_ssize_t o = 0, c = 0, lo = 0, hi = 0, task = 0  # initialised: see conv2d_winograd
    cdef cybn_team team
    if N == 0:
        return
    cybn_team_init(&team)
    with nogil, parallel(num_threads=num_threads):  # a cybn_team: see conv2d_winograd
        lo = hi = 0
        t = threadid()
        while cybn_claim(&team, 0, C if with_dx else 0, &lo, &hi):
            for o in range(lo, hi):
                _weight_rows(w, V, True, o)
        cybn_team_barrier(&team)
        # dx groups and dW blocks in one loop: a thread that finishes its share of the groups
        # takes blocks instead of waiting at a barrier between the two (they are independent;
        # each task writes only its own output)
        task = cybn_claim1(&team, 1, ndx + nblocks)
        while task >= 0:
            if task < ndx:
                g0 = task * dx_group
                _wino_group(&dy[0, 0, 0, 0], F, dy.shape[2], dy.shape[3], &V[0, 0, 0], C,
                            <floating*>NULL, False, &dx[0, 0, 0, 0], x.shape[2], x.shape[3],
                            &U[t, 0], &M[t, 0], &Z[t, 0], &tmp[t, 0], &O[t, 0],
                            &gemm_seconds[t], 2 - ph, 2 - pw, 4, g0,
                            g0 + dx_group if g0 + dx_group < N else N)
            else:
                blk = task - ndx
                _wino_dw_block(&dy[0, 0, 0, 0], F, dy.shape[2], dy.shape[3], &x[0, 0, 0, 0], C,
                               x.shape[2], x.shape[3], &dv_part[blk, 0], &db_part[blk, 0],
                               &U[t, 0], &M[t, 0], &Z[t, 0], &tmp[t, 0], &gemm_seconds[t], ph,
                               pw, dw_group, _block_start(N, blk, nblocks),
                               _block_start(N, blk + 1, nblocks))
            task = cybn_claim1(&team, 1, ndx + nblocks)
        cybn_team_barrier(&team)
        while cybn_claim(&team, 2, C, &lo, &hi):
            for c in range(lo, hi):
                _wino_dw_combine(&dv_part[0, 0], nblocks, &dv_acc[0], &dweight[0, 0, 0, 0], F,
                                 C, c)
        cybn_team_end(&team)
    _db_combine(db_part, dbias)
