// A small strided matrix product for the CPU kernels' tiles (no BLAS: the build stays
// dependency-free). C[m, n] (+)= sum_k A(m, k) * B(k, n), where A(m, k) = a[m * a_m + k * a_k]
// and B(k, n) = b[k * b_k + n * b_n], so any transposition is just a choice of strides.
// float runs a register-blocked kernel, compiled twice (baseline and AVX2+FMA) and picked at
// run time; double takes plain loops (it serves the float64 tests, not speed).
#pragma once

#include <cstdint>

namespace fussfast::cpu {

struct GemmArgs {
  int64_t M, N, K;
  int64_t a_m, a_k, b_k, b_n, ldc;
  bool accumulate;  // C += A B instead of C = A B
};

void gemm(const GemmArgs& g, const float* a, const float* b, float* c);
void gemm(const GemmArgs& g, const double* a, const double* b, double* c);

// Which float kernel this machine runs: "avx2" or "baseline".
const char* gemm_isa();

}  // namespace fussfast::cpu
