// Handler-level tests of billing: price plans, usage, invoice runs, late
// usage adjustments, exports.
#include <gtest/gtest.h>

#include <algorithm>

#include "billing/calendar.h"
#include "api/invoice_compute.h"
#include "billing/invoicing.h"
#include "projections/call_projections.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

int64_t At(const std::string& rfc3339) { return ParseRfc3339(rfc3339, "t").value(); }

class BillingApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    h.clock().SetUs(At("2026-10-10T00:00:00Z"));
    auto plan = h.Call("POST", "/v1/price-plans", R"({"id":"std","currency":"USD","mode":"graduated",
        "tiers":[{"up_to":10,"unit_price_micros":2000000},{"up_to":null,"unit_price_micros":1000000}],
        "monthly_fee_minor":500})");
    ASSERT_EQ(plan.status, 201) << plan.raw;
    EXPECT_EQ(plan.body["version"], 1);
    ws_ = h.CreateWorkspace("Acme");
    ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"price_plan":"std"})").status, 200);
    group_ = h.CreateGroup(ws_);
    key_ = h.CreateKey(ws_, group_).first;
  }

  void Record(const std::string& prefix, int n, const std::string& occurred_at,
              const std::string& key = "") {
    json calls = {{"calls", json::array()}};
    for (int i = 0; i < n; i++) {
      calls["calls"].push_back({{"request_id", prefix + std::to_string(i)},
                                {"key_id", key.empty() ? key_ : key},
                                {"occurred_at", occurred_at}, {"status", 200}});
    }
    auto r = h.Call("POST", "/v1/calls", calls.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
  }

  ServiceHarness h;
  std::string ws_, group_, key_;
};

TEST_F(BillingApiTest, PlanValidationNamesTheField) {
  auto bad_currency = h.Call("POST", "/v1/price-plans",
                             R"({"id":"x","currency":"XYZ","mode":"volume","tiers":[{"up_to":null,"unit_price_micros":1}]})");
  EXPECT_EQ(bad_currency.status, 400);
  EXPECT_EQ(bad_currency.body["error"]["field"], "currency");
  auto bad_tiers = h.Call("POST", "/v1/price-plans",
                          R"({"id":"x","currency":"USD","mode":"volume","tiers":[{"up_to":5,"unit_price_micros":1}]})");
  EXPECT_EQ(bad_tiers.status, 400) << bad_tiers.raw;
  EXPECT_TRUE(bad_tiers.body["error"]["field"].get<std::string>().starts_with("tiers")) << bad_tiers.raw;
  auto bad_mode = h.Call("POST", "/v1/price-plans",
                         R"({"id":"x","currency":"USD","mode":"flat","tiers":[]})");
  EXPECT_EQ(bad_mode.body["error"]["field"], "mode");
  std::string t = h.Call("POST", "/v1/workspaces/" + ws_ + "/tokens").body["token"];
  EXPECT_EQ(h.Call("GET", "/v1/price-plans/std", "", t).status, 403);
  EXPECT_EQ(h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})", t).status, 403);
  EXPECT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"price_plan":"nope"})").status, 404);
  // A new version does not change the first.
  auto v2 = h.Call("POST", "/v1/price-plans", R"({"id":"std","currency":"USD","mode":"volume",
        "tiers":[{"up_to":null,"unit_price_micros":500000}]})");
  EXPECT_EQ(v2.body["version"], 2);
  auto got = h.Call("GET", "/v1/price-plans/std");
  EXPECT_EQ(got.body["version"], 2);
  EXPECT_EQ(got.body["versions"].size(), 2u);
}

