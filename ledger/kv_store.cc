#include "ledger/kv_store.h"
#include "ledger/memtables.h"
#include "ledger/prefilled_wal.h"

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/version.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/memtablerep.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <filesystem>

// The ledger calls DB::SyncWAL while other threads write (ledger.cc, the
// two-stage group commit). Before 7.7.0 (RocksDB #10560) a SyncWAL racing a
// WAL switch could leave the old WAL's tail unsynced for good. (7.10.0
// fixed #10892 too: a WAL sync at an unlucky moment beside a MANIFEST roll
// could make the next open report a "Missing WAL" under
// track_and_verify_wals_in_manifest; synced writes were exposed to it before
// this change as well. docs/architecture.md, "Appending".)
static_assert(ROCKSDB_MAJOR > 7 || (ROCKSDB_MAJOR == 7 && ROCKSDB_MINOR >= 7),
              "keyledger needs RocksDB 7.7 or later (#10560: SyncWAL beside a WAL switch)");

namespace keyledger {
namespace {

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsCorruption()) return Status::Corruption(std::move(msg));
  if (s.IsShutdownInProgress() || s.IsBusy() || s.IsTryAgain()) return Status::Unavailable(msg);
  return Status::IOError(std::move(msg));
}

rocksdb::Slice ToSlice(std::string_view v) { return rocksdb::Slice(v.data(), v.size()); }
std::string_view ToView(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }

bool Supports(rocksdb::CompressionType type) {
  auto supported = rocksdb::GetSupportedCompressions();
  return std::find(supported.begin(), supported.end(), type) != supported.end();
}

rocksdb::ColumnFamilyOptions MakeCfOptions(const ColumnFamilySpec& spec,
                                          const KvStoreOptions& options,
                                          const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = options.write_buffer_bytes;
  // LZ4 on every level but 0, the bottom included. The bottom level holds
  // most of an append-only log, and the whole log is read back (verify,
  // replay, rebuilds, catch-up): there ZSTD's decompression made the read
  // 2-3x slower than LZ4's and its compactions cost twice the CPU, for 18%
  // less disk (docs/performance.md, "Compression of the bottom level").
  // Level 0 is not compressed where compaction rewrites its files into
  // level 1 anyway (overlapping keys): compressing them twice would cost the
  // CPU that appends need on a 2-core machine. Ascending keys (the log) are
  // the exception: their level-0 files never overlap, so compaction moves
  // them down without rewriting them, but only when the two levels'
  // compression is the same (RocksDB's Compaction::IsTrivialMove). Without
  // that, every event was written twice (flush, then compaction): 6% of the
  // server's CPU under POST /v1/calls (docs/performance.md, "CPU per
  // recorded call"). So bottommost_compression must stay that of the other
  // levels, or the move into the bottom becomes a rewrite. (Files moved are
  // never merged: a small one flushed at close stays small.)
  if (Supports(rocksdb::kLZ4Compression)) {
    cf.compression = rocksdb::kLZ4Compression;
    cf.compression_per_level.assign(static_cast<size_t>(cf.num_levels), rocksdb::kLZ4Compression);
    if (!spec.ascending_keys) cf.compression_per_level[0] = rocksdb::kNoCompression;
    cf.bottommost_compression = rocksdb::kLZ4Compression;
  }
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.format_version = 5;
  if (spec.point_lookups) {
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    table.whole_key_filtering = true;
    // A bloom filter over a skiplist memtable too: most lookups (new event
    // ids) are for absent keys. The hashed memtable answers those in O(1) already.
    if (!spec.random_point_keys) {
      cf.memtable_whole_key_filtering = true;
      cf.memtable_prefix_bloom_size_ratio = 0.05;
    }
  }
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  assert(spec.random_point_keys + spec.ascending_keys + spec.ordered_group_delimiter.has_value() <= 1);
  if (spec.random_point_keys) cf.memtable_factory = NewHashedMemTableRepFactory();
  if (spec.ascending_keys) cf.memtable_factory = NewAscendingMemTableRepFactory();
  if (spec.ordered_group_delimiter) {
    cf.memtable_factory = NewGroupedMemTableRepFactory(*spec.ordered_group_delimiter);
  }
  return cf;
}

rocksdb::DBOptions MakeDbOptions(const KvStoreOptions& options) {
  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  // Record WAL files in the MANIFEST so a missing or truncated synced WAL is
  // detected at open instead of silently dropping acknowledged writes.
  db.track_and_verify_wals_in_manifest = true;
  db.paranoid_checks = true;
  db.max_background_jobs = options.background_jobs_max;
  db.max_total_wal_size = options.wal_bytes_max;
  // Smooth out SST writes so background flushes do not stall the synced WAL.
  db.bytes_per_sync = 1u << 20;
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // Writes come from one group-commit leader at a time anyway; hashed
  // memtables and insert hints need this off.
  db.allow_concurrent_memtable_write = false;
  if (options.mode == OpenMode::kSecondary) db.max_open_files = -1;
  return db;
}

}  // namespace

