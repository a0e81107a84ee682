// Implementation of gemm_cpu.h, compiled once per instruction set (see isa.h).
// Both operands are packed into panels (the micro-tile's rows / columns side by side for each k),
// widening 16-bit inputs to float on the way, then a register-blocked micro-kernel forms each
// kMR x kNR tile of C. bfloat16 inputs in the avx512 build stay bfloat16 where the CPU multiplies
// them natively: on AMX tiles (32 x 32 blocks), else with vdpbf16ps (k in pairs); both
// accumulate in float. (On a Sapphire Rapids core, vdpbf16ps was slower than widening to float:
// it issues on one port where float FMAs use two; AMX was faster than either.)
#include <algorithm>
#include <cstring>
#include <type_traits>
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
// columns of C per micro-tile (broadcast operands): 2 x kNR accumulators fill the registers
constexpr int kNR = FF_ISA_FLOAT_LANES == 16 ? 12 : 6;

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

// Adds or writes the part of a computed block (row stride ld) that lies inside C: the block's
// top-left is C[r0, c0], and C has M rows and N columns.
inline void store_block(const GemmArgs& g, const float* block, int64_t ld, int64_t rows, int64_t cols, int64_t r0,
                        int64_t c0, float* c) {
  rows = std::min<int64_t>(rows, g.M - r0);
  cols = std::min<int64_t>(cols, g.N - c0);
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = c + (r0 + r) * g.ldc + c0;
    const float* src = block + r * ld;
    if (g.accumulate) {
      for (int64_t s = 0; s < cols; ++s) dst[s] += src[s];
    } else {
      for (int64_t s = 0; s < cols; ++s) dst[s] = src[s];
    }
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
    if (s_k == 1) {  // each row is contiguous along k: k innermost
      for (int64_t j = 0; j < w; ++j)
        for (int64_t k = 0; k < K; ++k) dst[((k / 2) * W + j) * 2 + (k & 1)] = x[(r0 + j) * s_r + k].bits;
    } else {  // the rows are the contiguous index (or neither): walk them innermost
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < w; ++j) dst[((k / 2) * W + j) * 2 + (k & 1)] = x[(r0 + j) * s_r + k * s_k].bits;
    }
  }
}

FF_BF16_TARGET void micro_kernel_bf16(int64_t K2, const uint16_t* pa, const uint16_t* pb, float* out) {
  static_assert(kMR == 32, "two 16-lane vectors of rows");
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


// AMX: a 32 x 32 block of C is four 16 x 16 float tiles (tmm0-3), fed by two A tiles of 16 rows
// x 32 k (tmm4-5) and two B tiles of 16 k-pairs x 16 columns (tmm6-7) per block of 32 k.
#define FF_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
constexpr int64_t kAmxBlock = 32;

// A panels [R / 32][K / 32][32 rows][32 k], zero padded.
void pack_amx_a(const bfloat16_t* x, int64_t R, int64_t K, int64_t s_r, int64_t s_k, std::vector<uint16_t>& out) {
  const int64_t panels = (R + 31) / 32, KB = (K + 31) / 32;
  out.assign(panels * KB * 1024, 0);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int64_t r0 = pn * 32, w = std::min<int64_t>(32, R - r0);
    for (int64_t k = 0; k < K; ++k) {
      uint16_t* dst = out.data() + (pn * KB + k / 32) * 1024 + k % 32;
      for (int64_t j = 0; j < w; ++j) dst[j * 32] = x[(r0 + j) * s_r + k * s_k].bits;
    }
  }
}

// B panels [N / 32][K / 32][16 k-pairs][32 columns][2], zero padded.
void pack_amx_b(const bfloat16_t* x, int64_t N, int64_t K, int64_t s_n, int64_t s_k, std::vector<uint16_t>& out) {
  const int64_t panels = (N + 31) / 32, KB = (K + 31) / 32;
  out.assign(panels * KB * 1024, 0);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int64_t n0 = pn * 32, w = std::min<int64_t>(32, N - n0);
    for (int64_t k = 0; k < K; k += 2) {
      uint16_t* dst = out.data() + (pn * KB + k / 32) * 1024 + (k % 32) / 2 * 64;
      const bfloat16_t *row0 = x + n0 * s_n + k * s_k, *row1 = row0 + s_k;
      if (s_n == 1 && w == 32 && k + 1 < K) {  // interleave two contiguous rows (vectorizes)
        for (int j = 0; j < 32; ++j) dst[2 * j] = row0[j].bits, dst[2 * j + 1] = row1[j].bits;
      } else {
        for (int64_t j = 0; j < w; ++j) {
          dst[2 * j] = row0[j * s_n].bits;
          if (k + 1 < K) dst[2 * j + 1] = row1[j * s_n].bits;
        }
      }
    }
  }
}

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

FF_AMX_TARGET void amx_start() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  // GCC does not see that ldtilecfg reads the whole struct and drops the stores above without this.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

FF_AMX_TARGET void amx_stop() { _tile_release(); }

// out[32][32] (row stride ld floats) = the 32 x 32 block of A B for one A panel and one B panel.
FF_AMX_TARGET void micro_kernel_amx(int64_t KB, const uint16_t* pa, const uint16_t* pb, float* out, int64_t ld) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < KB; ++kb) {
    const uint16_t *a = pa + kb * 1024, *b = pb + kb * 1024;
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 16 * 32, 64);
    _tile_loadd(6, b, 128);
    _tile_loadd(7, b + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const int64_t stride = ld * int64_t(sizeof(float));
  _tile_stored(0, out, stride);
  _tile_stored(1, out + 16, stride);
  _tile_stored(2, out + 16 * ld, stride);
  _tile_stored(3, out + 16 * ld + 16, stride);
}
#endif

