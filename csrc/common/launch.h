// Kernel launches and shared-memory declarations, written once for nvcc and for the SIMT
// emulator (csrc/testing/simt), so that the same kernel and host code runs in both.
//
//   launch(op, "name", kernel<T>, grid, block, smem, stream, args...)   kernel<<<...>>>(args...)
//   launch_cooperative(...)                                             cudaLaunchCooperativeKernel
// Both return at once for an empty grid, opt in to more than 48 KiB of dynamic shared memory,
// and check the launch. grid_of() refuses grids past CUDA's limits with a ValueError.
//
// In kernels: FF_SHARED(type, name, [dims]) for __shared__ variables, FF_SHARED_ALIGNED for an
// explicit alignment, FF_DYNAMIC_SHARED for extern __shared__, smem_cast<T>(p) to view shared
// memory as another type. Under the emulator these are checked views (races, bounds).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_utils.h"

// Test-only kernel mutations: tests/test_simt.py builds the emulator with one of these set and
// checks that it reports the bug. 0 in every real build.
#ifndef FF_MUTATION
#define FF_MUTATION 0
#endif
#define FF_MUTATION_NO_BARRIER 1      // correlation: no barrier between using a tile and restaging it
#define FF_MUTATION_OFF_BY_ONE 2      // region_pool: reads one label past each image
#define FF_MUTATION_SHUFFLE_MASK 3    // cluster: a warp reduction whose mask leaves out lane 31
#define FF_MUTATION_DIVERGENT_BARRIER 4  // cluster: only threads with a pixel reach the barrier
#define FF_MUTATION_UNINITIALIZED 5   // maximin: half the threads skip writing their candidate

#ifdef FUSSFAST_SIMT
#define FF_SHARED(TYPE, NAME, ...)                      \
  static const ::simt::SharedSite NAME##_site_{#NAME}; \
  auto NAME = ::simt::shared_view<TYPE __VA_ARGS__>(NAME##_site_, alignof(TYPE))
#define FF_SHARED_ALIGNED(ALIGN, TYPE, NAME, ...)       \
  static const ::simt::SharedSite NAME##_site_{#NAME}; \
  auto NAME = ::simt::shared_view<TYPE __VA_ARGS__>(NAME##_site_, ALIGN)
#define FF_DYNAMIC_SHARED(TYPE, NAME) auto NAME = ::simt::SPtr<TYPE>{reinterpret_cast<TYPE*>(::simt::dynamic_shared())}
#else
#define FF_SHARED(TYPE, NAME, ...) __shared__ TYPE NAME __VA_ARGS__
#define FF_SHARED_ALIGNED(ALIGN, TYPE, NAME, ...) __shared__ __align__(ALIGN) TYPE NAME __VA_ARGS__
#define FF_DYNAMIC_SHARED(TYPE, NAME) extern __shared__ __align__(16) TYPE NAME[]
#endif

namespace fussfast {

#ifdef FUSSFAST_SIMT
template <class To, class From>
simt::SPtr<To> smem_cast(simt::SPtr<From> p) {
  return simt::reinterpret<To>(p);
}
#else
template <class To, class From>
__device__ __forceinline__ To* smem_cast(From* p) {
  return reinterpret_cast<To*>(p);
}
#endif

constexpr size_t kDefaultDynamicSmem = 48 * 1024;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A grid of x * y * z blocks, refused when past CUDA's limits (x < 2^31, y and z < 2^16).
inline dim3 grid_of(const char* op, int64_t x, int64_t y = 1, int64_t z = 1) {
  if (x > 2147483647LL || y > 65535 || z > 65535)
    throw std::invalid_argument(std::string(op) + ": input too large for one launch (grid of " +
                                std::to_string(x) + " x " + std::to_string(y) + " x " + std::to_string(z) +
                                " blocks)");
  return dim3(unsigned(x), unsigned(y), unsigned(z));
}

// The most dynamic shared memory `kernel` may use on the current device (with the opt-in).
template <class Kernel>
size_t dynamic_smem_limit(const char* op, Kernel* kernel) {
  int device = 0, optin = 0;
  FF_CUDA_CHECK(op, cudaGetDevice(&device));
  FF_CUDA_CHECK(op, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  FF_CUDA_CHECK(op, cudaFuncGetAttributes(&attr, kernel));
  return size_t(optin) > attr.sharedSizeBytes ? size_t(optin) - attr.sharedSizeBytes : 0;
}

namespace detail {
template <class Kernel>
bool prepare(const char* op, Kernel* kernel, dim3 grid, size_t smem) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return false;  // nothing to do
  if (smem > kDefaultDynamicSmem)
    FF_CUDA_CHECK(op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  return true;
}
}  // namespace detail

template <class... Params, class... Args>
void launch(const char* op, const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  if (!detail::prepare(op, kernel, grid, smem)) return;
#ifdef FUSSFAST_SIMT
  std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);  // converted as a launch does
  simt::launch(name, reinterpret_cast<const void*>(kernel), grid, block, smem, uintptr_t(stream), false,
               [&] { std::apply(kernel, values); });
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#endif
  cuda_check(cudaGetLastError(), op, name);
}

// A launch whose blocks are all resident at once, so that the kernel may call grid.sync().
template <class... Params, class... Args>
void launch_cooperative(const char* op, const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                        size_t smem, cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  if (!detail::prepare(op, kernel, grid, smem)) return;
  std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
#ifdef FUSSFAST_SIMT
  simt::launch(name, reinterpret_cast<const void*>(kernel), grid, block, smem, uintptr_t(stream), true,
               [&] { std::apply(kernel, values); });
#else
  auto pointers = std::apply([](auto&... v) { return std::array<void*, sizeof...(Params)>{&v...}; }, values);
  cuda_check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, pointers.data(),
                                         smem, stream),
             op, name);
#endif
  cuda_check(cudaGetLastError(), op, name);
}

}  // namespace fussfast
