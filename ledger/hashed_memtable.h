// A RocksDB memtable representation for keys that arrive in random order and
// are looked up one by one (the ledger's event-id index): an open-addressing
// hash table of entry pointers, sorted only when someone iterates (a flush).
//
// Why not RocksDB's own: its skiplist pays a random-order search per insert
// on the appending thread, and its hash-of-skiplists (HashSkipListRep) sorts
// at flush time by inserting every entry into a fresh skiplist, a cache miss
// per comparison: 7-8 us of flush CPU per event-id entry, as much CPU as the
// append itself. Here an insert is a hash and a probe, and a flush sorts an
// array of (8-byte key prefix, pointer) pairs. docs/architecture.md has the
// figures.
//
// Only kv_store.cc includes this header (RocksDB types stay in the adapter).
#pragma once

#include <rocksdb/memtablerep.h>

#include <memory>

namespace keyledger {

// REQUIRES of the column family that uses it: the bytewise comparator (equal
// user keys are equal bytes; the sort compares key prefixes as bytes) and no
// prefix extractor. Thread safety: as RocksDB requires of a memtable
// representation, one writer at a time (allow_concurrent_memtable_write
// off) alongside any number of readers.
std::shared_ptr<rocksdb::MemTableRepFactory> NewHashedMemTableRepFactory();

}  // namespace keyledger
