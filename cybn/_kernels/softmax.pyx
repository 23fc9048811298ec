"""Row-wise softmax, log-softmax and fused softmax cross-entropy kernels.

Every row is reduced by exactly one thread (prange over rows, static schedule), so the result
does not depend on the thread count. Per row: max (vectorised; it also prefetches the next
row), exp(x - max) written straight into the output (the row stays in L1 for the following
passes) and summed in double in fixed lanes (16 up to the row's last multiple of 16, then 4),
then one scaling pass.
Cross-entropy keeps the per-row losses in a double buffer and sums them serially in row order
(deterministic mean).

exp is a branch-free inline C function (Cody-Waite range reduction + polynomial, ~1-2 ulp,
no -ffast-math) so GCC can vectorise the exp loop; libm's exp is a scalar call and was the
whole cost. The row primitives are small C functions in the block below (one per dtype, also
cloned for AVX-512 and for AVX2+FMA on x86-64 Linux); Cython keeps the prange over rows and
the dispatch. The inputs of exp are always x - rowmax <= 0; results below the smallest normal
number are returned as 0. ``num_threads`` is used as given (``cybn.functional`` decides whether
threading pays). Kernels trust their inputs: call them only through ``cybn.functional``.
"""
from cython.parallel cimport prange
from libc.math cimport log
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from cybn._kernels._common cimport floating

