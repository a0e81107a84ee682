// bilinear_sample's Python contract: bilinear_sample_forward and bilinear_sample_backward.
#include "../common/binding.h"
#include "bilinear_sample.h"

namespace fussfast {
namespace {

// Checks shared by both passes: maps-shaped [N, H, W, C], points [M, P, 2] of the accumulation
// dtype, index [M] int64, rows [M, P, C] of the accumulation dtype.
void check_shapes(const std::string& op, const Tensor& maps, const Tensor& points, const Tensor& index,
                  const Tensor& rows, const std::string& rows_name) {
  expect_floating(op, "maps", maps);
  expect(maps.ndim == 4, op, "maps must be [N, H, W, C], got " + maps.shape_str());
  expect(maps.size(1) > 0 && maps.size(2) > 0, op, "maps need at least one pixel");
  expect(points.ndim == 3 && points.size(2) == 2, op, "points must be [M, P, 2], got " + points.shape_str());
  const DType acc = accumulation(maps.dtype);
  expect_dtype(op, "points", points, acc);
  expect_dtype(op, "index", index, DType::i64);
  expect_shape(op, "index", index, {points.size(0)});
  expect_dtype(op, rows_name, rows, acc);
  expect_shape(op, rows_name, rows, {points.size(0), points.size(1), maps.size(3)});
  expect_same_device(op, {&maps, &points, &index, &rows});
}

void forward(In maps_a, In points_a, In index_a, Out out_a, uintptr_t stream) {
  const std::string op = "bilinear_sample";
  Tensor maps = view(op, "maps", maps_a), points = view(op, "points", points_a);
  Tensor index = view(op, "index", index_a), out = view(op, "out", out_a);
  check_shapes(op, maps, points, index, out, "out");
  on_device(
      op, maps, [&] { bilinear_sample::forward_cpu(maps, points, index, out); },
      [&] { FF_IF_CUDA(bilinear_sample::forward_cuda(maps, points, index, out, stream)); });
}

void backward(In grad_out_a, In points_a, In index_a, Out grad_maps_a, uintptr_t stream) {
  const std::string op = "bilinear_sample_backward";
  Tensor grad_out = view(op, "grad_out", grad_out_a), points = view(op, "points", points_a);
  Tensor index = view(op, "index", index_a), grad_maps = view(op, "grad_maps", grad_maps_a);
  check_shapes(op, grad_maps, points, index, grad_out, "grad_out");
  expect_dtype(op, "grad_maps", grad_maps, accumulation(grad_maps.dtype));
  on_device(
      op, grad_maps, [&] { bilinear_sample::backward_cpu(grad_out, points, index, grad_maps); },
      [&] { FF_IF_CUDA(bilinear_sample::backward_cuda(grad_out, points, index, grad_maps, stream)); });
}

}  // namespace

void bind_bilinear_sample(nb::module_& m) {
  m.def("bilinear_sample_forward", FF_BIND(forward), nb::arg("maps").noconvert(), nb::arg("points").noconvert(),
        nb::arg("index").noconvert(), nb::arg("out").noconvert(), nb::arg("stream"));
  m.def("bilinear_sample_backward", FF_BIND(backward), nb::arg("grad_out").noconvert(),
        nb::arg("points").noconvert(), nb::arg("index").noconvert(), nb::arg("grad_maps").noconvert(),
        nb::arg("stream"));
}

}  // namespace fussfast