struct KvStore::Rep {
  // Declared before db: the DB is closed before its Env goes.
  std::unique_ptr<rocksdb::Env> env;
  std::shared_ptr<rocksdb::FileSystem> prefilled_wal_fs;  // or nullptr
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // [0] is "default"
  bool flush_on_close = false;
  rocksdb::ColumnFamilyHandle* cf(int index) const {
    assert(index >= 0 && static_cast<size_t>(index) + 1 < handles.size());
    return handles[static_cast<size_t>(index) + 1];
  }
  // Flushes every column family's memtable and waits for it.
  rocksdb::Status FlushAll() const {
    rocksdb::FlushOptions fo;
    fo.wait = true;
    return db->Flush(fo, handles);
  }
  ~Rep() {
    if (!db) return;
    // The closing flush's WAL lives only until the next open: keep the spare for that open.
    if (prefilled_wal_fs != nullptr) KeepPrefilledWalSpare(*prefilled_wal_fs);
    // A failed flush loses nothing (the WAL holds the data); the next open replays it.
    if (flush_on_close) FlushAll().PermitUncheckedError();
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    handles.clear();
    db->Close().PermitUncheckedError();
  }
};

struct KvBatch::Rep {
  const KvStore::Rep* store;
  rocksdb::WriteBatch batch;
  size_t count = 0;
  std::vector<size_t> save_point_counts;
};

KvBatch::KvBatch(const KvStore& store) : rep_(std::make_unique<Rep>()) {
  rep_->store = store.rep_.get();
}
KvBatch::~KvBatch() = default;

void KvBatch::Put(int cf, std::string_view key, std::string_view value) {
  rocksdb::Status s = rep_->batch.Put(rep_->store->cf(cf), ToSlice(key), ToSlice(value));
  assert(s.ok());  // WriteBatch::Put fails only past 4 GiB per batch
  rep_->count++;
}

void KvBatch::Delete(int cf, std::string_view key) {
  rocksdb::Status s = rep_->batch.Delete(rep_->store->cf(cf), ToSlice(key));
  assert(s.ok());
  rep_->count++;
}

void KvBatch::SetSavePoint() {
  rep_->batch.SetSavePoint();
  rep_->save_point_counts.push_back(rep_->count);
}

void KvBatch::RollbackToSavePoint() {
  assert(!rep_->save_point_counts.empty());
  rocksdb::Status s = rep_->batch.RollbackToSavePoint();
  assert(s.ok());
  (void)s;
  rep_->count = rep_->save_point_counts.back();
  rep_->save_point_counts.pop_back();
}

void KvBatch::PopSavePoint() {
  assert(!rep_->save_point_counts.empty());
  rocksdb::Status s = rep_->batch.PopSavePoint();
  assert(s.ok());
  (void)s;
  rep_->save_point_counts.pop_back();
}

size_t KvBatch::count() const { return rep_->count; }
size_t KvBatch::bytes() const { return rep_->batch.GetDataSize(); }
void KvBatch::Clear() {
  rep_->batch.Clear();  // keeps the buffer's capacity
  rep_->count = 0;
  rep_->save_point_counts.clear();
}

KvStore::KvStore(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
KvStore::~KvStore() = default;

Result<std::unique_ptr<KvStore>> KvStore::Open(const std::string& path,
                                               const KvStoreOptions& options) {
  assert(options.mode != OpenMode::kSecondary || !options.secondary_path.empty());
  auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName,
                           MakeCfOptions(ColumnFamilySpec{}, options, cache));
  for (const auto& spec : options.column_families) {
    descriptors.emplace_back(spec.name, MakeCfOptions(spec, options, cache));
  }
  rocksdb::DBOptions db_options = MakeDbOptions(options);
  auto rep = std::make_unique<Rep>();
  rocksdb::DB* db = nullptr;
  rocksdb::Status s;
  try {
    std::shared_ptr<rocksdb::FileSystem> fs;
    if (options.mode == OpenMode::kReadWrite && options.wal_prefill_bytes > 0) {
      std::filesystem::create_directories(path);
      fs = NewPrefilledWalFileSystem(rocksdb::FileSystem::Default(), path,
                                     options.wal_prefill_bytes);
      rep->prefilled_wal_fs = fs;
    } else if (options.mode == OpenMode::kSecondary) {
      // The primary may prefill its WAL files: read them only as far as written.
      fs = NewWalEndCappedFileSystem(rocksdb::FileSystem::Default());
    }
    if (options.mode == OpenMode::kReadWrite && options.wal_sync_gate) {
      fs = NewSyncGatedWalFileSystem(
          fs != nullptr ? fs : rocksdb::FileSystem::Default(),
          [gate = options.wal_sync_gate]() -> rocksdb::IOStatus {
            Status passed = gate();
            if (passed.ok()) return rocksdb::IOStatus::OK();
            return rocksdb::IOStatus::IOError(passed.message());
          });
    }
    if (fs != nullptr) {
      rep->env = rocksdb::NewCompositeEnv(fs);
      db_options.env = rep->env.get();
    }
    if (options.mode == OpenMode::kSecondary) {
      s = rocksdb::DB::OpenAsSecondary(db_options, path, options.secondary_path, descriptors,
                                       &rep->handles, &db);
    } else {
      s = rocksdb::DB::Open(db_options, path, descriptors, &rep->handles, &db);
    }
  } catch (const std::exception& e) {
    return Status::IOError("open " + path + ": " + e.what());
  }
  if (!s.ok()) return FromRocks(s, "open " + path);
  rep->db.reset(db);
  rep->flush_on_close = options.flush_on_close && options.mode == OpenMode::kReadWrite;
  assert(rep->handles.size() == descriptors.size());
  return std::unique_ptr<KvStore>(new KvStore(std::move(rep)));
}

