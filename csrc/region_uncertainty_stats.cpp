// Acquisition statistics in one pass over the logits (SPEC 3.2), CPU.
//
// Work unit: a block of BLK consecutive pixels of one image. A block is loaded once (all C
// class planes, each a contiguous run of BLK values) into a small scratch buffer that stays in
// L1; top-1/top-2, the softmax denominator, the pixel uncertainty and the block's softmax sum
// are then computed with loops that run *along pixels*, which the compiler vectorises (the
// exponential is a branch-free polynomial for that reason). Only the scatter of (u, 1) into
// the (R, C) accumulators is scalar.
//
// Determinism: thread t owns a contiguous, statically assigned range of blocks and its own
// partial accumulators for the images that range touches; partials are summed in thread order.
// Counts and top-1 assignment are exact; float sums are bitwise reproducible for a fixed
// thread count.
// Without trapping math (see simd.h) the selects of the block loops if-convert and vectorise.
#define MULACT_NO_TRAPPING_MATH
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "fast_exp.h"
#include "registry.h"

namespace mulact {
namespace {

enum Measure : int { kBvsb = 0, kMargin = 1, kEntropy = 2, kLeastConfidence = 3 };

constexpr int64_t kBlock = 64;

template <typename A>
struct Partial {
  int64_t b_lo = 0, b_hi = -1;  // images [b_lo, b_hi] touched by this thread's blocks
  std::vector<A> u;             // (b_hi - b_lo + 1, R, C)
  std::vector<int32_t> n;       // same shape
  std::vector<double> prob;     // (C,)
  int64_t pixels = 0;
  int64_t bad_id = -1;
  bool nonfinite = false;
};

template <typename A>
struct Scratch {
  alignas(64) A m1[kBlock], m2[kBlock], s[kBlock], ent[kBlock], chk[kBlock], topf[kBlock], u[kBlock], w[kBlock];
};

// One block of n <= kBlock pixels: reads the C class rows (stride N) once into z (C x kBlock),
// leaves u(x) in S.u and the top-1 class in S.topf, adds the block's softmax sum over valid
// pixels (valid[i] in {0, 1}) to prob, and returns whether a non-finite logit was seen.
template <typename T, typename A>
MULACT_CLONES_AVX512 bool block_stats(const T* __restrict xb, int64_t N, int64_t n, int64_t C, A inv_t, int measure,
                                    const A* __restrict valid, A* __restrict z, Scratch<A>& S,
                                    A* __restrict prob) {
  A* __restrict m1 = S.m1;
  A* __restrict m2 = S.m2;
  A* __restrict s = S.s;
  A* __restrict ent = S.ent;
  A* __restrict chk = S.chk;
  A* __restrict topf = S.topf;
  A* __restrict u = S.u;
  A* __restrict w = S.w;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < n; ++i) { m1[i] = neg_inf; m2[i] = neg_inf; topf[i] = A(0); chk[i] = A(0); }
  // Load + top-2. Strict `>` keeps the smaller class on ties; the runner-up update
  // max(m2, min(v, m1)) covers both "v is the new best" and "v is a new second".
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict row = xb + c * N;
    A* __restrict zc = z + c * kBlock;
    const A cf = static_cast<A>(c);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const A v = static_cast<A>(to_float(row[i])) * inv_t;
      const A b = m1[i], s2 = m2[i], t = topf[i];
      zc[i] = v;
      chk[i] += v * A(0);  // NaN iff some logit of the pixel is NaN or +-Inf
      const A lo = v < b ? v : b;
      m2[i] = s2 > lo ? s2 : lo;
      // Blend arithmetically: two selects on one condition become a branch in GCC.
      topf[i] = t + static_cast<A>(v > b) * (cf - t);
      m1[i] = v > b ? v : b;
    }
  }
  for (int64_t i = 0; i < n; ++i) { s[i] = A(0); ent[i] = A(0); }
  if (measure == kEntropy) {
    for (int64_t c = 0; c < C; ++c) {
      A* __restrict zc = z + c * kBlock;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const A d = zc[i] - m1[i];
        const A e = fast_exp(d);
        zc[i] = e;
        s[i] += e;
        ent[i] += e * d;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      A* __restrict zc = z + c * kBlock;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const A e = fast_exp(zc[i] - m1[i]);
        zc[i] = e;
        s[i] += e;
      }
    }
  }
  A bad = A(0);
#pragma omp simd reduction(+ : bad)
  for (int64_t i = 0; i < n; ++i) bad += chk[i];
  // Per-pixel uncertainty; p_b = 1 / s because the top-1 numerator is exp(0).
  switch (measure) {
    case kBvsb:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = fast_exp(m2[i] - m1[i]);  // 0 when C == 1 (m2 = -inf)
      break;
    case kMargin:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = A(1) - (A(1) - fast_exp(m2[i] - m1[i])) / s[i];
      break;
    case kEntropy:
      for (int64_t i = 0; i < n; ++i) u[i] = std::log(s[i]) - ent[i] / s[i];
      break;
    default:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = A(1) - A(1) / s[i];
      break;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] = valid[i] / s[i];
  for (int64_t c = 0; c < C; ++c) {
    const A* __restrict zc = z + c * kBlock;
    A acc = A(0);
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += zc[i] * w[i];
    prob[c] += acc;
  }
  return !(bad == A(0));
}

