// CPU kernel: tasks are (image, block of kTileP pixels), one contiguous range per thread. The
// inner products of a block come from the blocked matrix kernel; each pixel is assigned; the
// code gradient is one more product, and each task's share of its image's centroid gradient
// is added up in task order at the end, so the result does not depend on timing.
#include <algorithm>
#include <vector>

#include "../common/cpu_utils.h"
#include "../common/gemm_cpu.h"
#include "cluster.h"

namespace fussfast::cluster {
FF_ISA_BEGIN
namespace {

constexpr int64_t kTileP = 256;

template <class A>
void forward_impl(const Tensor& zt, const Tensor& ct, A alpha, const Outputs& out) {
  const int64_t B = zt.size(0), D = zt.size(1), P = zt.inner(2), K = ct.size(0);
  if (B * P == 0) return;
  const A *z = zt.ptr<A>(), *c = ct.ptr<A>();
  const bool grad = out.grad_z != nullptr || out.grad_c != nullptr;
  const int64_t pblocks = (P + kTileP - 1) / kTileP, tasks = B * pblocks;
  const int threads = worker_count(tasks);
  std::vector<A> grad_c_task(out.grad_c ? tasks * K * D : 0, A(0));
  std::vector<double> task_total(tasks, 0.0);

  ParallelErrors errors;
#pragma omp parallel num_threads(threads)
  errors.guard([&] {
    const int t = worker_id();
    std::vector<A> X(kTileP * K), G(kTileP * K), prob(K);
    for (int64_t task = tasks * t / threads; task < tasks * (t + 1) / threads; ++task) {
      const int64_t b = task / pblocks, p0 = (task % pblocks) * kTileP;
      const int64_t tp = std::min(kTileP, P - p0);
      const A* zb = z + b * D * P + p0;
      // X[p][k] = sum_d z[d][p0 + p] c[k][d]
      cpu::gemm({tp, K, D, 1, P, 1, D, K, false}, zb, c, X.data());
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
      // grad_z[d][p0 + p] = sum_k c[k][d] G[p][k];  this task's grad_c[k][d] = sum_p G[p][k] z[d][p0 + p]
      if (out.grad_z)
        cpu::gemm({D, tp, K, 1, D, 1, K, P, false}, c, G.data(), out.grad_z->ptr<A>() + b * D * P + p0);
      if (out.grad_c)
        cpu::gemm({K, D, tp, 1, K, 1, P, D, false}, G.data(), zb, grad_c_task.data() + task * K * D);
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

void forward_cpu(const Tensor& z, const Tensor& c, double alpha, const Outputs& out) {
  FF_DISPATCH_ACC(z.dtype, "cluster_assign", [&] { forward_impl<scalar_t>(z, c, scalar_t(alpha), out); });
}

FF_ISA_END
}  // namespace fussfast::cluster
