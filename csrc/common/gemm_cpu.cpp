// Implementation of gemm_cpu.h, compiled once per instruction set (see isa.h).
// Both operands are packed into panels (the micro-tile's rows / columns side by side for each k),
// widening 16-bit inputs to float on the way, then a register-blocked micro-kernel forms each
// kMR x kNR tile of C. With bfloat16 inputs on a CPU with AVX512_BF16 the panels stay bfloat16,
// k in pairs, and vdpbf16ps forms two products per lane (float accumulation).
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(FF_ISA_AVX512) || defined(FF_ISA_AVX2)
#include <immintrin.h>
#endif

#include "gemm_cpu.h"

namespace fussfast::cpu {
FF_ISA_BEGIN
namespace {

constexpr int kLanes = FF_ISA_FLOAT_LANES;
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));

constexpr int kMR = 2 * kLanes;  // rows of C per micro-tile (two vectors)
constexpr int kNR = 6;           // columns of C per micro-tile (broadcast operands)

// C[0:kMR, 0:kNR] = sum_k pa[k][0:kMR] * pb[k][0:kNR], written to out (row stride ldo).
inline void micro_kernel(int64_t K, const float* pa, const float* pb, float* out, int64_t ldo) {
  vec acc[kNR][2];
  std::memset(acc, 0, sizeof(acc));
  for (int64_t k = 0; k < K; ++k) {
    vec a0, a1;
    std::memcpy(&a0, pa + k * kMR, sizeof(vec));
    std::memcpy(&a1, pa + k * kMR + kLanes, sizeof(vec));
    for (int j = 0; j < kNR; ++j) {
      const float bj = pb[k * kNR + j];  // vector * scalar broadcasts
      acc[j][0] += a0 * bj;
      acc[j][1] += a1 * bj;
    }
  }
  for (int j = 0; j < kNR; ++j) {
    float col[kMR];
    std::memcpy(col, &acc[j][0], sizeof(vec));
    std::memcpy(col + kLanes, &acc[j][1], sizeof(vec));
    for (int i = 0; i < kMR; ++i) out[i * ldo + j] = col[i];
  }
}

// n contiguous inputs to float.
inline void widen(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void widen(const bfloat16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bits_to_float(uint32_t(src[i].bits) << 16);
}
inline void widen(const half_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(FF_ISA_AVX512) || defined(FF_ISA_AVX2)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i].bits);
}

// Copies the R x K operand X(r, k) = x[r * s_r + k * s_k] into float panels [R / W][K][W] (zero
// padding at the edge), reading the source along its contiguous index.
template <int W, class T>
void pack(const T* x, int64_t R, int64_t K, int64_t s_r, int64_t s_k, std::vector<float>& out) {
  const int64_t panels = (R + W - 1) / W;
  out.resize(panels * K * W);
  thread_local std::vector<float> row;
  if (s_k == 1) row.resize(K);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int64_t r0 = pn * W, w = std::min<int64_t>(W, R - r0);
    float* dst = out.data() + pn * K * W;
    const T* src = x + r0 * s_r;
    if (w < W) std::fill(dst, dst + K * W, 0.f);
    if (s_r == 1) {  // the panel's rows are contiguous for each k
      for (int64_t k = 0; k < K; ++k) widen(src + k * s_k, dst + k * W, w);
    } else if (s_k == 1) {  // each row is contiguous along k
      for (int64_t j = 0; j < w; ++j) {
        widen(src + j * s_r, row.data(), K);
        for (int64_t k = 0; k < K; ++k) dst[k * W + j] = row[k];
      }
    } else {
      for (int64_t j = 0; j < w; ++j)
        for (int64_t k = 0; k < K; ++k) widen(src + j * s_r + k * s_k, dst + k * W + j, 1);
    }
  }
}

// Adds or writes the valid part of a kMR x kNR tile into C.
inline void store_tile(const GemmArgs& g, const float* tile, int64_t i, int64_t j, float* c) {
  const int64_t rows = std::min<int64_t>(kMR, g.M - i * kMR), cols = std::min<int64_t>(kNR, g.N - j * kNR);
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = c + (i * kMR + r) * g.ldc + j * kNR;
    const float* src = tile + r * kNR;
    if (g.accumulate) {
      for (int64_t s = 0; s < cols; ++s) dst[s] += src[s];
    } else {
      for (int64_t s = 0; s < cols; ++s) dst[s] = src[s];
    }
  }
}

