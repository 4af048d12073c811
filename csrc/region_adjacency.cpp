// Region adjacency (docs/design.md §2.7): the sorted unique pairs (u < v) of region ids that touch under
// 8-connectivity. Every pixel is compared with its right, lower, lower-right and lower-left
// neighbours (the other four directions are the same pairs seen from the other pixel).
// Row blocks run in parallel; each thread keeps a key list u * R + v filtered by a small
// cache of recent keys, and the concatenation is sorted and deduplicated, so the output does
// not depend on scheduling.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace {

template <typename index_t>
void adjacency_impl(const index_t* reg, int64_t H, int64_t W, int64_t R, std::vector<int64_t>& keys,
                    int64_t& bad_id) {
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(H, 1)));
  std::vector<std::vector<int64_t>> part(nt);
  std::vector<int64_t> t_bad(nt, -1);
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    const int64_t y0 = H * t / nt, y1 = H * (t + 1) / nt;
    std::vector<int64_t>& out = part[t];
    // A small direct-mapped cache of recently emitted keys drops almost all repeats (a
    // boundary between two regions yields the same pair at every pixel along it), so the
    // final sort sees roughly one key per edge.
    constexpr int64_t kCache = 4096;
    std::vector<int64_t> seen(kCache, -1);
    int64_t my_bad = -1;
    auto add = [&](int64_t a, int64_t b) {
      if (a == b || b < 0) return;
      if (b >= R) {
        my_bad = std::max(my_bad, b);
        return;
      }
      const int64_t k = a < b ? a * R + b : b * R + a;
      int64_t& slot = seen[static_cast<uint64_t>(k * 0x9E3779B97F4A7C15ull) >> 52];
      if (slot != k) {
        out.push_back(k);
        slot = k;
      }
    };
    for (int64_t y = y0; y < y1; ++y) {
      const index_t* row = reg + y * W;
      const index_t* below = y + 1 < H ? row + W : nullptr;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t a = static_cast<int64_t>(row[x]);
        if (a >= R) my_bad = std::max(my_bad, a);
        if (a < 0 || a >= R) continue;
        if (x + 1 < W) add(a, static_cast<int64_t>(row[x + 1]));
        if (below) {
          add(a, static_cast<int64_t>(below[x]));
          if (x + 1 < W) add(a, static_cast<int64_t>(below[x + 1]));
          if (x > 0) add(a, static_cast<int64_t>(below[x - 1]));
        }
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    t_bad[t] = my_bad;
  }
  size_t total = 0;
  for (auto& p : part) total += p.size();
  keys.clear();
  keys.reserve(total);
  for (auto& p : part) keys.insert(keys.end(), p.begin(), p.end());
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  for (int t = 0; t < nt; ++t) bad_id = std::max(bad_id, t_bad[t]);
}

pybind11::list region_adjacency_forward(std::uintptr_t regions, int reg_code, int64_t B, int64_t H, int64_t W,
                                        int64_t R, std::uintptr_t status) {
  std::vector<std::vector<int64_t>> keys(static_cast<size_t>(B));
  int64_t bad_id = -1;
  {
    pybind11::gil_scoped_release nogil;
    MULACT_DISPATCH_INDEX(reg_code, "region_adjacency", [&] {
      const index_t* reg = ptr<const index_t>(regions);
      for (int64_t b = 0; b < B; ++b) adjacency_impl<index_t>(reg + b * H * W, H, W, R, keys[b], bad_id);
    });
  }
  pybind11::list out;
  for (int64_t b = 0; b < B; ++b) {
    const auto& k = keys[b];
    pybind11::array_t<int64_t> edges({static_cast<pybind11::ssize_t>(k.size()), pybind11::ssize_t(2)});
    int64_t* e = edges.mutable_data();
    for (size_t i = 0; i < k.size(); ++i) {
      e[2 * i] = k[i] / R;
      e[2 * i + 1] = k[i] % R;
    }
    out.append(edges);
  }
  report_status(ptr<int32_t>(status), 0, bad_id);
  return out;
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_adjacency) {
  m.def("region_adjacency_forward", &mulact::region_adjacency_forward,
        "Sorted unique 8-connected region pairs (u < v) per image, as (E, 2) int64 arrays (raw pointer input); "
        "ids >= R go to the status buffer");
}
