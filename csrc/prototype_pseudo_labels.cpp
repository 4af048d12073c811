// Stage-2 pseudo labels from class prototypes (docs/design.md §2.6), CPU.
//
// Per image (semantics: mulact/ops/prototype_pseudo_labels.py), one function per step:
//   1. scan_regions: one pass over the region map: region-id check, labeled/unlabeled adjacency pairs (four
//      forward 8-neighbour shifts; pairs sorted + deduplicated afterwards) and the prototype
//      argmax of log_softmax(logits/tau) per (labeled region, labeled class), evaluated like
//      region_class_argmax ((z - max) - log1p(sum of the other exps)), with per-thread partial
//      maxima merged by (larger value, then smaller index). Only labeled pixels' logits are
//      read, and checked for NaN/Inf (status[0] = 1);
//   2. gather_features: a contiguous NaN/Inf scan (status[0] = 2), then a channels-last float32 copy
//      at their own (low) resolution of the pixels anything interpolates from;
//   3. build_prototypes: the upsampled feature at each x*_{r,c}, normalised;
//   4. localize: localization over the pixels of labeled regions, recording (prototype, similarity);
//   5. median_thresholds: exact lower medians per prototype: counting sort by prototype + nth_element;
//   6. expand_labels: expansion, region by region, over the unlabeled regions touching a labeled one, against
//      the prototypes of all their labeled neighbours. Bilinear interpolation is linear, so a
//      per-region table of low-resolution dots bounds every pixel's similarities cheaply; only
//      pixels within a safe margin of a threshold are evaluated exactly (labels are exactly
//      those of the direct evaluation).
// Each pixel's feature is interpolated on the fly (PyTorch's operation order) into a D-float
// scratch vector, so the (D, H, W) upsampled tensor never exists. The per-pixel hot loops have
// an AVX2/FMA clone picked at run time. Every decision is a deterministic function of per-pixel
// values and the partial argmaxes merge order-independently: the result does not depend on the
// number of threads or on the (dynamic) schedule, which keeps a shared, oversubscribed CPU from
// stalling every pass on one descheduled thread.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common.h"
#include "simd.h"
#include "registry.h"

namespace mulact {
namespace ppl {

constexpr float kEps = 1e-12f;
constexpr int64_t kIgnore = 255;

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

// Dot product with 8 fixed lanes reduced in a fixed order: the rounding depends only on the
// operands (not on their addresses), so equal feature vectors give bit-equal similarities.
MULACT_INLINE float dot8(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// out[j] = dot8(a, bs[j], n) for j < m. The baseline build calls dot8 per vector; the AVX2/FMA
// build (dots_fma) sweeps up to four vectors at once with the same per-lane FMA order, so the
// results are bit-identical to dot8 there, but four independent chains hide the FMA latency
// that makes a single dot8 latency-bound.
inline void dots_base(const float* __restrict a, const float* const* bs, int64_t m, int64_t n, float* out) {
  for (int64_t j = 0; j < m; ++j) out[j] = dot8(a, bs[j], n);
}

#if MULACT_X86_SIMD
MULACT_TARGET_AVX2_FMA inline float lanes_sum(__m256 v) {
  alignas(32) float acc[8];
  _mm256_store_ps(acc, v);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <int NV>
MULACT_TARGET_AVX2_FMA inline void dots_fma_n(const float* __restrict a, const float* const* bs,
                                                int64_t n, float* out) {
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 va = _mm256_loadu_ps(a + i);
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(va, _mm256_loadu_ps(bs[v] + i), acc[v]);
  }
  for (int v = 0; v < NV; ++v) {
    if (i < n) {
      alignas(32) float t[8];
      _mm256_store_ps(t, acc[v]);
      for (int64_t j = i, l = 0; j < n; ++j, ++l) t[l] = std::fma(a[j], bs[v][j], t[l]);
      acc[v] = _mm256_load_ps(t);
    }
    out[v] = lanes_sum(acc[v]);
  }
}

MULACT_TARGET_AVX2_FMA void dots_fma(const float* __restrict a, const float* const* bs, int64_t m,
                                     int64_t n, float* out) {
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) dots_fma_n<4>(a, bs + j, n, out + j);
  switch (m - j) {
    case 3: dots_fma_n<3>(a, bs + j, n, out + j); break;
    case 2: dots_fma_n<2>(a, bs + j, n, out + j); break;
    case 1: dots_fma_n<1>(a, bs + j, n, out + j); break;
    default: break;
  }
}
#endif

using DotsFn = void (*)(const float*, const float* const*, int64_t, int64_t, float*);

// Channels-last copy of float32 features for pixels [i0, i1): dst[i * D + d] = src[d * FHW + i].
// The AVX2 version transposes 8x8 tiles in registers; both only move values.
using CopyFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, float*);

inline void copy_cl_base(const float* __restrict src, int64_t FHW, int64_t D, int64_t i0, int64_t i1,
                         float* __restrict dst) {
  for (int64_t d0 = 0; d0 < D; d0 += 8)
    for (int64_t t0 = i0; t0 < i1; t0 += 8)
      for (int64_t i = t0; i < std::min(i1, t0 + 8); ++i)
        for (int64_t d = d0; d < std::min(D, d0 + 8); ++d) dst[i * D + d] = src[d * FHW + i];
}

#if MULACT_X86_SIMD
MULACT_TARGET_AVX2_FMA void copy_cl_avx2(const float* __restrict src, int64_t FHW, int64_t D, int64_t i0,
                                         int64_t i1, float* __restrict dst) {
  int64_t d0 = 0;
  for (; d0 + 8 <= D; d0 += 8) {
    int64_t t0 = i0;
    for (; t0 + 8 <= i1; t0 += 8) {
      const float* s0 = src + d0 * FHW + t0;
      const __m256 r0 = _mm256_loadu_ps(s0), r1 = _mm256_loadu_ps(s0 + FHW), r2 = _mm256_loadu_ps(s0 + 2 * FHW),
                   r3 = _mm256_loadu_ps(s0 + 3 * FHW), r4 = _mm256_loadu_ps(s0 + 4 * FHW),
                   r5 = _mm256_loadu_ps(s0 + 5 * FHW), r6 = _mm256_loadu_ps(s0 + 6 * FHW),
                   r7 = _mm256_loadu_ps(s0 + 7 * FHW);
      const __m256 a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1), a2 = _mm256_unpacklo_ps(r2, r3),
                   a3 = _mm256_unpackhi_ps(r2, r3), a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5),
                   a6 = _mm256_unpacklo_ps(r6, r7), a7 = _mm256_unpackhi_ps(r6, r7);
      const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE),
                   b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE),
                   b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE),
                   b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
      float* o = dst + t0 * D + d0;
      _mm256_storeu_ps(o + 0 * D, _mm256_permute2f128_ps(b0, b4, 0x20));
      _mm256_storeu_ps(o + 1 * D, _mm256_permute2f128_ps(b1, b5, 0x20));
      _mm256_storeu_ps(o + 2 * D, _mm256_permute2f128_ps(b2, b6, 0x20));
      _mm256_storeu_ps(o + 3 * D, _mm256_permute2f128_ps(b3, b7, 0x20));
      _mm256_storeu_ps(o + 4 * D, _mm256_permute2f128_ps(b0, b4, 0x31));
      _mm256_storeu_ps(o + 5 * D, _mm256_permute2f128_ps(b1, b5, 0x31));
      _mm256_storeu_ps(o + 6 * D, _mm256_permute2f128_ps(b2, b6, 0x31));
      _mm256_storeu_ps(o + 7 * D, _mm256_permute2f128_ps(b3, b7, 0x31));
    }
    for (int64_t i = t0; i < i1; ++i)
      for (int64_t d = d0; d < d0 + 8; ++d) dst[i * D + d] = src[d * FHW + i];
  }
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t d = d0; d < D; ++d) dst[i * D + d] = src[d * FHW + i];
}
#endif

