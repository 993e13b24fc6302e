// CallProjections: the projections of API-call events, folded from the ledger
// and kept in their own RocksDB (the server opens it at DATA/calls):
//   - request logs: one entry per ApiCallRecorded with logged = true, per key,
//     newest first, kept for log_retention_us;
//   - metrics: MetricsFold's per-key and per-workspace minute/hour/day cells
//     (ApiCallRecorded and AuthorizationDenied events);
//   - usage: billable units per (workspace, billing month, key).
//
// Folding. Events are walked with Ledger::ScanRaw in sequence order (for a
// long range, on a second thread reading ahead of the fold: see
// read_ahead_events_min, which also decodes there). Each is decoded once
// (DecodeCallEvent, codec.h) into views of its stored bytes; an event whose
// envelope says it is none of ApiCallRecorded, AuthorizationDenied,
// WorkspaceCreated and WorkspaceChanged is skipped without reading its body.
// For a call: MetricsFold::ApplyCall; its units count toward the billing
// month of its occurred_at_us in the workspace's billing_timezone (see
// "Usage" below); and when call.logged, a log entry is written. For a denial:
// MetricsFold::ApplyDenial (denials have no log entry and no usage). For a
// workspace event: its billing zone, for the calls after it. Folds never read
// a clock.
//
// Usage. A call with units > 0 adds them to (workspace_id, month, key_id),
// where month = MonthOf(occurred_at_us, zone) (billing/calendar.h) and zone is
// the workspace's billing_timezone as of the call's place in the log: the
// zone of the last WorkspaceCreated or WorkspaceChanged of that workspace
// before the call's event ("UTC" when there is none, or it names none). The
// fold follows those events itself (it never reads a KeyState), so every
// fold of the same log, live or rebuilt, now or later, puts every call in the
// same month, and a zone change never moves a call already recorded. A call
// whose month cannot be computed (a zone unknown to the tz database, a year
// outside 1..9999) or whose units would push its (workspace, month) total
// past 2^64 - 1 is not counted, and usage_rejected() counts it; the same call
// is rejected by every fold of the same log. Calls with 0 units do not touch
// usage at all.
//
// Log entries. Stored under key_id '\0' big-endian(UINT64_MAX - sequence), so a
// forward scan of one key is newest first (by ledger sequence, i.e. by the
// order the calls were recorded, not by occurred_at). A call with an empty
// key_id or one containing '\0' gets no log entry (the data plane never
// records such calls). Excerpts are stored as recorded: the data plane has
// already cut and redacted them (api/data_plane.h RedactExcerpt), the
// projection adds nothing and removes nothing.
//
// Retention. Logs() never returns an entry whose occurred_at_us is older than
// now_us - log_retention_us; SweepExpiredLogs() deletes such entries from the
// derived store (never from the ledger), taking now from the injected Clock.
// The tailing thread sweeps every log_sweep_interval_us. The store records
// the highest cutoff any sweep deleted below, in the same write as the
// deletions: every logged call that occurred at or after it keeps its entry,
// which is how an audit tells a deleted entry from an expired one
// (CheckLogEntries).
//
// Persistence. Each folded batch (at most fold_batch_events_max events or
// fold_batch_bytes_max stored bytes) becomes ONE RocksDB WriteBatch holding
// the new log entries, every metrics cell and usage record the batch changed,
// and the new position (sequence and ledger hash of the last event folded).
// It is written with Durability::kAsync: the ledger is the durable truth and
// the position travels with the records, so a write lost on power loss just
// leaves an older consistent state whose tail is folded again at Open.
// Column families: logs, log_times (occurred_at index for the sweep),
// metrics, usage, meta. A store written by another format version, one whose
// position is beyond the ledger head, or one whose stored hash of the event
// at its position differs from the ledger's (the ledger lost a tail and was
// appended to again) is wiped and rebuilt from the log at Open.
//
// Digest. Digest() hashes every metrics cell, every usage record, the
// billing zone of every workspace the log named one for, the count of
// rejected usage, and a running hash over every log entry ever folded (in
// sequence order; retention does not change it). Equal logs give equal
// digests: a fresh in-memory fold (RebuildCallProjectionsDigest) of the events
// up to position() must give the live Digest(), before and after a restart.
//
// Failure. If a fold or a write fails, the in-memory state may be ahead of the
// store; the projection then refuses further folds (CatchUp*, returning the
// first error every time) while queries keep answering from the state held.
// Reopen to recover: the store on disk is consistent.
//
// Thread safety: thread-safe. Folds (CatchUp, CatchUpTo, the tailing thread)
// run one at a time. Metrics, Totals, UsageFor, UsageMonths and Digest take a
// shared lock on the in-memory state; a fold holds it exclusively while it
// applies one batch (including reading that batch from the ledger), so a
// query may wait for one batch. Logs reads the store without that lock.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "billing/calendar.h"
#include "ledger/clock.h"
#include "ledger/event.h"
#include "ledger/kv_store.h"
#include "ledger/ledger.h"
#include "ledger/status.h"
#include "projections/metrics_fold.h"

