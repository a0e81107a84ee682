// cluster's Python contract: cluster_forward (cluster_assign and cluster_labels).
#include "../common/binding.h"
#include "cluster.h"

namespace fussfast {
namespace {

void forward(In z_a, In c_a, double alpha, std::optional<Out> probs_a, std::optional<Out> labels_a,
             std::optional<Out> total_a, std::optional<Out> grad_z_a, std::optional<Out> grad_c_a,
             bool normalize_codes, uintptr_t stream) {
  const std::string op = "cluster_assign";
  Tensor z = view(op, "codes", z_a), c = view(op, "centroids", c_a);
  expect(z.ndim >= 2 && c.ndim == 2, op, "codes must be [B, D, ...] and centroids [K, D]");
  expect_floating(op, "codes", z);
  expect(c.dtype == z.dtype, op, "codes and centroids must share a dtype");
  const int64_t B = z.size(0), D = z.size(1), P = z.inner(2), K = c.size(0);
  expect(c.size(1) == D && K >= 1, op,
         "centroids " + c.shape_str() + " must be [K, D] with D = " + std::to_string(D));
  const DType acc = accumulation(z.dtype);
  Tensor probs, labels, total, grad_z, grad_c;
  const cluster::Outputs out{
      view_optional(op, "probs", probs_a, probs), view_optional(op, "labels", labels_a, labels),
      view_optional(op, "total", total_a, total), view_optional(op, "grad_codes", grad_z_a, grad_z),
      view_optional(op, "grad_centroids", grad_c_a, grad_c)};
  if (out.probs) {
    expect_dtype(op, "probs", probs, z.dtype);
    expect(probs.numel() == B * K * P, op, "probs must be [B, K, ...]");
  }
  if (out.labels) {
    expect_dtype(op, "labels", labels, DType::i64);
    expect(labels.numel() == B * P, op, "labels must be [B, ...]");
  }
  if (out.total) {
    expect_dtype(op, "total", total, acc);
    expect_shape(op, "total", total, {B});
  }
  if (out.grad_z) {
    expect_dtype(op, "grad_codes", grad_z, acc);
    expect(grad_z.numel() == z.numel(), op, "grad_codes must have the codes' shape");
  }
  if (out.grad_c) {
    expect_dtype(op, "grad_centroids", grad_c, acc);
    expect_shape(op, "grad_centroids", grad_c, {B, K, D});
  }
  std::vector<const Tensor*> all{&z, &c};
  for (const Tensor* t : {out.probs, out.labels, out.total, out.grad_z, out.grad_c})
    if (t) all.push_back(t);
  expect_same_device(op, all);
  expect(!normalize_codes || runs_cpu_kernel(z), op, "normalize_codes is for the CPU kernel only");
  on_device(
      op, z, [&] { cluster::forward_cpu(z, c, alpha, out, normalize_codes); },
      [&] { FF_IF_CUDA(cluster::forward_cuda(z, c, alpha, out, stream)); });
}

}  // namespace

void bind_cluster(nb::module_& m) {
  m.def("cluster_forward", FF_BIND(forward), nb::arg("codes").noconvert(), nb::arg("centroids").noconvert(),
        nb::arg("alpha"), nb::arg("probs").noconvert().none(), nb::arg("labels").noconvert().none(),
        nb::arg("total").noconvert().none(), nb::arg("grad_codes").noconvert().none(),
        nb::arg("grad_centroids").noconvert().none(), nb::arg("normalize_codes"), nb::arg("stream"));
}

}  // namespace fussfast
