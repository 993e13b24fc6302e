// KvStore: the one adapter between keyledger and RocksDB. The ledger and the
// projections' derived stores both sit on it; nothing else includes RocksDB.
//
// Thread safety: a KvStore is thread-safe (RocksDB is). A KvBatch is not.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/status.h"

namespace keyledger {

struct ColumnFamilySpec {
  std::string name;
  // Adds a bloom filter (10 bits/key) for point lookups of absent keys.
  bool point_lookups = false;
  // Keys are only ever looked up, never scanned in order, and arrive in
  // random order (hashes): keep the memtable in a hash table that is sorted
  // only when a flush writes it out (ledger/memtables.h), so inserts
  // and lookups cost O(1) instead of a skiplist search. Scans of such a
  // family still work, but each one sorts the unflushed keys first.
  bool random_point_keys = false;
  // Keys are written in ascending order (the log's sequence numbers): keep
  // the memtable as an append-only array instead of a skiplist
  // (ledger/memtables.h). Out-of-order keys stay correct but make every read
  // of that memtable sort it.
  bool ascending_keys = false;
  // Keys are "<group><delimiter><rest>" and each group's keys arrive in
  // order (a stream's versions), groups interleaved: keep the memtable as one
  // sorted array per group (ledger/memtables.h) instead of a skiplist.
  std::optional<char> ordered_group_delimiter = std::nullopt;
};

enum class OpenMode : uint8_t {
  kReadWrite = 0,
  // A RocksDB secondary instance: reads a directory that a running server
  // owns, without stopping it. `secondary_path` must be a scratch directory.
  kSecondary,
};

struct KvStoreOptions {
  // Column families to open, in the order their handles are numbered (0..n-1).
  // "default" is opened implicitly and is not numbered.
  std::vector<ColumnFamilySpec> column_families;
  OpenMode mode = OpenMode::kReadWrite;
  std::string secondary_path;  // REQUIRES: non-empty when mode == kSecondary
  // Shared block cache for all column families. Default 64 MiB.
  size_t block_cache_bytes = 64u << 20;
  // RocksDB background flush + compaction threads. Default 2 (this is a
  // 2-core machine; more would fight the request threads).
  int background_jobs_max = 2;
  // Memtable size per column family before a flush. Default 64 MiB.
  size_t write_buffer_bytes = 64u << 20;
  // Write-ahead log kept before RocksDB flushes the column families that pin
  // its oldest file. Default 256 MiB. Without it a column family written a
  // little per batch (the ledger's meta) keeps every WAL file alive, and
  // every open replays them all (0.5 GB and 5 s at 1 M events).
  uint64_t wal_bytes_max = 256u << 20;
  // kReadWrite only: flush every memtable when the store closes, so the next
  // open (a restart, or a tool's secondary instance) replays no WAL. Default
  // true; the WAL keeps the data safe either way.
  bool flush_on_close = true;
  // kReadWrite only: when non-zero, write-ahead log files are handed to
  // RocksDB already written to this size, so a synced append does not also
  // persist block allocation and a file size (ledger/prefilled_wal.h). Costs
  // a spare file of this size in the directory and writing every WAL byte
  // twice (the fill ahead, in the background). Default 0: off (`serve
  // --wal-prefill-mib` and `bench append` set it for the ledger). Secondary
  // instances read such WAL files correctly whatever this says.
  uint64_t wal_prefill_bytes = 0;
  // Tests only (kReadWrite): called before every sync of a write-ahead log
  // file; an error fails that sync with IOError, nothing synced, and a gate
  // that blocks holds it (with wal_prefill_bytes, cutting a WAL to its
  // records still syncs outside the gate). Must be thread-safe. Default
  // empty: none.
  std::function<Status()> wal_sync_gate;
};

// How a scan reads, a hint that never changes what it returns.
enum class ScanKind : uint8_t {
  // A page of keys that is likely read again (log pages, stream reads):
  // blocks go through the block cache.
  kShort = 0,
  // One pass over much of a column family (verify, rebuilds, catch-up,
  // loading a projection): blocks bypass the block cache, which they would
  // only churn, and are read ahead in kScanReadaheadBytes chunks.
  kBulk,
};
inline constexpr size_t kScanReadaheadBytes = 2u << 20;

class KvStore;

// A batch of writes applied atomically by KvStore::Write.
// REQUIRES: the store outlives the batch; the batch is written only to it.
class KvBatch {
 public:
  explicit KvBatch(const KvStore& store);
  ~KvBatch();
  KvBatch(const KvBatch&) = delete;
  KvBatch& operator=(const KvBatch&) = delete;

