// CUDA kmeans: the same algorithm as kmeans_cpu.cpp, driven from the host, with every array on
// the device. The host reads back only two scalars per Lloyd iteration (centroid shift and the
// number of changed labels) and the inertia of each run.
//
// - assignment: a thread per point; centroids stream through shared memory in tiles; the best
//   distance and index stay in registers (no M x k matrix); per-block inertia partials.
// - update: points are sorted by label (CUB's stable radix sort), each cluster is cut into
//   kSplits slices summed by one block each, and the slices are added in order.
// - k-means++: prefix sums with CUB, the draws searched on the device, candidate potentials as
//   per-block partials.
// Every floating sum has a fixed order, so a seed gives the same result on every run.
#include <cub/cub.cuh>
#include <cuda/std/limits>

#include <cmath>
#include <vector>

#include "../common/cuda_utils.h"
#include "../common/random.h"
#include "kmeans.h"

namespace fussfast::kmeans {
namespace {

constexpr int kThreads = 256;
constexpr int kTileFloats = 4096;  // shared-memory tile of centroids, in values
constexpr int kSplits = 64;        // slices per cluster in the update
constexpr int kMaxTrials = 16;

template <class A>
__device__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of one value per thread, in a fixed order; valid in thread 0.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A warps[kThreads / 32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warps[w];
  __syncthreads();
  return total;
}

template <class A>
__device__ A weight_of(const A* w, int64_t i) {
  return w ? w[i] : A(1);
}

template <class A>
__global__ void squared_norms_kernel(const A* v, int64_t n, int64_t D, A* out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  A s = 0;
  for (int64_t d = 0; d < D; ++d) s += v[i * D + d] * v[i * D + d];
  out[i] = s;
}

template <class A>
__global__ void assign_kernel(const A* __restrict__ x, const A* __restrict__ xx, const A* __restrict__ w,
                              const A* __restrict__ C, const A* __restrict__ cc, int64_t M, int64_t D,
                              int64_t k, bool cosine, int64_t* labels, A* dist, int* changed,
                              double* inertia_part) {
  __shared__ A tile[kTileFloats];
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t per_tile = D < kTileFloats ? kTileFloats / D : 1;
  A best_d = cuda::std::numeric_limits<A>::infinity();
  int64_t best = 0;
  for (int64_t c0 = 0; c0 < k; c0 += per_tile) {
    const int64_t n = min(per_tile, k - c0);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < n * D; e += kThreads) tile[e] = C[c0 * D + e];
    __syncthreads();
    if (i < M)
      for (int64_t c = 0; c < n; ++c) {
        A dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += x[i * D + d] * tile[c * D + d];
        const A dd = distance(dot, xx[i], cc[c0 + c], cosine);
        if (dd < best_d) best_d = dd, best = c0 + c;
      }
  }
  double part = 0;
  if (i < M) {
    if (labels[i] != best) atomicAdd(changed, 1);
    labels[i] = best;
    dist[i] = best_d;
    part = double(weight_of(w, i)) * best_d;
  }
  part = block_sum(part);
  if (threadIdx.x == 0) inertia_part[blockIdx.x] = part;
}

// total[0] = sum of part[0..n) in order (one block)
__global__ void sum_parts_kernel(const double* part, int64_t n, int64_t stride, double* total) {
  double s = 0;
  for (int64_t b = threadIdx.x; b < n; b += kThreads) s += part[b * stride];
  s = block_sum(s);
  if (threadIdx.x == 0) *total = s;
}

__global__ void iota_kernel(int64_t* v, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) v[i] = i;
}

// start[c] = first position of label c in the sorted labels (start[k] = M)
__global__ void segment_starts_kernel(const int64_t* sorted, int64_t M, int64_t k, int64_t* start) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c > k) return;
  int64_t lo = 0, hi = M;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < c) lo = mid + 1; else hi = mid;
  }
  start[c] = lo;
}

