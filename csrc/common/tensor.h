// A plain, framework-free view of a dense tensor. The bindings (common/binding.h) build these
// from DLPack arrays after validating them, so kernel sources never see nanobind or Python.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fussfast {

enum class DType { f32, f64, f16, bf16, i32, i64 };
enum class Device { cpu, cuda };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
  }
  return "?";
}

constexpr int kMaxDims = 6;

// Always C-contiguous: the Python layer makes inputs contiguous and the binding checks it.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int device_id = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};

  int64_t size(int i) const { return shape[i]; }
  int64_t numel() const { return inner(0); }
  // Product of the sizes from dim `from` on: the spatial size P of an NCHW map is inner(2).
  int64_t inner(int from) const {
    int64_t n = 1;
    for (int i = from; i < ndim; ++i) n *= shape[i];
    return n;
  }
  template <class T> T* ptr() const { return static_cast<T*>(data); }

  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// Thrown for bad arguments; surfaces in Python as ValueError.
[[noreturn]] inline void fail(const std::string& op, const std::string& msg) {
  throw std::invalid_argument(op + ": " + msg);
}

}  // namespace fussfast
