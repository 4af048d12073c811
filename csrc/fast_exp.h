// Branch-free exp for float that GCC vectorises inside `#pragma omp simd` loops (std::expf is
// a scalar libm call). Cephes-style: n = round(x / ln2), r = x - n ln2 (two-part ln2), degree-6
// polynomial on [-ln2/2, ln2/2], scale by 2^n through the exponent bits. ~1e-7 relative error.
// Inputs are clamped to [-88, 88], which the callers rely on:
// - x <= -88 (and -inf) returns exactly 0: n rounds to -127, so the exponent field is 0 and
//   what would be a denormal is flushed to zero. region_uncertainty_stats needs exp(-inf) == 0
//   (BvSB with a single class); the softmax sums elsewhere only need it to be tiny.
// - x >= 88 (and +inf) stays finite (~1.7e38), so `mask * fast_exp(z - masked_max)` is 0, not
//   NaN, where the masked max is -inf (partial_label_loss).
// NaN propagates. float64 goes to std::exp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mulact {

inline float fast_exp(float x) {
  x = std::min(std::max(x, -88.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double fast_exp(double x) { return std::exp(x); }

}  // namespace mulact
