// CPU kernels. Both passes first turn each label map into region indices (K = ignored), then
// run one task per image and block of channels, so the embeddings are read (forward) or the
// gradient written (backward) exactly once, in order.
#include <algorithm>
#include <vector>

#include "../common/cpu_utils.h"
#include "region_pool.h"

namespace fussfast::region_pool {
FF_ISA_BEGIN
namespace {

// Region index per pixel (K for ignored and invalid labels); counts pixels per class and returns
// the number of invalid labels.
template <class L>
int64_t index_regions(const L* labels, int64_t P, int64_t K, int64_t ignore_index,
                      int32_t* region, int64_t* counts) {
  int64_t invalid = 0;
  for (int64_t p = 0; p < P; ++p) {
    int64_t r = region_of(labels[p], K, ignore_index);
    invalid += r == kInvalid;
    if (r >= 0) counts[r] += 1;
    region[p] = static_cast<int32_t>(r >= 0 ? r : K);
  }
  return invalid;
}

constexpr int kChannels = 8;  // channels per task; tables are [K + 1][kChannels], row K = ignored

// Sums NB channel rows of one image per region. Along the pixels, the NB values of the current
// label run build up in registers (one vector add per pixel, no memory store), and are added to
// the region's table row only when the label changes: blocky segmentations flush rarely, and
// even fragmented ones pay one store per NB values.
template <int NB, class T, class A>
void sum_rows(const T* rows, int64_t P, const int32_t* region, A* table) {
  A acc[NB] = {};
  int32_t cur = P > 0 ? region[0] : 0;
  for (int64_t p = 0; p < P; ++p) {
    const int32_t r = region[p];
    if (r != cur) {
      for (int j = 0; j < NB; ++j) {
        table[cur * kChannels + j] += acc[j];
        acc[j] = 0;
      }
      cur = r;
    }
    for (int j = 0; j < NB; ++j) acc[j] += A(load(rows + j * P + p));
  }
  for (int j = 0; j < NB; ++j) table[cur * kChannels + j] += acc[j];
}

// The backward's mirror image: each pixel's region index is read once for NB channel rows.
template <int NB, class T>
void scatter_rows(const T* table, int64_t P, const int32_t* region, T* rows) {
  for (int64_t p = 0; p < P; ++p) {
    const T* v = table + region[p] * kChannels;
    for (int j = 0; j < NB; ++j) rows[j * P + p] = v[j];
  }
}

// Runs body(b, d0, nb) for every image and block of up to kChannels channels, in parallel, with
// a per-thread table of (K + 1) * kChannels values of type V (allocated before the region, so
// that running out of memory raises instead of ending the process).
template <class V, class Body>
void for_each_channel_block(int64_t B, int64_t D, int64_t K, Body body) {
  const int64_t blocks = (D + kChannels - 1) / kChannels;
  const int64_t width = (K + 1) * kChannels;
  std::vector<V> tables(int64_t(worker_count(B * blocks)) * width);
#pragma omp parallel num_threads(worker_count(B * blocks))
  {
    V* table = tables.data() + worker_id() * width;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t blk = 0; blk < blocks; ++blk)
        body(b, blk * kChannels, std::min<int64_t>(kChannels, D - blk * kChannels), table);
  }
}

template <class T, class L>
void forward_impl(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
                  const Tensor& means, const Tensor& regions, const Tensor& status,
                  int64_t ignore_index, bool normalize) {
  using A = acc_t<T>;
  const int64_t B = emb.size(0), D = emb.size(1), K = counts.size(1);
  const int64_t P = B > 0 ? labels.numel() / B : 0;
  const T* x = emb.ptr<T>();
  A* sums = acc.ptr<A>();
  int64_t* cnt = counts.ptr<int64_t>();
  int32_t* region = regions.ptr<int32_t>();

  int64_t invalid = 0;
#pragma omp parallel for schedule(static) reduction(+ : invalid)
  for (int64_t b = 0; b < B; ++b)
    invalid += index_regions(labels.ptr<L>() + b * P, P, K, ignore_index, region + b * P, cnt + b * K);
  status.ptr<int32_t>()[0] = static_cast<int32_t>(std::min<int64_t>(invalid, INT32_MAX));

  for_each_channel_block<A>(B, D, K, [&](int64_t b, int64_t d0, int64_t nb, A* table) {
    std::fill(table, table + (K + 1) * kChannels, A(0));
    const T* rows = x + (b * D + d0) * P;
    if (nb == kChannels) {
      sum_rows<kChannels>(rows, P, region + b * P, table);
    } else {  // the last, partial block: one channel at a time
      for (int64_t j = 0; j < nb; ++j) sum_rows<1>(rows + j * P, P, region + b * P, table + j);
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < nb; ++j) sums[(b * K + k) * D + d0 + j] = table[k * kChannels + j];
  });

  T* out = means.ptr<T>();
#pragma omp parallel for schedule(static)
  for (int64_t bk = 0; bk < B * K; ++bk)
    finalize_region(sums + bk * D, cnt[bk], out + bk * D, D, normalize);
}

template <class T>
void backward_impl(const Tensor& grad_means, const Tensor& acc, const Tensor& counts,
                   const Tensor& regions, const Tensor& grad_rows, const Tensor& grad_emb,
                   bool normalize) {
  using A = acc_t<T>;
  const int64_t B = grad_emb.size(0), D = grad_emb.size(1), K = counts.size(1);
  const int64_t P = B > 0 ? regions.numel() / B : 0;
  const A* mean = acc.ptr<A>();
  const int64_t* cnt = counts.ptr<int64_t>();
  const int32_t* region = regions.ptr<int32_t>();
  A* g = grad_rows.ptr<A>();
  T* gx = grad_emb.ptr<T>();
  advise_huge_pages(gx, size_t(grad_emb.numel()) * sizeof(T));

#pragma omp parallel for schedule(static)
  for (int64_t bk = 0; bk < B * K; ++bk)
    region_grad(grad_means.ptr<T>() + bk * D, mean + bk * D, cnt[bk], g + bk * D, D, normalize);

  for_each_channel_block<T>(B, D, K, [&](int64_t b, int64_t d0, int64_t nb, T* table) {
    for (int64_t j = 0; j < nb; ++j) {  // this block's gradient per region, already in T
      for (int64_t k = 0; k < K; ++k) store(table + k * kChannels + j, g[(b * K + k) * D + d0 + j]);
      store(table + K * kChannels + j, A(0));
    }
    T* rows = gx + (b * D + d0) * P;
    if (nb == kChannels) {
      scatter_rows<kChannels>(table, P, region + b * P, rows);
    } else {
      for (int64_t j = 0; j < nb; ++j) scatter_rows<1>(table + j, P, region + b * P, rows + j * P);
    }
  });
}

}  // namespace

void forward_cpu(const Tensor& emb, const Tensor& labels, const Tensor& acc, const Tensor& counts,
                 const Tensor& means, const Tensor& regions, const Tensor& status,
                 int64_t ignore_index, bool normalize) {
  FF_DISPATCH_FLOAT(emb.dtype, "region_pool", [&] {
    FF_DISPATCH_INDEX(labels.dtype, "region_pool", [&] {
      forward_impl<scalar_t, index_t>(emb, labels, acc, counts, means, regions, status,
                                      ignore_index, normalize);
    });
  });
}

void backward_cpu(const Tensor& grad_means, const Tensor& acc, const Tensor& counts,
                  const Tensor& regions, const Tensor& grad_rows, const Tensor& grad_emb,
                  bool normalize) {
  FF_DISPATCH_FLOAT(grad_emb.dtype, "region_pool_backward", [&] {
    backward_impl<scalar_t>(grad_means, acc, counts, regions, grad_rows, grad_emb, normalize);
  });
}

FF_ISA_END
}  // namespace fussfast::region_pool
