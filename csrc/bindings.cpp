// The one Python binding of fussfast._C. Tensors arrive through DLPack (no copy, no torch at
// build time), are checked against each op's contract and dispatched to the CPU or CUDA kernel.
// The Python layer has already validated user input and allocated every output; the checks here
// guard the internal contract with messages that still name the op and the argument.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <string>
#include <vector>

#include "common/tensor.h"
#include "region_pool/region_pool.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef FUSSFAST_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace nb = nanobind;
using namespace fussfast;

namespace {

using In = nb::ndarray<nb::ro>;
using Out = nb::ndarray<>;

DType dtype_of(const std::string& op, const std::string& name, nb::dlpack::dtype t) {
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
  return t;
}

void expect(bool ok, const std::string& op, const std::string& msg) {
  if (!ok) fail(op, msg);
}

void expect_dtype(const std::string& op, const std::string& name, const Tensor& t, DType want) {
  expect(t.dtype == want, op,
         name + " must be " + dtype_name(want) + ", got " + dtype_name(t.dtype));
}

void expect_shape(const std::string& op, const std::string& name, const Tensor& t,
                  std::vector<int64_t> want) {
  bool ok = t.ndim == int(want.size());
  for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[i] == want[i];
  Tensor w;
  w.ndim = int(want.size());
  for (int i = 0; i < w.ndim; ++i) w.shape[i] = want[i];
  expect(ok, op, name + " must have shape " + w.shape_str() + ", got " + t.shape_str());
}

void expect_same_device(const std::string& op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = *ts.begin();
  for (const Tensor* t : ts)
    expect(t->device == first->device && t->device_id == first->device_id, op,
           "all tensors must be on the same device");
}

// Runs cpu() or cuda() for the device of t.
template <class Cpu, class Cuda>
void on_device(const std::string& op, const Tensor& t, Cpu cpu, Cuda cuda) {
  if (t.device == Device::cpu) return cpu();
#ifdef FUSSFAST_WITH_CUDA
  return cuda();
#else
  (void)cuda;
  fail(op, "this fussfast build has no CUDA kernels (no nvcc at build time); reinstall with "
           "FUSSFAST_CUDA=on, or use backend=\"reference\"");
#endif
}

// ---- region_pool -----------------------------------------------------------------------------

// Shapes shared by forward and backward: features [B, D, *S], regions [B, *S], acc [B, K, D].
struct RegionPoolShape {
  int64_t B, D, P, K;
};

RegionPoolShape check_region_pool(const std::string& op, const Tensor& features,
                                  const Tensor& regions, const Tensor& acc, const Tensor& counts) {
  expect(features.dtype != DType::i32 && features.dtype != DType::i64, op,
         "embeddings must be floating");
  expect(features.ndim >= 2 && regions.ndim >= 1 && regions.size(0) == features.size(0), op,
         "embeddings must be [B, D, ...] and regions [B, ...]");
  expect(counts.ndim == 2, op, "counts must be [B, K]");
  RegionPoolShape s{features.size(0), features.size(1), 0, counts.size(1)};
  s.P = s.B > 0 ? regions.numel() / s.B : 0;
  expect(features.numel() == s.B * s.D * s.P, op,
         "embeddings " + features.shape_str() + " and labels " + regions.shape_str() +
             " disagree in spatial size");
  expect_dtype(op, "regions", regions, DType::i32);
  expect_dtype(op, "acc", acc, features.dtype == DType::f64 ? DType::f64 : DType::f32);
  expect_shape(op, "acc", acc, {s.B, s.K, s.D});
  expect_dtype(op, "counts", counts, DType::i64);
  expect_shape(op, "counts", counts, {s.B, s.K});
  return s;
}

void region_pool_forward(In emb_a, In labels_a, Out acc_a, Out counts_a, Out means_a,
                         Out regions_a, Out status_a, int64_t ignore_index, bool normalize,
                         uintptr_t stream) {
  const std::string op = "region_pool";
  Tensor emb = view(op, "embeddings", emb_a), labels = view(op, "labels", labels_a);
  Tensor acc = view(op, "acc", acc_a), counts = view(op, "counts", counts_a);
  Tensor means = view(op, "means", means_a), regions = view(op, "regions", regions_a);
  Tensor status = view(op, "status", status_a);
  auto s = check_region_pool(op, emb, regions, acc, counts);
  expect(labels.dtype == DType::i32 || labels.dtype == DType::i64, op,
         "labels must be int32 or int64");
  expect(labels.numel() == regions.numel(), op, "labels and regions must have one entry per pixel");
  expect_dtype(op, "means", means, emb.dtype);
  expect_shape(op, "means", means, {s.B, s.K, s.D});
  expect_dtype(op, "status", status, DType::i32);
  expect_shape(op, "status", status, {1});
  expect_same_device(op, {&emb, &labels, &acc, &counts, &means, &regions, &status});
  nb::gil_scoped_release release;
  on_device(
      op, emb,
      [&] {
        region_pool::forward_cpu(emb, labels, acc, counts, means, regions, status, ignore_index,
                                 normalize);
      },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        region_pool::forward_cuda(emb, labels, acc, counts, means, regions, status, ignore_index,
                                  normalize, stream);
#endif
      });
}