TEST_F(BillingApiTest, UsageAndTheMonthlyInvoice) {
  Record("oct-", 15, "2026-10-09T12:00:00Z");
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto usage = h.Call("GET", "/v1/workspaces/" + ws_ + "/usage?month=2026-10");
  ASSERT_EQ(usage.status, 200) << usage.raw;
  EXPECT_EQ(usage.body["total_quantity"], 15);
  EXPECT_EQ(usage.body["amount_minor"], 10 * 2 + 5 * 1);  // graduated: 10 at 2¢, 5 at 1¢
  EXPECT_EQ(usage.body["amount"], "0.25");

  // Not yet: October has not ended plus 24 h of grace.
  auto early = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  EXPECT_EQ(early.status, 409) << early.raw;
  EXPECT_EQ(early.body["error"]["code"], "failed_precondition");
  h.clock().SetUs(At("2026-11-01T12:00:00Z"));
  EXPECT_EQ(h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})").status, 409);

  h.clock().SetUs(At("2026-11-02T01:00:00Z"));
  auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(run.status, 200) << run.raw;
  ASSERT_EQ(run.body["issued"].size(), 1u);
  const json& invoice = run.body["issued"][0];
  EXPECT_EQ(invoice["invoice_number"], 1);
  EXPECT_EQ(invoice["total_minor"], 25 + 500);
  EXPECT_EQ(invoice["currency"], "USD");

  // Running the month again returns the same invoice and appends nothing.
  uint64_t head = h.ledger().head().sequence;
  auto again = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(again.status, 200);
  EXPECT_EQ(again.body["issued"].size(), 0u);
  ASSERT_EQ(again.body["already_issued"].size(), 1u);
  EXPECT_EQ(again.body["already_issued"][0].dump(), invoice.dump());
  EXPECT_EQ(h.ledger().head().sequence, head);

  auto got = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/2026-10");
  EXPECT_EQ(got.body.dump(), invoice.dump());
  auto csv = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/2026-10?format=csv");
  EXPECT_EQ(csv.status, 200);
  EXPECT_EQ(csv.Header("content-type"), "text/csv; charset=utf-8");
  EXPECT_NE(csv.raw.find("monthly_fee"), std::string::npos);
  auto list = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices");
  EXPECT_EQ(list.body["invoices"].size(), 1u);
  // A month without an invoice is not found; a malformed one is refused.
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/2026-09").status, 404);
  // A bad format is the caller's mistake, whether or not the month has an invoice.
  for (const char* month : {"2026-09", "2026-10"}) {
    auto xml = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/" + month + "?format=xml");
    EXPECT_EQ(xml.status, 400) << month << ": " << xml.raw;
    EXPECT_EQ(xml.body["error"]["field"], "format") << xml.raw;
  }
  auto malformed = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/2026-1");
  EXPECT_EQ(malformed.status, 400) << malformed.raw;
  EXPECT_EQ(malformed.body["error"]["field"], "month");
  auto tz = h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"billing_timezone":"Asia/Seoul"})");
  EXPECT_EQ(tz.status, 409) << tz.raw;
  EXPECT_EQ(tz.body["error"]["field"], "billing_timezone");

  // The stored invoice carries a digest anyone can recompute.
  auto events = h.ledger().ReadStream("inv/" + ws_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_TRUE(VerifyInvoiceDigest(std::get<InvoiceIssued>(events->front().body)).ok());
}

