// Stage-1 partial-label losses (L_CE, L_MP) on the CPU: one fused forward pass and one
// fused backward pass over the logits.
//
// Per labeled pixel x with label set Y:  l(x) = lse_all(x) - lse_Y(x),  lse = logsumexp of z.
// The forward returns, per term (0 = CE, |Y| = 1; 1 = MP, |Y| >= 2), the weighted sum
// sum_x w(r(x)) l(x) and the pixel count; the Python side turns them into the mean that the
// chosen normalisation asks for. The backward writes the whole gradient
//   dL/dlogits_c = scale(r(x)) * (exp(z_c - lse_all) - [c in Y] exp(z_c - lse_Y)),
// where `scale` (B, R) already holds the upstream gradient, the normaliser and 1/tau; pixels
// with scale 0 get a zero gradient without their logits being read.
//
// Work is split into fixed chunks of pixels inside one image. Each chunk sums sequentially and
// the chunk partials are reduced in chunk order, so results do not depend on the number of
// threads or on scheduling. Inside a chunk the active pixels (labeled region, non-zero scale)
// are compacted into tiles of up to kTile pixels staged class-major in a per-thread buffer
// (L2-resident), as runs of consecutive pixels of one region: each class row of the logits is
// read as one forward stream of contiguous pieces per tile (the hardware prefetcher follows it),
// unlabeled pixels cost one region-id read, and the label set is constant along a run, so
// lse_Y only touches the |Y| labeled classes (CE: lse_Y = z_y, no exp at all) while lse_all
// takes one exp per class. The backward writes each class row of the chunk once, in order:
// zeros between runs and the tile's values on them (no separate zero fill of the gradient).
// Without trapping math GCC may if-convert the float selects of the tile loops (clamps in
// fast_exp, maxima) and vectorise them; no kernel here reads the FP exception flags.
// On x86-64 the per-chunk work is also compiled for AVX2+FMA and picked at run time (the
// extension itself is built for the baseline ISA); results are deterministic on one machine.
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

constexpr int64_t kTile = 1024;
constexpr int64_t kChunk = 2048;
// Gradients at least this large are written with non-temporal stores: they do not fit in cache
// next to the logits anyway, and streaming skips reading every line before overwriting it.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// memcpy whose aligned middle bypasses the caches (x86-64: SSE2 streaming stores).
MULACT_INLINE void stream_copy(void* dst, const void* src, int64_t bytes) {
#if MULACT_X86_SIMD
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (16 - (reinterpret_cast<std::uintptr_t>(d) & 15)) & 15);
  std::memcpy(d, s, head);
  int64_t i = head;
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Store an accumulator value; float64 keeps full precision (from_float<double> takes a float).
template <typename T, typename A> MULACT_INLINE T store(A v) { return from_float<T>(static_cast<float>(v)); }
template <> MULACT_INLINE double store<double, double>(double v) { return v; }

bool use_avx2() {
#if MULACT_X86_SIMD
  static const bool ok = cpu_has_avx2_fma();
  return ok;
#else
  return false;
#endif
}

// Label sets as class lists: region slot i = b * R + r holds cls[first[i] .. first[i + 1]).
struct LabelLists {
  std::vector<int64_t> first;
  std::vector<int32_t> cls;
  LabelLists(const uint8_t* labels, int64_t slots, int64_t C) : first(slots + 1) {
    for (int64_t i = 0; i < slots; ++i) {
      first[i] = static_cast<int64_t>(cls.size());
      for (int64_t c = 0; c < C; ++c)
        if (labels[i * C + c]) cls.push_back(static_cast<int32_t>(c));
    }
    first[slots] = static_cast<int64_t>(cls.size());
  }
};

// One tile of up to kTile active pixels of one image, as runs of consecutive pixels of one
// region (run k: pixels p0[k] .. p0[k] + len[k] - 1 in slots j0[k] ..), class-major.
// After load(): z (scaled logits). After stats(): mx = max_c z, s = sum_c exp(z - mx) and, if
// asked, e = exp(z - mx). After label_lse(): ly = lse_Y; separate maxima keep sum_Y from
// underflowing when the labeled classes are far below the top class (tau = 0.1 makes that common).
template <typename A>
struct Tile {
  std::vector<A> z, e, mx, s, ly, tmp;
  std::vector<int64_t> p0, slot;
  std::vector<int32_t> j0, len;
  std::vector<A> val;  // per run: loss weight (forward) or gradient scale (backward)
  std::vector<int8_t> term;
  std::vector<double> rowbuf;  // backward: one class row of a chunk, staged for streaming stores
  int64_t n = 0, runs = 0;
  explicit Tile(int64_t C)
      : z(C * kTile), e(C * kTile), mx(kTile), s(kTile), ly(kTile), tmp(kTile), p0(kTile), slot(kTile), j0(kTile),
        len(kTile), val(kTile), term(kTile), rowbuf(kChunk) {}

