// fussfast._C: build_info and every op's binding (csrc/<op>/<op>_binding.cpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "common/isa.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef FUSSFAST_WITH_CUDA
#include <cuda_runtime.h>
#endif
#ifdef FUSSFAST_SIMT
#include "staging.h"
#endif
#ifndef FUSSFAST_MODULE_NAME
#define FUSSFAST_MODULE_NAME _C
#endif

namespace nb = nanobind;

namespace fussfast {

void bind_back_ce(nb::module_& m);
void bind_bilinear_sample(nb::module_& m);
void bind_cluster(nb::module_& m);
void bind_correlation(nb::module_& m);
void bind_kmeans(nb::module_& m);
void bind_maximin(nb::module_& m);
void bind_region_pool(nb::module_& m);

namespace {

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
  info["cpu_isa"] = cpu::isa_name(cpu::active_isa());
  info["cpu_bf16"] = cpu::active_isa() == cpu::Isa::avx512 ? cpu::bf16_name(cpu::active_bf16()) : "widen";
#ifdef _OPENMP
  info["openmp"] = true;
  info["num_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["num_threads"] = 1;
#endif
  return info;
}

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (cpu::Isa isa : {cpu::Isa::avx512, cpu::Isa::avx2, cpu::Isa::generic})
    if (cpu::isa_supported(isa)) out.push_back(cpu::isa_name(isa));
  return out;
}

}  // namespace
}  // namespace fussfast

NB_MODULE(FUSSFAST_MODULE_NAME, m) {
  m.doc() = "fussfast compiled kernels (CPU, and CUDA when built with nvcc)";
#ifdef FUSSFAST_SIMT
  simt::bind_controls(m);
#endif
  m.def("build_info", &fussfast::build_info, "Version, CUDA and OpenMP facts of this build.");
#ifdef FUSSFAST_SIMT
  m.attr("cpu_tensors_run_cpu_kernels") = false;  // the emulated CUDA kernels take CPU tensors
#else
  m.attr("cpu_tensors_run_cpu_kernels") = true;
#endif
  m.def("cpu_isa", [] { return std::string(fussfast::cpu::isa_name(fussfast::cpu::active_isa())); },
        "The instruction set the CPU kernels run: FUSSFAST_CPU_ISA if set, else the best this CPU has.");
  m.def("cpu_isas", &fussfast::cpu_isas, "The instruction sets this module has builds for and this CPU runs, best first.");
  m.def("set_cpu_isa", [](const std::string& name) { fussfast::cpu::set_isa(name.c_str()); }, nb::arg("name"),
        "Runs the CPU kernels with this instruction set from now on (avx512, avx2 or generic).");
  m.def("cpu_bf16", [] { return std::string(fussfast::cpu::bf16_name(fussfast::cpu::active_bf16())); },
        "How the avx512 build multiplies bfloat16: amx, avx512bf16 or widen (FUSSFAST_CPU_BF16 overrides).");
  m.def("cpu_bf16_methods", [] {
        std::vector<std::string> out;
        for (auto m : {fussfast::cpu::Bf16::amx, fussfast::cpu::Bf16::avx512bf16, fussfast::cpu::Bf16::widen})
          if (fussfast::cpu::bf16_supported(m)) out.push_back(fussfast::cpu::bf16_name(m));
        return out;
      }, "The bfloat16 methods this CPU runs, best first.");
  m.def("set_cpu_bf16", [](const std::string& name) { fussfast::cpu::set_bf16(name.c_str()); }, nb::arg("name"),
        "Multiplies bfloat16 with this method from now on (amx, avx512bf16 or widen).");
  fussfast::bind_back_ce(m);
  fussfast::bind_bilinear_sample(m);
  fussfast::bind_cluster(m);
  fussfast::bind_correlation(m);
  fussfast::bind_kmeans(m);
  fussfast::bind_maximin(m);
  fussfast::bind_region_pool(m);
}
