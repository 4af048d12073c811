// Oracle region labels (docs/design.md §2.7): per region, class histograms over the whole region and over
// the region minus the trim band (thick boundaries dilated by a trim x trim square), then the
// multi-hot label, the dominant class and the click cost.
//
// Per image, threads take chunks of 32 rows (dynamic schedule) and stream through them: thick
// boundary flags and their horizontal window OR for the chunk plus a halo of trim/2 rows
// (byte-wise loops the compiler vectorises), then per row the vertical window OR (the band)
// and the histogram update into per-thread int32 partials (whole region, and band pixels
// only: trimmed = whole - band, which halves the scattered increments). Partials are summed in thread
// order into the int64 outputs (integer sums: the result does not depend on scheduling),
// followed by the per-region finalisation (multi-hot, dominant, cost).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common.h"
#include "simd.h"
#include "registry.h"

// The byte-wise row loops gain from 256-bit vectors (e.g. 64-bit id compares need SSE4.1+),
// but the extension is built for the baseline ISA: let GCC emit an AVX2 clone as well and
// pick one at load time.

namespace mulact {
namespace {

// Thick-boundary flags of row k: a 4-neighbour carries another id (the border is no boundary).
// `dv_prev` holds row k-1's "differs from the row below" flags on entry (ignored for k == 0)
// and row k's on exit, so every vertical comparison is made once.
template <typename index_t>
MULACT_CLONES_AVX2 void boundary_row(const index_t* reg, int64_t H, int64_t W, int64_t k, uint8_t* out, uint8_t* dh,
                                    uint8_t* dv_prev) {
  const index_t* r = reg + k * W;
  for (int64_t x = 0; x + 1 < W; ++x) dh[x] = r[x] != r[x + 1];
  dh[W - 1] = 0;
  out[0] = dh[0];
  for (int64_t x = 1; x < W; ++x) out[x] = dh[x] | dh[x - 1];
  if (k > 0)
    for (int64_t x = 0; x < W; ++x) out[x] |= dv_prev[x];
  if (k + 1 < H) {
    const index_t* d = r + W;
    for (int64_t x = 0; x < W; ++x) dv_prev[x] = r[x] != d[x];
    for (int64_t x = 0; x < W; ++x) out[x] |= dv_prev[x];
  }
}

// Horizontal window OR: out[x] = any(in[x - lo .. x + hi]) (clipped to the row).
MULACT_CLONES_AVX2 void hdilate_row(const uint8_t* in, int64_t W, int64_t lo, int64_t hi, uint8_t* out) {
  std::memcpy(out, in, static_cast<size_t>(W));
  for (int64_t e = 1; e <= hi && e < W; ++e)
    for (int64_t x = 0; x + e < W; ++x) out[x] |= in[x + e];
  for (int64_t e = 1; e <= lo && e < W; ++e)
    for (int64_t x = e; x < W; ++x) out[x] |= in[x - e];
}

template <typename index_t, typename gt_t>
std::tuple<int64_t, int64_t, bool> labels_impl(const index_t* regions, const gt_t* gt, int64_t B, int64_t H, int64_t W,
                                               int64_t R, int64_t C, int64_t ignore, int64_t trim, int64_t* whole,
                                               int64_t* trimmed, bool* multi_hot, int64_t* dominant, int64_t* cost) {
  const int64_t N = H * W;
  const int64_t C1 = C + 1;
  const int64_t lo = trim > 0 ? (trim - 1) / 2 : 0;  // band(y) = any boundary in [y - lo, y + hi]
  const int64_t hi = trim / 2;

  // Per-thread partial histograms are capped at ~64 MiB in total.
  const int64_t slots = std::max<int64_t>(R * C1, 1);
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(64) << 20) / (slots * 2 * int64_t(sizeof(int32_t))));
  constexpr int64_t kChunk = 32;
  const int64_t n_chunks = (H + kChunk - 1) / kChunk;
  const int nt = static_cast<int>(std::min<int64_t>({num_threads(), by_memory, std::max<int64_t>(n_chunks, 1)}));
  std::vector<int32_t> part_w(static_cast<size_t>(nt) * slots), part_b(static_cast<size_t>(nt) * slots);

  int64_t bad_id = -1;
  int64_t bad_gt = 0;
  bool has_bad_gt = false;

