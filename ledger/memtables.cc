#include "ledger/memtables.h"

#include <rocksdb/slice.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace keyledger {
namespace {

using KeyComparator = rocksdb::MemTableRep::KeyComparator;

// Slots of a new table; it doubles whenever it would be over half full.
constexpr size_t kSlotsInitial = size_t{1} << 16;
// A 64 MiB memtable of 34-byte event-id entries holds ~2 M of them (4 M
// slots); far beyond that something is wrong.
constexpr size_t kSlotsMax = size_t{1} << 28;
// A slot packs an entry pointer (x86-64 user addresses fit in 48 bits) with
// the top 16 bits of its key's hash, so a probe rejects most other keys
// without touching their entries. 0 is an empty slot.
constexpr int kTagShift = 48;
constexpr uint64_t kPointerMask = (uint64_t{1} << kTagShift) - 1;
// Versions of one user key gathered by Get without allocating.
constexpr size_t kVersionsInline = 4;

// A memtable entry: varint32 length | internal key (user key | 8-byte
// sequence and type) | varint32 length | value.
rocksdb::Slice InternalKeyOf(const char* entry) { return rocksdb::GetLengthPrefixedSlice(entry); }

std::string_view UserKeyOf(rocksdb::Slice internal_key) {
  assert(internal_key.size() >= 8);
  return std::string_view(internal_key.data(), internal_key.size() - 8);
}

std::string_view UserKeyOf(const char* entry) { return UserKeyOf(InternalKeyOf(entry)); }

size_t HashOf(std::string_view user_key) { return std::hash<std::string_view>{}(user_key); }

uint64_t TagOf(size_t hash) { return (static_cast<uint64_t>(hash) >> kTagShift) << kTagShift; }

uint64_t Pack(size_t hash, const char* entry) {
  const auto address = reinterpret_cast<uintptr_t>(entry);
  assert(entry != nullptr && (address & ~kPointerMask) == 0);
  return TagOf(hash) | address;
}

const char* EntryOf(uint64_t slot) { return reinterpret_cast<const char*>(slot & kPointerMask); }

// The first 8 bytes of the user key, big-endian, zero-padded: ordering these
// orders the keys bytewise wherever they differ, from an array in cache.
uint64_t SortPrefixOf(const char* entry) {
  const std::string_view key = UserKeyOf(entry);
  uint64_t prefix = 0;
  const size_t n = std::min<size_t>(8, key.size());
  for (size_t i = 0; i < n; i++) {
    prefix |= uint64_t{static_cast<uint8_t>(key[i])} << (56 - 8 * i);
  }
  return prefix;
}

// RocksDB's LookupKey (db/dbformat.h, which is not installed) begins with
// `const char* start_`: the key in memtable form, a length-prefixed internal
// key. It has since LevelDB, and that pointer is all Get needs. Should an
// upgrade move it, every lookup of an unflushed key would fail, which the
// KvStore and ledger tests (lookups before any flush) catch at once.
const char* MemtableKeyOf(const rocksdb::LookupKey& lookup) {
  const char* start = nullptr;
  std::memcpy(&start, &lookup, sizeof(start));
  return start;
}

// An open-addressing table (linear probing) of packed slots. Slots only ever
// go from empty to full, so a reader probing while the writer inserts sees
// each slot either empty or complete.
struct Table {
  explicit Table(size_t capacity)
      : mask(capacity - 1), slots(std::make_unique<std::atomic<uint64_t>[]>(capacity)) {
    assert(capacity >= 2 && (capacity & mask) == 0 && capacity <= kSlotsMax);
  }
  size_t capacity() const { return mask + 1; }
  size_t bytes() const { return capacity() * sizeof(uint64_t); }

