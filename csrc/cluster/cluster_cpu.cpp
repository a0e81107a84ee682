// CPU kernel: tasks are (image, block of kTileP pixels), one contiguous range per thread. The
// inner products of a block come from the blocked matrix kernel; each pixel is assigned; the
// code gradient is one more product, and each task's share of its image's centroid gradient
// is added up in task order at the end, so the result does not depend on timing.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/cpu_utils.h"
#include "../common/gemm_cpu.h"
#include "cluster.h"

namespace fussfast::cluster {
FF_ISA_BEGIN
namespace {

constexpr int64_t kTileP = 256;

template <class A>
void forward_impl(const Tensor& zt, const Tensor& ct, A alpha, const Outputs& out, bool normalize) {
  const int64_t B = zt.size(0), D = zt.size(1), P = zt.inner(2), K = ct.size(0);
  if (B * P == 0) return;
  const A *z = zt.ptr<A>(), *c = ct.ptr<A>();
  const bool grad = out.grad_z != nullptr || out.grad_c != nullptr;
  const int64_t pblocks = (P + kTileP - 1) / kTileP, tasks = B * pblocks;
  const int threads = worker_count(tasks);
  std::vector<A> grad_c_task(out.grad_c ? tasks * K * D : 0, A(0));
  std::vector<double> task_total(tasks, 0.0);
  const A eps = A(kNormEps);

  ParallelErrors errors;
#pragma omp parallel num_threads(threads)
  errors.guard([&] {
    const int t = worker_id();
    std::vector<A> X(kTileP * K), G(kTileP * K), prob(K), sq(kTileP), inv(kTileP), dot(kTileP);
    std::vector<A> Gy(normalize && out.grad_z ? D * kTileP : 0);
    for (int64_t task = tasks * t / threads; task < tasks * (t + 1) / threads; ++task) {
      const int64_t b = task / pblocks, p0 = (task % pblocks) * kTileP;
      const int64_t tp = std::min(kTileP, P - p0);
      const A* zb = z + b * D * P + p0;
      if (normalize) {  // per-pixel inverse norms, walking each code row contiguously
        std::fill(sq.begin(), sq.end(), A(0));
        for (int64_t d = 0; d < D; ++d)
          for (int64_t p = 0; p < tp; ++p) sq[p] += zb[d * P + p] * zb[d * P + p];
        for (int64_t p = 0; p < tp; ++p) inv[p] = A(1) / std::max(std::sqrt(sq[p]), eps);
      }
      // X[p][k] = sum_d z[d][p0 + p] c[k][d], scaled to the normalized code
      cpu::gemm({tp, K, D, 1, P, 1, D, K, false}, zb, c, X.data());
      if (normalize)
        for (int64_t p = 0; p < tp; ++p)
          for (int64_t k = 0; k < K; ++k) X[p * K + k] *= inv[p];
      double total = 0;
      for (int64_t p = 0; p < tp; ++p) {
        int64_t best;
        total += assign_pixel(X.data() + p * K, K, alpha, prob.data(), grad ? G.data() + p * K : nullptr, best);
        if (out.labels) out.labels->ptr<int64_t>()[b * P + p0 + p] = best;
        if (out.probs) {
          A* pr = out.probs->ptr<A>() + b * K * P + p0 + p;
          for (int64_t k = 0; k < K; ++k) pr[k * P] = prob[k];
        }
      }
      task_total[task] = total;
      if (!grad) continue;
      A* gzb = out.grad_z ? out.grad_z->ptr<A>() + b * D * P + p0 : nullptr;
      // gradient of the normalized codes: g[d][p] = sum_k c[k][d] G[p][k]
      if (gzb && !normalize) cpu::gemm({D, tp, K, 1, D, 1, K, P, false}, c, G.data(), gzb);
      if (gzb && normalize) {
        cpu::gemm({D, tp, K, 1, D, 1, K, kTileP, false}, c, G.data(), Gy.data());
        // through the normalization: (g - y (y . g)) / |z|, the projection off where |z| <= eps
        std::fill(dot.begin(), dot.end(), A(0));
        for (int64_t d = 0; d < D; ++d)
          for (int64_t p = 0; p < tp; ++p) dot[p] += zb[d * P + p] * Gy[d * kTileP + p];
        for (int64_t p = 0; p < tp; ++p) dot[p] = sq[p] > eps * eps ? dot[p] * inv[p] * inv[p] : A(0);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t p = 0; p < tp; ++p) gzb[d * P + p] = (Gy[d * kTileP + p] - zb[d * P + p] * dot[p]) * inv[p];
      }
      // this task's grad_c[k][d] = sum_p G[p][k] y[d][p0 + p], with y = z * inv when normalizing
      if (out.grad_c) {
        if (normalize)
          for (int64_t p = 0; p < tp; ++p)
            for (int64_t k = 0; k < K; ++k) G[p * K + k] *= inv[p];
        cpu::gemm({K, D, tp, 1, K, 1, P, D, false}, G.data(), zb, grad_c_task.data() + task * K * D);
      }
    }
  });
  errors.rethrow();

  if (out.total) {
    A* total = out.total->ptr<A>();
    for (int64_t b = 0; b < B; ++b) {
      double s = 0;
      for (int64_t i = 0; i < pblocks; ++i) s += task_total[b * pblocks + i];
      total[b] = A(s);
    }
  }
  if (out.grad_c) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      A* gc = out.grad_c->ptr<A>() + b * K * D;
      for (int64_t i = 0; i < pblocks; ++i)
        for (int64_t j = 0; j < K * D; ++j) gc[j] += grad_c_task[(b * pblocks + i) * K * D + j];
    }
  }
}

}  // namespace

void forward_cpu(const Tensor& z, const Tensor& c, double alpha, const Outputs& out, bool normalize_codes) {
  FF_DISPATCH_ACC(z.dtype, "cluster_assign",
                  [&] { forward_impl<scalar_t>(z, c, scalar_t(alpha), out, normalize_codes); });
}

FF_ISA_END
}  // namespace fussfast::cluster
