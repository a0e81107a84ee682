// correlation's Python contract: correlation_stats and correlation_forward (correlation_loss).
#include "../common/binding.h"
#include "correlation.h"

namespace fussfast {
namespace {

struct PairShape {
  int64_t B, C, P, Q;
};

// channels_last: the maps are [B, ..., C] (the CPU kernel only), else [B, C, ...].
PairShape check_feature_pair(const std::string& op, const Tensor& f1, const Tensor& f2, bool channels_last) {
  expect(f1.ndim >= 2 && f2.ndim >= 2, op, channels_last ? "feats must be [B, ..., C]" : "feats must be [B, C, ...]");
  expect_floating(op, "feats", f1);
  expect(f2.dtype == f1.dtype, op, "feats1 and feats2 must share a dtype");
  expect(!channels_last || runs_cpu_kernel(f1), op, "channels-last features are for the CPU kernel only");
  const int c1 = channels_last ? f1.ndim - 1 : 1, c2 = channels_last ? f2.ndim - 1 : 1;
  const int64_t C = f1.size(c1);
  expect(f2.size(0) == f1.size(0) && f2.size(c2) == C, op,
         "feats1 " + f1.shape_str() + " and feats2 " + f2.shape_str() + " must share B and C");
  expect(C > 0, op, "feats need at least one channel");
  return {f1.size(0), C, f1.numel() / (f1.size(0) * C), f2.numel() / (f2.size(0) * C)};
}

correlation::Stats view_stats(const std::string& op, const PairShape& s, DType acc, In inv1, In inv2,
                              In off1, In pair_mean, In centre) {
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

void stats(In f1_a, In f2_a, In inv1, In inv2, In off1, In pair_mean, In centre, bool pointwise,
           bool channels_last, uintptr_t stream) {
  const std::string op = "correlation_loss";
  Tensor f1 = view(op, "feats1", f1_a), f2 = view(op, "feats2", f2_a);
  auto s = check_feature_pair(op, f1, f2, channels_last);
  auto st = view_stats(op, s, accumulation(f1.dtype), inv1, inv2, off1, pair_mean, centre);
  expect_same_device(op, {&f1, &f2, &st.inv1, &st.inv2, &st.off1, &st.pair_mean, &st.centre});
  on_device(
      op, f1, [&] { correlation::stats_cpu(f1, f2, st, pointwise, channels_last); },
      [&] { FF_IF_CUDA(correlation::stats_cuda(f1, f2, st, pointwise, stream)); });
}

void forward(In f1_a, In f2_a, In z1_a, In z2_a, In inv1, In inv2, In off1, In pair_mean, In centre, In bias_a,
             Out loss_a, std::optional<Out> gz1_a, std::optional<Out> gz2_a, double lo, double hi,
             bool channels_last, bool normalize_codes, uintptr_t stream) {
  const std::string op = "correlation_loss";
  Tensor f1 = view(op, "feats1", f1_a), f2 = view(op, "feats2", f2_a);
  Tensor z1 = view(op, "codes1", z1_a), z2 = view(op, "codes2", z2_a);
  Tensor bias = view(op, "bias", bias_a), loss = view(op, "loss", loss_a);
  auto s = check_feature_pair(op, f1, f2, channels_last);
  expect(!normalize_codes || runs_cpu_kernel(f1), op, "normalize_codes is for the CPU kernel only");
  const DType acc = accumulation(f1.dtype);
  auto st = view_stats(op, s, acc, inv1, inv2, off1, pair_mean, centre);
  expect(z1.ndim >= 2 && z2.ndim >= 2, op, "codes must be [B, D, ...]");
  const int64_t D = z1.size(1);
  expect(z1.size(0) == s.B && z2.size(0) == s.B && z2.size(1) == D && z1.inner(2) == s.P && z2.inner(2) == s.Q,
         op, "codes1 " + z1.shape_str() + " / codes2 " + z2.shape_str() + " must match the feature maps " +
                  f1.shape_str() + " / " + f2.shape_str());
  // CPU kernel: codes in the accumulation type, features in any float dtype (16-bit read as they
  // are); CUDA kernel: codes and features share a dtype.
  const DType code_dtype = runs_cpu_kernel(f1) ? acc : f1.dtype;
  expect(z1.dtype == code_dtype && z2.dtype == code_dtype, op,
         std::string("codes must be ") + dtype_name(code_dtype) + " for " + dtype_name(f1.dtype) + " features here");
  expect_dtype(op, "bias", bias, acc);
  expect_shape(op, "bias", bias, {s.B});
  expect_dtype(op, "loss", loss, acc);
  expect_shape(op, "loss", loss, {s.B});
  expect(gz1_a.has_value() == gz2_a.has_value(), op, "pass both code gradients or neither");
  std::vector<const Tensor*> all{&f1,      &f2,      &z1,      &z2,           &bias,    &loss,
                                 &st.inv1, &st.inv2, &st.off1, &st.pair_mean, &st.centre};
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
  on_device(
      op, f1, [&] { correlation::forward_cpu(f1, f2, z1, z2, st, bias, loss, g, lo, hi, channels_last, normalize_codes);
      },
      [&] { FF_IF_CUDA(correlation::forward_cuda(f1, f2, z1, z2, st, bias, loss, g, lo, hi, stream)); });
}

}  // namespace

void bind_correlation(nb::module_& m) {
  m.def("correlation_stats", FF_BIND(stats), nb::arg("feats1").noconvert(), nb::arg("feats2").noconvert(),
        nb::arg("inv1").noconvert(), nb::arg("inv2").noconvert(), nb::arg("off1").noconvert(),
        nb::arg("pair_mean").noconvert(), nb::arg("centre").noconvert(), nb::arg("pointwise"),
        nb::arg("channels_last"), nb::arg("stream"));
  m.def("correlation_forward", FF_BIND(forward), nb::arg("feats1").noconvert(), nb::arg("feats2").noconvert(),
        nb::arg("codes1").noconvert(), nb::arg("codes2").noconvert(), nb::arg("inv1").noconvert(),
        nb::arg("inv2").noconvert(), nb::arg("off1").noconvert(), nb::arg("pair_mean").noconvert(),
        nb::arg("centre").noconvert(), nb::arg("bias").noconvert(), nb::arg("loss").noconvert(),
        nb::arg("grad_codes1").noconvert().none(), nb::arg("grad_codes2").noconvert().none(), nb::arg("lo"),
        nb::arg("hi"), nb::arg("channels_last"), nb::arg("normalize_codes"), nb::arg("stream"));
}

}  // namespace fussfast
