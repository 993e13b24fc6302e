// The keyledger subcommands. main.cc parses flags with CLI11 and calls these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace keyledger::tools {

// The ledger's prefilled WAL size (ledger/prefilled_wal.h) for `bench
// append`: a WAL lives until a 64 MiB memtable fills, which takes ~80 MiB of
// log. One appender waits out every fsync, which prefilled files make 2-3x
// shorter here.
inline constexpr uint64_t kBenchAppendWalPrefillMib = 96;
// The same for `serve`: off. Its writers are many; the ledger fsyncs one
// group while the next is written (ledger.h), so the fsync's length is off
// the serial path, and prefilling (every WAL byte written twice, a thread's
// CPU) cost more than it saved: POST /v1/calls 189k-201k events/s without,
// 174k-190k with (docs/performance.md, "Two-stage group commit").
inline constexpr uint64_t kServeWalPrefillMib = 0;
inline constexpr uint64_t kWalPrefillMibMax = 4096;
// Threads `serve` runs the handlers of writes and long reads on: a handler
// blocked on a synced append holds one, so this many such requests can join
// one group commit.
inline constexpr int kServeWorkerThreadsDefault = 16;
inline constexpr int kServeWorkerThreadsMax = 256;
// `serve`'s HTTP I/O threads unless --threads says otherwise: half the cores,
// at least one. They only move bytes and decide authorizations; the other
// cores run the workers, the appender, the folds and RocksDB's flushes.
int DefaultServeIoThreads();

struct BenchAppendOptions {
  uint64_t events = 100'000;
  size_t value_size_bytes = 256;  // approximate stored bytes per event
  size_t batch = 100;             // events per Append call
  int threads = 1;                // concurrent appenders (group commit merges them)
  uint64_t keys = 64;             // API keys the calls are spread over: one stream each
  uint64_t wal_prefill_mib = kBenchAppendWalPrefillMib;  // 0: off
  bool sync = true;
  std::string data_dir;
};
// Appends synthetic API-call events through the durable append path and
// prints one JSON line with events_per_sec. Returns the process exit code.
int RunBenchAppend(const BenchAppendOptions& options);

struct BenchAuthorizeOptions {
  int keys = 1000;
  uint64_t iterations = 2'000'000;  // per thread
  int threads = 1;
  std::string data_dir;
};
// Creates a workspace with `keys` keys and times in-process authorization
// decisions; prints one JSON line with decisions_per_sec.
int RunBenchAuthorize(const BenchAuthorizeOptions& options);

struct InvoiceOptions {
  std::string month;           // YYYY-MM
  int64_t grace_hours = 24;    // run only
  std::string format = "json"; // export: json or csv
  std::string workspace;       // export: only this workspace ("" = all)
  std::string data_dir;        // a stopped server's data directory, or
  std::string server;          // a running server's base URL
  std::string token;           // operator token for --server (default: $KEYLEDGER_ADMIN_TOKEN)
};
// POST /v1/invoice-runs for the month; prints the result JSON.
int RunInvoiceRun(const InvoiceOptions& options);
// Prints the month's invoices of every workspace as JSON or one CSV.
int RunInvoiceExport(const InvoiceOptions& options);

struct ServeOptions {
  std::string data_dir = "./data";
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; IPv6 as [::1]:8080
  int threads = DefaultServeIoThreads();  // HTTP I/O threads
  int worker_threads = kServeWorkerThreadsDefault;
  size_t body_bytes_max = 1u << 20;
  int64_t log_retention_days = 30;
  int64_t max_lateness_days = 35;
  bool workspace_tps_cap = false;
  uint64_t wal_prefill_mib = kServeWalPrefillMib;  // 0: WAL files are created as RocksDB does
  // Alarms: SMTP relay for e-mail ("" = e-mail notifications fail and are
  // retried until a relay is configured), webhook guard, loop timing.
  std::string smtp;                 // HOST:PORT
  std::string smtp_user;            // password from KEYLEDGER_SMTP_PASSWORD
  bool smtp_starttls = false;
  std::string smtp_from = "keyledger@localhost";
  bool allow_private_webhooks = false;
  int64_t alarm_interval_ms = 10'000;
  int64_t alarm_settle_seconds = 30;
  int64_t notification_retry_base_ms = 5'000;
  // Gateway mode: "http://HOST:PORT" of the rendering API ("" = off).
  std::string upstream;
  int64_t upstream_timeout_ms = 120'000;         // wait for the response header
  uint64_t proxy_body_bytes_max = 256ull << 20;  // largest relayed request body
  // Gateway mode: CIDRs of the proxies in front (X-Forwarded-For is believed
  // only from them). Empty: the peer is the client.
  std::vector<std::string> trusted_proxies;
};
// Opens the ledger and projections under data_dir and serves HTTP until
// SIGINT/SIGTERM. Returns the process exit code.
int RunServe(const ServeOptions& options);

// ---- Audit: read-only commands on the data directory of a (running) server --------
//
// Each opens DIR/ledger as a RocksDB secondary instance (scratch files in a
// fresh directory under /tmp, removed at exit), so it never writes to DIR and
// needs no server downtime. Exit codes: 0 success, 1 a failed check or an
// error (stderr says which), 2 bad arguments.

struct EventsDumpOptions {
  std::string data_dir;  // the --data directory of `keyledger serve`
  uint64_t from = 1;     // first sequence
  uint64_t to = 0;       // last sequence; 0: the head
  std::string stream;    // only this stream; empty: all
};
// Prints the events in [from, to] as JSON lines (tools/event_json.h) on stdout.
int RunEventsDump(const EventsDumpOptions& options);

struct AuditVerifyOptions {
  std::string data_dir;
  std::string expect_head;  // "SEQ:HASH" pinned earlier; empty: no pin
  bool skip_index_check = false;  // VerifyOptions::check_indexes = false
};
// Verifies the whole hash chain (Ledger::Verify) and prints
// {"events_verified":N,"head_sequence":S,"head_hash":"hex"}. With a pin,
// also checks that event SEQ is stored with hash HASH.
int RunAuditVerify(const AuditVerifyOptions& options);

// Most threads `audit replay --threads` may ask for.
inline constexpr size_t kReplayThreadsMax = 16;

struct AuditReplayOptions {
  std::string data_dir;
  std::string until;  // SEQ or RFC 3339; empty: compare with the live projections
  // Threads that read live projections and rebuild, the main one included;
  // 1 .. kReplayThreadsMax. Default: 2.
  size_t threads = 2;
};
// Rebuilds each projection from the log and compares its digest with the
// live one persisted under DIR/projections; prints a table.
int RunAuditReplay(const AuditReplayOptions& options);

}  // namespace keyledger::tools
