// CPU kernels. forward: tasks are (pair, block of kTileP rows of P), one contiguous range per
// thread. Each task walks Q in blocks of kTileQ: the raw feature product (the features in their
// own dtype, 16-bit included) and the code product come from the blocked matrix kernel, F is
// scaled and centred, the loss and d loss / d S are taken elementwise, then the two code-gradient
// products. grad_z1 rows belong to one task;
// grad_z2 sums over all of P, so each thread keeps a private copy per pair it touches and the
// copies are added in thread order: results do not depend on timing.
#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "../common/cpu_utils.h"
#include "../common/gemm_cpu.h"
#include "correlation.h"

namespace fussfast::correlation {
FF_ISA_BEGIN
namespace {

// kTileQ is the packed products' column alignment, so the packed f2 and z2
// panels of a pair can be sliced at q0.
constexpr int64_t kTileP = 128, kTileQ = cpu::kGemmColumnAlign;

// sum_i x[i] w[i] in double, in 8 interleaved partial sums (so it vectorizes) added in order.
template <class T, class A>
double weighted_sum(const T* x, const A* w, int64_t n) {
  constexpr int kParts = 8;
  double part[kParts] = {};
  int64_t i = 0;
  for (; i + kParts <= n; i += kParts)
    for (int j = 0; j < kParts; ++j) part[j] += double(load(x + i + j)) * double(w[i + j]);
  double s = 0;
  for (int j = 0; j < kParts; ++j) s += part[j];
  for (; i < n; ++i) s += double(load(x + i)) * double(w[i]);
  return s;
}

// sum_i x[i]^2 in double, in 8 interleaved partial sums added in order.
template <class T>
double sum_squares(const T* x, int64_t n) {
  constexpr int kParts = 8;
  double part[kParts] = {};
  int64_t i = 0;
  for (; i + kParts <= n; i += kParts)
    for (int j = 0; j < kParts; ++j) {
      const double v = load(x + i + j);
      part[j] += v * v;
    }
  double s = 0;
  for (int j = 0; j < kParts; ++j) s += part[j];
  for (; i < n; ++i) s += double(load(x + i)) * double(load(x + i));
  return s;
}

// T: the features' storage type; A: the accumulation type, which codes, statistics and
// gradients use (16-bit features are read as they are, never widened in memory).
// channels_last: a pair's map is [n, C] (each position's channels contiguous), else [C, n].
template <class T, class A>
void stats_impl(const Tensor& f1t, const Tensor& f2t, const Stats& st, bool pointwise, bool channels_last) {
  const int64_t B = f1t.size(0), C = channels_last ? f1t.size(f1t.ndim - 1) : f1t.size(1);
  const int64_t P = f1t.numel() / (B * C), Q = f2t.numel() / (B * C);
  ParallelErrors errors;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) errors.guard([&] {
    const T* f1 = f1t.ptr<T>() + b * C * P;
    const T* f2 = f2t.ptr<T>() + b * C * Q;
    A* inv1 = st.inv1.ptr<A>() + b * P;
    A* inv2 = st.inv2.ptr<A>() + b * Q;
    A* off1 = st.off1.ptr<A>() + b * P;
    A* m1 = st.centre.ptr<A>() + b * 2 * C;
    A* m2 = m1 + C;
    // sums of squares over channels, walking the map in memory order
    auto inverse_norms = [&](const T* f, int64_t n, A* inv) {
      if (channels_last) {
        for (int64_t i = 0; i < n; ++i) inv[i] = A(inverse_norm(sum_squares(f + i * C, C)));
        return;
      }
      std::vector<double> sq(n, 0.0);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < n; ++i) {
          const double v = load(f + c * n + i);
          sq[i] += v * v;
        }
      for (int64_t i = 0; i < n; ++i) inv[i] = A(inverse_norm(sq[i]));
    };
    // m[c] = mean_i f[c, i] inv[i]
    auto centre = [&](const T* f, int64_t n, const A* inv, A* m) {
      if (!channels_last) {
        for (int64_t c = 0; c < C; ++c) m[c] = A(weighted_sum(f + c * n, inv, n) / n);
        return;
      }
      std::vector<double> sum(C, 0.0);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) sum[c] += double(load(f + i * C + c)) * double(inv[i]);
      for (int64_t c = 0; c < C; ++c) m[c] = A(sum[c] / n);
    };
    inverse_norms(f1, P, inv1);
    inverse_norms(f2, Q, inv2);
    double mean = 0;
    std::fill(off1, off1 + P, A(0));
    if (pointwise) {
      centre(f1, P, inv1, m1);
      centre(f2, Q, inv2, m2);
      for (int64_t c = 0; c < C; ++c) mean += double(m1[c]) * m2[c];
      if (channels_last) {
        for (int64_t p = 0; p < P; ++p) off1[p] = A(weighted_sum(f1 + p * C, m2, C));
      } else {
        for (int64_t c = 0; c < C; ++c)
          for (int64_t p = 0; p < P; ++p) off1[p] += A(load(f1 + c * P + p)) * m2[c];
      }
      for (int64_t p = 0; p < P; ++p) off1[p] *= inv1[p];
    }
    st.pair_mean.ptr<A>()[b] = A(mean);
  });
  errors.rethrow();
}

