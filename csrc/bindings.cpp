// The one Python binding of fussfast._C. Tensors arrive through DLPack (no copy, no torch at
// build time), are checked against each op's contract and dispatched to the CPU or CUDA kernel.
// The Python layer has already validated user input and allocated every output; the checks here
// guard the internal contract with messages that still name the op and the argument.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>
#include <vector>

#include "common/gemm_cpu.h"
#include "common/tensor.h"
#include "back_ce/back_ce.h"
#include "cluster/cluster.h"
#include "correlation/correlation.h"
#include "kmeans/kmeans.h"
#include "maximin/maximin.h"
#include "region_pool/region_pool.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef FUSSFAST_WITH_CUDA
#include <cuda_runtime.h>
#endif
#ifdef FUSSFAST_SIMT
#include "staging.h"  // csrc/testing/simt: CPU tensors run the CUDA code under the emulator
#endif
#ifndef FUSSFAST_MODULE_NAME
#define FUSSFAST_MODULE_NAME _C
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
#ifdef FUSSFAST_SIMT
  simt::stage(name, t);
#endif
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

void expect_same_device(const std::string& op, const std::vector<const Tensor*>& ts) {
  const Tensor* first = ts.front();
  for (const Tensor* t : ts)
    expect(t->device == first->device && t->device_id == first->device_id, op,
           "all tensors must be on the same device");
}

void expect_floating(const std::string& op, const std::string& name, const Tensor& t) {
  expect(t.dtype != DType::i32 && t.dtype != DType::i64, op, name + " must be floating");
}

