#include "projections/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <cassert>
#include <limits>
#include <utility>

#include "ledger/varint.h"

namespace keyledger {
namespace {

constexpr uint64_t kSubBuckets = uint64_t{1} << kLatencySubBucketBits;  // 64
constexpr uint8_t kFormatVersion = 1;

static_assert(kLatencyBucketCount == 1728);
static_assert(kLatencyBucketCount <= std::numeric_limits<uint16_t>::max());


}  // namespace

size_t LatencyHistogram::BucketIndex(uint64_t value_us) {
  const uint64_t v = std::min(value_us, kLatencyTrackedUsMax);
  if (v < 2 * kSubBuckets) return static_cast<size_t>(v);
  const uint32_t e = 63 - static_cast<uint32_t>(std::countl_zero(v));  // 7..31
  const uint32_t shift = e - kLatencySubBucketBits;
  const size_t index = (size_t{e - kLatencySubBucketBits + 1} << kLatencySubBucketBits) +
                       static_cast<size_t>(v >> shift) - kSubBuckets;
  assert(index >= 2 * kSubBuckets && index < kLatencyBucketCount);
  return index;
}

uint64_t LatencyHistogram::BucketLowest(size_t index) {
  assert(index < kLatencyBucketCount);
  const size_t group = index >> kLatencySubBucketBits;
  if (group == 0) return index;
  const uint64_t sub = index & (kSubBuckets - 1);
  return (kSubBuckets + sub) << (group - 1);
}

uint64_t LatencyHistogram::BucketHighest(size_t index) {
  assert(index < kLatencyBucketCount);
  const size_t group = index >> kLatencySubBucketBits;
  const uint64_t width = group == 0 ? 1 : uint64_t{1} << (group - 1);
  return BucketLowest(index) + width - 1;
}

void LatencyHistogram::Record(uint64_t value_us, uint64_t count) {
  if (count == 0) return;
  assert(count_ <= std::numeric_limits<uint64_t>::max() - count);
  counts_[BucketIndex(value_us)] += count;
  min_ = count_ == 0 ? value_us : std::min(min_, value_us);
  max_ = std::max(max_, value_us);
  count_ += count;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  assert(count_ <= std::numeric_limits<uint64_t>::max() - other.count_);
  for (size_t i = 0; i < kLatencyBucketCount; ++i) counts_[i] += other.counts_[i];
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
}

uint64_t LatencyHistogram::Percentile(uint32_t per_mille) const {
  assert(per_mille <= 1000);
  if (count_ == 0) return 0;
  // rank = ceil(n * p / 1000) without overflow: n = 1000q + r.
  const uint64_t q = count_ / 1000;
  const uint64_t r = count_ % 1000;
  uint64_t rank = q * per_mille + (r * per_mille + 999) / 1000;
  rank = std::clamp<uint64_t>(rank, 1, count_);
  if (rank == 1) return min_;
  if (rank == count_) return max_;
  uint64_t seen = 0;
  for (size_t i = 0; i < kLatencyBucketCount; ++i) {
    seen += counts_[i];
    if (seen < rank) continue;
    const uint64_t lowest = BucketLowest(i);
    const uint64_t representative = lowest + (BucketHighest(i) - lowest) / 2;
    return std::clamp(representative, min_, max_);
  }
  assert(false && "bucket counts sum to count_");
  return max_;
}

uint64_t LatencyHistogram::bucket_count(size_t index) const {
  assert(index < kLatencyBucketCount);
  return counts_[index];
}

std::string LatencyHistogram::Serialize() const {
  std::string out;
  out.push_back(static_cast<char>(kFormatVersion));
  const size_t used = static_cast<size_t>(
      std::count_if(counts_.begin(), counts_.end(), [](uint64_t c) { return c != 0; }));
  PutVarint(used, &out);
  if (used == 0) return out;
  PutVarint(min_, &out);
  PutVarint(max_, &out);
  size_t next = 0;  // the index a gap of 0 would name
  for (size_t i = 0; i < kLatencyBucketCount; ++i) {
    if (counts_[i] == 0) continue;
    PutVarint(i - next, &out);
    PutVarint(counts_[i], &out);
    next = i + 1;
  }
  assert(out.size() <= kLatencySerializedBytesMax);
  return out;
}

namespace {

// The decoded summary of a histogram encoding (see LatencyHistogram::Serialize).
struct DecodedSummary {
  uint64_t count = 0;  // sum of the bucket counts
  uint64_t min = 0;    // meaningful only when count > 0
  uint64_t max = 0;
};

// Parses what LatencyHistogram::Serialize produced, calling add(index, count)
// for each used bucket in ascending index order (count > 0, their sum fits
// in uint64_t). The single definition of what both Deserialize functions
// accept: returns Corruption for anything else (`add` may have been called
// for a prefix of the buckets by then).
template <typename AddBucket>
Status ParseHistogram(std::string_view bytes, DecodedSummary* out, AddBucket&& add) {
  if (bytes.empty() || static_cast<uint8_t>(bytes[0]) != kFormatVersion) {
    return Status::Corruption("latency histogram: unknown format version");
  }
  bytes.remove_prefix(1);
  uint64_t used = 0;
  if (!GetVarint(&bytes, &used) || used > kLatencyBucketCount) {
    return Status::Corruption("latency histogram: bad bucket count");
  }
  *out = DecodedSummary{};
  if (used == 0) {
    if (!bytes.empty()) return Status::Corruption("latency histogram: trailing bytes");
    return Status::Ok();
  }
  uint64_t lo = 0;
  uint64_t hi = 0;
  if (!GetVarint(&bytes, &lo) || !GetVarint(&bytes, &hi) || lo > hi) {
    return Status::Corruption("latency histogram: bad min/max");
  }
  uint64_t next = 0;
  size_t first = 0;
  size_t last = 0;
  for (uint64_t n = 0; n < used; ++n) {
    uint64_t gap = 0;
    uint64_t count = 0;
    if (!GetVarint(&bytes, &gap) || !GetVarint(&bytes, &count)) {
      return Status::Corruption("latency histogram: truncated bucket");
    }
    if (gap >= kLatencyBucketCount - next) {
      return Status::Corruption("latency histogram: bucket index out of range");
    }
    if (count == 0 || count > std::numeric_limits<uint64_t>::max() - out->count) {
      return Status::Corruption("latency histogram: bad bucket count value");
    }
    const size_t index = static_cast<size_t>(next + gap);
    add(index, count);
    out->count += count;
    if (n == 0) first = index;
    last = index;
    next = index + 1;
  }
  if (!bytes.empty()) return Status::Corruption("latency histogram: trailing bytes");
  if (LatencyHistogram::BucketIndex(lo) != first || LatencyHistogram::BucketIndex(hi) != last ||
      (out->count == 1 && lo != hi)) {
    return Status::Corruption("latency histogram: min/max outside their buckets");
  }
  out->min = lo;
  out->max = hi;
  return Status::Ok();
}

}  // namespace

Result<LatencyHistogram> LatencyHistogram::Deserialize(std::string_view bytes) {
  LatencyHistogram h;
  DecodedSummary summary;
  KL_RETURN_IF_ERROR(
      ParseHistogram(bytes, &summary, [&](size_t index, uint64_t count) { h.counts_[index] = count; }));
  h.count_ = summary.count;
  h.min_ = summary.min;
  h.max_ = summary.max;
  return h;
}

bool LatencyHistogram::operator==(const LatencyHistogram& other) const {
  if (count_ != other.count_ || min() != other.min() || max_ != other.max_) return false;
  return count_ == 0 || counts_ == other.counts_;  // empty: every count is 0
}

// ---- CompactLatencyHistogram ----------------------------------------------------

void CompactLatencyHistogram::Record(uint64_t value_us) {
  assert(count_ < std::numeric_limits<uint64_t>::max());
  AddInPlace(static_cast<uint16_t>(LatencyHistogram::BucketIndex(value_us)), 1);
  min_ = count_ == 0 ? value_us : std::min(min_, value_us);
  max_ = std::max(max_, value_us);
  ++count_;
}

// ---- CompactLatencyHistogram::Entries -------------------------------------------

CompactLatencyHistogram::Entries& CompactLatencyHistogram::Entries::operator=(
    const Entries& other) {
  if (this != &other) {
    Release();
    Assign(other);
  }
  return *this;
}

CompactLatencyHistogram::Entries& CompactLatencyHistogram::Entries::operator=(
    Entries&& other) noexcept {
  if (this != &other) {
    Release();
    Steal(&other);
  }
  return *this;
}

void CompactLatencyHistogram::Entries::insert(Entry* pos, Entry e) {
  const size_t at = static_cast<size_t>(pos - data());
  assert(at <= size_);
  if (size_ == capacity_) Grow(size_ + 1);
  Entry* d = data();
  std::memmove(d + at + 1, d + at, (size_ - at) * sizeof(Entry));
  d[at] = e;
  ++size_;
}

void CompactLatencyHistogram::Entries::Grow(size_t min_capacity) {
  assert(min_capacity > capacity_);
  const size_t capacity = std::max<size_t>(min_capacity, size_t{capacity_} * 2);
  assert(capacity <= std::numeric_limits<uint32_t>::max());
  Entry* heap = new Entry[capacity];
  std::memcpy(heap, data(), size_ * sizeof(Entry));
  if (!is_inline()) delete[] heap_;
  heap_ = heap;
  capacity_ = static_cast<uint32_t>(capacity);
}

// REQUIRES: this is empty and inline (constructed or released).
void CompactLatencyHistogram::Entries::Assign(const Entries& other) {
  assert(size_ == 0 && is_inline());
  reserve(other.size_);
  std::memcpy(data(), other.data(), other.size_ * sizeof(Entry));
  size_ = other.size_;
}

// REQUIRES: this is empty and inline (constructed or released).
void CompactLatencyHistogram::Entries::Steal(Entries* other) {
  assert(size_ == 0 && is_inline());
  if (other->is_inline()) {
    std::memcpy(inline_, other->inline_, sizeof(inline_));
  } else {
    heap_ = other->heap_;
    capacity_ = other->capacity_;
    other->capacity_ = kInline;
  }
  size_ = other->size_;
  other->size_ = 0;
}

void CompactLatencyHistogram::Entries::Release() {
  if (!is_inline()) delete[] heap_;
  capacity_ = kInline;
  size_ = 0;
}

// ---- CompactLatencyHistogram ------------------------------------------------------

void CompactLatencyHistogram::Append(uint16_t index, uint64_t count, Entries* out) {
  assert(out->empty() || out->back().index <= index);
  while (count > 0) {
    if (!out->empty() && out->back().index == index && out->back().count < kEntryCountMax) {
      const uint64_t add = std::min<uint64_t>(count, kEntryCountMax - out->back().count);
      out->back().count += static_cast<uint32_t>(add);
      count -= add;
    } else {
      const uint64_t add = std::min<uint64_t>(count, kEntryCountMax);
      out->push_back(Entry{index, static_cast<uint32_t>(add)});
      count -= add;
    }
  }
}

void CompactLatencyHistogram::AddInPlace(uint16_t index, uint32_t count) {
  assert(count > 0);
  auto it = std::lower_bound(entries_.begin(), entries_.end(), index,
                             [](const Entry& e, uint16_t i) { return e.index < i; });
  while (it != entries_.end() && it->index == index && it->count == kEntryCountMax) ++it;
  if (it != entries_.end() && it->index == index) {  // the run's partial entry
    const uint32_t room = kEntryCountMax - it->count;
    if (count <= room) {
      it->count += count;
      return;
    }
    it->count = kEntryCountMax;
    count -= room;
    ++it;
  }
  entries_.insert(it, Entry{index, count});
}

void CompactLatencyHistogram::Merge(const CompactLatencyHistogram& other) {
  if (other.count_ == 0) return;
  assert(count_ <= std::numeric_limits<uint64_t>::max() - other.count_);
  if (&other == this) {  // the in-place path reads `other` while changing this
    const CompactLatencyHistogram copy = other;
    Merge(copy);
    return;
  }
  // Every path leaves the same (canonical) entries.
  if (other.entries_.size() <= kMergeEntryByEntryMax) {
    for (const Entry& e : other.entries_) AddInPlace(e.index, e.count);
  } else if (!MergeInPlace(other.entries_)) {
    MergeAllocating(other.entries_);
  }
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
}

size_t CompactLatencyHistogram::Gallop(size_t from, uint16_t index) const {
  const size_t n = entries_.size();
  // Every entry in [from, lo) is below `index`; hi is n or an entry at or
  // above it.
  size_t lo = from;
  size_t hi = n;
  for (size_t step = 1;; step *= 2) {
    const size_t probe = lo + step - 1;
    if (probe >= n) break;
    if (entries_[probe].index >= index) {
      hi = probe;
      break;
    }
    lo = probe + 1;
  }
  const Entry* first = entries_.begin();
  return static_cast<size_t>(std::lower_bound(first + lo, first + hi, index,
                                              [](const Entry& e, uint16_t i) {
                                                return e.index < i;
                                              }) -
                             first);
}

bool CompactLatencyHistogram::MergeInPlace(const Entries& other) {
  constexpr uint32_t kHalf = kEntryCountMax / 2;
  constexpr uint32_t kMatch = uint32_t{1} << 31;  // in `at`: adds to an existing entry
  // No entry of `other` above half the maximum: `other` has no runs, so at
  // most one entry per bucket.
  if (other.size() > kLatencyBucketCount) return false;
  std::array<uint32_t, kLatencyBucketCount> at;  // per entry of `other`: position | kMatch
  const size_t n = entries_.size();
  if (n >= kMatch) return false;  // a position must fit below the flag bit
  size_t added = 0;
  size_t pos = 0;
  for (size_t k = 0; k < other.size(); ++k) {
    const Entry& o = other[k];
    if (o.count > kHalf) return false;
    // In a dense merge the next index is a few entries on: walk there, and
    // gallop only past that.
    const size_t walk_end = std::min(n, pos + kMergeWalkEntries);
    while (pos < walk_end && entries_[pos].index < o.index) ++pos;
    if (pos == walk_end && pos < n) pos = Gallop(pos, o.index);
    const bool match = pos < n && entries_[pos].index == o.index;
    // An entry added to holds at most half the maximum, so the sum fits (and
    // it is not the full head of a run).
    if (match && entries_[pos].count > kHalf) return false;
    added += match ? 0 : 1;
    at[k] = static_cast<uint32_t>(pos) | (match ? kMatch : 0);
  }
  entries_.resize_uninitialized(n + added);
  // Backwards from the end, moving blocks of this up by the number of
  // insertions still to come, until the last (lowest) insertion: below it
  // nothing moves.
  size_t mine = n;  // entries_[0, mine) are not yet placed
  size_t write = n + added;
  size_t k = other.size();
  while (write != mine) {
    assert(k > 0);
    const Entry& o = other[--k];
    const bool match = (at[k] & kMatch) != 0;
    const size_t p = at[k] & ~kMatch;
    const size_t tail = match ? p + 1 : p;  // entries_[tail, mine) follow o
    assert(tail <= mine);
    write -= mine - tail;
    std::memmove(entries_.begin() + write, entries_.begin() + tail, (mine - tail) * sizeof(Entry));
    entries_[--write] = match ? Entry{o.index, entries_[p].count + o.count} : o;
    mine = p;
  }
  // The rest of `other` adds to entries that have not moved.
  while (k > 0) {
    --k;
    assert((at[k] & kMatch) != 0);
    entries_[at[k] & ~kMatch].count += other[k].count;
  }
  return true;
}

void CompactLatencyHistogram::MergeAllocating(const Entries& other) {
  Entries merged;
  merged.reserve(entries_.size() + other.size());
  size_t i = 0;
  size_t j = 0;
  while (i < entries_.size() || j < other.size()) {
    const bool take_mine =
        j == other.size() || (i < entries_.size() && entries_[i].index <= other[j].index);
    const Entry& e = take_mine ? entries_[i++] : other[j++];
    Append(e.index, e.count, &merged);
  }
  entries_ = std::move(merged);
}

void CompactLatencyHistogram::MergeInto(LatencyHistogram* dense) const {
  assert(dense != nullptr);
  if (count_ == 0) return;
  assert(dense->count_ <= std::numeric_limits<uint64_t>::max() - count_);
  uint64_t sum = 0;
  for (const Entry& e : entries_) {
    assert(e.count > 0 && e.index < kLatencyBucketCount);
    dense->counts_[e.index] += e.count;
    sum += e.count;
  }
  assert(sum == count_);
  dense->min_ = dense->count_ == 0 ? min_ : std::min(dense->min_, min_);
  dense->max_ = std::max(dense->max_, max_);
  dense->count_ += count_;
}

std::string CompactLatencyHistogram::Serialize() const {
  std::string out;
  SerializeTo(&out);
  return out;
}

void CompactLatencyHistogram::SerializeTo(std::string* out_string) const {
  [[maybe_unused]] const size_t start = out_string->size();
  {
    VarintAppender out(out_string);
    out.PutByte(kFormatVersion);
    size_t used = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (i == 0 || entries_[i].index != entries_[i - 1].index) ++used;
    }
    out.PutVarint(used);
    if (used > 0) {
      out.PutVarint(min_);
      out.PutVarint(max_);
    }
    size_t next = 0;  // the index a gap of 0 would name
    size_t i = 0;
    while (i < entries_.size()) {
      const uint16_t index = entries_[i].index;
      uint64_t count = 0;
      for (; i < entries_.size() && entries_[i].index == index; ++i) count += entries_[i].count;
      assert(count > 0 && index >= next);
      out.PutVarint(index - next);
      out.PutVarint(count);
      next = size_t{index} + 1;
    }
  }
  assert(out_string->size() - start <= kLatencySerializedBytesMax);
}

Result<CompactLatencyHistogram> CompactLatencyHistogram::Deserialize(std::string_view bytes) {
  CompactLatencyHistogram out;
  DecodedSummary summary;
  // Buckets arrive in ascending index order: each is appended.
  KL_RETURN_IF_ERROR(ParseHistogram(bytes, &summary, [&](size_t index, uint64_t count) {
    Append(static_cast<uint16_t>(index), count, &out.entries_);
  }));
  out.count_ = summary.count;
  out.min_ = summary.min;
  out.max_ = summary.max;
  return out;
}

}  // namespace keyledger
