// CUDA kernels.
//
// stats: one block per pair; inverse norms with threads along the pixels (coalesced), channel
// means with one warp per channel.
//
// forward: a block owns one pair and a tile of kT rows, and walks the other side in tiles of kT
// columns. The raw feature tile and the code tile are built from kK-deep slices staged in shared
// memory: float FMA for float32 (double for float64), tensor-core mma with float accumulation
// for float16 and bfloat16. F is scaled and centred, each element goes
// through pair_term, and the block adds its rows of the first side's code gradient (rows only it
// writes: no atomics). The second side's gradient is the same computation with the sides
// swapped (F and S transpose; the centring term moves from rows to columns), so a second launch
// produces it, again without atomics.
#include <mma.h>

#include <type_traits>

#include "../common/launch.h"
#include "correlation.h"

namespace fussfast::correlation {
namespace {

constexpr int kT = 32;         // tile edge along P and Q
constexpr int kK = 32;         // depth of one staged slice of C or D
constexpr int kThreads = 256;  // thread (ty, tx) = (tid / 32, tid % 32) owns rows ty + 8i, col tx
constexpr int kRows = kT * kT / kThreads;
constexpr unsigned kFullMask = 0xffffffffu;

template <class V>
__device__ V warp_sum(V v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <class T>
__global__ void stats_kernel(const T* __restrict__ f1, const T* __restrict__ f2, acc_t<T>* inv1,
                             acc_t<T>* inv2, acc_t<T>* off1, acc_t<T>* pair_mean, acc_t<T>* centre,
                             int64_t C, int64_t P, int64_t Q, bool pointwise) {
  using A = acc_t<T>;
  FF_SHARED(double, warp_part, [kThreads / 32]);
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  f1 += b * C * P;
  f2 += b * C * Q;
  inv1 += b * P;
  inv2 += b * Q;
  off1 += b * P;
  A* m1 = centre + b * 2 * C;
  A* m2 = m1 + C;
  for (int64_t p = tid; p < P; p += kThreads) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += double(load(f1 + c * P + p)) * double(load(f1 + c * P + p));
    inv1[p] = A(inverse_norm(s));
  }
  for (int64_t q = tid; q < Q; q += kThreads) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += double(load(f2 + c * Q + q)) * double(load(f2 + c * Q + q));
    inv2[q] = A(inverse_norm(s));
  }
  __syncthreads();  // inv1 / inv2 written by other threads of this block
  if (!pointwise) {
    for (int64_t p = tid; p < P; p += kThreads) off1[p] = A(0);
    if (tid == 0) pair_mean[b] = A(0);
    return;
  }
  double mean_part = 0;
  for (int64_t c = warp; c < C; c += kThreads / 32) {
    double s1 = 0, s2 = 0;
    for (int64_t p = lane; p < P; p += 32) s1 += double(load(f1 + c * P + p)) * inv1[p];
    for (int64_t q = lane; q < Q; q += 32) s2 += double(load(f2 + c * Q + q)) * inv2[q];
    s1 = warp_sum(s1) / double(P);
    s2 = warp_sum(s2) / double(Q);
    if (lane == 0) {
      m1[c] = A(s1);
      m2[c] = A(s2);
      mean_part += s1 * s2;
    }
  }
  if (lane == 0) warp_part[warp] = mean_part;
  __syncthreads();  // m2 complete
  if (tid == 0) {
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_part[w];
    pair_mean[b] = A(total);
  }
  for (int64_t p = tid; p < P; p += kThreads) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += double(load(f1 + c * P + p)) * m2[c];
    off1[p] = A(s * inv1[p]);
  }
}

// acc[i] += sum_k a[k][ty + 8i] * b[k][tx], operands [K, lda] and [K, ldb]; as and bs are
// [kK][kT] shared tiles.
template <class T, class A, class Tile>
__device__ void tile_product(const T* __restrict__ a, int64_t lda, int64_t rows, const T* __restrict__ b,
                             int64_t ldb, int64_t cols, int64_t K, Tile& as, Tile& bs, A (&acc)[kRows]) {
  const int tid = threadIdx.x, tx = tid % kT, ty = tid / kT;
  for (int64_t k0 = 0; k0 < K; k0 += kK) {
    for (int e = tid; e < kK * kT; e += kThreads) {
      const int k = e / kT, col = e % kT;
      const bool in_k = k0 + k < K;
      as[k][col] = in_k && col < rows ? A(load(a + (k0 + k) * lda + col)) : A(0);
      bs[k][col] = in_k && col < cols ? A(load(b + (k0 + k) * ldb + col)) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kK; ++k) {
      const A bq = bs[k][tx];
#pragma unroll
      for (int i = 0; i < kRows; ++i) acc[i] += as[k][ty + 8 * i] * bq;
    }
#if FF_MUTATION != FF_MUTATION_NO_BARRIER
    __syncthreads();  // before the next slice overwrites the tiles
#endif
  }
}

