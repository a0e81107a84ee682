// A small counter-based random stream (SplitMix64) with the same output on every platform and
// on host and device, so a seed means the same draws everywhere.
#pragma once

#include <cstdint>

#include "macros.h"

namespace fussfast {

struct Random {
  uint64_t state;

  FF_HD explicit Random(uint64_t seed, uint64_t stream = 0)
      : state(seed * 0x9e3779b97f4a7c15ull + stream * 0xbf58476d1ce4e5b9ull + 1) {}

  FF_HD uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1), 53 random bits.
  FF_HD double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
};

}  // namespace fussfast