// The feature and code products of one task against the q-blocks of its pair. float: the pair's
// f2/z2 are packed once per thread and pair, the task's f1/z1 tile once; float64: strided products.
// Feature (channel, position) of a pair's map is at channel * s_c + position * s_p.
template <class T, class A>
struct Products {
  int64_t C, D, P, Q;
  int64_t s_p, s_c1, s_c2;  // position stride; channel strides of f1 and f2
  cpu::Packed f1p, z1p, f2p, z2p;
  int64_t packed_pair = -1;

  void start(const T* f1b, const A* z1b, const T* f2b, const A* z2b, int64_t b, int64_t tp) {
    if constexpr (std::is_same_v<A, float>) {
      if (b != packed_pair) {
        cpu::pack_b(f2b, Q, C, s_c2, s_p, f2p);
        cpu::pack_b(z2b, Q, D, Q, 1, z2p);
        packed_pair = b;
      }
      cpu::pack_a(f1b, tp, C, s_p, s_c1, f1p);
      cpu::pack_a(z1b, tp, D, 1, P, z1p);
    }
  }
  // F[p][q] = sum_c f1[c][p0 + p] f2[c][q0 + q],  S[p][q] = sum_d z1[d][p0 + p] z2[d][q0 + q]
  void run(const T* f1b, const A* z1b, const T* f2b, const A* z2b, int64_t tp, int64_t q0, int64_t tq, A* F, A* S) {
    if constexpr (std::is_same_v<A, float>) {
      cpu::gemm(f1p, f2p, q0, tq, F, kTileQ, false);
      cpu::gemm(z1p, z2p, q0, tq, S, kTileQ, false);
    } else {
      cpu::gemm({tp, tq, C, s_p, s_c1, s_c2, s_p, kTileQ, false}, f1b, f2b + q0 * s_p, F);
      cpu::gemm({tp, tq, D, 1, P, Q, 1, kTileQ, false}, z1b, z2b + q0, S);
    }
  }
};

// Raw codes z [D, n] of one pair -> y = z / max(|z|, eps) per position; inv gets 1 / max(|z|, eps)
// and sq |z|^2 (both [n]). Walks each code row contiguously.
template <class A>
void normalize_columns(const A* z, int64_t D, int64_t n, A* y, A* inv, A* sq) {
  std::fill(sq, sq + n, A(0));
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < n; ++i) sq[i] += z[d * n + i] * z[d * n + i];
  for (int64_t i = 0; i < n; ++i) inv[i] = A(1) / std::max(std::sqrt(sq[i]), A(kNormEps));
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < n; ++i) y[d * n + i] = z[d * n + i] * inv[i];
}