  const size_t mask;
  const std::unique_ptr<std::atomic<uint64_t>[]> slots;
};

// The first index in [0, size) where `holds(at(i))` holds, or size.
// REQUIRES: `holds` is false up to some index and true from it on.
template <typename At, typename Holds>
size_t FirstWhere(size_t size, const At& at, const Holds& holds) {
  size_t low = 0;
  size_t high = size;
  while (low < high) {
    const size_t mid = low + (high - low) / 2;
    if (holds(at(mid))) {
      high = mid;
    } else {
      low = mid + 1;
    }
  }
  return low;
}

// Entries sorted in a vector of their own.
class SortedVector {
 public:
  SortedVector(const KeyComparator& compare, std::vector<const char*> entries)
      : compare_(&compare), entries_(std::move(entries)) {}
  size_t size() const { return entries_.size(); }
  const char* at(size_t i) const { return entries_[i]; }
  // The first index whose entry is not before / is after `internal_key`.
  size_t LowerBound(const rocksdb::Slice& internal_key) const {
    return FirstWhere(size(), [this](size_t i) { return at(i); },
                      [&](const char* entry) { return (*compare_)(entry, internal_key) >= 0; });
  }
  size_t UpperBound(const rocksdb::Slice& internal_key) const {
    return FirstWhere(size(), [this](size_t i) { return at(i); },
                      [&](const char* entry) { return (*compare_)(entry, internal_key) > 0; });
  }

 private:
  const KeyComparator* compare_;
  std::vector<const char*> entries_;
};

// Walks a sorted sequence by index: `Seq` has size(), at(i), LowerBound(key)
// and UpperBound(key) as SortedVector. Thread-compatible (one user).
template <typename Seq>
class IndexIterator final : public rocksdb::MemTableRep::Iterator {
 public:
  explicit IndexIterator(Seq seq) : seq_(std::move(seq)), at_(seq_.size()) {}
  bool Valid() const override { return at_ < seq_.size(); }
  const char* key() const override {
    assert(Valid());
    return seq_.at(at_);
  }
  void Next() override {
    assert(Valid());
    at_++;
  }
  void Prev() override {
    assert(Valid());
    at_ = at_ == 0 ? seq_.size() : at_ - 1;
  }
  // First entry >= internal_key.
  void Seek(const rocksdb::Slice& internal_key, const char* /*memtable_key*/) override {
    at_ = seq_.LowerBound(internal_key);
  }
  // Last entry <= internal_key.
  void SeekForPrev(const rocksdb::Slice& internal_key, const char* /*memtable_key*/) override {
    const size_t after = seq_.UpperBound(internal_key);
    at_ = after == 0 ? seq_.size() : after - 1;
  }
  void SeekToFirst() override { at_ = 0; }
  void SeekToLast() override { at_ = seq_.size() == 0 ? 0 : seq_.size() - 1; }

 private:
  const Seq seq_;
  size_t at_;  // == seq_.size(): not valid
};

// A memtable representation that makes its own iterators. With an arena
// RocksDB destroys an iterator but never frees it, so that memory then lives
// in the rep, which outlives its iterators (they pin the memtable).
class OwnIteratorsRep : public rocksdb::MemTableRep {
 public:
  OwnIteratorsRep(const KeyComparator& compare, rocksdb::Allocator* allocator)
      : MemTableRep(allocator), compare_(compare) {}

