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
   - CYBN_SUM4(a0, a1, a2, a3) four scalar accumulators, fixed tree. */
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
#    define CYBN_CLONES_FMA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
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

#define CYBN_SUM4(a0, a1, a2, a3) (((a0) + (a1)) + ((a2) + (a3)))
#define CYBN_SUM_4_4(a, b) (CYBN_SUM4((a)[0], (a)[1], (a)[2], (a)[3]) \
                            + CYBN_SUM4((b)[0], (b)[1], (b)[2], (b)[3]))
#define CYBN_SUM8(a) (CYBN_SUM4((a)[0], (a)[1], (a)[2], (a)[3]) \
                      + CYBN_SUM4((a)[4], (a)[5], (a)[6], (a)[7]))

#endif