// The per-pixel hot path: bilinear interpolation of one pixel's feature into u (same operation
// order as PyTorch's CPU kernel), its norm, and the clamped cosine to the unit prototypes
// klist[0..nk) into s. Returns max(|u|, eps).
MULACT_INLINE float pixel_sims_body(const float* __restrict f00, const float* __restrict f01,
                                 const float* __restrict f10, const float* __restrict f11, float bl0, float bl1,
                                 float al0, float al1, int64_t D, const float* __restrict protos,
                                 const int64_t* __restrict klist, int64_t nk, float* __restrict u,
                                 float* __restrict s, DotsFn dots) {
  for (int64_t d = 0; d < D; ++d) u[d] = (f00[d] * bl0 + f01[d] * bl1) * al0 + (f10[d] * bl0 + f11[d] * bl1) * al1;
  // |u|^2 and the nk prototype dots in sweeps of four independent chains
  const float* bs[4];
  float dv[4];
  bs[0] = u;
  int64_t m = 1, j0 = 0;
  float n = 0.f;
  bool first = true;
  for (int64_t j = 0; j <= nk; ++j) {
    if (j < nk) bs[m++] = protos + klist[j] * D;
    if (m == 4 || (j == nk && m > 0)) {
      dots(u, bs, m, D, dv);
      int64_t o = 0;
      if (first) {
        n = std::max(std::sqrt(dv[0]), kEps);
        o = 1;
        first = false;
      }
      for (; o < m; ++o, ++j0) {
        const float v = dv[o] / n;
        s[j0] = std::min(std::max(v, -1.f), 1.f);
      }
      m = 0;
    }
  }
  return n;
}

using SimsFn = float (*)(const float*, const float*, const float*, const float*, float, float, float, float, int64_t,
                         const float*, const int64_t*, int64_t, float*, float*);

float pixel_sims_base(const float* f00, const float* f01, const float* f10, const float* f11, float bl0, float bl1,
                      float al0, float al1, int64_t D, const float* protos, const int64_t* klist, int64_t nk, float* u,
                      float* s) {
  return pixel_sims_body(f00, f01, f10, f11, bl0, bl1, al0, al1, D, protos, klist, nk, u, s, dots_base);
}