 protected:
  template <typename It, typename... Args>
  Iterator* NewIteratorIn(rocksdb::Arena* arena, Args&&... args) {
    if (arena == nullptr) return new It(std::forward<Args>(args)...);
    static_assert(alignof(It) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    std::lock_guard<std::mutex> lock(iterator_storage_mu_);
    iterator_storage_.push_back(std::make_unique<unsigned char[]>(sizeof(It)));
    return new (iterator_storage_.back().get()) It(std::forward<Args>(args)...);
  }

  // REQUIRES: `entries` sorted by compare_.
  Iterator* NewSortedIterator(std::vector<const char*> entries, rocksdb::Arena* arena) {
    return NewIteratorIn<IndexIterator<SortedVector>>(arena,
                                                      SortedVector(compare_, std::move(entries)));
  }

  void SortEntries(std::vector<const char*>* entries) const {
    std::sort(entries->begin(), entries->end(),
              [this](const char* a, const char* b) { return compare_(a, b) < 0; });
  }

  const KeyComparator& compare_;

 private:
  std::mutex iterator_storage_mu_;
  std::vector<std::unique_ptr<unsigned char[]>> iterator_storage_;  // GUARDED_BY(iterator_storage_mu_)
};

class HashedMemTableRep final : public OwnIteratorsRep {
 public:
  HashedMemTableRep(const KeyComparator& compare, rocksdb::Allocator* allocator)
      : OwnIteratorsRep(compare, allocator) {
    tables_.push_back(std::make_unique<Table>(kSlotsInitial));
    memory_bytes_.store(tables_.back()->bytes(), std::memory_order_relaxed);
    table_.store(tables_.back().get(), std::memory_order_release);
  }

  // REQUIRES: the writer (one at a time); no entry equal to this one.
  void Insert(rocksdb::KeyHandle handle) override {
    const char* entry = static_cast<const char*>(handle);
    if (2 * (count_ + 1) > tables_.back()->capacity()) Grow();
    Place(*tables_.back(), HashOf(UserKeyOf(entry)), entry);
    count_++;
  }

  // Whether an entry with exactly this internal key (given in memtable form) exists.
  bool Contains(const char* key) const override {
    const rocksdb::Slice internal_key = InternalKeyOf(key);
    bool found = false;
    ForEachVersion(UserKeyOf(internal_key), [&](const char* entry) {
      found = found || compare_(entry, internal_key) == 0;
    });
    return found;
  }

  // Calls `callback` on the versions of the looked-up user key that are at or
  // after the lookup key in internal order (sequence <= the lookup's), newest
  // first, until it returns false: what a sorted memtable's Seek and Next
  // would give before reaching the next user key.
  void Get(const rocksdb::LookupKey& lookup, void* callback_args,
           bool (*callback_func)(void* arg, const char* entry)) override {
    const rocksdb::Slice internal_key = InternalKeyOf(MemtableKeyOf(lookup));
    std::array<const char*, kVersionsInline> inline_versions;
    size_t inline_count = 0;
    std::vector<const char*> more_versions;  // allocated only past kVersionsInline
    ForEachVersion(UserKeyOf(internal_key), [&](const char* entry) {
      if (compare_(entry, internal_key) < 0) return;  // newer than the lookup
      if (inline_count < kVersionsInline) {
        inline_versions[inline_count++] = entry;
      } else {
        more_versions.push_back(entry);
      }
    });
    const char** begin = inline_versions.data();
    const char** end = begin + inline_count;
    if (!more_versions.empty()) {
      more_versions.insert(more_versions.end(), begin, end);
      begin = more_versions.data();
      end = begin + more_versions.size();
    }
    std::sort(begin, end, [this](const char* a, const char* b) { return compare_(a, b) < 0; });
    for (const char** at = begin; at != end; ++at) {
      if (!callback_func(callback_args, *at)) return;
    }
  }

  size_t ApproximateMemoryUsage() override {
    return memory_bytes_.load(std::memory_order_relaxed);
  }

  // A sorted snapshot of the entries present when it is taken (a flush takes
  // it of a memtable no longer written).
  Iterator* GetIterator(rocksdb::Arena* arena) override {
    return NewSortedIterator(SortedEntries(), arena);
  }

 private:

  static void Place(Table& table, size_t hash, const char* entry) {
    size_t i = hash & table.mask;
    while (table.slots[i].load(std::memory_order_relaxed) != 0) i = (i + 1) & table.mask;
    // Release: a reader that sees the slot sees the entry's bytes.
    table.slots[i].store(Pack(hash, entry), std::memory_order_release);
  }

