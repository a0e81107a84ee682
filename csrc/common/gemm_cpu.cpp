// Implementation of gemm_cpu.h. This file is compiled twice: as is (baseline ISA, with the
// run-time dispatch), and through gemm_cpu_avx2.cpp with FF_GEMM_AVX2 and -mavx2 -mfma.
#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm_cpu.h"

#if defined(FF_GEMM_AVX2)
#define FF_GEMM_NS avx2
#else
#define FF_GEMM_NS baseline
#endif

namespace fussfast::cpu {
namespace FF_GEMM_NS {

#if defined(__GNUC__) || defined(__clang__)
#if defined(FF_GEMM_AVX2)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;  // SSE2 / NEON width
#endif
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
#else
constexpr int kLanes = 1;
typedef float vec;
#endif

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

// Copies the R x K operand X(r, k) = x[r * s_r + k * s_k] into panels [R / W][K][W] (zero
// padding at the edge), reading the source along its contiguous index.
template <int W>
void pack(const float* x, int64_t R, int64_t K, int64_t s_r, int64_t s_k, std::vector<float>& out) {
  const int64_t panels = (R + W - 1) / W;
  out.resize(panels * K * W);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int64_t r0 = pn * W, w = std::min<int64_t>(W, R - r0);
    float* dst = out.data() + pn * K * W;
    const float* src = x + r0 * s_r;
    if (w < W) std::fill(dst, dst + K * W, 0.f);
    if (s_r == 1 && w == W) {  // whole panel rows are contiguous: fixed-size copies
      for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * W, src + k * s_k, W * sizeof(float));
    } else if (s_r < s_k) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < w; ++j) dst[k * W + j] = src[j * s_r + k * s_k];
    } else {
      for (int64_t j = 0; j < w; ++j)
        for (int64_t k = 0; k < K; ++k) dst[k * W + j] = src[j * s_r + k * s_k];
    }
  }
}

void gemm_float(const GemmArgs& g, const float* a, const float* b, float* c) {
  const int64_t mp = (g.M + kMR - 1) / kMR, np = (g.N + kNR - 1) / kNR;
  thread_local std::vector<float> pack_a, pack_b;
  pack<kMR>(a, g.M, g.K, g.a_m, g.a_k, pack_a);
  pack<kNR>(b, g.N, g.K, g.b_n, g.b_k, pack_b);

  float tile[kMR * kNR];
  for (int64_t i = 0; i < mp; ++i) {
    for (int64_t j = 0; j < np; ++j) {
      micro_kernel(g.K, pack_a.data() + i * g.K * kMR, pack_b.data() + j * g.K * kNR, tile, kNR);
      const int64_t rows = std::min<int64_t>(kMR, g.M - i * kMR);
      const int64_t cols = std::min<int64_t>(kNR, g.N - j * kNR);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = c + (i * kMR + r) * g.ldc + j * kNR;
        for (int64_t s = 0; s < cols; ++s) dst[s] = g.accumulate ? dst[s] + tile[r * kNR + s] : tile[r * kNR + s];
      }
    }
  }
}

}  // namespace FF_GEMM_NS

#if !defined(FF_GEMM_AVX2)

#if defined(FUSSFAST_HAVE_AVX2_GEMM)
namespace avx2 {
void gemm_float(const GemmArgs& g, const float* a, const float* b, float* c);
}
static bool use_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
static bool use_avx2() { return false; }
#endif

void gemm(const GemmArgs& g, const float* a, const float* b, float* c) {
  if (g.M <= 0 || g.N <= 0) return;
#if defined(FUSSFAST_HAVE_AVX2_GEMM)
  if (use_avx2()) return avx2::gemm_float(g, a, b, c);
#endif
  baseline::gemm_float(g, a, b, c);
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

const char* gemm_isa() { return use_avx2() ? "avx2" : "baseline"; }

#endif  // !FF_GEMM_AVX2

}  // namespace fussfast::cpu