#if MULACT_X86_SIMD
// The same code compiled for AVX2/FMA, picked at run time where the CPU has it (the extension
// itself targets baseline x86-64). Results are deterministic on a given machine; FMA rounding
// may differ from the baseline build in the last bit.
MULACT_TARGET_AVX2_FMA float pixel_sims_avx2(const float* f00, const float* f01, const float* f10,
                                             const float* f11, float bl0, float bl1, float al0, float al1,
                                             int64_t D, const float* protos, const int64_t* klist,
                                             int64_t nk, float* u, float* s) {
  return pixel_sims_body(f00, f01, f10, f11, bl0, bl1, al0, al1, D, protos, klist, nk, u, s, dots_fma);
}
#endif

// Expansion pre-filter tables for one region: for every low-resolution tap (i, j) of the box
// [i_lo, i_lo + bh) x [j_lo, j_lo + bw), the dots with the prototypes klist[0..nk) (dk) and the
// Gram entries with its right, lower, lower-right neighbours and the anti-diagonal pair of its
// 2x2 block (g, 5 per tap). Bilinear interpolation is linear, so these give <u, p> and |u|^2
// of every pixel in the box with a few scalar operations.
MULACT_INLINE void table_body(const float* __restrict feat, int64_t fw, int64_t D, int64_t i_lo, int64_t bh, int64_t j_lo,
                           int64_t bw, const float* __restrict protos, const int64_t* __restrict klist, int64_t nk,
                           float* __restrict dk, float* __restrict g, DotsFn dots) {
  for (int64_t ti = 0; ti < bh; ++ti)
    for (int64_t tj = 0; tj < bw; ++tj) {
      const int64_t t = ti * bw + tj;
      const float* f = feat + ((i_lo + ti) * fw + j_lo + tj) * D;
      const bool right = tj + 1 < bw, down = ti + 1 < bh;
      const float* fr = f + D;
      const float* fd = f + fw * D;
      // every dot with f in sweeps of four independent chains (see dots8)
      const float* bs[4];
      float* dst[4];
      float dv[4];
      int64_t m = 0;
      auto push = [&](const float* b, float* d) {
        bs[m] = b;
        dst[m++] = d;
        if (m == 4) {
          dots(f, bs, m, D, dv);
          for (int64_t o = 0; o < m; ++o) *dst[o] = dv[o];
          m = 0;
        }
      };
      push(f, &g[t * 5 + 0]);
      if (right) push(fr, &g[t * 5 + 1]);
      if (down) push(fd, &g[t * 5 + 2]);
      if (right && down) push(fd + D, &g[t * 5 + 3]);
      for (int64_t j = 0; j < nk; ++j) push(protos + klist[j] * D, &dk[t * nk + j]);
      if (m > 0) {
        dots(f, bs, m, D, dv);
        for (int64_t o = 0; o < m; ++o) *dst[o] = dv[o];
      }
      if (!right) g[t * 5 + 1] = 0.f;
      if (!down) g[t * 5 + 2] = 0.f;
      g[t * 5 + 3] = right && down ? g[t * 5 + 3] : 0.f;
      g[t * 5 + 4] = right && down ? dot8(fr, fd, D) : 0.f;
    }
}

using TableFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                         const int64_t*, int64_t, float*, float*);

void table_base(const float* feat, int64_t fw, int64_t D, int64_t i_lo, int64_t bh, int64_t j_lo, int64_t bw,
                const float* protos, const int64_t* klist, int64_t nk, float* dk, float* g) {
  table_body(feat, fw, D, i_lo, bh, j_lo, bw, protos, klist, nk, dk, g, dots_base);
}

#if MULACT_X86_SIMD
MULACT_TARGET_AVX2_FMA void table_avx2(const float* feat, int64_t fw, int64_t D, int64_t i_lo, int64_t bh,
                                       int64_t j_lo, int64_t bw, const float* protos, const int64_t* klist,
                                       int64_t nk, float* dk, float* g) {
  table_body(feat, fw, D, i_lo, bh, j_lo, bw, protos, klist, nk, dk, g, dots_fma);
}
#endif

struct Image {
  const float* feat;  // (fh, fw, D) channels-last float32
  int64_t D, fw;
  const std::vector<Tap>* ty;
  const std::vector<Tap>* tx;
  int64_t W;
  const float* protos;
  SimsFn fn;

  // Upsampled feature of pixel p into u and its cosines to prototypes klist[0..nk) into s;
  // returns max(|u|, eps).
  float sims(int64_t p, const int64_t* klist, int64_t nk, float* u, float* s) const {
    const Tap& a = (*ty)[p / W];
    const Tap& b = (*tx)[p % W];
    return fn(feat + (a.i0 * fw + b.i0) * D, feat + (a.i0 * fw + b.i1) * D, feat + (a.i1 * fw + b.i0) * D,
              feat + (a.i1 * fw + b.i1) * D, b.l0, b.l1, a.l0, a.l1, D, protos, klist, nk, u, s);
  }
};

