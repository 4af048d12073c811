// Stage-2 pseudo labels from class prototypes (SPEC 3.4), CPU.
//
// Per image, in a few passes over the pixels (semantics: mulact/ops/prototype_pseudo_labels.py):
//   1. one pass over the region map: region-id check, labeled/unlabeled adjacency pairs
//      (4 forward 8-neighbour shifts) and the prototype argmax of log_softmax(logits/tau) per
//      (labeled region, labeled class), with per-thread partial maxima merged afterwards;
//   2. prototypes: the upsampled feature at each x*_{r,c}, normalised;
//   3. localization over the pixels of labeled regions, recording (prototype, similarity);
//   4. exact lower medians per prototype: counting sort by prototype + nth_element;
//   5. expansion over the pixels of unlabeled regions that touch a labeled one, against the
//      prototypes of all their labeled neighbours (a CSR list per unlabeled region).
// Features are converted once to a channels-last float32 copy at their own (low) resolution;
// each pixel's feature is interpolated on the fly into a D-float scratch vector, so the
// (D, H, W) upsampled tensor never exists. Every decision is a deterministic function of
// per-pixel values, and the partial argmaxes merge by (value, smallest index): the result does
// not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace ppl {

constexpr float kEps = 1e-12f;
constexpr int64_t kIgnore = 255;

