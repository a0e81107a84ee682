// CUDA kernel: one thread per pixel; consecutive threads read consecutive pixels of each class
// plane, so every logit load is coalesced.
#include "../common/launch.h"
#include "back_ce.h"

namespace fussfast::back_ce {
namespace {

constexpr int kThreads = 256;

template <class A>
__global__ void __launch_bounds__(kThreads)
    back_ce_kernel(const A* __restrict__ x, const int64_t* __restrict__ y, const int32_t* __restrict__ present,
                   int64_t ignore_index, A* loss, A* grad, int64_t K, int64_t P, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const int64_t b = i / P, p = i % P, base = b * K * P + p;
  const int64_t label = y[i] == ignore_index ? -1 : y[i];
  loss[i] = pixel(x + base, P, K, label, present + b * K, grad ? grad + base : nullptr);
}

}  // namespace

void forward_cuda(const Tensor& logits, const Tensor& labels, const Tensor& present, int64_t ignore_index,
                  const Tensor& loss, const Tensor* grad, uintptr_t stream_handle) {
  const int64_t K = logits.size(1), P = logits.inner(2), n = logits.size(0) * P;
  if (n == 0) return;
  DeviceGuard guard(logits.device_id, "back_ce");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_ACC(logits.dtype, "back_ce", [&] {
    using A = scalar_t;
    launch("back_ce", "back_ce_kernel", back_ce_kernel<A>, grid_of("back_ce", ceil_div(n, kThreads)), kThreads, 0,
           stream, logits.ptr<A>(), labels.ptr<int64_t>(), present.ptr<int32_t>(), ignore_index, loss.ptr<A>(),
           grad ? grad->ptr<A>() : nullptr, K, P, n);
  });
}

}  // namespace fussfast::back_ce
