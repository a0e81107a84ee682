// fussfast._C: build_info and every op's binding (csrc/<op>/<op>_binding.cpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "common/gemm_cpu.h"

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
  info["cpu_isa"] = cpu::gemm_isa();
#ifdef _OPENMP
  info["openmp"] = true;
  info["num_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["num_threads"] = 1;
#endif
  return info;
}

}  // namespace
}  // namespace fussfast

NB_MODULE(FUSSFAST_MODULE_NAME, m) {
  m.doc() = "fussfast compiled kernels (CPU, and CUDA when built with nvcc)";
#ifdef FUSSFAST_SIMT
  simt::bind_controls(m);
#endif
  m.def("build_info", &fussfast::build_info, "Version, CUDA and OpenMP facts of this build.");
  fussfast::bind_back_ce(m);
  fussfast::bind_bilinear_sample(m);
  fussfast::bind_cluster(m);
  fussfast::bind_correlation(m);
  fussfast::bind_kmeans(m);
  fussfast::bind_maximin(m);
  fussfast::bind_region_pool(m);
}
