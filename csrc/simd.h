// Compiler and instruction-set macros shared by the CPU kernels. The extension is built for
// the baseline ISA (x86-64: SSE2); hot loops additionally get AVX2/AVX-512 code, chosen on the
// running CPU, in one of two ways:
//   - MULACT_CLONES_AVX2 / MULACT_CLONES_AVX512: GCC target_clones, one body compiled per ISA
//     and picked once at load time (ifunc, so GCC on Linux only);
//   - MULACT_TARGET_AVX2_FMA on a hand-written twin (intrinsics from <immintrin.h>) that the
//     kernel selects itself with mulact::cpu_has_avx2_fma(); MULACT_X86_SIMD says both exist.
// MULACT_INLINE forces inlining, so that a helper is compiled inside each ISA clone that calls
// it rather than once for the baseline ISA.
//
// A file that defines MULACT_NO_TRAPPING_MATH before including this header first compiles
// without trapping math: no kernel reads the FP exception flags, and without it GCC refuses to
// if-convert (and so to vectorise) loops whose selects guard arithmetic that might raise one.
// It must come before the other includes so that their inline functions share the setting.
#pragma once

#if defined(MULACT_NO_TRAPPING_MATH) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__GNUC__)
#define MULACT_INLINE inline __attribute__((always_inline))
#else
#define MULACT_INLINE inline
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define MULACT_X86_SIMD 1
#define MULACT_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
#include <immintrin.h>
#else
#define MULACT_X86_SIMD 0
#define MULACT_TARGET_AVX2_FMA
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MULACT_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#define MULACT_CLONES_AVX512 __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULACT_CLONES_AVX2
#define MULACT_CLONES_AVX512
#endif

namespace mulact {

// Whether the MULACT_TARGET_AVX2_FMA twins may run on this CPU.
inline bool cpu_has_avx2_fma() {
#if MULACT_X86_SIMD
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace mulact

// The AVX2/FMA twin of a function where the CPU runs it, else its baseline build (the twin
// need not exist where MULACT_X86_SIMD is 0).
#if MULACT_X86_SIMD
#define MULACT_PICK(base, avx2_fma) (::mulact::cpu_has_avx2_fma() ? (avx2_fma) : (base))
#else
#define MULACT_PICK(base, avx2_fma) (base)
#endif