  // Moves to a table twice the size. Readers still probing the old one find
  // everything that was in it; the old one is kept until the rep dies.
  void Grow() {
    const Table& old = *tables_.back();
    auto bigger = std::make_unique<Table>(old.capacity() * 2);
    for (size_t i = 0; i < old.capacity(); i++) {
      const uint64_t slot = old.slots[i].load(std::memory_order_relaxed);
      if (slot != 0) Place(*bigger, HashOf(UserKeyOf(EntryOf(slot))), EntryOf(slot));
    }
    memory_bytes_.fetch_add(bigger->bytes(), std::memory_order_relaxed);
    tables_.push_back(std::move(bigger));
    table_.store(tables_.back().get(), std::memory_order_release);
  }

  // Calls fn(entry) for every entry whose user key equals `user_key`.
  template <typename Fn>
  void ForEachVersion(std::string_view user_key, Fn&& fn) const {
    const Table& table = *table_.load(std::memory_order_acquire);
    const size_t hash = HashOf(user_key);
    const uint64_t tag = TagOf(hash);
    for (size_t i = hash & table.mask;; i = (i + 1) & table.mask) {
      const uint64_t slot = table.slots[i].load(std::memory_order_acquire);
      if (slot == 0) return;
      if ((slot & ~kPointerMask) == tag && UserKeyOf(EntryOf(slot)) == user_key) fn(EntryOf(slot));
    }
  }

  std::vector<const char*> SortedEntries() const {
    struct Item {
      uint64_t prefix;
      const char* entry;
    };
    const Table& table = *table_.load(std::memory_order_acquire);
    std::vector<Item> items;
    items.reserve(table.capacity() / 2);
    for (size_t i = 0; i < table.capacity(); i++) {
      const uint64_t slot = table.slots[i].load(std::memory_order_acquire);
      if (slot != 0) items.push_back(Item{SortPrefixOf(EntryOf(slot)), EntryOf(slot)});
    }
    std::sort(items.begin(), items.end(), [this](const Item& a, const Item& b) {
      if (a.prefix != b.prefix) return a.prefix < b.prefix;
      return compare_(a.entry, b.entry) < 0;
    });
    std::vector<const char*> entries;
    entries.reserve(items.size());
    for (const Item& item : items) entries.push_back(item.entry);
    return entries;
  }

  std::atomic<const Table*> table_{nullptr};  // the newest table, for readers
  std::vector<std::unique_ptr<Table>> tables_;  // writer only; back() is table_
  size_t count_ = 0;                            // writer only
  std::atomic<size_t> memory_bytes_{0};
};

// Entries in insertion order, in chunks that never move (readers index them
// while the writer appends). While every entry is after the one before it,
// that order is the sorted order and lookups binary-search it.
class AscendingMemTableRep final : public OwnIteratorsRep {
 public:
  AscendingMemTableRep(const KeyComparator& compare, rocksdb::Allocator* allocator)
      : OwnIteratorsRep(compare, allocator),
        chunks_(std::make_unique<std::atomic<const char**>[]>(kChunksMax)) {}

  // REQUIRES: the writer (one at a time); no entry equal to this one.
  void Insert(rocksdb::KeyHandle handle) override {
    const char* entry = static_cast<const char*>(handle);
    const size_t at = count_.load(std::memory_order_relaxed);
    assert(at < kChunksMax * kChunkEntries);
    if (at % kChunkEntries == 0) AddChunk(at / kChunkEntries);
    chunks_[at / kChunkEntries].load(std::memory_order_relaxed)[at % kChunkEntries] = entry;
    if (at > 0 && compare_(last_, entry) > 0) ascending_.store(false, std::memory_order_relaxed);
    last_ = entry;
    // Release: a reader that sees the count sees the entry, its chunk and
    // ascending_ as they were when it was added.
    count_.store(at + 1, std::memory_order_release);
  }

