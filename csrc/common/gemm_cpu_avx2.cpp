// The AVX2+FMA build of gemm_cpu.cpp (CMake adds -mavx2 -mfma to this file only).
#define FF_GEMM_AVX2 1
#include "gemm_cpu.cpp"
