// CUDA error checking and device selection, used by every .cu file and by the binding.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fussfast {

inline void cuda_check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + ": CUDA error in " + what + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// FF_CUDA_CHECK wraps a runtime call; FF_CHECK_LAUNCH goes right after every kernel launch.
#define FF_CUDA_CHECK(OP, EXPR) ::fussfast::cuda_check((EXPR), OP, #EXPR)
#define FF_CHECK_LAUNCH(OP, KERNEL) ::fussfast::cuda_check(cudaGetLastError(), OP, KERNEL " launch")

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    FF_CUDA_CHECK(op, cudaGetDevice(&previous_));
    if (previous_ != device) FF_CUDA_CHECK(op, cudaSetDevice(device));
    switched_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

inline unsigned int ceil_div(int64_t a, int64_t b) { return static_cast<unsigned int>((a + b - 1) / b); }

// Ops fold the batch into grid.x; refuse sizes past its limit instead of launching garbage.
inline void check_grid_x(const char* op, int64_t blocks_per_item, int64_t items) {
  if (blocks_per_item * items > 2147483647LL)
    throw std::invalid_argument(std::string(op) + ": input too large for one launch (" +
                                std::to_string(blocks_per_item * items) + " blocks)");
}

}  // namespace fussfast
