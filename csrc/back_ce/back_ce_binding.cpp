// back_ce's Python contract: back_ce_forward.
#include "../common/binding.h"
#include "back_ce.h"

namespace fussfast {
namespace {

void forward(In logits_a, In labels_a, In present_a, int64_t ignore_index, Out loss_a, std::optional<Out> grad_a,
             uintptr_t stream) {
  const std::string op = "back_ce";
  Tensor logits = view(op, "logits", logits_a), labels = view(op, "labels", labels_a);
  Tensor present = view(op, "present", present_a), loss = view(op, "loss", loss_a), grad_t;
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
  const Tensor* grad = view_optional(op, "grad", grad_a, grad_t);
  if (grad) {
    expect_dtype(op, "grad", *grad, logits.dtype);
    expect(grad->numel() == logits.numel(), op, "grad must have the logits' shape");
    all.push_back(grad);
  }
  expect_same_device(op, all);
  on_device(
      op, logits, [&] { back_ce::forward_cpu(logits, labels, present, ignore_index, loss, grad); },
      [&] { FF_IF_CUDA(back_ce::forward_cuda(logits, labels, present, ignore_index, loss, grad, stream)); });
}

}  // namespace

void bind_back_ce(nb::module_& m) {
  m.def("back_ce_forward", FF_BIND(forward), nb::arg("logits").noconvert(), nb::arg("labels").noconvert(),
        nb::arg("present").noconvert(), nb::arg("ignore_index"), nb::arg("loss").noconvert(),
        nb::arg("grad").noconvert().none(), nb::arg("stream"));
}

}  // namespace fussfast
