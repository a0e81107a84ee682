// A small strided matrix product for the CPU kernels' tiles (no BLAS: the build stays
// dependency-free). C[m, n] (+)= sum_k A(m, k) * B(k, n), where A(m, k) = a[m * a_m + k * a_k]
// and B(k, n) = b[k * b_k + n * b_n], so any transposition is just a choice of strides.
// Compiled once per instruction set (isa.h); a kernel file's `cpu::gemm` is its own build's.
// float runs a register-blocked kernel as wide as the build's vectors; 16-bit operands are
// widened to float while they are packed (the avx512 build multiplies bfloat16 on AMX tiles, or
// with vdpbf16ps, where the CPU has them); double takes plain loops (it serves the float64 tests).
#pragma once

#include <cstdint>
#include <vector>

#include "dtype.h"
#include "isa.h"

namespace fussfast::cpu {

struct GemmArgs {
  int64_t M, N, K;
  int64_t a_m, a_k, b_k, b_n, ldc;
  bool accumulate;  // C += A B instead of C = A B
};

// An operand packed once for many products (e.g. a tile of A against every column block of B).
// Its layout belongs to the build that packed it; only that build's gemm may read it.
struct Packed {
  enum class Layout : uint8_t { float_panels, bf16_pairs, amx_bf16 };
  int64_t rows = 0, K = 0;
  Layout layout = Layout::float_panels;
  std::vector<float> panels;   // float_panels
  std::vector<uint16_t> bf16;  // bf16_pairs (vdpbf16ps) or amx_bf16 (AMX tiles)
};

// Column offsets of products on packed operands are multiples of this (every build, every layout).
constexpr int64_t kGemmColumnAlign = 96;

FF_CPU_DECLARE(
  void gemm(const GemmArgs& g, const float* a, const float* b, float* c);
  void gemm(const GemmArgs& g, const double* a, const double* b, double* c);
  void gemm(const GemmArgs& g, const bfloat16_t* a, const bfloat16_t* b, float* c);
  void gemm(const GemmArgs& g, const half_t* a, const half_t* b, float* c);
  // A(m, k) = x[m * s_m + k * s_k], m < M;  B(k, n) = x[k * s_k + n * s_n], n < N.
  void pack_a(const float* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out);
  void pack_a(const half_t* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out);
  void pack_a(const bfloat16_t* x, int64_t M, int64_t K, int64_t s_m, int64_t s_k, Packed& out);
  void pack_b(const float* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out);
  void pack_b(const half_t* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out);
  void pack_b(const bfloat16_t* x, int64_t N, int64_t K, int64_t s_k, int64_t s_n, Packed& out);
  // C[m, j] (+)= sum_k A(m, k) B(k, n0 + j) for j < N; n0 a multiple of kGemmColumnAlign.
  void gemm(const Packed& a, const Packed& b, int64_t n0, int64_t N, float* c, int64_t ldc, bool accumulate);
)
using FF_ISA_NS::gemm;
using FF_ISA_NS::pack_a;
using FF_ISA_NS::pack_b;

}  // namespace fussfast::cpu