template <typename T, typename I>
void stats_cpu(const T* x, const I* reg, int64_t B, int64_t C, int64_t N, int64_t R, double inv_t_d,
               int measure, float* u_out, int32_t* n_out, float* prob_out, int32_t* status, int64_t* pixels_out) {
  using A = typename Acc<T>::type;
  const A inv_t = static_cast<A>(inv_t_d);
  const int64_t blocks_per_image = (N + kBlock - 1) / kBlock;
  const int64_t total = B * blocks_per_image;
  const int64_t RC = R * C;
  const int T_max = num_threads();
  std::vector<Partial<A>> parts(T_max);
  int used_threads = 1;

#pragma omp parallel num_threads(T_max)
  {
    const int tid = thread_id();
    const int nt = team_size();
#pragma omp single
    used_threads = nt;
    Partial<A>& P = parts[tid];
    const int64_t q0 = total * tid / nt, q1 = total * (tid + 1) / nt;
    P.prob.assign(C, 0.0);
    if (q0 < q1) {
      P.b_lo = q0 / blocks_per_image;
      P.b_hi = (q1 - 1) / blocks_per_image;
      P.u.assign((P.b_hi - P.b_lo + 1) * RC, A(0));
      P.n.assign((P.b_hi - P.b_lo + 1) * RC, 0);
    }
    std::vector<A> z(C * kBlock);
    std::vector<A> prob_blk(C);
    Scratch<A> S;
    alignas(64) A valid[kBlock];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / blocks_per_image;
      const int64_t p0 = (q % blocks_per_image) * kBlock;
      const int64_t n = std::min(kBlock, N - p0);
      const I* rb = reg + b * N + p0;
      for (int64_t i = 0; i < n; ++i) valid[i] = rb[i] >= 0 ? A(1) : A(0);
      std::fill(prob_blk.begin(), prob_blk.end(), A(0));
      if (block_stats<T, A>(x + b * C * N + p0, N, n, C, inv_t, measure, valid, z.data(), S, prob_blk.data()))
        P.nonfinite = true;
      for (int64_t c = 0; c < C; ++c) P.prob[c] += static_cast<double>(prob_blk[c]);
      const A* u = S.u;
      const A* topf = S.topf;
      A* ub = P.u.data() + (b - P.b_lo) * RC;
      int32_t* nb = P.n.data() + (b - P.b_lo) * RC;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t id = static_cast<int64_t>(rb[i]);
        if (id < 0) continue;
        if (id >= R) {
          P.bad_id = std::max(P.bad_id, id);
          continue;
        }
        const int64_t k = id * C + static_cast<int64_t>(topf[i]);
        ub[k] += u[i];
        nb[k] += 1;
        ++P.pixels;
      }
    }
#pragma omp barrier
    // Fixed-order reduction of the partials, parallel over (image, region, class) entries.
#pragma omp for schedule(static)
    for (int64_t e = 0; e < B * RC; ++e) {
      const int64_t b = e / RC, k = e % RC;
      A su = A(0);
      int32_t sn = 0;
      for (int t = 0; t < nt; ++t) {
        const Partial<A>& Q = parts[t];
        if (b < Q.b_lo || b > Q.b_hi) continue;
        su += Q.u[(b - Q.b_lo) * RC + k];
        sn += Q.n[(b - Q.b_lo) * RC + k];
      }
      u_out[e] = static_cast<float>(su);
      n_out[e] = sn;
    }
  }
  int64_t pixels = 0;
  for (int64_t c = 0; c < C; ++c) {
    double acc = 0.0;
    for (int t = 0; t < used_threads; ++t) acc += parts[t].prob[c];
    prob_out[c] = static_cast<float>(acc);
  }
  for (int t = 0; t < used_threads; ++t) {
    pixels += parts[t].pixels;
    report_status(status, parts[t].nonfinite, parts[t].bad_id);
  }
  *pixels_out = pixels;
}

int64_t forward(std::uintptr_t logits, int dtype, std::uintptr_t regions, int index_dtype, int64_t B, int64_t C,
                int64_t N, int64_t R, double inv_t, int measure, std::uintptr_t u_sum, std::uintptr_t count,
                std::uintptr_t prob_sum, std::uintptr_t status) {
  if (measure < kBvsb || measure > kLeastConfidence) fail("region_uncertainty_stats: unknown measure code");
  int64_t pixels = 0;
  MULACT_DISPATCH_FLOAT(dtype, "region_uncertainty_stats", [&] {
    MULACT_DISPATCH_INDEX(index_dtype, "region_uncertainty_stats", [&] {
      stats_cpu<scalar_t, index_t>(ptr<const scalar_t>(logits), ptr<const index_t>(regions), B, C, N, R, inv_t,
                                   measure, ptr<float>(u_sum), ptr<int32_t>(count), ptr<float>(prob_sum),
                                   ptr<int32_t>(status), &pixels);
    });
  });
  return pixels;
}

}  // namespace
}  // namespace mulact

MULACT_REGISTER(region_uncertainty_stats) {
  m.def("region_uncertainty_stats_forward", &mulact::forward,
        "One pass over (B, C, N) logits: per-(image, region, top-1 class) uncertainty sums and counts, "
        "softmax sums over valid pixels; returns the number of valid pixels.",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
