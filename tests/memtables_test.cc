// The memtable representations of ledger/memtables.h driven directly through
// RocksDB's MemTableRep interface, as RocksDB drives them. Some of it (an
// iterator's SeekForPrev, Contains) RocksDB's own memtable wrapper never
// reaches from the KvStore tests (ledger_test.cc), which cover the rest.

#include "ledger/memtables.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace keyledger {
namespace {

// RocksDB's internal key order: user key bytewise ascending, then sequence
// descending (the 8-byte little-endian tag holds sequence << 8 | type).
class InternalKeyOrder final : public rocksdb::MemTableRep::KeyComparator {
 public:
  int operator()(const char* a, const char* b) const override {
    return Compare(rocksdb::GetLengthPrefixedSlice(a), rocksdb::GetLengthPrefixedSlice(b));
  }
  int operator()(const char* a, const rocksdb::Slice& key) const override {
    return Compare(rocksdb::GetLengthPrefixedSlice(a), key);
  }

 private:
  static uint64_t Tag(const rocksdb::Slice& internal_key) {
    uint64_t tag = 0;
    for (int i = 7; i >= 0; i--) {
      tag = (tag << 8) | static_cast<uint8_t>(internal_key.data()[internal_key.size() - 8 + i]);
    }
    return tag;
  }
  static int Compare(const rocksdb::Slice& a, const rocksdb::Slice& b) {
    const rocksdb::Slice user_a(a.data(), a.size() - 8);
    const rocksdb::Slice user_b(b.data(), b.size() - 8);
    if (const int c = user_a.compare(user_b); c != 0) return c;
    const uint64_t tag_a = Tag(a);
    const uint64_t tag_b = Tag(b);
    return tag_a > tag_b ? -1 : tag_a < tag_b ? 1 : 0;
  }
};

std::string InternalKey(const std::string& user_key, uint64_t sequence) {
  std::string key = user_key;
  const uint64_t tag = sequence << 8 | 1;  // 1: a value
  for (int i = 0; i < 8; i++) key.push_back(static_cast<char>(tag >> (8 * i)));
  return key;
}

// A memtable entry: varint32 length, internal key, varint32 length, value
// (empty here; every length below is under 128, one varint byte).
std::string Entry(const std::string& user_key, uint64_t sequence) {
  const std::string key = InternalKey(user_key, sequence);
  std::string entry(1, static_cast<char>(key.size()));
  entry += key;
  entry.push_back('\0');
  return entry;
}

rc::Gen<std::string> UserKey() {
  return rc::gen::elementOf(std::vector<std::string>{
      "", std::string(1, '\0'), "a", std::string("a\0", 2), std::string("a\0x", 3), "ab",
      std::string("ab\0y", 4), "b", "\xff", "01234567", "0123456789abcdef", "0123456789abcdeg"});
}

// Inserts random entries (some user keys several times; in random order, or
// sorted when `insert_sorted`) into a fresh rep from `factory`, then checks
// every iterator operation and Contains against the same entries sorted.
void CheckAgainstSortedEntries(const std::shared_ptr<rocksdb::MemTableRepFactory>& factory,
                               bool insert_sorted = false) {
  const InternalKeyOrder order;
  std::unique_ptr<rocksdb::MemTableRep> rep(
      factory->CreateMemTableRep(order, nullptr, nullptr, nullptr));
  std::deque<std::string> entries;  // stable addresses, as in an arena
  std::vector<const char*> sorted;
  const auto count = *rc::gen::inRange<size_t>(0, 40);
  for (size_t i = 0; i < count; i++) {
    entries.push_back(Entry(*UserKey(), i + 1));  // sequences are unique
    sorted.push_back(entries.back().data());
  }
  const auto before = [&](const char* a, const char* b) { return order(a, b) < 0; };
  if (insert_sorted) std::sort(sorted.begin(), sorted.end(), before);
  for (const char* entry : sorted) rep->Insert(const_cast<char*>(entry));
  std::sort(sorted.begin(), sorted.end(), before);

  std::unique_ptr<rocksdb::MemTableRep::Iterator> it(rep->GetIterator(nullptr));
  std::vector<const char*> forward;
  for (it->SeekToFirst(); it->Valid(); it->Next()) forward.push_back(it->key());
  RC_ASSERT(forward == sorted);
  std::vector<const char*> backward;
  for (it->SeekToLast(); it->Valid(); it->Prev()) backward.push_back(it->key());
  std::reverse(backward.begin(), backward.end());
  RC_ASSERT(backward == sorted);

  for (int probe = 0; probe < 10; probe++) {
    const std::string target = InternalKey(*UserKey(), *rc::gen::inRange<uint64_t>(0, count + 2));
    const rocksdb::Slice key(target);
    const auto first_at_or_after = std::find_if(sorted.begin(), sorted.end(),
                                                [&](const char* e) { return order(e, key) >= 0; });
    it->Seek(key, nullptr);
    RC_ASSERT(it->Valid() == (first_at_or_after != sorted.end()));
    if (it->Valid()) RC_ASSERT(it->key() == *first_at_or_after);
    const auto first_after = std::find_if(sorted.begin(), sorted.end(),
                                          [&](const char* e) { return order(e, key) > 0; });
    it->SeekForPrev(key, nullptr);
    RC_ASSERT(it->Valid() == (first_after != sorted.begin()));
    if (it->Valid()) RC_ASSERT(it->key() == *std::prev(first_after));
    const std::string as_entry = std::string(1, static_cast<char>(target.size())) + target + '\0';
    const bool present = first_at_or_after != sorted.end() && order(*first_at_or_after, key) == 0;
    RC_ASSERT(rep->Contains(as_entry.data()) == present);
  }
}

RC_GTEST_PROP(MemtablesProperty, HashedIteratesAndFindsAsSorted, ()) {
  CheckAgainstSortedEntries(NewHashedMemTableRepFactory());
}

RC_GTEST_PROP(MemtablesProperty, AscendingIteratesAndFindsAsSortedInAnyOrder, ()) {
  CheckAgainstSortedEntries(NewAscendingMemTableRepFactory());
}

RC_GTEST_PROP(MemtablesProperty, AscendingIteratesAndFindsAsSortedInOrder, ()) {
  CheckAgainstSortedEntries(NewAscendingMemTableRepFactory(), /*insert_sorted=*/true);
}

RC_GTEST_PROP(MemtablesProperty, GroupedIteratesAndFindsAsSorted, ()) {
  CheckAgainstSortedEntries(NewGroupedMemTableRepFactory('\0'));
}

}  // namespace
}  // namespace keyledger
