// region_pool: per image and class, the mean of the pixel embeddings carrying that label.
//
//   emb    [B, D, P]  (P = H*W; any float dtype)      labels [B, P] (int32/int64)
//   acc    [B, K, D]  acc_t, zero on entry: the sums, turned into unnormalized means in place
//   counts [B, K]     int64, zero on entry
//   means  [B, K, D]  emb's dtype: acc, L2-normalized over D when `normalize`
//   regions [B, P]    int32: each pixel's region index, K for ignored (and invalid) labels
//   status [1]        int32, zero on entry: number of labels outside [0, K) that are not ignored
//
// Backward: grad_emb[b, :, p] = g[b, regions[b, p], :], where g[b, k] is the gradient w.r.t. the
// region's pixel embeddings (1/count times the gradient w.r.t. the unnormalized mean), and 0 for
// ignored pixels. The helpers below hold the math that the CPU and CUDA kernels share.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::region_pool {

constexpr int64_t kIgnored = -1;
constexpr int64_t kInvalid = -2;

// Region index of a label: k in [0, K), kIgnored, or kInvalid. ignore_index wins over [0, K).
template <class L>
FF_HD int64_t region_of(L label, int64_t num_classes, int64_t ignore_index) {
  int64_t v = static_cast<int64_t>(label);
  if (v == ignore_index) return kIgnored;
  return (v >= 0 && v < num_classes) ? v : kInvalid;
}

// Turns one region's sum (length D, in place) into its mean and writes the output row.
template <class A, class T>
FF_HD void finalize_region(A* sum, int64_t count, T* out, int64_t dim, bool normalize) {
  A sq = 0;
  for (int64_t d = 0; d < dim; ++d) {
    if (count > 0) sum[d] /= A(count);
    sq += sum[d] * sum[d];
  }
  A denom = normalize ? (std::sqrt(sq) > A(kNormEps) ? std::sqrt(sq) : A(kNormEps)) : A(1);
  for (int64_t d = 0; d < dim; ++d) store(out + d, sum[d] / denom);
}

// Gradient w.r.t. each pixel embedding of one region, from the gradient of its output row.
template <class A, class T>
FF_HD void region_grad(const T* grad_out, const A* mean, int64_t count, A* g, int64_t dim,
                       bool normalize) {
  if (count == 0) {
    for (int64_t d = 0; d < dim; ++d) g[d] = 0;
    return;
  }
  A scale = A(1) / A(count);
  if (!normalize) {
    for (int64_t d = 0; d < dim; ++d) g[d] = A(load(grad_out + d)) * scale;
    return;
  }
  A sq = 0, dot = 0;
  for (int64_t d = 0; d < dim; ++d) {
    sq += mean[d] * mean[d];
    dot += mean[d] * A(load(grad_out + d));
  }
  A norm = std::sqrt(sq);
  if (norm > A(kNormEps)) {
    // d(m/|m|)^T g = (g - m (m.g) / |m|^2) / |m|
    for (int64_t d = 0; d < dim; ++d)
      g[d] = (A(load(grad_out + d)) - mean[d] * (dot / sq)) / norm * scale;
  } else {  // the denominator is the constant eps
    for (int64_t d = 0; d < dim; ++d) g[d] = A(load(grad_out + d)) / A(kNormEps) * scale;
  }
}

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void forward_cpu(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
    const Tensor& means, const Tensor& regions, const Tensor& status, int64_t ignore_index, bool normalize);
  void backward_cpu(const Tensor& grad_means, const Tensor& acc, const Tensor& counts, const Tensor& regions,
    const Tensor& grad_rows, const Tensor& grad_emb, bool normalize);
)
inline void forward_cpu(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
    const Tensor& means, const Tensor& regions, const Tensor& status, int64_t ignore_index, bool normalize) {
  FF_CPU_CALL(forward_cpu(emb, labels, acc, counts, means, regions, status, ignore_index, normalize));
}
inline void backward_cpu(const Tensor& grad_means, const Tensor& acc, const Tensor& counts,
    const Tensor& regions, const Tensor& grad_rows, const Tensor& grad_emb, bool normalize) {
  FF_CPU_CALL(backward_cpu(grad_means, acc, counts, regions, grad_rows, grad_emb, normalize));
}
#ifdef FUSSFAST_WITH_CUDA
void forward_cuda(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
                  const Tensor& means, const Tensor& regions, const Tensor& status,
                  int64_t ignore_index, bool normalize, uintptr_t stream);
void backward_cuda(const Tensor& grad_means, const Tensor& acc, const Tensor& counts,
                   const Tensor& regions, const Tensor& grad_rows, const Tensor& grad_emb,
                   bool normalize, uintptr_t stream);
#endif

}  // namespace fussfast::region_pool
