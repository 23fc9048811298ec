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

The backward's two products share one parallel loop over their tiles (one team wake-up).
The caller holds the BLAS library at one thread (``cybn._threads.single_threaded_blas``) and
decides the thread count (``cybn.functional.linear``).
Kernels trust their inputs: call them only through ``cybn.functional.linear``.
"""
import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy

from cybn._kernels._common cimport floating
from cybn._kernels._blas cimport gemm_rm


cdef inline Py_ssize_t _ntiles(Py_ssize_t size, Py_ssize_t tile) noexcept nogil:
    return (size + tile - 1) // tile


cdef inline void _gemm_tile(char ta, char tb, Py_ssize_t t, Py_ssize_t M, Py_ssize_t N,
                            Py_ssize_t K, const floating* a, Py_ssize_t lda, const floating* b,
                            Py_ssize_t ldb, floating* c, Py_ssize_t ldc, const floating* bias,
                            Py_ssize_t tile_m, Py_ssize_t tile_n) noexcept nogil:
    """Tile t (row-major over the tile_m x tile_n tiles) of row-major C (M, N) = op(A) @ op(B)
    (+ bias per column), one GEMM."""
    cdef Py_ssize_t tn = _ntiles(N, tile_n)
    cdef Py_ssize_t i0 = (t // tn) * tile_m, j0 = (t % tn) * tile_n, i
    cdef Py_ssize_t m = M - i0 if M - i0 < tile_m else tile_m
    cdef Py_ssize_t n = N - j0 if N - j0 < tile_n else tile_n
    # op(A) rows i0.. : A stored (M, K) when not transposed, (K, M) when transposed
    cdef const floating* pa = a + i0 * lda if ta == c'N' else a + i0
    cdef const floating* pb = b + j0 if tb == c'N' else b + j0 * ldb
    cdef floating beta = 0
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
    cdef Py_ssize_t t
    cdef const floating* px = &x[0, 0] if K else NULL
    cdef const floating* pw = &weight[0, 0] if K else NULL
    cdef const floating* pb = &bias[0] if has_bias else NULL
    for t in prange(_ntiles(N, tile_m) * _ntiles(F, tile_n), num_threads=num_threads,
                    schedule='dynamic', nogil=True):
        _gemm_tile(c'N', c'T', t, N, F, K, px, K, pw, K, &y[0, 0], F, pb, tile_m, tile_n)


def linear_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                    const floating[:, ::1] weight, floating[:, ::1] dx, floating[:, ::1] dweight,
                    floating[::1] dbias, Py_ssize_t dx_tile_m, Py_ssize_t dx_tile_n,
                    Py_ssize_t dw_tile_m, Py_ssize_t dw_tile_n, int num_threads):
    """dx = dy @ weight, dweight = dy.T @ x, dbias = dy summed over rows (in double, in order)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], F = weight.shape[0], n, f, t
    cdef const floating* pdy = &dy[0, 0] if N and F else NULL
    cdef const floating* px = &x[0, 0] if N and K else NULL
    cdef const floating* pw = &weight[0, 0] if F and K else NULL
    # the tiles of both products in one loop (one parallel region): dx's first, then dW's
    cdef Py_ssize_t ndx = _ntiles(N, dx_tile_m) * _ntiles(K, dx_tile_n) if N and K else 0
    cdef Py_ssize_t ndw = _ntiles(F, dw_tile_m) * _ntiles(K, dw_tile_n) if F and K else 0
    for t in prange(ndx + ndw, num_threads=num_threads, schedule='dynamic', nogil=True):
        if t < ndx:
            _gemm_tile(c'N', c'N', t, N, K, F, pdy, F, pw, K, &dx[0, 0], K, NULL, dx_tile_m,
                       dx_tile_n)
        else:
            _gemm_tile(c'T', c'N', t - ndx, F, K, N, pdy, F, px, K, &dweight[0, 0], K, NULL,
                       dw_tile_m, dw_tile_n)
    cdef double[::1] acc = np.zeros(F, dtype=np.float64)
    with nogil:
        # N * F adds, too few for a thread team: row by row (contiguous, vectorised over f),
        # each column's sum still in row order
        for n in range(N):
            for f in range(F):
                acc[f] = acc[f] + pdy[n * F + f]
        for f in range(F):
            dbias[f] = <floating>acc[f]