// Expansion pre-filter. From the tables of `table_body`, <u, p_k> and |u|^2 of a pixel follow
// by linearity in double precision. They differ from the direct float32 evaluation only by
// float32 rounding of D-term dots, amplified by rho^2 = (sum_t w_t |f_t|)^2 / |u|^2 when the
// taps cancel. A pixel whose every estimate is below alpha_k by more than a generous bound on
// that difference cannot be a candidate and is skipped; every other pixel (and every pixel
// where the bound is not small) goes through the exact path, so the labels are exactly those
// of the direct evaluation.
inline bool maybe_candidate(const Tap& a, const Tap& b, int64_t i_lo, int64_t j_lo, int64_t bw, const float* dk,
                            const float* g, const int64_t* klist, int64_t nk, const float* alpha, int64_t D) {
  const int64_t ti0 = a.i0 - i_lo, ti1 = a.i1 - i_lo, tj0 = b.i0 - j_lo, tj1 = b.i1 - j_lo;
  const bool dy = ti1 != ti0, dx = tj1 != tj0;
  const int64_t t00 = ti0 * bw + tj0, t01 = ti0 * bw + tj1, t10 = ti1 * bw + tj0, t11 = ti1 * bw + tj1;
  const double s00 = g[t00 * 5], s01 = g[t01 * 5], s10 = g[t10 * 5], s11 = g[t11 * 5];
  const double h0 = dx ? g[t00 * 5 + 1] : s00;  // <f00, f01>
  const double h1 = dx ? g[t10 * 5 + 1] : s10;  // <f10, f11>
  const double v0 = dy ? g[t00 * 5 + 2] : s00;  // <f00, f10>
  const double v1 = dy ? g[t01 * 5 + 2] : s01;  // <f01, f11>
  const double dg = dy && dx ? g[t00 * 5 + 3] : dy ? v0 : dx ? h0 : s00;  // <f00, f11>
  const double ad = dy && dx ? g[t00 * 5 + 4] : dy ? v0 : dx ? h0 : s00;  // <f01, f10>
  const double w00 = double(a.l0) * b.l0, w01 = double(a.l0) * b.l1, w10 = double(a.l1) * b.l0,
               w11 = double(a.l1) * b.l1;
  const double n2 = w00 * w00 * s00 + w01 * w01 * s01 + w10 * w10 * s10 + w11 * w11 * s11 +
                    2 * (w00 * w01 * h0 + w10 * w11 * h1 + w00 * w10 * v0 + w01 * w11 * v1 + w00 * w11 * dg +
                         w01 * w10 * ad);
  const double nabs = w00 * std::sqrt(std::max(s00, 0.0)) + w01 * std::sqrt(std::max(s01, 0.0)) +
                      w10 * std::sqrt(std::max(s10, 0.0)) + w11 * std::sqrt(std::max(s11, 0.0));
  if (!(n2 > 1e-20) || nabs * nabs > 1e6 * n2) return true;
  const double err = 4e-7 * static_cast<double>(D + 8) * (nabs * nabs / n2) + 1e-6;
  if (err > 1e-3) return true;
  const double margin = 1e-3 + err;
  const double inv = 1.0 / std::sqrt(n2);
  for (int64_t j = 0; j < nk; ++j) {
    const double d = w00 * dk[t00 * nk + j] + w01 * dk[t01 * nk + j] + w10 * dk[t10 * nk + j] + w11 * dk[t11 * nk + j];
    if (d * inv > static_cast<double>(alpha[klist[j]]) - margin) return true;
  }
  return false;
}

// ---- the steps of one call ----------------------------------------------------------------

// Shapes and scratch shared by the steps. The steps copy what their loops read into locals,
// so the OpenMP regions see plain scalars as before the split.
struct Frame {
  int64_t D, fh, fw, FHW, C, H, W, HW, R;
  float tau;
  int nthreads;
  std::vector<Tap> ty, tx;  // bilinear taps of the output rows / columns
  SimsFn sims_fn;
  TableFn table_fn;
  CopyFn copy_fn;
  float* feat;     // (fh, fw, D) channels-last float32 features of the current image
  int64_t* rec_k;  // (HW,) prototype that localized each pixel, -1 = none
  float* rec_s;    // (HW,) its similarity
};

inline Image image_of(const Frame& f, const float* protos) {
  return Image{f.feat, f.D, f.fw, &f.ty, &f.tx, f.W, protos, f.sims_fn};
}

// One image's labeled (region, class) pairs as compact slots: the argmax partials index by them.
struct LabelSlots {
  std::vector<uint8_t> labeled;  // (R,) region has a labeled class
  std::vector<int64_t> slot;     // (R * C,) slot of (r, c), -1 = not labeled
  int64_t S = 0;
  std::vector<int64_t> rs_start, rs_c, rs_sl;  // region -> (class, slot) of its labeled classes
};

