// Shared helpers for the CPU kernels: dtype codes, half/bfloat16 conversion, pointer casts,
// OpenMP helpers. The Python side (mulact/ops/_cpp.py) passes tensors as raw pointers plus
// a dtype code; these helpers turn them back into typed views.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mulact {

// Keep in sync with mulact/ops/_cpp.py::DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3, kInt32 = 4, kInt64 = 5 };

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }
inline float to_float(BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float to_float(Half v) {
  // IEEE binary16 -> binary32, subnormals and inf/nan included.
  uint32_t h = v.bits;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) { man <<= 1; --exp; }
      man &= 0x3FFu;
      u = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 0x1F) {
    u = sign | 0x7F800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float -> storage type, round-to-nearest-even.
template <typename T> inline T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline BFloat16 from_float<BFloat16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu)) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}
template <> inline Half from_float<Half>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t au = u & 0x7FFFFFFFu;
  if (au >= 0x7F800000u) return Half{static_cast<uint16_t>(sign | 0x7C00u | (au > 0x7F800000u ? 0x200u : 0))};
  if (au >= 0x477FF000u) return Half{static_cast<uint16_t>(sign | 0x7C00u)};  // overflow -> inf
  if (au < 0x38800000u) {  // result is subnormal or zero
    float f;
    std::memcpy(&f, &au, sizeof f);
    f += 0.5f;  // align the mantissa so the FPU rounds to the half subnormal grid
    uint32_t r;
    std::memcpy(&r, &f, sizeof r);
    return Half{static_cast<uint16_t>(sign | (r - 0x3F000000u))};
  }
  uint32_t mant_odd = (au >> 13) & 1u;
  au += 0xC8000FFFu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return Half{static_cast<uint16_t>(sign | (au >> 13))};
}
template <> inline double from_float<double>(float v) { return v; }

// Accumulator type: float64 inputs accumulate in double (gradcheck), the rest in float.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> inline T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

[[noreturn]] inline void fail(const std::string& msg) { throw pybind11::value_error(msg); }

}  // namespace mulact

// Dispatch on a floating dtype code: binds `scalar_t` inside the body.
#define MULACT_DISPATCH_FLOAT(code, NAME, ...)                                             \
  [&] {                                                                                    \
    switch (code) {                                                                        \
      case ::mulact::kFloat32: { using scalar_t = float; return __VA_ARGS__(); }           \
      case ::mulact::kFloat64: { using scalar_t = double; return __VA_ARGS__(); }          \
      case ::mulact::kFloat16: { using scalar_t = ::mulact::Half; return __VA_ARGS__(); }  \
      case ::mulact::kBFloat16: { using scalar_t = ::mulact::BFloat16; return __VA_ARGS__(); } \
      default: ::mulact::fail(std::string(NAME) + ": unsupported floating dtype code " + std::to_string(code)); \
    }                                                                                      \
  }()

// Dispatch on an integer (region id) dtype code: binds `index_t`.
#define MULACT_DISPATCH_INDEX(code, NAME, ...)                                             \
  [&] {                                                                                    \
    switch (code) {                                                                        \
      case ::mulact::kInt32: { using index_t = int32_t; return __VA_ARGS__(); }            \
      case ::mulact::kInt64: { using index_t = int64_t; return __VA_ARGS__(); }            \
      default: ::mulact::fail(std::string(NAME) + ": unsupported index dtype code " + std::to_string(code)); \
    }                                                                                      \
  }()

// Helpers shared by the fused kernels (appended; kept after the macros to keep merges clean).
#include <algorithm>
#include <limits>

namespace mulact {

// Threads in the current OpenMP team (1 outside a parallel region or without OpenMP).
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Record a kernel's findings in the (nonfinite, bad_id) int32 status buffer that
// mulact/ops/_validate.py::new_status creates as (0, -1): the one way every kernel, C++ and
// Triton, reports bad input (docs/design.md §4). `nonfinite` is a code (0 none, 1 the logits;
// an op may define more, e.g. 2 for stage 2's features); the largest code and the largest bad
// id win (the id clipped to int32), so the result does not depend on the partials' order.
inline void report_status(int32_t* status, int32_t nonfinite, int64_t bad_id) {
  if (nonfinite) status[0] = std::max(status[0], nonfinite);
  if (bad_id >= 0) {
    const int64_t clipped = std::min<int64_t>(bad_id, std::numeric_limits<int32_t>::max());
    status[1] = std::max<int32_t>(status[1], static_cast<int32_t>(clipped));
  }
}

// Scales n loaded logits by 1/tau in place; true if any of them was NaN or +-Inf (x - x is
// NaN exactly for those). Always inlined so that it vectorises inside the callers' ISA clones.
template <typename A>
MULACT_INLINE bool scale_check_finite(A* z, int64_t n, A inv_t) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t j = 0; j < n; ++j) {
    const A d = z[j] - z[j];
    bad |= d != d;
    z[j] *= inv_t;
  }
  return bad != 0;
}

// Gather the logits of n pixels (flat indices pos[j] of image b, C class rows of HW values)
// into the class-major tile z (row stride `stride`), multiplied by inv_t. Returns whether a
// loaded value is NaN/Inf; the check is folded into the vectorised scaling loop.
template <typename T, typename A>
inline bool load_scaled_tile(const T* logits, const int64_t* pos, int64_t n, int64_t b, int64_t C, int64_t HW,
                             A inv_t, A* z, int64_t stride) {
  int bad = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T* row = logits + (b * C + c) * HW;
    A* zc = z + c * stride;
    for (int64_t j = 0; j < n; ++j) zc[j] = static_cast<A>(to_float(row[pos[j]]));
    bad |= scale_check_finite(zc, n, inv_t);
  }
  return bad != 0;
}

}  // namespace mulact