// Dot product with 8 fixed lanes reduced in a fixed order: the rounding depends only on the
// operands (not on their addresses), so equal feature vectors give bit-equal similarities.
inline float dot8(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// PyTorch's bilinear source index for align_corners=False (area_pixel_compute_source_index +
// guard_index_and_lambda), in float32 like its CPU kernel for float inputs.
struct Tap {
  int64_t i0, i1;
  float l0, l1;
};

inline std::vector<Tap> make_taps(int64_t in, int64_t out) {
  std::vector<Tap> taps(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    if (src < 0.f) src = 0.f;
    int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    float l1 = std::min(std::max(src - static_cast<float>(i0), 0.f), 1.f);
    taps[o] = Tap{i0, i0 + (i0 < in - 1 ? 1 : 0), 1.f - l1, l1};
  }
  return taps;
}

struct Image {
  const float* feat;  // (fh, fw, D) channels-last float32
  int64_t D, fw;
  const std::vector<Tap>* ty;
  const std::vector<Tap>* tx;
  int64_t W;

  // Upsampled feature of pixel p into u; returns max(|u|, eps).
  float upsample(int64_t p, float* u) const {
    const Tap& a = (*ty)[p / W];
    const Tap& b = (*tx)[p % W];
    const float* f00 = feat + (a.i0 * fw + b.i0) * D;
    const float* f01 = feat + (a.i0 * fw + b.i1) * D;
    const float* f10 = feat + (a.i1 * fw + b.i0) * D;
    const float* f11 = feat + (a.i1 * fw + b.i1) * D;
    for (int64_t d = 0; d < D; ++d)
      u[d] = (f00[d] * b.l0 + f01[d] * b.l1) * a.l0 + (f10[d] * b.l0 + f11[d] * b.l1) * a.l1;
    return std::max(std::sqrt(dot8(u, u, D)), kEps);
  }
};

inline float cosine(const float* u, float nrm, const float* pn, int64_t D) {
  float s = dot8(u, pn, D) / nrm;
  return std::min(std::max(s, -1.f), 1.f);
}

template <typename scalar_t, typename lscalar_t, typename index_t>
void forward_impl(const scalar_t* features, const lscalar_t* logits, const index_t* regions,
                  const uint8_t* region_labels, int64_t B, int64_t D, int64_t fh, int64_t fw, int64_t C,
                  int64_t H, int64_t W, int64_t R, float tau, bool expand, int64_t* out, float* thresholds,
                  int64_t* proto_index, int64_t* num_loc, int64_t* num_exp, int32_t* status) {
  const int64_t HW = H * W;
  const int64_t FHW = fh * fw;
  const auto ty = make_taps(fh, H);
  const auto tx = make_taps(fw, W);
  const int nthreads = num_threads();
  std::vector<float> feat(FHW * D);
  int32_t nonfinite = 0;
  int64_t bad_id = -1;

  for (int64_t b = 0; b < B; ++b) {
    const index_t* reg = regions + b * HW;
    const uint8_t* lab = region_labels + b * R * C;
    const lscalar_t* lg = logits + b * C * HW;
    int64_t* o = out + b * HW;

    std::vector<uint8_t> labeled(R, 0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) labeled[r] |= lab[r * C + c] ? 1 : 0;
    // Compact slot per labeled (region, class): the per-thread argmax partials index by it.
    std::vector<int64_t> slot(R * C, -1);
    int64_t S = 0;
    for (int64_t i = 0; i < R * C; ++i)
      if (lab[i]) slot[i] = S++;

    // ---- pass 1: ids, adjacency, prototype argmax ---------------------------------------
    std::vector<std::vector<float>> tbest(nthreads);
    std::vector<std::vector<int64_t>> tidx(nthreads);
    std::vector<std::vector<int64_t>> tpairs(nthreads);
    int32_t nf = 0;
    int64_t bad = -1;
#pragma omp parallel num_threads(nthreads) reduction(max : nf, bad)
    {
      const int t = thread_id();
      std::vector<float>& best = tbest[t];
      std::vector<int64_t>& bidx = tidx[t];
      best.assign(S, -std::numeric_limits<float>::infinity());
      bidx.assign(S, HW);
      std::vector<int64_t>& pairs = tpairs[t];
      std::vector<float> z(C);
#pragma omp for schedule(static)
      for (int64_t y = 0; y < H; ++y) {
        for (int64_t x = 0; x < W; ++x) {
          const int64_t p = y * W + x;
          const int64_t r = static_cast<int64_t>(reg[p]);
          if (r < 0) continue;
          if (r >= R) {
            bad = std::max(bad, r);
            continue;
          }
          static const int dys[4] = {0, 1, 1, 1};
          static const int dxs[4] = {1, 0, 1, -1};
          for (int k = 0; k < 4; ++k) {
            const int64_t yy = y + dys[k], xx = x + dxs[k];
            if (yy >= H || xx < 0 || xx >= W) continue;
            const int64_t q = static_cast<int64_t>(reg[yy * W + xx]);
            if (q < 0 || q >= R || q == r || labeled[q] == labeled[r]) continue;
            pairs.push_back(labeled[r] ? q * R + r : r * R + q);  // key (unlabeled, labeled)
          }
          if (!labeled[r]) continue;
          // log_softmax as torch computes it: (z - max) - log(sum exp(z - max))
          float m = -std::numeric_limits<float>::infinity();
          bool fin = true;
          for (int64_t c = 0; c < C; ++c) {
            const float v = to_float(lg[c * HW + p]);
            fin = fin && std::isfinite(v);
            z[c] = v / tau;
            m = std::max(m, z[c]);
          }
          if (!fin || !std::isfinite(m)) {
            nf = 1;
            continue;
          }
          float sum = 0.f;
          for (int64_t c = 0; c < C; ++c) sum += std::exp(z[c] - m);
          const float lse = std::log(sum);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t sl = slot[r * C + c];
            if (sl < 0) continue;
            const float v = (z[c] - m) - lse;
            if (v > best[sl] || (v == best[sl] && p < bidx[sl])) {
              best[sl] = v;
              bidx[sl] = p;
            }
          }
        }
      }
    }
    nonfinite = std::max(nonfinite, nf);
    bad_id = std::max(bad_id, bad);
    if (nonfinite || bad_id >= 0) break;

    // merge the partial argmaxes: (largest value, then smallest index) is order independent
    std::vector<int64_t> pidx(S, -1);
    for (int64_t sl = 0; sl < S; ++sl) {
      float bv = -std::numeric_limits<float>::infinity();
      int64_t bi = HW;
      for (int t = 0; t < nthreads; ++t) {
        const float v = tbest[t][sl];
        const int64_t i = tidx[t][sl];
        if (i >= HW) continue;
        if (bi >= HW || v > bv || (v == bv && i < bi)) {
          bv = v;
          bi = i;
        }
      }
      pidx[sl] = bi < HW ? bi : -1;
    }

    // ---- prototypes, ordered by (region, class) ------------------------------------------
    // features (D, fh, fw) -> channels-last float32, in blocks of pixels so that both the
    // reads and the writes stay within a few cache lines
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i0 = 0; i0 < FHW; i0 += 64) {
      const int64_t i1 = std::min(FHW, i0 + 64);
      for (int64_t d = 0; d < D; ++d) {
        const scalar_t* src = features + (b * D + d) * FHW;
        for (int64_t i = i0; i < i1; ++i) feat[i * D + d] = static_cast<float>(to_float(src[i]));
      }
    }
    const Image img{feat.data(), D, fw, &ty, &tx, W};

    std::vector<int64_t> kcls, kreg;
    std::vector<int64_t> own_start(R + 1, 0);
    std::vector<int64_t> kslot(R * C, -1);
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t sl = slot[r * C + c];
        const int64_t pi = sl >= 0 ? pidx[sl] : -1;
        proto_index[b * R * C + r * C + c] = pi;
        thresholds[b * R * C + r * C + c] = std::numeric_limits<float>::quiet_NaN();
        if (pi < 0) continue;
        kslot[r * C + c] = static_cast<int64_t>(kcls.size());
        kcls.push_back(c);
        kreg.push_back(r);
      }
      own_start[r + 1] = static_cast<int64_t>(kcls.size());
    }
    const int64_t K = static_cast<int64_t>(kcls.size());
    std::vector<float> protos(K * D);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = kslot[r * C + c];
        if (k < 0) continue;
        float* pk = protos.data() + k * D;
        const float n = img.upsample(pidx[slot[r * C + c]], pk);
        for (int64_t d = 0; d < D; ++d) pk[d] /= n;
      }

    // ---- localization ---------------------------------------------------------------------
    std::vector<int64_t> rec_k(HW, -1);
    std::vector<float> rec_s(HW);
    int64_t nloc = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : nloc)
    {
      std::vector<float> u(D);
#pragma omp for schedule(static)
      for (int64_t p = 0; p < HW; ++p) {
        const int64_t r = static_cast<int64_t>(reg[p]);
        o[p] = kIgnore;
        if (r < 0 || !labeled[r] || own_start[r] == own_start[r + 1]) continue;
        const float n = img.upsample(p, u.data());
        int64_t bk = -1;
        float bs = 0.f;
        for (int64_t k = own_start[r]; k < own_start[r + 1]; ++k) {  // ascending class
          const float s = cosine(u.data(), n, protos.data() + k * D, D);
          if (bk < 0 || s > bs) {
            bk = k;
            bs = s;
          }
        }
        o[p] = kcls[bk];
        rec_k[p] = bk;
        rec_s[p] = bs;
        ++nloc;
      }
    }
    num_loc[b] = nloc;

    // ---- thresholds: exact lower median per prototype --------------------------------------
    std::vector<int64_t> cnt(K + 1, 0);
    for (int64_t p = 0; p < HW; ++p)
      if (rec_k[p] >= 0) ++cnt[rec_k[p] + 1];
    std::partial_sum(cnt.begin(), cnt.end(), cnt.begin());
    std::vector<float> vals(nloc);
    {
      std::vector<int64_t> fill(cnt.begin(), cnt.end() - 1);
      for (int64_t p = 0; p < HW; ++p)
        if (rec_k[p] >= 0) vals[fill[rec_k[p]]++] = rec_s[p];
    }
    std::vector<float> alpha(K, 1.f);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t n = cnt[k + 1] - cnt[k];
      if (n == 0) continue;
      float* lo = vals.data() + cnt[k];
      std::nth_element(lo, lo + (n - 1) / 2, lo + n);
      alpha[k] = lo[(n - 1) / 2];
    }
    for (int64_t k = 0; k < K; ++k) thresholds[b * R * C + kreg[k] * C + kcls[k]] = alpha[k];

    // ---- expansion ----------------------------------------------------------------------------
    int64_t nexp = 0;
    if (expand) {
      std::vector<int64_t> pairs;
      for (auto& v : tpairs) pairs.insert(pairs.end(), v.begin(), v.end());
      std::sort(pairs.begin(), pairs.end());
      pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
      // CSR: unlabeled region -> prototypes of all its labeled neighbours
      std::vector<int64_t> nb_start(R + 1, 0);
      std::vector<int64_t> nb_list;
      size_t i = 0;
      for (int64_t u = 0; u < R; ++u) {
        for (; i < pairs.size() && pairs[i] / R == u; ++i) {
          const int64_t l = pairs[i] % R;
          for (int64_t k = own_start[l]; k < own_start[l + 1]; ++k) nb_list.push_back(k);
        }
        nb_start[u + 1] = static_cast<int64_t>(nb_list.size());
      }
#pragma omp parallel num_threads(nthreads) reduction(+ : nexp)
      {
        std::vector<float> u(D);
#pragma omp for schedule(static)
        for (int64_t p = 0; p < HW; ++p) {
          const int64_t r = static_cast<int64_t>(reg[p]);
          if (r < 0 || labeled[r] || nb_start[r] == nb_start[r + 1]) continue;
          const float n = img.upsample(p, u.data());
          int64_t bc = -1;
          float bs = 0.f;
          for (int64_t j = nb_start[r]; j < nb_start[r + 1]; ++j) {
            const int64_t k = nb_list[j];
            const float s = cosine(u.data(), n, protos.data() + k * D, D);
            if (!(s > alpha[k])) continue;
            if (bc < 0 || s > bs || (s == bs && kcls[k] < bc)) {
              bc = kcls[k];
              bs = s;
            }
          }
          if (bc >= 0) {
            o[p] = bc;
            ++nexp;
          }
        }
      }
    }
    num_exp[b] = nexp;
  }
  status[0] = nonfinite;
  status[1] = static_cast<int32_t>(std::min<int64_t>(bad_id, std::numeric_limits<int32_t>::max()));
}

}  // namespace ppl
}  // namespace mulact

