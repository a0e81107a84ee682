// CUDA error checking and device selection, used by every .cu file.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fussfast {

inline void cuda_check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": CUDA error in " + what + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// FF_CUDA_CHECK wraps a runtime call (launches go through launch.h, which checks them).
#define FF_CUDA_CHECK(OP, EXPR) ::fussfast::cuda_check((EXPR), OP, #EXPR)

// Whether `device` already has its primary context. Restoring a device that has none would
// create one (hundreds of MB) in a thread that never used it, so the guard below skips that,
// as PyTorch does. The driver is reached through the runtime, so nothing links libcuda.
inline bool has_primary_context(int device) {
#if defined(FUSSFAST_SIMT) || CUDART_VERSION < 12050
  (void)device;
  return true;
#else
  using DeviceGet = int (*)(int*, int);
  using ContextState = int (*)(int, unsigned*, int*);
  static const auto entry = [](const char* name) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return fn;
  };
  static const auto device_get = reinterpret_cast<DeviceGet>(entry("cuDeviceGet"));
  static const auto context_state = reinterpret_cast<ContextState>(entry("cuDevicePrimaryCtxGetState"));
  int handle = 0, active = 0;
  unsigned flags = 0;
  if (!device_get || !context_state || device_get(&handle, device) != 0) return true;  // unknown: restore
  return context_state(handle, &flags, &active) != 0 || active != 0;
#endif
}

// Makes `device` current for the scope; restores the caller's device afterwards when it has a
// context to restore to.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    FF_CUDA_CHECK(op, cudaGetDevice(&previous_));
    if (previous_ != device) {
      restore_ = has_primary_context(previous_);
      FF_CUDA_CHECK(op, cudaSetDevice(device));
    }
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// Device memory for one op, freed on every path out of the scope (errors included), on the
// stream that used it.
class DeviceBuffers {
 public:
  DeviceBuffers(const char* op, cudaStream_t stream) : op_(op), stream_(stream) {}
  ~DeviceBuffers() {
    for (void* p : owned_) cudaFreeAsync(p, stream_);
  }
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;

  template <class V>
  V* alloc(int64_t n) {
    if (n < 0 || uint64_t(n) > UINT64_MAX / 2 / sizeof(V))
      throw std::invalid_argument(std::string(op_) + ": scratch of " + std::to_string(n) + " elements is too large");
    void* p = nullptr;
    const size_t bytes = sizeof(V) * size_t(n > 0 ? n : 1);
    const cudaError_t err = cudaMallocAsync(&p, bytes, stream_);
    if (err == cudaErrorMemoryAllocation)
      throw std::bad_alloc();  // surfaces as MemoryError
    cuda_check(err, op_, "cudaMallocAsync");
    owned_.push_back(p);
    return static_cast<V*>(p);
  }

 private:
  const char* op_;
  cudaStream_t stream_;
  std::vector<void*> owned_;
};

}  // namespace fussfast
