// RocksDB memtable representations for the ledger's column families,
// through RocksDB's public MemTableRepFactory. RocksDB's own skiplist
// re-checks its cached insert position at every level after each insert
// (Debian's build keeps assertions on): ~20 key comparisons per insert,
// whatever the key order. docs/architecture.md has the figures.
//
// Only kv_store.cc includes this header (RocksDB types stay in the adapter).
#pragma once

#include <rocksdb/memtablerep.h>

#include <memory>

namespace keyledger {

// For keys that arrive in random order and are looked up one by one (the
// event-id index): an open-addressing hash table of entry pointers, sorted
// only when someone iterates (a flush). RocksDB's hash of skiplists sorted at
// flush by inserting every entry into a fresh skiplist, a cache miss per
// comparison: 7-8 us of flush CPU per event id, as much as the append itself.
//
// REQUIRES of the column family: the bytewise comparator (equal user keys
// are equal bytes; the flush sort compares key prefixes as bytes) and no
// prefix extractor.
std::shared_ptr<rocksdb::MemTableRepFactory> NewHashedMemTableRepFactory();

// For keys written in ascending order (the log's big-endian sequences): an
// append-only array, binary-searched. Keys out of order are still correct,
// but from the first one on, every lookup and iterator of that memtable
// sorts a copy of it: meant for families written in order only.
std::shared_ptr<rocksdb::MemTableRepFactory> NewAscendingMemTableRepFactory();

// For keys "<group><delimiter><rest>" whose order within each group is the
// order they are written in (a stream's versions), groups interleaved (the
// ledger's stream index): one sorted array per group, the groups in a sorted
// map, all under one mutex. Keys out of order within a group are inserted in
// place (correct, and dearer the longer the group).
std::shared_ptr<rocksdb::MemTableRepFactory> NewGroupedMemTableRepFactory(char delimiter);

// Thread safety (all three): as RocksDB requires of a memtable representation, one
// writer at a time (allow_concurrent_memtable_write off) alongside any number
// of readers.

}  // namespace keyledger
