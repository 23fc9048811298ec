"""Fully connected layer kernels: y = x W^T + b and its backward, as single-threaded BLAS GEMMs
inside cybn's own OpenMP split (no BLAS thread pool is ever woken).

Every product is cut into fixed tiles of its OUTPUT matrix (the caller derives the tile from
the shape only), each tile one GEMM over the whole inner dimension, and the tiles are handed to
the threads. A tile's values therefore come from the same GEMM call whatever the thread count or
the schedule: results are bit-identical for any number of threads, with no partial sums to
combine (dW's reduction over the batch runs inside each tile's GEMM, in BLAS's fixed order).

    forward  y  (N, out) = x (N, in) @ W^T (in, out)   (+ b, pre-filled, beta = 1)
    backward dx (N, in)  = dy (N, out) @ W (out, in)
             dW (out, in) = dy^T (out, N) @ x (N, in);  db = sum over n of dy (double, in order)

The caller holds the BLAS library at one thread (``cybn._threads.single_threaded_blas``) and
decides each product's thread count (``cybn.functional.linear``).
Kernels trust their inputs: call them only through ``cybn.functional.linear``.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy

from cybn._kernels._common cimport floating
from cybn._kernels._blas cimport gemm_rm


cdef inline Py_ssize_t _ntiles(Py_ssize_t size, Py_ssize_t tile) noexcept nogil:
    return (size + tile - 1) // tile


cdef void _tiled_gemm(char ta, char tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                      const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                      floating* c, Py_ssize_t ldc, const floating* bias, Py_ssize_t tile_m,
                      Py_ssize_t tile_n, int num_threads) noexcept nogil:
    """Row-major C (M, N) = op(A) @ op(B) (+ bias per column), one GEMM per tile_m x tile_n
    tile of C, the tiles shared by ``num_threads`` threads."""
    cdef Py_ssize_t tm = _ntiles(M, tile_m), tn = _ntiles(N, tile_n)
    cdef Py_ssize_t t, i0, j0, m, n, i
    cdef const floating* pa
    cdef const floating* pb
    cdef floating beta
    for t in prange(tm * tn, num_threads=num_threads, schedule='dynamic'):
        i0 = (t // tn) * tile_m
        j0 = (t % tn) * tile_n
        m = M - i0 if M - i0 < tile_m else tile_m
        n = N - j0 if N - j0 < tile_n else tile_n
        # op(A) rows i0.. : A stored (M, K) when not transposed, (K, M) when transposed
        pa = a + i0 * lda if ta == c'N' else a + i0
        pb = b + j0 if tb == c'N' else b + j0 * ldb
        beta = 0
        if bias != NULL:
            for i in range(m):
                memcpy(c + (i0 + i) * ldc + j0, bias + j0, n * sizeof(floating))
            beta = 1
        gemm_rm(ta, tb, <int>m, <int>n, <int>K, pa, <int>lda, pb, <int>ldb, beta,
                c + i0 * ldc + j0, <int>ldc)


def linear_forward(const floating[:, ::1] x, const floating[:, ::1] weight,
                   const floating[::1] bias, bint has_bias, floating[:, ::1] y,
                   Py_ssize_t tile_m, Py_ssize_t tile_n, int num_threads):
    """y = x @ weight.T (+ bias)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], F = weight.shape[0]
    if N == 0 or F == 0:
        return
    with nogil:
        _tiled_gemm(c'N', c'T', N, F, K, &x[0, 0] if K else NULL, K,
                    &weight[0, 0] if K else NULL, K, &y[0, 0], F,
                    &bias[0] if has_bias else NULL, tile_m, tile_n, num_threads)


def linear_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                    const floating[:, ::1] weight, floating[:, ::1] dx, floating[:, ::1] dweight,
                    floating[::1] dbias, Py_ssize_t dx_tile_m, Py_ssize_t dx_tile_n,
                    Py_ssize_t dw_tile_m, Py_ssize_t dw_tile_n, int dx_threads, int dw_threads):
    """dx = dy @ weight, dweight = dy.T @ x, dbias = dy summed over rows (in double, in order)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], F = weight.shape[0], n, f
    cdef const floating* pdy = &dy[0, 0] if N and F else NULL
    cdef const floating* px = &x[0, 0] if N and K else NULL
    cdef double s
    with nogil:
        if N and K:
            _tiled_gemm(c'N', c'N', N, K, F, pdy, F, &weight[0, 0] if F else NULL, K,
                        &dx[0, 0], K, NULL, dx_tile_m, dx_tile_n, dx_threads)
        if F and K:
            _tiled_gemm(c'T', c'N', F, K, N, pdy, F, px, K, &dweight[0, 0], K, NULL, dw_tile_m,
                        dw_tile_n, dw_threads)
        for f in range(F):  # N * F adds: too small to be worth a thread team
            s = 0
            for n in range(N):
                s = s + pdy[n * F + f]
            dbias[f] = <floating>s