  MULACT_INLINE void clear() { n = runs = 0; }

  // Append pixel p of region slot `sl`; the caller keeps n < kTile.
  MULACT_INLINE void add(int64_t p, int64_t sl, A v, int8_t t) {
    if (runs && slot[runs - 1] == sl && p0[runs - 1] + len[runs - 1] == p) {
      ++len[runs - 1];
    } else {
      p0[runs] = p;
      slot[runs] = sl;
      j0[runs] = static_cast<int32_t>(n);
      len[runs] = 1;
      val[runs] = v;
      term[runs] = t;
      ++runs;
    }
    ++n;
  }

  // Returns true if a loaded logit is NaN/Inf (checked before scaling). The runs of the next
  // class row are prefetched while this one is copied: each row is a new stream of short
  // pieces that the hardware prefetcher would only pick up after a few misses.
  template <typename T>
  MULACT_INLINE bool load(const T* img, int64_t C, int64_t HW, A inv_t) {
    constexpr int64_t kLine = 64 / sizeof(T);
    int bad = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T* row = img + c * HW;
      const T* next = c + 1 < C ? row + HW : row;
      A* zc = z.data() + c * kTile;
      for (int64_t k = 0; k < runs; ++k) {
        const T* src = row + p0[k];
        A* dst = zc + j0[k];
        const int64_t m = len[k];
        for (int64_t i = 0; i < m; i += kLine) __builtin_prefetch(next + p0[k] + i);
        __builtin_prefetch(next + p0[k] + m - 1);
        for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<A>(to_float(src[i]));
      }
      bad |= scale_check_finite(zc, n, inv_t);
    }
    return bad != 0;
  }

  template <bool kKeepExp>
  MULACT_INLINE void stats(int64_t C) {
    const A lowest = -std::numeric_limits<A>::max();
    A* m = mx.data();
    A* sum = s.data();
    for (int64_t j = 0; j < n; ++j) {
      m[j] = lowest;
      sum[j] = A(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      const A* zc = z.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) m[j] = zc[j] > m[j] ? zc[j] : m[j];
    }
    for (int64_t c = 0; c < C; ++c) {
      const A* zc = z.data() + c * kTile;
      A* ec = e.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const A v = fast_exp(zc[j] - m[j]);
        if (kKeepExp) ec[j] = v;
        sum[j] += v;
      }
    }
  }

  MULACT_INLINE void label_lse(const LabelLists& y) {
    for (int64_t k = 0; k < runs; ++k) {
      const int32_t* cls = y.cls.data() + y.first[slot[k]];
      const int64_t ny = y.first[slot[k] + 1] - y.first[slot[k]];
      const int64_t m = len[k];
      A* l = ly.data() + j0[k];
      const A* za = z.data() + cls[0] * kTile + j0[k];
      for (int64_t i = 0; i < m; ++i) l[i] = za[i];
      if (ny == 1) continue;
      for (int64_t t = 1; t < ny; ++t) {
        const A* zt = z.data() + cls[t] * kTile + j0[k];
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) l[i] = zt[i] > l[i] ? zt[i] : l[i];
      }
      A* sy = tmp.data() + j0[k];
      for (int64_t i = 0; i < m; ++i) sy[i] = A(0);
      for (int64_t t = 0; t < ny; ++t) {
        const A* zt = z.data() + cls[t] * kTile + j0[k];
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) sy[i] += fast_exp(zt[i] - l[i]);
      }
      for (int64_t i = 0; i < m; ++i) l[i] += std::log(sy[i]);
    }
  }
};

template <typename T, typename I>
struct Args {
  using A = typename Acc<T>::type;
  const T* logits;
  const I* regions;
  const int8_t* kind;
  const A* weight;  // forward (may be null)
  const A* scale;   // backward
  const LabelLists* y;
  T* grad;
  bool stream;  // write the gradient with non-temporal stores
  int64_t B, C, HW, R, per_img;
  A inv_t;
};

