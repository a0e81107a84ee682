// CUDA kernel: one thread per pixel, kThreads pixels per block. The block stages the centroids
// in shared memory; each thread computes its pixel's K inner products and assignment; the
// gradient rows go to shared memory so that the block adds its part of the centroid gradient
// with one atomic per (k, d).
#include "../common/launch.h"
#include "cluster.h"

namespace fussfast::cluster {
namespace {

constexpr int kThreads = 64;
constexpr int kMaxCentroids = 64;

template <class T>
__global__ void __launch_bounds__(kThreads)
    cluster_kernel(const T* __restrict__ z, const T* __restrict__ c, acc_t<T> alpha, T* probs,
                   int64_t* labels, acc_t<T>* total, acc_t<T>* grad_z, acc_t<T>* grad_c, int64_t D,
                   int64_t P, int64_t K, unsigned blocks_per_image) {
  using A = acc_t<T>;
  FF_DYNAMIC_SHARED(unsigned char, smem_raw);
  auto cs = smem_cast<A>(smem_raw);  // [K][D] centroids
  auto gs = cs + K * D;              // [K][kThreads] gradient rows, for grad_c
  FF_SHARED(A, warp_total, [kThreads / 32]);
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x / blocks_per_image;
  const int64_t p0 = int64_t(blockIdx.x % blocks_per_image) * kThreads;
  const int64_t p = p0 + tid;
  const int64_t np = min(int64_t(kThreads), P - p0);
  for (int64_t i = tid; i < K * D; i += kThreads) cs[i] = A(load(c + i));
#if FF_MUTATION == FF_MUTATION_DIVERGENT_BARRIER
  if (p < P) __syncthreads();
#else
  __syncthreads();
#endif

  A pixel_total = 0;
  if (p < P) {
    A x[kMaxCentroids], prob[kMaxCentroids], g[kMaxCentroids];  // K <= kMaxCentroids: checked
    for (int64_t k = 0; k < K; ++k) x[k] = 0;
    const T* zp = z + b * D * P + p;
    for (int64_t d = 0; d < D; ++d) {
      const A zd = A(load(zp + d * P));
      for (int64_t k = 0; k < K; ++k) x[k] += zd * cs[k * D + d];
    }
    int64_t best;
    const bool grad = grad_z != nullptr || grad_c != nullptr;
    pixel_total = assign_pixel(x, K, alpha, prob, grad ? g : nullptr, best);
    if (labels) labels[b * P + p] = best;
    if (probs)
      for (int64_t k = 0; k < K; ++k) store(probs + (b * K + k) * P + p, prob[k]);
    if (grad_c)
      for (int64_t k = 0; k < K; ++k) gs[k * kThreads + tid] = g[k];
    if (grad_z) {
      for (int64_t d = 0; d < D; ++d) {
        A s = 0;
        for (int64_t k = 0; k < K; ++k) s += g[k] * cs[k * D + d];
        grad_z[(b * D + d) * P + p] = s;
      }
    }
  }
  if (total) {
#if FF_MUTATION == FF_MUTATION_SHUFFLE_MASK
    constexpr unsigned mask = 0x7fffffffu;
#else
    constexpr unsigned mask = 0xffffffffu;
#endif
    for (int offset = 16; offset > 0; offset >>= 1) pixel_total += __shfl_xor_sync(mask, pixel_total, offset);
    if (tid % 32 == 0) warp_total[tid / 32] = pixel_total;
  }
  __syncthreads();
  if (total && tid == 0) {
    A s = 0;
    for (int w = 0; w < kThreads / 32; ++w) s += warp_total[w];
    atomicAdd(total + b, s);
  }
  if (grad_c == nullptr) return;
  // grad_c[k][d] += sum over this block's pixels of g[p][k] z[d][p]
  for (int64_t i = tid; i < K * D; i += kThreads) {
    const int64_t k = i / D, d = i % D;
    const T* zd = z + (b * D + d) * P + p0;
    A s = 0;
    for (int64_t j = 0; j < np; ++j) s += gs[k * kThreads + j] * A(load(zd + j));
    atomicAdd(grad_c + b * K * D + i, s);
  }
}

}  // namespace

void forward_cuda(const Tensor& z, const Tensor& c, double alpha, const Outputs& out,
                  uintptr_t stream_handle) {
  const int64_t B = z.size(0), D = z.size(1), P = z.inner(2), K = c.size(0);
  if (B * P == 0) return;
  if (K > kMaxCentroids)
    fail("cluster_assign", "the CUDA kernel takes at most " + std::to_string(kMaxCentroids) +
                               " centroids (got " + std::to_string(K) + "); use backend=\"reference\"");
  DeviceGuard guard(z.device_id, "cluster_assign");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(z.dtype, "cluster_assign", [&] {
    using A = acc_t<scalar_t>;
    auto kernel = cluster_kernel<scalar_t>;
    // centroids and gradient rows in dynamic shared memory, up to the device's opt-in limit
    const size_t smem = sizeof(A) * size_t(K * D + K * kThreads);
    const size_t limit = dynamic_smem_limit("cluster_assign", kernel);
    if (smem > limit)
      fail("cluster_assign", "K * D too large for the CUDA kernel's shared memory (K=" + std::to_string(K) +
                                 ", D=" + std::to_string(D) + " need " + std::to_string(smem) + " bytes, the device has " +
                                 std::to_string(limit) + "); use backend=\"reference\"");
    const int64_t per_image = ceil_div(P, kThreads);
    launch("cluster_assign", "cluster_kernel", kernel, grid_of("cluster_assign", per_image * B), kThreads, smem,
           stream, z.ptr<scalar_t>(), c.ptr<scalar_t>(), A(alpha), out.probs ? out.probs->ptr<scalar_t>() : nullptr,
           out.labels ? out.labels->ptr<int64_t>() : nullptr, out.total ? out.total->ptr<A>() : nullptr,
           out.grad_z ? out.grad_z->ptr<A>() : nullptr, out.grad_c ? out.grad_c->ptr<A>() : nullptr, D, P, K,
           unsigned(per_image));
  });
}

}  // namespace fussfast::cluster
