// LatencyHistogram: a mergeable log-linear (HDR-style) histogram of latencies
// in integer microseconds, with a proven relative-error bound on percentiles.
//
// Buckets. With kSubBucketBits = 6 (64 sub-buckets per power of two):
//   - every value v < 128 has its own bucket of width 1 (index v);
//   - a value v in [2^e, 2^(e+1)), 7 <= e <= 31, falls in one of 64 equal
//     buckets of width w = 2^(e-6); bucket index = ((e-5) << 6) + (v >> (e-6)) - 64.
//   Values 0 .. kLatencyTrackedUsMax (2^32 - 1 us, about 71.6 minutes) use
//   kLatencyBucketCount = 1728 buckets. Larger values are clamped into the
//   last bucket; count() and max() stay exact.
//
// Rank rule. For n = count() > 0 and per_mille p in [0, 1000], the rank is
//   k = ceil(n * p / 1000), clamped to [1, n]  (exact integer arithmetic),
// i.e. the k-th smallest recorded value (1-based), "nearest rank" definition.
// Percentile(p) returns:
//   - min() when k == 1 and max() when k == n (both exact);
//   - otherwise the representative r(b) of the bucket b holding the k-th
//     smallest value, clamped into [min(), max()], where for a bucket of lowest
//     value L and width w, r(b) = L + (w - 1) / 2 (integer division).
//
// Bound. Let x be the exact k-th smallest recorded value (same rank rule on the
// sorted raw values) and y = Percentile(p). If x <= kLatencyTrackedUsMax then
//   |y - x| < x / 128   (relative error strictly below 0.78125%, so <= 1%),
// and y == x whenever x < 128 or the rank is 1 or n.
//
// Proof. Bucketing is monotone: v1 <= v2 implies index(v1) <= index(v2), so
// the bucket whose cumulative count first reaches k (the one Percentile picks)
// is exactly the bucket holding x. Let that bucket hold the integers
// [L, L + w - 1].
//   (a) w = 1 (all x < 128, by construction): r = L = x, error 0.
//   (b) w = 2^(e-6) >= 2: the bucket lies in [2^e, 2^(e+1)), so L >= 2^e = 64w.
//       r = L + w/2 - 1. If x <= r: r - x <= r - L = w/2 - 1 and x >= L, so
//       (r - x)/x <= (w/2 - 1)/(64w) < 1/128. If x > r: x - r <= (L + w - 1) - r
//       = w/2 and x > r >= L >= 64w, so (x - r)/x < (w/2)/(64w) = 1/128.
//   (c) Clamping into [min, max] never increases the error: min <= x <= max,
//       so moving r towards that interval moves it towards x.
//   (d) k == 1 gives x = min, k == n gives x = max: returned exactly.
// For x > kLatencyTrackedUsMax no bound holds (the value was clamped); the
// result is then at least 4,261,412,864 us (~71 minutes) or max().
//
// Merging adds counts bucket by bucket, so Merge(a, b) equals the histogram of
// the concatenated data exactly (including min and max), in any order.
//
// Thread safety: plain values; const methods may be called concurrently,
// anything else needs external synchronization.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ledger/prefetch.h"
#include "ledger/status.h"

namespace keyledger {

// Sub-buckets per power of two: 2^kLatencySubBucketBits.
inline constexpr uint32_t kLatencySubBucketBits = 6;
// Largest value bucketed within the error bound (2^32 - 1 us, ~71.6 minutes).
inline constexpr uint64_t kLatencyTrackedUsMax = (uint64_t{1} << 32) - 1;
// Number of buckets: 27 groups of 64 (values 0..127 exact, then 25 octaves).
inline constexpr size_t kLatencyBucketCount = (32 - kLatencySubBucketBits + 1)
                                              << kLatencySubBucketBits;
// Largest serialized histogram: version, bucket count, min, max, and per
// bucket an index gap (<= 2 bytes) and a count (<= 10 bytes).
inline constexpr size_t kLatencySerializedBytesMax = 1 + 3 + 10 + 10 + kLatencyBucketCount * 12;

class LatencyHistogram {
 public:
  LatencyHistogram() = default;