namespace keyledger {

class ScanAhead;

// Least events per batch of Open's fold of a long backlog (see
// CallProjectionsOptions::fold_batch_events_max).
constexpr size_t kOpenFoldBatchEventsMin = 65'536;

struct CallProjectionsOptions {
  // Log entries whose occurred_at is older than now - log_retention_us are not
  // returned and are deleted by the sweep. Default 30 days. REQUIRES: > 0.
  int64_t log_retention_us = 30LL * 24 * 3600 * 1'000'000;
  // How often the tailing thread runs SweepExpiredLogs, by the injected clock.
  // Default 10 minutes.
  int64_t log_sweep_interval_us = 10LL * 60 * 1'000'000;
  // Most events (of any type, skipped ones included) folded per persisted
  // WriteBatch. Default 65,536. REQUIRES: > 0. (Open's own fold of a backlog
  // of at least read_ahead_events_min events uses batches of at least
  // kOpenFoldBatchEventsMin: nothing can query the projection yet, so holding
  // the state lock per batch costs nothing, and larger batches rewrite each
  // hour and day cell fewer times. The folded state is the same.)
  size_t fold_batch_events_max = 65'536;
  // Most stored ledger bytes folded per WriteBatch: bounds the batch's memory,
  // since logged calls carry excerpts. At least one event is always folded.
  // Default 64 MiB.
  size_t fold_batch_bytes_max = 64u << 20;
  // How long the tailing thread waits in Ledger::WaitForSequence before it
  // looks at Stop() and the sweep schedule again. Default 50 ms. REQUIRES: > 0.
  int64_t tail_wait_us = 50'000;
  // A fold of at least this many events (a rebuild, a catch-up after a
  // restart) reads the ledger on a second thread, ahead of the fold, so that
  // RocksDB's reads and decompression overlap the fold: same events, same
  // batches, same results. 0: never. Default 16,384.
  uint64_t read_ahead_events_min = 16'384;
};

// One logged call, as recorded (excerpts already cut and redacted by the writer).
struct LogEntry {
  uint64_t sequence = 0;  // ledger sequence of the ApiCallRecorded event
  ApiCallRecorded call;   // as recorded; call.logged is always true here
  bool operator==(const LogEntry&) const = default;
};

// Most entries one Logs page returns.
constexpr size_t kLogPageMax = 1000;
// Most stored entries one Logs call examines (matching or not). When a page
// stops here, it may hold fewer than `limit` entries (even none) and carries
// a next_cursor: keep paging until next_cursor is empty.
constexpr size_t kLogScanEntriesMax = 10'000;
// A page stops adding entries once their stored size passes this (it always
// holds at least one matching entry if there is one). Default-sized entries
// are ~200 bytes; a fully logged call may approach 1 MiB.
constexpr size_t kLogPageBytesMax = 8u << 20;

struct LogQuery {
  std::string key_id;  // REQUIRES (checked): non-empty, no '\0'
  // Entries with from_us <= occurred_at_us < to_us. REQUIRES (checked): from_us < to_us.
  int64_t from_us = 0;
  int64_t to_us = INT64_MAX;
  std::optional<uint16_t> status;    // only this exact status
  std::optional<char> status_class;  // '1'..'5': only statuses class*100 .. class*100+99
  size_t limit = 100;                // 1..kLogPageMax
  std::string cursor;                // "" for the first page, else a next_cursor
};

struct LogPage {
  std::vector<LogEntry> entries;  // newest first (by sequence)
  // Opaque; "" when there is nothing more. Pass it back in LogQuery::cursor
  // (with the same key_id) for the next page.
  std::string next_cursor;
};

// Units of one workspace in one billing month.
struct WorkspaceUsage {
  BillingMonth month;
  std::vector<KeyUsage> keys;  // keys with units > 0, sorted by key_id
  uint64_t total = 0;          // sum of keys[i].quantity
  uint64_t position = 0;       // the ledger sequence these figures cover
};

// Usage by workspace and billing month: what invoices are computed from
// (api/invoice_compute.h).
//
// Thread safety: implementations are thread-safe.
class UsageReader {
 public:
  virtual ~UsageReader() = default;
  // Returns the usage of `workspace_id` in `month` (no keys and total 0 if
  // none), with the position it covers. Never fails.
  virtual WorkspaceUsage UsageFor(std::string_view workspace_id,
                                  const BillingMonth& month) const = 0;
};

class CallProjections final : public UsageReader {
 public:
  // Opens (creating if missing) the store at `path`, loads the persisted
  // state, and catches up with the ledger head (see the file comment for when
  // the store is wiped and rebuilt instead).
  // REQUIRES: ledger and clock non-null and outliving the result;
  // options as documented on CallProjectionsOptions.
  // Returns IOError if the store cannot be opened or written, Corruption if a
  // stored record cannot be read or the ledger holds an undecodable event
  // (with its sequence), or any error of CatchUp.
  static Result<std::unique_ptr<CallProjections>> Open(const std::string& path,
                                                       const Ledger* ledger,
                                                       const Clock* clock,
                                                       CallProjectionsOptions options);

