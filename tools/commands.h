// The keyledger subcommands. main.cc parses flags with CLI11 and calls these.
#pragma once

#include <cstdint>
#include <string>

namespace keyledger::tools {

struct BenchAppendOptions {
  uint64_t events = 100'000;
  size_t value_size_bytes = 256;  // approximate stored bytes per event
  size_t batch = 100;             // events per Append call
  int threads = 1;                // concurrent appenders (group commit merges them)
  bool sync = true;
  std::string data_dir;
};
// Appends synthetic API-call events through the durable append path and
// prints one JSON line with events_per_sec. Returns the process exit code.
int RunBenchAppend(const BenchAppendOptions& options);

struct ServeOptions {
  std::string data_dir = "./data";
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; IPv6 as [::1]:8080
  int threads = 4;
  size_t body_bytes_max = 1u << 20;
};
// Opens the ledger and projections under data_dir and serves HTTP until
// SIGINT/SIGTERM. Returns the process exit code.
int RunServe(const ServeOptions& options);

}  // namespace keyledger::tools
