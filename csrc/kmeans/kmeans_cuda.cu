// CUDA kmeans: the same algorithm as kmeans_cpu.cpp, driven from the host, with every array on
// the device. The host reads back only two scalars per Lloyd iteration (centroid shift and the
// number of changed labels) and the inertia of each run.
//
// - assignment: a thread per point; centroids stream through shared memory in tiles; the best
//   distance and index stay in registers (no M x k matrix); per-block inertia partials.
// - update: points are sorted by label (CUB's stable radix sort; integers, so exact), each
//   cluster is cut into `splits` slices (up to kMaxSplits, about kThreads points each on average)
//   summed by one block each, and the slices are added in order.
// - k-means++: prefix sums by our own fixed-order scan (CUB's floating scan is not
//   run-to-run deterministic), the draws searched on the device, candidate potentials as
//   per-block partials.
// Every floating sum has a fixed order, so a seed gives the same result on every run.
#include <cub/cub.cuh>
#include <cuda/std/limits>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/launch.h"
#include "../common/random.h"
#include "kmeans.h"

namespace fussfast::kmeans {
namespace {

constexpr int kThreads = 256;
constexpr int kTileFloats = 4096;  // shared-memory tile of centroids, in values
constexpr int kMaxSplits = 64;     // slices per cluster in the update
constexpr int kMaxTrials = 16;

template <class A>
__device__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of one value per thread, in a fixed order; valid in thread 0.
template <class A>
__device__ A block_sum(A v) {
  FF_SHARED(A, warps, [kThreads / 32]);
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
  FF_SHARED(A, tile, [kTileFloats]);
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

// Block (c, s) sums slice s of cluster c: part[(c * splits + s) * (D + 1) + d], last = weight.
template <class A>
__global__ void slice_sums_kernel(const A* x, const A* w, const int64_t* order, const int64_t* start,
                                  int64_t D, int64_t splits, double* part) {
  const int64_t c = blockIdx.x / splits, s = blockIdx.x % splits;
  const int64_t n = start[c + 1] - start[c];
  const int64_t b = start[c] + n * s / splits, e = start[c] + n * (s + 1) / splits;
  double* out = part + (c * splits + s) * (D + 1);
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
__global__ void centroid_kernel(const double* part, int64_t D, int64_t splits, A* C, int* empty, bool cosine) {
  const int64_t c = blockIdx.x;
  FF_SHARED(double, wsum);
  FF_SHARED(double, norm);
  if (threadIdx.x == 0) {
    double s = 0;
    for (int64_t sl = 0; sl < splits; ++sl) s += part[(c * splits + sl) * (D + 1) + D];
    wsum = s;
    empty[c] = s > 0 ? 0 : 1;
  }
  __syncthreads();
  if (wsum <= 0) return;
  double sq = 0;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    double s = 0;
    for (int64_t sl = 0; sl < splits; ++sl) s += part[(c * splits + sl) * (D + 1) + d];
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
  FF_SHARED(A, values, [kThreads]);
  FF_SHARED(int64_t, indices, [kThreads]);
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

// ---- fixed-order inclusive scan of doubles (in place) ----
// Block b scans elements [b * kScanChunk, ...): thread t sums its kScanItems consecutive
// elements, thread 0 adds those sums up in order, and every thread rewrites its elements as
// running sums. The block totals are scanned the same way by one block, then added back.
constexpr int kScanItems = 8;
constexpr int64_t kScanChunk = int64_t(kThreads) * kScanItems;

__device__ void scan_chunk(double* v, int64_t n, double offset, double* total) {
  FF_SHARED(double, sums, [kThreads]);
  const int64_t per = (n + kThreads - 1) / kThreads;
  const int64_t b = threadIdx.x * per, e = min(n, b + per);
  double s = 0;
  for (int64_t i = b; i < e; ++i) s += v[i];
  sums[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double run = offset;
    for (int t = 0; t < kThreads; ++t) {
      const double x = sums[t];
      sums[t] = run;  // exclusive
      run += x;
    }
    if (total) *total = run - offset;
  }
  __syncthreads();
  double run = sums[threadIdx.x];
  for (int64_t i = b; i < e; ++i) v[i] = run += v[i];
  __syncthreads();  // sums is reused by the next call
}

__global__ void scan_blocks_kernel(double* v, int64_t n, double* totals) {
  const int64_t b = int64_t(blockIdx.x) * kScanChunk;
  scan_chunk(v + b, min(kScanChunk, n - b), 0.0, totals + blockIdx.x);
}

// One block: totals[0..n) become their inclusive prefix sums, chunk after chunk.
__global__ void scan_totals_kernel(double* totals, int64_t n) {
  double carry = 0;  // the same in every thread
  for (int64_t b = 0; b < n; b += kScanChunk) {
    const int64_t m = min(kScanChunk, n - b);
    scan_chunk(totals + b, m, carry, nullptr);
    carry = totals[b + m - 1];
  }
}

// Adds to each element the inclusive total of the blocks before its own.
__global__ void add_offsets_kernel(double* v, int64_t n, const double* totals) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n && i >= kScanChunk) v[i] += totals[i / kScanChunk - 1];
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
  FF_SHARED(double, pot, [kMaxTrials]);
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
        blocks_(ceil_div(M_, kThreads)), splits_(std::clamp<int64_t>(M_ / (k_ * kThreads), 1, kMaxSplits)),
        x_(points.ptr<A>()), w_(weights ? weights->ptr<A>() : nullptr),
        scratch_("kmeans", stream) {
    if (D_ < 1) fail("kmeans", "points must have at least one dimension");
    if (D_ > kTileFloats)
      fail("kmeans", "the CUDA kernel takes at most " + std::to_string(kTileFloats) + " dimensions");
    if (M_ > 2147483647LL) fail("kmeans", "the CUDA kernel takes at most 2^31 - 1 points (CUB's sort)");
    grid_of("kmeans", k_ * splits_);  // the update's slices
    xx_ = scratch_.alloc<A>(M_);
    closest_ = scratch_.alloc<A>(M_);
    dist_ = scratch_.alloc<A>(M_);
    cc_ = scratch_.alloc<A>(k_);
    C_ = scratch_.alloc<A>(k_ * D_);
    C_new_ = scratch_.alloc<A>(k_ * D_);
    labels_ = scratch_.alloc<int64_t>(M_);
    sorted_ = scratch_.alloc<int64_t>(M_);
    order_ = scratch_.alloc<int64_t>(M_);
    iota_ = scratch_.alloc<int64_t>(M_);
    start_ = scratch_.alloc<int64_t>(k_ + 1);
    taken_ = scratch_.alloc<int64_t>(k_);
    cand_ = scratch_.alloc<int64_t>(kMaxTrials + 1);
    cum_ = scratch_.alloc<double>(M_);
    scan_totals_ = scratch_.alloc<double>(ceil_div(M_, kScanChunk));
    part_ = scratch_.alloc<double>(std::max<int64_t>(blocks_ * kMaxTrials, k_ * splits_ * (D_ + 1)));
    scalars_ = scratch_.alloc<double>(2);
    changed_ = scratch_.alloc<int>(1);
    empty_ = scratch_.alloc<int>(k_);
    FF_CUDA_CHECK("kmeans", cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes_, labels_, sorted_, iota_, order_,
                                                            int(M_), 0, bits_for(k_), s_));
    sort_temp_ = scratch_.alloc<unsigned char>(int64_t(sort_bytes_));
    enqueue("squared_norms_kernel", squared_norms_kernel<A>, blocks_, x_, M_, D_, xx_);
    enqueue("iota_kernel", iota_kernel, blocks_, iota_, M_);
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
        enqueue("shift_kernel", shift_kernel<A>, 1, C_new_, C_, k_ * D_, scalars_);
        std::swap(C_, C_new_);
        if (read_scalar(0) <= opt_.tol) break;
      }
      assign(C_);
      enqueue("sum_parts_kernel", sum_parts_kernel, 1, part_, blocks_, int64_t(1), scalars_ + 1);
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
  // Every kernel here has kThreads threads a block and no dynamic shared memory.
  template <class... Params, class... Args>
  void enqueue(const char* name, void (*kernel)(Params...), int64_t blocks, Args&&... args) {
    launch("kmeans", name, kernel, grid_of("kmeans", blocks), kThreads, 0, s_, std::forward<Args>(args)...);
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
    enqueue("squared_norms_kernel", squared_norms_kernel<A>, ceil_div(k_, kThreads), C, k_, D_, cc_);
    FF_CUDA_CHECK("kmeans", cudaMemsetAsync(changed_, 0, sizeof(int), s_));
    enqueue("assign_kernel", assign_kernel<A>, blocks_, x_, xx_, w_, C, cc_, M_, D_, k_, opt_.cosine, labels_, dist_,
        changed_, part_);
  }

  void update() {
    size_t bytes = sort_bytes_;
    FF_CUDA_CHECK("kmeans", cub::DeviceRadixSort::SortPairs(sort_temp_, bytes, labels_, sorted_, iota_, order_,
                                                            int(M_), 0, bits_for(k_), s_));
    enqueue("segment_starts_kernel", segment_starts_kernel, ceil_div(k_ + 1, kThreads), sorted_, M_, k_, start_);
    enqueue("slice_sums_kernel", slice_sums_kernel<A>, k_ * splits_, x_, w_, order_, start_, D_, splits_, part_);
    copy(C_new_, C_, k_ * D_);
    enqueue("centroid_kernel", centroid_kernel<A>, k_, part_, D_, splits_, C_new_, empty_, opt_.cosine);
    enqueue("relocate_kernel", relocate_kernel<A>, 1, x_, dist_, M_, D_, k_, empty_, C_new_, taken_);
  }

  // cum_ = inclusive prefix sums of w * closest (w alone for the first centre), fixed order.
  void cumulative_weights(const A* closest) {
    enqueue("weighted_kernel", weighted_kernel<A>, blocks_, w_, closest, M_, cum_);
    const int64_t chunks = ceil_div(M_, kScanChunk);
    enqueue("scan_blocks_kernel", scan_blocks_kernel, chunks, cum_, M_, scan_totals_);
    if (chunks == 1) return;
    enqueue("scan_totals_kernel", scan_totals_kernel, 1, scan_totals_, chunks);
    enqueue("add_offsets_kernel", add_offsets_kernel, blocks_, cum_, M_, scan_totals_);
  }

  // k-means++ with greedy local trials; the uniforms come from the host stream of the seed.
  void seed_centers(Random& rng) {
    const int trials = std::min<int>(kMaxTrials, 2 + int(std::log(double(k_))));
    cumulative_weights(nullptr);
    Draws draws{};
    draws.u[0] = rng.uniform();
    launch("kmeans", "search_kernel", search_kernel, dim3(1), 32, 0, s_, cum_, M_, draws, 1, cand_ + kMaxTrials);
    enqueue("add_center_kernel", add_center_kernel<A>, blocks_, x_, xx_, cand_ + kMaxTrials, M_, D_, opt_.cosine, true,
        C_, int64_t(0), closest_);
    for (int64_t c = 1; c < k_; ++c) {
      cumulative_weights(closest_);
      for (int t = 0; t < trials; ++t) draws.u[t] = rng.uniform();
      launch("kmeans", "search_kernel", search_kernel, dim3(1), 32, 0, s_, cum_, M_, draws, trials, cand_);
      enqueue("potentials_kernel", potentials_kernel<A>, blocks_, x_, xx_, w_, closest_, cand_, trials, M_, D_,
          opt_.cosine, part_);
      enqueue("choose_kernel", choose_kernel, 1, part_, int64_t(blocks_), trials, cand_, cand_ + kMaxTrials);
      enqueue("add_center_kernel", add_center_kernel<A>, blocks_, x_, xx_, cand_ + kMaxTrials, M_, D_, opt_.cosine,
          false, C_, c, closest_);
    }
  }

  Options opt_;
  cudaStream_t s_;
  int64_t M_, D_, k_, blocks_, splits_;
  const A* x_;
  const A* w_;
  DeviceBuffers scratch_;  // frees everything below, also when the constructor throws
  A *xx_, *closest_, *dist_, *cc_, *C_, *C_new_;
  int64_t *labels_, *sorted_, *order_, *iota_, *start_, *taken_, *cand_;
  double *cum_, *scan_totals_, *part_, *scalars_;
  int *changed_, *empty_;
  unsigned char* sort_temp_;
  size_t sort_bytes_ = 0;
};

}  // namespace

Result kmeans_cuda(const Tensor& points, const Tensor* weights, const Options& opt, const Tensor& centroids,
                   const Tensor& labels, uintptr_t stream_handle) {
  DeviceGuard guard(points.device_id, "kmeans");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  Result r{};
  FF_DISPATCH_ACC(points.dtype, "kmeans",
                  [&] { r = Runner<scalar_t>(points, weights, opt, stream).run(centroids, labels); });
  return r;
}

}  // namespace fussfast::kmeans
