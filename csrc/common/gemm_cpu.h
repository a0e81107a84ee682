// A small strided matrix product for the CPU kernels' tiles (no BLAS: the build stays
// dependency-free). C[m, n] (+)= sum_k A(m, k) * B(k, n), where A(m, k) = a[m * a_m + k * a_k]
// and B(k, n) = b[k * b_k + n * b_n], so any transposition is just a choice of strides.
// Compiled once per instruction set (isa.h); a kernel file's `cpu::gemm` is its own build's.
// float runs a register-blocked kernel as wide as the build's vectors; 16-bit operands are
// widened to float while they are packed (the avx512 build multiplies bfloat16 pairs with
// vdpbf16ps where the CPU has it); double takes plain loops (it serves the float64 tests).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "isa.h"

namespace fussfast::cpu {

struct GemmArgs {
  int64_t M, N, K;
  int64_t a_m, a_k, b_k, b_n, ldc;
  bool accumulate;  // C += A B instead of C = A B
};

FF_CPU_DECLARE(
  void gemm(const GemmArgs& g, const float* a, const float* b, float* c);
  void gemm(const GemmArgs& g, const double* a, const double* b, double* c);
  void gemm(const GemmArgs& g, const bfloat16_t* a, const bfloat16_t* b, float* c);
  void gemm(const GemmArgs& g, const half_t* a, const half_t* b, float* c);
)
using FF_ISA_NS::gemm;

}  // namespace fussfast::cpu