inline LabelSlots label_slots(const uint8_t* lab, int64_t R, int64_t C) {
  LabelSlots ls;
  ls.labeled.assign(R, 0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) ls.labeled[r] |= lab[r * C + c] ? 1 : 0;
  ls.slot.assign(R * C, -1);
  for (int64_t i = 0; i < R * C; ++i)
    if (lab[i]) ls.slot[i] = ls.S++;
  ls.rs_start.assign(R + 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < C; ++c)
      if (ls.slot[r * C + c] >= 0) {
        ls.rs_c.push_back(c);
        ls.rs_sl.push_back(ls.slot[r * C + c]);
      }
    ls.rs_start[r + 1] = static_cast<int64_t>(ls.rs_c.size());
  }
  return ls;
}

struct Scan {
  std::vector<int64_t> pidx;   // (S,) prototypical pixel x*_{r,c} of each slot, -1 = none
  std::vector<int64_t> pairs;  // sorted unique keys u * R + l of adjacent (unlabeled u, labeled l)
  int32_t nonfinite = 0;       // 1: a labeled pixel's logits hold NaN/Inf
  int64_t bad_id = -1;         // largest region id >= R
};

// Step 1, one pass over the region map: region-id check, labeled/unlabeled adjacency pairs and
// the prototype argmax (Eq. 8) per labeled (region, class), merged over the threads' partials.
template <typename lscalar_t, typename index_t>
Scan scan_regions(const Frame& f, const index_t* reg, const lscalar_t* lg, const LabelSlots& ls) {
  const int64_t H = f.H, W = f.W, HW = f.HW, C = f.C, R = f.R, S = ls.S;
  const float tau = f.tau;
  const int nthreads = f.nthreads;
  const uint8_t* labeled = ls.labeled.data();
  const int64_t* slot = ls.slot.data();
  const int64_t* rs_start = ls.rs_start.data();
  const int64_t* rs_c = ls.rs_c.data();
  const int64_t* rs_sl = ls.rs_sl.data();
  Scan scan;
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
#pragma omp for schedule(dynamic, 8)
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
        // most pixels are inside their region: all four forward neighbours share its id
        const bool inner = y + 1 < H && x >= 1 && x + 1 < W && reg[p + 1] == reg[p] && reg[p + W - 1] == reg[p] &&
                           reg[p + W] == reg[p] && reg[p + W + 1] == reg[p];
        for (int k = 0; k < 4 && !inner; ++k) {
          const int64_t yy = y + dys[k], xx = x + dxs[k];
          if (yy >= H || xx < 0 || xx >= W) continue;
          const int64_t q = static_cast<int64_t>(reg[yy * W + xx]);
          if (q < 0 || q >= R || q == r || labeled[q] == labeled[r]) continue;
          pairs.push_back(labeled[r] ? q * R + r : r * R + q);  // key (unlabeled, labeled)
        }
        if (!labeled[r]) continue;
        // log_softmax_c = (z_c - max) - log1p(sum of the other classes' exp(z - max)), the
        // evaluation of region_class_argmax: log1p keeps confident pixels apart
        float m = -std::numeric_limits<float>::infinity();
        int64_t am = 0;
        bool fin = true;
        for (int64_t c = 0; c < C; ++c) {
          const float v = to_float(lg[c * HW + p]);
          fin = fin && std::isfinite(v);
          z[c] = v / tau;
          if (z[c] > m) {
            m = z[c];
            am = c;
          }
        }
        if (!fin || !std::isfinite(m)) {
          nf = 1;
          continue;
        }
        // (z_c - m) - lse <= z_c - m in float arithmetic (lse >= 0), so a pixel whose every
        // bound loses to the running best cannot win a slot: skip its C exps
        bool may_win = false;
        for (int64_t e = rs_start[r]; e < rs_start[r + 1] && !may_win; ++e) {
          const int64_t sl = rs_sl[e];
          const float ub = z[rs_c[e]] - m;
          may_win = ub > best[sl] || (ub == best[sl] && p < bidx[sl]);
        }
        if (!may_win) continue;
        float rest = 0.f;
        for (int64_t c = 0; c < C; ++c)
          if (c != am) rest += std::exp(z[c] - m);
        const float lse = std::log1p(rest);
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
  scan.nonfinite = nf;
  scan.bad_id = bad;
  if (nf || bad >= 0) return scan;

  // merge the partial argmaxes: (largest value, then smallest index) is order independent
  scan.pidx.assign(S, -1);
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
    scan.pidx[sl] = bi < HW ? bi : -1;
  }

  for (auto& v : tpairs) scan.pairs.insert(scan.pairs.end(), v.begin(), v.end());
  std::sort(scan.pairs.begin(), scan.pairs.end());
  scan.pairs.erase(std::unique(scan.pairs.begin(), scan.pairs.end()), scan.pairs.end());
  return scan;
}

