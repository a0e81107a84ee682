// region_pool's Python contract: region_pool_forward and region_pool_backward.
#include "../common/binding.h"
#include "region_pool.h"

namespace fussfast {
namespace {

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

void forward(In emb_a, In labels_a, Out acc_a, Out counts_a, Out means_a, Out regions_a, Out status_a,
             int64_t ignore_index, bool normalize, uintptr_t stream) {
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
  on_device(
      op, emb,
      [&] { region_pool::forward_cpu(emb, labels, acc, counts, means, regions, status, ignore_index, normalize); },
      [&] {
        FF_IF_CUDA(region_pool::forward_cuda(emb, labels, acc, counts, means, regions, status, ignore_index,
                                             normalize, stream));
      });
}

void backward(In grad_means_a, In acc_a, In counts_a, In regions_a, Out grad_rows_a, Out grad_emb_a,
              bool normalize, uintptr_t stream) {
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
  on_device(
      op, grad_emb,
      [&] { region_pool::backward_cpu(grad_means, acc, counts, regions, grad_rows, grad_emb, normalize); },
      [&] {
        FF_IF_CUDA(region_pool::backward_cuda(grad_means, acc, counts, regions, grad_rows, grad_emb, normalize,
                                              stream));
      });
}

}  // namespace

void bind_region_pool(nb::module_& m) {
  m.def("region_pool_forward", FF_BIND(forward), nb::arg("embeddings").noconvert(),
        nb::arg("labels").noconvert(), nb::arg("acc").noconvert(), nb::arg("counts").noconvert(),
        nb::arg("means").noconvert(), nb::arg("regions").noconvert(), nb::arg("status").noconvert(),
        nb::arg("ignore_index"), nb::arg("normalize"), nb::arg("stream"));
  m.def("region_pool_backward", FF_BIND(backward), nb::arg("grad_means").noconvert(),
        nb::arg("acc").noconvert(), nb::arg("counts").noconvert(), nb::arg("regions").noconvert(),
        nb::arg("grad_rows").noconvert(), nb::arg("grad_embeddings").noconvert(),
        nb::arg("normalize"), nb::arg("stream"));
}

}  // namespace fussfast
