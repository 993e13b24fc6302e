#include "tools/local_stack.h"

#include <cstdio>
#include <filesystem>

namespace keyledger::tools {

Status LocalStack::Open(const std::string& dir, bool create, ServiceOptions options,
                        CallProjectionsOptions call_options) {
  if (!create && !std::filesystem::exists(dir + "/ledger")) {
    return Status::NotFound("no ledger under " + dir + " (expected " + dir + "/ledger)");
  }
  std::error_code ec;
  // `--data DATA/ledger` by mistake would start a second, empty ledger
  // inside the first one's store.
  if (std::filesystem::exists(dir + "/CURRENT", ec) || std::filesystem::exists(dir + "/IDENTITY", ec)) {
    return Status::InvalidArgument(dir + " is itself a RocksDB store; the data directory is the "
                                   "one that holds ledger/, projections/ and calls/");
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError("create " + dir + ": " + ec.message());
  LedgerOptions lo;
  lo.clock = &clock;
  lo.storage.wal_prefill_bytes = ledger_wal_prefill_bytes;
  KL_ASSIGN_OR_RETURN(ledger, Ledger::Open(dir + "/ledger", lo));
  KL_ASSIGN_OR_RETURN(key_state, KeyStateStore::Open(dir + "/projections", ledger.get()));
  KL_ASSIGN_OR_RETURN(calls, CallProjections::Open(dir + "/calls", ledger.get(), &clock,
                                                   call_options));
  service = std::make_unique<Service>(
      ServiceDeps{.ledger = ledger.get(), .key_state = key_state.get(), .clock = &clock,
                  .random = &random, .calls = calls.get(), .notifier = notifier.get(),
                  .rate_clock = &rate_clock},
      options);
  return Status::Ok();
}

void LocalStack::Stop() {
  if (service) service->Stop();
  // Moves the key state's stored position over the calls recorded since the
  // last command, so the next Open does not walk them again.
  if (key_state) {
    Status caught_up = key_state->CatchUp();
    if (!caught_up.ok()) {
      std::fprintf(stderr, "keyledger: key state catch-up at stop: %s\n", caught_up.ToString().c_str());
    }
  }
  if (calls) calls->Stop();
  if (ledger) ledger->Close();
}

}  // namespace keyledger::tools

namespace keyledger::tools {

Status PrepareBenchDir(const std::string& dir, bool wipe) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (fs::exists(status)) {
    if (!fs::is_directory(status)) {
      return Status::InvalidArgument(dir + " is not a directory", "data");
    }
    const bool empty = fs::is_empty(dir, ec);
    if (ec) return Status::IOError("read " + dir + ": " + ec.message());
    if (!empty && !fs::exists(fs::path(dir) / kBenchMarkerFile, ec)) {
      return Status::InvalidArgument(
          dir + " is not empty and was not made by `keyledger bench`; a benchmark writes "
                "synthetic data into its --data directory, so give it a new or empty one",
          "data");
    }
    if (wipe) {
      fs::remove_all(dir, ec);
      if (ec) return Status::IOError("remove " + dir + ": " + ec.message());
    }
  }
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError("create " + dir + ": " + ec.message());
  std::FILE* marker = std::fopen((fs::path(dir) / kBenchMarkerFile).c_str(), "w");
  if (marker == nullptr) return Status::IOError("create a file in " + dir);
  std::fclose(marker);
  return Status::Ok();
}

}  // namespace keyledger::tools
