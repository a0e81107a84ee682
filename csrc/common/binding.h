// What every op's binding (csrc/<op>/<op>_binding.cpp) shares. Tensors arrive through DLPack (no
// copy, no torch at build time) and are checked against the op's internal contract: the Python
// layer has already validated user input and allocated every output, so these checks only guard
// that contract, with messages that still name the op and the argument.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dtype.h"
#include "tensor.h"

#ifdef FUSSFAST_SIMT
#include "staging.h"  // csrc/testing/simt: CPU tensors run the CUDA code under the emulator
#define FF_BIND(F) &simt::Staged<&F>::call
#else
#define FF_BIND(F) &F
#endif

// FF_IF_CUDA(code): code only in builds with the CUDA kernels.
#ifdef FUSSFAST_WITH_CUDA
#define FF_IF_CUDA(...) __VA_ARGS__
#else
#define FF_IF_CUDA(...)
#endif

namespace fussfast {

namespace nb = nanobind;
using In = nb::ndarray<nb::ro>;
using Out = nb::ndarray<>;

inline DType dtype_of(const std::string& op, const std::string& name, nb::dlpack::dtype t) {
  using code = nb::dlpack::dtype_code;
  if (t.lanes == 1) {
    if (t.code == uint8_t(code::Float) && t.bits == 32) return DType::f32;
    if (t.code == uint8_t(code::Float) && t.bits == 64) return DType::f64;
    if (t.code == uint8_t(code::Float) && t.bits == 16) return DType::f16;
    if (t.code == uint8_t(code::Bfloat) && t.bits == 16) return DType::bf16;
    if (t.code == uint8_t(code::Int) && t.bits == 32) return DType::i32;
    if (t.code == uint8_t(code::Int) && t.bits == 64) return DType::i64;
  }
  fail(op, name + ": unsupported dtype (code " + std::to_string(t.code) + ", " +
               std::to_string(t.bits) + " bits)");
}

// DLPack array -> Tensor view; refuses anything that would need a copy.
template <class Array>
Tensor view(const std::string& op, const std::string& name, const Array& a) {
  Tensor t;
  t.ndim = static_cast<int>(a.ndim());
  if (t.ndim > kMaxDims) fail(op, name + ": more than " + std::to_string(kMaxDims) + " dims");
  t.dtype = dtype_of(op, name, a.dtype());
  if (a.device_type() == nb::device::cpu::value) {
    t.device = Device::cpu;
  } else if (a.device_type() == nb::device::cuda::value) {
    t.device = Device::cuda;
  } else {
    fail(op, name + ": unsupported device type " + std::to_string(a.device_type()));
  }
  t.device_id = a.device_id();
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  int64_t expected = 1;  // C-contiguous strides, ignoring size-1 dims
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.shape[i] = static_cast<int64_t>(a.shape(i));
    if (t.shape[i] != 1 && a.stride(i) != expected && a.size() > 0)
      fail(op, name + " must be C-contiguous");
    expected *= t.shape[i];
  }
#ifdef FUSSFAST_SIMT
  simt::stage(name, t);
#endif
  return t;
}

// The view of an optional array, in t; nullptr when it is absent.
template <class Array>
const Tensor* view_optional(const std::string& op, const std::string& name, const std::optional<Array>& a,
                            Tensor& t) {
  if (!a) return nullptr;
  t = view(op, name, *a);
  return &t;
}

inline void expect(bool ok, const std::string& op, const std::string& msg) {
  if (!ok) fail(op, msg);
}

inline void expect_dtype(const std::string& op, const std::string& name, const Tensor& t, DType want) {
  expect(t.dtype == want, op, name + " must be " + dtype_name(want) + ", got " + dtype_name(t.dtype));
}

inline void expect_shape(const std::string& op, const std::string& name, const Tensor& t,
                         std::vector<int64_t> want) {
  bool ok = t.ndim == int(want.size());
  for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[i] == want[i];
  Tensor w;
  w.ndim = int(want.size());
  for (int i = 0; i < w.ndim; ++i) w.shape[i] = want[i];
  expect(ok, op, name + " must have shape " + w.shape_str() + ", got " + t.shape_str());
}

inline void expect_same_device(const std::string& op, const std::vector<const Tensor*>& ts) {
  const Tensor* first = ts.front();
  for (const Tensor* t : ts)
    expect(t->device == first->device && t->device_id == first->device_id, op,
           "all tensors must be on the same device");
}

inline void expect_floating(const std::string& op, const std::string& name, const Tensor& t) {
  expect(t.dtype != DType::i32 && t.dtype != DType::i64, op, name + " must be floating");
}

// The [M, D] points of kmeans and maximin.
inline Tensor view_points(const std::string& op, const In& points) {
  Tensor x = view(op, "points", points);
  expect(x.ndim == 2 && x.size(0) > 0 && x.size(1) > 0, op, "points must be a non-empty [M, D] array with D >= 1");
  expect(x.dtype == DType::f32 || x.dtype == DType::f64, op, "points must be float32 or float64");
  return x;
}

// The accumulation dtype of inputs of type t: acc_t (dtype.h) at run time, so kernels and
// checks cannot disagree.
inline DType accumulation(DType t) {
  bool wide = false;
  FF_DISPATCH_FLOAT(t, "accumulation", [&] { wide = std::is_same_v<acc_t<scalar_t>, double>; });
  return wide ? DType::f64 : DType::f32;
}

// Whether on_device runs the CPU kernel for t (the SIMT test build runs the CUDA code instead).
inline bool runs_cpu_kernel(const Tensor& t) {
#ifdef FUSSFAST_SIMT
  (void)t;
  return false;
#else
  return t.device == Device::cpu;
#endif
}

// Runs cpu() or cuda() for the device of t, without the GIL; the SIMT build always runs cuda().
// Running out of memory raises MemoryError naming the op and its first input's shape.
template <class Cpu, class Cuda>
void on_device(const std::string& op, const Tensor& t, Cpu cpu, Cuda cuda) {
  try {
    nb::gil_scoped_release release;
#ifdef FUSSFAST_SIMT
    (void)cpu;
    return cuda();
#endif
    if (t.device == Device::cpu) return cpu();
#ifdef FUSSFAST_WITH_CUDA
    return cuda();
#else
    (void)cuda;
    fail(op, "this fussfast build has no CUDA kernels (no nvcc at build time); reinstall with "
             "FUSSFAST_CUDA=on, or use backend=\"reference\"");
#endif
  } catch (const std::bad_alloc&) {  // the GIL is held again here
    const std::string msg = op + ": out of memory for the kernel's scratch (input of shape " + t.shape_str() +
                            " on " + (t.device == Device::cpu ? "cpu" : "cuda") + "); use smaller inputs";
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    throw nb::python_error();
  }
}

}  // namespace fussfast