// The accumulation type of the kernels for inputs of type t.
DType accumulation(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// Runs cpu() or cuda() for the device of t.
template <class Cpu, class Cuda>
void on_device(const std::string& op, const Tensor& t, Cpu cpu, Cuda cuda) {
#ifdef FUSSFAST_SIMT
  (void)op, (void)t, (void)cpu;
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
}

// ---- region_pool -----------------------------------------------------------------------------

// Shapes shared by forward and backward: features [B, D, *S], regions [B, *S], acc [B, K, D].
struct RegionPoolShape {
  int64_t B, D, P, K;
};

RegionPoolShape check_region_pool(const std::string& op, const Tensor& features,
                                  const Tensor& regions, const Tensor& acc, const Tensor& counts) {
  expect_floating(op, "embeddings", features);
  expect(features.ndim >= 2 && regions.ndim >= 1 && regions.size(0) == features.size(0), op,
         "embeddings must be [B, D, ...] and regions [B, ...]");
  expect(counts.ndim == 2, op, "counts must be [B, K]");
  RegionPoolShape s{features.size(0), features.size(1), 0, counts.size(1)};
  s.P = s.B > 0 ? regions.numel() / s.B : 0;
  expect(features.numel() == s.B * s.D * s.P, op,
         "embeddings " + features.shape_str() + " and labels " + regions.shape_str() +
             " disagree in spatial size");
  expect_dtype(op, "regions", regions, DType::i32);
  expect_dtype(op, "acc", acc, accumulation(features.dtype));
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

// ---- cluster_assign / cluster_labels ---------------------------------------------------------

void cluster_forward(In z_a, In c_a, double alpha, std::optional<Out> probs_a,
                     std::optional<Out> labels_a, std::optional<Out> total_a,
                     std::optional<Out> grad_z_a, std::optional<Out> grad_c_a, uintptr_t stream) {
  const std::string op = "cluster_assign";
  Tensor z = view(op, "codes", z_a), c = view(op, "centroids", c_a);
  expect(z.ndim >= 2 && c.ndim == 2, op, "codes must be [B, D, ...] and centroids [K, D]");
  expect_floating(op, "codes", z);
  expect(c.dtype == z.dtype, op, "codes and centroids must share a dtype");
  const int64_t B = z.size(0), D = z.size(1), P = z.inner(2), K = c.size(0);
  expect(c.size(1) == D && K >= 1, op,
         "centroids " + c.shape_str() + " must be [K, D] with D = " + std::to_string(D));
  const DType acc = accumulation(z.dtype);
  std::vector<const Tensor*> all{&z, &c};
  cluster::Outputs out;
  Tensor probs, labels, total, grad_z, grad_c;
  if (probs_a) {
    probs = view(op, "probs", *probs_a);
    expect_dtype(op, "probs", probs, z.dtype);
    expect(probs.numel() == B * K * P, op, "probs must be [B, K, ...]");
    out.probs = &probs;
  }
  if (labels_a) {
    labels = view(op, "labels", *labels_a);
    expect_dtype(op, "labels", labels, DType::i64);
    expect(labels.numel() == B * P, op, "labels must be [B, ...]");
    out.labels = &labels;
  }
  if (total_a) {
    total = view(op, "total", *total_a);
    expect_dtype(op, "total", total, acc);
    expect_shape(op, "total", total, {B});
    out.total = &total;
  }
  if (grad_z_a) {
    grad_z = view(op, "grad_codes", *grad_z_a);
    expect_dtype(op, "grad_codes", grad_z, acc);
    expect(grad_z.numel() == z.numel(), op, "grad_codes must have the codes' shape");
    out.grad_z = &grad_z;
  }
  if (grad_c_a) {
    grad_c = view(op, "grad_centroids", *grad_c_a);
    expect_dtype(op, "grad_centroids", grad_c, acc);
    expect_shape(op, "grad_centroids", grad_c, {B, K, D});
    out.grad_c = &grad_c;
  }
  for (const Tensor* t : {out.probs, out.labels, out.total, out.grad_z, out.grad_c})
    if (t) all.push_back(t);
  expect_same_device(op, all);
  nb::gil_scoped_release release;
  on_device(
      op, z, [&] { cluster::forward_cpu(z, c, alpha, out); },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        cluster::forward_cuda(z, c, alpha, out, stream);
#endif
      });
}

// ---- back_ce ---------------------------------------------------------------------------------

void back_ce_forward(In logits_a, In labels_a, In present_a, int64_t ignore_index, Out loss_a,
                     std::optional<Out> grad_a, uintptr_t stream) {
  const std::string op = "back_ce";
  Tensor logits = view(op, "logits", logits_a), labels = view(op, "labels", labels_a);
  Tensor present = view(op, "present", present_a), loss = view(op, "loss", loss_a), grad;
  expect(logits.dtype == DType::f32 || logits.dtype == DType::f64, op, "logits must be float32 or float64");
  expect(logits.ndim >= 2, op, "logits must be [B, K, ...]");
  const int64_t B = logits.size(0), K = logits.size(1), P = logits.inner(2);
  expect(K >= 1, op, "logits must have at least one class");
  expect_dtype(op, "labels", labels, DType::i64);
  expect(labels.numel() == B * P && labels.size(0) == B, op, "labels must be [B, ...] with the logits' pixels");
  expect_dtype(op, "present", present, DType::i32);
  expect_shape(op, "present", present, {B, K});
  expect_dtype(op, "loss", loss, logits.dtype);
  expect(loss.numel() == B * P, op, "loss must be [B, ...]");
  std::vector<const Tensor*> all{&logits, &labels, &present, &loss};
  if (grad_a) {
    grad = view(op, "grad", *grad_a);
    expect_dtype(op, "grad", grad, logits.dtype);
    expect(grad.numel() == logits.numel(), op, "grad must have the logits' shape");
    all.push_back(&grad);
  }
  expect_same_device(op, all);
  const Tensor* g = grad_a ? &grad : nullptr;
  nb::gil_scoped_release release;
  on_device(
      op, logits, [&] { back_ce::forward_cpu(logits, labels, present, ignore_index, loss, g); },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        back_ce::forward_cuda(logits, labels, present, ignore_index, loss, g, stream);
#endif
      });
}

// ---- correlation_loss ------------------------------------------------------------------------

struct PairShape {
  int64_t B, C, P, Q;
};

