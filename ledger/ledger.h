// Ledger: the immutable, hash-chained event log of keyledger on RocksDB.
//
// Every key lifecycle change and every API call is appended here once and
// never changed. Appends from many threads are merged into one RocksDB
// WriteBatch per group (group commit). Reads return decoded, hash-verified
// events. See docs/architecture.md for the key layout and the hash chain.
//
// Thread safety: a Ledger is thread-safe. Append may block on disk I/O.
// Group commit runs in two stages: one group at a time writes its batch
// (no fsync); its fsync and publication then overlap the next group's write.
// head() moves in order, past a group once it is durable (a group of kAsync
// appends alone: once written), so a kAsync append also waits for the
// fsyncs of kSync groups written before it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/clock.h"
#include "ledger/event.h"
#include "ledger/kv_store.h"
#include "ledger/status.h"

namespace keyledger {

struct LedgerOptions {
  // Where the clock for recorded_at comes from. REQUIRES: non-null, outlives the Ledger.
  const Clock* clock = nullptr;
  // Open a read-only view of a directory a running server owns (audit tools).
  OpenMode mode = OpenMode::kReadWrite;
  std::string secondary_path;  // REQUIRES: set when mode == kSecondary
  // For `audit verify`: open even when the head record disagrees with the
  // last stored event (or that event's key is not a sequence), at the head
  // record, so that Verify walks the log and names the first bad event
  // rather than the tail. The caller must then compare the head record with
  // Verify's result. REQUIRES: mode != kReadWrite when true. Default false:
  // Open returns Corruption.
  bool open_past_head_mismatch = false;
  // Most events one group commit writes in one WriteBatch (one Append's
  // events are never split: a group holds at least one whole Append, up to
  // kAppendEventsMax). A group's bytes are bounded only through this and
  // kEventBytesMax: in the worst case ~10 GiB. Default 8192.
  size_t group_events_max = 8192;
  // Streams whose current version is cached in memory. Default 1,000,000.
  size_t stream_cache_entries_max = 1'000'000;
  KvStoreOptions storage;  // column_families is filled in by the Ledger
};

// Returns Ok if `id` can name a stream: 1..kStreamIdBytesMax bytes of
// printable ASCII without spaces; InvalidArgument (field "stream_id") if not.
[[nodiscard]] Status ValidateStreamId(std::string_view id);

struct AppendOptions {
  // kSync (default): acknowledged only after the WAL is fsync'ed.
  // kAsync: acknowledged once in the OS page cache; may lose the last
  // moments on power loss (never on a process crash).
  Durability durability = Durability::kSync;
};

struct AppendResult {
  // One per proposed event, in order: the sequence it is stored at. For a
  // retried event id, the sequence of the original.
  std::vector<uint64_t> sequences;
  // How many of the proposed events were already stored (idempotent retries).
  size_t duplicates = 0;
};

struct LedgerHead {
  uint64_t sequence = 0;  // 0: empty ledger
  Hash hash{};            // zeros for an empty ledger
};

struct VerifyResult {
  uint64_t events_verified = 0;
  LedgerHead head;
};

// How Ledger::Verify shares the hashing between its two threads.
struct VerifyOptions {
  // The reading thread hashes an event itself (besides reading it) while the
  // checking thread is at least this many events behind it; otherwise the
  // checking thread hashes it. This balances the two cores whichever is
  // slower. Default 8,192 events (a few of ScanAhead's chunks). 0: the
  // reading thread hashes every event; UINT64_MAX: the checking thread does.
  // Every setting checks the same things and finds the same first bad event.
  uint64_t reader_hashes_at_lag_events = 8'192;
  // Also check that the stream and event-id indexes (which idempotency and
  // stream reads trust) hold exactly one entry per event, pointing at it:
  // both are read whole, on a third thread. Default true.
  bool check_indexes = true;
};

// Counters since Open, for monitoring.
struct LedgerStats {
  uint64_t group_commits = 0;    // WriteBatches written (one per group)
  uint64_t events_appended = 0;  // new events stored (not duplicates)
  uint64_t group_events_max = 0; // most new events in one group so far
  // Per group, from its write to its durability (its fsync, or waiting for
  // the one covering it); groups overlap, so the sum can exceed wall time.
  uint64_t write_us_total = 0;
};

// Limits on one Append call.
constexpr size_t kAppendEventsMax = 10'000;
constexpr size_t kEventBytesMax = 1u << 20;  // one encoded event

class Ledger {
 public:
  // Opens or creates the ledger under `path`.
  // Returns IOError if the store cannot be opened, Corruption if the stored
  // head disagrees with the stored events.
  static Result<std::unique_ptr<Ledger>> Open(const std::string& path,
                                              const LedgerOptions& options);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Appends `events` atomically: all are stored, or none.
  // Events whose event_id is already stored are not stored again; their
  // original sequence is returned once the original is durable.
  // Returns:
  //   InvalidArgument  empty or over kAppendEventsMax, a bad stream id or actor,
  //                    an event over kEventBytesMax (field "events[i]", i its
  //                    index in `events`), one event id twice in `events`
  //   Conflict         an expected_version did not match the stream's version
  //   IOError          the write or its fsync failed. The call's events may
  //                    still be on disk (a retry with the same event ids is
  //                    answered with their sequences). After a failure that
  //                    may have left events in the store that are not durable,
  //                    every later Append fails with the same error until the
  //                    ledger is reopened (an fsync that failed once proves
  //                    nothing when a later one succeeds).
  //   Unavailable      the ledger is a read-only (secondary) view or is closing
  Result<AppendResult> Append(const std::vector<NewEvent>& events,
                              const AppendOptions& options = {});

