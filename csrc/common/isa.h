// Run-time choice of the CPU instruction set. Every CPU kernel file (<op>_cpu.cpp, and the
// shared gemm_cpu.cpp) is compiled once per instruction set, each build in its own namespace
// (isa_generic, isa_avx2, isa_avx512), and each op's header dispatches to the build that the CPU
// running it supports, or the one FUSSFAST_CPU_ISA / set_isa() asks for.
//
// A kernel file wraps its code in FF_ISA_BEGIN ... FF_ISA_END. That opens the namespace and turns
// on the instruction set with a target pragma *after* the standard headers were included, so
// inline library code (std::vector, ...) stays baseline: the linker may merge such functions
// across the builds, and a merged copy must run on every CPU.
//
//   generic: the compiler's baseline (SSE2 on x86-64, NEON on aarch64); always built
//   avx2:    AVX2 + FMA + F16C
//   avx512:  AVX-512 F/BW/VL/DQ (+ AVX2/FMA); bfloat16 products use AMX tiles or AVX512_BF16
//            where the CPU has them, chosen at run time inside it (active_bf16() below)
#pragma once

#include <cstdint>

namespace fussfast::cpu {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // built into this module and runnable on this CPU
Isa active_isa();             // the chosen build: FUSSFAST_CPU_ISA if set, else the best supported
void set_isa(const char* name);  // throws std::invalid_argument for an unknown or unsupported name

// How the avx512 build multiplies bfloat16 operands: AMX tiles, vdpbf16ps, or widened to float
// (the other builds always widen). The best the CPU has unless FUSSFAST_CPU_BF16 or set_bf16()
// says otherwise; tests use it to check each method the machine can run.
enum class Bf16 : int { widen = 0, avx512bf16 = 1, amx = 2 };
const char* bf16_name(Bf16 method);
bool bf16_supported(Bf16 method);
Bf16 active_bf16();
void set_bf16(const char* name);  // throws std::invalid_argument

}  // namespace fussfast::cpu

// Which build this translation unit is (CMake defines FF_ISA_AVX2 / FF_ISA_AVX512 per build).
#if defined(FF_ISA_AVX512)
#define FF_ISA_NS isa_avx512
#define FF_ISA_PRAGMA _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512\")")
#define FF_ISA_FLOAT_LANES 16
#elif defined(FF_ISA_AVX2)
#define FF_ISA_NS isa_avx2
#define FF_ISA_PRAGMA _Pragma("GCC target(\"avx2,fma,f16c\")")
#define FF_ISA_FLOAT_LANES 8
#else
#define FF_ISA_NS isa_generic
#define FF_ISA_PRAGMA
#define FF_ISA_FLOAT_LANES 4
#endif

#define FF_ISA_BEGIN _Pragma("GCC push_options") FF_ISA_PRAGMA namespace FF_ISA_NS {
#define FF_ISA_END } _Pragma("GCC pop_options")

// Declares the same CPU entry points in every build's namespace (an op header's CPU part).
#define FF_CPU_DECLARE(...)           \
  namespace isa_generic { __VA_ARGS__ } \
  namespace isa_avx2 { __VA_ARGS__ }    \
  namespace isa_avx512 { __VA_ARGS__ }

// FF_CPU_CALL(fn(args)): a dispatcher's body, in the entry points' namespace (it returns).
#if defined(FUSSFAST_HAVE_ISA_AVX512)
#define FF_CPU_CASE_AVX512(...) \
  case ::fussfast::cpu::Isa::avx512: return isa_avx512::__VA_ARGS__;
#else
#define FF_CPU_CASE_AVX512(...)
#endif
#if defined(FUSSFAST_HAVE_ISA_AVX2)
#define FF_CPU_CASE_AVX2(...) \
  case ::fussfast::cpu::Isa::avx2: return isa_avx2::__VA_ARGS__;
#else
#define FF_CPU_CASE_AVX2(...)
#endif
#define FF_CPU_CALL(...)                            \
  switch (::fussfast::cpu::active_isa()) {          \
    FF_CPU_CASE_AVX512(__VA_ARGS__)                 \
    FF_CPU_CASE_AVX2(__VA_ARGS__)                   \
    default: return isa_generic::__VA_ARGS__;       \
  }
