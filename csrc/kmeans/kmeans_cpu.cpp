// CPU kmeans. Points are processed in fixed chunks of kChunk (OpenMP over chunks): the
// assignment takes each chunk's dot products with the centroids from the blocked matrix kernel
// (an m x k scratch per chunk, never M x k), and every sum is formed per chunk and then added in
// chunk order, so results do not depend on the thread count. The update groups points by label
// with a counting sort and sums each cluster in index order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../common/cpu_utils.h"
#include "../common/gemm_cpu.h"
#include "../common/random.h"
#include "kmeans.h"

namespace fussfast::kmeans {
FF_ISA_BEGIN
namespace {

constexpr int64_t kChunk = 1024;

template <class A>
struct Data {
  const A* x;
  const A* w;  // nullptr: unit weights
  int64_t M, D;
  bool cosine;
  std::vector<A> xx;  // squared norms of the points

  A weight(int64_t i) const { return w ? w[i] : A(1); }
};

// sum over fixed chunks [begin, end) of f(begin, end), added in chunk order.
template <class F>
double chunked_sum(int64_t M, F f) {
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  std::vector<double> part(chunks);
  ParallelErrors errors;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) errors.guard([&] { part[c] = f(c * kChunk, std::min(M, (c + 1) * kChunk)); });
  errors.rethrow();
  return std::accumulate(part.begin(), part.end(), 0.0);
}

template <class A>
std::vector<A> squared_norms(const A* v, int64_t n, int64_t D) {
  std::vector<A> out(n);
  for (int64_t i = 0; i < n; ++i) {
    A s = 0;
    for (int64_t d = 0; d < D; ++d) s += v[i * D + d] * v[i * D + d];
    out[i] = s;
  }
  return out;
}

// d[i][j] = distance of point begin + i to centers[j], for the points [begin, end).
template <class A>
void distances_to(const Data<A>& data, const A* centers, const A* cc, int64_t n, int64_t begin,
                  int64_t end, std::vector<A>& d) {
  d.resize((end - begin) * n);
  cpu::gemm({end - begin, n, data.D, data.D, 1, 1, data.D, n, false}, data.x + begin * data.D, centers,
            d.data());
  for (int64_t i = begin; i < end; ++i)
    for (int64_t j = 0; j < n; ++j) {
      A& v = d[(i - begin) * n + j];
      v = distance(v, data.xx[i], cc[j], data.cosine);
    }
}

// Nearest centroid of every point: labels, distances; returns the weighted inertia.
template <class A>
double assign(const Data<A>& data, const A* C, int64_t k, int64_t* labels, A* dist) {
  const std::vector<A> cc = squared_norms(C, k, data.D);
  return chunked_sum(data.M, [&](int64_t begin, int64_t end) {
    thread_local std::vector<A> d;
    distances_to(data, C, cc.data(), k, begin, end, d);
    double part = 0;
    for (int64_t i = begin; i < end; ++i) {
      const A* row = d.data() + (i - begin) * k;
      const int64_t best = std::min_element(row, row + k) - row;  // first minimum
      labels[i] = best;
      dist[i] = row[best];
      part += double(data.weight(i)) * row[best];
    }
    return part;
  });
}

// Index of the first entry of the increasing prefix sums cum that is >= r (numpy searchsorted).
int64_t search(const std::vector<double>& cum, double r) {
  const int64_t i = std::lower_bound(cum.begin(), cum.end(), r) - cum.begin();
  return std::min<int64_t>(i, int64_t(cum.size()) - 1);
}

// closest[i] = min(closest[i], d(x_i, center)) (or = when first); returns sum of w * closest.
template <class A>
double add_center(const Data<A>& data, const A* center, bool first, std::vector<A>& closest) {
  const A cc = squared_norms(center, 1, data.D)[0];
  return chunked_sum(data.M, [&](int64_t b, int64_t e) {
    thread_local std::vector<A> d;
    distances_to(data, center, &cc, 1, b, e, d);
    double s = 0;
    for (int64_t i = b; i < e; ++i) {
      closest[i] = first ? d[i - b] : std::min(closest[i], d[i - b]);
      s += data.weight(i) * closest[i];
    }
    return s;
  });
}

// k-means++ with greedy local trials (scikit-learn's variant): writes k centers to C.
template <class A>
void kmeans_plus_plus(const Data<A>& data, int64_t k, Random& rng, A* C) {
  const int64_t M = data.M, D = data.D, trials = 2 + int64_t(std::log(double(k)));
  std::vector<double> cum(M);
  auto prefix = [&](auto value) {
    double s = 0;
    for (int64_t i = 0; i < M; ++i) cum[i] = s += value(i);
  };
  prefix([&](int64_t i) { return double(data.weight(i)); });
  const int64_t first = search(cum, rng.uniform() * cum[M - 1]);
  std::copy(data.x + first * D, data.x + (first + 1) * D, C);
  std::vector<A> closest(M);
  double pot = add_center(data, C, true, closest);

  const int64_t chunks = (M + kChunk - 1) / kChunk;
  std::vector<A> cand(trials * D);
  std::vector<double> part(chunks * trials);
  for (int64_t c = 1; c < k; ++c) {
    prefix([&](int64_t i) { return double(data.weight(i)) * closest[i]; });
    for (int64_t t = 0; t < trials; ++t) {
      const int64_t id = search(cum, rng.uniform() * pot);
      std::copy(data.x + id * D, data.x + (id + 1) * D, cand.begin() + t * D);
    }
    const std::vector<A> cc = squared_norms(cand.data(), trials, D);
    // potential after adding each candidate: per chunk, then summed in chunk order
    ParallelErrors errors;
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < chunks; ++ch) errors.guard([&] {
      thread_local std::vector<A> d;
      const int64_t b = ch * kChunk, e = std::min(M, b + kChunk);
      distances_to(data, cand.data(), cc.data(), trials, b, e, d);
      for (int64_t t = 0; t < trials; ++t) {
        double s = 0;
        for (int64_t i = b; i < e; ++i) s += data.weight(i) * std::min(closest[i], d[(i - b) * trials + t]);
        part[ch * trials + t] = s;
      }
    });
    errors.rethrow();
    int64_t best = 0;
    double best_pot = INFINITY;
    for (int64_t t = 0; t < trials; ++t) {
      double s = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) s += part[ch * trials + t];
      if (s < best_pot) best_pot = s, best = t;
    }
    std::copy(cand.begin() + best * D, cand.begin() + (best + 1) * D, C + c * D);
    pot = add_center(data, C + c * D, false, closest);
  }
}

