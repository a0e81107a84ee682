// SIMT emulation: the grid group of a cooperative launch. sync() is a barrier across every
// thread of every block (all blocks of a cooperative launch run together).
#pragma once
#include "../simt.h"

namespace cooperative_groups {
struct grid_group {
  void sync(SIMT_HERE) const { ::simt::grid_sync(file, line); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
