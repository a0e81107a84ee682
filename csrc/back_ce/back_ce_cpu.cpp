// CPU kernel: tasks are (image, block of kTileP pixels). Within a block every pass runs over
// contiguous pixels of one class plane, so the loops vectorize (the file is built with
// -fno-trapping-math so that the selects do too); float32 uses a polynomial exp that vectorizes
// (std::exp does not) and is built for AVX2 too; float64 uses std::exp. Same formulas as pixel() in
// back_ce.h, which the CUDA kernel uses and which redoes the rare pixels this path cannot.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/cpu_utils.h"
#include "back_ce.h"

namespace fussfast::back_ce {
FF_ISA_BEGIN
namespace {

constexpr int64_t kTileP = 256;

// exp(x) for x <= 0 to about 2 ulp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial, 2^n through the exponent bits; below -87 it flushes to 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * __builtin_bit_cast(float, (int32_t(n) + 127) << 23);
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// log(x) for a normal x > 0 (here sums of exponentials, >= 1) to about 2 ulp: x = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m - 1) / (m + 1), |t| < 0.172, by its series.
inline float log_positive(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float series = t * (2.0f + t2 * (2.0f / 3 + t2 * (2.0f / 5 + t2 * (2.0f / 7 + t2 * (2.0f / 9)))));
  return float(e) * 0.693147180559945f + series;
}
inline double log_positive(double x) { return std::log(x); }

// Below this the absent classes' sum relative to the overall max has lost precision (float32
// exps are clamped at exp(-87)); such pixels are redone exactly by pixel().
template <class A> constexpr A kTinySum = A(1e-25);
template <> constexpr double kTinySum<double> = 1e-250;

// One block of n <= kTileP pixels of one image: x [K][P] from the block's first pixel, labels y,
// the image's present mask pr; writes out[n] and, when g is set, g [K][P]. One exp per logit and
// pass: the absent sum reuses the overall max, and exp(x - lsa) = exp(x - lse) * s / sa.
template <class A>
[[gnu::always_inline]] inline void block(const A* x, const int64_t* y, const int32_t* pr, int64_t ignore_index,
                                         int64_t K, int64_t P, int64_t n, A* out, A* g) {
  A m[kTileP], s[kTileP], sa[kTileP], lse[kTileP], ratio[kTileP];
  A label[kTileP], unlabelled[kTileP];  // as floats (-1 / 1 when unlabelled): vectorizable
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  bool any_absent = false;
  for (int64_t k = 0; k < K; ++k) any_absent |= !pr[k];
  for (int64_t p = 0; p < n; ++p) m[p] = kNegInf, s[p] = sa[p] = A(0);
  for (int64_t k = 0; k < K; ++k) {
    const A* xk = x + k * P;
    for (int64_t p = 0; p < n; ++p) m[p] = std::max(m[p], xk[p]);
  }
  for (int64_t k = 0; k < K; ++k) {
    const A* xk = x + k * P;
    if (pr[k]) {
      for (int64_t p = 0; p < n; ++p) s[p] += exp_nonpositive(xk[p] - m[p]);
    } else {
      for (int64_t p = 0; p < n; ++p) {
        const A e = exp_nonpositive(xk[p] - m[p]);
        s[p] += e, sa[p] += e;
      }
    }
  }
  bool redo = false;  // an unlabelled pixel whose absent sum is too small for this path
  for (int64_t p = 0; p < n; ++p) {
    const A log_s = log_positive(s[p]);
    const bool labelled = y[p] != ignore_index;
    const bool tiny = sa[p] < kTinySum<A>;
    const A picked = x[(labelled ? y[p] : 0) * P + p];  // always a valid read, so no branch
    lse[p] = m[p] + log_s;
    label[p] = labelled ? A(y[p]) : A(-1);
    unlabelled[p] = labelled ? A(0) : A(1);
    ratio[p] = tiny ? A(0) : s[p] / sa[p];  // exp(lse - lsa)
    out[p] = labelled ? lse[p] - picked : any_absent ? log_s - log_positive(tiny ? A(1) : sa[p]) : A(0);
    redo |= any_absent && !labelled && tiny;
  }
  if (g) {
    for (int64_t k = 0; k < K; ++k) {
      const A* xk = x + k * P;
      A* gk = g + k * P;
      // labelled: e - [k == y]; unlabelled: e minus the background share of an absent class
      // (e when no class is absent: nothing counted). One branch-free loop per case.
      if (!any_absent) {
        for (int64_t p = 0; p < n; ++p) {
          const A e = exp_nonpositive(xk[p] - lse[p]);
          gk[p] = e - (label[p] == A(k) ? A(1) : A(0)) - unlabelled[p] * e;
        }
      } else if (pr[k]) {
        for (int64_t p = 0; p < n; ++p)
          gk[p] = exp_nonpositive(xk[p] - lse[p]) - (label[p] == A(k) ? A(1) : A(0));
      } else {
        for (int64_t p = 0; p < n; ++p) {
          const A e = exp_nonpositive(xk[p] - lse[p]);
          gk[p] = e - (label[p] == A(k) ? A(1) : A(0)) - unlabelled[p] * e * ratio[p];
        }
      }
    }
  }
  if (!redo) return;
  for (int64_t p = 0; p < n; ++p)
    if (y[p] == ignore_index && sa[p] < kTinySum<A>) out[p] = pixel(x + p, P, K, int64_t(-1), pr, g ? g + p : nullptr);
}

void run_block(const float* x, const int64_t* y, const int32_t* pr, int64_t ignore_index, int64_t K, int64_t P,
               int64_t n, float* out, float* g) {
  block(x, y, pr, ignore_index, K, P, n, out, g);
}
void run_block(const double* x, const int64_t* y, const int32_t* pr, int64_t ignore_index, int64_t K, int64_t P,
               int64_t n, double* out, double* g) {
  block(x, y, pr, ignore_index, K, P, n, out, g);
}

template <class A>
void forward_impl(const Tensor& logits, const Tensor& labels, const Tensor& present, int64_t ignore_index,
                  const Tensor& loss, const Tensor* grad) {
  const int64_t B = logits.size(0), K = logits.size(1), P = logits.inner(2);
  if (B * P == 0) return;
  const int64_t pblocks = (P + kTileP - 1) / kTileP, tasks = B * pblocks;
  const int threads = worker_count(tasks);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / pblocks, p0 = (task % pblocks) * kTileP, n = std::min(kTileP, P - p0);
    const int64_t offset = b * K * P + p0;
    run_block(logits.ptr<A>() + offset, labels.ptr<int64_t>() + b * P + p0, present.ptr<int32_t>() + b * K,
              ignore_index, K, P, n, loss.ptr<A>() + b * P + p0, grad ? grad->ptr<A>() + offset : nullptr);
  }
}

}  // namespace

void forward_cpu(const Tensor& logits, const Tensor& labels, const Tensor& present, int64_t ignore_index,
                 const Tensor& loss, const Tensor* grad) {
  FF_DISPATCH_ACC(logits.dtype, "back_ce",
                  [&] { forward_impl<scalar_t>(logits, labels, present, ignore_index, loss, grad); });
}

FF_ISA_END
}  // namespace fussfast::back_ce
