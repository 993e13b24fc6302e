// keyledger: the event-sourced API-key ledger and billing engine.
// One executable; each subcommand has --help.
#include <CLI/CLI.hpp>

#include "tools/commands.h"

int main(int argc, char** argv) {
  using namespace keyledger::tools;
  CLI::App app{"keyledger: event-sourced API-key ledger and billing engine"};
  app.require_subcommand(1);
  int exit_code = 0;

  ServeOptions serve;
  auto* serve_cmd = app.add_subcommand("serve", "Serve the HTTP API on an embedded RocksDB");
  serve_cmd->add_option("--data", serve.data_dir, "Data directory (ledger and projections)")
      ->capture_default_str();
  serve_cmd->add_option("--listen", serve.listen, "HOST:PORT to listen on ([::1]:PORT for IPv6)")
      ->capture_default_str();
  serve_cmd->add_option("--threads", serve.threads, "HTTP I/O threads")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  serve_cmd->add_option("--body-bytes-max", serve.body_bytes_max, "Largest request body accepted")
      ->check(CLI::Range(size_t{1024}, size_t{64} << 20))
      ->capture_default_str();
  serve_cmd->callback([&] { exit_code = RunServe(serve); });

  auto* bench_cmd = app.add_subcommand("bench", "Benchmarks");
  bench_cmd->require_subcommand(1);
  BenchAppendOptions append;
  auto* append_cmd = bench_cmd->add_subcommand(
      "append", "Append synthetic API-call events through the durable append path");
  append_cmd->add_option("--events", append.events, "Events to append")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000}))
      ->capture_default_str();
  append_cmd->add_option("--value-size", append.value_size_bytes, "Stored bytes per event")
      ->check(CLI::Range(size_t{1}, size_t{65536}))
      ->capture_default_str();
  append_cmd->add_option("--batch", append.batch, "Events per append call")
      ->check(CLI::Range(size_t{1}, size_t{10000}))
      ->capture_default_str();
  append_cmd->add_option("--threads", append.threads, "Concurrent appenders")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  append_cmd->add_flag("!--no-sync", append.sync, "Acknowledge before fsync (async durability)");
  append_cmd->add_option("--data", append.data_dir, "Scratch data directory")->required();
  append_cmd->callback([&] { exit_code = RunBenchAppend(append); });

  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
