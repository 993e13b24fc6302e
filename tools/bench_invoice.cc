// keyledger bench invoice-run: times one month's invoice run (POST
// /v1/invoice-runs through Service::Handle, the code the HTTP server runs) over
// many workspaces, and its idempotent re-run.
//
// Setup goes through the real event path, on a ManualClock so that the month
// can lie in the past: a graduated price plan is published and every workspace
// is created, given a security group, assigned the plan and given its keys
// (Service commands, one durable append each) before the month starts; then
// the month's calls are recorded through DataPlane::RecordCalls (the durable
// path POST /v1/calls ends in), in batches of 1000, in occurred_at order, each
// recorded one second after it occurred. The call projections then fold them
// (timed apart: a running server folds in the background as calls arrive).
// Only then the clock is set to the real time and the run is timed.
//
// `--calls` is the month's billable volume. The first `--recorded-calls` of
// it are individual 1-unit calls (a 2xx call without `units`, as a gateway
// reports it). Recording 100 M of them takes about 40 min on this machine, so
// the remainder is recorded as ONE call per key whose `units` is that key's
// remaining share: the per-(workspace, month, key) usage the run reads is then
// exactly what the individual calls would have produced, but the ledger holds
// fewer ApiCallRecorded events (the metrics projection counts them as fewer
// calls; invoices do not read metrics). The JSON line says how many of each.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <queue>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/service.h"
#include "billing/calendar.h"
#include "tools/cli_validators.h"
#include "tools/local_stack.h"

namespace keyledger::tools {
namespace {

using Json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kSecondUs = 1'000'000;
constexpr int64_t kHourUs = 3600 * kSecondUs;
constexpr size_t kCallsPerRequest = 1000;  // DataPlaneOptions::calls_per_batch_max
constexpr char kOperatorToken[] = "bench-invoice-operator-token";

struct BenchInvoiceOptions {
  uint64_t workspaces = 10'000;
  uint64_t keys_per_workspace = 5;
  uint64_t calls = 100'000'000;
  uint64_t recorded_calls = 10'000'000;  // capped at `calls`
  std::string month;                      // "": the last month that is due
  std::string data_dir;
  bool setup_only = false;
  bool no_setup = false;
};

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// The server stack of tools/local_stack.h, on a clock the setup can move.
struct BenchStack {
  ManualClock clock{0};
  SecureRandom random;
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<KeyStateStore> key_state;
  std::unique_ptr<CallProjections> calls;
  std::unique_ptr<Service> service;

