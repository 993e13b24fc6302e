// The whole server stack opened in process on a data directory: ledger, key
// state, call projections and the Service. Shared by `serve`, the invoice
// commands and the authorize benchmark so they open data the same way.
//
// Thread safety: as its members; Open is not thread-safe.
#pragma once

#include <memory>
#include <string>

#include "api/service.h"

namespace keyledger::tools {

struct LocalStack {
  SystemClock clock;
  SteadyClock rate_clock;  // the rate limiter's
  SecureRandom random;
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<KeyStateStore> key_state;
  std::unique_ptr<CallProjections> calls;
  // Alarm notifications; set before Open to let the Service deliver them.
  std::unique_ptr<Notifier> notifier;
  std::unique_ptr<Service> service;
  // Set before Open: the ledger's prefilled WAL size (0: off). `serve` sets
  // it; short-lived commands leave it off rather than fill a spare they never use.
  uint64_t ledger_wal_prefill_bytes = 0;

  // Opens DIR/ledger, DIR/projections and DIR/calls (creating them when
  // `create` is true) and builds the Service. Returns NotFound if the ledger
  // is missing and `create` is false, or the error of the store that failed.
  Status Open(const std::string& dir, bool create, ServiceOptions options = {},
              CallProjectionsOptions call_options = {});

  // Flushes denials and stops the call projections' thread. Idempotent.
  void Stop();
  ~LocalStack() { Stop(); }
};

// The file a `keyledger bench` command leaves in its --data directory.
inline constexpr char kBenchMarkerFile[] = ".keyledger-bench";

// Makes `dir` ready for a benchmark: creates it when missing; when it exists,
// requires that it is a directory and that it is empty or was made by a
// benchmark (holds kBenchMarkerFile), so a benchmark never wipes or writes
// synthetic events into a server's data; then, when `wipe` is true, empties
// it. Leaves the marker file in it.
// Returns InvalidArgument (field "data") for a path that is not a directory
// or a directory a benchmark did not make; IOError when the file system
// refuses.
Status PrepareBenchDir(const std::string& dir, bool wipe);

}  // namespace keyledger::tools