  bool Contains(const char* key) const override {
    const rocksdb::Slice internal_key = InternalKeyOf(key);
    const View view = Snapshot();
    const size_t at = view.LowerBound(internal_key);
    return at < view.size() && compare_(view.at(at), internal_key) == 0;
  }

  // Calls `callback` on the entries from the first one at or after the
  // lookup key, in order, until it returns false (RocksDB's callback stops at
  // the next user key): what a skiplist's Seek and Next give.
  void Get(const rocksdb::LookupKey& lookup, void* callback_args,
           bool (*callback_func)(void* arg, const char* entry)) override {
    const View view = Snapshot();
    for (size_t at = view.LowerBound(InternalKeyOf(MemtableKeyOf(lookup))); at < view.size(); ++at) {
      if (!callback_func(callback_args, view.at(at))) return;
    }
  }

  size_t ApproximateMemoryUsage() override {
    return kChunksMax * sizeof(std::atomic<const char**>) +
           chunks_owned_.load(std::memory_order_relaxed) * kChunkEntries * sizeof(const char*);
  }

  // Over the entries present now, read in place while they ascend (no copy:
  // the projections' tails open an iterator for every few events they read).
  Iterator* GetIterator(rocksdb::Arena* arena) override {
    return NewIteratorIn<IndexIterator<View>>(arena, Snapshot());
  }

 private:
  // 2^14 pointers (128 KiB) a chunk; 2^14 chunks: 268 M entries, far more
  // than a memtable of any sensible size holds.
  static constexpr size_t kChunkEntries = size_t{1} << 14;
  static constexpr size_t kChunksMax = size_t{1} << 14;

  // The entries present when it was taken, in sorted order: read in place
  // while they ascend, else a sorted copy (the slow path out-of-order keys
  // buy). Valid while the rep lives.
  class View {
   public:
    // `sorted_copy`: empty while the entries ascend, else the first `size` sorted.
    View(const AscendingMemTableRep& rep, size_t size, std::vector<const char*> sorted_copy)
        : rep_(&rep), size_(size), sorted_copy_(std::move(sorted_copy)) {
      assert(sorted_copy_.empty() || sorted_copy_.size() == size_);
    }
    size_t size() const { return size_; }
    const char* at(size_t i) const { return sorted_copy_.empty() ? rep_->Entry(i) : sorted_copy_[i]; }
    // The first index whose entry is not before / is after `internal_key`.
    size_t LowerBound(const rocksdb::Slice& internal_key) const {
      return FirstWhere(size_, [this](size_t i) { return at(i); },
                        [&](const char* entry) { return rep_->compare_(entry, internal_key) >= 0; });
    }
    size_t UpperBound(const rocksdb::Slice& internal_key) const {
      return FirstWhere(size_, [this](size_t i) { return at(i); },
                        [&](const char* entry) { return rep_->compare_(entry, internal_key) > 0; });
    }

   private:

    const AscendingMemTableRep* rep_;
    size_t size_;
    std::vector<const char*> sorted_copy_;
  };

  View Snapshot() const {
    const size_t size = count_.load(std::memory_order_acquire);
    std::vector<const char*> sorted_copy;
    if (!ascending_.load(std::memory_order_relaxed)) {
      sorted_copy.reserve(size);
      for (size_t i = 0; i < size; i++) sorted_copy.push_back(Entry(i));
      SortEntries(&sorted_copy);
    }
    return View(*this, size, std::move(sorted_copy));
  }

  // REQUIRES: i < a count loaded with acquire.
  const char* Entry(size_t i) const {
    return chunks_[i / kChunkEntries].load(std::memory_order_relaxed)[i % kChunkEntries];
  }

  void AddChunk(size_t chunk) {
    assert(chunk < kChunksMax && chunk == owned_.size());
    owned_.push_back(std::make_unique<const char*[]>(kChunkEntries));
    chunks_[chunk].store(owned_.back().get(), std::memory_order_relaxed);
    chunks_owned_.store(owned_.size(), std::memory_order_relaxed);
  }

