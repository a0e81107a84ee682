// kmeans: weighted k-means (k-means++ init with greedy local trials, Lloyd iterations, best of
// n_init by inertia), Euclidean or spherical (cosine).
//
//   points [M, D]     float32/float64; L2-normalized by the caller for cosine
//   weights [M]       optional, >= 0, not all zero (validated in Python)
//   centroids [k, D]  out, same dtype;  labels [M] out, int64
//   returns (inertia, n_iter) of the best run
//
// Distances: Euclidean = squared distance |x - c|^2; cosine = 1 - x.c (centroids re-normalized
// after each update). tol is absolute here (scaled by the data variance, as scikit-learn does:
// by the binding for CPU points, by the wrapper on CUDA); a run stops when the total squared
// centroid shift is <= tol, or when no label changes. A cluster left empty is re-seeded with
// the point farthest from its centroid.
// Deterministic for a seed: every sum is taken in a fixed order, whatever the thread count.
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::kmeans {

struct Options {
  int64_t k, n_init, max_iter;
  double tol;
  uint64_t seed;
  bool cosine;
};

struct Result {
  double inertia;
  int64_t n_iter;
};

// Distance of x to c from the dot product and squared norms (Euclidean) or the dot alone.
template <class A>
FF_HD A distance(A dot, A xx, A cc, bool cosine) {
  if (cosine) return A(1) - dot;
  const A d = xx - A(2) * dot + cc;
  return d > A(0) ? d : A(0);
}

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
// tol is absolute in Options; the binding scales it by mean_variance_cpu (CPU points), which
// also raises on NaN or Inf: the finite check and the variance in one pass.
FF_CPU_DECLARE(
  double mean_variance_cpu(const Tensor& points);
  Result kmeans_cpu(const Tensor& points, const Tensor* weights, const Options& opt, const Tensor& centroids,
    const Tensor& labels);
)
inline double mean_variance_cpu(const Tensor& points) { FF_CPU_CALL(mean_variance_cpu(points)); }
inline Result kmeans_cpu(const Tensor& points, const Tensor* weights, const Options& opt,
    const Tensor& centroids, const Tensor& labels) {
  FF_CPU_CALL(kmeans_cpu(points, weights, opt, centroids, labels));
}
#ifdef FUSSFAST_WITH_CUDA
Result kmeans_cuda(const Tensor& points, const Tensor* weights, const Options& opt,
                   const Tensor& centroids, const Tensor& labels, uintptr_t stream);
#endif

}  // namespace fussfast::kmeans
