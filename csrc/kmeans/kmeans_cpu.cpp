// CPU kmeans. The points are read in place (row-major) in fixed chunks (OpenMP over chunks);
// only the k centroids are packed. One pass per Lloyd iteration: the micro-kernel of
// kmeans_tile.h keeps each point's running minimum (no M x k matrix), and the same pass adds the
// point into its chunk's per-cluster sums, so the update reads the chunk sums, not the points.
// Chunk sizes depend on (M, k, D) only and chunk results are added in chunk order, so results
// do not depend on the thread count. k-means++ takes one pass per pick as well.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../common/cpu_utils.h"
#include "../common/random.h"
#include "kmeans.h"

namespace fussfast::kmeans {
FF_ISA_BEGIN
namespace {

#include "kmeans_tile.h"

template <class A>
struct Data {
  const A* x;
  const A* w;  // nullptr: unit weights
  int64_t M, D;
  bool cosine;
  int64_t chunk, chunks;
  std::vector<A> xx;           // squared norms of the points
  std::vector<double> wchunk;  // weight of each chunk

  A weight(int64_t i) const { return w ? w[i] : A(1); }
  int64_t begin(int64_t c) const { return c * chunk; }
  int64_t end(int64_t c) const { return std::min(M, (c + 1) * chunk); }
  // distance from a kernel score s = h - x.c
  A distance(int64_t i, A s) const {
    const A d = cosine ? A(1) + s : xx[i] + 2 * s;
    return d > A(0) ? d : A(0);
  }
};

// Chunks of >= 1024 points (whole tiles), at most 2^22 / (k D) of them: the per-chunk cluster
// sums stay within 16 MiB (float).
void plan_chunks(int64_t M, int64_t k, int64_t D, int64_t& chunk, int64_t& chunks) {
  const int64_t cap = std::max<int64_t>(16, (int64_t(1) << 22) / (k * D));
  chunks = std::min((M + 1023) / 1024, cap);
  chunk = (M + chunks - 1) / chunks;
  chunk = (chunk + kRows - 1) / kRows * kRows;
  chunks = (M + chunk - 1) / chunk;
}

// f(c) for c < chunks; in parallel only for work (multiply-adds) worth a fork and join
template <class F>
void for_chunks(int64_t chunks, F f, int64_t work = INT64_MAX) {
  ParallelErrors errors;
#pragma omp parallel for schedule(static) if (chunks > 1 && work >= (int64_t(1) << 20))
  for (int64_t c = 0; c < chunks; ++c) errors.guard([&] { f(c); });
  errors.rethrow();
}

// Squared norm of a row, summed in kLanes independent lanes (so the loop vectorizes).
template <class A>
A squared_norm(const A* v, int64_t D) {
  constexpr int W = kLanes<A>;
  A lanes[W] = {};
  int64_t d = 0;
  for (; d + W <= D; d += W)
    for (int l = 0; l < W; ++l) lanes[l] += v[d + l] * v[d + l];
  A s = 0;
  for (; d < D; ++d) s += v[d] * v[d];
  for (int l = 0; l < W; ++l) s += lanes[l];
  return s;
}

template <int N>
using Int = std::integral_constant<int, N>;

// Runs f(rows, nv, i) over the tiles of rows [b, e): full tiles of kRows, then single rows;
// rows and nv (the panel's vectors per block) come as Int<N>.
template <class A, class F>
void over_tiles(const Panel<A>& p, int64_t b, int64_t e, F f) {
  auto go = [&](auto nv) {
    int64_t i = b;
    for (; i + kRows <= e; i += kRows) f(Int<kRows>{}, nv, i);
    for (; i < e; ++i) f(Int<1>{}, nv, i);
  };
  if (p.nv == 1)
    go(Int<1>{});
  else
    go(Int<2>{});
}

// One Lloyd pass with centroids p: labels, distances, the number of changed labels and the
// inertia; with sums (chunks x k x D) and wsums (chunks x k), each chunk's per-cluster weighted
// sums of its points.
template <class A>
void lloyd_pass(const Data<A>& data, const Panel<A>& p, int64_t* labels, A* dist, A* sums, double* wsums,
                double& inertia, int64_t& changed) {
  const int64_t D = data.D, k = p.k;
  std::vector<double> part(data.chunks);
  std::vector<int64_t> moved(data.chunks);
  for_chunks(data.chunks, [&](int64_t c) {
    const int64_t b = data.begin(c), e = data.end(c);
    thread_local std::vector<int64_t> best;
    thread_local std::vector<A> score;
    best.resize(e - b), score.resize(e - b);
    over_tiles(p, b, e, [&](auto R, auto NV, int64_t i) {
      tile_nearest<R(), NV()>(data.x + i * D, p, best.data() + (i - b), score.data() + (i - b));
    });
    A* S = sums ? sums + c * k * D : nullptr;
    double* WS = wsums ? wsums + c * k : nullptr;
    if (S) std::fill(S, S + k * D, A(0)), std::fill(WS, WS + k, 0.0);
    double s = 0;
    int64_t n = 0;
    for (int64_t i = b; i < e; ++i) {
      const int64_t l = best[i - b];
      const A d = data.distance(i, score[i - b]), w = data.weight(i);
      n += labels[i] != l;
      labels[i] = l, dist[i] = d;
      s += double(w) * d;
      if (S) {
        A* row = S + l * D;
        const A* xi = data.x + i * D;
        for (int64_t j = 0; j < D; ++j) row[j] += w * xi[j];
        WS[l] += w;
      }
    }
    part[c] = s, moved[c] = n;
  }, data.M * k * D);
  inertia = std::accumulate(part.begin(), part.end(), 0.0);
  changed = std::accumulate(moved.begin(), moved.end(), int64_t(0));
}

// New centroids from the chunk sums (added in chunk order, in double); empty clusters take the
// points farthest from their centroids; cosine centroids are re-normalized.
template <class A>
void update(const Data<A>& data, int64_t k, const A* sums, const double* wsums, const A* dist, A* C) {
  const int64_t M = data.M, D = data.D, chunks = data.chunks;
  std::vector<char> empty(k, 0);
  for_chunks(k, [&](int64_t j) {
    std::vector<double> s(D, 0.0);
    double wsum = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const A* row = sums + (c * k + j) * D;
      for (int64_t d = 0; d < D; ++d) s[d] += row[d];
      wsum += wsums[c * k + j];
    }
    if (wsum > 0) {
      for (int64_t d = 0; d < D; ++d) C[j * D + d] = A(s[d] / wsum);
    } else {
      empty[j] = 1;
    }
  }, chunks * k * D);
  const int64_t n_empty = std::count(empty.begin(), empty.end(), 1);
  if (n_empty > 0) {
    std::vector<int64_t> far(M);
    std::iota(far.begin(), far.end(), 0);
    std::partial_sort(far.begin(), far.begin() + std::min(n_empty, M), far.end(),
                      [&](int64_t a, int64_t b) { return dist[a] > dist[b] || (dist[a] == dist[b] && a < b); });
    int64_t next = 0;
    for (int64_t j = 0; j < k; ++j)
      if (empty[j]) {
        const int64_t i = far[std::min(next++, M - 1)];
        std::copy(data.x + i * D, data.x + (i + 1) * D, C + j * D);
      }
  }
  if (data.cosine)
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += double(C[j * D + d]) * C[j * D + d];
      if (s > 0)
        for (int64_t d = 0; d < D; ++d) C[j * D + d] = A(C[j * D + d] / std::sqrt(s));
    }
}

