// Helpers for the CPU kernels.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace fussfast {

// A large output that was just allocated (torch.empty) is still untouched, and faulting it in
// 4 KiB pages can cost several times the kernel itself. Advising transparent huge pages on its
// 2 MiB-aligned interior makes the first touch ~500x fewer faults. Advice only: harmless if the
// system ignores it, and never changes results.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// Threads for `tasks` units of work split into one contiguous range per thread (used where a
// thread keeps private partial results that are merged in thread order).
inline int worker_count(int64_t tasks) {
#ifdef _OPENMP
  return static_cast<int>(tasks < omp_get_max_threads() ? (tasks > 0 ? tasks : 1) : omp_get_max_threads());
#else
  (void)tasks;
  return 1;
#endif
}

inline int worker_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// An exception must not leave an OpenMP region: the runtime would terminate the process. Work
// inside a region runs through guard(), which keeps the first exception (std::bad_alloc of a
// thread's scratch, say) and skips the rest; rethrow() raises it after the region, so that it
// reaches Python (as MemoryError) and the process stays usable.
class ParallelErrors {
 public:
  template <class Work>
  void guard(Work&& work) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      work();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace fussfast
