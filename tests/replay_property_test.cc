// rapidcheck: after a long random workload through the Service (lifecycle
// changes, calls, alarms, invoice runs, restarts), every projection rebuilt
// from the log alone equals the live one: key state and call projections
// (logs, metrics, usage) by digest, every issued invoice byte for byte; and
// the key as of any sequence equals what a GET showed at that moment.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <map>

#include "api/invoice_compute.h"
#include "billing/calendar.h"
#include "billing/invoicing.h"
#include "projections/key_history.h"
#include "projections/key_state_store.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

constexpr int64_t kHourUs = 3'600'000'000;

int64_t At(const std::string& rfc3339) { return ParseRfc3339(rfc3339, "t").value(); }

// The random workload: one operation per step, chosen by `op`, with `arg`
// as its free parameter.
class Workload {
 public:
  explicit Workload(ServiceHarness& h) : h_(h) {
    // After the harness's start (2026-05-28): the ledger never stamps an
    // event earlier than one before it, so an earlier clock would stamp every
    // logging switch after the calls that follow it, and none would be logged.
    h_.clock().SetUs(At("2026-06-03T00:00:00Z"));
    auto plan = h_.Call("POST", "/v1/price-plans",
                        R"({"id":"std","currency":"USD","mode":"graduated",
                            "tiers":[{"up_to":50,"unit_price_micros":2500000},
                                     {"up_to":null,"unit_price_micros":1000000}],
                            "monthly_fee_minor":900})");
    RC_ASSERT(plan.status == 201);
  }

  void Step(int op, int arg) {
    switch (op) {
      case 0: CreateWorkspace(arg); break;
      case 1: CreateKey(arg); break;
      case 2: ChangeKey(arg); break;
      case 3: RecordCalls(arg); break;
      case 4: RecordCalls(arg + 1); break;  // calls dominate, as in production
      case 5: AlarmStep(arg); break;
      case 6: h_.clock().AdvanceUs((1 + arg % 48) * kHourUs); break;
      case 7: InvoiceRun(); break;
      case 8: Restart(); break;
      default: break;
    }
    ObserveKeys();
  }

  // What GET showed for each key right after each sequence.
  std::map<uint64_t, std::map<std::string, json>> observed;
  std::vector<std::string> keys;

 private:
  void CreateWorkspace(int arg) {
    static const char* kZones[] = {"UTC", "Asia/Seoul", "America/New_York"};
    auto r = h_.Call("POST", "/v1/workspaces",
                     json{{"name", "w" + std::to_string(workspaces_.size())},
                          {"billing_timezone", kZones[arg % 3]}}.dump());
    RC_ASSERT(r.status == 201);
    std::string ws = r.body["id"];
    if (arg % 4 != 0) {
      RC_ASSERT(h_.Call("PATCH", "/v1/workspaces/" + ws, R"({"price_plan":"std"})").status == 200);
    }
    workspaces_.push_back(ws);
    groups_[ws] = h_.CreateGroup(ws);
  }
  void CreateKey(int arg) {
    if (workspaces_.empty()) return CreateWorkspace(arg);
    const std::string& ws = workspaces_[arg % workspaces_.size()];
    auto key = h_.CreateKey(ws, groups_[ws], "k" + std::to_string(keys.size()));
    keys.push_back(key.first);
    key_ws_[key.first] = ws;
  }
  void ChangeKey(int arg) {
    if (keys.empty()) return CreateKey(arg);
    const std::string& key = keys[arg % keys.size()];
    const std::string base = "/v1/workspaces/" + key_ws_[key] + "/keys/" + key;
    switch (arg % 4) {
      case 0: h_.Call("PATCH", base, json{{"name", "renamed" + std::to_string(arg)}}.dump()); break;
      case 1: h_.Call("PATCH", base, json{{"logging", arg % 8 < 4}}.dump()); break;
      case 2: h_.Call("POST", base + "/rotate", R"({"grace_seconds":60})"); break;
      case 3: h_.Call("PATCH", base, json{{"description", "d" + std::to_string(arg)}}.dump()); break;
    }
  }
  void RecordCalls(int arg) {
    if (keys.empty()) return CreateKey(arg);
    json calls = json::array();
    for (int i = 0; i < 1 + arg % 7; i++) {
      const std::string& key = keys[(arg + i) % keys.size()];
      // Mostly now, sometimes days late (late usage of an invoiced month).
      const int64_t age_us = (arg % 5 == 0 ? (arg % 9) * 24 : 0) * kHourUs + i * 1'000'000;
      calls.push_back({{"request_id", "r" + std::to_string(next_request_++)},
                       {"key_id", key},
                       {"occurred_at", FormatRfc3339(h_.clock().NowUs() - age_us)},
                       {"status", (arg + i) % 6 == 0 ? 500 : 200},
                       {"latency_ms", 1 + (arg * 7 + i) % 900},
                       {"request", {{"headers", {{"authorization", "Bearer klk_secret"}}}}}});
    }
    auto r = h_.Call("POST", "/v1/calls", json{{"calls", calls}}.dump());
    // A call for a key deleted meanwhile is refused; nothing else may be.
    RC_ASSERT(r.status == 200);
  }
  void AlarmStep(int arg) {
    if (keys.empty()) return CreateKey(arg);
    const std::string& key = keys[arg % keys.size()];
    const std::string base = "/v1/workspaces/" + key_ws_[key] + "/keys/" + key + "/alarms";
    auto list = h_.Call("GET", base).body["alarms"];
    if (list.empty() || arg % 3 != 0) {
      h_.Call("POST", base,
              json{{"name", "a"}, {"metric", arg % 2 ? "calls" : "error_rate"}, {"comparator", ">"},
                   {"threshold", arg % 2 ? 2 : 0.1}, {"period_seconds", 3600},
                   {"evaluation_periods", 2}, {"datapoints_to_alarm", 1},
                   {"channels", {{{"type", "email"}, {"to", "ops@example.com"}}}}}
                  .dump());
    } else {
      h_.Call("DELETE", base + "/" + list[0]["id"].get<std::string>());
    }
    RC_ASSERT(h_.calls().CatchUp().ok());
    RC_ASSERT(h_.service().EvaluateAlarms().ok());
  }
  void InvoiceRun() {
    auto month = MonthOf(h_.clock().NowUs() - 40 * 24 * kHourUs, "UTC");
    RC_ASSERT(month.ok());
    RC_ASSERT(h_.calls().CatchUp().ok());
    auto r = h_.Call("POST", "/v1/invoice-runs", json{{"month", month->ToString()}}.dump());
    RC_ASSERT(r.status == 200 || r.status == 409);
  }
  void Restart() {
    h_.Open();
    RC_ASSERT(h_.calls().CatchUp().ok());
  }
  void ObserveKeys() {
    const uint64_t seq = h_.key_state().state().position();
    for (const auto& key : keys) {
      auto k = h_.key_state().state().FindKey(key);
      if (k) observed[seq][key] = json{{"name", k->name}, {"logging", k->logging},
                                       {"description", k->description}, {"version", k->version}};
    }
  }

  ServiceHarness& h_;
  std::vector<std::string> workspaces_;
  std::map<std::string, std::string> groups_, key_ws_;
  uint64_t next_request_ = 0;
};