// Draws a point with probability value(i) / sum: the first i whose running sum reaches
// u * sum (numpy's searchsorted), found through the chunk totals, then a scan of one chunk.
template <class A, class F>
int64_t sample(const Data<A>& data, const std::vector<double>& totals, double u, F value) {
  double total = 0;
  for (double t : totals) total += t;
  const double r = u * total;
  double below = 0;
  int64_t c = 0;
  for (; c + 1 < data.chunks && below + totals[c] < r; ++c) below += totals[c];
  double s = below;
  const int64_t e = data.end(c);
  for (int64_t i = data.begin(c); i < e; ++i)
    if ((s += value(i)) >= r) return i;
  return e - 1;  // r beyond the running sum by rounding
}

// k-means++ with greedy local trials (scikit-learn's variant): writes k centers to C. Each pick
// is one pass: the distances of every point to the trials (kept, [trials][M]), each trial's
// potential per chunk; the running minimum takes the chosen trial lazily, in the next pass.
template <class A>
void kmeans_plus_plus(const Data<A>& data, int64_t k, Random& rng, A* C) {
  const int64_t M = data.M, D = data.D, chunks = data.chunks, trials = 2 + int64_t(std::log(double(k)));
  std::vector<A> closest(M, A(INFINITY)), dt(trials * M), cand(trials * D);
  std::vector<double> part(chunks * trials), totals(chunks);
  int64_t pending = -1;  // the trial whose distances closest has yet to take
  auto current = [&](int64_t i) { return pending < 0 ? closest[i] : std::min(closest[i], dt[pending * M + i]); };

  // distances to n candidates; part[c * n + t]: chunk c's potential with candidate t added
  auto trial_pass = [&](int64_t n) {
    Panel<A> p;
    p.pack(cand.data(), n, D, data.cosine);
    for_chunks(chunks, [&](int64_t c) {
      const int64_t b = data.begin(c), e = data.end(c);
      thread_local std::vector<A> s;
      s.resize((e - b) * n);
      over_tiles(p, b, e, [&](auto R, auto NV, int64_t i) {
        tile_scores<R(), NV()>(data.x + i * D, p, s.data() + (i - b) * n, n);
      });
      std::vector<double> pot(n, 0.0);
      for (int64_t i = b; i < e; ++i) {
        const A cl = current(i), w = data.weight(i);
        closest[i] = cl;
        for (int64_t t = 0; t < n; ++t) {
          const A d = data.distance(i, s[(i - b) * n + t]);
          dt[t * M + i] = d;
          pot[t] += double(w) * std::min(cl, d);
        }
      }
      std::copy(pot.begin(), pot.end(), part.begin() + c * n);
    }, M * n * D);
    pending = -1;
    int64_t best = 0;
    double best_pot = INFINITY;
    for (int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += part[c * n + t];
      if (s < best_pot) best_pot = s, best = t;
    }
    for (int64_t c = 0; c < chunks; ++c) totals[c] = part[c * n + best];
    pending = best;
    return best;
  };

  const int64_t first = sample(data, data.wchunk, rng.uniform(), [&](int64_t i) { return double(data.weight(i)); });
  std::copy(data.x + first * D, data.x + (first + 1) * D, cand.begin());
  std::copy(cand.begin(), cand.begin() + D, C);
  trial_pass(1);
  for (int64_t j = 1; j < k; ++j) {
    for (int64_t t = 0; t < trials; ++t) {
      const int64_t id = sample(data, totals, rng.uniform(), [&](int64_t i) { return double(data.weight(i)) * current(i); });
      std::copy(data.x + id * D, data.x + (id + 1) * D, cand.begin() + t * D);
    }
    const int64_t best = trial_pass(trials);
    std::copy(cand.begin() + best * D, cand.begin() + (best + 1) * D, C + j * D);
  }
}