PairShape check_feature_pair(const std::string& op, const Tensor& f1, const Tensor& f2) {
  expect(f1.ndim >= 2 && f2.ndim >= 2, op, "feats must be [B, C, ...]");
  expect_floating(op, "feats", f1);
  expect(f2.dtype == f1.dtype, op, "feats1 and feats2 must share a dtype");
  PairShape s{f1.size(0), f1.size(1), f1.inner(2), f2.inner(2)};
  expect(f2.size(0) == s.B && f2.size(1) == s.C, op,
         "feats1 " + f1.shape_str() + " and feats2 " + f2.shape_str() + " must share B and C");
  return s;
}

correlation::Stats view_stats(const std::string& op, const PairShape& s, DType acc, In inv1,
                              In inv2, In off1, In pair_mean, In centre) {
  correlation::Stats st{view(op, "inv1", inv1), view(op, "inv2", inv2), view(op, "off1", off1),
                        view(op, "pair_mean", pair_mean), view(op, "centre", centre)};
  const std::vector<std::pair<const Tensor*, std::vector<int64_t>>> want{
      {&st.inv1, {s.B, s.P}}, {&st.inv2, {s.B, s.Q}}, {&st.off1, {s.B, s.P}},
      {&st.pair_mean, {s.B}}, {&st.centre, {s.B, 2, s.C}}};
  for (const auto& [t, shape] : want) {
    expect_dtype(op, "statistics", *t, acc);
    expect_shape(op, "statistics", *t, shape);
  }
  return st;
}

void correlation_stats(In f1_a, In f2_a, In inv1, In inv2, In off1, In pair_mean, In centre,
                       bool pointwise, uintptr_t stream) {
  const std::string op = "correlation_loss";
  Tensor f1 = view(op, "feats1", f1_a), f2 = view(op, "feats2", f2_a);
  auto s = check_feature_pair(op, f1, f2);
  auto st = view_stats(op, s, accumulation(f1.dtype), inv1, inv2, off1, pair_mean, centre);
  expect_same_device(op, {&f1, &f2, &st.inv1, &st.inv2, &st.off1, &st.pair_mean, &st.centre});
  nb::gil_scoped_release release;
  on_device(
      op, f1, [&] { correlation::stats_cpu(f1, f2, st, pointwise); },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        correlation::stats_cuda(f1, f2, st, pointwise, stream);
#endif
      });
}

void correlation_forward(In f1_a, In f2_a, In z1_a, In z2_a, In inv1, In inv2, In off1,
                         In pair_mean, In centre, In bias_a, Out loss_a, std::optional<Out> gz1_a,
                         std::optional<Out> gz2_a, double lo, double hi, uintptr_t stream) {
  const std::string op = "correlation_loss";
  Tensor f1 = view(op, "feats1", f1_a), f2 = view(op, "feats2", f2_a);
  Tensor z1 = view(op, "codes1", z1_a), z2 = view(op, "codes2", z2_a);
  Tensor bias = view(op, "bias", bias_a), loss = view(op, "loss", loss_a);
  auto s = check_feature_pair(op, f1, f2);
  const DType acc = accumulation(f1.dtype);
  auto st = view_stats(op, s, acc, inv1, inv2, off1, pair_mean, centre);
  expect(z1.ndim >= 2 && z2.ndim >= 2, op, "codes must be [B, D, ...]");
  const int64_t D = z1.size(1);
  expect(z1.size(0) == s.B && z2.size(0) == s.B && z2.size(1) == D && z1.inner(2) == s.P &&
             z2.inner(2) == s.Q,
         op, "codes1 " + z1.shape_str() + " / codes2 " + z2.shape_str() +
                 " must match the feature maps " + f1.shape_str() + " / " + f2.shape_str());
  expect(z1.dtype == f1.dtype && z2.dtype == f1.dtype, op, "feats and codes must share a dtype");
  expect_dtype(op, "bias", bias, acc);
  expect_shape(op, "bias", bias, {s.B});
  expect_dtype(op, "loss", loss, acc);
  expect_shape(op, "loss", loss, {s.B});
  expect(gz1_a.has_value() == gz2_a.has_value(), op, "pass both code gradients or neither");
  std::vector<const Tensor*> all{&f1, &f2, &z1, &z2, &bias, &loss, &st.inv1, &st.inv2, &st.off1, &st.pair_mean, &st.centre};
  correlation::Grads grads;
  if (gz1_a) {
    grads = {view(op, "grad_codes1", *gz1_a), view(op, "grad_codes2", *gz2_a)};
    expect_dtype(op, "grad_codes1", grads.z1, acc);
    expect_dtype(op, "grad_codes2", grads.z2, acc);
    expect(grads.z1.numel() == z1.numel() && grads.z2.numel() == z2.numel(), op,
           "code gradients must have the codes' shapes");
    all.push_back(&grads.z1);
    all.push_back(&grads.z2);
  }
  expect_same_device(op, all);
  const correlation::Grads* g = gz1_a ? &grads : nullptr;
  nb::gil_scoped_release release;
  on_device(
      op, f1, [&] { correlation::forward_cpu(f1, f2, z1, z2, st, bias, loss, g, lo, hi); },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        correlation::forward_cuda(f1, f2, z1, z2, st, bias, loss, g, lo, hi, stream);
#endif
      });
}

