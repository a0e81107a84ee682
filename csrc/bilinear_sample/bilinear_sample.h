// bilinear_sample: STEGO's sampling (grid_sample, bilinear, padding_mode="border",
// align_corners=True) of channels-last maps at per-image points.
//
//   maps   [N, H, W, C]  any float dtype               points [M, P, 2] acc_t: (x, y) in [-1, 1]
//   index  [M]           int64: the map row m reads     out    [M, P, C] acc_t
//
// out[m, p] = sum over the 4 taps t of w_t * maps[index[m], y_t, x_t]. Backward: the gradient
// of each output row is scattered back into the same 4 map rows with the same weights
// (grad_maps [N, H, W, C] acc_t, zero on entry). The tap arithmetic below is shared by the CPU
// and CUDA kernels and follows ATen's grid_sampler formulas, so the weights are the same.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::bilinear_sample {

// The 4 taps of one point: pixel offsets y * W + x within the map and their weights.
template <class A>
struct Taps {
  int64_t pix[4];
  A w[4];
};

// align_corners=True unnormalization, then border padding (clip into [0, size - 1]).
template <class A>
FF_HD A source_index(A coord, int64_t size) {
  A v = ((coord + A(1)) / A(2)) * A(size - 1);
  A hi = A(size - 1);
  return v < A(0) ? A(0) : (v > hi ? hi : v);
}

// Taps in the order nw, ne, sw, se. A tap past the last row/column (only when the point lies
// exactly on it) has weight 0; it is pointed at the clipped pixel so that no read goes out of
// bounds.
template <class A>
FF_HD Taps<A> taps_of(A x, A y, int64_t H, int64_t W) {
  A ix = source_index(x, W), iy = source_index(y, H);
  A x0 = std::floor(ix), y0 = std::floor(iy);
  A x1 = x0 + A(1), y1 = y0 + A(1);
  int64_t c0 = int64_t(x0), r0 = int64_t(y0);
  int64_t c1 = c0 + 1 < W ? c0 + 1 : W - 1, r1 = r0 + 1 < H ? r0 + 1 : H - 1;
  Taps<A> t;
  t.pix[0] = r0 * W + c0;
  t.pix[1] = r0 * W + c1;
  t.pix[2] = r1 * W + c0;
  t.pix[3] = r1 * W + c1;
  t.w[0] = (x1 - ix) * (y1 - iy);
  t.w[1] = (ix - x0) * (y1 - iy);
  t.w[2] = (x1 - ix) * (iy - y0);
  t.w[3] = (ix - x0) * (iy - y0);
  return t;
}

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void forward_cpu(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out);
  void backward_cpu(const Tensor& grad_out, const Tensor& points, const Tensor& index, const Tensor& grad_maps);
)
inline void forward_cpu(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out) {
  FF_CPU_CALL(forward_cpu(maps, points, index, out));
}
inline void backward_cpu(const Tensor& grad_out, const Tensor& points, const Tensor& index,
    const Tensor& grad_maps) {
  FF_CPU_CALL(backward_cpu(grad_out, points, index, grad_maps));
}

#ifdef FUSSFAST_WITH_CUDA
void forward_cuda(const Tensor& maps, const Tensor& points, const Tensor& index, const Tensor& out,
                  uintptr_t stream);
void backward_cuda(const Tensor& grad_out, const Tensor& points, const Tensor& index,
                   const Tensor& grad_maps, uintptr_t stream);
#endif

}  // namespace fussfast::bilinear_sample
