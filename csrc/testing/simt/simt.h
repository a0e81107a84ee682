// SIMT emulator: runs the unmodified CUDA kernel sources of csrc/ on the CPU, for tests.
//
// The .cu files are compiled as host C++ with include/ first on the include path, so their
// <cuda_runtime.h>, <mma.h>, <cooperative_groups.h> and <cub/cub.cuh> are the small headers
// there, which all come down to this one. Every thread of a block is a fiber; fibers switch at
// barriers, warp collectives, atomics and (at random, from the seed) at shared-memory accesses.
// Checked, each a simt::Violation naming kernel, block, thread and address:
//   - shared memory: data races within one barrier interval, reads of bytes never written,
//     accesses outside every shared allocation and indices outside a shared array's extent;
//   - barriers: a thread that exits, or waits at another __syncthreads, while others wait;
//   - warp collectives: a caller outside its mask, a mask naming lanes that exited, do not
//     exist or call another collective, and shuffle sources outside the mask;
//   - global memory: every tensor and device allocation lies between PROT_NONE guard pages,
//     so a read or write past either end faults and is reported (see Placement).
// Launch configuration errors (zero or oversized grids, too many threads, too much shared
// memory) set cudaGetLastError as CUDA does, so the host code's own checks run unchanged.
#pragma once

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// ---- CUDA keywords -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// __shared__ is left undefined on purpose: kernels declare shared memory with FF_SHARED, which
// here becomes a checked view (a plain __shared__ would be one variable for every block).

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace simt {

// The first failed check of a launch; the binding turns it into a Python RuntimeError.
struct Violation : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Fails the launch with this message (from kernel code: emulated library calls).
[[noreturn]] void report(const std::string& what);

// ---- per-thread identity -------------------------------------------------------------------
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();

// ---- synchronization -----------------------------------------------------------------------
void syncthreads(const char* file, int line);
void grid_sync(const char* file, int line);
void maybe_yield();  // a scheduling point (atomics)

enum class WarpOp { sync, shfl, shfl_xor, shfl_down, shfl_up, ballot, all, any, wmma };
// Waits for every lane of mask to call the same collective, then returns this lane's result.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line);

// ---- shared memory -------------------------------------------------------------------------
struct SharedSite {  // one FF_SHARED declaration (a static local, so one per instantiation)
  const char* name;
};
char* shared_alloc(const SharedSite& site, size_t bytes, size_t align);  // this block's copy
char* dynamic_shared();                                                   // extern __shared__
void shared_access(const void* p, size_t bytes, bool write);              // check and record
[[noreturn]] void shared_index_error(const SharedSite& site, int64_t index, size_t extent);

template <class T> struct SPtr;

// One element of shared memory: reads and writes go through the checker.
template <class T>
struct SRef {
  T* p;
  operator T() const {
    shared_access(p, sizeof(T), false);
    return *p;
  }
  SRef& operator=(const T& v) {
    shared_access(p, sizeof(T), true);
    *p = v;
    return *this;
  }
  SRef& operator=(const SRef& other) { return *this = T(other); }
  template <class V> SRef& operator+=(const V& v) { return *this = T(T(*this) + v); }
  template <class V> SRef& operator-=(const V& v) { return *this = T(T(*this) - v); }
  template <class V> SRef& operator*=(const V& v) { return *this = T(T(*this) * v); }
  template <class V> SRef& operator/=(const V& v) { return *this = T(T(*this) / v); }
  SPtr<T> operator&() const { return {p}; }
};

// A pointer into shared memory (dynamic shared memory, or the address of an element).
template <class T>
struct SPtr {
  T* p;
  SRef<T> operator*() const { return {p}; }
  SRef<T> operator[](int64_t i) const { return {p + i}; }
  SPtr operator+(int64_t i) const { return {p + i}; }
  SPtr operator-(int64_t i) const { return {p - i}; }
  SPtr& operator+=(int64_t i) { p += i; return *this; }
  operator SPtr<const T>() const { return {p}; }
};

// A statically sized shared array T[N]... : indices are checked against each extent.
template <class T>
struct SArray {
  using Elem = std::remove_extent_t<T>;
  static constexpr size_t kExtent = std::extent_v<T>;
  Elem* p;
  const SharedSite* site;
  auto operator[](int64_t i) const {
    if (i < 0 || size_t(i) >= kExtent) shared_index_error(*site, i, kExtent);
    if constexpr (std::is_array_v<Elem>) return SArray<Elem>{p[i], site};
    else return SRef<Elem>{p + i};
  }
};

template <class T>
auto shared_view(const SharedSite& site, size_t align) {
  char* p = shared_alloc(site, sizeof(T), align);
  if constexpr (std::is_array_v<T>) return SArray<T>{reinterpret_cast<std::remove_extent_t<T>*>(p), &site};
  else return SRef<T>{reinterpret_cast<T*>(p)};
}

template <class To, class From>
SPtr<To> reinterpret(SPtr<From> p) {
  return {reinterpret_cast<To*>(p.p)};
}

// ---- global memory -------------------------------------------------------------------------
// Where a buffer sits between its guard pages: its end against the next page (an access past
// the end faults) or its start against the previous one (an access before the start faults).
enum class Placement { end, start };

struct Options {
  uint64_t seed = 0;
  Placement placement = Placement::end;
  double yield_rate = 0.05;   // chance of a switch at a shared-memory access
  int multiprocessors = 2;    // what cudaDeviceGetAttribute reports
  int blocks_per_sm = 2;      // what the occupancy query reports
};
Options& options();

// A guarded copy of host memory (the binding stages every tensor through one) and its release.
void* guarded_alloc(size_t bytes, size_t align, const std::string& name, bool fill_garbage);
void guarded_free(void* p);
// Throws unless [p, p + bytes) lies in one live buffer (host-side copies, memsets, CUB).
void check_range(const char* what, const void* p, size_t bytes);
size_t live_device_allocations();

// ---- launches ------------------------------------------------------------------------------
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_smem;
  uintptr_t stream;
  bool cooperative;
};
void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
            uintptr_t stream, bool cooperative, const std::function<void()>& body);