  // Returns the bucket index of `value_us` (values above kLatencyTrackedUsMax
  // map to the last bucket). Always < kLatencyBucketCount.
  static size_t BucketIndex(uint64_t value_us);
  // Returns the smallest value of bucket `index`.
  // REQUIRES: index < kLatencyBucketCount.
  static uint64_t BucketLowest(size_t index);
  // Returns the largest value of bucket `index` (ignoring clamping).
  // REQUIRES: index < kLatencyBucketCount.
  static uint64_t BucketHighest(size_t index);

  // Records `count` occurrences of `value_us`; count 0 is a no-op. Never
  // allocates. REQUIRES: count() + count does not overflow uint64_t.
  void Record(uint64_t value_us, uint64_t count = 1);

  // Adds every recorded value of `other` to this histogram. Never allocates.
  // REQUIRES: count() + other.count() does not overflow uint64_t.
  void Merge(const LatencyHistogram& other);

  // Returns the number of recorded values.
  uint64_t count() const { return count_; }
  // Returns the exact smallest / largest recorded value; 0 when empty.
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  uint64_t max() const { return max_; }

  // Returns the per_mille-th percentile by the rank rule above (500: p50,
  // 950: p95, 990: p99, 1000: max); 0 when empty.
  // REQUIRES: per_mille <= 1000.
  uint64_t Percentile(uint32_t per_mille) const;

  // Returns the number of values recorded in bucket `index`.
  // REQUIRES: index < kLatencyBucketCount.
  uint64_t bucket_count(size_t index) const;

  // Returns a compact encoding: only non-empty buckets, varints. At most
  // kLatencySerializedBytesMax bytes; equal histograms encode equally.
  std::string Serialize() const;

  // Decodes what Serialize produced. Returns Corruption for anything else:
  // unknown version, truncated or over-long or non-canonical varints, bucket
  // indexes out of range or not increasing, zero counts, a count total that
  // overflows, min/max not in the first/last non-empty bucket, min > max,
  // or trailing bytes. Never crashes on any input.
  static Result<LatencyHistogram> Deserialize(std::string_view bytes);

  bool operator==(const LatencyHistogram& other) const;

 private:
  friend class CompactLatencyHistogram;

  std::array<uint64_t, kLatencyBucketCount> counts_{};
  uint64_t count_ = 0;
  uint64_t min_ = 0;  // meaningful only when count_ > 0
  uint64_t max_ = 0;
};

// CompactLatencyHistogram: the same buckets held sparsely (only non-empty
// buckets, 8 bytes each) for the many small histograms of a metrics fold.
// Up to two entries are held inside the object (a minute cell of a sparse
// series allocates nothing); Record may allocate when a bucket is used for
// the first time beyond that. A bucket is held as a run of entries of at most
// 2^32 - 1 each, of which only the last may be below that maximum.
//
// Thread safety: as LatencyHistogram.
class CompactLatencyHistogram {
 public:
  // Records one occurrence of `value_us`.
  // REQUIRES: count() < UINT64_MAX.
  void Record(uint64_t value_us);

  // Adds every recorded value of `other`, in place (allocating at most when
  // the vector grows) unless some count nears the entry maximum, when the
  // merged entries are allocated once. Costs O(k log(n / k)) for k entries
  // of `other` found among n, plus moving the entries above the lowest new
  // bucket.
  // REQUIRES: count() + other.count() does not overflow uint64_t.
  void Merge(const CompactLatencyHistogram& other);

  // Adds every recorded value to `*dense`.
  // REQUIRES: dense != nullptr; the total count does not overflow.
  void MergeInto(LatencyHistogram* dense) const;

  // Returns the number of recorded values.
  uint64_t count() const { return count_; }
  // Returns the number of sparse entries held (memory is 8 bytes each).
  size_t entry_count() const { return entries_.size(); }
  // Asks the CPU to fetch the first entries into the cache, for a walk over
  // many histograms that will read this one soon. Changes nothing.
  void Prefetch() const { PrefetchRead(entries_.begin()); }

  // Returns the encoding LatencyHistogram::Serialize gives for the same
  // values (same bytes), without building a dense histogram. For owners that
  // persist many small histograms (projections/call_projections.h).
  std::string Serialize() const;
  // The same encoding, appended to `*out` (for owners reusing one buffer).
  void SerializeTo(std::string* out) const;