// 16-bit inputs take the tensor cores: warps 0..3 each own a 16x16 quarter of the tile (float
// accumulation over the staged slices), and the result goes through shared memory to the
// (ty, tx) layout that the elementwise part uses.
template <class T> struct mma_element;
template <> struct mma_element<half_t> { using type = __half; };
template <> struct mma_element<bfloat16_t> { using type = __nv_bfloat16; };
template <class T>
constexpr bool kTensorCores = std::is_same_v<T, half_t> || std::is_same_v<T, bfloat16_t>;

// as, bs: [kK][kT] shared tiles of T; out: a [kT][kT + 4] shared float tile.
template <class T, class Tile, class OutTile>
__device__ void tile_product_mma(const T* __restrict__ a, int64_t lda, int64_t rows,
                                 const T* __restrict__ b, int64_t ldb, int64_t cols, int64_t K,
                                 Tile& as, Tile& bs, OutTile& out, float (&acc)[kRows]) {
  using namespace nvcuda;
  using E = typename mma_element<T>::type;
  const int tid = threadIdx.x, warp = tid / 32, tx = tid % kT, ty = tid / kT;
  const int fm = (warp / 2) * 16, fn = (warp % 2) * 16;  // this warp's quarter (warps 0..3)
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag;
  wmma::fill_fragment(frag, 0.f);
  for (int64_t k0 = 0; k0 < K; k0 += kK) {
    for (int e = tid; e < kK * kT; e += kThreads) {
      const int k = e / kT, col = e % kT;
      const bool in_k = k0 + k < K;
      as[k][col] = in_k && col < rows ? a[(k0 + k) * lda + col] : T{0};
      bs[k][col] = in_k && col < cols ? b[(k0 + k) * ldb + col] : T{0};
    }
    __syncthreads();
    if (warp < 4) {
      for (int kk = 0; kk < kK; kk += 16) {
        // as[k][row] is the tile's A operand in column-major order, bs[k][col] its B in row-major
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::col_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, smem_cast<const E>(&as[kk][fm]), kT);
        wmma::load_matrix_sync(fb, smem_cast<const E>(&bs[kk][fn]), kT);
        wmma::mma_sync(frag, fa, fb, frag);
      }
    }
    __syncthreads();
  }
  if (warp < 4) wmma::store_matrix_sync(&out[fm][fn], frag, kT + 4, wmma::mem_row_major);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = out[ty + 8 * i][tx];
  __syncthreads();  // out is reused by the next product
}

// Rows side r (length R) against columns side c (length Q'):
//   F = inv_r[p] inv_c[q] (fr[:, p] . fc[:, q]) - off_r[p] - off_c[q], S = zr[:, p] . zc[:, q].
// Adds sum_q W[p][q] zc[:, q] to grad_r (when given) and the loss to loss[b] (when given).
template <class T>
__global__ void __launch_bounds__(kThreads)
    correlation_kernel(const T* __restrict__ fr, const T* __restrict__ fc, const T* __restrict__ zr,
                       const T* __restrict__ zc, const acc_t<T>* __restrict__ inv_r,
                       const acc_t<T>* __restrict__ inv_c, const acc_t<T>* __restrict__ off_r,
                       const acc_t<T>* __restrict__ off_c, const acc_t<T>* __restrict__ bias,
                       acc_t<T>* loss, acc_t<T>* grad_r, int64_t C, int64_t D, int64_t R,
                       int64_t Qc, acc_t<T> lo, acc_t<T> hi, unsigned rblocks) {
  using A = acc_t<T>;
  FF_SHARED(A, as, [kK][kT]);
  FF_SHARED(A, bs, [kK][kT]);
  FF_SHARED(A, ws, [kT][kT + 1]);  // d loss / d S of the current tile; +1 avoids bank conflicts
  FF_SHARED(A, warp_loss, [kThreads / 32]);
  const int tid = threadIdx.x, tx = tid % kT, ty = tid / kT;
  const int64_t b = blockIdx.x / rblocks, r0 = int64_t(blockIdx.x % rblocks) * kT;
  const int64_t tr = min(int64_t(kT), R - r0);
  const T* frb = fr + b * C * R + r0;
  const T* zrb = zr + b * D * R + r0;
  inv_r += b * R + r0;
  inv_c += b * Qc;
  if (off_r) off_r += b * R + r0;
  if (off_c) off_c += b * Qc;
  const A bias_b = bias[b];

  A loss_local = 0;
  for (int64_t q0 = 0; q0 < Qc; q0 += kT) {
    const int64_t tq = min(int64_t(kT), Qc - q0);
    A f[kRows] = {}, s[kRows] = {};
    if constexpr (kTensorCores<T>) {
      FF_SHARED_ALIGNED(32, T, as_h, [kK][kT]);
      FF_SHARED_ALIGNED(32, T, bs_h, [kK][kT]);
      FF_SHARED_ALIGNED(32, float, out_tile, [kT][kT + 4]);
      tile_product_mma(frb, R, tr, fc + b * C * Qc + q0, Qc, tq, C, as_h, bs_h, out_tile, f);
      tile_product_mma(zrb, R, tr, zc + b * D * Qc + q0, Qc, tq, D, as_h, bs_h, out_tile, s);
    } else {
      tile_product(frb, R, tr, fc + b * C * Qc + q0, Qc, tq, C, as, bs, f);
      tile_product(zrb, R, tr, zc + b * D * Qc + q0, Qc, tq, D, as, bs, s);
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int p = ty + 8 * i;
      A w = 0;
      if (p < tr && tx < tq) {
        A fv = inv_r[p] * inv_c[q0 + tx] * f[i];
        if (off_r) fv -= off_r[p];
        if (off_c) fv -= off_c[q0 + tx];
        w = pair_term(fv, s[i], bias_b, lo, hi, loss_local);
      }
      ws[p][tx] = w;
    }
    __syncthreads();
    if (grad_r != nullptr) {  // grad_r[d][r0 + p] += sum_q zc[d][q0 + q] * ws[p][q]
      const T* zct = zc + b * D * Qc + q0;
      for (int64_t e = tid; e < D * kT; e += kThreads) {
        const int64_t d = e / kT, p = e % kT;
        if (p >= tr) continue;
        A g = 0;
        for (int q = 0; q < tq; ++q) g += A(load(zct + d * Qc + q)) * ws[p][q];
        grad_r[(b * D + d) * R + r0 + p] += g;
      }
    }
    __syncthreads();
  }

  if (loss == nullptr) return;
  loss_local = warp_sum(loss_local);
  if (tid % 32 == 0) warp_loss[tid / 32] = loss_local;
  __syncthreads();
  if (tid == 0) {
    A total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_loss[w];
    atomicAdd(loss + b, total);
  }
}

}  // namespace

