/* C pieces shared by the cybn kernels (included through _common.pxd).

   Attribute macros, each named for what it does:
   - CYBN_RESTRICT          the compiler's restrict qualifier (C99 restrict is not C++/MSVC).
   - CYBN_NO_TRAPPING_MATH  -fno-trapping-math for one function: lets GCC if-convert clamps
                            and selects into vector blends. It changes no result (no
                            reassociation, no flush-to-zero; it is not -ffast-math), only
                            whether FP exception flags count as side effects.
   - CYBN_CLONES_EXACT      also compile the function for AVX2 (no FMA) and pick the clone at
                            load time (ifunc, x86-64 Linux GCC): both clones give identical bits.
   - CYBN_CLONES_FMA        the same for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA): faster,
                            but FMA contraction may change the last bit between machines (each
                            machine always takes the same clone, so results stay deterministic
                            on it).
   Build with CFLAGS=-DCYBN_NO_CLONES to get the baseline code only.

   OpenMP:
   - CYBN_OPENMP_ENABLED    1 when the kernels are compiled with OpenMP, else 0;
   - CYBN_WTIME()           omp_get_wtime() (0.0 without OpenMP), for per-thread timings.

   Memory and bits: CYBN_PREFETCH_AHEAD(p, bytes); cybn_bits_T / cybn_from_bits_T /
   cybn_select_T (T = float, double): bit patterns and a branch-free select.

   Fixed-order double sums (the same bits on every ISA and build):
   - CYBN_HAVE_VECTOR_EXT   defined when GCC/clang vector extensions are available
                            (cybn_d4 = 4 doubles, cybn_f4 = 4 floats, cybn_d8 / cybn_f8 / cybn_l8 /
                            cybn_i8 = 8 doubles / floats / int64 / int32, CYBN_LOAD4_float/double
                            load 4 values of that type into a cybn_d4);
   - CYBN_SUM_4_4(a, b)     lanes a[0..3], b[0..3] combined by a fixed tree;
   - CYBN_SUM8(a)           the same tree over an array of 8 lanes (the scalar fallback);
   - CYBN_SUM4(a0, a1, a2, a3) four scalar accumulators, fixed tree.

   Work sharing inside a parallel region: cybn_team with cybn_claim / cybn_claim1 /
   cybn_team_barrier / cybn_team_end (see that section). */
#ifndef CYBN_COMMON_H
#define CYBN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#  include <omp.h>
#  define CYBN_OPENMP_ENABLED 1
#  define CYBN_WTIME() omp_get_wtime()
#else
#  define CYBN_OPENMP_ENABLED 0
#  define CYBN_WTIME() 0.0
#endif

#if defined(_MSC_VER)
#  define CYBN_RESTRICT __restrict
#else
#  define CYBN_RESTRICT __restrict__
#endif

#if defined(__GNUC__) && !defined(__clang__)
#  define CYBN_NO_TRAPPING_MATH __attribute__((optimize("no-trapping-math")))
#else
#  define CYBN_NO_TRAPPING_MATH
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(CYBN_NO_CLONES)
#  define CYBN_CLONES_EXACT __attribute__((target_clones("avx2", "default")))
/* avx512f enables FMA, so that clone is compiled without contraction to keep the bits. */
#  define CYBN_CLONES_EXACT_WIDE __attribute__((target_clones("avx512f", "avx2", "default"), \
                                                optimize("fp-contract=off")))
#  if __GNUC__ >= 11
#    define CYBN_CLONES_FMA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                         "default")))
#  else
#    define CYBN_CLONES_FMA
#  endif
#else
#  define CYBN_CLONES_EXACT
#  define CYBN_CLONES_EXACT_WIDE
#  define CYBN_CLONES_FMA
#endif

#if defined(__has_builtin)
#  if __has_builtin(__builtin_convertvector) && !defined(CYBN_NO_VECTOR_EXT)
#    define CYBN_HAVE_VECTOR_EXT 1
#  endif
#endif

#ifdef CYBN_HAVE_VECTOR_EXT
typedef double cybn_d4 __attribute__((vector_size(32)));
typedef float cybn_f4 __attribute__((vector_size(16)));
#  define CYBN_LOAD4_float(dst, p) do { cybn_f4 f_; memcpy(&f_, (p), sizeof f_); \
                                        (dst) = __builtin_convertvector(f_, cybn_d4); } while (0)
