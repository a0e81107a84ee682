// CUDA kernels.
//
// Forward: each warp owns a strip of kStrip = 32 * kSteps consecutive pixels of one image and a
// chunk of kChannels channels. Lane l reads pixels strip + 32*s + l (s < kSteps), so every load
// is coalesced. Labels are read once per strip into registers. Each lane keeps a running sum while
// its label stays the same and flushes it with one global atomic when it changes; at the end of
// the strip a warp whose lanes all hold the same label reduces with shuffles first, so a uniform
// region costs one atomic per channel per strip instead of one per pixel.
#include "../common/launch.h"
#include "region_pool.h"

namespace fussfast::region_pool {
namespace {

constexpr int kWarps = 8;          // warps per block
constexpr int kSteps = 4;          // pixels per lane per strip
constexpr int kStrip = 32 * kSteps;
constexpr int kChannels = 16;      // channels per block (grid.z splits D)
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(int64_t* p, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
}

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// End-of-strip flush of (region, value) held by every lane of a converged warp; `row` maps a
// region to the address its value is added to.
template <class V, class Row>
__device__ __forceinline__ void warp_flush(int64_t region, V value, Row row) {
  int lane = threadIdx.x & 31;
  bool uniform = __all_sync(kFullMask, region == __shfl_sync(kFullMask, region, 0));
  if (uniform) {
    value = warp_sum(value);
    if (lane == 0 && region >= 0) atomic_add(row(region), value);
  } else if (region >= 0) {
    atomic_add(row(region), value);
  }
}

template <class T, class L>
__global__ void __launch_bounds__(kWarps * 32)
    accumulate_kernel(const T* __restrict__ emb, const L* __restrict__ labels, acc_t<T>* sums,
                      int64_t* counts, int32_t* regions, int32_t* status, int64_t D, int64_t P,
                      int64_t K, int64_t ignore_index, unsigned blocks_per_image) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x / blocks_per_image;
  const int64_t block = blockIdx.x % blocks_per_image;
  const int64_t strip = (block * kWarps + (threadIdx.x >> 5)) * kStrip;
  if (strip >= P) return;  // whole warp leaves together

  int64_t region[kSteps];
  for (int s = 0; s < kSteps; ++s) {
    int64_t p = strip + 32 * s + lane;
#if FF_MUTATION == FF_MUTATION_OFF_BY_ONE
    region[s] = p <= P ? region_of(labels[b * P + p], K, ignore_index) : kIgnored;
#else
    region[s] = p < P ? region_of(labels[b * P + p], K, ignore_index) : kIgnored;
#endif
  }

  if (blockIdx.z == 0) {  // one channel chunk records regions, counts pixels, checks labels
    int64_t cur = kIgnored, run = 0;
    for (int s = 0; s < kSteps; ++s) {
      int64_t p = strip + 32 * s + lane;
      if (p < P) regions[b * P + p] = int32_t(region[s] >= 0 ? region[s] : K);
      if (region[s] == kInvalid) atomicAdd(status, 1);
      if (region[s] != cur) {
        if (cur >= 0) atomic_add(counts + b * K + cur, run);
        cur = region[s];
        run = 0;
      }
      run += 1;
    }
    warp_flush(cur, run, [&](int64_t r) { return counts + b * K + r; });
  }

  const int64_t d_end = min(D, int64_t(blockIdx.z + 1) * kChannels);
  for (int64_t d = int64_t(blockIdx.z) * kChannels; d < d_end; ++d) {
    const T* row = emb + (b * D + d) * P + strip + lane;
    A* out = sums + b * K * D + d;  // region r lands at out[r * D]
    int64_t cur = kIgnored;
    A run = 0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (region[s] != cur) {
        if (cur >= 0) atomic_add(out + cur * D, run);
        cur = region[s];
        run = 0;
      }
      if (cur >= 0) run += A(load(row + 32 * s));
    }
    warp_flush(cur, run, [&](int64_t r) { return out + r * D; });
  }
}

template <class T>
__global__ void finalize_kernel(acc_t<T>* acc, const int64_t* counts, T* means, int64_t rows,
                                int64_t D, bool normalize) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows) finalize_region(acc + i * D, counts[i], means + i * D, D, normalize);
}

template <class T>
__global__ void region_grad_kernel(const T* grad_means, const acc_t<T>* acc, const int64_t* counts,
                                   acc_t<T>* grad_rows, int64_t rows, int64_t D, bool normalize) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows)
    region_grad(grad_means + i * D, acc + i * D, counts[i], grad_rows + i * D, D, normalize);
}

