// Storage types and conversions, identical on host and device, plus the dtype dispatch macros.
// Half types are stored as raw bits so one definition serves the CPU and CUDA kernels; all
// arithmetic happens in acc_t (float for the 16-bit types and float32, double for float64).
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"
#include "tensor.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fussfast {

struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

// L2 normalization divides by max(||x||, kNormEps), as STEGO's F.normalize(t, dim=1, eps=1e-10).
constexpr double kNormEps = 1e-10;

// The half-to-float32 rule, its one C++ definition: 16-bit and float32 inputs are computed in
// float, float64 in double (accumulation() in binding.h is its runtime form for the checks).
template <class T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <class T> using acc_t = typename acc_type<T>::type;

FF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

FF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN).
FF_HD float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t body = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa in float position
  uint32_t exp = body & 0x0f800000u;
  float mag;
  if (exp == 0x0f800000u) {  // inf / NaN: move to float's all-ones exponent
    mag = bits_to_float(body | 0x7f800000u);
  } else if (exp == 0) {  // zero / subnormal: value = mantissa * 2^-24, exact in float
    mag = bits_to_float(body + (113u << 23)) - bits_to_float(113u << 23);
  } else {
    mag = bits_to_float(body + ((127u - 15u) << 23));
  }
  return bits_to_float(float_to_bits(mag) | sign);
}

// binary32 -> binary16 with round-to-nearest-even, overflow to inf, NaN kept quiet.
FF_HD uint16_t float_to_half_bits(float f) {
  uint32_t x = float_to_bits(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (x < 0x38800000u) {                        // below the smallest normal half, 2^-14
    // Adding 0.5 puts the half-subnormal ulp (2^-24) at float's ulp, so the FPU rounds for us.
    float r = bits_to_float(x) + 0.5f;
    return sign | uint16_t(float_to_bits(r) - 0x3f000000u);
  }
  uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias exponent (-(127-15) << 23) and add the rounding bias
  return sign | uint16_t(x >> 13);
}

FF_HD float bf16_bits_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

FF_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

// load/store between storage and accumulation type
FF_HD float load(const float* p) { return *p; }
FF_HD double load(const double* p) { return *p; }
FF_HD float load(const half_t* p) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(p->bits));
#else
  return half_bits_to_float(p->bits);
#endif
}
FF_HD float load(const bfloat16_t* p) {
#if defined(__CUDA_ARCH__)
  return __bfloat162float(__ushort_as_bfloat16(p->bits));
#else
  return bf16_bits_to_float(p->bits);
#endif
}

FF_HD void store(float* p, float v) { *p = v; }
FF_HD void store(double* p, double v) { *p = v; }
FF_HD void store(half_t* p, float v) {
#if defined(__CUDA_ARCH__)
  p->bits = __half_as_ushort(__float2half_rn(v));
#else
  p->bits = float_to_half_bits(v);
#endif
}
FF_HD void store(bfloat16_t* p, float v) {
#if defined(__CUDA_ARCH__)
  p->bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
  p->bits = float_to_bf16_bits(v);
#endif
}

}  // namespace fussfast

// FF_DISPATCH_FLOAT(dtype, "op", [&] { kernel<scalar_t>(...); }) : runs the lambda with
// scalar_t bound to the storage type of dtype. FF_DISPATCH_ACC: the same for kernels written for
// the accumulation types only (the Python layer upcasts 16-bit inputs for them).
// FF_DISPATCH_INDEX binds index_t to an integer dtype.
#define FF_DISPATCH_CASE(ENUM, TYPE, NAME, ...) \
  case ::fussfast::DType::ENUM: {               \
    using NAME = TYPE;                          \
    __VA_ARGS__();                              \
    break;                                      \
  }

#define FF_DISPATCH_FAIL(DTYPE, OP, WHAT) \
  default:                                \
    ::fussfast::fail(OP, std::string(WHAT) + ::fussfast::dtype_name(DTYPE));

#define FF_DISPATCH_ACC_CASES(...)                    \
  FF_DISPATCH_CASE(f32, float, scalar_t, __VA_ARGS__) \
  FF_DISPATCH_CASE(f64, double, scalar_t, __VA_ARGS__)

#define FF_DISPATCH_FLOAT(DTYPE, OP, ...)                                 \
  switch (DTYPE) {                                                        \
    FF_DISPATCH_ACC_CASES(__VA_ARGS__)                                    \
    FF_DISPATCH_CASE(f16, ::fussfast::half_t, scalar_t, __VA_ARGS__)      \
    FF_DISPATCH_CASE(bf16, ::fussfast::bfloat16_t, scalar_t, __VA_ARGS__) \
    FF_DISPATCH_FAIL(DTYPE, OP, "unsupported floating dtype ")            \
  }

#define FF_DISPATCH_ACC(DTYPE, OP, ...)                                       \
  switch (DTYPE) {                                                            \
    FF_DISPATCH_ACC_CASES(__VA_ARGS__)                                        \
    FF_DISPATCH_FAIL(DTYPE, OP, "this kernel takes float32 or float64, got ") \
  }

#define FF_DISPATCH_INDEX(DTYPE, OP, ...)                   \
  switch (DTYPE) {                                          \
    FF_DISPATCH_CASE(i32, int32_t, index_t, __VA_ARGS__)    \
    FF_DISPATCH_CASE(i64, int64_t, index_t, __VA_ARGS__)    \
    FF_DISPATCH_FAIL(DTYPE, OP, "unsupported index dtype ") \
  }
