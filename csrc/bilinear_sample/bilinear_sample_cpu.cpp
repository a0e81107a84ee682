// CPU kernels. Forward: one task per output row, the 4 taps blended along C (a plain loop the
// compiler vectorizes for the ISA the file is built for). Backward: one task per map and block
// of channels, each walking the rows that read its map in order, so every sum is formed in the
// same order on every run (deterministic, no atomics, no per-thread copies of the gradient).
#include <algorithm>
#include <vector>

#include "../common/cpu_utils.h"
#include "bilinear_sample.h"

namespace fussfast::bilinear_sample {
FF_ISA_BEGIN
namespace {

constexpr int64_t kChannels = 32;  // channels per backward task

template <class T>
void forward_impl(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out) {
  using A = acc_t<T>;
  const int64_t H = maps.size(1), W = maps.size(2), C = maps.size(3);
  const int64_t M = points.size(0), P = points.size(1);
  const T* x = maps.ptr<T>();
  const A* pt = points.ptr<A>();
  const int64_t* idx = index.ptr<int64_t>();
  A* o = out.ptr<A>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < M * P; ++row) {
    const Taps<A> t = taps_of(pt[2 * row], pt[2 * row + 1], H, W);
    const T* base = x + idx[row / P] * H * W * C;
    const T *a = base + t.pix[0] * C, *b = base + t.pix[1] * C;
    const T *c = base + t.pix[2] * C, *d = base + t.pix[3] * C;
    A* dst = o + row * C;
    for (int64_t k = 0; k < C; ++k)
      dst[k] = A(load(a + k)) * t.w[0] + A(load(b + k)) * t.w[1] + A(load(c + k)) * t.w[2] +
               A(load(d + k)) * t.w[3];
  }
}

template <class A>
void backward_impl(const Tensor& grad_out, const Tensor& points, const Tensor& index,
                   const Tensor& grad_maps) {
  const int64_t N = grad_maps.size(0), H = grad_maps.size(1), W = grad_maps.size(2), C = grad_maps.size(3);
  const int64_t M = points.size(0), P = points.size(1);
  const A* g = grad_out.ptr<A>();
  const A* pt = points.ptr<A>();
  const int64_t* idx = index.ptr<int64_t>();
  A* gx = grad_maps.ptr<A>();

  // rows grouped by the map they read, in increasing m (a counting sort)
  std::vector<int64_t> start(N + 1, 0), rows(M);
  for (int64_t m = 0; m < M; ++m) start[idx[m] + 1] += 1;
  for (int64_t n = 0; n < N; ++n) start[n + 1] += start[n];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t m = 0; m < M; ++m) rows[next[idx[m]]++] = m;

  const int64_t blocks = (C + kChannels - 1) / kChannels;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t c0 = blk * kChannels, nc = std::min(kChannels, C - c0);
      A* base = gx + n * H * W * C + c0;
      for (int64_t r = start[n]; r < start[n + 1]; ++r) {
        const int64_t m = rows[r];
        for (int64_t p = 0; p < P; ++p) {
          const int64_t row = m * P + p;
          const Taps<A> t = taps_of(pt[2 * row], pt[2 * row + 1], H, W);
          const A* src = g + row * C + c0;
          for (int j = 0; j < 4; ++j) {
            A* dst = base + t.pix[j] * C;
            const A w = t.w[j];
            for (int64_t k = 0; k < nc; ++k) dst[k] += w * src[k];
          }
        }
      }
    }
}

}  // namespace

void forward_cpu(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out) {
  FF_DISPATCH_FLOAT(maps.dtype, "bilinear_sample", [&] { forward_impl<scalar_t>(maps, points, index, out); });
}

void backward_cpu(const Tensor& grad_out, const Tensor& points, const Tensor& index,
                  const Tensor& grad_maps) {
  FF_DISPATCH_ACC(grad_maps.dtype, "bilinear_sample_backward",
                  [&] { backward_impl<scalar_t>(grad_out, points, index, grad_maps); });
}

FF_ISA_END
}  // namespace fussfast::bilinear_sample
