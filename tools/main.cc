// keyledger: the event-sourced API-key ledger and billing engine.
// One executable; each subcommand has --help.
#include <CLI/CLI.hpp>

#include "tools/cli_validators.h"
#include "tools/commands.h"

namespace keyledger::tools {
// `bench invoice-run` registers its own flags (tools/bench_invoice.cc).
void AddBenchInvoiceCommand(CLI::App* bench, int* exit_code);
}  // namespace keyledger::tools

int main(int argc, char** argv) {
  using namespace keyledger::tools;
  // malloc is jemalloc's (tools/CMakeLists.txt). RocksDB's memtable arenas
  // (8 MiB blocks, freed after each flush) come back from its retained pages
  // without a page fault per 4 KiB, which glibc needed mallopt thresholds for
  // (page faults are 0.6% of the server's CPU under POST /v1/calls).
  CLI::App app{"keyledger: event-sourced API-key ledger and billing engine"};
  app.require_subcommand(1);
  int exit_code = 0;

  ServeOptions serve;
  auto* serve_cmd = app.add_subcommand("serve", "Serve the HTTP API on an embedded RocksDB");
  serve_cmd->add_option("--data", serve.data_dir, "Data directory (ledger and projections)")
      ->capture_default_str();
  serve_cmd->add_option("--listen", serve.listen, "HOST:PORT to listen on ([::1]:PORT for IPv6)")
      ->capture_default_str();
  serve_cmd->add_option("--threads", serve.threads,
                        "HTTP I/O threads (default: half the cores): they read and write every "
                        "connection and decide authorizations; connections are dealt to them in turn")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  serve_cmd->add_option("--worker-threads", serve.worker_threads,
                        "Threads for the other requests (writes wait on them for a synced "
                        "append, so this many can share one group commit)")
      ->check(CLI::Range(1, kServeWorkerThreadsMax))
      ->capture_default_str();
  serve_cmd->add_option("--body-bytes-max", serve.body_bytes_max, "Largest request body accepted")
      ->check(CLI::Range(size_t{1024}, size_t{64} << 20))
      ->capture_default_str();
  serve_cmd->add_option("--wal-prefill-mib", serve.wal_prefill_mib,
                        "Size the ledger's write-ahead log files are written to ahead of use, "
                        "so synced appends sync data only (0: off)")
      ->check(CLI::Range(uint64_t{0}, kWalPrefillMibMax))
      ->capture_default_str();
  serve_cmd->add_option("--log-retention-days", serve.log_retention_days,
                        "Days request logs are kept (in the derived store; the ledger keeps all)")
      ->check(CLI::Range(int64_t{1}, int64_t{3650}))
      ->capture_default_str();
  serve_cmd->add_option("--max-lateness-days", serve.max_lateness_days,
                        "Oldest occurred_at accepted by POST /v1/calls, in days")
      ->check(CLI::Range(int64_t{1}, int64_t{365}))
      ->capture_default_str();
  serve_cmd->add_flag("--workspace-tps-cap", serve.workspace_tps_cap,
                      "Also cap each workspace as a whole at its tps_limit (off: per key only)");
  serve_cmd->add_option("--smtp", serve.smtp,
                        "SMTP relay HOST:PORT for alarm e-mail (password from KEYLEDGER_SMTP_PASSWORD)");
  serve_cmd->add_option("--smtp-user", serve.smtp_user, "SMTP AUTH user name (default: no AUTH)");
  serve_cmd->add_flag("--smtp-starttls", serve.smtp_starttls, "Require STARTTLS on the SMTP relay");
  serve_cmd->add_option("--smtp-from", serve.smtp_from, "Sender address of alarm e-mail")
      ->capture_default_str();
  serve_cmd->add_option("--upstream", serve.upstream,
                        "Gateway mode: relay every request outside /v1/, /healthz and /metrics to "
                        "this rendering API (http://HOST:PORT), authorized and recorded");
  serve_cmd->add_option("--upstream-timeout-ms", serve.upstream_timeout_ms,
                        "Gateway mode: longest wait for the upstream's response header (then 504)")
      ->check(CLI::Range(int64_t{1}, int64_t{3'600'000}))
      ->capture_default_str();
  serve_cmd->add_option("--proxy-body-bytes-max", serve.proxy_body_bytes_max,
                        "Gateway mode: largest request body relayed (then 413)")
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 40))
      ->capture_default_str();
  serve_cmd->add_option("--trusted-proxy", serve.trusted_proxies,
                        "Gateway mode: CIDR of a proxy in front of keyledger (repeatable); from "
                        "these peers the client address is taken from X-Forwarded-For");
  serve_cmd->add_flag("--allow-private-webhooks", serve.allow_private_webhooks,
                      "Let alarm webhooks reach loopback and private addresses (tests; SSRF risk)");
  serve_cmd->add_option("--alarm-interval-ms", serve.alarm_interval_ms,
                        "How often every alarm is evaluated, in milliseconds")
      ->check(CLI::Range(int64_t{10}, int64_t{3'600'000}))
      ->capture_default_str();
  serve_cmd->add_option("--alarm-settle-seconds", serve.alarm_settle_seconds,
                        "A period is evaluated this long after it ended (late calls)")
      ->check(CLI::Range(int64_t{0}, int64_t{3600}))
      ->capture_default_str();
  serve_cmd->add_option("--notification-retry-base-ms", serve.notification_retry_base_ms,
                        "First retry delay of a failed notification; doubles per attempt")
      ->check(CLI::Range(int64_t{10}, int64_t{3'600'000}))
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
  append_cmd->add_option("--keys", append.keys, "API keys the calls are spread over (a stream each)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000'000}))
      ->capture_default_str();
  append_cmd->add_option("--wal-prefill-mib", append.wal_prefill_mib,
                         "As serve's: WAL files written ahead of use (0: off)")
      ->check(CLI::Range(uint64_t{0}, kWalPrefillMibMax))
      ->capture_default_str();
  append_cmd->add_flag("!--no-sync", append.sync, "Acknowledge before fsync (async durability)");
  append_cmd->add_option("--data", append.data_dir, "Scratch data directory")->required();
  append_cmd->callback([&] { exit_code = RunBenchAppend(append); });
  AddBenchInvoiceCommand(bench_cmd, &exit_code);

  // ---- events / audit: read-only, safe on the data directory of a running server ----
  const char* kReadOnlyNote =
      "Reads DIR/ledger through a RocksDB secondary instance (scratch files in a "
      "temporary directory under /tmp, removed at exit): never writes to DIR and "
      "works while `keyledger serve` runs.";
  auto* events_cmd = app.add_subcommand("events", "Read the event log");
  events_cmd->require_subcommand(1);
  EventsDumpOptions dump;
  auto* dump_cmd =
      events_cmd->add_subcommand("dump", "Print events as JSON lines, one per event, oldest first");
  dump_cmd->footer(kReadOnlyNote);
  dump_cmd->add_option("--data", dump.data_dir, "Data directory of the server (holds ledger/)")
      ->required();
  dump_cmd->add_option("--from", dump.from, "First sequence to print")
      ->check(NotNegative() & CLI::Range(uint64_t{1}, UINT64_MAX))
      ->capture_default_str();
  dump_cmd->add_option("--to", dump.to, "Last sequence to print (0: the head)")
      ->check(NotNegative())
      ->capture_default_str();
  dump_cmd->add_option("--stream", dump.stream,
                       "Only events of this stream, e.g. key/<id>, ws/<id>, calls/<key id>")
      ->check(StreamIdValidator());
  dump_cmd->callback([&] { exit_code = RunEventsDump(dump); });

  auto* audit_cmd = app.add_subcommand(
      "audit", "Prove the log was not changed and that projections follow from it");
  audit_cmd->require_subcommand(1);
  AuditVerifyOptions verify;
  auto* verify_cmd = audit_cmd->add_subcommand(
      "verify", "Recompute every hash of the chain; print the verified head, or exit 1 naming "
                "the first bad sequence");
  verify_cmd->footer(std::string("Checks every stored hash against the bytes and the previous "
                                 "hash, that sequences are dense and stream versions go up by "
                                 "one, and that the stream and event-id indexes hold exactly "
                                 "the events' entries. Prints {\"events_verified\":N,"
                                 "\"head_sequence\":S,\"head_hash\":\"hex\"}. ") +
                     kReadOnlyNote);
  verify_cmd->add_option("--data", verify.data_dir, "Data directory of the server (holds ledger/)")
      ->required();
  verify_cmd->add_option("--expect-head", verify.expect_head,
                         "SEQ:HASH pinned earlier (GET /v1/ledger/head): also check that event "
                         "SEQ is stored with hash HASH; exits 1 if not")
      ->check(NotEmpty());
  verify_cmd->add_flag("--skip-index-check", verify.skip_index_check,
                       "Check the chain only, not the stream and event-id indexes (faster; "
                       "a tampered index then goes unnoticed)");
  verify_cmd->callback([&] { exit_code = RunAuditVerify(verify); });

  AuditReplayOptions replay;
  auto* replay_cmd = audit_cmd->add_subcommand(
      "replay", "Rebuild each projection from the log and compare its digest with the live one");
  replay_cmd->footer(std::string("The live projection is read from DIR/projections through a "
                                 "secondary instance too, and the rebuild stops at its "
                                 "position. Prints a table; exits 1 on any difference, 2 on bad arguments. Folds "
                                 "the log without re-checking hashes: run `audit verify` "
                                 "first. ") +
                     kReadOnlyNote);
  replay_cmd->add_option("--data", replay.data_dir, "Data directory of the server (holds ledger/ "
                                                    "and projections/)")
      ->required();
  replay_cmd->add_option("--until", replay.until,
                         "Rebuild only up to this sequence, or up to the last event recorded at "
                         "or before this RFC 3339 time, and print the digests without comparing")
      ->check(SequenceOrTimeValidator());
  replay_cmd
      ->add_option("--threads", replay.threads,
                   "Threads that read the live projections and rebuild them at once (at most " +
                       std::to_string(kReplayThreadsMax) +
                       "); projections at one position share one scan of the log")
      ->check(CLI::Range(size_t{1}, kReplayThreadsMax))
      ->capture_default_str();
  replay_cmd->callback([&] { exit_code = RunAuditReplay(replay); });

  BenchAuthorizeOptions authorize;
  auto* authorize_cmd = bench_cmd->add_subcommand(
      "authorize", "Time in-process authorization decisions (no HTTP)");
  authorize_cmd->add_option("--keys", authorize.keys, "API keys to spread requests over")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  authorize_cmd->add_option("--iterations", authorize.iterations, "Decisions per thread")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000}))
      ->capture_default_str();
  authorize_cmd->add_option("--threads", authorize.threads, "Concurrent threads")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  authorize_cmd->add_option("--data", authorize.data_dir, "Scratch data directory (wiped)")
      ->required();
  authorize_cmd->callback([&] { exit_code = RunBenchAuthorize(authorize); });

  auto* invoice_cmd = app.add_subcommand("invoice", "Monthly invoice runs and exports for finance");
  invoice_cmd->require_subcommand(1);
  InvoiceOptions invoice;
  auto add_target = [&invoice](CLI::App* cmd) {
    cmd->add_option("--month", invoice.month, "Billing month, YYYY-MM")
        ->required()
        ->check(BillingMonthValidator());
    auto* data = cmd->add_option("--data", invoice.data_dir, "Data directory of a stopped server");
    auto* server = cmd->add_option("--server", invoice.server,
                                   "Base URL of a running server, e.g. http://127.0.0.1:8080");
    data->excludes(server);
    cmd->add_option("--token", invoice.token,
                    "Operator token for --server (default: $KEYLEDGER_ADMIN_TOKEN)");
  };
  auto* run_cmd = invoice_cmd->add_subcommand("run", "Issue the month's invoices (idempotent)");
  add_target(run_cmd);
  run_cmd->add_option("--grace-hours", invoice.grace_hours,
                      "Hours after the month's end (in each workspace's time zone) before it may be invoiced")
      ->check(CLI::Range(int64_t{0}, int64_t{744}))
      ->capture_default_str();
  run_cmd->callback([&] { exit_code = RunInvoiceRun(invoice); });
  auto* export_cmd = invoice_cmd->add_subcommand("export", "Print the month's issued invoices");
  add_target(export_cmd);
  export_cmd->add_option("--format", invoice.format, "json or csv")
      ->check(CLI::IsMember({"json", "csv"}))
      ->capture_default_str();
  export_cmd->add_option("--workspace", invoice.workspace, "Only this workspace id");
  export_cmd->callback([&] { exit_code = RunInvoiceExport(invoice); });

  // CLI11 would answer an unknown command with "A subcommand is required".
  const auto known = [&app](const char* name) {
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      if (sub->get_name() == name) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::fprintf(stderr, "keyledger: unknown command '%s' (see keyledger --help)\n", argv[1]);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and succeeds; any other parse error is a usage error,
    // exit 2 for every command (CLI11's own codes differ per error).
    constexpr int kExitUsage = 2;
    return app.exit(e) == 0 ? 0 : kExitUsage;
  } catch (const std::exception& e) {
    // The commands return errors as values; this is the last net (e.g. a
    // file-system call that threw) so that none ends in abort().
    std::fprintf(stderr, "keyledger: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