TEST_F(BillingApiTest, LateCallsBecomeAdjustmentsOnTheNextInvoice) {
  h.clock().SetUs(At("2026-10-25T00:00:00Z"));
  Record("oct-", 8, "2026-10-20T00:00:00Z");
  h.clock().SetUs(At("2026-11-02T01:00:00Z"));
  auto october = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(october.status, 200) << october.raw;
  EXPECT_EQ(october.body["issued"][0]["total_minor"], 8 * 2 + 500);

  // Five more October calls arrive late, plus November's own.
  h.clock().SetUs(At("2026-11-04T00:00:00Z"));
  Record("late-", 5, "2026-10-31T23:00:00Z");
  Record("nov-", 3, "2026-11-03T00:00:00Z");
  auto unchanged = h.Call("GET", "/v1/workspaces/" + ws_ + "/invoices/2026-10");
  EXPECT_EQ(unchanged.body["total_minor"], 8 * 2 + 500);  // never changes

  h.clock().SetUs(At("2026-12-02T01:00:00Z"));
  auto november = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-11"})");
  ASSERT_EQ(november.status, 200) << november.raw;
  const json& inv = november.body["issued"][0];
  EXPECT_EQ(inv["invoice_number"], 2);
  // October re-priced: 13 units = 10×2¢ + 3×1¢ = 23¢, minus 16¢ already billed = 7¢.
  bool found_adjustment = false;
  for (const auto& line : inv["lines"]) {
    if (line["kind"] == "adjustment") {
      found_adjustment = true;
      EXPECT_EQ(line["month"], "2026-10");
      EXPECT_EQ(line["quantity"], 5);
      EXPECT_EQ(line["amount_minor"], 7);
    }
  }
  EXPECT_TRUE(found_adjustment) << inv.dump();
  EXPECT_EQ(inv["total_minor"], 3 * 2 + 500 + 7);

  // Rebuilding from the log alone reproduces every issued invoice byte for
  // byte, even though more calls arrived after each was issued.
  Record("after-", 4, "2026-11-30T00:00:00Z");
  const auto refs = h.key_state().state().ListInvoices(ws_);
  ASSERT_EQ(refs.size(), 2u);
  for (const InvoiceRef& ref : refs) {
    auto stored = ReadInvoice(h.ledger(), ref);
    ASSERT_TRUE(stored.ok());
    auto again = ReproduceInvoice(h.ledger(), ref);
    ASSERT_TRUE(again.ok()) << again.ToStatus().ToString();
    EXPECT_EQ(InvoiceCanonicalBytes(*again), InvoiceCanonicalBytes(*stored)) << ref.month;
    EXPECT_EQ(again->digest, stored->digest);
  }
}

TEST_F(BillingApiTest, ARunIsReproducedTogetherAsEachInvoiceAlone) {
  // Three workspaces, one of them in another time zone, invoiced by one run.
  std::vector<std::string> keys = {key_};
  for (const char* zone : {"Asia/Seoul", "America/New_York"}) {
    auto created = h.Call("POST", "/v1/workspaces",
                          json{{"name", zone}, {"billing_timezone", zone}}.dump());
    ASSERT_EQ(created.status, 201) << created.raw;
    const std::string ws = created.body["id"];
    ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"price_plan":"std"})").status, 200);
    keys.push_back(h.CreateKey(ws, h.CreateGroup(ws)).first);
  }
  h.clock().SetUs(At("2026-10-21T00:00:00Z"));
  for (size_t k = 0; k < keys.size(); k++) {
    Record("run-" + std::to_string(k) + "-", static_cast<int>(3 + 5 * k), "2026-10-20T00:00:00Z",
           keys[k]);
  }
  h.clock().SetUs(At("2026-11-03T00:00:00Z"));
  auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(run.status, 200) << run.raw;
  ASSERT_EQ(run.body["issued"].size(), 3u) << run.raw;
  Record("late-", 2, "2026-10-30T00:00:00Z");  // recorded after the run: not in it

  std::vector<InvoiceRef> refs;
  for (const auto& w : h.key_state().state().ListWorkspaces()) {
    for (const InvoiceRef& ref : h.key_state().state().ListInvoices(w.id)) refs.push_back(ref);
  }
  std::sort(refs.begin(), refs.end(),
            [](const InvoiceRef& a, const InvoiceRef& b) { return a.sequence < b.sequence; });
  ASSERT_EQ(refs.size(), 3u);
  auto together = ReproduceInvoiceRun(h.ledger(), refs);
  ASSERT_TRUE(together.ok()) << together.ToStatus().ToString();
  ASSERT_EQ(together->size(), 3u);
  for (size_t i = 0; i < refs.size(); i++) {
    auto stored = ReadInvoice(h.ledger(), refs[i]);
    ASSERT_TRUE(stored.ok());
    auto alone = ReproduceInvoice(h.ledger(), refs[i]);
    ASSERT_TRUE(alone.ok()) << alone.ToStatus().ToString();
    EXPECT_EQ(InvoiceCanonicalBytes((*together)[i]), InvoiceCanonicalBytes(*stored));
    EXPECT_EQ(InvoiceCanonicalBytes(*alone), InvoiceCanonicalBytes(*stored));
  }
}