MULACT_REGISTER(prototype_pseudo_labels) {
  m.def(
      "prototype_pseudo_labels_forward",
      [](std::uintptr_t features, int fcode, std::uintptr_t logits, int lcode, std::uintptr_t regions, int icode,
         std::uintptr_t region_labels, int64_t B, int64_t D, int64_t fh, int64_t fw, int64_t C, int64_t H, int64_t W,
         int64_t R, double tau, bool expand, std::uintptr_t out, std::uintptr_t thresholds,
         std::uintptr_t proto_index, std::uintptr_t num_loc, std::uintptr_t num_exp, std::uintptr_t status) {
        using namespace mulact;
        MULACT_DISPATCH_FLOAT(fcode, "prototype_pseudo_labels(features)", [&] {
          using feat_t = scalar_t;
          MULACT_DISPATCH_FLOAT(lcode, "prototype_pseudo_labels(logits)", [&] {
            using logit_t = scalar_t;
            MULACT_DISPATCH_INDEX(icode, "prototype_pseudo_labels(regions)", [&] {
              ppl::forward_impl<feat_t, logit_t, index_t>(
                  ptr<const feat_t>(features), ptr<const logit_t>(logits), ptr<const index_t>(regions),
                  ptr<const uint8_t>(region_labels), B, D, fh, fw, C, H, W, R, static_cast<float>(tau), expand,
                  ptr<int64_t>(out), ptr<float>(thresholds), ptr<int64_t>(proto_index), ptr<int64_t>(num_loc),
                  ptr<int64_t>(num_exp), ptr<int32_t>(status));
            });
          });
        });
      },
      "Prototype pseudo labels (raw pointers; call mulact.ops.prototype_pseudo_labels)",
      pybind11::call_guard<pybind11::gil_scoped_release>());
}
