// Per (image, region, labeled class): the pixel of the region where log_softmax(z)_c is
// largest (the prototypical pixel x*_{r,c} of Eq. 8), as a flat index h * W + w.
//
// One pass over the logits of the active regions (pixels of other regions cost one id read). Each thread keeps its own best (value,
// index) table over (B, R, C); "larger value, then smaller index" is associative and
// commutative and every pixel's value is computed by the same code, so merging the tables in
// any order gives the same answer: the result is independent of thread count and scheduling.
// Without trapping math GCC may if-convert the float selects of the tile loops (clamps in
// fast_exp, masked maxima) and vectorise them; no kernel here reads the FP exception flags.
#define MULACT_NO_TRAPPING_MATH
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#include "fast_exp.h"
#include "registry.h"

namespace mulact {
namespace {

constexpr int64_t kArgTile = 1024;
constexpr int64_t kArgChunk = 4096;

template <typename A>
inline bool better(A v, int64_t i, A bv, int64_t bi) {
  return bi < 0 || v > bv || (v == bv && i < bi);
}

template <typename T, typename I>
void argmax_impl(std::uintptr_t logits_p, std::uintptr_t regions_p, std::uintptr_t labels_p,
                 std::uintptr_t active_p, int64_t B, int64_t C, int64_t HW, int64_t R, double temperature,
                 std::uintptr_t out_p, std::uintptr_t status_p) {
  using A = typename Acc<T>::type;
  const T* logits = ptr<const T>(logits_p);
  const I* regions = ptr<const I>(regions_p);
  const uint8_t* labels = ptr<const uint8_t>(labels_p);
  const int8_t* active = ptr<const int8_t>(active_p);
  const A inv_t = A(1) / static_cast<A>(temperature);
  const int64_t table = B * R * C;

  const int64_t per_img = (HW + kArgChunk - 1) / kArgChunk;
  const int64_t nchunks = B * per_img;
  const int nthreads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), nchunks));
  std::vector<std::vector<A>> best_v(nthreads);
  std::vector<std::vector<int64_t>> best_i(nthreads);
  int64_t bad = -1;
  int nonfinite = 0;

#pragma omp parallel num_threads(nthreads) reduction(max : bad) reduction(| : nonfinite)
  {
    const int tid = thread_id();
    std::vector<A>& bv = best_v[tid];
    std::vector<int64_t>& bi = best_i[tid];
    bv.assign(table, A(0));
    bi.assign(table, -1);
    // Active pixels (region with enough labels) are compacted into tiles of kArgTile, stored
    // class-major so that the class loops below vectorise over pixels.
    std::vector<A> z(C * kArgTile);
    std::vector<int64_t> pos(kArgTile), rid(kArgTile);
    std::vector<A> mx(kArgTile), rest(kArgTile);
    std::vector<int32_t> amx(kArgTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kArgChunk;
      const int64_t c1 = std::min(c0 + kArgChunk, HW);
      int64_t n = 0;
      auto flush = [&] {
        nonfinite |= load_scaled_tile(logits, pos.data(), n, b, C, HW, inv_t, z.data(), kArgTile) ? 1 : 0;
        // log_softmax_c = (z_c - max) - log1p(sum over the other classes of exp(z - max)):
        // log1p keeps confident pixels (where log of a sum ~1 rounds to 0) apart.
        for (int64_t j = 0; j < n; ++j) {
          mx[j] = -std::numeric_limits<A>::max();
          rest[j] = A(0);
          amx[j] = 0;
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* zc = z.data() + c * kArgTile;
          const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const bool up = zc[j] > mx[j];
            amx[j] = up ? ci : amx[j];
            mx[j] = up ? zc[j] : mx[j];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* zc = z.data() + c * kArgTile;
          const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const A e = fast_exp(zc[j] - mx[j]);
            rest[j] += amx[j] == ci ? A(0) : e;
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          const A off = std::log1p(rest[j]);
          const int64_t base = (b * R + rid[j]) * C;
          for (int64_t c = 0; c < C; ++c) {
            if (!labels[base + c]) continue;
            const A v = (z[c * kArgTile + j] - mx[j]) - off;
            if (better(v, pos[j], bv[base + c], bi[base + c])) {
              bv[base + c] = v;
              bi[base + c] = pos[j];
            }
          }
        }
        n = 0;
      };
      for (int64_t p = c0; p < c1; ++p) {
        const int64_t r = static_cast<int64_t>(regions[b * HW + p]);
        if (r < 0) continue;
        if (r >= R) {
          bad = std::max(bad, r);
          continue;
        }
        if (!active[b * R + r]) continue;
        pos[n] = p;
        rid[n] = r;
        if (++n == kArgTile) flush();
      }
      if (n) flush();
    }
  }

  int64_t* out = ptr<int64_t>(out_p);
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < table; ++e) {
    A v = A(0);
    int64_t i = -1;
    for (int t = 0; t < nthreads; ++t) {
      if (best_i[t].empty()) continue;
      if (best_i[t][e] >= 0 && better(best_v[t][e], best_i[t][e], v, i)) {
        v = best_v[t][e];
        i = best_i[t][e];
      }
    }
    out[e] = i;
  }
  report_status(ptr<int32_t>(status_p), nonfinite != 0, bad);
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_class_argmax) {
  using namespace mulact;
  namespace py = pybind11;
  m.def(
      "region_class_argmax_forward",
      [](std::uintptr_t logits, int logits_code, std::uintptr_t regions, int regions_code, std::uintptr_t labels,
         std::uintptr_t active, int64_t B, int64_t C, int64_t HW, int64_t R, double temperature, std::uintptr_t out,
         std::uintptr_t status) {
        MULACT_DISPATCH_FLOAT(logits_code, "region_class_argmax_forward", [&] {
          MULACT_DISPATCH_INDEX(regions_code, "region_class_argmax_forward", [&] {
            argmax_impl<scalar_t, index_t>(logits, regions, labels, active, B, C, HW, R, temperature, out, status);
          });
        });
      },
      "Per (image, region, labeled class) flat index of the pixel maximising log_softmax(z)_c (-1 if none).",
      py::call_guard<py::gil_scoped_release>());
}
