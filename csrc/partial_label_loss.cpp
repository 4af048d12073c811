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
// threads or on scheduling. Inside a chunk, tiles of kTile pixels are staged in a small
// buffer so that the C strided rows of a tile are read from memory once and revisited in L1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace {

constexpr int64_t kTile = 64;
constexpr int64_t kChunk = 4096;

// Per-tile softmax statistics of the active pixels: max over all classes and over Y, and the
// two exp-sums relative to those maxima (separate maxima keep sum_Y from underflowing when the
// labeled classes are far below the top class, which tau = 0.1 makes common).
// Store an accumulator value; float64 keeps full precision (from_float<double> takes a float).
template <typename T, typename A> inline T store(A v) { return from_float<T>(static_cast<float>(v)); }
template <> inline double store<double, double>(double v) { return v; }

template <typename A>
struct TileStats {
  A mx[kTile], my[kTile], s[kTile], sy[kTile];
};

// Load the logits of tile [p0, p0 + n) of image b into buf (class-major) scaled by 1/tau, and
// the label bits of each pixel's region into ybuf. Returns true if any loaded value is
// non-finite. Only pixels with act[j] set are loaded.
template <typename T, typename A>
bool load_tile(const T* logits, const uint8_t* labels, int64_t b, int64_t C, int64_t HW, int64_t R,
               int64_t p0, int64_t n, const int64_t* rid, const bool* act, A inv_t, A* buf,
               uint8_t* ybuf) {
  bool nonfinite = false;
  for (int64_t c = 0; c < C; ++c) {
    const T* row = logits + (b * C + c) * HW + p0;
    A* out = buf + c * kTile;
    uint8_t* yout = ybuf + c * kTile;
    for (int64_t j = 0; j < n; ++j) {
      if (!act[j]) {
        out[j] = A(0);
        yout[j] = 0;
        continue;
      }
      A v = static_cast<A>(to_float(row[j]));
      nonfinite |= !std::isfinite(v);
      out[j] = v * inv_t;
      yout[j] = labels[(b * R + rid[j]) * C + c] != 0;
    }
  }
  return nonfinite;
}

template <typename A>
void tile_stats(int64_t C, int64_t n, const bool* act, const A* buf, const uint8_t* ybuf, TileStats<A>& st) {
  const A ninf = -std::numeric_limits<A>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    st.mx[j] = ninf;
    st.my[j] = ninf;
    st.s[j] = A(0);
    st.sy[j] = A(0);
  }
  for (int64_t c = 0; c < C; ++c) {
    const A* v = buf + c * kTile;
    const uint8_t* y = ybuf + c * kTile;
    for (int64_t j = 0; j < n; ++j) {
      st.mx[j] = std::max(st.mx[j], v[j]);
      if (y[j]) st.my[j] = std::max(st.my[j], v[j]);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const A* v = buf + c * kTile;
    const uint8_t* y = ybuf + c * kTile;
    for (int64_t j = 0; j < n; ++j) {
      if (!act[j]) continue;
      st.s[j] += std::exp(v[j] - st.mx[j]);
      if (y[j]) st.sy[j] += std::exp(v[j] - st.my[j]);
    }
  }
}

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
    std::vector<A> buf(C * kTile);
    std::vector<uint8_t> ybuf(C * kTile);
    TileStats<A> st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kChunk;
      const int64_t c1 = std::min(c0 + kChunk, HW);
      A acc[2] = {A(0), A(0)};
      int64_t cnt[2] = {0, 0};
      for (int64_t p0 = c0; p0 < c1; p0 += kTile) {
        const int64_t n = std::min(kTile, c1 - p0);
        int64_t rid[kTile];
        bool act[kTile];
        int8_t kd[kTile];
        bool any = false;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = static_cast<int64_t>(regions[b * HW + p0 + j]);
          act[j] = false;
          rid[j] = 0;
          kd[j] = 0;
          if (r < 0) continue;
          if (r >= R) {
            bad = std::max(bad, r);
            continue;
          }
          rid[j] = r;
          kd[j] = kind[b * R + r];
          act[j] = kd[j] > 0;
          any |= act[j];
        }
        if (!any) continue;
        nonfinite |= load_tile<T, A>(logits, labels, b, C, HW, R, p0, n, rid, act, inv_t, buf.data(), ybuf.data());
        tile_stats<A>(C, n, act, buf.data(), ybuf.data(), st);
        for (int64_t j = 0; j < n; ++j) {
          if (!act[j]) continue;
          const A l = (st.mx[j] + std::log(st.s[j])) - (st.my[j] + std::log(st.sy[j]));
          const int t = kd[j] - 1;
          acc[t] += weight ? weight[b * R + rid[j]] * l : l;
          cnt[t] += 1;
        }
      }
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
    std::vector<A> buf(C * kTile);
    std::vector<uint8_t> ybuf(C * kTile);
    TileStats<A> st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t b = k / per_img;
      const int64_t c0 = (k % per_img) * kChunk;
      const int64_t c1 = std::min(c0 + kChunk, HW);
      for (int64_t p0 = c0; p0 < c1; p0 += kTile) {
        const int64_t n = std::min(kTile, c1 - p0);
        int64_t rid[kTile];
        bool act[kTile];
        A sc[kTile];
        bool any = false;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = static_cast<int64_t>(regions[b * HW + p0 + j]);
          const bool valid = r >= 0 && r < R;
          rid[j] = valid ? r : 0;
          sc[j] = valid ? scale[b * R + r] : A(0);
          act[j] = sc[j] != A(0);
          any |= act[j];
        }
        if (!any) {
          for (int64_t c = 0; c < C; ++c) std::fill_n(grad + (b * C + c) * HW + p0, n, zero);
          continue;
        }
        load_tile<T, A>(logits, labels, b, C, HW, R, p0, n, rid, act, inv_t, buf.data(), ybuf.data());
        tile_stats<A>(C, n, act, buf.data(), ybuf.data(), st);
        A rs[kTile], rsy[kTile];
        for (int64_t j = 0; j < n; ++j) {
          rs[j] = act[j] ? sc[j] / st.s[j] : A(0);
          rsy[j] = act[j] ? sc[j] / st.sy[j] : A(0);
        }
        for (int64_t c = 0; c < C; ++c) {
          const A* v = buf.data() + c * kTile;
          const uint8_t* y = ybuf.data() + c * kTile;
          T* out = grad + (b * C + c) * HW + p0;
          for (int64_t j = 0; j < n; ++j) {
            if (!act[j]) {
              out[j] = zero;
              continue;
            }
            A g = rs[j] * std::exp(v[j] - st.mx[j]);
            if (y[j]) g -= rsy[j] * std::exp(v[j] - st.my[j]);
            out[j] = store<T, A>(g);
          }
        }
      }
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