  // Decodes what either Serialize produced. Returns Corruption exactly when
  // LatencyHistogram::Deserialize does (both use one parser). Builds the
  // sparse entries directly: no dense histogram, no allocation beyond the
  // entries themselves (a metrics store load decodes millions of these).
  static Result<CompactLatencyHistogram> Deserialize(std::string_view bytes);

 private:
  struct Entry {
    uint16_t index;
    uint32_t count;
  };
  static_assert(sizeof(Entry) == 8);
  static_assert(std::is_trivially_copyable_v<Entry>);

  // A vector of entries holding up to kInline of them inside itself.
  class Entries {
   public:
    Entries() {}
    Entries(const Entries& other) { Assign(other); }
    Entries(Entries&& other) noexcept { Steal(&other); }
    Entries& operator=(const Entries& other);
    Entries& operator=(Entries&& other) noexcept;
    ~Entries() { Release(); }

    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    Entry* begin() { return data(); }
    Entry* end() { return data() + size_; }
    const Entry* begin() const { return data(); }
    const Entry* end() const { return data() + size_; }
    Entry& operator[](size_t i) { return data()[i]; }
    const Entry& operator[](size_t i) const { return data()[i]; }
    Entry& back() { return data()[size_ - 1]; }
    void reserve(size_t n) {
      if (n > capacity_) Grow(n);
    }
    void push_back(Entry e) {
      if (size_ == capacity_) Grow(size_ + 1);
      data()[size_++] = e;
    }
    // Inserts `e` before `pos` (an element of this vector or end()).
    void insert(Entry* pos, Entry e);
    // Sets the size to n; entries beyond the old size are unspecified.
    void resize_uninitialized(size_t n) {
      reserve(n);
      size_ = static_cast<uint32_t>(n);
    }

   private:
    static constexpr uint32_t kInline = 2;
    bool is_inline() const { return capacity_ == kInline; }
    Entry* data() { return is_inline() ? inline_ : heap_; }
    const Entry* data() const { return is_inline() ? inline_ : heap_; }
    void Grow(size_t min_capacity);
    void Assign(const Entries& other);
    void Steal(Entries* other);
    void Release();

    union {
      Entry inline_[kInline];
      Entry* heap_;
    };
    uint32_t size_ = 0;
    uint32_t capacity_ = kInline;
  };
  static constexpr uint32_t kEntryCountMax = UINT32_MAX;
  // Merge adds `other` entry by entry (AddInPlace) when it has at most this
  // many (a minute of one or two calls closing), else by MergeInPlace.
  static constexpr size_t kMergeEntryByEntryMax = 2;
  // MergeInPlace looks this many entries ahead one by one before galloping.
  static constexpr size_t kMergeWalkEntries = 8;

  // Adds `count` values of bucket `index` in place, keeping the entries
  // canonical (per index: full entries, then at most one partial one).
  void AddInPlace(uint16_t index, uint32_t count);
  // Appends `count` values of bucket `index` to sorted `*out`, filling its
  // last entry first. REQUIRES: out is empty or out->back().index <= index.
  static void Append(uint16_t index, uint64_t count, Entries* out);
  // Returns the first position at or after `from` whose entry's index is at
  // least `index` (or the size), searching in steps that double, so that
  // finding k ascending indexes among n entries costs O(k log(n / k)).
  size_t Gallop(size_t from, uint16_t index) const;
  // Merges `other`'s entries in place: adds to the entries of indexes both
  // hold, and inserts the others by one backward pass that moves only the
  // entries above the lowest insertion, a block at a time. Returns false
  // (and changes nothing) if an entry of `other`, or one of this that it
  // adds to, holds more than half the entry maximum, so that a sum might not
  // fit one entry.
  bool MergeInPlace(const Entries& other);
  // Merges `other`'s entries into a new vector (any counts).
  void MergeAllocating(const Entries& other);

  // Sorted by index; runs of one index allowed. Canonical: every operation
  // leaves, per index, full entries (kEntryCountMax) then at most one partial
  // entry, so the entries are a function of the per-bucket totals.
  Entries entries_;
  uint64_t count_ = 0;
  uint64_t min_ = 0;
  uint64_t max_ = 0;
};

}  // namespace keyledger
