// cluster: STEGO's cluster probe. Per pixel, the cosine to every centroid, then either the hard
// one-hot of the best centroid or softmax(alpha * cos), and the probe's loss term.
//
//   z [B, D, P]   codes, L2-normalized over D (for labels alone any scaling works)
//   c [K, D]      centroids, L2-normalized
//   probs [B, K, P]   out (optional): one-hot or softmax, in z's dtype
//   labels [B, P]     out (optional): int64 argmax, lowest index on ties
//   total [B]         out (optional): sum over p of sum_k probs * inner, accumulation type
//   grad_z [B, D, P]  out (optional): d total[b] / d z, so backward is a scale
//   grad_c [B, K, D]  out (optional, zeroed by the caller): d total[b] / d c, per image
//   alpha < 0 selects the hard assignment (alpha = None in the Python API).
// The CPU kernel can also take raw codes (normalize_codes): it then normalizes each pixel's code
// itself, z / max(|z|, eps) as F.normalize, and grad_z is the gradient with respect to the raw
// codes, (g - y (y . g)) / |z| (g / eps where the norm is clamped), g being that of y.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::cluster {

// From one pixel's inner products x[0..K): writes the probabilities to prob, and, when g is
// given, d (sum_k prob_k x_k) / d x_k to g; returns sum_k prob_k x_k and sets best to the argmax.
// Hard (alpha < 0 means None): prob = one-hot(best), g = prob (prob is a constant).
// Soft: prob = softmax(alpha x), g_k = prob_k (1 + alpha (x_k - sum_j prob_j x_j)).
template <class A>
FF_HD A assign_pixel(const A* x, int64_t K, A alpha, A* prob, A* g, int64_t& best) {
  best = 0;
  for (int64_t k = 1; k < K; ++k)
    if (x[k] > x[best]) best = k;
  if (alpha < A(0)) {
    for (int64_t k = 0; k < K; ++k) prob[k] = k == best ? A(1) : A(0);
    if (g)
      for (int64_t k = 0; k < K; ++k) g[k] = prob[k];
    return x[best];
  }
  A denom = 0;
  for (int64_t k = 0; k < K; ++k) {
    prob[k] = exp(alpha * (x[k] - x[best]));
    denom += prob[k];
  }
  A expected = 0;
  for (int64_t k = 0; k < K; ++k) {
    prob[k] /= denom;
    expected += prob[k] * x[k];
  }
  if (g)
    for (int64_t k = 0; k < K; ++k) g[k] = prob[k] * (A(1) + alpha * (x[k] - expected));
  return expected;
}

struct Outputs {
  const Tensor* probs = nullptr;
  const Tensor* labels = nullptr;
  const Tensor* total = nullptr;
  const Tensor* grad_z = nullptr;
  const Tensor* grad_c = nullptr;
};

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void forward_cpu(const Tensor& z, const Tensor& c, double alpha, const Outputs& out, bool normalize_codes);
)
inline void forward_cpu(const Tensor& z, const Tensor& c, double alpha, const Outputs& out, bool normalize_codes) {
  FF_CPU_CALL(forward_cpu(z, c, alpha, out, normalize_codes));
}
#ifdef FUSSFAST_WITH_CUDA
void forward_cuda(const Tensor& z, const Tensor& c, double alpha, const Outputs& out,
                  uintptr_t stream);
#endif

}  // namespace fussfast::cluster