TEST_F(BillingApiTest, MonthFollowsTheWorkspaceTimeZoneAndCurrency) {
  ASSERT_EQ(h.Call("POST", "/v1/price-plans", R"({"id":"krw","currency":"KRW","mode":"volume",
        "tiers":[{"up_to":null,"unit_price_micros":1500000000}]})").status, 201);
  auto seoul = h.Call("POST", "/v1/workspaces", R"({"name":"Seoul","billing_timezone":"Asia/Seoul"})");
  std::string ws = seoul.body["id"];
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"price_plan":"krw"})").status, 200);
  std::string key = h.CreateKey(ws, h.CreateGroup(ws)).first;
  h.clock().SetUs(At("2026-11-01T00:00:00Z"));
  // 15:30 UTC on Oct 31 is already November 1st in Seoul.
  Record("s-oct-", 2, "2026-10-31T14:30:00Z", key);
  Record("s-nov-", 3, "2026-10-31T15:30:00Z", key);
  ASSERT_TRUE(h.calls().CatchUp().ok());
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/usage?month=2026-10").body["total_quantity"], 2);
  auto nov = h.Call("GET", "/v1/workspaces/" + ws + "/usage?month=2026-11");
  EXPECT_EQ(nov.body["total_quantity"], 3);
  EXPECT_EQ(nov.body["amount_minor"], 4500);  // 3 × ₩1,500
  EXPECT_EQ(nov.body["amount"], "4500");
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/usage?month=2026-13").status, 400);
}

// A zone change before the first invoice moves no call already recorded:
// each call's month follows the zone in force at its place in the log, so
// the live usage, a rebuild from the log and the invoice's reproduction all
// agree, and no call is billed in two months.
TEST_F(BillingApiTest, AZoneChangeMovesNoCallAlreadyRecorded) {
  h.clock().SetUs(At("2026-11-01T00:00:00Z"));
  Record("utc-", 1, "2026-10-31T20:00:00Z");  // October in UTC; November 1st in Seoul
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto tz = h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"billing_timezone":"Asia/Seoul"})");
  ASSERT_EQ(tz.status, 200) << tz.raw;
  Record("seoul-", 4, "2026-10-31T20:30:00Z");  // November in Seoul, the zone now
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto usage = [&](const char* month) {
    auto r = h.Call("GET", "/v1/workspaces/" + ws_ + "/usage?month=" + month);
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["total_quantity"].get<int>();
  };
  EXPECT_EQ(usage("2026-10"), 1);
  EXPECT_EQ(usage("2026-11"), 4);
  // A fresh fold of the log agrees with the live projection, usage included.
  auto rebuilt = RebuildCallProjectionsDigest(h.ledger(), h.calls().position());
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.ToStatus().ToString();
  EXPECT_EQ(*rebuilt, h.calls().Digest());
  auto folded = FoldUsage(h.ledger(), h.calls().position());
  ASSERT_TRUE(folded.ok());
  EXPECT_EQ((*folded)->UsageFor(ws_, *ParseBillingMonth("2026-10", "m")).total, 1u);
  EXPECT_EQ((*folded)->UsageFor(ws_, *ParseBillingMonth("2026-11", "m")).total, 4u);

  h.clock().SetUs(At("2026-11-03T00:00:00Z"));  // October has ended in Seoul, plus 24 h
  auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(run.status, 200) << run.raw;
  ASSERT_EQ(run.body["issued"].size(), 1u) << run.raw;
  EXPECT_EQ(run.body["issued"][0]["total_minor"], 1 * 2 + 500);
  const std::vector<InvoiceRef> refs = h.key_state().state().ListInvoices(ws_);
  ASSERT_EQ(refs.size(), 1u);
  auto stored = ReadInvoice(h.ledger(), refs[0]);
  ASSERT_TRUE(stored.ok());
  auto reproduced = ReproduceInvoice(h.ledger(), refs[0]);
  ASSERT_TRUE(reproduced.ok()) << reproduced.ToStatus().ToString();
  EXPECT_EQ(InvoiceCanonicalBytes(*reproduced), InvoiceCanonicalBytes(*stored));
}