// Step 2, features: a contiguous NaN/Inf scan of every value (returns 2 if one is found, else
// 0), then the channels-last float32 copy into f.feat of the low-resolution pixels that some
// pixel to label interpolates from: the taps of labeled regions and, with expansion, of the
// unlabeled regions touching them.
template <typename scalar_t, typename index_t>
int32_t gather_features(const Frame& f, const scalar_t* fb, const index_t* reg, const uint8_t* labeled,
                        const std::vector<int64_t>& pairs, bool expand) {
  const int64_t D = f.D, fw = f.fw, FHW = f.FHW, HW = f.HW, W = f.W, R = f.R;
  const int nthreads = f.nthreads;
  const CopyFn copy_fn = f.copy_fn;
  float* feat = f.feat;
  std::vector<uint8_t> need_region(labeled, labeled + R);
  if (expand)
    for (const int64_t key : pairs) need_region[key / R] = 1;
  std::vector<uint8_t> need(FHW, 0);
  for (int64_t p = 0; p < HW; ++p) {
    const int64_t r = static_cast<int64_t>(reg[p]);
    if (r < 0 || !need_region[r]) continue;
    const Tap& a = f.ty[p / W];
    const Tap& c = f.tx[p % W];
    need[a.i0 * fw + c.i0] = need[a.i0 * fw + c.i1] = need[a.i1 * fw + c.i0] = need[a.i1 * fw + c.i1] = 1;
  }
  // a float is not finite iff its exponent bits are all set
  int32_t feat_bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 8) reduction(max : feat_bad)
  for (int64_t d = 0; d < D; ++d) {
    const scalar_t* src = fb + d * FHW;
    uint32_t bad_any = 0;
    for (int64_t i = 0; i < FHW; ++i) {
      const float v = static_cast<float>(to_float(src[i]));
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      bad_any |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
    }
    if (bad_any) feat_bad = 2;
  }
  if (feat_bad) return feat_bad;
  // 8x8 tiles (fixed trip counts, fully unrolled) inside 64-pixel blocks, skipping blocks
  // nothing reads
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int64_t i0 = 0; i0 < FHW; i0 += 64) {
    const int64_t i1 = std::min(FHW, i0 + 64);
    bool any = false;
    for (int64_t i = i0; i < i1; ++i) any = any || need[i];
    if (!any) continue;
    const scalar_t* src = fb;
    if constexpr (std::is_same_v<scalar_t, float>) {
      copy_fn(src, FHW, D, i0, i1, feat);
      continue;
    }
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      for (int64_t t0 = i0; t0 < i1; t0 += 8) {
        if (d0 + 8 <= D && t0 + 8 <= i1) {
          for (int64_t ii = 0; ii < 8; ++ii)
            for (int64_t dd = 0; dd < 8; ++dd)
              feat[(t0 + ii) * D + d0 + dd] = static_cast<float>(to_float(src[(d0 + dd) * FHW + t0 + ii]));
        } else {
          for (int64_t i = t0; i < std::min(i1, t0 + 8); ++i)
            for (int64_t d = d0; d < std::min(D, d0 + 8); ++d)
              feat[i * D + d] = static_cast<float>(to_float(src[d * FHW + i]));
        }
      }
    }
  }
  return 0;
}

struct Prototypes {
  std::vector<int64_t> kcls, kreg;  // class and region of prototype k, ordered by (region, class)
  std::vector<int64_t> own_start;   // region r owns prototypes [own_start[r], own_start[r + 1])
  std::vector<float> protos;        // (K, D) unit vectors
  int64_t K = 0;
};

// Step 3, prototypes: the normalised upsampled feature at each x*_{r,c}. Writes this image's
// proto_index and resets its thresholds to NaN (set for prototypes by step 5).
inline Prototypes build_prototypes(const Frame& f, const LabelSlots& ls, const std::vector<int64_t>& pidx,
                                   int64_t* proto_index_b, float* thresholds_b) {
  const int64_t R = f.R, C = f.C, D = f.D;
  Prototypes P;
  P.own_start.assign(R + 1, 0);
  std::vector<int64_t> kslot(R * C, -1);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t sl = ls.slot[r * C + c];
      const int64_t pi = sl >= 0 ? pidx[sl] : -1;
      proto_index_b[r * C + c] = pi;
      thresholds_b[r * C + c] = std::numeric_limits<float>::quiet_NaN();
      if (pi < 0) continue;
      kslot[r * C + c] = static_cast<int64_t>(P.kcls.size());
      P.kcls.push_back(c);
      P.kreg.push_back(r);
    }
    P.own_start[r + 1] = static_cast<int64_t>(P.kcls.size());
  }
  P.K = static_cast<int64_t>(P.kcls.size());
  P.protos.resize(P.K * D);
  const Image img = image_of(f, P.protos.data());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t k = kslot[r * C + c];
      if (k < 0) continue;
      float* pk = P.protos.data() + k * D;
      const float n = img.sims(pidx[ls.slot[r * C + c]], nullptr, 0, pk, nullptr);
      for (int64_t d = 0; d < D; ++d) pk[d] /= n;
    }
  return P;
}

