// Write-ahead log files whose blocks are written before RocksDB appends to
// them. An fdatasync after appending into such a file has only data to
// flush: no blocks to allocate and no file size to persist. On this
// machine's ext4 a synced 33 KB append went from 0.43 to 0.27 ms that way
// (docs/performance.md, "Prefilled WAL files"). PostgreSQL fills new WAL
// segments for the same reason (wal_init_zero). RocksDB's own answer,
// recycle_log_file_num, is switched off under kPointInTimeRecovery.
//
// The fill is 0xFF bytes, which RocksDB's WAL reader takes for a record of a
// bad length: point-in-time recovery stops at the first byte never written,
// and applies nothing after it. (Zeroes would read as padding and be
// skipped, so records written after a region lost in a crash could be
// applied across the hole.) Therefore only the newest WAL may hold fill: the
// previous one is cut to its records, durably, before a new one is handed
// out, and every WAL is cut when it closes.
//
// Secondary instances (audit tools reading a running server's directory)
// follow the newest WAL by its size, which here includes the fill. So the
// writer publishes how many bytes it has written in a small side file
// ("NNNNNN.log" + kPrefilledWalEndSuffix), and a secondary instance opened
// through NewWalEndCappedFileSystem reads no further. The side file is
// written after the bytes it counts and removed when its WAL is cut.
//
// Private to the ledger library (kv_store.cc); not a public header.
#pragma once

#include <rocksdb/file_system.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace keyledger {

// Returns a FileSystem over `base` that hands RocksDB's WAL files (the
// numbered "*.log" files in `db_path`) out filled to `prefill_bytes`. A
// background thread ("kl-wal-prefill") keeps one spare such file ready in
// `db_path` (kPrefilledWalSpareName); a new WAL takes it, or, when none is
// ready, is created empty as RocksDB would create it. When no good spare is
// there yet, the constructor fills one first, so the WAL RocksDB creates as
// it opens is prefilled too. Every other file and call goes to `base`.
//
// REQUIRES: prefill_bytes > 0; db_path exists; one read-write RocksDB
// instance at db_path, opened with this FileSystem. Thread-safe. The thread
// stops when the FileSystem is destroyed (after the DB is closed).
std::shared_ptr<rocksdb::FileSystem> NewPrefilledWalFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base, std::string db_path, uint64_t prefill_bytes);

// Makes `file_system` (from NewPrefilledWalFileSystem) keep its spare from
// now on: new WAL files are created plain and no spare is filled. For a
// store about to close, whose closing flush creates one last WAL that lives
// only until the next open: the spare then waits for that open instead of
// being spent and filled again. Does nothing to any other FileSystem.
void KeepPrefilledWalSpare(rocksdb::FileSystem& file_system);

// Returns a FileSystem over `base` whose WAL readers stop at the end a
// prefilled WAL's side file publishes (and read files without one to their
// end). For RocksDB secondary instances. Thread-safe.
std::shared_ptr<rocksdb::FileSystem> NewWalEndCappedFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base);

// Returns a FileSystem over `base` whose WAL files (numbered "*.log") call
// `gate` before every Sync and Fsync: an error it returns fails that call
// with IOError, nothing synced; a gate that blocks holds the sync. For
// tests of the ledger's durability (KvStoreOptions::wal_sync_gate).
// REQUIRES: `gate` is thread-safe (syncs may run beside appends).
std::shared_ptr<rocksdb::FileSystem> NewSyncGatedWalFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base, std::function<rocksdb::IOStatus()> gate);

inline constexpr char kPrefilledWalSpareName[] = "kl-wal-spare";
// The spare while it is being filled; removed at start if a crash left it.
inline constexpr char kPrefilledWalFillingName[] = "kl-wal-spare.filling";
inline constexpr char kPrefilledWalEndSuffix[] = ".kl-end";
inline constexpr char kPrefilledWalFillByte = static_cast<char>(0xFF);

}  // namespace keyledger
