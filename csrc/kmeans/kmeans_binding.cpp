// kmeans's Python contract: kmeans.
#include "../common/binding.h"
#include "kmeans.h"

namespace fussfast {
namespace {

nb::tuple run(In points_a, std::optional<In> weights_a, int64_t k, int64_t n_init, int64_t max_iter, double tol,
              uint64_t seed, bool cosine, Out centroids_a, Out labels_a, uintptr_t stream, bool scale_tol) {
  const std::string op = "kmeans";
  Tensor x = view_points(op, points_a);
  const int64_t M = x.size(0), D = x.size(1);
  expect(k >= 1 && k <= M && n_init >= 1 && max_iter >= 1 && tol >= 0, op,
         "k must be in [1, M]; n_init, max_iter >= 1; tol >= 0");
  Tensor centroids = view(op, "centroids", centroids_a), labels = view(op, "labels", labels_a);
  expect_dtype(op, "centroids", centroids, x.dtype);
  expect_shape(op, "centroids", centroids, {k, D});
  expect_dtype(op, "labels", labels, DType::i64);
  expect_shape(op, "labels", labels, {M});
  std::vector<const Tensor*> all{&x, &centroids, &labels};
  Tensor weights_t;
  const Tensor* weights = view_optional(op, "weights", weights_a, weights_t);
  if (weights) {
    expect_dtype(op, "weights", *weights, x.dtype);
    expect_shape(op, "weights", *weights, {M});
    all.push_back(weights);
  }
  expect_same_device(op, all);
  expect(!scale_tol || x.device == Device::cpu, op, "scale_tol takes CPU points");
  kmeans::Options opt{k, n_init, max_iter, tol, seed, cosine};
  // scale_tol: tol is relative to the points' mean variance, found (with the NaN/Inf check) here
  auto scale = [&] {
    if (scale_tol) opt.tol = tol * kmeans::mean_variance_cpu(x);
  };
  kmeans::Result r{};
  on_device(
      op, x, [&] { scale(), r = kmeans::kmeans_cpu(x, weights, opt, centroids, labels); },
      [&] { scale(), FF_IF_CUDA(r = kmeans::kmeans_cuda(x, weights, opt, centroids, labels, stream)); });
  return nb::make_tuple(r.inertia, r.n_iter);
}

}  // namespace

void bind_kmeans(nb::module_& m) {
  m.def("kmeans", FF_BIND(run), nb::arg("points").noconvert(), nb::arg("weights").noconvert().none(),
        nb::arg("k"), nb::arg("n_init"), nb::arg("max_iter"), nb::arg("tol"), nb::arg("seed"), nb::arg("cosine"),
        nb::arg("centroids").noconvert(), nb::arg("labels").noconvert(), nb::arg("stream"),
        nb::arg("scale_tol") = false);
}

}  // namespace fussfast