#  define CYBN_LOAD4_double(dst, p) memcpy(&(dst), (p), sizeof(cybn_d4))
typedef double cybn_d8 __attribute__((vector_size(64)));
typedef float cybn_f8 __attribute__((vector_size(32)));
typedef long long cybn_l8 __attribute__((vector_size(64)));
typedef int32_t cybn_i8 __attribute__((vector_size(32)));
#  define CYBN_LOAD8_float(dst, p) do { cybn_f8 f8_; memcpy(&f8_, (p), sizeof f8_); \
                                        (dst) = __builtin_convertvector(f8_, cybn_d8); } while (0)
#  define CYBN_LOAD8_double(dst, p) memcpy(&(dst), (p), sizeof(cybn_d8))
#endif

/* Software prefetch of the line `bytes` past p (a no-op where the compiler has no builtin). */
#if defined(__GNUC__) || defined(__clang__)
#  define CYBN_PREFETCH_AHEAD(p, bytes) __builtin_prefetch((const char *)(p) + (bytes))
#else
#  define CYBN_PREFETCH_AHEAD(p, bytes) ((void)0)
#endif

/* A float's or double's bit pattern and back (memcpy: no aliasing questions), and the
   branch-free select c ? a : b on the patterns (c is 0 or 1). */
static inline uint32_t cybn_bits_float(float v) { uint32_t u; memcpy(&u, &v, sizeof u); return u; }
static inline uint64_t cybn_bits_double(double v) { uint64_t u; memcpy(&u, &v, sizeof u); return u; }
static inline float cybn_from_bits_float(uint32_t u) { float v; memcpy(&v, &u, sizeof v); return v; }
static inline double cybn_from_bits_double(uint64_t u) { double v; memcpy(&v, &u, sizeof v); return v; }
static inline float cybn_select_float(uint32_t c, float a, float b) {
    return cybn_from_bits_float((cybn_bits_float(a) & -c) | (cybn_bits_float(b) & ~-c));
}
static inline double cybn_select_double(uint64_t c, double a, double b) {
    return cybn_from_bits_double((cybn_bits_double(a) & -c) | (cybn_bits_double(b) & ~-c));
}

/* Work sharing inside one parallel region without libgomp's barriers. Under the PASSIVE wait
   policy a thread that reaches a libgomp barrier first sleeps at once, and waking it costs
   ~45 us here, at every inner barrier and, when the caller is first, at the region's end
   (measured: an empty 2-thread region takes ~100 us). A cybn_team instead (zeroed by
   cybn_team_init before the region, shared by its threads):
   - cybn_claim(t, phase, n, &lo, &hi): the next piece [lo, hi) of tasks 0..n-1 of a phase
     (0..3), guided (a share of what is left), 0 when none is left; cybn_claim1(t, phase, n):
     the next single task, or -1 (for few large tasks);
   - cybn_team_flag(t) / t->flag: a flag any thread may raise (e.g. bad input seen);
   - cybn_team_barrier(t): waits for the team, spinning ~CYBN_SPIN_PAUSES pauses, then
     yielding the core until it arrives (it is working, not idle: the wait is the imbalance);
   - cybn_team_end(t): the caller (thread 0) waits there for the others, so it is the last to
     reach libgomp's end barrier and does not sleep in it.
   Which thread runs a task never changes what the task computes, so results stay the same
   for any thread count. Without OpenMP every call is the trivial one-thread case. */
#if defined(__unix__) || defined(__APPLE__)
#  include <sched.h>
#  define CYBN_YIELD() sched_yield()
#else
#  define CYBN_YIELD() ((void)0)
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#  define CYBN_PAUSE() __builtin_ia32_pause()
#elif defined(__GNUC__) && defined(__aarch64__)
#  define CYBN_PAUSE() __asm__ __volatile__("yield")
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#  include <intrin.h>
#  define CYBN_PAUSE() _mm_pause()
#else
#  define CYBN_PAUSE() ((void)0)
#endif
#define CYBN_SPIN_PAUSES 4000

/* The few atomics the team needs: GCC/clang builtins, or MSVC's Interlocked intrinsics (where
   a volatile access has acquire/release semantics). */
