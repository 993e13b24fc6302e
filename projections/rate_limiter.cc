// GCRA in exact integer arithmetic. See rate_limiter.h for the semantics.
//
// Units. For a bucket with limit L, times are kept in units of 1/L us
// ("units"): an instant of t us is t*L units, the emission interval
// T = 1 s / L = 1e6/L us is exactly kIntervalUnits = 1e6 units, the tolerance
// tau = 1 s - T is (L-1)*1e6 units and one second is L*T units. Values reach
// about 2^63 * 2^20, so they are held in 128-bit integers.
//
// Proof of guarantee (1): at most 2L-1 admissions in any [a, a + 1 s).
//   Facts, all read off the code below:
//   (F1) After an admission at t, TAT >= t + T (TAT := max(TAT, t) + T).
//   (F2) TAT as an instant never decreases: admission raises it by >= T,
//        refusal leaves it, a limit change rescales it rounding up
//        (RescaleTat), and a bucket evicted with TAT <= now comes back from
//        the shard floor, which is >= every TAT evicted from the shard.
//        (Forget is the one documented exception.)
//   (F3) Admission at t requires TAT <= t + tau.
//   Let r_1..r_m be the admitted requests with timestamps in [a, a + 1 s), in
//   the order they were processed (timestamps in any order). By (F1) TAT >=
//   a + T after r_1; by (F2) each of r_2..r_{m-1} adds >= T, so before r_m
//   TAT >= a + (m-1)T. By (F3) with t_m <= a + 1 s - 1 us:
//     a*L + (m-1)*1e6 <= TAT <= t_m*L + tau <= a*L + (1e6-1)*L + (L-1)*1e6
//     => (m-1)*1e6 <= 2e6*L - 1e6 - L  => m <= 2L - L/1e6 < 2L.
//   Nothing assumed the timestamps sorted, so time going backwards cannot
//   over-admit. With limit changes inside the window, run the same argument
//   in microseconds with T_min = 1 s / L_max: every admission adds >= T_min
//   and tau_i = 1 s - T_i <= 1 s - T_min, giving m < 2 * L_max.
//
// Proof of guarantee (2): if t_1 <= t_2 <= ... has at most L requests in
// every [s, s + 1 s), none is refused (fresh bucket, fixed L).
//   Induction on n: assume r_1..r_n were all admitted. Unrolling
//   TAT_k = max(TAT_{k-1}, t_k) + T from TAT_0 = -inf gives
//     TAT_n = max over 1 <= j <= n of (t_j + (n - j + 1) T).
//   (A start at the shard floor F <= t_1 instead of -inf adds the term
//   F + nT <= t_1 + nT, already in the max.) Request n+1 at t is admitted iff
//   every term satisfies t_j + (n-j+1)T - t <= tau. Let D = t - t_j >= 0 and
//   K = floor(D / 1 s). The n-j+2 requests j..n+1 lie in [t_j, t_j + (K+1) s),
//   which is K+1 half-open 1-second windows of <= L requests each, so
//   n-j+2 <= (K+1)L and (n-j+1)T <= (K+1)LT - T = (K+1) s - T. Hence
//     t_j + (n-j+1)T - t <= -D + (K+1) s - T <= -K s + (K+1) s - T = tau.
//   The base case is max(TAT_0, t_1) - t_1 = 0 <= tau.
//   Eviction keeps this for non-decreasing time: a bucket is evicted only
//   when TAT <= now, and the floor it leaves is <= that now <= every later t,
//   so max(F, t) = t exactly as for -inf. What refuses a conforming stream is
//   only a full shard (documented in the header).
//
// Honest retry_after: when refused at t, retry_after = ceil((TAT - tL - tau)/L)
// us is the least D with TAT <= (t + D)L + tau, so with no request in between
// a retry at t + D is admitted and one at t + D - 1 is not.

#include "projections/rate_limiter.h"

#include <algorithm>
#include <cassert>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>