  // The newest sequence and hash. Never blocks on I/O.
  LedgerHead head() const;

  // Returns Ok while appends are accepted, else the storage failure after
  // which every append fails until the process restarts (see Append).
  // Never blocks on I/O.
  Status write_health() const;

  // Counters since Open. Never blocks on I/O.
  LedgerStats stats() const;

  // Returns up to `max_events` events with sequence >= from, in order, up to
  // the head (never an event of a group commit still in flight), each
  // checked against its stored hash and its predecessor's.
  // Returns Corruption (with the sequence) on a failed check, IOError on failure.
  Result<std::vector<Event>> ReadRange(uint64_t from, size_t max_events) const;

  // Returns the event at `sequence`; NotFound if beyond the head.
  Result<Event> Read(uint64_t sequence) const;

  // Returns the events of `stream_id` with version >= from_version, up to
  // max_events, up to the head (as ReadRange).
  Result<std::vector<Event>> ReadStream(std::string_view stream_id, uint64_t from_version,
                                        size_t max_events) const;

  // Returns the stream's current version, 0 if it has no events. It may count
  // an event of a group commit still being fsynced (not yet in head()).
  Result<uint64_t> StreamVersion(std::string_view stream_id) const;

  // Calls fn(sequence, stored_value) in order for [from, to] until fn returns
  // false; the view is valid only during the call. to == 0: to the last
  // stored event, which may be past head() while a group commit is being
  // fsynced (Verify wants every stored event); pass head().sequence for
  // published events only.
  // No checks are made: this is the raw path for verification and fast folds,
  // read as a bulk scan (ScanKind::kBulk: the block cache is bypassed).
  Status ScanRaw(uint64_t from, uint64_t to,
                 const std::function<bool(uint64_t sequence, std::string_view value)>& fn) const;

  // Blocks until the head passes `after`, the timeout passes, or Close() is
  // called. Returns the head sequence then. This is the tailing primitive.
  uint64_t WaitForSequence(uint64_t after, int64_t timeout_us) const;

  // Walks the log from the first event: recomputes every hash from the stored
  // bytes, checks sequences are dense and stream versions consistent, and
  // (options.check_indexes) that the stream and event-id indexes hold exactly
  // one entry per event, pointing at it. Reads on a second thread
  // (ledger/verify_chain.h) so reading and hashing overlap. `progress` (may
  // be empty) is called on the calling thread about every 65,536 events with
  // the count verified so far.
  // Returns Corruption with the first bad sequence (for an index: the event
  // whose entry is missing or changed, else the one an extra entry names).
  Result<VerifyResult> Verify(const std::function<void(uint64_t)>& progress = {},
                              const VerifyOptions& options = {}) const;

  // For a secondary view: catch up with the primary. Returns Unavailable otherwise.
  Status CatchUp();

  // Returns OK once the head is at or past `sequence`: a secondary view
  // behind it catches up first (something read after the view opened, such
  // as a projection, may be ahead of it). Returns Corruption (with
  // `sequence`) if the head stays short of it, and the errors of CatchUp.
  Status CatchUpTo(uint64_t sequence);

  // Wakes waiters and refuses further appends with Unavailable. Idempotent.
  void Close();

 private:
  struct Rep;
  explicit Ledger(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

// Splits a stored value into hash and body. Returns Corruption if too short.
Status SplitStoredValue(std::string_view value, Hash* hash, std::string_view* body);

// Column family indexes of the ledger store, for tools that inspect it
// (tamper tests). Persistent: never renumber.
enum LedgerColumnFamily : int { kCfEvents = 0, kCfStreams = 1, kCfEventIds = 2, kCfMeta = 3 };

// Returns the RocksDB key of the event at `sequence` in kCfEvents.
std::string EventKey(uint64_t sequence);

}  // namespace keyledger