void region_pool_backward(In grad_means_a, In acc_a, In counts_a, In regions_a, Out grad_rows_a,
                          Out grad_emb_a, bool normalize, uintptr_t stream) {
  const std::string op = "region_pool_backward";
  Tensor grad_means = view(op, "grad_means", grad_means_a), acc = view(op, "acc", acc_a);
  Tensor counts = view(op, "counts", counts_a), regions = view(op, "regions", regions_a);
  Tensor grad_rows = view(op, "grad_rows", grad_rows_a);
  Tensor grad_emb = view(op, "grad_embeddings", grad_emb_a);
  auto s = check_region_pool(op, grad_emb, regions, acc, counts);
  expect_dtype(op, "grad_means", grad_means, grad_emb.dtype);
  expect_shape(op, "grad_means", grad_means, {s.B, s.K, s.D});
  expect_dtype(op, "grad_rows", grad_rows, acc.dtype);
  expect_shape(op, "grad_rows", grad_rows, {s.B, s.K, s.D});
  expect_same_device(op, {&grad_means, &acc, &counts, &regions, &grad_rows, &grad_emb});
  nb::gil_scoped_release release;
  on_device(
      op, grad_emb,
      [&] {
        region_pool::backward_cpu(grad_means, acc, counts, regions, grad_rows, grad_emb, normalize);
      },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        region_pool::backward_cuda(grad_means, acc, counts, regions, grad_rows, grad_emb,
                                   normalize, stream);
#endif
      });
}

// ---- build information -----------------------------------------------------------------------

nb::dict build_info() {
  nb::dict info;
  info["version"] = FUSSFAST_VERSION;
#ifdef FUSSFAST_WITH_CUDA
  info["cuda_compiled"] = true;
  nb::list archs;
  std::string all = FUSSFAST_CUDA_ARCHS;
  for (size_t start = 0; start <= all.size();) {
    size_t end = all.find(',', start);
    if (end == std::string::npos) end = all.size();
    if (end > start) archs.append(all.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cuda_runtime_version"] =
      std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
#else
  info["cuda_compiled"] = false;
  info["cuda_archs"] = nb::list();
  info["cuda_runtime_version"] = nb::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["num_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["num_threads"] = 1;
#endif
  return info;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "fussfast compiled kernels (CPU, and CUDA when built with nvcc)";
  m.def("build_info", &build_info, "Version, CUDA and OpenMP facts of this build.");
  m.def("region_pool_forward", &region_pool_forward, nb::arg("embeddings").noconvert(),
        nb::arg("labels").noconvert(), nb::arg("acc").noconvert(), nb::arg("counts").noconvert(),
        nb::arg("means").noconvert(), nb::arg("regions").noconvert(), nb::arg("status").noconvert(),
        nb::arg("ignore_index"), nb::arg("normalize"), nb::arg("stream"));
  m.def("region_pool_backward", &region_pool_backward, nb::arg("grad_means").noconvert(),
        nb::arg("acc").noconvert(), nb::arg("counts").noconvert(), nb::arg("regions").noconvert(),
        nb::arg("grad_rows").noconvert(), nb::arg("grad_embeddings").noconvert(),
        nb::arg("normalize"), nb::arg("stream"));
}