cdef extern from *:
    """
    /* CYBN_NO_TRAPPING_MATH (from _common.h) lets GCC if-convert the clamps below into vector
       selects (with trapping math a compare "may trap", so the loop keeps its branches and
       stays scalar). The row functions are CYBN_CLONES_FMA: the exp loop runs ~2x faster with
       AVX2+FMA than on baseline SSE2, and a 1000-class row another ~4% faster with AVX-512.
       FMA may change the last bit between machines, well inside the tests' bounds. */

    /* exp(x) for x <= 0 in float: k = round(x/ln2) by the 1.5*2^23 trick (pure arithmetic,
       vectorises on plain SSE2), r = x - k ln2 in two parts (k*ln2_hi exact), cephes
       degree-6 polynomial on |r| <= ln2/2, scaled by 2^k built from exponent bits.
       x < -87 -> 0 (true value < 1.7e-38 ~ FLT_MIN); NaN -> NaN. */
    static inline CYBN_NO_TRAPPING_MATH float cybn_expf(float x) {
        float xc = x < -87.0f ? -87.0f : x;
        float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        float r = xc - kf * 0.693359375f;
        r = r - kf * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        float y = (p * r) * r + r + 1.0f;
        int32_t bits = ((int32_t)kf + 127) << 23;
        float s;
        memcpy(&s, &bits, sizeof s);
        y = y * s;
        return x < -87.0f ? 0.0f : y;
    }
    /* The same in double: Taylor to degree 13 on |r| <= ln2/2 (truncation < 5e-18 relative);
       x < -708 -> 0 (true value < 3.3e-308 ~ DBL_MIN). */
    static inline CYBN_NO_TRAPPING_MATH double cybn_expd(double x) {
        double xc = x < -708.0 ? -708.0 : x;
        double kf = (xc * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;
        double r = xc - kf * 6.93145751953125e-1;
        r = r - kf * 1.42860682030941723212e-6;
        double p = 1.0 / 6227020800.0;
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        double y = (p * r) * r + r + 1.0;
        int64_t bits = ((int64_t)kf + 1023) << 52;
        double s;
        memcpy(&s, &bits, sizeof s);
        y = y * s;
        return x < -708.0 ? 0.0 : y;
    }

    /* The row max. Its order does not matter: the value is unique up to the sign of a zero,
       which changes no exp(x - m), and a NaN or inf makes the whole row NaN either way (NaN
       lanes never win a compare). So it runs in 8-lane vectors, four at a time. */
    #ifdef CYBN_HAVE_VECTOR_EXT
    #define CYBN_VMAX(VI, a, b) (__typeof__(a))((((a) > (b)) & (VI)(a)) | (~((a) > (b)) & (VI)(b)))
    #define CYBN_ROWMAX(T, S, VT, VI)                                                         \
    static CYBN_CLONES_FMA CYBN_NO_TRAPPING_MATH T cybn_rowmax_##S(const T *x, Py_ssize_t c) { \
        VT m = (VT){0} + x[0], v0, v1, v2, v3;                                              \
        Py_ssize_t j = 0, k;                                                                \
        for (; j + 32 <= c; j += 32) {                                                      \
            for (k = 0; k < 32 * (Py_ssize_t)sizeof(T); k += 64)  /* the next row, ahead */  \
                CYBN_PREFETCH_AHEAD(x + j + c, k);                                          \
            memcpy(&v0, x + j, sizeof v0); memcpy(&v1, x + j + 8, sizeof v1);               \
            memcpy(&v2, x + j + 16, sizeof v2); memcpy(&v3, x + j + 24, sizeof v3);         \
            v0 = CYBN_VMAX(VI, v0, v1); v2 = CYBN_VMAX(VI, v2, v3);                         \
            m = CYBN_VMAX(VI, m, CYBN_VMAX(VI, v0, v2));                                    \
        }                                                                                   \
        for (; j + 8 <= c; j += 8) { memcpy(&v0, x + j, sizeof v0); m = CYBN_VMAX(VI, m, v0); } \
        T r = m[0];                                                                         \
        for (k = 1; k < 8; k++) r = m[k] > r ? m[k] : r;                                    \
        for (; j < c; j++) r = x[j] > r ? x[j] : r;                                         \
        return r;                                                                           \
    }
    CYBN_ROWMAX(float, f, cybn_f8, cybn_i8)
    CYBN_ROWMAX(double, d, cybn_d8, cybn_l8)
    #else
    #define CYBN_ROWMAX(T, S)                                                                 \
    static T cybn_rowmax_##S(const T *x, Py_ssize_t c) {                                      \
        T r = x[0];                                                                         \
        for (Py_ssize_t j = 1; j < c; j++) r = x[j] > r ? x[j] : r;                         \
        return r;                                                                           \
    }
    CYBN_ROWMAX(float, f)
    CYBN_ROWMAX(double, d)
    #endif

    /* Four double accumulators, lane k taking elements 4i + k: one 4-wide vector where the
       compiler has vector extensions (GCC's own choice is two 2-wide ones). */
    #ifdef CYBN_HAVE_VECTOR_EXT
    typedef cybn_d4 cybn_lanes4;
    #define CYBN_LANES4_ADD(T, a, p) do { cybn_d4 v_; CYBN_LOAD4_##T(v_, p); (a) += v_; } while (0)
    #define CYBN_LANES4_FOLD(a, q) ((a) = ((q)[0] + (q)[1]) + ((q)[2] + (q)[3]))
    #else
    typedef double cybn_lanes4[4];
    #define CYBN_LANES4_ADD(T, a, p) do { for (int k_ = 0; k_ < 4; k_++) (a)[k_] += (p)[k_]; } while (0)
    #define CYBN_LANES4_FOLD(a, q) do { for (int k_ = 0; k_ < 4; k_++)                      \
        (a)[k_] = ((q)[0][k_] + (q)[1][k_]) + ((q)[2][k_] + (q)[3][k_]); } while (0)
    #endif

    /* Row primitives, one copy per dtype. Fixed accumulator lanes (combined in a fixed
       order) let the reductions vectorise without reassociating anything. */
    #define CYBN_ROW_KERNELS(T, S, EXP)                                                      \
    /* Exps and their sum 256 at a time: the sum's dependency chains then overlap the next    \
       block's exps (the same lanes in the same order as one sum after all the exps). Up to    \
       c16 = c rounded down to 16 the sum runs in 16 lanes (q[i][k] takes elements 16t+4i+k), \
       four independent chains: one 4-lane chain was half the time of a 1000-class row. The   \
       16 lanes fold to 4 by a fixed tree; the rest continues in those 4 lanes, then lane 0,   \
       so rows under 16 classes sum exactly as before. */                                     \
    static CYBN_CLONES_FMA CYBN_NO_TRAPPING_MATH double cybn_expsum_##S(const T *CYBN_RESTRICT x, T *CYBN_RESTRICT e, T m,         \
                                           Py_ssize_t c) {                                  \
        cybn_lanes4 a = {0}, q[4] = {{0}};                                                  \
        Py_ssize_t j0, j, c16 = c & ~(Py_ssize_t)15, c4 = c & ~(Py_ssize_t)3, end;         \
        for (j0 = 0; j0 < c16; j0 = end) {                                                  \
            end = j0 + 256 < c16 ? j0 + 256 : c16;                                          \
            for (j = j0; j < end; j++) e[j] = EXP(x[j] - m);                                \
            for (j = j0; j < end; j += 16) {                                                \
                CYBN_LANES4_ADD(T, q[0], e + j); CYBN_LANES4_ADD(T, q[1], e + j + 4);       \
                CYBN_LANES4_ADD(T, q[2], e + j + 8); CYBN_LANES4_ADD(T, q[3], e + j + 12);  \
            }                                                                               \
        }                                                                                   \
        if (c16) CYBN_LANES4_FOLD(a, q);                                                    \
        for (j = c16; j < c4; j++) e[j] = EXP(x[j] - m);                                    \
        for (j = c16; j < c4; j += 4) CYBN_LANES4_ADD(T, a, e + j);                         \
        for (j = c4; j < c; j++) { e[j] = EXP(x[j] - m); a[0] += e[j]; }                    \
        return CYBN_SUM4(a[0], a[1], a[2], a[3]);                                           \
    }                                                                                       \
    /* y[j] = x[j] * a (product in double) */                                               \
    static CYBN_CLONES_FMA CYBN_NO_TRAPPING_MATH void cybn_scale_##S(const T *CYBN_RESTRICT x, T *CYBN_RESTRICT y, double a,       \
                                        Py_ssize_t c) {                                     \
        for (Py_ssize_t j = 0; j < c; j++) y[j] = (T)(x[j] * a);                            \
    }                                                                                       \
    /* e[j] *= a in place (product in double) */                                             \
    static CYBN_CLONES_FMA CYBN_NO_TRAPPING_MATH void cybn_scale_inplace_##S(T *e, double a, Py_ssize_t c) {             \
        for (Py_ssize_t j = 0; j < c; j++) e[j] = (T)(e[j] * a);                            \
    }                                                                                       \
    /* out[j] = (x[j] - m) - ls */                                                          \
    static CYBN_CLONES_FMA CYBN_NO_TRAPPING_MATH void cybn_logsm_##S(const T *CYBN_RESTRICT x, T *CYBN_RESTRICT out, T m,          \
                                        double ls, Py_ssize_t c) {                          \
        for (Py_ssize_t j = 0; j < c; j++) out[j] = (T)((double)(x[j] - m) - ls);           \
    }

    CYBN_ROW_KERNELS(float, f, cybn_expf)
    CYBN_ROW_KERNELS(double, d, cybn_expd)
    """
    float cybn_rowmax_f(const float* x, Py_ssize_t c) noexcept nogil
    double cybn_rowmax_d(const double* x, Py_ssize_t c) noexcept nogil
    double cybn_expsum_f(const float* x, float* e, float m, Py_ssize_t c) noexcept nogil
    double cybn_expsum_d(const double* x, double* e, double m, Py_ssize_t c) noexcept nogil
    void cybn_scale_f(const float* x, float* y, double a, Py_ssize_t c) noexcept nogil
    void cybn_scale_d(const double* x, double* y, double a, Py_ssize_t c) noexcept nogil
    void cybn_scale_inplace_f(float* e, double a, Py_ssize_t c) noexcept nogil
    void cybn_scale_inplace_d(double* e, double a, Py_ssize_t c) noexcept nogil
    void cybn_logsm_f(const float* x, float* out, float m, double ls, Py_ssize_t c) noexcept nogil
    void cybn_logsm_d(const double* x, double* out, double m, double ls, Py_ssize_t c) noexcept nogil