// One thread per pixel, looping over a chunk of channels: the region is read once and every
// store is coalesced; the gathered rows are small and stay in cache.
template <class T>
__global__ void scatter_grad_kernel(const acc_t<T>* __restrict__ grad_rows,
                                    const int32_t* __restrict__ regions, T* __restrict__ grad_emb,
                                    int64_t D, int64_t P, int64_t K, unsigned blocks_per_image) {
  const int64_t b = blockIdx.x / blocks_per_image;
  const int64_t p = int64_t(blockIdx.x % blocks_per_image) * blockDim.x + threadIdx.x;
  if (p >= P) return;
  const int64_t r = regions[b * P + p];  // K: ignored
  const int64_t d_end = min(D, int64_t(blockIdx.z + 1) * kChannels);
  for (int64_t d = int64_t(blockIdx.z) * kChannels; d < d_end; ++d) {
    acc_t<T> v = r < K ? grad_rows[(b * K + r) * D + d] : acc_t<T>(0);
    store(grad_emb + (b * D + d) * P + p, v);
  }
}

constexpr int kRowThreads = 128;
constexpr int kPixelThreads = 256;

}  // namespace

void forward_cuda(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
                  const Tensor& means, const Tensor& regions, const Tensor& status,
                  int64_t ignore_index, bool normalize, uintptr_t stream_handle) {
  const int64_t B = emb.size(0), D = emb.size(1), K = counts.size(1);
  const int64_t P = labels.numel() / (B > 0 ? B : 1);
  if (B == 0) return;
  DeviceGuard guard(emb.device_id, "region_pool");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(emb.dtype, "region_pool", [&] {
    using A = acc_t<scalar_t>;
    FF_DISPATCH_INDEX(labels.dtype, "region_pool", [&] {
      // Images are folded into grid.x (grid.y would cap B at 65535); z = 0 must exist even
      // for D = 0 because it counts the pixels. Empty images (P = 0) launch nothing.
      const int64_t per_image = ceil_div(P, kStrip * kWarps);
      launch("region_pool", "accumulate_kernel", accumulate_kernel<scalar_t, index_t>,
             grid_of("region_pool", per_image * B, 1, ceil_div(D > 0 ? D : 1, kChannels)), kWarps * 32, 0,
             stream, emb.ptr<scalar_t>(), labels.ptr<index_t>(), acc.ptr<A>(), counts.ptr<int64_t>(),
             regions.ptr<int32_t>(), status.ptr<int32_t>(), D, P, K, ignore_index, unsigned(per_image));
    });
    launch("region_pool", "finalize_kernel", finalize_kernel<scalar_t>,
           grid_of("region_pool", ceil_div(B * K, kRowThreads)), kRowThreads, 0, stream, acc.ptr<A>(),
           counts.ptr<int64_t>(), means.ptr<scalar_t>(), B * K, D, normalize);
  });
}

void backward_cuda(const Tensor& grad_means, const Tensor& acc, const Tensor& counts,
                   const Tensor& regions, const Tensor& grad_rows, const Tensor& grad_emb,
                   bool normalize, uintptr_t stream_handle) {
  const int64_t B = grad_emb.size(0), D = grad_emb.size(1), K = counts.size(1);
  const int64_t P = B > 0 ? regions.numel() / B : 0;
  if (B * P * D == 0) return;
  DeviceGuard guard(grad_emb.device_id, "region_pool_backward");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(grad_emb.dtype, "region_pool_backward", [&] {
    using A = acc_t<scalar_t>;
    launch("region_pool_backward", "region_grad_kernel", region_grad_kernel<scalar_t>,
           grid_of("region_pool_backward", ceil_div(B * K, kRowThreads)), kRowThreads, 0, stream,
           grad_means.ptr<scalar_t>(), acc.ptr<A>(), counts.ptr<int64_t>(), grad_rows.ptr<A>(), B * K, D,
           normalize);
    const int64_t per_image = ceil_div(P, kPixelThreads);
    launch("region_pool_backward", "scatter_grad_kernel", scatter_grad_kernel<scalar_t>,
           grid_of("region_pool_backward", per_image * B, 1, ceil_div(D, kChannels)), kPixelThreads, 0, stream,
           grad_rows.ptr<A>(), regions.ptr<int32_t>(), grad_emb.ptr<scalar_t>(), D, P, K, unsigned(per_image));
  });
}

}  // namespace fussfast::region_pool
