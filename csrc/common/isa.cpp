// Implementation of isa.h (compiled once, for the baseline).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
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

namespace {

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_has_amx_bf16() {
#if defined(__x86_64__) && defined(__linux__) && defined(SYS_arch_prctl)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  // Linux hands out the 8 KiB tile state only to processes that ask (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); without it the first tile instruction faults.
  return tile && bf16 && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

std::atomic<int> chosen_bf16{-1};

Bf16 parse_bf16(const std::string& name) {
  for (Bf16 m : {Bf16::widen, Bf16::avx512bf16, Bf16::amx}) {
    if (name != bf16_name(m)) continue;
    if (!bf16_supported(m)) throw std::invalid_argument("bfloat16 method '" + name + "' is not supported here");
    return m;
  }
  throw std::invalid_argument("unknown bfloat16 method '" + name + "' (choose amx, avx512bf16 or widen)");
}

}  // namespace

const char* bf16_name(Bf16 method) {
  switch (method) {
    case Bf16::amx: return "amx";
    case Bf16::avx512bf16: return "avx512bf16";
    default: return "widen";
  }
}

bool bf16_supported(Bf16 method) {
  static const bool amx = isa_supported(Isa::avx512) && cpu_has_amx_bf16();
  static const bool dp = isa_supported(Isa::avx512) && cpu_has_avx512_bf16();
  return method == Bf16::widen || (method == Bf16::amx && amx) || (method == Bf16::avx512bf16 && dp);
}

Bf16 active_bf16() {
  int m = chosen_bf16.load(std::memory_order_relaxed);
  if (m < 0) {
    const char* env = std::getenv("FUSSFAST_CPU_BF16");
    if (env && *env) {
      m = int(parse_bf16(env));
    } else {
      m = int(bf16_supported(Bf16::amx) ? Bf16::amx : bf16_supported(Bf16::avx512bf16) ? Bf16::avx512bf16 : Bf16::widen);
    }
    chosen_bf16.store(m, std::memory_order_relaxed);
  }
  return Bf16(m);
}

void set_bf16(const char* name) { chosen_bf16.store(int(parse_bf16(name)), std::memory_order_relaxed); }

}  // namespace fussfast::cpu
