// RateLimiter: an in-memory GCRA (generic cell rate algorithm) limiter keyed
// by bucket name. The API layer calls it once per request with the key's
// bucket name (and, when the workspace-wide cap is switched on, a second time
// with a workspace-scoped name); one bucket never affects another.
//
// Semantics, for a bucket with limit L requests per second (1 <= L <=
// kTpsLimitMax); all arithmetic is exact integer arithmetic, time is in
// integer microseconds and is passed in by the caller (never read here):
//
//   T   = 1 s / L                 emission interval
//   tau = 1 s - T                 tolerance; burst capacity B = L
//   TAT                           theoretical arrival time, initially -inf
//   a request at t is admitted iff  max(TAT, t) - t <= tau,
//   and on admission                TAT := max(TAT, t) + T.
//   Refused requests leave the bucket unchanged.
//
// Guarantees (proved in rate_limiter.cc):
//   (1) in every half-open window [t, t + 1 s) at most 2L - 1 requests of one
//       bucket are admitted (< L + B = 2L). This holds for any order of
//       timestamps, so time going backwards never over-admits, and across
//       limit changes with L = the largest limit in force during the window;
//   (2) a bucket whose requests (in non-decreasing time order) number at most
//       L in every half-open 1-second window is never refused, provided the
//       limiter had room for the bucket (see buckets_max below).
//
// Internally time is scaled by L, so one unit is 1/L us, T is exactly
// kMicrosPerSecond units and no division is needed on the decision path.
//
// Limit changes take effect on the very next call: the bucket's TAT is kept
// as the same instant (rounded up to the new unit), i.e. the fraction of the
// burst already used is carried over; rounding never favours the caller.
//
// Memory: at most options.buckets_max buckets are held; a bucket is created
// only by an admitted request. A bucket whose TAT <= now is indistinguishable
// from a fresh one; when a shard is at its share of buckets_max, all such
// buckets of the shard are evicted at once. If none can be, a request for a
// bucket that is not held is refused (allowed=false, remaining 0,
// retry_after_us = reset_us = kShardFullRetryAfterUs) instead of being
// admitted without state. To keep eviction from over-admitting when time
// later goes backwards, every shard remembers the latest evicted TAT and new
// buckets start from it instead of -inf (for non-decreasing time this is
// exactly a fresh bucket).
//
// Thread safety: RateLimiter is thread-safe; Admit/Forget/size may be called
// concurrently from any number of threads. Buckets are spread over
// options.shards shards by a hash of the name, each shard behind its own
// mutex. Admit on a bucket that is already held does not allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace keyledger {

// Largest accepted limit, requests per second per bucket.
inline constexpr uint32_t kTpsLimitMax = 1'000'000;
// Retry-after given when a new bucket is refused because its shard is full.
inline constexpr int64_t kShardFullRetryAfterUs = 1'000'000;

struct RateLimiterOptions {
  // Number of independently locked shards. More shards, less contention.
  // REQUIRES: shards >= 1.
  size_t shards = 64;
  // Upper bound on buckets held across all shards (each shard holds at most
  // its even share, buckets_max / shards rounded up or down). One bucket costs
  // roughly 100 bytes plus its name. REQUIRES: buckets_max >= shards.
  size_t buckets_max = 1'000'000;
  // Mixed into the hash that picks a bucket's shard. Give each process a
  // random one, so that nobody can choose names that crowd one shard (whose
  // full share would refuse new keys there, see Admit). Default 0.
  uint64_t shard_seed = 0;
};

// The outcome of one Admit call; maps onto 429 / Retry-After / RateLimit-*.
struct RateDecision {
  bool allowed = false;
  // The limit the decision was made with, requests per second.
  uint32_t limit = 0;
  // How many more requests would be admitted right now (at the same now_us),
  // after this decision. 0 when refused.
  uint32_t remaining = 0;
  // Microseconds until the bucket is full again (remaining would be limit);
  // 0 when it is full now.
  int64_t reset_us = 0;
  // 0 when allowed; else microseconds until a retry would be admitted if no
  // other request for the bucket comes in between (always >= 1).
  int64_t retry_after_us = 0;
};

class RateLimiter {
 public:
  // REQUIRES: options.shards >= 1, options.buckets_max >= options.shards.
  explicit RateLimiter(RateLimiterOptions options);
  ~RateLimiter();

  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Decides one request for `bucket_name` at `now_us` (UTC microseconds since
  // the Unix epoch) under a limit of `limit_tps` requests per second, and
  // records it when admitted. Returns the decision.
  // REQUIRES: 1 <= limit_tps <= kTpsLimitMax.
  RateDecision Admit(std::string_view bucket_name, uint32_t limit_tps, int64_t now_us);

  // Drops the state of `bucket_name` (e.g. the key was deleted); its next
  // request is treated as a new bucket. No-op when the bucket is not held.
  void Forget(std::string_view bucket_name);

  // Returns the number of buckets held right now.
  size_t size() const;

 private:
  struct Shard;

  Shard& ShardFor(std::string_view bucket_name) const;

  const size_t shard_count_;
  const uint64_t shard_seed_;
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace keyledger