  // Folds up to `sequence` (as CatchUpTo), then calls fn(position()) with
  // folds held off, so every query fn makes sees that one position. Returns
  // the fold's error or fn's. REQUIRES: fn does not fold.
  Status WithPositionHeld(uint64_t sequence, const std::function<Status(uint64_t)>& fn);
  // Stops the tailing thread. The store is closed; async writes already made
  // survive a process exit.
  ~CallProjections();
  CallProjections(const CallProjections&) = delete;
  CallProjections& operator=(const CallProjections&) = delete;

  // Folds every event after position() up to the ledger head as of the call.
  // Returns Corruption (with the sequence) for an undecodable event, IOError
  // when the ledger cannot be read or the store written, or the first such
  // error again after one happened (see Failure in the file comment).
  Status CatchUp();

  // As CatchUp, but folds only up to min(sequence, ledger head). Returns OK at
  // once, without waiting for a fold in progress, when position() >= sequence
  // (even after a failure). On return with OK, position() >= min(sequence,
  // head as of the call). For read-your-writes: CatchUpTo(the sequence an
  // append returned).
  Status CatchUpTo(uint64_t sequence);

  // Starts a background thread that follows the ledger (Ledger::WaitForSequence)
  // and folds new events as they arrive, and sweeps expired log entries every
  // log_sweep_interval_us. Fold errors are kept in tail_status() and retried
  // after tail_wait_us (a broken projection stays broken). No-op if the thread
  // was started before or Stop was called.
  void Start();

  // Stops and joins the tailing thread; returns after at most about
  // tail_wait_us plus one batch or one sweep. Idempotent; the destructor calls it.
  void Stop();

  // The last ledger sequence folded and persisted (0: none). Never blocks.
  uint64_t position() const { return position_.load(std::memory_order_acquire); }

  // Events walked past since Open (skipped ones included), and the call and
  // denial events among them that were folded. Never block.
  uint64_t events_scanned() const { return events_scanned_.load(std::memory_order_relaxed); }
  uint64_t events_folded() const { return events_folded_.load(std::memory_order_relaxed); }

  // Calls with units > 0 whose usage was not counted (see Usage above), over
  // the whole log up to the position (persisted, not since Open).
  uint64_t usage_rejected() const;

  // OK, or the last error of the tailing thread's fold or sweep.
  Status tail_status() const;

  // A digest of the folded state (see Digest in the file comment).
  Hash Digest() const;

  // Returns one page of `query.key_id`'s log entries matching the query and
  // not older than now_us - log_retention_us, newest first (by sequence).
  // Pagination is stable while new calls arrive: new entries sort before any
  // cursor, so later pages neither repeat nor skip entries (entries the sweep
  // deletes or that expire meanwhile are simply not returned).
  // Returns InvalidArgument with field
  //   "key_id"        empty or containing '\0';
  //   "to"            to_us <= from_us;
  //   "limit"         0 or above kLogPageMax;
  //   "status_class"  not one of '1'..'5';
  //   "cursor"        not a cursor of this key_id (malformed, or another key's);
  // IOError/Corruption from the store. The result owns its data.
  Result<LogPage> Logs(const LogQuery& query, int64_t now_us) const;