// ---- kmeans / maximin ------------------------------------------------------------------------

Tensor check_points(const std::string& op, In points_a) {
  Tensor x = view(op, "points", points_a);
  expect(x.ndim == 2 && x.size(0) > 0 && x.size(1) > 0, op, "points must be a non-empty [M, D] array with D >= 1");
  expect(x.dtype == DType::f32 || x.dtype == DType::f64, op, "points must be float32 or float64");
  return x;
}

nb::tuple run_kmeans(In points_a, std::optional<In> weights_a, int64_t k, int64_t n_init,
                 int64_t max_iter, double tol, uint64_t seed, bool cosine, Out centroids_a,
                 Out labels_a, uintptr_t stream) {
  const std::string op = "kmeans";
  Tensor x = check_points(op, points_a);
  const int64_t M = x.size(0), D = x.size(1);
  expect(k >= 1 && k <= M && n_init >= 1 && max_iter >= 1 && tol >= 0, op,
         "k must be in [1, M]; n_init, max_iter >= 1; tol >= 0");
  Tensor centroids = view(op, "centroids", centroids_a), labels = view(op, "labels", labels_a);
  expect_dtype(op, "centroids", centroids, x.dtype);
  expect_shape(op, "centroids", centroids, {k, D});
  expect_dtype(op, "labels", labels, DType::i64);
  expect_shape(op, "labels", labels, {M});
  std::vector<const Tensor*> all{&x, &centroids, &labels};
  Tensor weights;
  if (weights_a) {
    weights = view(op, "weights", *weights_a);
    expect_dtype(op, "weights", weights, x.dtype);
    expect_shape(op, "weights", weights, {M});
    all.push_back(&weights);
  }
  expect_same_device(op, all);
  const kmeans::Options opt{k, n_init, max_iter, tol, seed, cosine};
  const Tensor* w = weights_a ? &weights : nullptr;
  kmeans::Result r{};
  {
    nb::gil_scoped_release release;
    on_device(
        op, x, [&] { r = kmeans::kmeans_cpu(x, w, opt, centroids, labels); },
        [&] {
#ifdef FUSSFAST_WITH_CUDA
          r = kmeans::kmeans_cuda(x, w, opt, centroids, labels, stream);
#endif
        });
  }
  return nb::make_tuple(r.inertia, r.n_iter);
}