#if defined(__GNUC__) || defined(__clang__)
#  define CYBN_LOAD_ACQ(p) __atomic_load_n(p, __ATOMIC_ACQUIRE)
#  define CYBN_STORE_REL(p, v) __atomic_store_n(p, v, __ATOMIC_RELEASE)
#  define CYBN_ADD_INT(p, v) __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL)
#  define CYBN_FETCH_ADD_SSIZE(p, v) __atomic_fetch_add(p, v, __ATOMIC_RELAXED)
#  define CYBN_LOAD_SSIZE(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#  define CYBN_CAS_SSIZE(p, expected, desired) \
     __atomic_compare_exchange_n(p, expected, desired, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
#elif defined(_MSC_VER)
#  include <intrin.h>
#  define CYBN_LOAD_ACQ(p) (*(volatile const int *)(p))
#  define CYBN_STORE_REL(p, v) (*(volatile int *)(p) = (v))
#  define CYBN_ADD_INT(p, v) (_InterlockedExchangeAdd((volatile long *)(p), (v)) + (v))
#  define CYBN_FETCH_ADD_SSIZE(p, v) _InterlockedExchangeAdd64((volatile __int64 *)(p), (v))
#  define CYBN_LOAD_SSIZE(p) (*(volatile const Py_ssize_t *)(p))
static __inline int cybn_cas_ssize(Py_ssize_t *p, Py_ssize_t *expected, Py_ssize_t desired) {
    Py_ssize_t seen = _InterlockedCompareExchange64((volatile __int64 *)p, desired, *expected);
    if (seen == *expected) return 1;
    *expected = seen;
    return 0;
}
#  define CYBN_CAS_SSIZE(p, expected, desired) cybn_cas_ssize(p, expected, desired)
#endif

typedef struct { Py_ssize_t next[4]; int count, gen, done, flag; } cybn_team;

static inline void cybn_team_init(cybn_team *t) { memset(t, 0, sizeof *t); }

static inline int cybn_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int cybn_claim(cybn_team *t, int phase, Py_ssize_t n, Py_ssize_t *lo,
                             Py_ssize_t *hi) {
    Py_ssize_t *next = &t->next[phase], s = CYBN_LOAD_SSIZE(next), k;
    int nth = cybn_team_size();
    do {
        if (s >= n) return 0;
        k = (n - s) / (2 * nth);
        if (k < 1) k = 1;
    } while (!CYBN_CAS_SSIZE(next, &s, s + k));
    *lo = s;
    *hi = s + k;
    return 1;
}

static inline Py_ssize_t cybn_claim1(cybn_team *t, int phase, Py_ssize_t n) {
    Py_ssize_t i = CYBN_FETCH_ADD_SSIZE(&t->next[phase], 1);
    return i < n ? i : -1;
}

static inline void cybn_team_flag(cybn_team *t) { CYBN_STORE_REL(&t->flag, 1); }

/* Until *p differs from old (want_change) or reaches old (!want_change). */
static inline void cybn_wait_int(int *p, int old, int want_change) {
    for (long i = 0; (CYBN_LOAD_ACQ(p) == old) == want_change; i++) {
        if (i < CYBN_SPIN_PAUSES) CYBN_PAUSE(); else CYBN_YIELD();
    }
}

static inline void cybn_team_barrier(cybn_team *t) {
    int nth = cybn_team_size(), gen;
    if (nth <= 1) return;
    gen = CYBN_LOAD_ACQ(&t->gen);
    if (CYBN_ADD_INT(&t->count, 1) == nth) {
        CYBN_STORE_REL(&t->count, 0);
        CYBN_STORE_REL(&t->gen, gen + 1);
        return;
    }
    cybn_wait_int(&t->gen, gen, 1);
}

static inline void cybn_team_end(cybn_team *t) {
    int nth = cybn_team_size();
    if (nth <= 1) return;
#ifdef _OPENMP
    if (omp_get_thread_num() != 0) {
        CYBN_ADD_INT(&t->done, 1);
        return;
    }
#endif
    cybn_wait_int(&t->done, nth - 1, 0);
}

#define CYBN_SUM4(a0, a1, a2, a3) (((a0) + (a1)) + ((a2) + (a3)))
#define CYBN_SUM_4_4(a, b) (CYBN_SUM4((a)[0], (a)[1], (a)[2], (a)[3]) \
                            + CYBN_SUM4((b)[0], (b)[1], (b)[2], (b)[3]))
#define CYBN_SUM8(a) (CYBN_SUM4((a)[0], (a)[1], (a)[2], (a)[3]) \
                      + CYBN_SUM4((a)[4], (a)[5], (a)[6], (a)[7]))

#endif