void stats_cuda(const Tensor& f1, const Tensor& f2, const Stats& st, bool pointwise,
                uintptr_t stream_handle) {
  const int64_t B = f1.size(0), C = f1.size(1), P = f1.inner(2), Q = f2.inner(2);
  if (B == 0) return;
  DeviceGuard guard(f1.device_id, "correlation_loss");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(f1.dtype, "correlation_loss", [&] {
    using A = acc_t<scalar_t>;
    launch("correlation_loss", "stats_kernel", stats_kernel<scalar_t>, grid_of("correlation_loss", B), kThreads, 0,
           stream, f1.ptr<scalar_t>(), f2.ptr<scalar_t>(), st.inv1.ptr<A>(), st.inv2.ptr<A>(), st.off1.ptr<A>(),
           st.pair_mean.ptr<A>(), st.centre.ptr<A>(), C, P, Q, pointwise);
  });
}

void forward_cuda(const Tensor& f1, const Tensor& f2, const Tensor& z1, const Tensor& z2,
                  const Stats& st, const Tensor& bias, const Tensor& loss, const Grads* grads,
                  double lo, double hi, uintptr_t stream_handle) {
  const int64_t B = f1.size(0), C = f1.size(1), D = z1.size(1), P = f1.inner(2), Q = f2.inner(2);
  if (B * P * Q == 0) return;
  DeviceGuard guard(f1.device_id, "correlation_loss");
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FF_DISPATCH_FLOAT(f1.dtype, "correlation_loss", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t *f1p = f1.ptr<scalar_t>(), *f2p = f2.ptr<scalar_t>();
    const scalar_t *z1p = z1.ptr<scalar_t>(), *z2p = z2.ptr<scalar_t>();
    const A *inv1 = st.inv1.ptr<A>(), *inv2 = st.inv2.ptr<A>(), *off1 = st.off1.ptr<A>();
    // Launch 1: rows = P, the loss and grad_z1. Launch 2: rows = Q (sides swapped), grad_z2.
    const int64_t pblocks = ceil_div(P, kT);
    launch("correlation_loss", "correlation_kernel", correlation_kernel<scalar_t>,
           grid_of("correlation_loss", pblocks * B), kThreads, 0, stream, f1p, f2p, z1p, z2p, inv1, inv2, off1,
           nullptr, bias.ptr<A>(), loss.ptr<A>(), grads ? grads->z1.ptr<A>() : nullptr, C, D, P, Q, A(lo), A(hi),
           unsigned(pblocks));
    if (grads == nullptr) return;
    const int64_t qblocks = ceil_div(Q, kT);
    launch("correlation_loss", "correlation_kernel (sides swapped)", correlation_kernel<scalar_t>,
           grid_of("correlation_loss", qblocks * B), kThreads, 0, stream, f2p, f1p, z2p, z1p, inv2, inv1, nullptr,
           off1, bias.ptr<A>(), nullptr, grads->z2.ptr<A>(), C, D, Q, P, A(lo), A(hi), unsigned(qblocks));
  });
}

}  // namespace fussfast::correlation