// g [D, n], the gradient with respect to y = z / max(|z|, eps), becomes in place the gradient with
// respect to z: (g - y (y . g)) / |z|, and g / eps where the norm is clamped (as F.normalize).
template <class A>
void through_normalization(A* g, const A* y, int64_t D, int64_t n, const A* inv, const A* sq) {
  std::vector<A> dot(n, A(0));
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < n; ++i) dot[i] += y[d * n + i] * g[d * n + i];
  const A eps2 = A(kNormEps) * A(kNormEps);
  for (int64_t i = 0; i < n; ++i) dot[i] = sq[i] > eps2 ? dot[i] : A(0);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < n; ++i) g[d * n + i] = (g[d * n + i] - y[d * n + i] * dot[i]) * inv[i];
}

// Raw codes of every pair, normalized once before the products (normalize), with what the
// gradient's way back through the normalization needs.
template <class A>
struct NormalizedCodes {
  std::vector<A> y, inv, sq;
  NormalizedCodes(const A* z, int64_t B, int64_t D, int64_t n) : y(B * D * n), inv(B * n), sq(B * n) {
    ParallelErrors errors;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b)
      errors.guard([&] { normalize_columns(z + b * D * n, D, n, &y[b * D * n], &inv[b * n], &sq[b * n]); });
    errors.rethrow();
  }
  void backward(A* g, int64_t b, int64_t D, int64_t n) const {
    through_normalization(g + b * D * n, &y[b * D * n], D, n, &inv[b * n], &sq[b * n]);
  }
};