// A workspace whose invoice is over a billing limit is listed in `failed`
// with the error it would have answered; every other workspace is invoiced.
TEST_F(BillingApiTest, AnInvoiceOverALimitFailsAloneAndTheRunGoesOn) {
  ASSERT_EQ(h.Call("POST", "/v1/price-plans", R"({"id":"pricey","currency":"USD","mode":"volume",
        "tiers":[{"up_to":null,"unit_price_micros":1000000000000000}]})").status, 201);
  const std::string big = h.CreateWorkspace("Big");
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + big, R"({"price_plan":"pricey"})").status, 200);
  const std::string big_key = h.CreateKey(big, h.CreateGroup(big)).first;
  json calls = {{"calls", {{{"request_id", "huge"}, {"key_id", big_key}, {"units", 1'000'001},
                            {"occurred_at", "2026-10-09T12:00:00Z"}, {"status", 200}}}}};
  ASSERT_EQ(h.Call("POST", "/v1/calls", calls.dump()).status, 200);
  Record("oct-", 3, "2026-10-09T12:00:00Z");
  h.clock().SetUs(At("2026-11-03T00:00:00Z"));
  for (int round = 0; round < 2; round++) {  // a re-run fails the same way, appending nothing
    const uint64_t head = h.ledger().head().sequence;
    auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
    ASSERT_EQ(run.status, 200) << run.raw;
    ASSERT_EQ(run.body["failed"].size(), 1u) << run.raw;
    EXPECT_EQ(run.body["failed"][0]["workspace_id"], big);
    EXPECT_EQ(run.body["failed"][0]["error"]["code"], "failed_precondition") << run.raw;
    EXPECT_FALSE(run.body["failed"][0]["error"]["message"].get<std::string>().empty());
    const json& done = round == 0 ? run.body["issued"] : run.body["already_issued"];
    ASSERT_EQ(done.size(), 1u) << run.raw;
    EXPECT_EQ(done[0]["workspace_id"], ws_);
    EXPECT_EQ(h.ledger().head().sequence, head + (round == 0 ? 1 : 0));
  }
  EXPECT_TRUE(h.key_state().state().ListInvoices(big).empty());
}

// An invoice its workspace's own data forbids (here: October's late units
// are priced in USD, November's plan bills in EUR) fails that workspace
// alone; the other workspaces are invoiced.
TEST_F(BillingApiTest, AnInvoiceItsDataForbidsFailsAloneAndTheRunGoesOn) {
  const std::string other = h.CreateWorkspace("Other");
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + other, R"({"price_plan":"std"})").status, 200);
  const std::string other_key = h.CreateKey(other, h.CreateGroup(other)).first;
  Record("oct-", 3, "2026-10-09T12:00:00Z");
  h.clock().SetUs(At("2026-11-02T01:00:00Z"));
  ASSERT_EQ(h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})").status, 200);
  h.clock().SetUs(At("2026-11-05T00:00:00Z"));
  Record("late-oct-", 1, "2026-10-30T12:00:00Z");
  Record("nov-", 2, "2026-11-04T12:00:00Z");
  Record("other-nov-", 2, "2026-11-04T12:00:00Z", other_key);
  ASSERT_EQ(h.Call("POST", "/v1/price-plans", R"({"id":"std","currency":"EUR","mode":"volume",
        "tiers":[{"up_to":null,"unit_price_micros":1000000}]})").status, 201);
  h.clock().SetUs(At("2026-12-02T01:00:00Z"));
  const uint64_t head = h.ledger().head().sequence;
  auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-11"})");
  ASSERT_EQ(run.status, 200) << run.raw;
  ASSERT_EQ(run.body["failed"].size(), 1u) << run.raw;
  EXPECT_EQ(run.body["failed"][0]["workspace_id"], ws_);
  EXPECT_EQ(run.body["failed"][0]["error"]["code"], "invalid_argument") << run.raw;
  EXPECT_EQ(run.body["failed"][0]["error"]["field"], "adjustments[0].plan.currency") << run.raw;
  ASSERT_EQ(run.body["issued"].size(), 1u) << run.raw;
  EXPECT_EQ(run.body["issued"][0]["workspace_id"], other);
  EXPECT_EQ(run.body["issued"][0]["currency"], "EUR");
  EXPECT_EQ(h.ledger().head().sequence, head + 1);
}

