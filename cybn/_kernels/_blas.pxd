# Single-threaded BLAS GEMM in row-major terms, nogil (scipy.linalg.cython_blas). The caller
# holds the BLAS library at one thread (cybn._threads.single_threaded_blas): OpenMP provides
# the parallelism.
from scipy.linalg.cython_blas cimport sgemm, dgemm

from cybn._kernels._common cimport floating


cdef inline void gemm_rm(char ta, char tb, int m, int n, int k, const floating* a, int lda,
                         const floating* b, int ldb, floating beta, floating* c,
                         int ldc) noexcept nogil:
    """Row-major C (m, n) = op(A) (m, k) @ op(B) (k, n) + beta*C via column-major BLAS.

    A row-major matrix is its transpose in column-major storage, so C^T = op(B)^T op(A)^T:
    swap the operands and the m/n roles, keep the transpose flags.
    """
    cdef floating one = 1
    if m == 0 or n == 0:
        return
    # BLAS rejects leading dimensions < 1 even when a side is empty (k == 0)
    lda = lda if lda > 0 else 1
    ldb = ldb if ldb > 0 else 1
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &one, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &one, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