// Packs X(r, k) = x[r * s_r + k * s_k] as the A (is_a) or B operand: bfloat16 for AMX or
// vdpbf16ps where the CPU has them, else W-wide float panels.
template <int W, class T>
void pack_operand(const T* x, int64_t R, int64_t K, int64_t s_r, int64_t s_k, bool is_a, Packed& out) {
  out.rows = R;
  out.K = K;
#if defined(FF_ISA_AVX512)
  if constexpr (std::is_same_v<T, bfloat16_t>) {
    const Bf16 method = active_bf16();
    if (method == Bf16::amx) {
      out.layout = Packed::Layout::amx_bf16;
      return is_a ? pack_amx_a(x, R, K, s_r, s_k, out.bf16) : pack_amx_b(x, R, K, s_r, s_k, out.bf16);
    }
    if (method == Bf16::avx512bf16) {
      out.layout = Packed::Layout::bf16_pairs;
      return pack_pairs<W>(x, R, K, s_r, s_k, out.bf16);
    }
  }
#endif
  out.layout = Packed::Layout::float_panels;
  pack<W>(x, R, K, s_r, s_k, out.panels);
}

template <class T>
void gemm_strided(const GemmArgs& g, const T* a, const T* b, float* c) {
  if (g.M <= 0 || g.N <= 0) return;
  thread_local Packed pa, pb;
  pack_operand<kMR>(a, g.M, g.K, g.a_m, g.a_k, true, pa);
  pack_operand<kNR>(b, g.N, g.K, g.b_n, g.b_k, false, pb);
  gemm(pa, pb, 0, g.N, c, g.ldc, g.accumulate);
}

}  // namespace

void pack_a(const float* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out) {
  pack_operand<kMR>(x, M, K, s_m, s_k, true, out);
}
void pack_a(const half_t* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out) {
  pack_operand<kMR>(x, M, K, s_m, s_k, true, out);
}
void pack_a(const bfloat16_t* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out) {
  pack_operand<kMR>(x, M, K, s_m, s_k, true, out);
}
void pack_b(const float* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out) {
  pack_operand<kNR>(x, N, K, s_n, s_k, false, out);
}
void pack_b(const half_t* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out) {
  pack_operand<kNR>(x, N, K, s_n, s_k, false, out);
}
void pack_b(const bfloat16_t* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out) {
  pack_operand<kNR>(x, N, K, s_n, s_k, false, out);
}

void gemm(const Packed& a, const Packed& b, int64_t n0, int64_t N, float* c, int64_t ldc, bool accumulate) {
  if (a.rows <= 0 || N <= 0) return;
  static_assert(kGemmColumnAlign % kNR == 0, "column offsets must start a panel");
  const GemmArgs g{a.rows, N, a.K, 0, 0, 0, 0, ldc, accumulate};
#if defined(FF_ISA_AVX512)
  if (a.layout == Packed::Layout::amx_bf16) {
    static_assert(kGemmColumnAlign % kAmxBlock == 0, "column offsets must start an AMX panel");
    const int64_t KB = (a.K + 31) / 32, j0 = n0 / kAmxBlock;
    alignas(64) float block[kAmxBlock * kAmxBlock];
    amx_start();
    for (int64_t i = 0; i * kAmxBlock < a.rows; ++i)
      for (int64_t j = 0; j * kAmxBlock < N; ++j) {
        const uint16_t *pa = a.bf16.data() + i * KB * 1024, *pb = b.bf16.data() + (j0 + j) * KB * 1024;
        const bool inside = (i + 1) * kAmxBlock <= a.rows && (j + 1) * kAmxBlock <= N;
        if (inside && !accumulate) {  // straight into C
          micro_kernel_amx(KB, pa, pb, c + i * kAmxBlock * ldc + j * kAmxBlock, ldc);
        } else {
          micro_kernel_amx(KB, pa, pb, block, kAmxBlock);
          store_block(g, block, kAmxBlock, kAmxBlock, kAmxBlock, i * kAmxBlock, j * kAmxBlock, c);
        }
      }
    amx_stop();
    return;
  }
#endif
  const int64_t mp = (a.rows + kMR - 1) / kMR, np = (N + kNR - 1) / kNR, j0 = n0 / kNR;
  float tile[kMR * kNR];
#if defined(FF_ISA_AVX512)
  if (a.layout == Packed::Layout::bf16_pairs) {
    const int64_t K2 = (a.K + 1) / 2;
    for (int64_t i = 0; i < mp; ++i)
      for (int64_t j = 0; j < np; ++j) {
        micro_kernel_bf16(K2, a.bf16.data() + i * K2 * kMR * 2, b.bf16.data() + (j0 + j) * K2 * kNR * 2, tile);
        store_block(g, tile, kNR, kMR, kNR, i * kMR, j * kNR, c);
      }
    return;
  }
#endif
  for (int64_t i = 0; i < mp; ++i)
    for (int64_t j = 0; j < np; ++j) {
      micro_kernel(a.K, a.panels.data() + i * a.K * kMR, b.panels.data() + (j0 + j) * a.K * kNR, tile, kNR);
      store_block(g, tile, kNR, kMR, kNR, i * kMR, j * kNR, c);
    }
}

void gemm(const GemmArgs& g, const float* a, const float* b, float* c) { gemm_strided(g, a, b, c); }
void gemm(const GemmArgs& g, const half_t* a, const half_t* b, float* c) { gemm_strided(g, a, b, c); }
void gemm(const GemmArgs& g, const bfloat16_t* a, const bfloat16_t* b, float* c) { gemm_strided(g, a, b, c); }

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
