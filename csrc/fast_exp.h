// Branch-free exp for float that GCC vectorises inside `#pragma omp simd` loops (std::expf is
// a scalar libm call). Cephes-style: n = round(x / ln2), r = x - n ln2 (two-part ln2), degree-6
// polynomial on [-ln2/2, ln2/2], scale by 2^n through the exponent bits. Max error ~2 ulp.
// Inputs are clamped to [-87.3, 88.0]: below that the result is ~1e-38 instead of a
// subnormal or 0, which is harmless wherever it is added to a sum that is at least 1 or
// multiplied by a zero mask (the only uses here). float64 goes to std::exp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mulact {

inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return p * scale.f;
}

inline double fast_exp(double x) { return std::exp(x); }

}  // namespace mulact
