// The CPU kmeans micro-kernel: dot products of a tile of R points (row-major, read in place)
// with a packed block of centroids, centroids along the vector lanes, one broadcast point value
// per FMA. GCC vector extensions as wide as the build's vectors (FF_ISA_FLOAT_LANES, common/isa.h):
// kmeans_cpu.cpp includes this inside its ISA region and anonymous namespace, so each per-ISA
// build gets its own width and the code its instruction set, with internal linkage.
#pragma once

constexpr int kVecBytes = FF_ISA_FLOAT_LANES * 4;
// rows per tile: R x 2 accumulators stay in registers (32 vector registers with AVX-512, 16 else)
constexpr int kRows = kVecBytes == 64 ? 6 : 4;

template <class A>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));  // lane indices, compare masks
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
};

template <class A>
constexpr int kLanes = kVecBytes / sizeof(A);

// Centroids packed for the kernel: blocks of NV * lanes centroids, each block [D][NV * lanes]
// (transposed), plus h = |c|^2 / 2 per centroid (0 for cosine, +inf for the padding lanes), so
// that argmin_j (h_j - x.c_j) is the nearest centroid.
template <class A>
struct Panel {
  using V = typename Simd<A>::V;
  int64_t k = 0, D = 0, nv = 1, blocks = 0;
  const V *c = nullptr, *h = nullptr;  // c: blocks * D * nv vectors; h: blocks * nv vectors
  // Scalar storage, vector-aligned by hand: std::vector<V> is not (its allocator is instantiated
  // outside the build's target pragma, where GCC takes the vector's alignment to be 16 bytes).
  std::vector<A> storage;

  void pack(const A* C, int64_t k_, int64_t D_, bool cosine) {
    constexpr int W = kLanes<A>;
    k = k_, D = D_, nv = k <= W ? 1 : 2;
    const int64_t width = nv * W, c_size = blocks_for(width) * D * width, h_size = blocks_for(width) * width;
    blocks = blocks_for(width);
    storage.assign(c_size + h_size + kVecBytes / sizeof(A), A(0));
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
    A* cs = reinterpret_cast<A*>((base + kVecBytes - 1) / kVecBytes * kVecBytes);
    A* hs = cs + c_size;
    std::fill(hs, hs + h_size, A(INFINITY));
    c = reinterpret_cast<const V*>(cs);
    h = reinterpret_cast<const V*>(hs);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t b = j / width, lane = j % width;
      A cc = 0;
      for (int64_t d = 0; d < D; ++d) {
        cs[(b * D + d) * width + lane] = C[j * D + d];
        cc += C[j * D + d] * C[j * D + d];
      }
      hs[b * width + lane] = cosine ? A(0) : cc / 2;
    }
  }

 private:
  int64_t blocks_for(int64_t width) const { return (k + width - 1) / width; }
};

// acc[r][v] = x_r . (block's centroids v * lanes ...), for R rows of x (row stride D).
template <int R, int NV, class A>
inline void tile_dots(const A* x, int64_t D, const typename Simd<A>::V* block, typename Simd<A>::V (&acc)[R][NV]) {
  using V = typename Simd<A>::V;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t d = 0; d < D; ++d) {
    V c[NV];
    for (int v = 0; v < NV; ++v) c[v] = block[d * NV + v];
    for (int r = 0; r < R; ++r) {
      const A xv = x[r * D + d];
      for (int v = 0; v < NV; ++v) acc[r][v] += xv * c[v];
    }
  }
}

// Nearest centroid of R rows: best[r] = first index of the minimum of h_j - x_r.c_j, score[r]
// that minimum.
template <int R, int NV, class A>
inline void tile_nearest(const A* x, const Panel<A>& p, int64_t* best, A* score) {
  using V = typename Simd<A>::V;
  using I = typename Simd<A>::I;
  using E = decltype(I{}[0]);
  constexpr int W = kLanes<A>;
  I lane;
  for (int l = 0; l < W; ++l) lane[l] = E(l);
  V m[R];
  I mi[R];
  for (int r = 0; r < R; ++r) m[r] = V{} + A(INFINITY), mi[r] = I{};
  for (int64_t b = 0; b < p.blocks; ++b) {
    V acc[R][NV];
    tile_dots<R, NV>(x, p.D, p.c + b * p.D * NV, acc);
    for (int v = 0; v < NV; ++v) {
      const V h = p.h[b * NV + v];
      const I idx = lane + E((b * NV + v) * W);
      for (int r = 0; r < R; ++r) {
        const V s = h - acc[r][v];
        const I lt = s < m[r];  // strict: each lane keeps its first (lowest) index
        m[r] = lt ? s : m[r];
        mi[r] = lt ? idx : mi[r];
      }
    }
  }
  // across the lanes: the minimum, ties to the lowest index (a NaN-free score is assumed)
  for (int r = 0; r < R; ++r) {
    A bs = m[r][0];
    int64_t bi = mi[r][0];
    for (int l = 1; l < W; ++l)
      if (m[r][l] < bs || (m[r][l] == bs && mi[r][l] < bi)) bs = m[r][l], bi = mi[r][l];
    best[r] = bi, score[r] = bs;
  }
}

// out[r * stride + j] = h_j - x_r.c_j for the panel's k centroids, R rows.
template <int R, int NV, class A>
inline void tile_scores(const A* x, const Panel<A>& p, A* out, int64_t stride) {
  using V = typename Simd<A>::V;
  constexpr int W = kLanes<A>;
  for (int64_t b = 0; b < p.blocks; ++b) {
    V acc[R][NV];
    tile_dots<R, NV>(x, p.D, p.c + b * p.D * NV, acc);
    for (int v = 0; v < NV; ++v) {
      const V h = p.h[b * NV + v];
      const int64_t j0 = (b * NV + v) * W, n = std::min<int64_t>(W, p.k - j0);
      for (int r = 0; r < R; ++r) {
        const V s = h - acc[r][v];
        for (int64_t l = 0; l < n; ++l) out[r * stride + j0 + l] = s[l];
      }
    }
  }
}
