// Oracle region labels (SPEC 3.6): per region, class histograms over the whole region and over
// the region minus the trim band (thick boundaries dilated by a trim x trim square), then the
// multi-hot label, the dominant class and the click cost.
//
// Per image: (1) thick-boundary mask, rows in parallel; (2) separable band dilation (a
// horizontal then a vertical window OR), rows in parallel; (3) histograms into per-thread
// int32 partials over row blocks, summed in thread order into the int64 outputs (integer
// sums, so the result does not depend on scheduling); (4) per-region finalisation.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace {

template <typename index_t, typename gt_t>
std::tuple<int64_t, int64_t, bool> labels_impl(const index_t* regions, const gt_t* gt, int64_t B, int64_t H, int64_t W,
                                               int64_t R, int64_t C, int64_t ignore, int64_t trim, int64_t* whole,
                                               int64_t* trimmed, bool* multi_hot, int64_t* dominant, int64_t* cost) {
  const int64_t N = H * W;
  const int64_t C1 = C + 1;
  const int64_t lo = trim > 0 ? (trim - 1) / 2 : 0;  // band(y) = any boundary in [y - lo, y + hi]
  const int64_t hi = trim / 2;
  std::vector<uint8_t> bnd(static_cast<size_t>(N)), hband(static_cast<size_t>(N)), band(static_cast<size_t>(N));

  // Per-thread partial histograms are capped at ~64 MiB in total.
  const int64_t slots = std::max<int64_t>(R * C1, 1);
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(64) << 20) / (slots * 2 * int64_t(sizeof(int32_t))));
  const int nt = static_cast<int>(std::min<int64_t>({num_threads(), by_memory, std::max<int64_t>(H, 1)}));
  std::vector<int32_t> part_w(static_cast<size_t>(nt) * slots), part_t(static_cast<size_t>(nt) * slots);

  int64_t bad_id = -1;
  int64_t bad_gt = 0;
  bool has_bad_gt = false;

  for (int64_t b = 0; b < B; ++b) {
    const index_t* reg = regions + b * N;
    const gt_t* g = gt + b * N;

    if (trim > 0) {
#pragma omp parallel for schedule(static)
      for (int64_t y = 0; y < H; ++y) {
        const index_t* row = reg + y * W;
        for (int64_t x = 0; x < W; ++x) {
          const index_t v = row[x];
          bool d = (x > 0 && row[x - 1] != v) || (x + 1 < W && row[x + 1] != v) ||
                   (y > 0 && row[x - W] != v) || (y + 1 < H && row[x + W] != v);
          bnd[y * W + x] = d;
        }
      }
#pragma omp parallel for schedule(static)
      for (int64_t y = 0; y < H; ++y) {
        const uint8_t* in = bnd.data() + y * W;
        uint8_t* out = hband.data() + y * W;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t a = std::max<int64_t>(x - lo, 0), e = std::min<int64_t>(x + hi, W - 1);
          uint8_t m = 0;
          for (int64_t k = a; k <= e; ++k) m |= in[k];
          out[x] = m;
        }
      }
#pragma omp parallel for schedule(static)
      for (int64_t y = 0; y < H; ++y) {
        const int64_t a = std::max<int64_t>(y - lo, 0), e = std::min<int64_t>(y + hi, H - 1);
        uint8_t* out = band.data() + y * W;
        std::fill(out, out + W, uint8_t(0));
        for (int64_t k = a; k <= e; ++k) {
          const uint8_t* in = hband.data() + k * W;
          for (int64_t x = 0; x < W; ++x) out[x] |= in[x];
        }
      }
    } else {
      std::fill(band.begin(), band.end(), uint8_t(0));
    }

    std::fill(part_w.begin(), part_w.end(), 0);
    std::fill(part_t.begin(), part_t.end(), 0);
    std::vector<int64_t> t_bad_id(nt, -1), t_bad_pos(nt, std::numeric_limits<int64_t>::max());
