// Stage-1 partial-label losses (L_CE, L_MP) on the CPU: one fused forward pass and one
// fused backward pass over the logits.
//
// Per labeled pixel x with label set Y:  l(x) = logsumexp_c z_c - logsumexp_{c in Y} z_c.
// The forward returns, per term (0 = CE, |Y| = 1; 1 = MP, |Y| >= 2), the weighted sum
// sum_x w(r(x)) l(x) and the pixel count; the Python side turns them into the mean that the
// chosen normalisation asks for. The backward writes the whole gradient
//   dL/dlogits = scale(r(x)) * (softmax(z) - q),   q = softmax renormalised over Y,
// where `scale` (B, R) already holds the upstream gradient, the normaliser and 1/tau; pixels
// with scale 0 get a zero gradient without their logits being read.
//
// Work is split into fixed chunks of pixels inside one image. Each chunk sums sequentially and
// the chunk partials are reduced in chunk order, so results do not depend on the number of
// threads or on scheduling. Inside a chunk the active pixels (labeled region, non-zero scale)
// are compacted into tiles of up to kTile pixels staged class-major in a per-thread buffer
// (C * kTile values, L2-resident): unlabeled pixels cost one region-id read, the tile math runs
// on vectors of active pixels only, and each class row is read as one forward stream per tile
// (small tiles would interleave C strided streams, more than the hardware prefetcher follows).
// Without trapping math GCC may if-convert the float selects of the tile loops (clamps in
// fast_exp, masked maxima) and vectorise them; no kernel here reads the FP exception flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
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

constexpr int64_t kTile = 1024;
constexpr int64_t kChunk = 2048;

// Store an accumulator value; float64 keeps full precision (from_float<double> takes a float).
template <typename T, typename A> inline T store(A v) { return from_float<T>(static_cast<float>(v)); }
template <> inline double store<double, double>(double v) { return v; }

// One tile of up to kTile *active* pixels of one image (compacted: pos[j] is the pixel index
// of slot j), class-major. After load(): z (scaled logits) and y (1 where the class is in the
// pixel's label set). After stats(): mx/my = max over all classes / over Y, s/sy = the exp-sums
// relative to those maxima, z overwritten by exp(z - mx), ey = y * exp(z - my). Separate maxima
// keep sum_Y from underflowing when the labeled classes are far below the top class (tau = 0.1
// makes that common). The class loops are branch-free so that they vectorise (fast_exp too).
template <typename A>
struct Tile {
  std::vector<A> z, ey, y;
  std::vector<int64_t> pos, rid;
  std::vector<A> mx, my, s, sy;
  int64_t n = 0;
  explicit Tile(int64_t C)
      : z(C * kTile), ey(C * kTile), y(C * kTile), pos(kTile), rid(kTile), mx(kTile), my(kTile), s(kTile),
        sy(kTile) {}

  // Returns true if a loaded logit is NaN/Inf.
  template <typename T>
  bool load(const T* logits, const uint8_t* labels, int64_t b, int64_t C, int64_t HW, int64_t R, A inv_t) {
    int bad = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T* row = logits + (b * C + c) * HW;
      A* zc = z.data() + c * kTile;
      A* yc = y.data() + c * kTile;
      for (int64_t j = 0; j < n; ++j) zc[j] = static_cast<A>(to_float(row[pos[j]]));
#pragma omp simd reduction(| : bad)
      for (int64_t j = 0; j < n; ++j) {
        const A d = zc[j] - zc[j];  // NaN exactly when the value is NaN or +-Inf
        bad |= d != d;
        zc[j] *= inv_t;
      }
      for (int64_t j = 0; j < n; ++j) yc[j] = A(labels[(b * R + rid[j]) * C + c] != 0);
    }
    return bad != 0;
  }

  void stats(int64_t C) {
    const A lowest = -std::numeric_limits<A>::max();
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = lowest;
      my[j] = lowest;
      s[j] = A(0);
      sy[j] = A(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      const A* zc = z.data() + c * kTile;
      const A* yc = y.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        mx[j] = zc[j] > mx[j] ? zc[j] : mx[j];
        my[j] = (yc[j] != A(0) && zc[j] > my[j]) ? zc[j] : my[j];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      A* zc = z.data() + c * kTile;
      A* ec = ey.data() + c * kTile;
      const A* yc = y.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const A e = fast_exp(zc[j] - mx[j]);
        const A f = yc[j] * fast_exp(zc[j] - my[j]);
        zc[j] = e;
        ec[j] = f;
        s[j] += e;
        sy[j] += f;
      }
    }
  }
};

