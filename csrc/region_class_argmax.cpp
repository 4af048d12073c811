// Per (image, region, labeled class): the pixel of the region where log_softmax(z)_c is
// largest (the prototypical pixel x*_{r,c} of Eq. 8), as a flat index h * W + w.
//
// One pass over the logits of the active regions. Each thread keeps its own best (value,
// index) table over (B, R, C); "larger value, then smaller index" is associative and
// commutative and every pixel's value is computed by the same code, so merging the tables in
// any order gives the same answer: the result is independent of thread count and scheduling.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace {

constexpr int64_t kArgTile = 64;
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
    std::vector<A> buf(C * kArgTile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kArgChunk;
      const int64_t c1 = std::min(c0 + kArgChunk, HW);
      for (int64_t p0 = c0; p0 < c1; p0 += kArgTile) {
        const int64_t n = std::min(kArgTile, c1 - p0);
        int64_t rid[kArgTile];
        bool act[kArgTile];
        bool any = false;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = static_cast<int64_t>(regions[b * HW + p0 + j]);
          act[j] = false;
          rid[j] = 0;
          if (r < 0) continue;
          if (r >= R) {
            bad = std::max(bad, r);
            continue;
          }
          rid[j] = r;
          act[j] = active[b * R + r] != 0;
          any |= act[j];
        }
        if (!any) continue;
        A mx[kArgTile], s[kArgTile];
        for (int64_t j = 0; j < n; ++j) {
          mx[j] = -std::numeric_limits<A>::infinity();
          s[j] = A(0);
        }
        for (int64_t c = 0; c < C; ++c) {
          const T* row = logits + (b * C + c) * HW + p0;
          A* out = buf.data() + c * kArgTile;
          for (int64_t j = 0; j < n; ++j) {
            if (!act[j]) continue;
            const A v = static_cast<A>(to_float(row[j]));
            nonfinite |= !std::isfinite(v);
            out[j] = v * inv_t;
            mx[j] = std::max(mx[j], out[j]);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* v = buf.data() + c * kArgTile;
          for (int64_t j = 0; j < n; ++j)
            if (act[j]) s[j] += std::exp(v[j] - mx[j]);
        }
        for (int64_t j = 0; j < n; ++j) {
          if (!act[j]) continue;
          const A lse = mx[j] + std::log(s[j]);
          const int64_t base = (b * R + rid[j]) * C;
          const int64_t p = p0 + j;
          for (int64_t c = 0; c < C; ++c) {
            if (!labels[base + c]) continue;
            const A v = buf[c * kArgTile + j] - lse;
            if (better(v, p, bv[base + c], bi[base + c])) {
              bv[base + c] = v;
              bi[base + c] = p;
            }
          }
        }
      }
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
  int32_t* status = ptr<int32_t>(status_p);
  if (nonfinite) status[0] = 1;
  if (bad >= 0) status[1] = static_cast<int32_t>(std::min<int64_t>(bad, std::numeric_limits<int32_t>::max()));
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
