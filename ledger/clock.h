// Injected time source. Domain code never reads the wall clock directly.
//
// Thread safety: implementations are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>

namespace keyledger {

class Clock {
 public:
  virtual ~Clock() = default;
  // Returns UTC microseconds since the Unix epoch (SteadyClock: see there).
  virtual int64_t NowUs() const = 0;
};

// Microseconds on std::chrono::steady_clock, which never goes back and never
// jumps when the time of day is set. Its NowUs is NOT a time since the Unix
// epoch: only for rates and durations (the rate limiter), never stored.
class SteadyClock final : public Clock {
 public:
  int64_t NowUs() const override;
};

// The real wall clock (std::chrono::system_clock).
class SystemClock final : public Clock {
 public:
  int64_t NowUs() const override;
};

// A clock that only moves when told to; for tests and replay.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t now_us) : now_us_(now_us) {}
  int64_t NowUs() const override { return now_us_.load(std::memory_order_acquire); }
  void SetUs(int64_t now_us) { now_us_.store(now_us, std::memory_order_release); }
  void AdvanceUs(int64_t delta_us) { now_us_.fetch_add(delta_us, std::memory_order_acq_rel); }

 private:
  std::atomic<int64_t> now_us_;
};

}  // namespace keyledger