  const std::unique_ptr<std::atomic<const char**>[]> chunks_;  // [kChunksMax]
  std::vector<std::unique_ptr<const char*[]>> owned_;  // writer only
  std::atomic<size_t> chunks_owned_{0};
  std::atomic<size_t> count_{0};
  std::atomic<bool> ascending_{true};
  const char* last_ = nullptr;  // writer only
};

// One sorted array of entries per group (the user key up to and including
// the first delimiter, or the whole key without one), the groups in a sorted
// map: concatenated in group order they are the total order, because a group
// ends at its delimiter. Everything is under one mutex: the writer takes it
// once per insert, and the reads of such a family are few (a stream's last
// version, a stream's events) next to its writes.
class GroupedMemTableRep final : public OwnIteratorsRep {
 public:
  GroupedMemTableRep(const KeyComparator& compare, rocksdb::Allocator* allocator, char delimiter)
      : OwnIteratorsRep(compare, allocator), delimiter_(delimiter) {}

  // REQUIRES: no entry equal to this one.
  void Insert(rocksdb::KeyHandle handle) override {
    const char* entry = static_cast<const char*>(handle);
    const std::string_view group_key = GroupOf(UserKeyOf(entry));
    std::lock_guard<std::mutex> lock(mu_);
    Group& group = FindOrAddGroup(group_key);
    if (group.empty() || compare_(group.back(), entry) < 0) {
      group.push_back(entry);  // in order: the common case
    } else {
      group.insert(UpperBound(group, entry), entry);
    }
    memory_bytes_.fetch_add(sizeof(const char*), std::memory_order_relaxed);
  }

  bool Contains(const char* key) const override {
    const rocksdb::Slice internal_key = InternalKeyOf(key);
    std::lock_guard<std::mutex> lock(mu_);
    const Group* entries = FindGroup(GroupOf(UserKeyOf(internal_key)));
    if (entries == nullptr) return false;
    const auto at = LowerBound(*entries, internal_key);
    return at != entries->end() && compare_(*at, internal_key) == 0;
  }

  // Calls `callback` on the versions of the looked-up user key at or after
  // the lookup key, in order, until it returns false; the versions are copied
  // out first, so the callback runs without the lock. After the last one a
  // sorted memtable would offer the next user key, which RocksDB's callback
  // refuses anyway. (The ledger scans this family and never calls Get on it.)
  void Get(const rocksdb::LookupKey& lookup, void* callback_args,
           bool (*callback_func)(void* arg, const char* entry)) override {
    const rocksdb::Slice internal_key = InternalKeyOf(MemtableKeyOf(lookup));
    const std::string_view user_key = UserKeyOf(internal_key);
    std::vector<const char*> versions;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const Group* entries = FindGroup(GroupOf(user_key));
      if (entries == nullptr) return;
      for (auto at = LowerBound(*entries, internal_key);
           at != entries->end() && UserKeyOf(*at) == user_key; ++at) {
        versions.push_back(*at);
      }
    }
    for (const char* entry : versions) {
      if (!callback_func(callback_args, entry)) return;
    }
  }

  size_t ApproximateMemoryUsage() override {
    return memory_bytes_.load(std::memory_order_relaxed);
  }

  Iterator* GetIterator(rocksdb::Arena* arena) override {
    return NewIteratorIn<GroupedIterator>(arena, *this);
  }

 private:
  using Group = std::vector<const char*>;
  // Keyed by views into the group's first entry, which lives as long as the memtable.
  using Groups = std::map<std::string_view, Group>;

  // Where an iterator stands. Map nodes are never erased, so `group` stays
  // valid; `index` may go stale when an out-of-order insert shifts the
  // group, and is then found again from `entry`.
  struct Position {
    Groups::const_iterator group;
    size_t index = 0;
    const char* entry = nullptr;  // nullptr: no position
  };

