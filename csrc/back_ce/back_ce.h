// back_ce: FedSeg's background-aware cross-entropy. Per pixel, with p = softmax(logits) over K:
// a labelled pixel (label y in [0, K)) gives -log p_y; an unlabelled one (label == ignore_index)
// targets the classes the site does not annotate, merged into one background channel:
// -log sum_{k absent} p_k, in log space: logsumexp(x) - logsumexp_{absent}(x). With no absent
// class an unlabelled pixel gives nothing (plain CE with ignore_index).
//
//   logits [B, K, P]  float32 / float64 (the wrapper upcasts 16-bit logits)
//   labels [B, P]     int64, each in [0, K) or == ignore_index (the wrapper checks)
//   present [B, K]    int32, nonzero = the class is annotated at this image's site
//   loss [B, P]       out: per-pixel loss (0 where not counted), logits' dtype
//   grad [B, K, P]    out (optional): d loss[b, p] / d logits[b, :, p], so backward is a scale
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::back_ce {

// One pixel: x[k * stride] are its logits. Returns the loss; writes the gradient when g is set.
template <class A>
FF_HD A pixel(const A* x, int64_t stride, int64_t K, int64_t y, const int32_t* present, A* g) {
  A m = x[0];
  for (int64_t k = 1; k < K; ++k) m = x[k * stride] > m ? x[k * stride] : m;
  A s = 0;
  for (int64_t k = 0; k < K; ++k) s += exp(x[k * stride] - m);
  const A lse = m + log(s);
  if (y >= 0) {
    if (g)
      for (int64_t k = 0; k < K; ++k) g[k * stride] = exp(x[k * stride] - lse) - (k == y ? A(1) : A(0));
    return lse - x[y * stride];
  }
  bool any = false;
  A ma = 0;
  for (int64_t k = 0; k < K; ++k)
    if (!present[k] && (!any || x[k * stride] > ma)) {
      ma = x[k * stride];
      any = true;
    }
  if (!any) {
    if (g)
      for (int64_t k = 0; k < K; ++k) g[k * stride] = A(0);
    return A(0);
  }
  A sa = 0;
  for (int64_t k = 0; k < K; ++k)
    if (!present[k]) sa += exp(x[k * stride] - ma);
  const A lsa = ma + log(sa);
  if (g)
    for (int64_t k = 0; k < K; ++k)
      g[k * stride] = exp(x[k * stride] - lse) - (present[k] ? A(0) : exp(x[k * stride] - lsa));
  return lse - lsa;
}

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void forward_cpu(const Tensor& logits, const Tensor& labels, const Tensor& present, int64_t ignore_index,
    const Tensor& loss, const Tensor* grad);
)
inline void forward_cpu(const Tensor& logits, const Tensor& labels, const Tensor& present,
    int64_t ignore_index, const Tensor& loss, const Tensor* grad) {
  FF_CPU_CALL(forward_cpu(logits, labels, present, ignore_index, loss, grad));
}
#ifdef FUSSFAST_WITH_CUDA
void forward_cuda(const Tensor& logits, const Tensor& labels, const Tensor& present, int64_t ignore_index,
                  const Tensor& loss, const Tensor* grad, uintptr_t stream);
#endif

}  // namespace fussfast::back_ce
