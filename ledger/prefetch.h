// PrefetchRead: fetches the cache line holding the byte at `p` ahead of a
// read. A hint: it never faults and changes nothing, whatever `p` points at.
//
// Not __builtin_prefetch alone: GCC 12 counts that as no side effect, so it
// may find a function whose only effect is prefetching pure and delete its
// calls (every prefetch of MetricsFold::PrefetchSeries was deleted so). An
// asm volatile is never deleted.
#pragma once

namespace keyledger {

inline void PrefetchRead(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 (%0)" : : "r"(p));
#else
  __builtin_prefetch(p);
#endif
}

}  // namespace keyledger
