// Generic reduction of (B, K, N) values over region ids (docs/design.md §2.1), CPU.
//
// Work is split into blocks of pixels of one image; thread t owns a contiguous, statically
// assigned range of blocks and private accumulators for the images that range touches, so no
// atomics are needed. Partials are merged in thread order: within one image the thread ranges
// are increasing in pixel index, so "strictly better wins" keeps the smallest flat index on
// ties and max/min/argmax/count are exact and independent of the thread count; float sums are
// bitwise reproducible for a fixed thread count. Max/min without the arg-extremum (modes 4/5:
// what a call needs when no gradient flows; the backward finds the arg itself) is one
// branch-free select per value instead of a compare-and-record.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "registry.h"

namespace mulact {
namespace {

enum Reduce : int { kSum = 0, kMean = 1, kMax = 2, kMin = 3, kCount = 4, kArgmax = 5 };

constexpr int64_t kBlock = 4096;

template <typename A>
struct Partial {
  int64_t b_lo = 0, b_hi = -1;
  std::vector<A> val;         // (images, R, K): sums or running extrema
  std::vector<int64_t> arg;   // (images, R, K): flat pixel index of the extremum, -1 if none
  std::vector<int64_t> cnt;   // (images, R)
  int64_t bad_id = -1;
};

// mode: 0 = sum (+count), 1 = max (+arg), 2 = min (+arg), 3 = count only, 4 = max, 5 = min (values only).
template <int mode, typename T, typename I>
void reduce_cpu(const T* x, const I* reg, int64_t B, int64_t K, int64_t N, int64_t R,
                typename Acc<T>::type* val_out, int64_t* arg_out, int64_t* cnt_out, int32_t* status) {
  using A = typename Acc<T>::type;
  const int64_t blocks_per_image = (N + kBlock - 1) / kBlock;
  const int64_t total = B * blocks_per_image;
  const int64_t RK = R * K;
  constexpr bool extremum = mode == 1 || mode == 2;
  constexpr bool value_only = mode == 4 || mode == 5;
  constexpr bool largest = mode == 1 || mode == 4;
  const A init = (mode == 1 || mode == 4) ? -std::numeric_limits<A>::infinity()
                 : ((mode == 2 || mode == 5) ? std::numeric_limits<A>::infinity() : A(0));
  const int T_max = num_threads();
  std::vector<Partial<A>> parts(T_max);

#pragma omp parallel num_threads(T_max)
  {
    const int tid = thread_id();
    const int nt = team_size();
    Partial<A>& P = parts[tid];
    const int64_t q0 = total * tid / nt, q1 = total * (tid + 1) / nt;
    if (q0 < q1) {
      P.b_lo = q0 / blocks_per_image;
      P.b_hi = (q1 - 1) / blocks_per_image;
      const int64_t imgs = P.b_hi - P.b_lo + 1;
      P.cnt.assign(imgs * R, 0);
      if constexpr (mode != 3) P.val.assign(imgs * RK, init);
      if (extremum) P.arg.assign(imgs * RK, -1);
    }
    // Runs of equal, valid ids inside the current block, shared by all K planes: superpixels
    // are spatially coherent, so a run is accumulated in registers and stored once, instead of
    // a read-modify-write of the same accumulator for every pixel.
    std::vector<int64_t> run_start, run_end, run_id;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / blocks_per_image;
      const int64_t p0 = (q % blocks_per_image) * kBlock;
      const int64_t p1 = std::min(N, p0 + kBlock);
      const I* rb = reg + b * N;
      int64_t* cb = P.cnt.data() + (b - P.b_lo) * R;
      run_start.clear();
      run_end.clear();
      run_id.clear();
      for (int64_t p = p0; p < p1;) {
        const int64_t id = static_cast<int64_t>(rb[p]);
        int64_t e = p + 1;
        while (e < p1 && static_cast<int64_t>(rb[e]) == id) ++e;
        if (id >= R) {
          P.bad_id = std::max(P.bad_id, id);
        } else if (id >= 0) {
          cb[id] += e - p;
          run_start.push_back(p);
          run_end.push_back(e);
          run_id.push_back(id);
        }
        p = e;
      }
      if constexpr (mode == 3) continue;
      A* vb = P.val.data() + (b - P.b_lo) * RK;
      int64_t* ab = extremum ? P.arg.data() + (b - P.b_lo) * RK : nullptr;
      const int64_t nruns = static_cast<int64_t>(run_id.size());
      // One plane at a time: contiguous reads; the (R, K) accumulators stay in cache.
      for (int64_t k = 0; k < K; ++k) {
        const T* xk = x + (b * K + k) * N;
        for (int64_t j = 0; j < nruns; ++j) {
          const int64_t e = run_end[j];
          const int64_t sl = run_id[j] * K + k;
          if constexpr (mode == 0) {
            A acc = A(0);
            for (int64_t p = run_start[j]; p < e; ++p) acc += static_cast<A>(to_float(xk[p]));
            vb[sl] += acc;
            continue;
          }
          if constexpr (value_only) {
            // A select, not a branch: random values mispredict a compare-and-record. Strict
            // comparison keeps the first of equal values (a -0.0 before a +0.0, as the arg rule).
            // (An OpenMP simd max over the run, then a zero fix-up, was 1.9x slower on these
            // superpixel-length runs: the vector prologue and horizontal reduction dominate.)
            A best = vb[sl];
            for (int64_t p = run_start[j]; p < e; ++p) {
              const A v = static_cast<A>(to_float(xk[p]));
              best = (largest ? v > best : v < best) ? v : best;
            }
            vb[sl] = best;
            continue;
          }
          int64_t arg = run_start[j];
          A best = static_cast<A>(to_float(xk[arg]));
          for (int64_t p = arg + 1; p < e; ++p) {
            const A v = static_cast<A>(to_float(xk[p]));
            if (largest ? v > best : v < best) {  // strict: the first index wins ties
              best = v;
              arg = p;
            }
          }
          if (ab[sl] < 0 || (largest ? best > vb[sl] : best < vb[sl])) {
            vb[sl] = best;
            ab[sl] = arg;
          }
        }
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t br = 0; br < B * R; ++br) {
      const int64_t b = br / R, r = br % R;
      int64_t c = 0;
      for (int t = 0; t < nt; ++t) {
        const Partial<A>& Q = parts[t];
        if (b < Q.b_lo || b > Q.b_hi) continue;
        c += Q.cnt[(b - Q.b_lo) * R + r];
      }
      cnt_out[br] = c;
      if constexpr (mode == 3) continue;
      for (int64_t k = 0; k < K; ++k) {
        A v = init;
        int64_t a = -1;
        for (int t = 0; t < nt; ++t) {
          const Partial<A>& Q = parts[t];
          if (b < Q.b_lo || b > Q.b_hi) continue;
          const int64_t s = (b - Q.b_lo) * RK + r * K + k;
          if (mode == 0) {
            v += Q.val[s];
          } else if (value_only) {
            if (largest ? Q.val[s] > v : Q.val[s] < v) v = Q.val[s];  // strict: earlier threads win ties
          } else if (Q.arg[s] >= 0 && (a < 0 || (mode == 1 ? Q.val[s] > v : Q.val[s] < v))) {
            v = Q.val[s];
            a = Q.arg[s];
          }
        }
        val_out[br * K + k] = ((extremum && a < 0) || (value_only && c == 0)) ? A(0) : v;
        if (extremum) arg_out[br * K + k] = a;
      }
    }
  }
  for (const auto& Q : parts) report_status(status, false, Q.bad_id);
}

void forward(std::uintptr_t values, int dtype, std::uintptr_t regions, int index_dtype, int64_t B, int64_t K,
             int64_t N, int64_t R, int mode, std::uintptr_t val_out, std::uintptr_t arg_out, std::uintptr_t cnt_out,
             std::uintptr_t status) {
  if (mode < 0 || mode > 5) fail("region_reduce: unknown mode code");
  MULACT_DISPATCH_FLOAT(dtype, "region_reduce", [&] {
    MULACT_DISPATCH_INDEX(index_dtype, "region_reduce", [&] {
      using A = typename Acc<scalar_t>::type;
      // The mode is a template argument so the per-pixel loops carry no mode tests.
      auto run = [&](auto mode_tag) {
        reduce_cpu<decltype(mode_tag)::value, scalar_t, index_t>(
            ptr<const scalar_t>(values), ptr<const index_t>(regions), B, K, N, R, ptr<A>(val_out),
            ptr<int64_t>(arg_out), ptr<int64_t>(cnt_out), ptr<int32_t>(status));
      };
      switch (mode) {
        case 0: run(std::integral_constant<int, 0>{}); break;
        case 1: run(std::integral_constant<int, 1>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 5: run(std::integral_constant<int, 5>{}); break;
        default: run(std::integral_constant<int, 3>{}); break;
      }
    });
  });
}

// grad_values[b, k, p] = g[b, id(p), k] (0 where id < 0); g is (B, R, K) in the accumulator
// type of `dtype`, already divided by the region size for mean.
template <typename T, typename I>
void gather_cpu(const typename Acc<T>::type* g, const I* reg, int64_t B, int64_t K, int64_t N, int64_t R, T* out) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      const I* rb = reg + b * N;
      const auto* gb = g + b * R * K + k;
      T* ob = out + (b * K + k) * N;
      for (int64_t p = 0; p < N; ++p) {
        const int64_t id = static_cast<int64_t>(rb[p]);
        const float v = (id >= 0 && id < R) ? static_cast<float>(gb[id * K]) : 0.0f;
        if constexpr (std::is_same_v<T, double>) {
          ob[p] = (id >= 0 && id < R) ? gb[id * K] : 0.0;
        } else {
          ob[p] = from_float<T>(v);
        }
      }
    }
  }
}

void backward_gather(std::uintptr_t grad, int dtype, std::uintptr_t regions, int index_dtype, int64_t B, int64_t K,
                     int64_t N, int64_t R, std::uintptr_t out) {
  MULACT_DISPATCH_FLOAT(dtype, "region_reduce", [&] {
    MULACT_DISPATCH_INDEX(index_dtype, "region_reduce", [&] {
      using A = typename Acc<scalar_t>::type;
      gather_cpu<scalar_t, index_t>(ptr<const A>(grad), ptr<const index_t>(regions), B, K, N, R,
                                    ptr<scalar_t>(out));
    });
  });
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_reduce) {
  m.def("region_reduce_forward", &mulact::forward,
        "Reduce (B, K, N) values over region ids: mode 0 sum, 1 max, 2 min (with flat argument), 3 count only, "
        "4 max, 5 min (values only).",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("region_reduce_backward_gather", &mulact::backward_gather,
        "grad_values[b, k, p] = grad[b, id(p), k] for the sum/mean backward.",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