template <class A>
Result run(const Tensor& points, const Tensor* weights, const Options& opt, const Tensor& centroids,
           const Tensor& labels_out) {
  const int64_t M = points.size(0), D = points.size(1), k = opt.k;
  Data<A> data{points.ptr<A>(), weights ? weights->ptr<A>() : nullptr, M, D, opt.cosine, 0, 0, {}, {}};
  plan_chunks(M, k, D, data.chunk, data.chunks);
  data.xx.resize(M);
  data.wchunk.resize(data.chunks);
  for_chunks(data.chunks, [&](int64_t c) {
    double s = 0;
    for (int64_t i = data.begin(c); i < data.end(c); ++i) {
      data.xx[i] = squared_norm(data.x + i * D, D);
      s += data.weight(i);
    }
    data.wchunk[c] = s;
  }, M * D);

  std::vector<A> C(k * D), C_new(k * D), dist(M), sums(data.chunks * k * D);
  std::vector<double> wsums(data.chunks * k);
  std::vector<int64_t> labels(M);
  Panel<A> panel;
  Result best{INFINITY, 0};
  for (int64_t run = 0; run < opt.n_init; ++run) {
    Random rng(opt.seed, uint64_t(run));
    kmeans_plus_plus(data, k, rng, C.data());
    std::fill(labels.begin(), labels.end(), int64_t(-1));
    int64_t it = 0, changed = 0;
    double inertia = 0;
    bool final = false;  // labels and inertia are those of C
    while (it < opt.max_iter) {
      ++it;
      panel.pack(C.data(), k, D, opt.cosine);
      lloyd_pass(data, panel, labels.data(), dist.data(), sums.data(), wsums.data(), inertia, changed);
      if (changed == 0) {  // strict convergence: C is final
        final = true;
        break;
      }
      update(data, k, sums.data(), wsums.data(), dist.data(), C_new.data());
      double shift = 0;
      for (int64_t i = 0; i < k * D; ++i) shift += double(C_new[i] - C[i]) * (C_new[i] - C[i]);
      std::swap(C, C_new);
      if (shift <= opt.tol) break;
    }
    if (!final) {  // labels and inertia of the final centroids
      panel.pack(C.data(), k, D, opt.cosine);
      lloyd_pass(data, panel, labels.data(), dist.data(), (A*)nullptr, nullptr, inertia, changed);
    }
    if (inertia < best.inertia || run == 0) {
      best = {inertia, it};
      std::copy(C.begin(), C.end(), centroids.ptr<A>());
      std::copy(labels.begin(), labels.end(), labels_out.ptr<int64_t>());
    }
  }
  return best;
}