  // MetricsFold::Query / Totals on the folded state (same arguments, same
  // errors; see projections/metrics_fold.h).
  Result<std::vector<MetricsBucket>> Metrics(MetricsScope scope, std::string_view id,
                                             int64_t from_us, int64_t to_us, int64_t step_us) const;
  Result<MetricsBucket> Totals(MetricsScope scope, std::string_view id, int64_t from_us,
                               int64_t to_us) const;

  // Metrics and Totals over the same range, and the position they reflect,
  // all read from one state (separate calls may straddle a fold, so the
  // series would not sum to the totals). Errors as Metrics.
  struct MetricsView {
    std::vector<MetricsBucket> series;
    MetricsBucket totals;
    uint64_t position = 0;
  };
  Result<MetricsView> MetricsWithTotals(MetricsScope scope, std::string_view id, int64_t from_us,
                                        int64_t to_us, int64_t step_us) const;

  // Returns the usage of `workspace_id` in `month` (no keys and total 0 if
  // none), with the position it covers. Never fails.
  WorkspaceUsage UsageFor(std::string_view workspace_id, const BillingMonth& month) const override;

  // Returns the months in which `workspace_id` has units, oldest first.
  std::vector<BillingMonth> UsageMonths(std::string_view workspace_id) const;

  // Returns Ok while the projections follow the ledger, else the fold or
  // persist failure after which they stopped (until the process restarts).
  // Never waits for a fold.
  Status health() const;

  // Deletes log entries with occurred_at_us < clock->NowUs() - log_retention_us
  // from the store. Returns how many were deleted, or IOError/Corruption.
  // Safe to run concurrently with folds and queries.
  Result<size_t> SweepExpiredLogs();

 private:
  struct FoldState;
  CallProjections(const Ledger* ledger, const Clock* clock, CallProjectionsOptions options);

  Status LoadOrWipe();
  Status Load();
  Status Wipe();
  Result<bool> StoreMatchesLedger(uint64_t position, const Hash& hash) const;
  // `ahead` (may be null) reads the ledger from position() + 1 on.
  Status FoldBatchLocked(uint64_t to, ScanAhead* ahead);
  void TailLoop();
  void MaybeSweep(int64_t* next_sweep_us);

  const Ledger* const ledger_;
  const Clock* const clock_;
  const CallProjectionsOptions options_;
  // Events per folded batch: options_.fold_batch_events_max, or more during
  // Open's own fold of a long backlog. Guarded by fold_mu_.
  size_t batch_events_max_;
  std::unique_ptr<KvStore> store_;

  // The in-memory folds. Written under state_mu_ held exclusively.
  mutable std::shared_mutex state_mu_;
  std::unique_ptr<FoldState> state_;

  std::mutex fold_mu_;   // one fold at a time
  mutable std::mutex broken_mu_;  // guards broken_; taken after fold_mu_, never before
  Status broken_;        // the first fold/persist failure
  std::mutex sweep_mu_;  // one sweep at a time
  // The store's sweep record (see "Retention"); GUARDED_BY(sweep_mu_), and
  // set at Open before any sweep.
  int64_t log_swept_before_us_ = std::numeric_limits<int64_t>::min();
  std::atomic<uint64_t> position_{0};
  std::atomic<uint64_t> events_scanned_{0};
  std::atomic<uint64_t> events_folded_{0};

