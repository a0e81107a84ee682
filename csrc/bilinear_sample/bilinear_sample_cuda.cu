// CUDA kernels: one thread per output value (row, channel), so consecutive threads read and
// write consecutive channels of a map row (coalesced). The backward adds each value into its 4
// map rows with float atomics: the sums are the same up to their order, so the last bits of the
// gradient may differ between runs (the CPU kernel is deterministic).
#include "../common/launch.h"
#include "bilinear_sample.h"

namespace fussfast::bilinear_sample {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }

template <class T>
__global__ void forward_kernel(const T* __restrict__ maps, const acc_t<T>* __restrict__ points,
                               const int64_t* __restrict__ index, acc_t<T>* __restrict__ out,
                               int64_t H, int64_t W, int64_t C, int64_t P, int64_t total) {
  using A = acc_t<T>;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t row = i / C, k = i % C;
  const Taps<A> t = taps_of(points[2 * row], points[2 * row + 1], H, W);
  const T* base = maps + index[row / P] * H * W * C + k;
  out[i] = A(load(base + t.pix[0] * C)) * t.w[0] + A(load(base + t.pix[1] * C)) * t.w[1] +
           A(load(base + t.pix[2] * C)) * t.w[2] + A(load(base + t.pix[3] * C)) * t.w[3];
}

template <class A>
__global__ void backward_kernel(const A* __restrict__ grad_out, const A* __restrict__ points,
                                const int64_t* __restrict__ index, A* grad_maps, int64_t H,
                                int64_t W, int64_t C, int64_t P, int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t row = i / C, k = i % C;
  const Taps<A> t = taps_of(points[2 * row], points[2 * row + 1], H, W);
  A* base = grad_maps + index[row / P] * H * W * C + k;
  const A g = grad_out[i];
  for (int j = 0; j < 4; ++j) atomic_add(base + t.pix[j] * C, t.w[j] * g);
}

}  // namespace

void forward_cuda(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out,
                  uintptr_t stream_handle) {
  const int64_t H = maps.size(1), W = maps.size(2), C = maps.size(3), P = points.size(1);
  const int64_t total = out.numel();
  if (total == 0) return;
  DeviceGuard guard(maps.device_id, "bilinear_sample");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(maps.dtype, "bilinear_sample", [&] {
    using A = acc_t<scalar_t>;
    launch("bilinear_sample", "forward_kernel", forward_kernel<scalar_t>,
           grid_of("bilinear_sample", ceil_div(total, kThreads)), kThreads, 0, stream, maps.ptr<scalar_t>(),
           points.ptr<A>(), index.ptr<int64_t>(), out.ptr<A>(), H, W, C, P, total);
  });
}

void backward_cuda(const Tensor& grad_out, const Tensor& points, const Tensor& index,
                   const Tensor& grad_maps, uintptr_t stream_handle) {
  const int64_t H = grad_maps.size(1), W = grad_maps.size(2), C = grad_maps.size(3), P = points.size(1);
  const int64_t total = grad_out.numel();
  if (total == 0) return;
  DeviceGuard guard(grad_maps.device_id, "bilinear_sample_backward");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_ACC(grad_maps.dtype, "bilinear_sample_backward", [&] {
    launch("bilinear_sample_backward", "backward_kernel", backward_kernel<scalar_t>,
           grid_of("bilinear_sample_backward", ceil_div(total, kThreads)), kThreads, 0, stream,
           grad_out.ptr<scalar_t>(), points.ptr<scalar_t>(), index.ptr<int64_t>(), grad_maps.ptr<scalar_t>(),
           H, W, C, P, total);
  });
}

}  // namespace fussfast::bilinear_sample