cdef inline floating _row_max(const floating* x, Py_ssize_t c) noexcept nogil:
    if floating is float:
        return cybn_rowmax_f(x, c)
    else:
        return cybn_rowmax_d(x, c)


cdef inline double _row_exp_sum(const floating* x, floating* e, floating m, Py_ssize_t c) noexcept nogil:
    if floating is float:
        return cybn_expsum_f(x, e, m, c)
    else:
        return cybn_expsum_d(x, e, m, c)


cdef inline void _row_scale(const floating* x, floating* y, double a, Py_ssize_t c) noexcept nogil:
    """y = x * a; x and y must not overlap (restrict in C)."""
    if floating is float:
        cybn_scale_f(x, y, a, c)
    else:
        cybn_scale_d(x, y, a, c)


cdef inline void _row_scale_inplace(floating* e, double a, Py_ssize_t c) noexcept nogil:
    if floating is float:
        cybn_scale_inplace_f(e, a, c)
    else:
        cybn_scale_inplace_d(e, a, c)


# Every kernel below runs its rows in a plain loop at one thread: an OpenMP region costs 2-3 us
# to set up even for a team of one (measured at (128, 10): the cross-entropy forward kernel 7.7 ->
# 4.8 us, its backward 3.0 -> 1.0 us), more than a small batch's work. Each row is the same
# function either way.