namespace keyledger {
namespace {

__extension__ typedef __int128 Int128;

constexpr int64_t kMicrosPerSecond = 1'000'000;
// T in units of 1/L us, for every L.
constexpr Int128 kIntervalUnits = kMicrosPerSecond;
// Shard floor before anything was evicted: -inf for all practical purposes.
constexpr int64_t kFloorNoneUs = std::numeric_limits<int64_t>::min();
constexpr int64_t kExpiryNoneUs = std::numeric_limits<int64_t>::max();
constexpr size_t kCacheLineBytes = 64;

// Returns floor(a / b). REQUIRES: b > 0.
Int128 FloorDiv(Int128 a, Int128 b) {
  assert(b > 0);
  Int128 q = a / b;
  if (a % b != 0 && a < 0) --q;
  return q;
}

// Returns ceil(a / b). REQUIRES: b > 0.
Int128 CeilDiv(Int128 a, Int128 b) {
  assert(b > 0);
  Int128 q = a / b;
  if (a % b != 0 && a > 0) ++q;
  return q;
}

// Returns v clamped to the int64_t range.
int64_t SaturateToInt64(Int128 v) {
  constexpr Int128 kMax = std::numeric_limits<int64_t>::max();
  constexpr Int128 kMin = std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(std::clamp(v, kMin, kMax));
}

// Returns tau = 1 s - T for `limit`, in units of 1/limit us.
Int128 TauUnits(uint32_t limit) { return kIntervalUnits * (limit - 1); }

// One bucket: its theoretical arrival time and the limit it is scaled for.
struct Bucket {
  Int128 tat;      // units of 1/limit us
  uint32_t limit;  // 1 <= limit <= kTpsLimitMax
};

// Returns `tat` (units of 1/from us) as units of 1/to us, rounded up so the
// instant never moves earlier.
Int128 RescaleTat(Int128 tat, uint32_t from, uint32_t to) {
  assert(from >= 1 && to >= 1);
  Int128 rescaled = CeilDiv(tat * to, from);
  assert(rescaled * from >= tat * to);
  return rescaled;
}

// Returns the decision for a request at now_us against TAT `*tat` (units of
// 1/limit us) and, when admitted, advances *tat.
RateDecision Decide(Int128* tat, uint32_t limit, int64_t now_us) {
  const Int128 now = static_cast<Int128>(now_us) * limit;
  const Int128 tau = TauUnits(limit);
  const Int128 start = std::max(*tat, now);
  RateDecision d;
  d.limit = limit;
  if (start - now > tau) {
    d.retry_after_us = SaturateToInt64(CeilDiv(start - now - tau, limit));
    d.reset_us = SaturateToInt64(CeilDiv(start - now, limit));
    assert(d.retry_after_us >= 1 && d.reset_us >= d.retry_after_us);
    return d;
  }
  *tat = start + kIntervalUnits;
  const Int128 debt = *tat - now;  // the part of the 1 s capacity in use
  assert(debt >= kIntervalUnits && debt <= tau + kIntervalUnits);
  d.allowed = true;
  d.remaining = static_cast<uint32_t>((tau + kIntervalUnits - debt) / kIntervalUnits);
  d.reset_us = SaturateToInt64(CeilDiv(debt, limit));
  assert(d.remaining < limit && d.reset_us >= 1);
  return d;
}

// The decision for a bucket that cannot be held: its shard is full.
RateDecision ShardFullDecision(uint32_t limit) {
  RateDecision d;
  d.limit = limit;
  d.reset_us = kShardFullRetryAfterUs;
  d.retry_after_us = kShardFullRetryAfterUs;
  return d;
}

// Transparent hash so that find(std::string_view) does not build a string.
struct NameHash {
  using is_transparent = void;
  size_t operator()(std::string_view name) const {
    return std::hash<std::string_view>{}(name);
  }
};

using BucketMap = std::unordered_map<std::string, Bucket, NameHash, std::equal_to<>>;

}  // namespace

struct alignas(kCacheLineBytes) RateLimiter::Shard {
  // Evicts every bucket with TAT <= now_us. Returns whether any was evicted.
  // REQUIRES: mu held.
  bool EvictExpired(int64_t now_us);
  // Holds a new bucket. REQUIRES: mu held, `name` not held, room for it.
  void Insert(std::string_view name, Int128 tat, uint32_t limit);