// Block (c, s) sums slice s of cluster c: part[(c * kSplits + s) * (D + 1) + d], last = weight.
template <class A>
__global__ void slice_sums_kernel(const A* x, const A* w, const int64_t* order, const int64_t* start,
                                  int64_t D, double* part) {
  const int64_t c = blockIdx.x / kSplits, s = blockIdx.x % kSplits;
  const int64_t n = start[c + 1] - start[c];
  const int64_t b = start[c] + n * s / kSplits, e = start[c] + n * (s + 1) / kSplits;
  double* out = part + (c * kSplits + s) * (D + 1);
  for (int64_t d = threadIdx.x; d <= D; d += kThreads) {
    double sum = 0;
    for (int64_t j = b; j < e; ++j) {
      const int64_t i = order[j];
      sum += double(weight_of(w, i)) * (d < D ? double(x[i * D + d]) : 1.0);
    }
    out[d] = sum;
  }
}

// New centroid rows from the slices; empty[c] = 1 when the cluster has no weight.
template <class A>
__global__ void centroid_kernel(const double* part, int64_t D, A* C, int* empty, bool cosine) {
  const int64_t c = blockIdx.x;
  __shared__ double wsum, norm;
  if (threadIdx.x == 0) {
    double s = 0;
    for (int sl = 0; sl < kSplits; ++sl) s += part[(c * kSplits + sl) * (D + 1) + D];
    wsum = s;
    empty[c] = s > 0 ? 0 : 1;
  }
  __syncthreads();
  if (wsum <= 0) return;
  double sq = 0;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    double s = 0;
    for (int sl = 0; sl < kSplits; ++sl) s += part[(c * kSplits + sl) * (D + 1) + d];
    C[c * D + d] = A(s / wsum);
    sq += (s / wsum) * (s / wsum);
  }
  if (!cosine) return;
  sq = block_sum(sq);
  if (threadIdx.x == 0) norm = sqrt(sq);
  __syncthreads();
  if (norm > 0)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) C[c * D + d] = A(C[c * D + d] / norm);
}

// One block: each empty cluster, in order, takes the farthest point not taken yet.
template <class A>
__global__ void relocate_kernel(const A* x, const A* dist, int64_t M, int64_t D, int64_t k, const int* empty,
                                A* C, int64_t* taken /* [k] scratch */) {
  __shared__ A values[kThreads];
  __shared__ int64_t indices[kThreads];
  int64_t n_taken = 0;
  for (int64_t c = 0; c < k; ++c) {
    if (!empty[c]) continue;
    A best = -1;
    int64_t bi = M;
    for (int64_t i = threadIdx.x; i < M; i += kThreads) {
      bool used = false;
      for (int64_t t = 0; t < n_taken; ++t) used |= taken[t] == i;
      if (!used && dist[i] > best) best = dist[i], bi = i;
    }
    values[threadIdx.x] = best;
    indices[threadIdx.x] = bi;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half >>= 1) {
      if (threadIdx.x < half) {
        const A v = values[threadIdx.x + half];
        const int64_t j = indices[threadIdx.x + half];
        if (v > values[threadIdx.x] || (v == values[threadIdx.x] && j < indices[threadIdx.x]))
          values[threadIdx.x] = v, indices[threadIdx.x] = j;
      }
      __syncthreads();
    }
    const int64_t pick = indices[0] < M ? indices[0] : 0;
    for (int64_t d = threadIdx.x; d < D; d += kThreads) C[c * D + d] = x[pick * D + d];
    if (threadIdx.x == 0) taken[n_taken] = pick;
    ++n_taken;
    __syncthreads();
  }
}

template <class A>
__global__ void shift_kernel(const A* a, const A* b, int64_t n, double* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += double(a[i] - b[i]) * double(a[i] - b[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

// ---- k-means++ ----

template <class A>
__global__ void weighted_kernel(const A* w, const A* closest, int64_t M, double* out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < M) out[i] = double(weight_of(w, i)) * (closest ? double(closest[i]) : 1.0);
}

struct Draws {
  double u[kMaxTrials];
};

// cand[t] = first i with cum[i] >= u[t] * cum[M - 1]
__global__ void search_kernel(const double* cum, int64_t M, Draws draws, int trials, int64_t* cand) {
  const int t = threadIdx.x;
  if (t >= trials) return;
  const double r = draws.u[t] * cum[M - 1];
  int64_t lo = 0, hi = M;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (cum[mid] < r) lo = mid + 1; else hi = mid;
  }
  cand[t] = lo < M ? lo : M - 1;
}

template <class A>
__device__ A point_distance(const A* x, const A* xx, int64_t i, int64_t j, int64_t D, bool cosine) {
  A dot = 0;
  for (int64_t d = 0; d < D; ++d) dot += x[i * D + d] * x[j * D + d];
  return distance(dot, xx[i], xx[j], cosine);
}

// part[block][t] = sum over the block's points of w * min(closest, d(x, x[cand[t]]))
template <class A>
__global__ void potentials_kernel(const A* x, const A* xx, const A* w, const A* closest, const int64_t* cand,
                                  int trials, int64_t M, int64_t D, bool cosine, double* part) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  for (int t = 0; t < trials; ++t) {
    double v = 0;
    if (i < M) {
      A d = point_distance(x, xx, i, cand[t], D, cosine);
      if (closest && closest[i] < d) d = closest[i];
      v = double(weight_of(w, i)) * d;
    }
    v = block_sum(v);
    if (threadIdx.x == 0) part[blockIdx.x * kMaxTrials + t] = v;
  }
}