// Forward of work item k: writes its per-term sums/counts.
template <typename T, typename I>
MULACT_INLINE void forward_chunk(const Args<T, I>& a, Tile<typename Acc<T>::type>& tile, int64_t k, double* sum,
                                     int64_t* cnt, int64_t& bad, int& nonfinite) {
  using A = typename Acc<T>::type;
  const int64_t b = k / a.per_img;
  const int64_t c0 = (k % a.per_img) * kChunk;
  const int64_t c1 = std::min(c0 + kChunk, a.HW);
  const I* reg = a.regions + b * a.HW;
  A acc[2] = {A(0), A(0)};
  int64_t nn[2] = {0, 0};
  tile.clear();
  for (int64_t p = c0; p < c1 || tile.n; ++p) {
    if (p < c1) {
      const int64_t r = static_cast<int64_t>(reg[p]);
      if (r < 0) continue;
      if (r >= a.R) {
        bad = std::max(bad, r);
        continue;
      }
      const int8_t t = a.kind[b * a.R + r];
      if (t == 0) continue;
      tile.add(p, b * a.R + r, a.weight ? a.weight[b * a.R + r] : A(1), t);
      if (tile.n < kTile && p + 1 < c1) continue;
    }
    nonfinite |= tile.load(a.logits + b * a.C * a.HW, a.C, a.HW, a.inv_t) ? 1 : 0;
    tile.template stats<false>(a.C);
    tile.label_lse(*a.y);
    for (int64_t q = 0; q < tile.runs; ++q) {
      const int t = tile.term[q] - 1;
      const A w = tile.val[q];
      for (int64_t j = tile.j0[q], j1 = j + tile.len[q]; j < j1; ++j) {
        const A l = (tile.mx[j] + std::log(tile.s[j])) - tile.ly[j];
        acc[t] += a.weight ? w * l : l;
      }
      nn[t] += tile.len[q];
    }
    tile.clear();
  }
  for (int t = 0; t < 2; ++t) {
    sum[t] = static_cast<double>(acc[t]);
    cnt[t] = nn[t];
  }
}

// Backward: computes the gradient of the tile's pixels and writes pixels [w0, w1) of image b
// (every class row once, in order: zeros between the runs, the tile's values on them).
template <typename T, typename I>
MULACT_INLINE void backward_flush(const Args<T, I>& a, Tile<typename Acc<T>::type>& tile, int64_t b, int64_t w0,
                                      int64_t w1) {
  using A = typename Acc<T>::type;
  const int64_t C = a.C;
  const T zero = from_float<T>(0.0f);
  if (tile.n) {
    tile.load(a.logits + b * C * a.HW, C, a.HW, a.inv_t);
    tile.template stats<true>(C);
    tile.label_lse(*a.y);
    A* rs = tile.tmp.data();
    for (int64_t q = 0; q < tile.runs; ++q) {
      const A v = tile.val[q];
      for (int64_t j = tile.j0[q], j1 = j + tile.len[q]; j < j1; ++j) rs[j] = v / tile.s[j];
    }
    const int64_t n = tile.n;
    for (int64_t c = 0; c < C; ++c) {
      A* ec = tile.e.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) ec[j] *= rs[j];
    }
    for (int64_t q = 0; q < tile.runs; ++q) {
      const LabelLists& y = *a.y;
      const int32_t* cls = y.cls.data() + y.first[tile.slot[q]];
      const int64_t ny = y.first[tile.slot[q] + 1] - y.first[tile.slot[q]];
      const int64_t m = tile.len[q];
      const A v = tile.val[q];
      const A* l = tile.ly.data() + tile.j0[q];
      for (int64_t t = 0; t < ny; ++t) {
        A* et = tile.e.data() + cls[t] * kTile + tile.j0[q];
        const A* zt = tile.z.data() + cls[t] * kTile + tile.j0[q];
        if (ny == 1) {  // lse_Y = z_y: exp(z_y - lse_Y) = 1
          for (int64_t i = 0; i < m; ++i) et[i] -= v;
        } else {
#pragma omp simd
          for (int64_t i = 0; i < m; ++i) et[i] -= v * fast_exp(zt[i] - l[i]);
        }
      }
    }
  }
  T* buf = reinterpret_cast<T*>(tile.rowbuf.data());
  for (int64_t c = 0; c < C; ++c) {
    T* row = a.grad + (b * C + c) * a.HW;
    T* dstrow = a.stream ? buf - w0 : row;  // staged, then streamed out
    const A* g = tile.e.data() + c * kTile;
    int64_t p = w0;
    for (int64_t q = 0; q < tile.runs; ++q) {
      const int64_t s0 = tile.p0[q], m = tile.len[q];
      for (; p < s0; ++p) dstrow[p] = zero;
      const A* src = g + tile.j0[q];
      T* dst = dstrow + s0;
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) dst[i] = store<T, A>(src[i]);
      p = s0 + m;
    }
    for (; p < w1; ++p) dstrow[p] = zero;
    if (a.stream) stream_copy(row + w0, buf, (w1 - w0) * static_cast<int64_t>(sizeof(T)));
  }
  tile.clear();
}

