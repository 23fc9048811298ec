"""2-D max-pooling kernels (forward with argmax indices, backward scatter).

Data layout: (P, H, W) planes with P = N*C, C-contiguous. Indices are int64 flat positions
h*W + w inside the input plane (PyTorch's convention).

Semantics (mirrored exactly by ``cybn.reference.pool``):
- positions outside the input (padding) are ignored, which is the same as -inf padding;
  the caller guarantees every window holds at least one real element (padding <= kernel//2);
- a window's index starts at its first in-bounds element and moves only on a STRICTLY larger
  value, so ties keep the first maximum in row-major scan order (and an all -inf window points
  at its first element);
- a NaN counts as larger than everything: the first NaN of a window wins and is propagated.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from cybn._kernels._common cimport floating


# The 2x2/stride-2 row kernels are plain C so that gcc/clang auto-vectorise them: written in
# Cython, the NaN-aware selects become branches, which mispredict on real activations (6x slower).
# Rule (same as _beats below): scan a, b, c, d in row-major order and move on a strictly larger
# value or on the window's first NaN. The in-window offset is int32 (the caller checks
# W < 2**31): with an int64 offset gcc no longer vectorises the loops.
# float: one pass. double: gcc will not vectorise that one pass, so two passes over the
# (L1-resident) row pair: (1) the max; (2) the offset of the FIRST element equal to it (or the
# first NaN), which is the element (1) chose, since (1) only moves on a strictly larger value.
cdef extern from *:
    """
    static void cybn_pool2x2_row_f(const float* CYBN_RESTRICT r0, float* CYBN_RESTRICT yo,
                                   int64_t* CYBN_RESTRICT io, ptrdiff_t Wo, ptrdiff_t W,
                                   int64_t base) {
        const float* CYBN_RESTRICT r1 = r0 + W;
        const int32_t w32 = (int32_t)W;
        ptrdiff_t j;
        for (j = 0; j < Wo; j++) {
            float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
            float m = a;
            int32_t k = 0, t;
            t = (b > m || (b != b && m == m)); m = t ? b : m; k = t ? 1 : k;
            t = (c > m || (c != c && m == m)); m = t ? c : m; k = t ? w32 : k;
            t = (d > m || (d != d && m == m)); m = t ? d : m; k = t ? w32 + 1 : k;
            yo[j] = m;
            io[j] = base + 2 * j + k;
        }
    }
    static void cybn_pool2x2_row_d(const double* CYBN_RESTRICT r0, double* CYBN_RESTRICT yo,
                                   int64_t* CYBN_RESTRICT io, ptrdiff_t Wo, ptrdiff_t W,
                                   int64_t base) {
        const double* CYBN_RESTRICT r1 = r0 + W;
        const int32_t w32 = (int32_t)W;
        ptrdiff_t j;
        for (j = 0; j < Wo; j++) {
            double a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
            double m = a;
            m = (b > m || (b != b && m == m)) ? b : m;
            m = (c > m || (c != c && m == m)) ? c : m;
            m = (d > m || (d != d && m == m)) ? d : m;
            yo[j] = m;
        }
        for (j = 0; j < Wo; j++) {
            double a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], m = yo[j];
            int32_t nan_m = (m != m);
            int32_t ea = (a == m) | ((a != a) & nan_m);
            int32_t eb = (b == m) | ((b != b) & nan_m);
            int32_t ec = (c == m) | ((c != c) & nan_m);
            int32_t k = ec ? w32 : w32 + 1;
            k = eb ? 1 : k;
            k = ea ? 0 : k;
            io[j] = base + 2 * j + k;
        }
    }
    """
    void cybn_pool2x2_row_f(const float* r0, float* yo, int64_t* io, Py_ssize_t Wo, Py_ssize_t W,
                            int64_t base) noexcept nogil
    void cybn_pool2x2_row_d(const double* r0, double* yo, int64_t* io, Py_ssize_t Wo, Py_ssize_t W,
                            int64_t base) noexcept nogil


cdef inline bint _beats(floating v, floating best) noexcept nogil:
    # v > best, or v is the window's first NaN (best == best means best is not NaN yet).
    return v > best or (v != v and best == best)


def max_pool2d_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, int64_t[:, :, ::1] idx,
                       int kh, int kw, int sh, int sw, int ph, int pw, int num_threads):
    """Fill y and idx (P, Ho, Wo). Parallel over the P*Ho output rows: rows are independent and
    there are enough of them to balance threads even for batch 1 / few channels."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t Ho = y.shape[1], Wo = y.shape[2]
    cdef Py_ssize_t row, p, oh, ow, h, w, h0, w0, hs, he, ws, we, bi
    cdef floating v, best
    cdef floating neg_inf = -float("inf")
    if P == 0 or Ho == 0 or Wo == 0:
        return
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and W < 2147483647:
        # The CNN's pool: fixed 2x2 window, no bounds logic, vectorised C row kernel (above),
        # same tie/NaN rules as the generic loop below.
        for row in prange(P * Ho, nogil=True, num_threads=num_threads, schedule='static'):
            p = row // Ho
            oh = row - p * Ho
            if floating is float:
                cybn_pool2x2_row_f(&x[p, 2 * oh, 0], &y[p, oh, 0], &idx[p, oh, 0], Wo, W, 2 * oh * W)
            else:
                cybn_pool2x2_row_d(&x[p, 2 * oh, 0], &y[p, oh, 0], &idx[p, oh, 0], Wo, W, 2 * oh * W)
        return
    for row in prange(P * Ho, nogil=True, num_threads=num_threads, schedule='static'):
        p = row // Ho
        oh = row - p * Ho
        h0 = oh * sh - ph
        hs = h0 if h0 > 0 else 0
        he = h0 + kh if h0 + kh < H else H
        for ow in range(Wo):
            w0 = ow * sw - pw
            ws = w0 if w0 > 0 else 0
            we = w0 + kw if w0 + kw < W else W
            best = neg_inf
            bi = hs * W + ws
            for h in range(hs, he):
                for w in range(ws, we):
                    v = x[p, h, w]
                    if _beats(v, best):
                        best = v
                        bi = h * W + w
            y[p, oh, ow] = best
            idx[p, oh, ow] = bi


def max_pool2d_backward(const floating[:, ::1] dy, const int64_t[:, ::1] idx, floating[:, ::1] dx,
                        int num_threads):
    """dx (P, H*W) = scatter-add of dy (P, Ho*Wo) at idx. One thread owns a whole plane, so the
    accumulation (overlapping windows when stride < kernel) needs no atomics and is deterministic.

    Out-of-range indices are skipped and counted; the count is returned so the caller can raise
    (a bad index never writes outside dx)."""
    cdef Py_ssize_t P = dy.shape[0], L = dy.shape[1], HW = dx.shape[1]
    cdef Py_ssize_t p, j
    cdef int64_t k
    cdef Py_ssize_t bad = 0
    if P == 0:
        return 0
    for p in prange(P, nogil=True, num_threads=num_threads, schedule='static'):
        # zero the plane here (not np.zeros) so it is written while hot in this thread's cache
        if HW > 0:
            memset(&dx[p, 0], 0, HW * sizeof(floating))
        for j in range(L):
            k = idx[p, j]
            if <unsigned long long> k < <unsigned long long> HW:
                dx[p, k] += dy[p, j]
            else:
                bad += 1
    return bad