  // Walks the groups in order, each step under the lock, so entries inserted
  // meanwhile are seen where they sort.
  class GroupedIterator final : public Iterator {
   public:
    explicit GroupedIterator(const GroupedMemTableRep& rep) : rep_(rep) {}
    bool Valid() const override { return at_.entry != nullptr; }
    const char* key() const override {
      assert(Valid());
      return at_.entry;
    }
    void Next() override {
      assert(Valid());
      at_ = rep_.After(at_);
    }
    void Prev() override {
      assert(Valid());
      at_ = rep_.Before(at_);
    }
    void Seek(const rocksdb::Slice& internal_key, const char* /*memtable_key*/) override {
      at_ = rep_.AtOrAfter(internal_key);
    }
    void SeekForPrev(const rocksdb::Slice& internal_key, const char* /*memtable_key*/) override {
      at_ = rep_.AtOrBefore(internal_key);
    }
    void SeekToFirst() override { at_ = rep_.First(); }
    void SeekToLast() override { at_ = rep_.Last(); }

   private:
    const GroupedMemTableRep& rep_;
    Position at_;
  };

  std::string_view GroupOf(std::string_view user_key) const {
    const size_t end = user_key.find(delimiter_);
    return end == std::string_view::npos ? user_key : user_key.substr(0, end + 1);
  }

  // Point lookups go through the hash index: a search of the ordered map
  // compares the key with ~log2(groups) others (500 instructions of an
  // append's 18,000 at 1,000 streams).
  const Group* FindGroup(std::string_view group_key) const {  // REQUIRES: mu_ held
    const auto found = index_.find(group_key);
    return found == index_.end() ? nullptr : found->second;
  }

  Group& FindOrAddGroup(std::string_view group_key) {  // REQUIRES: mu_ held
    const auto found = index_.find(group_key);
    if (found != index_.end()) return *found->second;
    memory_bytes_.fetch_add(kGroupBytes, std::memory_order_relaxed);
    Group* group = &groups_.emplace(group_key, Group()).first->second;
    index_.emplace(group_key, group);
    assert(index_.size() == groups_.size());
    return *group;
  }

  Group::const_iterator LowerBound(const Group& group, const rocksdb::Slice& internal_key) const {
    return std::lower_bound(
        group.begin(), group.end(), internal_key,
        [this](const char* entry, const rocksdb::Slice& key) { return compare_(entry, key) < 0; });
  }

  Group::const_iterator UpperBound(const Group& group, const rocksdb::Slice& internal_key) const {
    return std::upper_bound(
        group.begin(), group.end(), internal_key,
        [this](const rocksdb::Slice& key, const char* entry) { return compare_(entry, key) > 0; });
  }

  Group::const_iterator UpperBound(const Group& group, const char* entry) const {
    return UpperBound(group, InternalKeyOf(entry));
  }

  // REQUIRES (these four): mu_ held.
  Position At(Groups::const_iterator group, size_t index) const {
    assert(index < group->second.size());
    return Position{group, index, group->second[index]};
  }
  Position FirstOf(Groups::const_iterator group) const {
    return group == groups_.end() ? Position{} : At(group, 0);
  }
  Position LastBefore(Groups::const_iterator group) const {
    if (group == groups_.begin()) return Position{};
    --group;
    return At(group, group->second.size() - 1);
  }
  // The index of `at.entry` in its group now.
  size_t IndexOf(const Position& at) const {
    const Group& entries = at.group->second;
    if (at.index < entries.size() && entries[at.index] == at.entry) return at.index;
    const auto found = LowerBound(entries, InternalKeyOf(at.entry));
    assert(found != entries.end() && *found == at.entry);
    return static_cast<size_t>(found - entries.begin());
  }

  // The first entry at or after `internal_key` (no position if none).
  Position AtOrAfter(const rocksdb::Slice& internal_key) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto group = groups_.lower_bound(GroupOf(UserKeyOf(internal_key)));
    if (group == groups_.end()) return Position{};
    const auto at = LowerBound(group->second, internal_key);
    if (at != group->second.end()) return At(group, static_cast<size_t>(at - group->second.begin()));
    return FirstOf(std::next(group));  // every entry of a later group is after the key
  }