// Step 4, localization (Eq. 11): every pixel of a labeled region takes the class of its most
// similar own prototype (ties: smaller class); (prototype, similarity) go to f.rec_k / f.rec_s.
// Returns the number of localized pixels.
template <typename index_t>
int64_t localize(const Frame& f, const index_t* reg, const uint8_t* labeled, const Prototypes& P, const Image& img,
                 int64_t* o) {
  const int64_t HW = f.HW, D = f.D, C = f.C;
  const int nthreads = f.nthreads;
  int64_t* rec_k = f.rec_k;
  float* rec_s = f.rec_s;
  const int64_t* own_start = P.own_start.data();
  const int64_t* kcls = P.kcls.data();
  std::vector<int64_t> kids(P.K);
  std::iota(kids.begin(), kids.end(), 0);
  std::fill(rec_k, rec_k + HW, -1);
  int64_t nloc = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : nloc)
  {
    std::vector<float> u(D), sv(C);
#pragma omp for schedule(dynamic, 2048)
    for (int64_t p = 0; p < HW; ++p) {
      const int64_t r = static_cast<int64_t>(reg[p]);
      o[p] = kIgnore;
      if (r < 0 || !labeled[r] || own_start[r] == own_start[r + 1]) continue;
      const int64_t k0 = own_start[r], nk = own_start[r + 1] - k0;
      img.sims(p, kids.data() + k0, nk, u.data(), sv.data());
      int64_t bk = -1;
      float bs = 0.f;
      for (int64_t j = 0; j < nk; ++j) {  // ascending class
        const float s = sv[j];
        if (bk < 0 || s > bs) {
          bk = k0 + j;
          bs = s;
        }
      }
      o[p] = kcls[bk];
      rec_k[p] = bk;
      rec_s[p] = bs;
      ++nloc;
    }
  }
  return nloc;
}

// Step 5, thresholds (Eq. 12): the exact lower median of each prototype's recorded
// similarities (counting sort by prototype + nth_element); 1 where it localized nothing.
inline std::vector<float> median_thresholds(const Frame& f, const Prototypes& P, int64_t nloc) {
  const int64_t HW = f.HW, K = P.K;
  const int nthreads = f.nthreads;
  const int64_t* rec_k = f.rec_k;
  const float* rec_s = f.rec_s;
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
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16) if (nloc > 65536)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = cnt[k + 1] - cnt[k];
    if (n == 0) continue;
    float* lo = vals.data() + cnt[k];
    std::nth_element(lo, lo + (n - 1) / 2, lo + n);
    alpha[k] = lo[(n - 1) / 2];
  }
  return alpha;
}

// Step 6, expansion (Eq. 13), region by region over the unlabeled regions touching a labeled
// one, against the prototypes of all their labeled neighbours: a pixel takes the most similar
// class whose similarity exceeds that prototype's threshold. Per-region tables of
// low-resolution dots bound every pixel's similarities (bilinear interpolation is linear), so
// only pixels within a safe margin of a threshold are evaluated exactly. Returns the number of
// expanded pixels.
template <typename index_t>
int64_t expand_labels(const Frame& f, const index_t* reg, const uint8_t* labeled, const std::vector<int64_t>& pairs,
                      const Prototypes& P, const std::vector<float>& alpha, const Image& img, int64_t* o) {
  const int64_t R = f.R, HW = f.HW, W = f.W, D = f.D, fh = f.fh, fw = f.fw;
  const int nthreads = f.nthreads;
  const TableFn table_fn = f.table_fn;
  const float* feat = f.feat;
  const std::vector<Tap>& ty = f.ty;
  const std::vector<Tap>& tx = f.tx;
  const int64_t* own_start = P.own_start.data();
  const int64_t* kcls = P.kcls.data();
  const float* protos = P.protos.data();
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
  int64_t max_nb = 0;
  for (int64_t u = 0; u < R; ++u) max_nb = std::max(max_nb, nb_start[u + 1] - nb_start[u]);
  // pixels of the regions to expand into, grouped by region (ascending pixel index)
  std::vector<int64_t> ex_start(R + 1, 0);
  for (int64_t p = 0; p < HW; ++p) {
    const int64_t r = static_cast<int64_t>(reg[p]);
    if (r >= 0 && !labeled[r] && nb_start[r + 1] > nb_start[r]) ++ex_start[r + 1];
  }
  std::partial_sum(ex_start.begin(), ex_start.end(), ex_start.begin());
  std::vector<int64_t> ex_pix(ex_start[R]);
  std::vector<int64_t> ex_regions;
  {
    std::vector<int64_t> fill(ex_start.begin(), ex_start.end() - 1);
    for (int64_t p = 0; p < HW; ++p) {
      const int64_t r = static_cast<int64_t>(reg[p]);
      if (r >= 0 && !labeled[r] && nb_start[r + 1] > nb_start[r]) ex_pix[fill[r]++] = p;
    }
    for (int64_t r = 0; r < R; ++r)
      if (ex_start[r + 1] > ex_start[r]) ex_regions.push_back(r);
  }
  const int64_t n_ex = static_cast<int64_t>(ex_regions.size());
  int64_t nexp = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : nexp)
  {
    std::vector<float> u(D), sv(max_nb), dk, g;
#pragma omp for schedule(dynamic, 1)
    for (int64_t e = 0; e < n_ex; ++e) {
      const int64_t r = ex_regions[e];
      const int64_t j0 = nb_start[r], nk = nb_start[r + 1] - j0;
      const int64_t* klist = nb_list.data() + j0;
      const int64_t* px = ex_pix.data() + ex_start[r];
      const int64_t np = ex_start[r + 1] - ex_start[r];
      int64_t i_lo = fh, i_hi = -1, j_lo = fw, j_hi = -1;
      for (int64_t q = 0; q < np; ++q) {
        const Tap& a = ty[px[q] / W];
        const Tap& c = tx[px[q] % W];
        i_lo = std::min(i_lo, a.i0);
        i_hi = std::max(i_hi, a.i1);
        j_lo = std::min(j_lo, c.i0);
        j_hi = std::max(j_hi, c.i1);
      }
      const int64_t bh = i_hi - i_lo + 1, bw = j_hi - j_lo + 1;
      // the tables only pay off when the region has more pixels than low-resolution taps
      const bool filter = bh * bw * 2 < np;
      if (filter) {
        dk.resize(bh * bw * nk);
        g.resize(bh * bw * 5);
        table_fn(feat, fw, D, i_lo, bh, j_lo, bw, protos, klist, nk, dk.data(), g.data());
      }
      for (int64_t q = 0; q < np; ++q) {
        const int64_t p = px[q];
        if (filter && !maybe_candidate(ty[p / W], tx[p % W], i_lo, j_lo, bw, dk.data(), g.data(), klist, nk,
                                       alpha.data(), D))
          continue;
        img.sims(p, klist, nk, u.data(), sv.data());
        int64_t bc = -1;
        float bs = 0.f;
        for (int64_t j = 0; j < nk; ++j) {
          const int64_t k = klist[j];
          const float sj = sv[j];
          if (!(sj > alpha[k])) continue;
          if (bc < 0 || sj > bs || (sj == bs && kcls[k] < bc)) {
            bc = kcls[k];
            bs = sj;
          }
        }
        if (bc >= 0) {
          o[p] = bc;
          ++nexp;
        }
      }
    }
  }
  return nexp;
}