RC_GTEST_PROP(ReplayProperty, RebuildFromTheLogEqualsEveryLiveProjection, ()) {
  ServiceHarness h;
  Workload w(h);
  // Each step appends durably (an fsync), so runs are kept to <= 60 steps and
  // ctest runs 30 of them (RC_PARAMS in tests/CMakeLists.txt).
  const auto steps = *rc::gen::resize(
      60, rc::gen::container<std::vector<std::pair<int, int>>>(
              rc::gen::pair(rc::gen::inRange(0, 9), rc::gen::inRange(0, 1000))));
  // Long enough to span several months of the clock.
  for (int i = 0; i < 3; i++) w.Step(6, 999);
  for (const auto& [op, arg] : steps) w.Step(op, arg);
  h.clock().AdvanceUs(40 * 24 * kHourUs);
  w.Step(7, 0);

  RC_ASSERT(h.calls().CatchUp().ok());
  const uint64_t head = h.ledger().head().sequence;
  RC_ASSERT(h.calls().position() == head);
  // The key state folds lifecycle events only: its position is the last one.
  const uint64_t lifecycle = h.key_state().state().position();
  auto key_state = RebuildKeyState(h.ledger(), lifecycle);
  RC_ASSERT(key_state.ok());
  RC_ASSERT((*key_state)->Digest() == h.key_state().state().Digest());
  // What `audit replay` reads of the live store: its records as stored.
  testing::ScratchDir secondary;
  auto stored = ReadKeyStateSnapshotDigest(h.key_state_path(), secondary.path());
  RC_ASSERT(stored.ok());
  RC_ASSERT(stored->position == lifecycle);
  RC_ASSERT(stored->digest == (*key_state)->Digest());

  CallProjectionsRebuildOptions keep_entries;
  keep_entries.keep_log_entries = true;
  auto calls = RebuildCallProjections(h.ledger(), head, keep_entries);
  RC_ASSERT(calls.ok());
  RC_ASSERT(calls->digest == h.calls().Digest());
  RC_ASSERT(*RebuildCallProjectionsDigest(h.ledger(), head) == calls->digest);
  testing::ScratchDir calls_secondary;
  auto snapshot = LoadCallProjectionsSnapshot(h.calls_path(), calls_secondary.path());
  RC_ASSERT(snapshot.ok());
  RC_ASSERT(snapshot->digest == calls->digest);
  RC_ASSERT(CheckLogEntries(snapshot->log_entries, calls->log_entries,
                            snapshot->log_swept_before_us)
                .ok());
  RC_CLASSIFY(!calls->log_entries.empty(), "with log entries");

  size_t invoices = 0;
  for (const auto& ws : h.key_state().state().ListWorkspaces()) {
    for (const InvoiceRef& ref : h.key_state().state().ListInvoices(ws.id)) {
      auto stored = ReadInvoice(h.ledger(), ref);
      RC_ASSERT(stored.ok());
      auto again = ReproduceInvoice(h.ledger(), ref);
      RC_ASSERT(again.ok());
      RC_ASSERT(InvoiceCanonicalBytes(*again) == InvoiceCanonicalBytes(*stored));
      invoices++;
    }
  }
  RC_CLASSIFY(invoices > 0, "with invoices");
  RC_CLASSIFY(h.calls().Digest() != EmptyCallProjectionsDigest(), "with calls");

  // Point in time: the key as of each observed sequence is what GET showed.
  for (const auto& [seq, seen] : w.observed) {
    for (const auto& [key, shown] : seen) {
      auto then = KeyAsOf(h.ledger(), key, LogPoint::AtSequence(seq));
      RC_ASSERT(then.ok());
      RC_ASSERT(then->key.has_value());
      const KeyView& k = *then->key;
      RC_ASSERT((json{{"name", k.name}, {"logging", k.logging}, {"description", k.description},
                      {"version", k.version}}) == shown);
    }
  }
}

}  // namespace
}  // namespace keyledger