  Status Open(const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return Status::IOError("create " + dir + ": " + ec.message());
    LedgerOptions lo;
    lo.clock = &clock;
    auto t = SteadyClock::now();
    KL_ASSIGN_OR_RETURN(ledger, Ledger::Open(dir + "/ledger", lo));
    const double ledger_s = SecondsSince(t);
    t = SteadyClock::now();
    KL_ASSIGN_OR_RETURN(key_state, KeyStateStore::Open(dir + "/projections", ledger.get()));
    const double key_state_s = SecondsSince(t);
    t = SteadyClock::now();
    KL_ASSIGN_OR_RETURN(calls, CallProjections::Open(dir + "/calls", ledger.get(), &clock,
                                                     CallProjectionsOptions{}));
    std::fprintf(stderr,
                 "bench invoice-run: opened ledger %.1f s, key state %.1f s, call projections "
                 "%.1f s\n",
                 ledger_s, key_state_s, SecondsSince(t));
    service = std::make_unique<Service>(
        ServiceDeps{ledger.get(), key_state.get(), &clock, &random, calls.get()},
        ServiceOptions{});
    return Status::Ok();
  }
  ~BenchStack() {
    if (service) service->Stop();
    if (calls) calls->Stop();
    if (ledger) ledger->Close();
  }
};

Result<Json> Call(Service& service, const std::string& method, const std::string& target,
                  const Json& body, int expect_status) {
  HttpRequest req;
  req.method = method;
  req.target = target;
  req.body = body.dump();
  HttpResponse r = service.HandleAsOperator(req);
  if (r.status != expect_status) {
    return Status::Internal(method + " " + target + ": " + std::to_string(r.status) + " " +
                            r.body);
  }
  return Json::parse(r.body);
}

// Deterministic, skewed volumes: workspace w weighs 1 + (h mod 100)^2 with h a
// scramble of w (1 .. 9802), its j-th key (j from 0) that times j + 1. Returns
// each key's share of `total`: floor(total x weight / sum), plus one for the
// first keys until the shares add up to `total`.
std::vector<uint64_t> Shares(uint64_t total, const std::vector<uint64_t>& weights) {
  unsigned __int128 sum = 0;
  for (uint64_t w : weights) sum += w;
  std::vector<uint64_t> out(weights.size());
  uint64_t given = 0;
  for (size_t i = 0; i < weights.size(); i++) {
    out[i] = static_cast<uint64_t>(static_cast<unsigned __int128>(total) * weights[i] / sum);
    given += out[i];
  }
  for (size_t i = 0; given < total; i = (i + 1) % out.size()) {
    out[i]++;
    given++;
  }
  return out;
}

struct SetupResult {
  uint64_t workspaces = 0;
  uint64_t keys = 0;
  uint64_t recorded_call_events = 0;  // 1-unit calls
  uint64_t bulk_call_events = 0;      // one per key, carrying the remaining units
  uint64_t units = 0;                 // the sum of all of them: the month's volume
  double entities_seconds = 0;
  double record_seconds = 0;
};

Status Setup(BenchStack& s, const BenchInvoiceOptions& o, const BillingMonth& month,
             SetupResult* out) {
  KL_ASSIGN_OR_RETURN(auto bounds, MonthBoundsUs(month, "UTC"));
  const auto [start_us, end_us] = bounds;
  auto t0 = SteadyClock::now();
  s.clock.SetUs(start_us - kHourUs);  // everything exists before the month starts
  KL_RETURN_IF_ERROR(s.service->BootstrapOperatorToken(std::string(kOperatorToken)).ToStatus());
  // A graduated plan: the first 1,000 units free, then 1.0¢, 0.8¢, 0.5¢; $29 a month.
  Json plan = {{"id", "bench"},
               {"currency", "USD"},
               {"mode", "graduated"},
               {"monthly_fee_minor", 2900},
               {"tiers", Json::array({{{"up_to", 1000}, {"unit_price_micros", 0}},
                                      {{"up_to", 10000}, {"unit_price_micros", 1'000'000}},
                                      {{"up_to", 25000}, {"unit_price_micros", 800'000}},
                                      {{"up_to", nullptr}, {"unit_price_micros", 500'000}}})}};
  KL_RETURN_IF_ERROR(Call(*s.service, "POST", "/v1/price-plans", plan, 201).ToStatus());
  std::vector<std::string> key_ids;
  std::vector<uint64_t> weights;
  for (uint64_t w = 0; w < o.workspaces; w++) {
    KL_ASSIGN_OR_RETURN(Json ws, Call(*s.service, "POST", "/v1/workspaces",
                                      {{"name", "bench " + std::to_string(w)}}, 201));
    const std::string base = "/v1/workspaces/" + ws["id"].get<std::string>();
    KL_RETURN_IF_ERROR(
        Call(*s.service, "PATCH", base, {{"price_plan", "bench"}}, 200).ToStatus());
    KL_ASSIGN_OR_RETURN(Json group, Call(*s.service, "POST", base + "/security-groups",
                                         {{"name", "gateway"}, {"ip_allow", Json::array({"0.0.0.0/0"})}},
                                         201));
    const uint64_t h = (w * 7919 + 13) % 100;
    for (uint64_t j = 0; j < o.keys_per_workspace; j++) {
      KL_ASSIGN_OR_RETURN(Json key, Call(*s.service, "POST", base + "/keys",
                                         {{"name", "k" + std::to_string(j)},
                                          {"security_group", group["id"]}},
                                         201));
      key_ids.push_back(key["id"].get<std::string>());
      weights.push_back((1 + h * h) * (j + 1));
    }
    if ((w + 1) % 1000 == 0) {
      std::fprintf(stderr, "bench invoice-run: %llu workspaces set up (%.0f s)\n",
                   static_cast<unsigned long long>(w + 1), SecondsSince(t0));
    }
  }
  out->workspaces = o.workspaces;
  out->keys = key_ids.size();
  out->entities_seconds = SecondsSince(t0);

  // Each key's share of the volume, and of it the part recorded call by call.
  const uint64_t recorded_total = std::min(o.recorded_calls, o.calls);
  const std::vector<uint64_t> quota = Shares(o.calls, weights);
  std::vector<uint64_t> recorded(quota.size());
  uint64_t given = 0;
  for (size_t k = 0; k < quota.size(); k++) {
    recorded[k] = static_cast<uint64_t>(static_cast<unsigned __int128>(quota[k]) *
                                        recorded_total / o.calls);
    given += recorded[k];
  }
  for (size_t k = 0; given < recorded_total; k = (k + 1) % quota.size()) {
    if (recorded[k] < quota[k]) {
      recorded[k]++;
      given++;
    }
  }

  auto t1 = SteadyClock::now();
  DataPlane& plane = s.service->data_plane();
  uint64_t next_request = 0;
  std::vector<CallReport> batch;
  auto make_call = [&](size_t k, int64_t occurred_us, std::optional<uint64_t> units) {
    CallReport c;
    c.call.request_id = "bench-" + std::to_string(next_request++);
    c.call.key_id = key_ids[k];
    c.call.occurred_at_us = occurred_us;
    c.call.method = "POST";
    c.call.path = "/v1/render";
    c.call.status = 200;
    c.call.latency_us = 20'000 + (next_request % 97) * 1000;
    c.call.request_bytes = 512;
    c.call.response_bytes = 40'960;
    c.call.client_ip = "203.0.113.7";
    c.units = units;  // nullopt: 1, as for any 2xx call reported without units
    batch.push_back(std::move(c));
  };
  auto flush = [&]() -> Status {
    if (batch.empty()) return Status::Ok();
    // Recorded one second after the last call of the batch occurred.
    s.clock.SetUs(std::max(s.clock.NowUs(), batch.back().call.occurred_at_us + kSecondUs));
    KL_ASSIGN_OR_RETURN(RecordResult r, plane.RecordCalls(std::move(batch)));
    if (r.duplicates != 0) return Status::Internal("duplicate request ids in the benchmark");
    batch.clear();
    return Status::Ok();
  };
  // Key k's calls are spread evenly over the month; merged in time order.
  const int64_t span_us = end_us - start_us - 120 * kSecondUs;  // bulk calls go last
  auto time_of = [&](size_t k, uint64_t j) {
    return start_us + static_cast<int64_t>(static_cast<unsigned __int128>(2 * j + 1) * span_us /
                                           (2 * recorded[k]));
  };
  using Next = std::pair<int64_t, std::pair<size_t, uint64_t>>;  // (time, (key, j))
  std::priority_queue<Next, std::vector<Next>, std::greater<>> heap;
  for (size_t k = 0; k < recorded.size(); k++) {
    if (recorded[k] > 0) heap.push({time_of(k, 0), {k, 0}});
  }
  uint64_t done = 0;
  while (!heap.empty()) {
    auto [at_us, kj] = heap.top();
    heap.pop();
    make_call(kj.first, at_us, std::nullopt);
    if (kj.second + 1 < recorded[kj.first]) {
      heap.push({time_of(kj.first, kj.second + 1), {kj.first, kj.second + 1}});
    }
    if (batch.size() == kCallsPerRequest) KL_RETURN_IF_ERROR(flush());
    if (++done % 1'000'000 == 0) {
      std::fprintf(stderr, "bench invoice-run: %llu calls recorded (%.0f s)\n",
                   static_cast<unsigned long long>(done), SecondsSince(t1));
    }
  }
  KL_RETURN_IF_ERROR(flush());
  out->recorded_call_events = done;
  // The rest of each key's share: one call carrying it as units.
  for (size_t k = 0; k < quota.size(); k++) {
    if (quota[k] == recorded[k]) continue;
    make_call(k, end_us - 60 * kSecondUs, quota[k] - recorded[k]);
    out->bulk_call_events++;
    if (batch.size() == kCallsPerRequest) KL_RETURN_IF_ERROR(flush());
  }
  KL_RETURN_IF_ERROR(flush());
  for (uint64_t q : quota) out->units += q;
  out->record_seconds = SecondsSince(t1);
  return Status::Ok();
}

// The setup's figures, kept in DIR for runs with --no-setup.
constexpr char kSetupFile[] = "/bench-invoice-setup.json";

Status SaveSetup(const std::string& dir, const SetupResult& r) {
  Json j = {{"workspaces", r.workspaces}, {"keys", r.keys},
            {"recorded_call_events", r.recorded_call_events},
            {"bulk_call_events", r.bulk_call_events}, {"units", r.units},
            {"entities_seconds", r.entities_seconds}, {"record_seconds", r.record_seconds}};
  FILE* f = std::fopen((dir + kSetupFile).c_str(), "w");
  if (f == nullptr) return Status::IOError("cannot write " + dir + kSetupFile);
  std::fprintf(f, "%s\n", j.dump().c_str());
  std::fclose(f);
  return Status::Ok();
}

Result<SetupResult> LoadSetup(const std::string& dir) {
  FILE* f = std::fopen((dir + kSetupFile).c_str(), "r");
  if (f == nullptr) return Status::NotFound("no " + dir + kSetupFile + " (set up with --setup-only)");
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object()) return Status::Corruption("bad " + dir + kSetupFile);
  SetupResult r;
  r.workspaces = j.value("workspaces", uint64_t{0});
  r.keys = j.value("keys", uint64_t{0});
  r.recorded_call_events = j.value("recorded_call_events", uint64_t{0});
  r.bulk_call_events = j.value("bulk_call_events", uint64_t{0});
  r.units = j.value("units", uint64_t{0});
  r.entities_seconds = j.value("entities_seconds", 0.0);
  r.record_seconds = j.value("record_seconds", 0.0);
  return r;
}

// The last month whose end (UTC) plus the default 24 h of grace has passed.
Result<BillingMonth> LastDueMonth(int64_t now_us) {
  KL_ASSIGN_OR_RETURN(BillingMonth m, MonthOf(now_us - 25 * kHourUs, "UTC"));
  if (m.month == 1) return BillingMonth{m.year - 1, 12};
  return BillingMonth{m.year, m.month - 1};
}

struct RunResult {
  double seconds = 0;
  double thread_cpu_seconds = 0;  // CPU of the calling thread: less sensitive to a busy machine
  HttpResponse response;
};

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

RunResult TimedRun(Service& service, const BillingMonth& month) {
  HttpRequest req;
  req.method = "POST";
  req.target = "/v1/invoice-runs";
  req.body = Json{{"month", month.ToString()}}.dump();
  req.headers.emplace_back("authorization", std::string("Bearer ") + kOperatorToken);
  auto start = SteadyClock::now();
  const double cpu_start = ThreadCpuSeconds();
  RunResult r;
  r.response = service.Handle(req);
  r.seconds = SecondsSince(start);
  r.thread_cpu_seconds = ThreadCpuSeconds() - cpu_start;
  return r;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "bench invoice-run: %s\n", message.c_str());
  return 1;
}

int RunBenchInvoice(const BenchInvoiceOptions& o) {
  const int64_t real_now_us = SystemClock().NowUs();
  BillingMonth month;
  if (o.month.empty()) {
    auto m = LastDueMonth(real_now_us);
    if (!m.ok()) return Fail(m.status().ToString());
    month = *m;
  } else {
    auto m = ParseBillingMonth(o.month, "month");
    if (!m.ok()) return Fail(m.status().ToString());
    month = *m;
  }
  auto bounds = MonthBoundsUs(month, "UTC");
  if (!bounds.ok()) return Fail(bounds.status().ToString());
  if (bounds->second + 24 * kHourUs > real_now_us) {
    return Fail("month " + month.ToString() + " is not due yet (its end plus 24 h)");
  }
  if (o.no_setup && (!std::filesystem::exists(o.data_dir + "/ledger") ||
                     !std::filesystem::exists(o.data_dir + "/" + kBenchMarkerFile))) {
    return Fail("--no-setup needs a directory set up earlier by this command (with " +
                o.data_dir + "/ledger and " + o.data_dir + "/" + kBenchMarkerFile + ")");
  }
  if (!o.no_setup) {
    if (Status dir = PrepareBenchDir(o.data_dir, /*wipe=*/true); !dir.ok()) {
      return Fail(dir.message());
    }
  }

  BenchStack s;
  auto t_open = SteadyClock::now();
  if (Status st = s.Open(o.data_dir); !st.ok()) return Fail(st.ToString());
  const double open_seconds = SecondsSince(t_open);
  SetupResult setup;
  if (!o.no_setup) {
    if (Status st = Setup(s, o, month, &setup); !st.ok()) return Fail(st.ToString());
    if (Status st = SaveSetup(o.data_dir, setup); !st.ok()) return Fail(st.ToString());
  } else {
    auto loaded = LoadSetup(o.data_dir);
    if (!loaded.ok()) return Fail(loaded.status().ToString());
    setup = *loaded;
  }
  // The call projections fold what was recorded, as a running server's
  // tailing thread does while the calls arrive.
  auto t_fold = SteadyClock::now();
  if (Status st = s.calls->CatchUp(); !st.ok()) return Fail(st.ToString());
  const double fold_seconds = SecondsSince(t_fold);
  const uint64_t events_before = s.ledger->head().sequence;
  if (o.setup_only) {
    std::printf("{\"benchmark\":\"invoice_run_setup\",\"month\":\"%s\",\"workspaces\":%llu,"
                "\"keys\":%llu,\"calls\":%llu,\"recorded_call_events\":%llu,"
                "\"bulk_call_events\":%llu,\"ledger_events\":%llu,\"setup_entities_seconds\":%.1f,"
                "\"setup_record_seconds\":%.1f,\"setup_fold_seconds\":%.1f}\n",
                month.ToString().c_str(), static_cast<unsigned long long>(setup.workspaces),
                static_cast<unsigned long long>(setup.keys),
                static_cast<unsigned long long>(setup.units),
                static_cast<unsigned long long>(setup.recorded_call_events),
                static_cast<unsigned long long>(setup.bulk_call_events),
                static_cast<unsigned long long>(events_before), setup.entities_seconds,
                setup.record_seconds, fold_seconds);
    return 0;
  }

  s.clock.SetUs(SystemClock().NowUs());  // the run happens now, after the month
  RunResult first = TimedRun(*s.service, month);
  if (first.response.status != 200) {
    return Fail("run: " + std::to_string(first.response.status) + " " + first.response.body);
  }
  const uint64_t events_after_first = s.ledger->head().sequence;
  RunResult again = TimedRun(*s.service, month);
  if (again.response.status != 200) {
    return Fail("re-run: " + std::to_string(again.response.status) + " " + again.response.body);
  }
  const uint64_t events_after_again = s.ledger->head().sequence;

  // What the run billed, from its answer.
  Json a = Json::parse(first.response.body);
  Json b = Json::parse(again.response.body);
  uint64_t invoices = 0, keys_billed = 0, units_billed = 0;
  int64_t total_minor = 0;
  Json all = a["issued"];
  for (const auto& inv : a["already_issued"]) all.push_back(inv);
  for (const auto& inv : all) {
    invoices++;
    total_minor += inv["total_minor"].get<int64_t>();
    for (const auto& k : inv["key_usage"]) {
      keys_billed++;
      units_billed += k["quantity"].get<uint64_t>();
    }
  }
  const bool rerun_identical = b["issued"].empty() && b["already_issued"] == all;
  std::printf(
      "{\"benchmark\":\"invoice_run\",\"month\":\"%s\",\"workspaces\":%llu,\"keys\":%llu,"
      "\"calls\":%llu,\"recorded_call_events\":%llu,\"bulk_call_events\":%llu,"
      "\"ledger_events\":%llu,\"invoices_issued\":%zu,\"invoices_total\":%llu,"
      "\"keys_billed\":%llu,\"units_billed\":%llu,\"total_minor\":%lld,"
      "\"run_seconds\":%.3f,\"run_thread_cpu_seconds\":%.3f,\"invoices_per_sec\":%.0f,"
      "\"response_bytes\":%zu,\"events_appended\":%llu,\"rerun_seconds\":%.3f,"
      "\"rerun_thread_cpu_seconds\":%.3f,\"rerun_events_appended\":%llu,"
      "\"rerun_identical\":%s,\"open_seconds\":%.1f,\"setup_entities_seconds\":%.1f,"
      "\"setup_record_seconds\":%.1f,\"setup_fold_seconds\":%.1f}\n",
      month.ToString().c_str(), static_cast<unsigned long long>(setup.workspaces),
      static_cast<unsigned long long>(setup.keys), static_cast<unsigned long long>(setup.units),
      static_cast<unsigned long long>(setup.recorded_call_events),
      static_cast<unsigned long long>(setup.bulk_call_events),
      static_cast<unsigned long long>(events_before), a["issued"].size(),
      static_cast<unsigned long long>(invoices), static_cast<unsigned long long>(keys_billed),
      static_cast<unsigned long long>(units_billed), static_cast<long long>(total_minor),
      first.seconds, first.thread_cpu_seconds,
      static_cast<double>(a["issued"].size()) / first.seconds, first.response.body.size(),
      static_cast<unsigned long long>(events_after_first - events_before), again.seconds,
      again.thread_cpu_seconds,
      static_cast<unsigned long long>(events_after_again - events_after_first),
      rerun_identical ? "true" : "false", open_seconds, setup.entities_seconds,
      setup.record_seconds, fold_seconds);
  return rerun_identical ? 0 : Fail("the re-run did not return the invoices of the run");
}

}  // namespace

// Registers `bench invoice-run` under `bench` (called from main.cc).
void AddBenchInvoiceCommand(CLI::App* bench, int* exit_code) {
  auto o = std::make_shared<BenchInvoiceOptions>();
  auto* cmd = bench->add_subcommand(
      "invoice-run",
      "Set up workspaces, keys and a month of calls through the event path, then time the "
      "month's invoice run (POST /v1/invoice-runs in process) and its idempotent re-run");
  cmd->footer(
      "Without --no-setup, DIR is wiped first. --calls is the month's billable volume: the "
      "first --recorded-calls are recorded as individual 1-unit calls, the rest as one call "
      "per key carrying its remaining units (same usage, fewer events). Prints one JSON line.");
  cmd->add_option("--workspaces", o->workspaces, "Workspaces, each with the price plan")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000}))
      ->capture_default_str();
  cmd->add_option("--keys-per-workspace", o->keys_per_workspace, "API keys per workspace")
      ->check(CLI::Range(uint64_t{1}, uint64_t{4096}))
      ->capture_default_str();
  cmd->add_option("--calls", o->calls, "Billable calls (units) in the month")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000'000}))
      ->capture_default_str();
  cmd->add_option("--recorded-calls", o->recorded_calls,
                  "Of them, recorded as individual 1-unit calls (at most --calls)")
      ->capture_default_str();
  cmd->add_option("--month", o->month, "Billing month YYYY-MM (default: the last one due)")
      ->check(BillingMonthValidator());
  cmd->add_option("--data", o->data_dir, "Scratch data directory")->required();
  auto* setup_only = cmd->add_flag("--setup-only", o->setup_only,
                                   "Stop after the setup (and the fold); keep DIR for later runs");
  cmd->add_flag("--no-setup", o->no_setup,
                "Time the run on a DIR set up earlier with --setup-only (a copy of it, to run "
                "again)")
      ->excludes(setup_only);
  cmd->callback([o, exit_code] { *exit_code = RunBenchInvoice(*o); });
}

}  // namespace keyledger::tools