// Mean over the features of the population variance (one pass, shifted by the first point,
// per-chunk double sums added in chunk order); raises on NaN or Inf, which the sums carry.
template <class A>
double mean_variance(const Tensor& points) {
  const int64_t M = points.size(0), D = points.size(1);
  const A* x = points.ptr<A>();
  const int64_t chunk = 4096, chunks = (M + chunk - 1) / chunk;
  std::vector<double> part(chunks * 2 * D, 0.0);
  for_chunks(chunks, [&](int64_t c) {
    double* s = part.data() + c * 2 * D;
    double* q = s + D;
    for (int64_t i = c * chunk; i < std::min(M, (c + 1) * chunk); ++i)
      for (int64_t d = 0; d < D; ++d) {
        const double v = double(x[i * D + d]) - double(x[d]);
        s[d] += v, q[d] += v * v;
      }
  });
  double var = 0;
  bool finite = true;
  for (int64_t d = 0; d < D; ++d) {
    double s = 0, q = 0;
    for (int64_t c = 0; c < chunks; ++c) s += part[c * 2 * D + d], q += part[c * 2 * D + D + d];
    finite = finite && std::isfinite(s) && std::isfinite(q) && std::isfinite(double(x[d]));
    var += q / double(M) - (s / double(M)) * (s / double(M));
  }
  if (!finite) fail("kmeans", "points contain NaN or Inf");
  return std::max(0.0, var / double(D));
}

}  // namespace

Result kmeans_cpu(const Tensor& points, const Tensor* weights, const Options& opt,
                  const Tensor& centroids, const Tensor& labels) {
  Result r{};
  FF_DISPATCH_ACC(points.dtype, "kmeans", [&] { r = run<scalar_t>(points, weights, opt, centroids, labels); });
  return r;
}

double mean_variance_cpu(const Tensor& points) {
  double v = 0;
  FF_DISPATCH_ACC(points.dtype, "kmeans", [&] { v = mean_variance<scalar_t>(points); });
  return v;
}

FF_ISA_END
}  // namespace fussfast::kmeans