// A run with more invoices than one append holds issues them in several,
// numbered without gaps, each reproducible from the log.
TEST(BillingRunTest, ARunLargerThanOneAppendIssuesEveryInvoice) {
  ServiceOptions options;
  options.invoice_run_append_events_max = 2;
  ServiceHarness h(42, options);
  h.clock().SetUs(At("2026-10-10T00:00:00Z"));
  ASSERT_EQ(h.Call("POST", "/v1/price-plans", R"({"id":"std","currency":"USD","mode":"volume",
        "tiers":[{"up_to":null,"unit_price_micros":1000000}]})").status, 201);
  for (int w = 0; w < 5; w++) {
    const std::string ws = h.CreateWorkspace("w" + std::to_string(w));
    ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"price_plan":"std"})").status, 200);
    const std::string key = h.CreateKey(ws, h.CreateGroup(ws)).first;
    json calls = {{"calls", {{{"request_id", "c" + std::to_string(w)}, {"key_id", key},
                              {"occurred_at", "2026-10-09T12:00:00Z"}, {"status", 200}}}}};
    ASSERT_EQ(h.Call("POST", "/v1/calls", calls.dump()).status, 200);
  }
  auto command_appends = [&] {
    const std::string metrics = h.Call("GET", "/metrics", "", "").raw;
    const std::string name = "keyledger_append_latency_seconds_count{kind=\"command\"} ";
    const size_t at = metrics.find(name);
    EXPECT_NE(at, std::string::npos);
    return at == std::string::npos ? 0 : std::stoull(metrics.substr(at + name.size()));
  };
  const uint64_t appends_before = command_appends();
  h.clock().SetUs(At("2026-11-03T00:00:00Z"));
  auto run = h.Call("POST", "/v1/invoice-runs", R"({"month":"2026-10"})");
  ASSERT_EQ(run.status, 200) << run.raw;
  ASSERT_EQ(run.body["issued"].size(), 5u) << run.raw;
  EXPECT_EQ(command_appends() - appends_before, 3u);  // 2 + 2 + 1
  std::vector<InvoiceRef> refs;
  for (const auto& w : h.key_state().state().ListWorkspaces()) {
    for (const InvoiceRef& ref : h.key_state().state().ListInvoices(w.id)) refs.push_back(ref);
  }
  ASSERT_EQ(refs.size(), 5u);
  std::vector<uint64_t> numbers;
  for (const InvoiceRef& ref : refs) {
    auto stored = ReadInvoice(h.ledger(), ref);
    ASSERT_TRUE(stored.ok());
    numbers.push_back(stored->invoice_number);
    auto reproduced = ReproduceInvoice(h.ledger(), ref);
    ASSERT_TRUE(reproduced.ok()) << reproduced.ToStatus().ToString();
    EXPECT_EQ(InvoiceCanonicalBytes(*reproduced), InvoiceCanonicalBytes(*stored));
  }
  std::sort(numbers.begin(), numbers.end());
  EXPECT_EQ(numbers, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

}  // namespace
}  // namespace keyledger