  for (int64_t b = 0; b < B; ++b) {
    const index_t* reg = regions + b * N;
    const gt_t* g = gt + b * N;
    std::vector<int64_t> t_bad_id(nt, -1), t_bad_pos(nt, std::numeric_limits<int64_t>::max());
    if (N == 0) {  // empty image: every region is empty
      std::fill(part_w.begin(), part_w.end(), 0);
      std::fill(part_b.begin(), part_b.end(), 0);
    }
#pragma omp parallel num_threads(nt) if (N > 0)
    if (N > 0) {
      const int t = thread_id();
      int32_t* pw = part_w.data() + static_cast<size_t>(t) * slots;
      int32_t* pb = part_b.data() + static_cast<size_t>(t) * slots;
      std::fill(pw, pw + slots, 0);
      std::fill(pb, pb + slots, 0);
      std::vector<uint8_t> hb(trim > 0 ? static_cast<size_t>((kChunk + lo + hi) * W) : 0), tmp(W), dh(W), dv(W);
      std::vector<uint8_t> band(static_cast<size_t>(W), 0);
      int64_t my_bad_id = -1, my_bad_pos = std::numeric_limits<int64_t>::max();
      // Chunks of kChunk rows are handed out dynamically, so a thread that the OS descheduled
      // (shared machines) does not hold up the others. A chunk's band needs the horizontally
      // dilated boundary rows [y0 - lo, y1 - 1 + hi]; the halo rows are recomputed.
#pragma omp for schedule(dynamic, 1)
      for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
        bool runs_short = false;
        const int64_t y0 = chunk * kChunk, y1 = std::min<int64_t>(y0 + kChunk, H);
        const int64_t h0 = std::max<int64_t>(y0 - lo, 0), h1 = std::min<int64_t>(y1 + hi, H);
        if (trim > 0) {
          if (h0 > 0) {  // seed the "row above differs" flags of the first row
            const index_t* u = reg + (h0 - 1) * W;
            for (int64_t x = 0; x < W; ++x) dv[x] = u[x] != u[x + W];
          }
          for (int64_t k = h0; k < h1; ++k) {
            boundary_row(reg, H, W, k, tmp.data(), dh.data(), dv.data());
            hdilate_row(tmp.data(), W, lo, hi, hb.data() + (k - h0) * W);
          }
        }
        for (int64_t y = y0; y < y1; ++y) {
          if (trim > 0) {
            const int64_t a = std::max<int64_t>(y - lo, 0), e = std::min<int64_t>(y + hi, H - 1);
            std::memcpy(band.data(), hb.data() + (a - h0) * W, static_cast<size_t>(W));
            for (int64_t k = a + 1; k <= e; ++k) {
              const uint8_t* in = hb.data() + (k - h0) * W;
              for (int64_t x = 0; x < W; ++x) band[x] |= in[x];
            }
          }
          const index_t* rr = reg + y * W;
          const gt_t* gg = g + y * W;
          // Runs of equal (region, class) along a row are accumulated in registers and flushed
          // once (real maps have long runs); rows after one with short runs (noisy labels)
          // switch to plain branch-free increments, which then mispredict less.
          const bool use_runs = !runs_short;
          int64_t run_s = -1, changes = 0;
          int32_t run_n = 0, run_b = 0;
          for (int64_t x = 0; x < W; ++x) {
            const int64_t id = static_cast<int64_t>(rr[x]);
            const int64_t gv = static_cast<int64_t>(gg[x]);
            const bool ign = gv == ignore;
            if (!ign && static_cast<uint64_t>(gv) >= static_cast<uint64_t>(C)) {
              my_bad_pos = std::min(my_bad_pos, y * W + x);
              continue;
            }
            if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(R)) {
              if (id >= R) my_bad_id = std::max(my_bad_id, id);
              continue;
            }
            const int64_t s = id * C1 + (ign ? C : gv);
            if (use_runs) {
              if (s != run_s) {
                if (run_s >= 0) {
                  pw[run_s] += run_n;
                  pb[run_s] += run_b;  // band pixels; the trimmed count is whole - band
                }
                run_s = s;
                run_n = 0;
                run_b = 0;
                ++changes;
              }
              ++run_n;
              run_b += band[x];
            } else {
              changes += s != run_s;
              run_s = s;
              ++pw[s];
              pb[s] += band[x];
            }
          }
          runs_short = 4 * changes > W;
          if (use_runs && run_s >= 0) {
            pw[run_s] += run_n;
            pb[run_s] += run_b;
          }
        }
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
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < R; ++r) {
      int64_t* cw = ow + r * C1;
      int64_t* ct = ot + r * C1;
      int64_t total_t = 0;
      for (int64_t c = 0; c < C1; ++c) {
        int64_t sw = 0, st = 0;
        for (int t = 0; t < nt; ++t) {  // fixed thread order; integer sums are exact anyway
          sw += part_w[static_cast<size_t>(t) * slots + r * C1 + c];
          st += part_b[static_cast<size_t>(t) * slots + r * C1 + c];
        }
        st = sw - st;
        cw[c] = sw;
        ct[c] = st;
        total_t += st;
      }
      const int64_t* use = total_t > 0 ? ct : cw;
      bool* mh = multi_hot + (b * R + r) * C1;
      int64_t best = -1, best_count = 0, bits = 0;
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
                                                std::uintptr_t cost, std::uintptr_t status) {
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
  report_status(ptr<int32_t>(status), 0, std::get<0>(res));
  return pybind11::make_tuple(std::get<1>(res), std::get<2>(res));
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_labels_from_mask) {
  m.def("region_labels_from_mask_forward", &mulact::region_labels_from_mask_forward,
        "Oracle region labels: class histograms (whole / trimmed), multi-hot, dominant, cost (raw pointers); "
        "ids >= R go to the status buffer, returns (first foreign gt value, whether there is one)");
}