void run_maximin(In points_a, bool cosine, int64_t start, Out indices_a, uintptr_t stream) {
  const std::string op = "maximin";
  Tensor x = check_points(op, points_a);
  Tensor indices = view(op, "indices", indices_a);
  expect_dtype(op, "indices", indices, DType::i64);
  expect(indices.ndim == 1 && indices.size(0) >= 1 && indices.size(0) <= x.size(0), op,
         "indices must be [k] with 1 <= k <= M");
  expect(start >= 0 && start < x.size(0), op, "start must be a point index");
  expect_same_device(op, {&x, &indices});
  nb::gil_scoped_release release;
  on_device(
      op, x, [&] { maximin::maximin_cpu(x, cosine, start, indices); },
      [&] {
#ifdef FUSSFAST_WITH_CUDA
        maximin::maximin_cuda(x, cosine, start, indices, stream);
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
  info["cpu_isa"] = cpu::gemm_isa();
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

#ifdef FUSSFAST_SIMT
#define FF_BIND(F) &simt::Staged<&F>::call
#else
#define FF_BIND(F) &F
#endif

NB_MODULE(FUSSFAST_MODULE_NAME, m) {
  m.doc() = "fussfast compiled kernels (CPU, and CUDA when built with nvcc)";
#ifdef FUSSFAST_SIMT
  simt::bind_controls(m);
#endif
  m.def("build_info", &build_info, "Version, CUDA and OpenMP facts of this build.");
  m.def("kmeans", FF_BIND(run_kmeans), nb::arg("points").noconvert(), nb::arg("weights").noconvert().none(),
        nb::arg("k"), nb::arg("n_init"), nb::arg("max_iter"), nb::arg("tol"), nb::arg("seed"),
        nb::arg("cosine"), nb::arg("centroids").noconvert(), nb::arg("labels").noconvert(),
        nb::arg("stream"));
  m.def("maximin", FF_BIND(run_maximin), nb::arg("points").noconvert(), nb::arg("cosine"), nb::arg("start"),
        nb::arg("indices").noconvert(), nb::arg("stream"));
  m.def("region_pool_forward", FF_BIND(region_pool_forward), nb::arg("embeddings").noconvert(),
        nb::arg("labels").noconvert(), nb::arg("acc").noconvert(), nb::arg("counts").noconvert(),
        nb::arg("means").noconvert(), nb::arg("regions").noconvert(), nb::arg("status").noconvert(),
        nb::arg("ignore_index"), nb::arg("normalize"), nb::arg("stream"));
  m.def("back_ce_forward", FF_BIND(back_ce_forward), nb::arg("logits").noconvert(), nb::arg("labels").noconvert(),
        nb::arg("present").noconvert(), nb::arg("ignore_index"), nb::arg("loss").noconvert(),
        nb::arg("grad").noconvert().none(), nb::arg("stream"));
  m.def("cluster_forward", FF_BIND(cluster_forward), nb::arg("codes").noconvert(),
        nb::arg("centroids").noconvert(), nb::arg("alpha"), nb::arg("probs").noconvert().none(),
        nb::arg("labels").noconvert().none(), nb::arg("total").noconvert().none(),
        nb::arg("grad_codes").noconvert().none(), nb::arg("grad_centroids").noconvert().none(),
        nb::arg("stream"));
  m.def("correlation_stats", FF_BIND(correlation_stats), nb::arg("feats1").noconvert(),
        nb::arg("feats2").noconvert(), nb::arg("inv1").noconvert(), nb::arg("inv2").noconvert(),
        nb::arg("off1").noconvert(), nb::arg("pair_mean").noconvert(), nb::arg("centre").noconvert(),
        nb::arg("pointwise"), nb::arg("stream"));
  m.def("correlation_forward", FF_BIND(correlation_forward), nb::arg("feats1").noconvert(),
        nb::arg("feats2").noconvert(), nb::arg("codes1").noconvert(), nb::arg("codes2").noconvert(),
        nb::arg("inv1").noconvert(), nb::arg("inv2").noconvert(), nb::arg("off1").noconvert(),
        nb::arg("pair_mean").noconvert(), nb::arg("centre").noconvert(), nb::arg("bias").noconvert(),
        nb::arg("loss").noconvert(), nb::arg("grad_codes1").noconvert().none(),
        nb::arg("grad_codes2").noconvert().none(), nb::arg("lo"), nb::arg("hi"), nb::arg("stream"));
  m.def("region_pool_backward", FF_BIND(region_pool_backward), nb::arg("grad_means").noconvert(),
        nb::arg("acc").noconvert(), nb::arg("counts").noconvert(), nb::arg("regions").noconvert(),
        nb::arg("grad_rows").noconvert(), nb::arg("grad_embeddings").noconvert(),
        nb::arg("normalize"), nb::arg("stream"));
}