template <typename scalar_t, typename lscalar_t, typename index_t>
void forward_impl(const scalar_t* features, const lscalar_t* logits, const index_t* regions,
                  const uint8_t* region_labels, int64_t B, int64_t D, int64_t fh, int64_t fw, int64_t C,
                  int64_t H, int64_t W, int64_t R, float tau, bool expand, int64_t* out, float* thresholds,
                  int64_t* proto_index, int64_t* num_loc, int64_t* num_exp, int32_t* status) {
  const int64_t HW = H * W;
  const int64_t FHW = fh * fw;
  // Scratch that scales with the image lives in grow-only per-calling-thread buffers: a fresh
  // multi-megabyte allocation per call costs more in first-touch page faults than the pass
  // that fills it.
  thread_local std::vector<float> tl_feat;
  thread_local std::vector<int64_t> tl_rec_k;
  thread_local std::vector<float> tl_rec_s;
  if (tl_feat.size() < static_cast<size_t>(FHW * D)) tl_feat.resize(FHW * D);
  if (tl_rec_k.size() < static_cast<size_t>(HW)) {
    tl_rec_k.resize(HW);
    tl_rec_s.resize(HW);
  }
  // (raw pointers: inside the parallel regions the name of a thread_local would resolve to
  // each worker's own, empty, instance)
  const Frame f{D, fh, fw, FHW, C, H, W, HW, R, tau, num_threads(), make_taps(fh, H), make_taps(fw, W),
                MULACT_PICK(pixel_sims_base, pixel_sims_avx2), MULACT_PICK(table_base, table_avx2),
                MULACT_PICK(copy_cl_base, copy_cl_avx2), tl_feat.data(), tl_rec_k.data(), tl_rec_s.data()};
  int32_t nonfinite = 0;
  int64_t bad_id = -1;

  for (int64_t b = 0; b < B; ++b) {
    const index_t* reg = regions + b * HW;
    int64_t* o = out + b * HW;
    const LabelSlots ls = label_slots(region_labels + b * R * C, R, C);
    const Scan scan = scan_regions(f, reg, logits + b * C * HW, ls);
    nonfinite = std::max(nonfinite, scan.nonfinite);
    bad_id = std::max(bad_id, scan.bad_id);
    if (nonfinite || bad_id >= 0) break;
    const int32_t feat_bad = gather_features(f, features + b * D * FHW, reg, ls.labeled.data(), scan.pairs, expand);
    if (feat_bad) {
      nonfinite = feat_bad;
      break;
    }
    const Prototypes P = build_prototypes(f, ls, scan.pidx, proto_index + b * R * C, thresholds + b * R * C);
    const Image img = image_of(f, P.protos.data());
    num_loc[b] = localize(f, reg, ls.labeled.data(), P, img, o);
    const std::vector<float> alpha = median_thresholds(f, P, num_loc[b]);
    for (int64_t k = 0; k < P.K; ++k) thresholds[b * R * C + P.kreg[k] * C + P.kcls[k]] = alpha[k];
    num_exp[b] = expand ? expand_labels(f, reg, ls.labeled.data(), scan.pairs, P, alpha, img, o) : 0;
  }
  report_status(status, nonfinite, bad_id);
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
