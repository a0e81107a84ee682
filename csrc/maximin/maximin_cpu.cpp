// CPU maximin: each pick updates every point's running minimum distance and takes the argmax
// in the same parallel pass (per-thread best, merged with the lowest-index tie rule).
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "maximin.h"

namespace fussfast::maximin {
FF_ISA_BEGIN
namespace {

template <class A>
void run(const Tensor& points, bool cosine, int64_t start, const Tensor& indices_t) {
  const int64_t M = points.size(0), D = points.size(1), k = indices_t.size(0);
  const A* x = points.ptr<A>();
  int64_t* indices = indices_t.ptr<int64_t>();
  std::vector<A> min_dist(M, std::numeric_limits<A>::infinity());
  int64_t pick = start;
  for (int64_t j = 0; j < k; ++j) {
    indices[j] = pick;
    if (j + 1 == k) break;
    const A* c = x + pick * D;
    A best = -std::numeric_limits<A>::infinity();
    int64_t best_i = M;
#pragma omp parallel
    {
      A t_best = -std::numeric_limits<A>::infinity();
      int64_t t_i = M;
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < M; ++i) {
        const A* xi = x + i * D;
        A d = 0;
        if (cosine) {
#pragma omp simd reduction(+ : d)
          for (int64_t e = 0; e < D; ++e) d += xi[e] * c[e];
          d = A(1) - d;
        } else {
#pragma omp simd reduction(+ : d)
          for (int64_t e = 0; e < D; ++e) d += (xi[e] - c[e]) * (xi[e] - c[e]);
        }
        if (d < min_dist[i]) min_dist[i] = d;
        if (min_dist[i] > t_best) t_best = min_dist[i], t_i = i;  // first index wins ties
      }
#pragma omp critical
      if (t_best > best || (t_best == best && t_i < best_i)) best = t_best, best_i = t_i;
    }
    pick = best_i;
  }
}

}  // namespace

void maximin_cpu(const Tensor& points, bool cosine, int64_t start, const Tensor& indices) {
  FF_DISPATCH_ACC(points.dtype, "maximin", [&] { run<scalar_t>(points, cosine, start, indices); });
}

FF_ISA_END
}  // namespace fussfast::maximin
