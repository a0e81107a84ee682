// maximin: greedy farthest-point selection (FUSS's FedCC-Maximin).
//
//   points [M, D]   float32/float64; L2-normalized by the caller for cosine
//   indices [k]     out, int64: indices[0] = start, then each next pick maximizes the distance
//                   to the nearest point picked so far (squared Euclidean, or 1 - cos); ties go
//                   to the lowest index. The running minimum starts at +inf.
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::maximin {

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void maximin_cpu(const Tensor& points, bool cosine, int64_t start, const Tensor& indices);
)
inline void maximin_cpu(const Tensor& points, bool cosine, int64_t start, const Tensor& indices) {
  FF_CPU_CALL(maximin_cpu(points, cosine, start, indices));
}
#ifdef FUSSFAST_WITH_CUDA
void maximin_cuda(const Tensor& points, bool cosine, int64_t start, const Tensor& indices,
                  uintptr_t stream);
#endif

}  // namespace fussfast::maximin
