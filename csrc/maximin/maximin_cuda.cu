// CUDA maximin: one cooperative launch does all k picks. For every pick, each thread updates the
// running minimum distance of its points and keeps its best (distance, index); blocks reduce
// to one candidate each, the grid synchronizes, and every block reduces the same candidates in
// the same order, so all agree on the pick without another launch. Ties go to the lowest index.
#include <cooperative_groups.h>

#include <cuda/std/limits>

#include <algorithm>

#include "../common/launch.h"
#include "maximin.h"

namespace fussfast::maximin {
namespace {

namespace cg = cooperative_groups;
constexpr int kThreads = 256;

template <class A>
struct Best {
  A value;
  int64_t index;
};

template <class A>
__device__ bool better(const Best<A>& a, const Best<A>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Block-wide best of one candidate per thread; the result is valid in every thread. values and
// indices are [kThreads] shared arrays.
template <class A, class Values, class Indices>
__device__ Best<A> block_best(Best<A> mine, Values& values, Indices& indices) {
#if FF_MUTATION == FF_MUTATION_UNINITIALIZED
  if (threadIdx.x < kThreads / 2)
#endif
  {
    values[threadIdx.x] = mine.value;
    indices[threadIdx.x] = mine.index;
  }
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      Best<A> other{values[threadIdx.x + half], indices[threadIdx.x + half]};
      Best<A> cur{values[threadIdx.x], indices[threadIdx.x]};
      if (better(other, cur)) values[threadIdx.x] = other.value, indices[threadIdx.x] = other.index;
    }
    __syncthreads();
  }
  Best<A> out{values[0], indices[0]};
  __syncthreads();
  return out;
}

template <class A>
__global__ void __launch_bounds__(kThreads)
    maximin_kernel(const A* __restrict__ x, int64_t M, int64_t D, bool cosine, int64_t start,
                   int64_t k, A* min_dist, A* part_value, int64_t* part_index, int64_t* picks) {
  cg::grid_group grid = cg::this_grid();
  FF_SHARED(A, values, [kThreads]);
  FF_SHARED(int64_t, indices, [kThreads]);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < M; i += stride)
    min_dist[i] = cuda::std::numeric_limits<A>::infinity();
  if (blockIdx.x == 0 && threadIdx.x == 0) picks[0] = start;
  int64_t pick = start;
  for (int64_t j = 1; j < k; ++j) {
    const A* c = x + pick * D;
    Best<A> mine{-cuda::std::numeric_limits<A>::infinity(), M};
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < M; i += stride) {
      const A* xi = x + i * D;
      A d = 0;
      if (cosine) {
        for (int64_t e = 0; e < D; ++e) d += xi[e] * c[e];
        d = A(1) - d;
      } else {
        for (int64_t e = 0; e < D; ++e) d += (xi[e] - c[e]) * (xi[e] - c[e]);
      }
      const A m = d < min_dist[i] ? d : min_dist[i];
      min_dist[i] = m;
      if (m > mine.value) mine = {m, i};  // i grows, so the first index keeps ties
    }
    Best<A> blk = block_best(mine, values, indices);
    if (threadIdx.x == 0) part_value[blockIdx.x] = blk.value, part_index[blockIdx.x] = blk.index;
    grid.sync();
    Best<A> all{-cuda::std::numeric_limits<A>::infinity(), M};
    for (int64_t b = threadIdx.x; b < gridDim.x; b += kThreads) {
      Best<A> cand{part_value[b], part_index[b]};
      if (better(cand, all)) all = cand;
    }
    pick = block_best(all, values, indices).index;
    if (blockIdx.x == 0 && threadIdx.x == 0) picks[j] = pick;
    grid.sync();  // every block has read the candidates before they are overwritten
  }
}

}  // namespace

void maximin_cuda(const Tensor& points, bool cosine, int64_t start, const Tensor& indices,
                  uintptr_t stream_handle) {
  const int64_t M = points.size(0), D = points.size(1), k = indices.size(0);
  DeviceGuard guard(points.device_id, "maximin");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  int device = points.device_id, sms = 0, per_sm = 0, cooperative = 0;
  FF_CUDA_CHECK("maximin", cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  if (!cooperative) fail("maximin", "this GPU cannot launch cooperative kernels");
  FF_CUDA_CHECK("maximin", cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FF_DISPATCH_ACC(points.dtype, "maximin", [&] {
    using A = scalar_t;
    auto kernel = maximin_kernel<A>;
    FF_CUDA_CHECK("maximin", cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(int64_t(sms) * per_sm, ceil_div(M, kThreads)));
    // scratch: running minimum per point and one candidate per block
    DeviceBuffers scratch("maximin", stream);
    A* min_dist = scratch.alloc<A>(M);
    A* part_value = scratch.alloc<A>(blocks);
    int64_t* part_index = scratch.alloc<int64_t>(blocks);
    launch_cooperative("maximin", "maximin_kernel", kernel, grid_of("maximin", blocks), kThreads, 0, stream,
                       points.ptr<A>(), M, D, cosine, start, k, min_dist, part_value, part_index,
                       indices.ptr<int64_t>());
  });
}

}  // namespace fussfast::maximin
