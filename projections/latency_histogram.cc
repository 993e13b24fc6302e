#include "projections/latency_histogram.h"

#include <algorithm>
#include <bit>
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

Result<LatencyHistogram> LatencyHistogram::Deserialize(std::string_view bytes) {
  if (bytes.empty() || static_cast<uint8_t>(bytes[0]) != kFormatVersion) {
    return Status::Corruption("latency histogram: unknown format version");
  }
  bytes.remove_prefix(1);
  uint64_t used = 0;
  if (!GetVarint(&bytes, &used) || used > kLatencyBucketCount) {
    return Status::Corruption("latency histogram: bad bucket count");
  }
  LatencyHistogram h;
  if (used == 0) {
    if (!bytes.empty()) return Status::Corruption("latency histogram: trailing bytes");
    return h;
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
    if (count == 0 || count > std::numeric_limits<uint64_t>::max() - h.count_) {
      return Status::Corruption("latency histogram: bad bucket count value");
    }
    const size_t index = static_cast<size_t>(next + gap);
    h.counts_[index] = count;
    h.count_ += count;
    if (n == 0) first = index;
    last = index;
    next = index + 1;
  }
  if (!bytes.empty()) return Status::Corruption("latency histogram: trailing bytes");
  if (BucketIndex(lo) != first || BucketIndex(hi) != last || (h.count_ == 1 && lo != hi)) {
    return Status::Corruption("latency histogram: min/max outside their buckets");
  }
  h.min_ = lo;
  h.max_ = hi;
  return h;
}

bool LatencyHistogram::operator==(const LatencyHistogram& other) const {
  if (count_ != other.count_ || min() != other.min() || max_ != other.max_) return false;
  return count_ == 0 || counts_ == other.counts_;  // empty: every count is 0
}

// ---- CompactLatencyHistogram ----------------------------------------------------

void CompactLatencyHistogram::Record(uint64_t value_us) {
  assert(count_ < std::numeric_limits<uint64_t>::max());
  const auto index = static_cast<uint16_t>(LatencyHistogram::BucketIndex(value_us));
  auto it = std::lower_bound(entries_.begin(), entries_.end(), index,
                             [](const Entry& e, uint16_t i) { return e.index < i; });
  // Only the last entry of a run of one index may be below the entry maximum.
  while (it != entries_.end() && it->index == index &&
         it->count == kEntryCountMax) {
    ++it;
  }
  if (it != entries_.end() && it->index == index) {
    ++it->count;
  } else {
    entries_.insert(it, Entry{index, 1});
  }
  min_ = count_ == 0 ? value_us : std::min(min_, value_us);
  max_ = std::max(max_, value_us);
  ++count_;
}

void CompactLatencyHistogram::Append(uint16_t index, uint64_t count,
                                     std::vector<Entry>* out) {
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

void CompactLatencyHistogram::Merge(const CompactLatencyHistogram& other) {
  if (other.count_ == 0) return;
  assert(count_ <= std::numeric_limits<uint64_t>::max() - other.count_);
  std::vector<Entry> merged;
  merged.reserve(entries_.size() + other.entries_.size());
  size_t i = 0;
  size_t j = 0;
  while (i < entries_.size() || j < other.entries_.size()) {
    const bool take_mine = j == other.entries_.size() ||
                           (i < entries_.size() && entries_[i].index <= other.entries_[j].index);
    const Entry& e = take_mine ? entries_[i++] : other.entries_[j++];
    Append(e.index, e.count, &merged);
  }
  entries_ = std::move(merged);
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
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
  out.push_back(static_cast<char>(kFormatVersion));
  size_t used = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (i == 0 || entries_[i].index != entries_[i - 1].index) ++used;
  }
  PutVarint(used, &out);
  if (used == 0) return out;
  PutVarint(min_, &out);
  PutVarint(max_, &out);
  size_t next = 0;  // the index a gap of 0 would name
  size_t i = 0;
  while (i < entries_.size()) {
    const uint16_t index = entries_[i].index;
    uint64_t count = 0;
    for (; i < entries_.size() && entries_[i].index == index; ++i) count += entries_[i].count;
    assert(count > 0 && index >= next);
    PutVarint(index - next, &out);
    PutVarint(count, &out);
    next = size_t{index} + 1;
  }
  assert(out.size() <= kLatencySerializedBytesMax);
  return out;
}

Result<CompactLatencyHistogram> CompactLatencyHistogram::Deserialize(std::string_view bytes) {
  KL_ASSIGN_OR_RETURN(LatencyHistogram dense, LatencyHistogram::Deserialize(bytes));
  CompactLatencyHistogram out;
  for (size_t i = 0; i < kLatencyBucketCount; ++i) {
    if (dense.counts_[i] != 0) Append(static_cast<uint16_t>(i), dense.counts_[i], &out.entries_);
  }
  out.count_ = dense.count_;
  out.min_ = dense.min();
  out.max_ = dense.max_;
  return out;
}

}  // namespace keyledger