cdef inline void _softmax_row(const floating* x, floating* out, Py_ssize_t c) noexcept nogil:
    cdef double s = _row_exp_sum(x, out, _row_max(x, c), c)
    _row_scale_inplace(out, 1.0 / s, c)


cdef inline void _log_softmax_row(const floating* x, floating* out, Py_ssize_t c) noexcept nogil:
    cdef floating m = _row_max(x, c)
    cdef double ls = log(_row_exp_sum(x, out, m, c))
    # subtracting log(s) from the exact-ish (x - m) keeps precision for large logits
    if floating is float:
        cybn_logsm_f(x, out, m, ls, c)
    else:
        cybn_logsm_d(x, out, m, ls, c)


cdef inline double _xent_row(const floating* z, floating* p, int64_t label,
                             Py_ssize_t c) noexcept nogil:
    """p = softmax(z); returns the row's loss."""
    cdef floating m = _row_max(z, c)
    cdef double s = _row_exp_sum(z, p, m, c)
    _row_scale_inplace(p, 1.0 / s, c)
    # loss = lse - z_label = log(s) - (z_label - m): no large cancellation
    return log(s) - (<double>z[label] - m)


cdef inline void _xent_grad_row(const floating* p, floating* dx, int64_t label, double scale,
                                Py_ssize_t c) noexcept nogil:
    _row_scale(p, dx, scale, c)
    dx[label] = <floating>((<double>p[label] - 1.0) * scale)


def softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    """out = softmax(x) row-wise."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], i
    with nogil:
        if num_threads == 1:
            for i in range(n):
                _softmax_row(&x[i, 0], &out[i, 0], c)
        else:
            for i in prange(n, num_threads=num_threads, schedule='static'):
                _softmax_row(&x[i, 0], &out[i, 0], c)


def log_softmax_rows(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    """out = (x - max) - log(sum exp(x - max)) row-wise (the exps go to ``out`` as scratch)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], i
    with nogil:
        if num_threads == 1:
            for i in range(n):
                _log_softmax_row(&x[i, 0], &out[i, 0], c)
        else:
            for i in prange(n, num_threads=num_threads, schedule='static'):
                _log_softmax_row(&x[i, 0], &out[i, 0], c)


def xent_forward(const floating[:, ::1] logits, const int64_t[::1] labels,
                 floating[:, ::1] probs, int num_threads):
    """probs = softmax(logits); returns mean_i (log sum_j exp(z_ij) - z_i,label_i) as a double."""
    cdef Py_ssize_t n = logits.shape[0], c = logits.shape[1], i
    cdef double total = 0.0
    cdef double* row_loss = <double*>malloc(n * sizeof(double))
    if row_loss == NULL:
        raise MemoryError()
    try:
        with nogil:
            if num_threads == 1:
                for i in range(n):
                    row_loss[i] = _xent_row(&logits[i, 0], &probs[i, 0], labels[i], c)
            else:
                for i in prange(n, num_threads=num_threads, schedule='static'):
                    row_loss[i] = _xent_row(&logits[i, 0], &probs[i, 0], labels[i], c)
            for i in range(n):  # fixed order: the same sum for any thread count
                total += row_loss[i]
    finally:
        free(row_loss)
    return total / n


def xent_backward(const floating[:, ::1] probs, const int64_t[::1] labels,
                  floating[:, ::1] dx, double scale, int num_threads):
    """dx = scale * (probs - onehot(labels)), scale = grad / N."""
    cdef Py_ssize_t n = probs.shape[0], c = probs.shape[1], i
    with nogil:
        if num_threads == 1:
            for i in range(n):
                _xent_grad_row(&probs[i, 0], &dx[i, 0], labels[i], scale, c)
        else:
            for i in prange(n, num_threads=num_threads, schedule='static'):
                _xent_grad_row(&probs[i, 0], &dx[i, 0], labels[i], scale, c)


def first_bad_label(const int64_t[::1] labels, int64_t num_classes):
    """Index of the first label outside [0, num_classes), or -1 (one pass, no temporaries)."""
    cdef Py_ssize_t i, n = labels.shape[0], bad = -1
    with nogil:
        for i in range(n):
            if labels[i] < 0 or labels[i] >= num_classes:
                bad = i
                break
    return bad