template <class T>
void gemm_packed(const GemmArgs& g, const T* a, const T* b, float* c) {
  if (g.M <= 0 || g.N <= 0) return;
  const int64_t mp = (g.M + kMR - 1) / kMR, np = (g.N + kNR - 1) / kNR;
  thread_local std::vector<float> pack_a, pack_b;
  pack<kMR>(a, g.M, g.K, g.a_m, g.a_k, pack_a);
  pack<kNR>(b, g.N, g.K, g.b_n, g.b_k, pack_b);
  float tile[kMR * kNR];
  for (int64_t i = 0; i < mp; ++i)
    for (int64_t j = 0; j < np; ++j) {
      micro_kernel(g.K, pack_a.data() + i * g.K * kMR, pack_b.data() + j * g.K * kNR, tile, kNR);
      store_tile(g, tile, i, j, c);
    }
}

#if defined(FF_ISA_AVX512)
#define FF_BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

// bfloat16 panels [R / W][ceil(K / 2)][W][2]: each 32-bit lane holds X(r, k), X(r, k + 1).
template <int W>
void pack_pairs(const bfloat16_t* x, int64_t R, int64_t K, int64_t s_r, int64_t s_k, std::vector<uint16_t>& out) {
  const int64_t panels = (R + W - 1) / W, K2 = (K + 1) / 2;
  out.assign(panels * K2 * W * 2, 0);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int64_t r0 = pn * W, w = std::min<int64_t>(W, R - r0);
    uint16_t* dst = out.data() + pn * K2 * W * 2;
    for (int64_t j = 0; j < w; ++j)
      for (int64_t k = 0; k < K; ++k) dst[((k / 2) * W + j) * 2 + (k & 1)] = x[(r0 + j) * s_r + k * s_k].bits;
  }
}

FF_BF16_TARGET void micro_kernel_bf16(int64_t K2, const uint16_t* pa, const uint16_t* pb, float* out) {
  __m512 acc[kNR][2];
  for (int j = 0; j < kNR; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    const __m512bh a0 = (__m512bh)_mm512_loadu_si512(pa + k * kMR * 2);
    const __m512bh a1 = (__m512bh)_mm512_loadu_si512(pa + k * kMR * 2 + 32);
    for (int j = 0; j < kNR; ++j) {
      uint32_t pair;
      std::memcpy(&pair, pb + (k * kNR + j) * 2, 4);
      const __m512bh bj = (__m512bh)_mm512_set1_epi32(int(pair));
      acc[j][0] = _mm512_dpbf16_ps(acc[j][0], a0, bj);
      acc[j][1] = _mm512_dpbf16_ps(acc[j][1], a1, bj);
    }
  }
  for (int j = 0; j < kNR; ++j) {
    float col[kMR];
    _mm512_storeu_ps(col, acc[j][0]);
    _mm512_storeu_ps(col + 16, acc[j][1]);
    for (int i = 0; i < kMR; ++i) out[i * kNR + j] = col[i];
  }
}

void gemm_bf16_pairs(const GemmArgs& g, const bfloat16_t* a, const bfloat16_t* b, float* c) {
  if (g.M <= 0 || g.N <= 0) return;
  static_assert(kMR == 32, "the bf16 micro-kernel holds two 16-lane vectors of rows");
  const int64_t mp = (g.M + kMR - 1) / kMR, np = (g.N + kNR - 1) / kNR, K2 = (g.K + 1) / 2;
  thread_local std::vector<uint16_t> pack_a, pack_b;
  pack_pairs<kMR>(a, g.M, g.K, g.a_m, g.a_k, pack_a);
  pack_pairs<kNR>(b, g.N, g.K, g.b_n, g.b_k, pack_b);
  float tile[kMR * kNR];
  for (int64_t i = 0; i < mp; ++i)
    for (int64_t j = 0; j < np; ++j) {
      micro_kernel_bf16(K2, pack_a.data() + i * K2 * kMR * 2, pack_b.data() + j * K2 * kNR * 2, tile);
      store_tile(g, tile, i, j, c);
    }
}
#endif

}  // namespace

void gemm(const GemmArgs& g, const float* a, const float* b, float* c) { gemm_packed(g, a, b, c); }

void gemm(const GemmArgs& g, const half_t* a, const half_t* b, float* c) { gemm_packed(g, a, b, c); }

void gemm(const GemmArgs& g, const bfloat16_t* a, const bfloat16_t* b, float* c) {
#if defined(FF_ISA_AVX512)
  if (has_avx512_bf16()) return gemm_bf16_pairs(g, a, b, c);
#endif
  gemm_packed(g, a, b, c);
}

void gemm(const GemmArgs& g, const double* a, const double* b, double* c) {
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < g.K; ++k) s += a[m * g.a_m + k * g.a_k] * b[k * g.b_k + n * g.b_n];
      double& dst = c[m * g.ldc + n];
      dst = g.accumulate ? dst + s : s;
    }
}

FF_ISA_END
}  // namespace fussfast::cpu