template <class T, class A>
void forward_impl(const Tensor& f1t, const Tensor& f2t, const Tensor& z1t, const Tensor& z2t,
                  const Stats& st, const Tensor& bias_t, const Tensor& loss_t, const Grads* grads,
                  A lo, A hi, bool channels_last, bool normalize) {
  const int64_t B = f1t.size(0), D = z1t.size(1), P = z1t.inner(2), Q = z2t.inner(2);
  if (B == 0) return;
  const int64_t C = f1t.numel() / (B * P);
  const int64_t s_p = channels_last ? C : 1;
  const T *f1 = f1t.ptr<T>(), *f2 = f2t.ptr<T>();
  const A *z1 = z1t.ptr<A>(), *z2 = z2t.ptr<A>();
  std::optional<NormalizedCodes<A>> y1, y2;
  if (normalize) {
    y1.emplace(z1, B, D, P);
    y2.emplace(z2, B, D, Q);
    z1 = y1->y.data();
    z2 = y2->y.data();
  }
  const A *inv1 = st.inv1.ptr<A>(), *inv2 = st.inv2.ptr<A>(), *off1 = st.off1.ptr<A>();
  const A* bias = bias_t.ptr<A>();
  A* gz1 = grads ? grads->z1.ptr<A>() : nullptr;
  A* gz2 = grads ? grads->z2.ptr<A>() : nullptr;

  const int64_t pblocks = std::max<int64_t>((P + kTileP - 1) / kTileP, 1);
  const int64_t tasks = B * pblocks;
  const int threads = worker_count(tasks);
  auto task_begin = [&](int t) { return tasks * t / threads; };
  // Thread t touches pairs first_pair(t) .. last_pair(t); its grad_z2 copy of pair b is slot
  // slot0[t] + b - first_pair(t).
  auto first_pair = [&](int t) { return task_begin(t) / pblocks; };
  auto last_pair = [&](int t) { return (task_begin(t + 1) - 1) / pblocks; };
  std::vector<int64_t> slot0(threads + 1, 0);
  for (int t = 0; t < threads; ++t) slot0[t + 1] = slot0[t] + last_pair(t) - first_pair(t) + 1;
  std::vector<A> gz2_private(grads ? slot0[threads] * D * Q : 0, A(0));
  std::vector<double> task_loss(tasks, 0.0);

  ParallelErrors errors;
#pragma omp parallel num_threads(threads)
  errors.guard([&] {
    const int t = worker_id();
    std::vector<A> F(kTileP * kTileQ), S(kTileP * kTileQ), W(kTileP * kTileQ), column_loss(kTileQ);
    Products<T, A> products{C, D, P, Q, s_p, channels_last ? 1 : P, channels_last ? 1 : Q};
    for (int64_t task = task_begin(t); task < task_begin(t + 1); ++task) {
      const int64_t b = task / pblocks, p0 = (task % pblocks) * kTileP;
      const int64_t tp = std::min(kTileP, P - p0);
      const T *f1b = f1 + b * C * P + p0 * s_p, *f2b = f2 + b * C * Q;
      const A *z1b = z1 + b * D * P + p0, *z2b = z2 + b * D * Q;
      const A *inv1b = inv1 + b * P + p0, *off1b = off1 + b * P + p0;
      A* gz2b = grads ? gz2_private.data() + (slot0[t] + b - first_pair(t)) * D * Q : nullptr;
      products.start(f1b, z1b, f2b, z2b, b, tp);
      double loss_sum = 0;
      for (int64_t q0 = 0; q0 < Q; q0 += kTileQ) {
        const int64_t tq = std::min(kTileQ, Q - q0);
        const A* inv2b = inv2 + b * Q + q0;
        products.run(f1b, z1b, f2b, z2b, tp, q0, tq, F.data(), S.data());
        // per-column partial losses: the loop vectorizes (no reduction across lanes), and the
        // columns are then added in a fixed order
        std::fill(column_loss.begin(), column_loss.end(), A(0));
        for (int64_t p = 0; p < tp; ++p) {
          const A scale = inv1b[p], off = off1b[p];
          for (int64_t q = 0; q < tq; ++q) {
            const int64_t i = p * kTileQ + q;
            W[i] = pair_term(scale * inv2b[q] * F[i] - off, S[i], bias[b], lo, hi, column_loss[q]);
          }
        }
        for (int64_t q = 0; q < tq; ++q) loss_sum += column_loss[q];
        if (!grads) continue;
        // grad_z1[d][p0 + p] += sum_q z2[d][q0 + q] W[p][q]
        cpu::gemm({D, tp, tq, Q, 1, 1, kTileQ, P, true}, z2b + q0, W.data(), gz1 + b * D * P + p0);
        // grad_z2[d][q0 + q] += sum_p z1[d][p0 + p] W[p][q]
        cpu::gemm({D, tq, tp, P, 1, kTileQ, 1, Q, true}, z1b, W.data(), gz2b + q0);
      }
      task_loss[task] = loss_sum;
    }
  });
  errors.rethrow();

  A* loss = loss_t.ptr<A>();
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t i = 0; i < pblocks; ++i) s += task_loss[b * pblocks + i];
    loss[b] = static_cast<A>(s);
  }
  if (!grads) return;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int t = 0; t < threads; ++t) {
      if (b < first_pair(t) || b > last_pair(t)) continue;
      const A* src = gz2_private.data() + (slot0[t] + b - first_pair(t)) * D * Q;
      A* dst = gz2 + b * D * Q;
      for (int64_t i = 0; i < D * Q; ++i) dst[i] += src[i];
    }
  if (!normalize) return;
  ParallelErrors back_errors;  // backward allocates: no exception may leave the region
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) back_errors.guard([&] {
    y1->backward(gz1, b, D, P);
    y2->backward(gz2, b, D, Q);
  });
  back_errors.rethrow();
}

}  // namespace

void stats_cpu(const Tensor& f1, const Tensor& f2, const Stats& st, bool pointwise, bool channels_last) {
  FF_DISPATCH_FLOAT(f1.dtype, "correlation_loss",
                    [&] { stats_impl<scalar_t, acc_t<scalar_t>>(f1, f2, st, pointwise, channels_last); });
}

void forward_cpu(const Tensor& f1, const Tensor& f2, const Tensor& z1, const Tensor& z2,
                 const Stats& st, const Tensor& bias, const Tensor& loss, const Grads* grads,
                 double lo, double hi, bool channels_last, bool normalize_codes) {
  FF_DISPATCH_FLOAT(f1.dtype, "correlation_loss", [&] {
    using A = acc_t<scalar_t>;
    forward_impl<scalar_t, A>(f1, f2, z1, z2, st, bias, loss, grads, A(lo), A(hi), channels_last, normalize_codes);
  });
}

FF_ISA_END
}  // namespace fussfast::correlation