template <typename T, typename I>
void forward_impl(std::uintptr_t logits_p, std::uintptr_t regions_p, std::uintptr_t labels_p,
                  std::uintptr_t kind_p, std::uintptr_t weight_p, int64_t B, int64_t C, int64_t HW,
                  int64_t R, double temperature, std::uintptr_t sums_p, std::uintptr_t counts_p,
                  std::uintptr_t status_p) {
  using A = typename Acc<T>::type;
  const T* logits = ptr<const T>(logits_p);
  const I* regions = ptr<const I>(regions_p);
  const uint8_t* labels = ptr<const uint8_t>(labels_p);
  const int8_t* kind = ptr<const int8_t>(kind_p);
  const A* weight = weight_p ? ptr<const A>(weight_p) : nullptr;
  const A inv_t = A(1) / static_cast<A>(temperature);

  const int64_t per_img = (HW + kChunk - 1) / kChunk;
  const int64_t nchunks = B * per_img;
  std::vector<double> chunk_sum(2 * nchunks, 0.0);
  std::vector<int64_t> chunk_cnt(2 * nchunks, 0);
  int64_t bad = -1;
  int nonfinite = 0;

#pragma omp parallel reduction(max : bad) reduction(| : nonfinite)
  {
    Tile<A> tile(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kChunk;
      const int64_t c1 = std::min(c0 + kChunk, HW);
      A acc[2] = {A(0), A(0)};
      int64_t cnt[2] = {0, 0};
      int8_t kd[kTile];
      auto flush = [&] {
        nonfinite |= tile.load(logits, labels, b, C, HW, R, inv_t);
        tile.stats(C);
        for (int64_t j = 0; j < tile.n; ++j) {
          const A l = (tile.mx[j] + std::log(tile.s[j])) - (tile.my[j] + std::log(tile.sy[j]));
          const int t = kd[j] - 1;
          acc[t] += weight ? weight[b * R + tile.rid[j]] * l : l;
          cnt[t] += 1;
        }
        tile.n = 0;
      };
      tile.n = 0;
      for (int64_t p = c0; p < c1; ++p) {
        const int64_t r = static_cast<int64_t>(regions[b * HW + p]);
        if (r < 0) continue;
        if (r >= R) {
          bad = std::max(bad, r);
          continue;
        }
        const int8_t t = kind[b * R + r];
        if (t == 0) continue;
        tile.pos[tile.n] = p;
        tile.rid[tile.n] = r;
        kd[tile.n] = t;
        if (++tile.n == kTile) flush();
      }
      if (tile.n) flush();
      for (int t = 0; t < 2; ++t) {
        chunk_sum[2 * k + t] = static_cast<double>(acc[t]);
        chunk_cnt[2 * k + t] = cnt[t];
      }
    }
  }

  double* sums = ptr<double>(sums_p);
  int64_t* counts = ptr<int64_t>(counts_p);
  for (int t = 0; t < 2; ++t) {
    double s = 0.0;
    int64_t n = 0;
    for (int64_t k = 0; k < nchunks; ++k) {
      s += chunk_sum[2 * k + t];
      n += chunk_cnt[2 * k + t];
    }
    sums[t] = s;
    counts[t] = n;
  }
  int32_t* status = ptr<int32_t>(status_p);
  if (nonfinite) status[0] = 1;
  if (bad >= 0) status[1] = static_cast<int32_t>(std::min<int64_t>(bad, std::numeric_limits<int32_t>::max()));
}