// pot[t] = sum over blocks of part[.][t]; chosen = argmin_t pot[t] (first on ties)
__global__ void choose_kernel(const double* part, int64_t blocks, int trials, const int64_t* cand, int64_t* chosen) {
  __shared__ double pot[kMaxTrials];
  for (int t = 0; t < trials; ++t) {
    double s = 0;
    for (int64_t b = threadIdx.x; b < blocks; b += kThreads) s += part[b * kMaxTrials + t];
    s = block_sum(s);
    if (threadIdx.x == 0) pot[t] = s;
  }
  if (threadIdx.x == 0) {
    int best = 0;
    for (int t = 1; t < trials; ++t)
      if (pot[t] < pot[best]) best = t;
    *chosen = cand[best];
  }
}

// C[row] = x[*chosen]; closest = min(closest, d(x, x[*chosen])) (closest may start unset)
template <class A>
__global__ void add_center_kernel(const A* x, const A* xx, const int64_t* chosen, int64_t M, int64_t D,
                                  bool cosine, bool first, A* C, int64_t row, A* closest) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t j = *chosen;
  if (blockIdx.x == 0)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) C[row * D + d] = x[j * D + d];
  if (i >= M) return;
  const A d = point_distance(x, xx, i, j, D, cosine);
  closest[i] = first || d < closest[i] ? d : closest[i];
}

