// correlation: STEGO's correspondence-distillation loss between pairs of feature/code maps.
//
// stats (one pass over the raw features, per pair):
//   f1 [B, C, P], f2 [B, C, Q]  raw features (constants); the CPU kernel also reads them
//                               channels-last, [B, P, C] and [B, Q, C] (channels_last), as
//                               sampled features come, so no transposing copy is made
//   inv1 [B, P], inv2 [B, Q]    out: 1 / max(|f[:, p]|, eps), so n = f * inv is N(f)
//   off1 [B, P]                 out: n1[:, p] . m2 with m2 = mean_q n2 (0 unless pointwise)
//   pair_mean [B]               out: m1 . m2 = mean_{p,q} of n1 . n2 (0 unless pointwise)
//   centre [B, 2, C]            scratch: m1, m2
// forward:
//   F[b, p, q] = inv1[p] inv2[q] (f1[:, p] . f2[:, q]) - off1[p]   ( = n1 . (n2 - m2) )
//   S[b, p, q] = z1[:, p] . z2[:, q]   z1 [B, D, P], z2 [B, D, Q]: normalized codes
//   loss [B]   out: sum over (p, q) of -clamp(S, lo, hi) * (F + bias[b])
//   grad_z1 [B, D, P], grad_z2 [B, D, Q]: out (zeroed by the caller), only when asked for:
//              d loss[b] / d z, so backward is a scale by the upstream gradient.
// The CPU kernel can also take raw codes (normalize_codes): it normalizes them itself, z / max(|z|,
// eps) as F.normalize, and the code gradients are then with respect to the raw codes.
// Nothing of size P x Q is stored: tiles of F and S are formed, used and dropped, and the code
// gradients are taken in the same pass, so the features' product is computed once per step.
// inv, off, pair_mean, bias, loss and gradients use the accumulation type; the rest the input's.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/isa.h"
#include "../common/tensor.h"

namespace fussfast::correlation {

FF_HD double inverse_norm(double sum_sq) {
  const double n = sqrt(sum_sq);
  return 1.0 / (n > kNormEps ? n : kNormEps);
}

// One (p, q) element: adds its loss to `loss` and returns d loss / d S. The clamp passes the
// gradient only where lo < S < hi, as torch.clamp's backward does: S = 0 exactly (a zero code)
// then has zero gradient, not a 1/eps-sized one.
template <class A>
FF_HD A pair_term(A f, A s, A bias, A lo, A hi, A& loss) {
  const A v = f + bias;
  const A clamped = s < lo ? lo : (s > hi ? hi : s);
  loss -= clamped * v;
  return (s > lo && s < hi) ? -v : A(0);
}

struct Stats {
  Tensor inv1, inv2, off1, pair_mean, centre;
};

struct Grads {
  Tensor z1, z2;
};

// CPU: one build per instruction set (common/isa.h); these pick the CPU's.
FF_CPU_DECLARE(
  void stats_cpu(const Tensor& f1, const Tensor& f2, const Stats& st, bool pointwise, bool channels_last);
  void forward_cpu(const Tensor& f1, const Tensor& f2, const Tensor& z1, const Tensor& z2, const Stats& st,
    const Tensor& bias, const Tensor& loss, const Grads* grads, double lo, double hi, bool channels_last,
    bool normalize_codes);
)
inline void stats_cpu(const Tensor& f1, const Tensor& f2, const Stats& st, bool pointwise, bool channels_last) {
  FF_CPU_CALL(stats_cpu(f1, f2, st, pointwise, channels_last));
}
inline void forward_cpu(const Tensor& f1, const Tensor& f2, const Tensor& z1, const Tensor& z2,
    const Stats& st, const Tensor& bias, const Tensor& loss, const Grads* grads, double lo, double hi,
    bool channels_last, bool normalize_codes) {
  FF_CPU_CALL(forward_cpu(f1, f2, z1, z2, st, bias, loss, grads, lo, hi, channels_last, normalize_codes));
}
#ifdef FUSSFAST_WITH_CUDA
void stats_cuda(const Tensor& f1, const Tensor& f2, const Stats& st, bool pointwise,
                uintptr_t stream);
void forward_cuda(const Tensor& f1, const Tensor& f2, const Tensor& z1, const Tensor& z2,
                  const Stats& st, const Tensor& bias, const Tensor& loss, const Grads* grads,
                  double lo, double hi, uintptr_t stream);
#endif

}  // namespace fussfast::correlation
