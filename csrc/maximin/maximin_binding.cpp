// maximin's Python contract: maximin.
#include "../common/binding.h"
#include "maximin.h"

namespace fussfast {
namespace {

void run(In points_a, bool cosine, int64_t start, Out indices_a, uintptr_t stream) {
  const std::string op = "maximin";
  Tensor x = view_points(op, points_a);
  Tensor indices = view(op, "indices", indices_a);
  expect_dtype(op, "indices", indices, DType::i64);
  expect(indices.ndim == 1 && indices.size(0) >= 1 && indices.size(0) <= x.size(0), op,
         "indices must be [k] with 1 <= k <= M");
  expect(start >= 0 && start < x.size(0), op, "start must be a point index");
  expect_same_device(op, {&x, &indices});
  on_device(
      op, x, [&] { maximin::maximin_cpu(x, cosine, start, indices); },
      [&] { FF_IF_CUDA(maximin::maximin_cuda(x, cosine, start, indices, stream)); });
}

}  // namespace

void bind_maximin(nb::module_& m) {
  m.def("maximin", FF_BIND(run), nb::arg("points").noconvert(), nb::arg("cosine"), nb::arg("start"),
        nb::arg("indices").noconvert(), nb::arg("stream"));
}

}  // namespace fussfast