template <class A>
class Runner {
 public:
  Runner(const Tensor& points, const Tensor* weights, const Options& opt, cudaStream_t stream)
      : opt_(opt), s_(stream), M_(points.size(0)), D_(points.size(1)), k_(opt.k),
        blocks_(ceil_div(M_, kThreads)), x_(points.ptr<A>()), w_(weights ? weights->ptr<A>() : nullptr) {
    check_grid_x("kmeans", blocks_, 1);
    if (D_ > kTileFloats)
      fail("kmeans", "the CUDA kernel takes at most " + std::to_string(kTileFloats) + " dimensions");
    xx_ = alloc<A>(M_);
    closest_ = alloc<A>(M_);
    dist_ = alloc<A>(M_);
    cc_ = alloc<A>(k_);
    C_ = alloc<A>(k_ * D_);
    C_new_ = alloc<A>(k_ * D_);
    labels_ = alloc<int64_t>(M_);
    sorted_ = alloc<int64_t>(M_);
    order_ = alloc<int64_t>(M_);
    iota_ = alloc<int64_t>(M_);
    start_ = alloc<int64_t>(k_ + 1);
    taken_ = alloc<int64_t>(k_);
    cand_ = alloc<int64_t>(kMaxTrials + 1);
    cum_ = alloc<double>(M_);
    part_ = alloc<double>(std::max<int64_t>(blocks_ * kMaxTrials, k_ * kSplits * (D_ + 1)));
    scalars_ = alloc<double>(2);
    changed_ = alloc<int>(1);
    empty_ = alloc<int>(k_);
    size_t sort_bytes = 0, scan_bytes = 0;
    FF_CUDA_CHECK("kmeans", cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, labels_, sorted_, iota_, order_,
                                                            int(M_), 0, bits_for(k_), s_));
    FF_CUDA_CHECK("kmeans", cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, cum_, cum_, int(M_), s_));
    temp_bytes_ = std::max(sort_bytes, scan_bytes);
    temp_ = alloc<unsigned char>(temp_bytes_);
    squared_norms_kernel<A><<<blocks_, kThreads, 0, s_>>>(x_, M_, D_, xx_);
    FF_CHECK_LAUNCH("kmeans", "squared_norms_kernel");
    iota_kernel<<<blocks_, kThreads, 0, s_>>>(iota_, M_);
    FF_CHECK_LAUNCH("kmeans", "iota_kernel");
  }

  ~Runner() {
    for (void* p : owned_) cudaFreeAsync(p, s_);
  }

  Result run(const Tensor& centroids, const Tensor& labels_out) {
    Result best{INFINITY, 0};
    for (int64_t r = 0; r < opt_.n_init; ++r) {
      Random rng(opt_.seed, uint64_t(r));
      seed_centers(rng);
      int64_t it = 0;
      FF_CUDA_CHECK("kmeans", cudaMemsetAsync(labels_, 0xff, sizeof(int64_t) * M_, s_));  // -1
      while (it < opt_.max_iter) {
        ++it;
        assign(C_);
        const int changed = read_changed();
        if (it > 1 && changed == 0) break;  // strict convergence
        update();
        shift_kernel<A><<<1, kThreads, 0, s_>>>(C_new_, C_, k_ * D_, scalars_);
        FF_CHECK_LAUNCH("kmeans", "shift_kernel");
        std::swap(C_, C_new_);
        if (read_scalar(0) <= opt_.tol) break;
      }
      assign(C_);
      sum_parts_kernel<<<1, kThreads, 0, s_>>>(part_, blocks_, 1, scalars_ + 1);
      FF_CHECK_LAUNCH("kmeans", "sum_parts_kernel");
      const double inertia = read_scalar(1);
      if (r == 0 || inertia < best.inertia) {
        best = {inertia, it};
        copy(centroids.ptr<A>(), C_, k_ * D_);
        copy(labels_out.ptr<int64_t>(), labels_, M_);
      }
    }
    return best;
  }

 private:
  template <class V>
  V* alloc(int64_t n) {
    void* p = nullptr;
    FF_CUDA_CHECK("kmeans", cudaMallocAsync(&p, sizeof(V) * std::max<int64_t>(n, 1), s_));
    owned_.push_back(p);
    return static_cast<V*>(p);
  }
  template <class V>
  void copy(V* dst, const V* src, int64_t n) {
    FF_CUDA_CHECK("kmeans", cudaMemcpyAsync(dst, src, sizeof(V) * n, cudaMemcpyDeviceToDevice, s_));
  }
  static int bits_for(int64_t k) {
    int b = 1;
    while ((int64_t(1) << b) < k) ++b;
    return b;
  }
  double read_scalar(int i) {
    double v = 0;
    FF_CUDA_CHECK("kmeans", cudaMemcpyAsync(&v, scalars_ + i, sizeof(double), cudaMemcpyDeviceToHost, s_));
    FF_CUDA_CHECK("kmeans", cudaStreamSynchronize(s_));
    return v;
  }
  int read_changed() {
    int v = 0;
    FF_CUDA_CHECK("kmeans", cudaMemcpyAsync(&v, changed_, sizeof(int), cudaMemcpyDeviceToHost, s_));
    FF_CUDA_CHECK("kmeans", cudaStreamSynchronize(s_));
    return v;
  }

  void assign(const A* C) {
    squared_norms_kernel<A><<<ceil_div(k_, kThreads), kThreads, 0, s_>>>(C, k_, D_, cc_);
    FF_CHECK_LAUNCH("kmeans", "squared_norms_kernel");
    FF_CUDA_CHECK("kmeans", cudaMemsetAsync(changed_, 0, sizeof(int), s_));
    assign_kernel<A><<<blocks_, kThreads, 0, s_>>>(x_, xx_, w_, C, cc_, M_, D_, k_, opt_.cosine, labels_, dist_,
                                                   changed_, part_);
    FF_CHECK_LAUNCH("kmeans", "assign_kernel");
  }

  void update() {
    size_t bytes = temp_bytes_;
    FF_CUDA_CHECK("kmeans", cub::DeviceRadixSort::SortPairs(temp_, bytes, labels_, sorted_, iota_, order_, int(M_),
                                                            0, bits_for(k_), s_));
    segment_starts_kernel<<<ceil_div(k_ + 1, kThreads), kThreads, 0, s_>>>(sorted_, M_, k_, start_);
    FF_CHECK_LAUNCH("kmeans", "segment_starts_kernel");
    slice_sums_kernel<A><<<unsigned(k_ * kSplits), kThreads, 0, s_>>>(x_, w_, order_, start_, D_, part_);
    FF_CHECK_LAUNCH("kmeans", "slice_sums_kernel");
    copy(C_new_, C_, k_ * D_);
    centroid_kernel<A><<<unsigned(k_), kThreads, 0, s_>>>(part_, D_, C_new_, empty_, opt_.cosine);
    FF_CHECK_LAUNCH("kmeans", "centroid_kernel");
    relocate_kernel<A><<<1, kThreads, 0, s_>>>(x_, dist_, M_, D_, k_, empty_, C_new_, taken_);
    FF_CHECK_LAUNCH("kmeans", "relocate_kernel");
  }

  // k-means++ with greedy local trials; the uniforms come from the host stream of the seed.
  void seed_centers(Random& rng) {
    const int trials = std::min<int>(kMaxTrials, 2 + int(std::log(double(k_))));
    size_t bytes = temp_bytes_;
    weighted_kernel<A><<<blocks_, kThreads, 0, s_>>>(w_, nullptr, M_, cum_);
    FF_CHECK_LAUNCH("kmeans", "weighted_kernel");
    FF_CUDA_CHECK("kmeans", cub::DeviceScan::InclusiveSum(temp_, bytes, cum_, cum_, int(M_), s_));
    Draws draws{};
    draws.u[0] = rng.uniform();
    search_kernel<<<1, 32, 0, s_>>>(cum_, M_, draws, 1, cand_ + kMaxTrials);
    FF_CHECK_LAUNCH("kmeans", "search_kernel");
    add_center_kernel<A><<<blocks_, kThreads, 0, s_>>>(x_, xx_, cand_ + kMaxTrials, M_, D_, opt_.cosine, true,
                                                       C_, 0, closest_);
    FF_CHECK_LAUNCH("kmeans", "add_center_kernel");
    for (int64_t c = 1; c < k_; ++c) {
      weighted_kernel<A><<<blocks_, kThreads, 0, s_>>>(w_, closest_, M_, cum_);
      FF_CHECK_LAUNCH("kmeans", "weighted_kernel");
      bytes = temp_bytes_;
      FF_CUDA_CHECK("kmeans", cub::DeviceScan::InclusiveSum(temp_, bytes, cum_, cum_, int(M_), s_));
      for (int t = 0; t < trials; ++t) draws.u[t] = rng.uniform();
      search_kernel<<<1, 32, 0, s_>>>(cum_, M_, draws, trials, cand_);
      FF_CHECK_LAUNCH("kmeans", "search_kernel");
      potentials_kernel<A><<<blocks_, kThreads, 0, s_>>>(x_, xx_, w_, closest_, cand_, trials, M_, D_,
                                                         opt_.cosine, part_);
      FF_CHECK_LAUNCH("kmeans", "potentials_kernel");
      choose_kernel<<<1, kThreads, 0, s_>>>(part_, blocks_, trials, cand_, cand_ + kMaxTrials);
      FF_CHECK_LAUNCH("kmeans", "choose_kernel");
      add_center_kernel<A><<<blocks_, kThreads, 0, s_>>>(x_, xx_, cand_ + kMaxTrials, M_, D_, opt_.cosine,
                                                         false, C_, c, closest_);
      FF_CHECK_LAUNCH("kmeans", "add_center_kernel");
    }
  }

  Options opt_;
  cudaStream_t s_;
  int64_t M_, D_, k_;
  unsigned blocks_;
  const A* x_;
  const A* w_;
  A *xx_, *closest_, *dist_, *cc_, *C_, *C_new_;
  int64_t *labels_, *sorted_, *order_, *iota_, *start_, *taken_, *cand_;
  double *cum_, *part_, *scalars_;
  int *changed_, *empty_;
  unsigned char* temp_;
  size_t temp_bytes_ = 0;
  std::vector<void*> owned_;
};

}  // namespace

Result kmeans_cuda(const Tensor& points, const Tensor* weights, const Options& opt, const Tensor& centroids,
                   const Tensor& labels, uintptr_t stream_handle) {
  DeviceGuard guard(points.device_id, "kmeans");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (points.dtype == DType::f32) return Runner<float>(points, weights, opt, stream).run(centroids, labels);
  return Runner<double>(points, weights, opt, stream).run(centroids, labels);
}

}  // namespace fussfast::kmeans