  std::mutex mu;
  BucketMap buckets;  // GUARDED_BY(mu)
  size_t buckets_max = 0;
  // Latest TAT evicted from this shard, in us rounded up; new buckets start
  // here. GUARDED_BY(mu)
  int64_t floor_us = kFloorNoneUs;
  // A lower bound on floor(TAT in us) over all held buckets: nothing can be
  // evicted before it. GUARDED_BY(mu)
  int64_t expiry_min_us = kFloorNoneUs;
};

bool RateLimiter::Shard::EvictExpired(int64_t now_us) {
  if (now_us < expiry_min_us) return false;  // nothing can have expired yet
  size_t evicted = 0;
  int64_t remaining_min_us = kExpiryNoneUs;
  for (auto it = buckets.begin(); it != buckets.end();) {
    const Bucket& b = it->second;
    if (b.tat <= static_cast<Int128>(now_us) * b.limit) {
      const int64_t tat_us = SaturateToInt64(CeilDiv(b.tat, b.limit));
      assert(tat_us <= now_us);
      floor_us = std::max(floor_us, tat_us);
      it = buckets.erase(it);
      ++evicted;
    } else {
      remaining_min_us = std::min(remaining_min_us, SaturateToInt64(FloorDiv(b.tat, b.limit)));
      ++it;
    }
  }
  expiry_min_us = remaining_min_us;
  return evicted > 0;
}

void RateLimiter::Shard::Insert(std::string_view name, Int128 tat, uint32_t limit) {
  assert(buckets.size() < buckets_max);
  const bool inserted = buckets.emplace(std::string(name), Bucket{tat, limit}).second;
  assert(inserted);
  (void)inserted;
  expiry_min_us = std::min(expiry_min_us, SaturateToInt64(FloorDiv(tat, limit)));
}

RateLimiter::RateLimiter(RateLimiterOptions options)
    : shard_count_(options.shards),
      shard_seed_(options.shard_seed),
      shards_(new Shard[options.shards]) {
  assert(options.shards >= 1);
  assert(options.buckets_max >= options.shards);
  const size_t share = options.buckets_max / shard_count_;
  const size_t extra = options.buckets_max % shard_count_;
  for (size_t i = 0; i < shard_count_; ++i) {
    shards_[i].buckets_max = share + (i < extra ? 1 : 0);
    assert(shards_[i].buckets_max >= 1);
  }
}

RateLimiter::~RateLimiter() = default;

RateLimiter::Shard& RateLimiter::ShardFor(std::string_view bucket_name) const {
  // Mix the hash so the shard index does not correlate with the map's slot.
  const uint64_t h = (NameHash{}(bucket_name) ^ shard_seed_) * 0x9E3779B97F4A7C15ull;
  return shards_[(h >> 32) % shard_count_];
}

RateDecision RateLimiter::Admit(std::string_view bucket_name, uint32_t limit_tps,
                                int64_t now_us) {
  assert(limit_tps >= 1 && limit_tps <= kTpsLimitMax);
  Shard& shard = ShardFor(bucket_name);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.buckets.find(bucket_name);
  if (it != shard.buckets.end()) {
    Bucket& b = it->second;
    if (b.limit != limit_tps) {
      b.tat = RescaleTat(b.tat, b.limit, limit_tps);
      b.limit = limit_tps;
    }
    return Decide(&b.tat, limit_tps, now_us);
  }
  if (shard.buckets.size() >= shard.buckets_max && !shard.EvictExpired(now_us)) {
    return ShardFullDecision(limit_tps);
  }
  Int128 tat = static_cast<Int128>(shard.floor_us) * limit_tps;
  const RateDecision d = Decide(&tat, limit_tps, now_us);
  if (d.allowed) shard.Insert(bucket_name, tat, limit_tps);  // refused: state is the floor
  return d;
}

void RateLimiter::Forget(std::string_view bucket_name) {
  Shard& shard = ShardFor(bucket_name);
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.buckets.find(bucket_name);
  if (it != shard.buckets.end()) shard.buckets.erase(it);
}

size_t RateLimiter::size() const {
  size_t total = 0;
  for (size_t i = 0; i < shard_count_; ++i) {
    std::lock_guard<std::mutex> lock(shards_[i].mu);
    total += shards_[i].buckets.size();
  }
  return total;
}

}  // namespace keyledger
