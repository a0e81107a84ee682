// SIMT emulation of the warp matrix (wmma) API for 16x16x16 tiles of half/bfloat16 with float
// accumulation. Every call is a warp collective (all 32 lanes, one call site). Each lane's
// fragment holds the whole tile, in float (exact for 16-bit inputs), and mma_sync accumulates
// in float in the order k = 0..15; a store writes element e from lane e % 32, as the hardware
// spreads a fragment over the lanes, so the race checker sees no false conflicts.
#pragma once

#include "../../../common/dtype.h"
#include "../simt.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16x16x16 tiles only");
  float v[16][16];  // [row][col] of the tile this fragment stands for
};

inline float element_value(const __half& h) { return fussfast::half_bits_to_float(h.bits); }
inline float element_value(const __nv_bfloat16& h) { return fussfast::bf16_bits_to_float(h.bits); }
inline float element_value(float f) { return f; }

inline void collective(SIMT_HERE) {
  ::simt::warp_collective(::simt::WarpOp::wmma, 0xffffffffu, 0, 0, 32, file, line);
}

inline void check_tile_pointer(const void* p, unsigned ldm, size_t element) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::simt::report("wmma: tile pointer is not 256-bit aligned");
  if ((ldm * element) % 16 != 0) ::simt::report("wmma: ldm is not a multiple of 16 bytes");
}

template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, ::simt::SPtr<const T> p, unsigned ldm,
                      SIMT_HERE) {
  collective(file, line);
  check_tile_pointer(p.p, ldm, sizeof(T));
  constexpr bool col = std::is_same_v<Layout, col_major>;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = element_value(T(p[col ? r + c * ldm : r * ldm + c]));
}

template <class T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, T value) {
  for (auto& row : f.v)
    for (float& x : row) x = float(value);
}

template <class TA, class TB, class LA, class LB, class TC>
void mma_sync(fragment<accumulator, 16, 16, 16, TC>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, TC>& c,
              SIMT_HERE) {
  collective(file, line);
  fragment<accumulator, 16, 16, 16, TC> out;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = c.v[i][j];
      for (int k = 0; k < 16; ++k) acc += a.v[i][k] * b.v[k][j];
      out.v[i][j] = acc;
    }
  d = out;
}

template <class T>
void store_matrix_sync(::simt::SPtr<float> p, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm,
                       layout_t layout, SIMT_HERE) {
  collective(file, line);
  check_tile_pointer(p.p, ldm, sizeof(float));
  const int lane = int(threadIdx.x % 32);
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    p[layout == mem_row_major ? r * ldm + c : r + c * ldm] = f.v[r][c];
  }
}

}  // namespace wmma
}  // namespace nvcuda