  void Put(int cf, std::string_view key, std::string_view value);
  void Delete(int cf, std::string_view key);
  // Marks the current end of the batch; RollbackToSavePoint drops every
  // operation added since the most recent mark (and the mark), PopSavePoint
  // drops the mark and keeps the operations. REQUIRES for both: a mark exists.
  void SetSavePoint();
  void RollbackToSavePoint();
  void PopSavePoint();
  // Number of operations added.
  size_t count() const;
  // Approximate bytes in the batch.
  size_t bytes() const;
  // Empties the batch, keeping its buffer for reuse.
  void Clear();

 private:
  friend class KvStore;
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

enum class Durability : uint8_t {
  // The write-ahead log is fsync'ed before the write returns: survives power loss.
  kSync = 0,
  // The write reaches the OS page cache only: survives a process crash, but
  // the last moments may be lost on power loss or a kernel crash.
  kAsync,
};

class KvStore {
 public:
  // Opens (creating if missing, for kReadWrite) the store at `path`.
  // Returns IOError if RocksDB cannot open it, Corruption if it reports corruption.
  static Result<std::unique_ptr<KvStore>> Open(const std::string& path,
                                               const KvStoreOptions& options);
  ~KvStore();

  // Returns the value, std::nullopt if absent, IOError/Corruption on failure.
  Result<std::optional<std::string>> Get(int cf, std::string_view key) const;

  // Looks up many keys at once (RocksDB MultiGet). out->size() == keys.size()
  // on success. Returns the first error.
  Status MultiGet(int cf, const std::vector<std::string_view>& keys,
                  std::vector<std::optional<std::string>>* out) const;

  // Applies `batch` atomically. `durability` is chosen at every call site.
  Status Write(KvBatch& batch, Durability durability);

  // Forces the write-ahead log to disk (after async writes).
  Status SyncWal();

  // Calls fn(key, value) for keys in [start, end) in order (end empty: no bound)
  // until fn returns false. The views are valid only during the call.
  // `kind` tunes the reads (see ScanKind); the result is the same.
  // Returns IOError/Corruption on failure.
  Status Scan(int cf, std::string_view start, std::string_view end,
              const std::function<bool(std::string_view key, std::string_view value)>& fn,
              ScanKind kind = ScanKind::kShort) const;

  // Returns the last key-value pair with key <= `key` and key >= `floor`,
  // std::nullopt if none.
  Result<std::optional<std::pair<std::string, std::string>>> SeekForPrev(
      int cf, std::string_view key, std::string_view floor) const;

  // For a kSecondary store: catches up with the primary's latest writes.
  Status CatchUp();

  // Flushes memtables; for clean shutdown and tests.
  Status Flush();

  // Returns RocksDB's property `name` of column family `cf` (DB::GetProperty,
  // e.g. "rocksdb.num-files-at-level1"; DB-wide ones answer for any cf), for
  // diagnostics and tests. Returns InvalidArgument if RocksDB does not know
  // the property.
  Result<std::string> Property(int cf, std::string_view name) const;
  // The same for a map-valued property (DB::GetMapProperty, e.g.
  // "rocksdb.cfstats", whose "compaction.Sum.CompCount" counts the
  // compactions that rewrote files).
  Result<std::map<std::string, std::string>> MapProperty(int cf, std::string_view name) const;

 private:
  friend class KvBatch;
  struct Rep;
  explicit KvStore(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

// Big-endian fixed-width integers: keys sort in numeric order.
void AppendBigEndian64(std::string* out, uint64_t value);
uint64_t DecodeBigEndian64(const char* in);  // REQUIRES: 8 readable bytes

}  // namespace keyledger