// Backward of work item k: writes every gradient value of its pixels.
template <typename T, typename I>
MULACT_INLINE void backward_chunk(const Args<T, I>& a, Tile<typename Acc<T>::type>& tile, int64_t k) {
  using A = typename Acc<T>::type;
  const int64_t b = k / a.per_img;
  const int64_t c0 = (k % a.per_img) * kChunk;
  const int64_t c1 = std::min(c0 + kChunk, a.HW);
  const I* reg = a.regions + b * a.HW;
  const int64_t* first = a.y->first.data();
  int64_t w0 = c0;  // gradient written up to here
  tile.clear();
  for (int64_t p = c0; p < c1; ++p) {
    const int64_t r = static_cast<int64_t>(reg[p]);
    if (r < 0 || r >= a.R) continue;
    const int64_t sl = b * a.R + r;
    const A v = a.scale[sl];
    if (v == A(0) || first[sl + 1] == first[sl]) continue;
    tile.add(p, sl, v, 0);
    if (tile.n == kTile) {
      backward_flush(a, tile, b, w0, p + 1);
      w0 = p + 1;
    }
  }
  if (w0 < c1) backward_flush(a, tile, b, w0, c1);
#if MULACT_X86_SIMD
  if (a.stream) _mm_sfence();  // streaming stores are weakly ordered
#endif
}

#if MULACT_X86_SIMD
template <typename T, typename I>
MULACT_TARGET_AVX2_FMA void forward_chunk_avx2(const Args<T, I>& a, Tile<typename Acc<T>::type>& tile,
                                              int64_t k, double* sum, int64_t* cnt, int64_t& bad,
                                              int& nonfinite) {
  forward_chunk(a, tile, k, sum, cnt, bad, nonfinite);
}
template <typename T, typename I>
MULACT_TARGET_AVX2_FMA void backward_chunk_avx2(const Args<T, I>& a, Tile<typename Acc<T>::type>& tile,
                                               int64_t k) {
  backward_chunk(a, tile, k);
}
#endif

template <typename T, typename I>
void forward_impl(std::uintptr_t logits_p, std::uintptr_t regions_p, std::uintptr_t labels_p,
                  std::uintptr_t kind_p, std::uintptr_t weight_p, int64_t B, int64_t C, int64_t HW,
                  int64_t R, double temperature, std::uintptr_t sums_p, std::uintptr_t counts_p,
                  std::uintptr_t status_p) {
  using A = typename Acc<T>::type;
  const LabelLists y(ptr<const uint8_t>(labels_p), B * R, C);
  const int64_t per_img = (HW + kChunk - 1) / kChunk;
  const Args<T, I> a{ptr<const T>(logits_p), ptr<const I>(regions_p), ptr<const int8_t>(kind_p),
                     weight_p ? ptr<const A>(weight_p) : nullptr, nullptr, &y, nullptr, false, B, C, HW, R, per_img,
                     A(1) / static_cast<A>(temperature)};
  const int64_t nchunks = B * per_img;
  std::vector<double> chunk_sum(2 * nchunks, 0.0);
  std::vector<int64_t> chunk_cnt(2 * nchunks, 0);
  int64_t bad = -1;
  int nonfinite = 0;
  const bool avx2 = use_avx2();

#pragma omp parallel reduction(max : bad) reduction(| : nonfinite)
  {
    Tile<A> tile(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
#if MULACT_X86_SIMD
      if (avx2) {
        forward_chunk_avx2(a, tile, k, &chunk_sum[2 * k], &chunk_cnt[2 * k], bad, nonfinite);
        continue;
      }
#endif
      forward_chunk(a, tile, k, &chunk_sum[2 * k], &chunk_cnt[2 * k], bad, nonfinite);
    }
  }
  (void)avx2;

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
  report_status(ptr<int32_t>(status_p), nonfinite != 0, bad);
}

template <typename T, typename I>
void backward_impl(std::uintptr_t logits_p, std::uintptr_t regions_p, std::uintptr_t labels_p,
                   std::uintptr_t scale_p, int64_t B, int64_t C, int64_t HW, int64_t R, double temperature,
                   std::uintptr_t grad_p) {
  using A = typename Acc<T>::type;
  const LabelLists y(ptr<const uint8_t>(labels_p), B * R, C);
  const int64_t per_img = (HW + kChunk - 1) / kChunk;
  const Args<T, I> a{ptr<const T>(logits_p), ptr<const I>(regions_p), nullptr, nullptr, ptr<const A>(scale_p), &y,
                     ptr<T>(grad_p), B * C * HW * static_cast<int64_t>(sizeof(T)) >= kStreamBytes, B, C, HW, R, per_img, A(1) / static_cast<A>(temperature)};
  const int64_t nchunks = B * per_img;
  const bool avx2 = use_avx2();

#pragma omp parallel
  {
    Tile<A> tile(C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < nchunks; ++k) {
#if MULACT_X86_SIMD
      if (avx2) {
        backward_chunk_avx2(a, tile, k);
        continue;
      }
#endif
      backward_chunk(a, tile, k);
    }
  }
  (void)avx2;
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