Result<std::optional<std::string>> KvStore::Get(int cf, std::string_view key) const {
  std::string value;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->cf(cf), ToSlice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "get");
  return std::optional<std::string>(std::move(value));
}

Status KvStore::MultiGet(int cf, const std::vector<std::string_view>& keys,
                         std::vector<std::optional<std::string>>* out) const {
  out->clear();
  out->resize(keys.size());
  if (keys.empty()) return Status::Ok();
  // RocksDB wants the keys in comparator order and sorts them itself through
  // the comparator's virtual calls (and, in an assertion-enabled build, checks
  // the order again); every family here is bytewise, so sort with memcmp and
  // pass them sorted.
  std::vector<uint32_t> order(keys.size());
  for (size_t i = 0; i < keys.size(); i++) order[i] = static_cast<uint32_t>(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a] < keys[b]; });
  std::vector<rocksdb::Slice> slices;
  slices.reserve(keys.size());
  for (uint32_t i : order) slices.push_back(ToSlice(keys[i]));
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  rep_->db->MultiGet(rocksdb::ReadOptions(), rep_->cf(cf), keys.size(), slices.data(),
                     values.data(), statuses.data(), /*sorted_input=*/true);
  for (size_t j = 0; j < keys.size(); j++) {
    if (statuses[j].IsNotFound()) continue;
    if (!statuses[j].ok()) return FromRocks(statuses[j], "multiget");
    (*out)[order[j]] = values[j].ToString();
  }
  return Status::Ok();
}

Status KvStore::Write(KvBatch& batch, Durability durability) {
  assert(batch.rep_->store == rep_.get());
  rocksdb::WriteOptions wo;
  wo.sync = durability == Durability::kSync;
  return FromRocks(rep_->db->Write(wo, &batch.rep_->batch), "write");
}

Status KvStore::SyncWal() { return FromRocks(rep_->db->SyncWAL(), "sync wal"); }

Status KvStore::Scan(
    int cf, std::string_view start, std::string_view end,
    const std::function<bool(std::string_view key, std::string_view value)>& fn,
    ScanKind kind) const {
  rocksdb::ReadOptions ro;
  if (kind == ScanKind::kBulk) {
    ro.fill_cache = false;
    ro.readahead_size = kScanReadaheadBytes;
  }
  rocksdb::Slice upper = ToSlice(end);
  if (!end.empty()) ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->cf(cf)));
  for (it->Seek(ToSlice(start)); it->Valid(); it->Next()) {
    if (!fn(ToView(it->key()), ToView(it->value()))) break;
  }
  return FromRocks(it->status(), "scan");
}

Result<std::optional<std::pair<std::string, std::string>>> KvStore::SeekForPrev(
    int cf, std::string_view key, std::string_view floor) const {
  using Found = std::optional<std::pair<std::string, std::string>>;
  rocksdb::ReadOptions ro;
  rocksdb::Slice lower = ToSlice(floor);
  ro.iterate_lower_bound = &lower;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->cf(cf)));
  it->SeekForPrev(ToSlice(key));
  if (!it->Valid()) {
    if (!it->status().ok()) return FromRocks(it->status(), "seek");
    return Found();
  }
  return Found(std::make_pair(it->key().ToString(), it->value().ToString()));
}

Status KvStore::CatchUp() { return FromRocks(rep_->db->TryCatchUpWithPrimary(), "catch up"); }

Status KvStore::Flush() { return FromRocks(rep_->FlushAll(), "flush"); }

Result<std::string> KvStore::Property(int cf, std::string_view name) const {
  std::string value;
  if (!rep_->db->GetProperty(rep_->cf(cf), ToSlice(name), &value)) {
    return Status::InvalidArgument("unknown RocksDB property " + std::string(name), "name");
  }
  return value;
}

Result<std::map<std::string, std::string>> KvStore::MapProperty(int cf,
                                                               std::string_view name) const {
  std::map<std::string, std::string> value;
  if (!rep_->db->GetMapProperty(rep_->cf(cf), ToSlice(name), &value)) {
    return Status::InvalidArgument("unknown RocksDB map property " + std::string(name), "name");
  }
  return value;
}

void AppendBigEndian64(std::string* out, uint64_t value) {
  char buf[8];
  for (int i = 7; i >= 0; i--) {
    buf[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  out->append(buf, 8);
}

uint64_t DecodeBigEndian64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

}  // namespace keyledger
