// Implementation of isa.h (compiled once, for the baseline).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace fussfast::cpu {
namespace {

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return isa == Isa::generic;
#endif
}

bool built(Isa isa) {
  switch (isa) {
#if defined(FUSSFAST_HAVE_ISA_AVX512)
    case Isa::avx512: return true;
#endif
#if defined(FUSSFAST_HAVE_ISA_AVX2)
    case Isa::avx2: return true;
#endif
    case Isa::generic: return true;
    default: return false;
  }
}

Isa parse(const std::string& name) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512}) {
    if (name != isa_name(isa)) continue;
    if (!isa_supported(isa))
      throw std::invalid_argument("CPU ISA '" + name + "' is " +
                                  (built(isa) ? "not supported by this CPU" : "not built into this module"));
    return isa;
  }
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (choose avx512, avx2 or generic)");
}

Isa best() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (isa_supported(isa)) return isa;
  return Isa::generic;
}

// -1: not chosen yet. The environment is read on first use, so a bad value fails the first
// kernel call (and `fussfast info`) with a clear message instead of the import.
std::atomic<int> chosen{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

bool isa_supported(Isa isa) { return built(isa) && cpu_has(isa); }

Isa active_isa() {
  int isa = chosen.load(std::memory_order_relaxed);
  if (isa < 0) {
    const char* env = std::getenv("FUSSFAST_CPU_ISA");
    isa = int(env && *env ? parse(env) : best());
    chosen.store(isa, std::memory_order_relaxed);
  }
  return Isa(isa);
}

void set_isa(const char* name) { chosen.store(int(parse(name)), std::memory_order_relaxed); }

bool has_avx512_bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

}  // namespace fussfast::cpu