const std::vector<LaunchRecord>& launches();  // since the last clear_launches()
void clear_launches();
void set_max_dynamic_smem(const void* kernel, int bytes);
int static_smem_of(const void* kernel);

}  // namespace simt

// ---- the CUDA device API, as the kernels spell it -------------------------------------------
#define threadIdx (::simt::thread_index())
#define blockIdx (::simt::block_index())
#define blockDim (::simt::block_dim())
#define gridDim (::simt::grid_dim())
// Call sites come from __builtin_FILE/LINE in default arguments, so messages name the line.
#define SIMT_HERE const char *file = __builtin_FILE(), int line = __builtin_LINE()

inline void __syncthreads(SIMT_HERE) { ::simt::syncthreads(file, line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, SIMT_HERE) {
  ::simt::warp_collective(::simt::WarpOp::sync, mask, 0, 0, 32, file, line);
}

namespace simt {
template <class V>
V shuffle(WarpOp op, unsigned mask, V v, int arg, int width, const char* file, int line) {
  static_assert(sizeof(V) <= 8 && std::is_trivially_copyable_v<V>, "shuffle of a type over 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(V));
  u = warp_collective(op, mask, u, arg, width, file, line);
  std::memcpy(&v, &u, sizeof(V));
  return v;
}
}  // namespace simt

template <class V>
V __shfl_sync(unsigned mask, V v, int src, int width = 32, SIMT_HERE) {
  return ::simt::shuffle(::simt::WarpOp::shfl, mask, v, src, width, file, line);
}
template <class V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32, SIMT_HERE) {
  return ::simt::shuffle(::simt::WarpOp::shfl_xor, mask, v, lane_mask, width, file, line);
}
template <class V>
V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32, SIMT_HERE) {
  return ::simt::shuffle(::simt::WarpOp::shfl_down, mask, v, int(delta), width, file, line);
}
template <class V>
V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32, SIMT_HERE) {
  return ::simt::shuffle(::simt::WarpOp::shfl_up, mask, v, int(delta), width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, SIMT_HERE) {
  return unsigned(::simt::warp_collective(::simt::WarpOp::ballot, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, SIMT_HERE) {
  return int(::simt::warp_collective(::simt::WarpOp::all, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, SIMT_HERE) {
  return int(::simt::warp_collective(::simt::WarpOp::any, mask, pred != 0, 0, 32, file, line));
}

// Atomics: one OS thread runs every fiber, so a plain read-modify-write is atomic; each is a
// scheduling point so that the order of a block's atomics varies with the seed.
template <class V>
inline V simt_atomic_add(V* p, V v) {
  ::simt::maybe_yield();
  V old = *p;
  *p = old + v;
  return old;
}
inline float atomicAdd(float* p, float v) { return simt_atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return simt_atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return simt_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return simt_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return simt_atomic_add(p, v); }

// Device math that CUDA has in the global namespace.
using std::exp;
using std::log;
using std::sqrt;
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

// 16-bit floating types of cuda_fp16.h / cuda_bf16.h (storage only; the kernels convert with
// fussfast's own bit-exact functions in common/dtype.h).
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
