// The SIMT build of the bindings (common/binding.h with FUSSFAST_SIMT): every tensor of a call is
// copied into a guarded buffer before the kernels run (so an access past either end faults and
// is reported), and copied back when the call returns normally. Also the module's controls:
// simt_configure, simt_launches, simt_live_allocations.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "../../common/tensor.h"
#include "simt.h"

namespace simt {

struct StagedTensor {
  void* original;
  void* copy;
  size_t bytes;
};

inline std::vector<StagedTensor>& staged() {
  static std::vector<StagedTensor> all;  // of the call in progress (the GIL orders calls)
  return all;
}

inline size_t element_size(fussfast::DType t) {
  switch (t) {
    case fussfast::DType::f16:
    case fussfast::DType::bf16: return 2;
    case fussfast::DType::f32:
    case fussfast::DType::i32: return 4;
    default: return 8;
  }
}

inline void stage(const std::string& name, fussfast::Tensor& t) {
  const size_t bytes = size_t(t.numel()) * element_size(t.dtype);
  void* copy = guarded_alloc(bytes, element_size(t.dtype), name, false);
  if (bytes) std::memcpy(copy, t.data, bytes);
  staged().push_back({t.data, copy, bytes});
  t.data = copy;
}

// Copies every staged tensor back (unless an exception is on its way out) and frees the copies.
struct StagingScope {
  int exceptions = std::uncaught_exceptions();
  StagingScope() { staged().clear(); }
  ~StagingScope() {
    const bool ok = std::uncaught_exceptions() == exceptions;
    for (const StagedTensor& s : staged()) {
      if (ok && s.bytes) std::memcpy(s.original, s.copy, s.bytes);
      guarded_free(s.copy);
    }
    staged().clear();
  }
};

template <auto F> struct Staged;
template <class R, class... Args, R (*F)(Args...)>
struct Staged<F> {
  static R call(Args... args) {
    StagingScope scope;
    return F(std::move(args)...);
  }
};

inline void bind_controls(nanobind::module_& m) {
  namespace nb = nanobind;
  m.def(
      "simt_configure",
      [](uint64_t seed, const std::string& placement, double yield_rate, int multiprocessors, int blocks_per_sm) {
        if (placement != "end" && placement != "start")
          throw std::invalid_argument("simt_configure: placement must be 'end' or 'start'");
        Options& o = options();
        o.seed = seed;
        o.placement = placement == "end" ? Placement::end : Placement::start;
        o.yield_rate = yield_rate;
        o.multiprocessors = multiprocessors;
        o.blocks_per_sm = blocks_per_sm;
      },
      nb::arg("seed") = 0, nb::arg("placement") = "end", nb::arg("yield_rate") = 0.05,
      nb::arg("multiprocessors") = 2, nb::arg("blocks_per_sm") = 2,
      "Schedule seed, where buffers sit against their guard pages, switch rate at shared accesses, "
      "and the device's multiprocessor count and occupancy as the host code sees them.");
  m.def(
      "simt_launches",
      [] {
        nb::list out;
        for (const LaunchRecord& r : launches()) {
          nb::dict d;
          d["kernel"] = r.kernel;
          d["grid"] = nb::make_tuple(r.grid.x, r.grid.y, r.grid.z);
          d["block"] = nb::make_tuple(r.block.x, r.block.y, r.block.z);
          d["dynamic_smem"] = r.dynamic_smem;
          d["stream"] = r.stream;
          d["cooperative"] = r.cooperative;
          out.append(d);
        }
        clear_launches();
        return out;
      },
      "The kernel launches since the last call (name, grid, block, dynamic smem, stream).");
  m.def("simt_live_allocations", &live_device_allocations,
        "Device allocations (cudaMallocAsync) not yet freed.");
}

}  // namespace simt