  mutable std::mutex tail_mu_;  // guards stopping_, started_, tail_status_
  std::condition_variable tail_cv_;
  bool stopping_ = false;
  bool started_ = false;
  Status tail_status_;
  std::thread tailer_;
};

// Folds every event of `ledger` up to `until` (0: the head) into a fresh
// in-memory state, as the live fold does, and returns its digest: the reference
// CallProjections::Digest must equal when position() == until.
// Returns InvalidArgument (field "until") if until is beyond the ledger head,
// Corruption (with the sequence) for an undecodable event, IOError if the
// ledger cannot be read.
// `progress`, when set, is called after each batch with the last sequence folded.
Result<Hash> RebuildCallProjectionsDigest(const Ledger& ledger, uint64_t until,
                                          const std::function<void(uint64_t)>& progress = {});

// A log entry by its hash: the sequence of the call it was made from, when
// the call occurred, and BLAKE2b-256 of the entry's key ‖ value.
struct LogEntryHash {
  uint64_t sequence = 0;
  int64_t occurred_at_us = 0;  // 0 in entries read from a store (not needed there)
  Hash record_hash{};
};

// What RebuildCallProjections does besides the fold, all off by default.
struct CallProjectionsRebuildOptions {
  // Called after each batch with the last sequence folded.
  std::function<void(uint64_t)> progress;
  // Return the entry of every logged call folded (48 bytes each), expired or
  // not, for CheckLogEntries.
  bool keep_log_entries = false;
  // Called with every event that is not an ApiCallRecorded, in sequence
  // order, after the fold took it: its sequence and stored value (hash ‖
  // body, as Ledger::ScanRaw gives it; valid during the call). A non-OK
  // return stops the rebuild, which returns it. So a caller folds other
  // projections in the same scan of the log.
  std::function<Status(uint64_t sequence, std::string_view stored)> other_events;
  // Called once the last event is folded (and given to other_events), before
  // the digest is computed; not called if the fold fails. So a caller can
  // start on what it folded from other_events while the digest is computed.
  std::function<void()> folded;
};

// What RebuildCallProjections returns.
struct RebuiltCallProjections {
  Hash digest{};                         // as RebuildCallProjectionsDigest's
  std::vector<LogEntryHash> log_entries;  // with keep_log_entries, in sequence order
};

// RebuildCallProjectionsDigest with `options`. Same errors, and those of
// options.other_events.
Result<RebuiltCallProjections> RebuildCallProjections(const Ledger& ledger, uint64_t until,
                                                      const CallProjectionsRebuildOptions& options);

// Folds the usage alone (no metrics, no logs, no store) of every API-call
// event of `ledger` in 1..to into memory: the usage CallProjections holds at
// `to`. For recomputing invoices from the log.
// The result is immutable, so thread-safe.
// Returns InvalidArgument (field "until") if `to` is beyond the ledger head,
// and the other errors of RebuildCallProjectionsDigest.
Result<std::unique_ptr<UsageReader>> FoldUsage(const Ledger& ledger, uint64_t to);

// The digest of call projections that folded nothing.
Hash EmptyCallProjectionsDigest();

// The persisted call projections as the server last wrote them.
struct CallProjectionsSnapshot {
  Hash digest{};          // equals CallProjections::Digest() at that position
  uint64_t position = 0;  // the last sequence folded
  // The stored log entries, in sequence order (the digest covers them only
  // through the running hash: check them with CheckLogEntries).
  std::vector<LogEntryHash> log_entries;
  // The store's sweep record: every logged call that occurred at or after it
  // keeps its entry (see Retention in the file comment).
  int64_t log_swept_before_us = 0;
};

// Reads the store at `path` (DATA/calls) as a RocksDB secondary instance
// (scratch files under `secondary_path`, REQUIRES: an empty directory), so a
// running server's store is read without stopping or disturbing it.
// The digest is of the stored records as they are (no value is parsed): a
// changed byte of a cell, usage or zone record changes it.
// Returns FailedPrecondition for a store of another format version;
// Corruption, with the sequence when there is one, for a metrics or log key
// of an unknown shape, a malformed meta record, or a log entry beyond the
// position; IOError if the store cannot be opened or read.
Result<CallProjectionsSnapshot> LoadCallProjectionsSnapshot(const std::string& path,
                                                            const std::string& secondary_path);

// Checks a snapshot's stored log entries against the entries a rebuild to the
// same position made (RebuildCallProjections with keep_log_entries): each
// stored entry must be the entry of the logged call its key names, byte for
// byte (a changed or an added one fails), and each logged call that occurred
// at or after `swept_before_us` must have one (a deleted one fails; older
// entries may have expired). Both in sequence order.
// Returns Corruption naming the first sequence where they disagree.
Status CheckLogEntries(const std::vector<LogEntryHash>& stored,
                       const std::vector<LogEntryHash>& made, int64_t swept_before_us);

// Reads only the position of the store at `path`, as LoadCallProjectionsSnapshot
// reads the whole (same errors; 0 when nothing was folded). Much faster: a
// replay starts its rebuild at this position while the snapshot loads. A
// running server may move the store on between the two reads.
Result<uint64_t> ReadCallProjectionsPosition(const std::string& path,
                                             const std::string& secondary_path);

}  // namespace keyledger