// New centroids: weighted means of each cluster's points; empty clusters take the points
// farthest from their centroids; cosine centroids are re-normalized.
template <class A>
void update(const Data<A>& data, int64_t k, const int64_t* labels, const A* dist, A* C) {
  const int64_t M = data.M, D = data.D;
  std::vector<int64_t> start(k + 1, 0), order(M);
  for (int64_t i = 0; i < M; ++i) ++start[labels[i] + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < M; ++i) order[fill[labels[i]]++] = i;

  std::vector<char> empty(k, 0);
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic)
  for (int64_t c = 0; c < k; ++c) errors.guard([&] {
    std::vector<double> sum(D, 0.0);
    double wsum = 0;
    for (int64_t j = start[c]; j < start[c + 1]; ++j) {
      const int64_t i = order[j];
      const double w = data.weight(i);
      wsum += w;
      for (int64_t d = 0; d < D; ++d) sum[d] += w * data.x[i * D + d];
    }
    if (wsum > 0) {
      for (int64_t d = 0; d < D; ++d) C[c * D + d] = A(sum[d] / wsum);
    } else {
      empty[c] = 1;
    }
  });
  errors.rethrow();
  const int64_t n_empty = std::count(empty.begin(), empty.end(), 1);
  if (n_empty > 0) {
    std::vector<int64_t> far(M);
    std::iota(far.begin(), far.end(), 0);
    std::partial_sort(far.begin(), far.begin() + std::min(n_empty, M), far.end(),
                      [&](int64_t a, int64_t b) { return dist[a] > dist[b] || (dist[a] == dist[b] && a < b); });
    int64_t next = 0;
    for (int64_t c = 0; c < k; ++c)
      if (empty[c]) {
        const int64_t i = far[std::min(next++, M - 1)];
        std::copy(data.x + i * D, data.x + (i + 1) * D, C + c * D);
      }
  }
  if (data.cosine)
    for (int64_t c = 0; c < k; ++c) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += double(C[c * D + d]) * C[c * D + d];
      if (s > 0)
        for (int64_t d = 0; d < D; ++d) C[c * D + d] = A(C[c * D + d] / std::sqrt(s));
    }
}

template <class A>
Result run(const Tensor& points, const Tensor* weights, const Options& opt, const Tensor& centroids,
           const Tensor& labels_out) {
  const int64_t M = points.size(0), D = points.size(1), k = opt.k;
  Data<A> data{points.ptr<A>(), weights ? weights->ptr<A>() : nullptr, M, D, opt.cosine, {}};
  data.xx = squared_norms(data.x, M, D);

  std::vector<A> C(k * D), C_new(k * D), dist(M);
  std::vector<int64_t> labels(M), previous(M);
  Result best{INFINITY, 0};
  for (int64_t run = 0; run < opt.n_init; ++run) {
    Random rng(opt.seed, uint64_t(run));
    kmeans_plus_plus(data, k, rng, C.data());
    int64_t it = 0;
    for (bool stop = false; !stop && it < opt.max_iter;) {
      ++it;
      assign(data, C.data(), k, labels.data(), dist.data());
      if (it > 1 && labels == previous) break;  // strict convergence: centroids are final
      previous = labels;
      C_new = C;
      update(data, k, labels.data(), dist.data(), C_new.data());
      double shift = 0;
      for (int64_t i = 0; i < k * D; ++i) shift += double(C_new[i] - C[i]) * (C_new[i] - C[i]);
      std::swap(C, C_new);
      stop = shift <= opt.tol;
    }
    // labels and inertia of the final centroids
    const double inertia = assign(data, C.data(), k, labels.data(), dist.data());
    if (inertia < best.inertia || run == 0) {
      best = {inertia, it};
      std::copy(C.begin(), C.end(), centroids.ptr<A>());
      std::copy(labels.begin(), labels.end(), labels_out.ptr<int64_t>());
    }
  }
  return best;
}

}  // namespace

Result kmeans_cpu(const Tensor& points, const Tensor* weights, const Options& opt,
                  const Tensor& centroids, const Tensor& labels) {
  Result r{};
  FF_DISPATCH_ACC(points.dtype, "kmeans", [&] { r = run<scalar_t>(points, weights, opt, centroids, labels); });
  return r;
}

FF_ISA_END
}  // namespace fussfast::kmeans