#pragma omp parallel num_threads(nt)
    {
      const int t = thread_id();
      int32_t* pw = part_w.data() + static_cast<size_t>(t) * slots;
      int32_t* pt = part_t.data() + static_cast<size_t>(t) * slots;
      // contiguous row blocks per thread: each partial sees a fixed set of pixels
      const int64_t y0 = H * t / nt, y1 = H * (t + 1) / nt;
      int64_t my_bad_id = -1, my_bad_pos = std::numeric_limits<int64_t>::max();
      for (int64_t p = y0 * W; p < y1 * W; ++p) {
        const int64_t id = static_cast<int64_t>(reg[p]);
        const int64_t gv = static_cast<int64_t>(g[p]);
        int64_t cls;
        if (gv == ignore) {
          cls = C;
        } else if (gv >= 0 && gv < C) {
          cls = gv;
        } else {
          if (p < my_bad_pos) my_bad_pos = p;
          continue;
        }
        if (id < 0) continue;
        if (id >= R) {
          my_bad_id = std::max(my_bad_id, id);
          continue;
        }
        const int64_t s = id * C1 + cls;
        ++pw[s];
        if (!band[p]) ++pt[s];
      }
      t_bad_id[t] = my_bad_id;
      t_bad_pos[t] = my_bad_pos;
    }
    for (int t = 0; t < nt; ++t) bad_id = std::max(bad_id, t_bad_id[t]);
    if (!has_bad_gt) {
      const int64_t pos = *std::min_element(t_bad_pos.begin(), t_bad_pos.end());
      if (pos != std::numeric_limits<int64_t>::max()) {
        has_bad_gt = true;
        bad_gt = static_cast<int64_t>(g[pos]);
      }
    }

    int64_t* ow = whole + b * R * C1;
    int64_t* ot = trimmed + b * R * C1;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < R * C1; ++s) {
      int64_t sw = 0, st = 0;
      for (int t = 0; t < nt; ++t) {
        sw += part_w[static_cast<size_t>(t) * slots + s];
        st += part_t[static_cast<size_t>(t) * slots + s];
      }
      ow[s] = sw;
      ot[s] = st;
    }

#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t* cw = ow + r * C1;
      const int64_t* ct = ot + r * C1;
      int64_t total_t = 0, best = -1, best_count = 0, bits = 0;
      for (int64_t c = 0; c < C1; ++c) total_t += ct[c];
      const int64_t* use = total_t > 0 ? ct : cw;
      bool* mh = multi_hot + (b * R + r) * C1;
      for (int64_t c = 0; c < C1; ++c) {
        mh[c] = use[c] > 0;
        bits += use[c] > 0;
        if (cw[c] > best_count) {  // strict: ties keep the smaller class
          best_count = cw[c];
          best = c;
        }
      }
      dominant[b * R + r] = best;
      cost[b * R + r] = bits;
    }
  }
  return {bad_id, bad_gt, has_bad_gt};
}

pybind11::tuple region_labels_from_mask_forward(std::uintptr_t regions, int reg_code, std::uintptr_t gt, int gt_code,
                                                int64_t B, int64_t H, int64_t W, int64_t R, int64_t C, int64_t ignore,
                                                int64_t trim, std::uintptr_t whole, std::uintptr_t trimmed,
                                                std::uintptr_t multi_hot, std::uintptr_t dominant,
                                                std::uintptr_t cost) {
  std::tuple<int64_t, int64_t, bool> res;
  {
    pybind11::gil_scoped_release nogil;
    res = MULACT_DISPATCH_INDEX(reg_code, "region_labels_from_mask", [&] {
      using reg_t = index_t;
      return MULACT_DISPATCH_INDEX(gt_code, "region_labels_from_mask", [&] {
        return labels_impl<reg_t, index_t>(ptr<const reg_t>(regions), ptr<const index_t>(gt), B, H, W, R, C, ignore,
                                           trim, ptr<int64_t>(whole), ptr<int64_t>(trimmed), ptr<bool>(multi_hot),
                                           ptr<int64_t>(dominant), ptr<int64_t>(cost));
      });
    });
  }
  return pybind11::make_tuple(std::get<0>(res), std::get<1>(res), std::get<2>(res));
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_labels_from_mask) {
  m.def("region_labels_from_mask_forward", &mulact::region_labels_from_mask_forward,
        "Oracle region labels: class histograms (whole / trimmed), multi-hot, dominant, cost (raw pointers)");
}