template <typename T, typename I>
void backward_impl(std::uintptr_t logits_p, std::uintptr_t regions_p, std::uintptr_t labels_p,
                   std::uintptr_t scale_p, int64_t B, int64_t C, int64_t HW, int64_t R, double temperature,
                   std::uintptr_t grad_p) {
  using A = typename Acc<T>::type;
  const T* logits = ptr<const T>(logits_p);
  const I* regions = ptr<const I>(regions_p);
  const uint8_t* labels = ptr<const uint8_t>(labels_p);
  const A* scale = ptr<const A>(scale_p);
  T* grad = ptr<T>(grad_p);
  const A inv_t = A(1) / static_cast<A>(temperature);
  const T zero = from_float<T>(0.0f);

  const int64_t per_img = (HW + kChunk - 1) / kChunk;
  const int64_t nchunks = B * per_img;

#pragma omp parallel
  {
    Tile<A> tile(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kChunk;
      const int64_t c1 = std::min(c0 + kChunk, HW);
      // Zero this chunk's gradient first (contiguous rows, still in cache for the scatter of
      // the active pixels below).
      for (int64_t c = 0; c < C; ++c) std::fill(grad + (b * C + c) * HW + c0, grad + (b * C + c) * HW + c1, zero);
      A sc[kTile];
      auto flush = [&] {
        tile.load(logits, labels, b, C, HW, R, inv_t);
        tile.stats(C);
        A rs[kTile], rsy[kTile];
        for (int64_t j = 0; j < tile.n; ++j) {
          rs[j] = sc[j] / tile.s[j];
          rsy[j] = sc[j] / tile.sy[j];
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* e = tile.z.data() + c * kTile;
          const A* ey = tile.ey.data() + c * kTile;
          T* out = grad + (b * C + c) * HW;
          for (int64_t j = 0; j < tile.n; ++j) out[tile.pos[j]] = store<T, A>(rs[j] * e[j] - rsy[j] * ey[j]);
        }
        tile.n = 0;
      };
      tile.n = 0;
      for (int64_t p = c0; p < c1; ++p) {
        const int64_t r = static_cast<int64_t>(regions[b * HW + p]);
        if (r < 0 || r >= R) continue;
        const A v = scale[b * R + r];
        if (v == A(0)) continue;
        tile.pos[tile.n] = p;
        tile.rid[tile.n] = r;
        sc[tile.n] = v;
        if (++tile.n == kTile) flush();
      }
      if (tile.n) flush();
    }
  }
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(partial_label_loss) {
  using namespace mulact;
  namespace py = pybind11;
  m.def(
      "partial_label_loss_forward",
      [](std::uintptr_t logits, int logits_code, std::uintptr_t regions, int regions_code, std::uintptr_t labels,
         std::uintptr_t kind, std::uintptr_t weight, int64_t B, int64_t C, int64_t HW, int64_t R,
         double temperature, std::uintptr_t sums, std::uintptr_t counts, std::uintptr_t status) {
        MULACT_DISPATCH_FLOAT(logits_code, "partial_label_loss_forward", [&] {
          MULACT_DISPATCH_INDEX(regions_code, "partial_label_loss_forward", [&] {
            forward_impl<scalar_t, index_t>(logits, regions, labels, kind, weight, B, C, HW, R, temperature, sums,
                                             counts, status);
          });
        });
      },
      "Fused forward: per-term weighted loss sums (float64[2]) and pixel counts (int64[2]).",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "partial_label_loss_backward",
      [](std::uintptr_t logits, int logits_code, std::uintptr_t regions, int regions_code, std::uintptr_t labels,
         std::uintptr_t scale, int64_t B, int64_t C, int64_t HW, int64_t R, double temperature, std::uintptr_t grad) {
        MULACT_DISPATCH_FLOAT(logits_code, "partial_label_loss_backward", [&] {
          MULACT_DISPATCH_INDEX(regions_code, "partial_label_loss_backward", [&] {
            backward_impl<scalar_t, index_t>(logits, regions, labels, scale, B, C, HW, R, temperature, grad);
          });
        });
      },
      "Fused backward: writes the full gradient w.r.t. the logits.",
      py::call_guard<py::gil_scoped_release>());
}