  // The last entry at or before `internal_key` (no position if none).
  Position AtOrBefore(const rocksdb::Slice& internal_key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto group = groups_.upper_bound(GroupOf(UserKeyOf(internal_key)));
    if (group == groups_.begin()) return Position{};
    --group;  // the key's own group, or the last one before it
    const auto at = UpperBound(group->second, internal_key);
    if (at != group->second.begin()) {
      return At(group, static_cast<size_t>(at - group->second.begin()) - 1);
    }
    return LastBefore(group);
  }

  // The entry after / before `at`.
  Position After(const Position& at) const {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t index = IndexOf(at) + 1;
    if (index < at.group->second.size()) return At(at.group, index);
    return FirstOf(std::next(at.group));
  }

  Position Before(const Position& at) const {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t index = IndexOf(at);
    if (index > 0) return At(at.group, index - 1);
    return LastBefore(at.group);
  }

  Position First() const {
    std::lock_guard<std::mutex> lock(mu_);
    return FirstOf(groups_.begin());
  }

  Position Last() const {
    std::lock_guard<std::mutex> lock(mu_);
    return LastBefore(groups_.end());
  }

  // What a group costs beside its entries: two map nodes, the vector, slack.
  static constexpr size_t kGroupBytes = 192;

  const char delimiter_;
  mutable std::mutex mu_;
  Groups groups_;  // GUARDED_BY(mu_); no group is ever empty
  // GUARDED_BY(mu_): the same groups by key, for point lookups. Groups are
  // never erased, so the pointers stay valid.
  std::unordered_map<std::string_view, Group*> index_;
  std::atomic<size_t> memory_bytes_{0};
};

// Makes one kind of memtable representation.
class RepFactory final : public rocksdb::MemTableRepFactory {
 public:
  using Make = std::function<rocksdb::MemTableRep*(const KeyComparator&, rocksdb::Allocator*)>;
  RepFactory(const char* name, Make make) : name_(name), make_(std::move(make)) {}
  using rocksdb::MemTableRepFactory::CreateMemTableRep;
  rocksdb::MemTableRep* CreateMemTableRep(const KeyComparator& compare,
                                          rocksdb::Allocator* allocator,
                                          const rocksdb::SliceTransform* /*prefix_extractor*/,
                                          rocksdb::Logger* /*logger*/) override {
    return make_(compare, allocator);
  }
  const char* Name() const override { return name_; }

 private:
  const char* const name_;
  const Make make_;
};

}  // namespace

std::shared_ptr<rocksdb::MemTableRepFactory> NewHashedMemTableRepFactory() {
  return std::make_shared<RepFactory>(
      "keyledger.HashedMemTableRepFactory",
      [](const KeyComparator& compare, rocksdb::Allocator* allocator) -> rocksdb::MemTableRep* {
        return new HashedMemTableRep(compare, allocator);
      });
}

std::shared_ptr<rocksdb::MemTableRepFactory> NewAscendingMemTableRepFactory() {
  return std::make_shared<RepFactory>(
      "keyledger.AscendingMemTableRepFactory",
      [](const KeyComparator& compare, rocksdb::Allocator* allocator) -> rocksdb::MemTableRep* {
        return new AscendingMemTableRep(compare, allocator);
      });
}

std::shared_ptr<rocksdb::MemTableRepFactory> NewGroupedMemTableRepFactory(char delimiter) {
  return std::make_shared<RepFactory>(
      "keyledger.GroupedMemTableRepFactory",
      [delimiter](const KeyComparator& compare,
                  rocksdb::Allocator* allocator) -> rocksdb::MemTableRep* {
        return new GroupedMemTableRep(compare, allocator, delimiter);
      });
}

}  // namespace keyledger
