// Tests for billing/invoicing.h: invoices at tier edges, fee-only and zero
// invoices, currencies without minor units, late usage as adjustment lines,
// input errors, the digest's byte layout (pinned against an independent
// BLAKE2b), CSV and JSON; and rapidcheck properties against an independent
// pricing model, determinism, tamper detection and CSV round trips.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "billing/calendar.h"
#include "billing/invoicing.h"
#include "billing/pricing.h"
#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/ledger.h"

namespace keyledger {
namespace {

BillingMonth M(int year, unsigned month) { return BillingMonth{year, month}; }

PricePlanPublished Plan(PricingMode mode, std::vector<PriceTier> tiers, int64_t fee = 0,
                        std::string currency = "USD", uint8_t exponent = 2) {
  PricePlanPublished p;
  p.plan_id = "plan_1";
  p.version = 1;
  p.currency = std::move(currency);
  p.currency_exponent = exponent;
  p.metric = "units";
  p.mode = mode;
  p.tiers = std::move(tiers);
  p.monthly_fee_minor = fee;
  return p;
}

// 2 cents per unit for units 1-1000, 1.5 cents for 1001-10000, 1 cent above.
std::vector<PriceTier> ThreeTiers() {
  return {{1000, 2'000'000}, {10000, 1'500'000}, {std::nullopt, 1'000'000}};
}

InvoiceInput Input(const PricePlanPublished* plan, BillingMonth month,
                   std::vector<KeyUsage> keys = {}) {
  InvoiceInput in;
  in.workspace_id = "ws_1";
  in.month = month;
  in.invoice_number = 1;
  in.covers_sequence = 100;
  in.plan = plan;
  in.key_usage = std::move(keys);
  return in;
}

InvoiceIssued Build(const InvoiceInput& in) {
  Result<InvoiceIssued> r = BuildInvoice(in);
  if (!r.ok()) {
    ADD_FAILURE() << r.status().ToString();
    return InvoiceIssued{};
  }
  return *std::move(r);
}

// Returns the error's "code field", or "ok".
std::string ErrorOf(const InvoiceInput& in) {
  Result<InvoiceIssued> r = BuildInvoice(in);
  if (r.ok()) return "ok";
  return std::string(CodeName(r.status().code())) + " " + r.status().field();
}

using L = InvoiceLine;

// ---- Usage lines at tier edges ---------------------------------------------------

// The input limits exist so that any invoice they admit is one ledger event:
// the largest (most keys, longest ids, most tiers and adjustments, longest
// ids elsewhere) must encode within kEventBytesMax with the longest envelope.
TEST(BuildInvoiceTest, TheLargestInvoiceTheLimitsAdmitFitsInOneLedgerEvent) {
  std::vector<PriceTier> tiers;
  for (uint64_t i = 1; i < kPriceTiersMax; i++) {
    tiers.push_back({i * 1'000'000'000, static_cast<int64_t>(1'000 + i)});
  }
  tiers.push_back({std::nullopt, 1});
  PricePlanPublished plan = Plan(PricingMode::kGraduated, tiers, 99'999);
  plan.plan_id = std::string(kInvoiceIdBytesMax, 'p');
  InvoiceInput in = Input(&plan, M(2026, 11));
  in.workspace_id = std::string(kInvoiceIdBytesMax, 'w');
  const size_t id_bytes = kInvoiceKeyIdBytesTotalMax / kInvoiceKeyUsagesMax;
  for (size_t i = 0; i < kInvoiceKeyUsagesMax; i++) {
    std::string id = std::to_string(1'000'000 + i);
    id.resize(id_bytes, 'k');
    in.key_usage.push_back({id, 123'456'789'012});
  }
  for (size_t i = 0; i < kInvoiceAdjustmentsMax; i++) {
    BillingMonth month = M(2016 + static_cast<int>((i + 10) / 12), (i + 10) % 12 + 1);
    in.adjustments.push_back({month, &plan, 987'654'321'098, 123'456'789, 1'234'567'890});
  }
  ASSERT_EQ(in.adjustments.back().month, M(2026, 10));
  Result<InvoiceIssued> invoice = BuildInvoice(in);
  ASSERT_TRUE(invoice.ok()) << invoice.status().ToString();
  ASSERT_EQ(invoice->key_usage.size(), kInvoiceKeyUsagesMax);
  ASSERT_EQ(invoice->lines.size(), kPriceTiersMax + 1 + kInvoiceAdjustmentsMax);
  Event event;
  event.stream_id = std::string(kStreamIdBytesMax, 's');
  event.actor = std::string(kActorBytesMax, 'a');
  event.body = *invoice;
  const size_t bytes = EncodeEventBody(event).size();
  EXPECT_LE(bytes, kEventBytesMax);
  RecordProperty("encoded_bytes", std::to_string(bytes));
}

TEST(BuildInvoiceTest, GraduatedAtTierEdges) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 500);
  InvoiceIssued a = Build(Input(&plan, M(2026, 10), {{"k_a", 600}, {"k_b", 400}}));
  EXPECT_EQ(a.lines, (std::vector<L>{
                         {"tier", "units 1-1000 (tier 1)", 1000, 2'000'000, 2000, "2026-10"},
                         {"monthly_fee", "monthly fee, plan plan_1 v1", 1, 0, 500, "2026-10"}}));
  EXPECT_EQ(a.total_minor, 2500);
  // One unit over: 1.5 cents rounds half to even, to 2.
  InvoiceIssued b = Build(Input(&plan, M(2026, 10), {{"k_a", 1001}}));
  ASSERT_EQ(b.lines.size(), 3u);
  EXPECT_EQ(b.lines[1], (L{"tier", "units 1001-1001 (tier 2)", 1, 1'500'000, 2, "2026-10"}));
  EXPECT_EQ(b.total_minor, 2000 + 2 + 500);
  // Three over: 4.5 cents rounds half to even, to 4.
  InvoiceIssued c = Build(Input(&plan, M(2026, 10), {{"k_a", 1003}}));
  EXPECT_EQ(c.lines[1].amount_minor, 4);
  // Across all three tiers.
  InvoiceIssued d = Build(Input(&plan, M(2026, 10), {{"k_a", 10001}}));
  ASSERT_EQ(d.lines.size(), 4u);
  EXPECT_EQ(d.lines[1], (L{"tier", "units 1001-10000 (tier 2)", 9000, 1'500'000, 13500, "2026-10"}));
  EXPECT_EQ(d.lines[2], (L{"tier", "units 10001-10001 (tier 3)", 1, 1'000'000, 1, "2026-10"}));
  EXPECT_EQ(d.subtotal_minor, 2000 + 13500 + 1 + 500);
  EXPECT_EQ(d.total_minor, d.subtotal_minor);
}

TEST(BuildInvoiceTest, VolumeAtTierEdgesAndHeaderFields) {
  PricePlanPublished plan = Plan(PricingMode::kVolume, ThreeTiers());
  plan.plan_id = "vol";
  plan.version = 4;
  InvoiceInput in = Input(&plan, M(2026, 10), {{"k_a", 1000}});
  in.invoice_number = 17;
  in.covers_sequence = 123456;
  InvoiceIssued a = Build(in);
  EXPECT_EQ(a.workspace_id, "ws_1");
  EXPECT_EQ(a.month, "2026-10");
  EXPECT_EQ(a.invoice_number, 17u);
  EXPECT_EQ(a.currency, "USD");
  EXPECT_EQ(a.covers_sequence, 123456u);
  EXPECT_EQ(a.plan_id, "vol");
  EXPECT_EQ(a.plan_version, 4u);
  EXPECT_EQ(a.key_usage, (std::vector<KeyUsage>{{"k_a", 1000}}));
  EXPECT_EQ(a.lines, (std::vector<L>{{"tier", "units 1-1000 (volume tier 1)", 1000, 2'000'000,
                                      2000, "2026-10"}}));  // no fee line: the fee is 0
  // 1001 units all at 1.5 cents: 1501.5 rounds half to even, to 1502.
  InvoiceIssued b = Build(Input(&plan, M(2026, 10), {{"k_a", 1001}}));
  EXPECT_EQ(b.lines, (std::vector<L>{{"tier", "units 1-1001 (volume tier 2)", 1001, 1'500'000,
                                      1502, "2026-10"}}));
  EXPECT_EQ(b.total_minor, 1502);
}

TEST(BuildInvoiceTest, ZeroUsageIsAFeeOnlyInvoice) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 4900);
  InvoiceIssued inv = Build(Input(&plan, M(2026, 2)));
  EXPECT_EQ(inv.lines, (std::vector<L>{{"monthly_fee", "monthly fee, plan plan_1 v1", 1, 0,
                                        4900, "2026-02"}}));
  EXPECT_TRUE(inv.key_usage.empty());
  EXPECT_EQ(inv.total_minor, 4900);
}

TEST(BuildInvoiceTest, ZeroUsageAndZeroFeeIsAValidZeroInvoice) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 0);
  InvoiceIssued inv = Build(Input(&plan, M(2026, 2)));
  EXPECT_TRUE(inv.lines.empty());
  EXPECT_EQ(inv.subtotal_minor, 0);
  EXPECT_EQ(inv.total_minor, 0);
  EXPECT_TRUE(VerifyInvoiceDigest(inv).ok());
  EXPECT_EQ(InvoiceToCsv(inv, 2),
            "invoice_number,workspace_id,month,line_kind,line_month,description,quantity,"
            "unit_price_micros,amount_minor,amount,currency\r\n"
            "1,ws_1,2026-02,total,,,,,0,0.00,USD\r\n");
}

TEST(BuildInvoiceTest, FreeTierUnitsStillGetALine) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, {{100, 0}, {std::nullopt, 1'000'000}});
  InvoiceIssued inv = Build(Input(&plan, M(2026, 3), {{"k", 50}}));
  EXPECT_EQ(inv.lines, (std::vector<L>{{"tier", "units 1-50 (tier 1)", 50, 0, 0, "2026-03"}}));
  EXPECT_EQ(inv.total_minor, 0);
}

TEST(BuildInvoiceTest, KrwHasNoMinorDigits) {
  // 1.5 won per unit; the fee is 10,000 won.
  PricePlanPublished plan =
      Plan(PricingMode::kGraduated, {{std::nullopt, 1'500'000}}, 10000, "KRW", 0);
  InvoiceIssued inv = Build(Input(&plan, M(2026, 4), {{"k", 3}}));
  EXPECT_EQ(inv.currency, "KRW");
  ASSERT_EQ(inv.lines.size(), 2u);
  EXPECT_EQ(inv.lines[0].amount_minor, 4);  // 4.5 won rounds half to even
  EXPECT_EQ(inv.total_minor, 10004);
  std::string csv = InvoiceToCsv(inv, 0);
  EXPECT_NE(csv.find(",units 1-3 (tier 1),3,1500000,4,4,KRW\r\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",total,,,,,10004,10004,KRW\r\n"), std::string::npos) << csv;
  nlohmann::json j = InvoiceToJson(inv, 0);
  EXPECT_EQ(j["total"], "10004");
  EXPECT_EQ(j["total_minor"], 10004);
  EXPECT_EQ(j["lines"][1]["amount"], "10000");
  EXPECT_EQ(j["currency_exponent"], 0);
}

TEST(BuildInvoiceTest, UsageAmountLimitIsResourceExhausted) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, {{std::nullopt, kUnitPriceMicrosMax}});
  InvoiceInput in = Input(&plan, M(2026, 3), {{"k", 2'000'000}});  // 2 * 10^15 minor
  EXPECT_EQ(ErrorOf(in), "resource_exhausted key_usage");
}

// ---- Late usage ---------------------------------------------------------------------

TEST(AdjustmentTest, LateCallsAddALineToTheNextInvoice) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 500);
  InvoiceIssued october = Build(Input(&plan, M(2026, 10), {{"k", 900}}));
  EXPECT_EQ(october.total_minor, 1800 + 500);
  // 200 October units were recorded after October's invoice; November has 50.
  InvoiceInput in = Input(&plan, M(2026, 11), {{"k", 50}});
  in.invoice_number = 2;
  in.adjustments.push_back({M(2026, 10), &plan, 1100, 900, 1800});
  InvoiceIssued november = Build(in);
  ASSERT_EQ(november.lines.size(), 3u);
  EXPECT_EQ(november.lines[0], (L{"tier", "units 1-50 (tier 1)", 50, 2'000'000, 100, "2026-11"}));
  EXPECT_EQ(november.lines[1].kind, "monthly_fee");
  // 1100 units cost 20.00 + 1.50; 18.00 was billed.
  EXPECT_EQ(november.lines[2],
            (L{"adjustment",
               "late usage for 2026-10: +200 units; 1100 units re-priced under plan_1 v1: "
               "21.50, minus 18.00 already invoiced for 900 units",
               200, 0, 350, "2026-10"}));
  EXPECT_EQ(november.total_minor, 100 + 500 + 350);
  // October's usage over both invoices is the price of its 1100 units.
  EXPECT_EQ(october.lines[0].amount_minor + november.lines[2].amount_minor, 2150);
}

TEST(AdjustmentTest, RepricesTheTotalNotJustTheExtraUnits) {
  // 1.5 cents a unit. One unit billed 2 (1.5 rounds to 2); one more late unit:
  // 2 units cost exactly 3, so the adjustment is 1, not another 2.
  PricePlanPublished plan = Plan(PricingMode::kGraduated, {{std::nullopt, 1'500'000}});
  InvoiceIssued september = Build(Input(&plan, M(2026, 9), {{"k", 1}}));
  EXPECT_EQ(september.total_minor, 2);
  InvoiceInput in = Input(&plan, M(2026, 10));
  in.adjustments.push_back({M(2026, 9), &plan, 2, 1, september.lines[0].amount_minor});
  InvoiceIssued october = Build(in);
  ASSERT_EQ(october.lines.size(), 1u);
  EXPECT_EQ(october.lines[0].quantity, 1u);
  EXPECT_EQ(october.lines[0].amount_minor, 1);
  EXPECT_EQ(september.total_minor + october.total_minor, 3);
}

TEST(AdjustmentTest, UsesTheOriginalMonthsPlanVersion) {
  PricePlanPublished v1 = Plan(PricingMode::kGraduated, {{std::nullopt, 2'000'000}});
  PricePlanPublished v2 = v1;
  v2.version = 2;
  v2.tiers[0].unit_price_micros = 3'000'000;
  InvoiceInput in = Input(&v2, M(2026, 11), {{"k", 10}});
  in.adjustments.push_back({M(2026, 10), &v1, 15, 5, 10});
  InvoiceIssued inv = Build(in);
  ASSERT_EQ(inv.lines.size(), 2u);
  EXPECT_EQ(inv.lines[0].amount_minor, 30);  // November at v2
  EXPECT_EQ(inv.lines[1].amount_minor, 20);  // 15 units at v1 = 30, minus 10
  EXPECT_NE(inv.lines[1].description.find("under plan_1 v1"), std::string::npos);
  EXPECT_EQ(inv.plan_version, 2u);
}

TEST(AdjustmentTest, SeveralMonthsOldestFirstAfterTheFee) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, {{std::nullopt, 1'000'000}}, 100);
  InvoiceInput in = Input(&plan, M(2027, 1));
  in.adjustments.push_back({M(2026, 11), &plan, 5, 0, 0});
  in.adjustments.push_back({M(2026, 12), &plan, 9, 4, 4});
  InvoiceIssued inv = Build(in);
  ASSERT_EQ(inv.lines.size(), 3u);
  EXPECT_EQ(inv.lines[0].kind, "monthly_fee");
  EXPECT_EQ(inv.lines[1].month, "2026-11");
  EXPECT_EQ(inv.lines[1].amount_minor, 5);
  EXPECT_EQ(inv.lines[2].month, "2026-12");
  EXPECT_EQ(inv.lines[2].quantity, 5u);
  EXPECT_EQ(inv.lines[2].amount_minor, 5);
  EXPECT_EQ(inv.total_minor, 110);
}

TEST(AdjustmentTest, VolumePricingCanMakeACredit) {
  // 1000 units at 2 cents = 20.00; 1001 units at 1 cent = 10.01.
  PricePlanPublished plan =
      Plan(PricingMode::kVolume, {{1000, 2'000'000}, {std::nullopt, 1'000'000}});
  InvoiceInput in = Input(&plan, M(2026, 11));
  in.adjustments.push_back({M(2026, 10), &plan, 1001, 1000, 2000});
  InvoiceIssued inv = Build(in);
  ASSERT_EQ(inv.lines.size(), 1u);
  EXPECT_EQ(inv.lines[0].quantity, 1u);
  EXPECT_EQ(inv.lines[0].amount_minor, -999);
  EXPECT_EQ(inv.total_minor, -999);
  EXPECT_EQ(InvoiceToJson(inv, 2)["total"], "-9.99");
  EXPECT_TRUE(VerifyInvoiceDigest(inv).ok());
}

// ---- Input errors ---------------------------------------------------------------------

TEST(BuildInvoiceTest, NamesTheBadInput) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 100);
  PricePlanPublished bad_plan = Plan(PricingMode::kGraduated, {{100, 0}});
  PricePlanPublished eur = Plan(PricingMode::kGraduated, ThreeTiers(), 0, "EUR", 2);
  const BillingMonth nov = M(2026, 11);
  auto with = [&](std::function<void(InvoiceInput&)> edit) {
    InvoiceInput in = Input(&plan, nov, {{"k_a", 1}, {"k_b", 2}});
    edit(in);
    return ErrorOf(in);
  };
  auto adjusted = [&](Adjustment a) {
    return with([&](InvoiceInput& in) { in.adjustments = {a}; });
  };
  EXPECT_EQ(with([](InvoiceInput&) {}), "ok");
  EXPECT_EQ(with([](InvoiceInput& in) { in.workspace_id = ""; }), "invalid_argument workspace_id");
  EXPECT_EQ(with([](InvoiceInput& in) { in.workspace_id.assign(kInvoiceIdBytesMax + 1, 'w'); }),
            "invalid_argument workspace_id");
  EXPECT_EQ(with([](InvoiceInput& in) { in.workspace_id.assign(kInvoiceIdBytesMax, 'w'); }), "ok");
  EXPECT_EQ(with([](InvoiceInput& in) { in.month = M(2026, 13); }), "invalid_argument month");
  EXPECT_EQ(with([](InvoiceInput& in) { in.month = M(2026, 0); }), "invalid_argument month");
  EXPECT_EQ(with([](InvoiceInput& in) { in.month = M(0, 5); }), "invalid_argument month");
  EXPECT_EQ(with([](InvoiceInput& in) { in.invoice_number = 0; }),
            "invalid_argument invoice_number");
  EXPECT_EQ(with([](InvoiceInput& in) { in.plan = nullptr; }), "invalid_argument plan");
  EXPECT_EQ(with([&](InvoiceInput& in) { in.plan = &bad_plan; }),
            "invalid_argument plan.tiers[0].up_to");
  EXPECT_EQ(with([](InvoiceInput& in) { in.key_usage[1].key_id = "k_a"; }),
            "invalid_argument key_usage[1].key_id");
  EXPECT_EQ(with([](InvoiceInput& in) { std::swap(in.key_usage[0], in.key_usage[1]); }),
            "invalid_argument key_usage[1].key_id");
  EXPECT_EQ(with([](InvoiceInput& in) { in.key_usage[0].key_id = ""; }),
            "invalid_argument key_usage[0].key_id");
  EXPECT_EQ(with([](InvoiceInput& in) { in.key_usage[1].quantity = 0; }),
            "invalid_argument key_usage[1].quantity");
  EXPECT_EQ(with([](InvoiceInput& in) {
              in.key_usage = {{"a", UINT64_MAX}, {"b", 1}};
            }),
            "resource_exhausted key_usage");
  EXPECT_EQ(with([](InvoiceInput& in) {
              in.key_usage.clear();
              for (size_t i = 0; i <= kInvoiceKeyUsagesMax; i++) {
                in.key_usage.push_back({std::to_string(100000 + i), 1});
              }
            }),
            "resource_exhausted key_usage");
  EXPECT_EQ(with([](InvoiceInput& in) {  // fewer keys, but longer ids
              in.key_usage.clear();
              const size_t count = kInvoiceKeyIdBytesTotalMax / kInvoiceIdBytesMax + 1;
              for (size_t i = 0; i < count; i++) {
                in.key_usage.push_back({std::to_string(100000 + i).append(122, 'k'), 1});
              }
            }),
            "resource_exhausted key_usage");
  EXPECT_EQ(adjusted({M(2026, 10), &plan, 5, 4, 0}), "ok");
  EXPECT_EQ(adjusted({nov, &plan, 5, 4, 0}), "invalid_argument adjustments[0].month");
  EXPECT_EQ(adjusted({M(2026, 12), &plan, 5, 4, 0}), "invalid_argument adjustments[0].month");
  EXPECT_EQ(adjusted({M(2026, 0), &plan, 5, 4, 0}), "invalid_argument adjustments[0].month");
  EXPECT_EQ(adjusted({M(2026, 10), nullptr, 5, 4, 0}), "invalid_argument adjustments[0].plan");
  EXPECT_EQ(adjusted({M(2026, 10), &bad_plan, 5, 4, 0}),
            "invalid_argument adjustments[0].plan.tiers[0].up_to");
  EXPECT_EQ(adjusted({M(2026, 10), &eur, 5, 4, 0}),
            "invalid_argument adjustments[0].plan.currency");
  EXPECT_EQ(adjusted({M(2026, 10), &plan, 3, 4, 0}),
            "invalid_argument adjustments[0].corrected_quantity");
  EXPECT_EQ(adjusted({M(2026, 10), &plan, 4, 4, 0}),
            "invalid_argument adjustments[0].corrected_quantity");
  EXPECT_EQ(adjusted({M(2026, 10), &plan, 5, 4, -1}),
            "invalid_argument adjustments[0].invoiced_usage_amount_minor");
  EXPECT_EQ(adjusted({M(2026, 10), &plan, 5, 4, kAmountMinorMax + 1}),
            "invalid_argument adjustments[0].invoiced_usage_amount_minor");
  EXPECT_EQ(with([&](InvoiceInput& in) {
              in.adjustments = {{M(2026, 9), &plan, 5, 4, 0}, {M(2026, 9), &plan, 5, 4, 0}};
            }),
            "invalid_argument adjustments[1].month");
  EXPECT_EQ(with([&](InvoiceInput& in) {
              in.adjustments = {{M(2026, 10), &plan, 5, 4, 0}, {M(2026, 9), &plan, 5, 4, 0}};
            }),
            "invalid_argument adjustments[1].month");
  EXPECT_EQ(with([&](InvoiceInput& in) {
              in.adjustments.assign(kInvoiceAdjustmentsMax + 1, {M(2026, 10), &plan, 5, 4, 0});
            }),
            "resource_exhausted adjustments");
  PricePlanPublished dear = Plan(PricingMode::kGraduated, {{std::nullopt, kUnitPriceMicrosMax}});
  EXPECT_EQ(with([&](InvoiceInput& in) {
              in.adjustments = {{M(2026, 10), &dear, 2'000'000, 1, 0}};
            }),
            "resource_exhausted adjustments[0].corrected_quantity");
}

// ---- Digest -------------------------------------------------------------------------------

// A small invoice with a negative amount, so two's complement shows.
InvoiceIssued GoldenInvoice() {
  InvoiceIssued inv;
  inv.workspace_id = "w";
  inv.month = "2026-10";
  inv.invoice_number = 7;
  inv.currency = "USD";
  inv.lines = {{"tier", "units 1-3 (tier 1)", 3, 1'500'000, 4, "2026-10"},
               {"adjustment", "late", 1, 0, -999, "2026-09"}};
  inv.key_usage = {{"k", 3}};
  inv.subtotal_minor = -995;
  inv.total_minor = -995;
  inv.covers_sequence = 42;
  inv.plan_id = "p";
  inv.plan_version = 1;
  return inv;
}

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

TEST(InvoiceDigestTest, CanonicalBytesMatchTheDocumentedLayout) {
  const std::string expected = FromHex(
      "0000000000000014" "6b65796c65646765722e696e766f6963652e7631"  // "keyledger.invoice.v1"
      "0000000000000001" "77"                                        // workspace_id "w"
      "0000000000000007" "323032362d3130"                            // month "2026-10"
      "0000000000000007"                                             // invoice_number
      "0000000000000003" "555344"                                    // currency
      "0000000000000002"                                             // 2 lines
      "0000000000000004" "74696572"                                  //   kind "tier"
      "0000000000000012" "756e69747320312d33202874696572203129"      //   description
      "0000000000000003"                                             //   quantity
      "000000000016e360"                                             //   unit_price_micros
      "0000000000000004"                                             //   amount_minor
      "0000000000000007" "323032362d3130"                            //   month
      "000000000000000a" "61646a7573746d656e74"                      //   kind "adjustment"
      "0000000000000004" "6c617465"                                  //   description "late"
      "0000000000000001" "0000000000000000"                          //   quantity, unit price
      "fffffffffffffc19"                                             //   amount_minor -999
      "0000000000000007" "323032362d3039"                            //   month "2026-09"
      "0000000000000001"                                             // 1 key_usage entry
      "0000000000000001" "6b" "0000000000000003"                     //   "k", 3
      "fffffffffffffc1d" "fffffffffffffc1d"                          // subtotal, total -995
      "000000000000002a"                                             // covers_sequence 42
      "0000000000000001" "70"                                        // plan_id "p"
      "0000000000000001");                                           // plan_version
  InvoiceIssued inv = GoldenInvoice();
  EXPECT_EQ(ToHex(reinterpret_cast<const uint8_t*>(InvoiceCanonicalBytes(inv).data()),
                  InvoiceCanonicalBytes(inv).size()),
            ToHex(reinterpret_cast<const uint8_t*>(expected.data()), expected.size()));
  // Pinned with Python: hashlib.blake2b(bytes, digest_size=32).hexdigest().
  EXPECT_EQ(ToHex(InvoiceDigest(inv)),
            "f45fc454dbb8e1718fbacb72569cad96c12ded12454f0d9bb79cf153adad519f");
  // The digest field is not covered.
  inv.digest[0] ^= 1;
  EXPECT_EQ(InvoiceCanonicalBytes(inv), expected);
}

TEST(InvoiceDigestTest, VerifyDetectsTampering) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 100);
  InvoiceIssued inv = Build(Input(&plan, M(2026, 5), {{"k", 1500}}));
  EXPECT_TRUE(VerifyInvoiceDigest(inv).ok());
  EXPECT_EQ(inv.digest, InvoiceDigest(inv));
  inv.lines[0].amount_minor += 1;
  Status s = VerifyInvoiceDigest(inv);
  EXPECT_EQ(s.code(), Code::kCorruption);
  inv.lines[0].amount_minor -= 1;
  inv.digest[31] ^= 0x80;
  EXPECT_EQ(VerifyInvoiceDigest(inv).code(), Code::kCorruption);
}

// ---- CSV and JSON ---------------------------------------------------------------------------

using CsvRows = std::vector<std::vector<std::string>>;

// A strict RFC 4180 reader: every record ends with CRLF; a quoted field may
// hold commas, CR, LF and doubled quotes; a bare quote inside an unquoted field
// is an error. Returns nullopt on malformed input.
std::optional<CsvRows> ParseCsv(std::string_view text) {
  CsvRows rows;
  std::vector<std::string> row;
  size_t i = 0;
  while (i < text.size()) {
    std::string field;
    if (text[i] == '"') {
      i++;
      for (;;) {
        if (i >= text.size()) return std::nullopt;  // unterminated
        if (text[i] != '"') {
          field.push_back(text[i++]);
        } else if (i + 1 < text.size() && text[i + 1] == '"') {
          field.push_back('"');
          i += 2;
        } else {
          i++;
          break;
        }
      }
    } else {
      while (i < text.size() && text[i] != ',' && text[i] != '\r' && text[i] != '\n') {
        if (text[i] == '"') return std::nullopt;
        field.push_back(text[i++]);
      }
    }
    row.push_back(std::move(field));
    if (i < text.size() && text[i] == ',') {
      i++;
      if (i == text.size()) return std::nullopt;  // a record cannot end in a comma
      continue;
    }
    if (text.substr(i, 2) != "\r\n") return std::nullopt;
    i += 2;
    rows.push_back(std::move(row));
    row.clear();
  }
  return rows;
}

const std::vector<std::string> kCsvHeader = {
    "invoice_number", "workspace_id",      "month",        "line_kind", "line_month", "description",
    "quantity",       "unit_price_micros", "amount_minor", "amount",    "currency"};

// Checks that `rows` are exactly the CSV rows `inv` should have.
void ExpectCsvRows(const InvoiceIssued& inv, uint8_t e, const CsvRows& rows) {
  ASSERT_EQ(rows.size(), 1 + inv.lines.size() + inv.key_usage.size() + 1);
  EXPECT_EQ(rows[0], kCsvHeader);
  std::vector<std::string> head = {std::to_string(inv.invoice_number), inv.workspace_id, inv.month};
  auto row = [&](std::vector<std::string> rest) {
    std::vector<std::string> r = head;
    r.insert(r.end(), rest.begin(), rest.end());
    r.push_back(inv.currency);
    return r;
  };
  size_t r = 1;
  for (const InvoiceLine& l : inv.lines) {
    EXPECT_EQ(rows[r++], row({l.kind, l.month, l.description, std::to_string(l.quantity),
                              std::to_string(l.unit_price_micros), std::to_string(l.amount_minor),
                              FormatMinor(l.amount_minor, e)}));
  }
  for (const KeyUsage& k : inv.key_usage) {
    EXPECT_EQ(rows[r++], row({"key_usage", inv.month, k.key_id, std::to_string(k.quantity), "",
                              "", ""}));
  }
  EXPECT_EQ(rows[r], row({"total", "", "", "", "", std::to_string(inv.total_minor),
                          FormatMinor(inv.total_minor, e)}));
}

TEST(InvoiceCsvTest, QuotesOnlyWhatNeedsQuoting) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, ThreeTiers(), 100);
  InvoiceInput in = Input(&plan, M(2026, 11), {{"a\"b", 1}, {"c,d", 2}, {"e\r\nf", 3}, {"plain", 4}});
  in.adjustments.push_back({M(2026, 10), &plan, 12, 2, 4});
  InvoiceIssued inv = Build(in);
  std::string csv = InvoiceToCsv(inv, 2);
  EXPECT_NE(csv.find(",key_usage,2026-11,\"a\"\"b\",1,,,,USD\r\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",\"c,d\",2,"), std::string::npos);
  EXPECT_NE(csv.find(",\"e\r\nf\",3,"), std::string::npos);
  EXPECT_NE(csv.find(",plain,4,"), std::string::npos);
  EXPECT_NE(csv.find(",\"late usage for 2026-10: +10 units; 12 units re-priced under plan_1 v1: "
                     "0.24, minus 0.04 already invoiced for 2 units\",10,0,20,0.20,USD\r\n"),
            std::string::npos)
      << csv;
  auto rows = ParseCsv(csv);
  ASSERT_TRUE(rows.has_value());
  ExpectCsvRows(inv, 2, *rows);
}

TEST(InvoiceJsonTest, AmountsInMinorUnitsAndFormatted) {
  PricePlanPublished plan = Plan(PricingMode::kGraduated, {{std::nullopt, 1'000'000}}, 1250, "KWD", 3);
  plan.version = 3;
  InvoiceIssued inv = Build(Input(&plan, M(2026, 6), {{"k_1", 7}, {"k_2", 5}}));
  nlohmann::json j = InvoiceToJson(inv, 3);
  EXPECT_EQ(j["invoice_number"], 1);
  EXPECT_EQ(j["workspace_id"], "ws_1");
  EXPECT_EQ(j["month"], "2026-06");
  EXPECT_EQ(j["currency"], "KWD");
  EXPECT_EQ(j["currency_exponent"], 3);
  EXPECT_EQ(j["plan_id"], "plan_1");
  EXPECT_EQ(j["plan_version"], 3);
  EXPECT_EQ(j["covers_sequence"], 100);
  ASSERT_EQ(j["lines"].size(), 2u);
  EXPECT_EQ(j["lines"][0], (nlohmann::json{{"kind", "tier"},
                                           {"month", "2026-06"},
                                           {"description", "units 1-12 (tier 1)"},
                                           {"quantity", 12},
                                           {"unit_price_micros", 1'000'000},
                                           {"amount_minor", 12},
                                           {"amount", "0.012"}}));
  EXPECT_EQ(j["lines"][1]["amount"], "1.250");
  EXPECT_EQ(j["key_usage"], (nlohmann::json::array({{{"key_id", "k_1"}, {"quantity", 7}},
                                                    {{"key_id", "k_2"}, {"quantity", 5}}})));
  EXPECT_EQ(j["subtotal_minor"], 1262);
  EXPECT_EQ(j["subtotal"], "1.262");
  EXPECT_EQ(j["total_minor"], 1262);
  EXPECT_EQ(j["total"], "1.262");
  EXPECT_EQ(j["digest"], ToHex(inv.digest));
  EXPECT_EQ(j["digest"].get<std::string>().size(), 64u);
}

// ---- Properties ------------------------------------------------------------------------------

// Half-even rounding written differently from the library: round half up,
// then step back from an odd result on an exact tie. REQUIRES: micros >= 0.
__int128 ModelRound(__int128 micros) {
  __int128 up = (2 * micros + kMicrosPerMinor) / (2 * kMicrosPerMinor);
  bool tie = micros % kMicrosPerMinor == kMicrosPerMinor / 2;
  if (tie && up % 2 != 0) up -= 1;
  return up;
}

// The usage price of q units, tier by tier: graduated clamps q into each
// tier's range and rounds each tier once; volume rounds q x the price of the
// tier whose range holds q.
__int128 ModelUsagePrice(const PricePlanPublished& plan, uint64_t q) {
  const std::vector<PriceTier>& tiers = plan.tiers;
  if (plan.mode == PricingMode::kVolume) {
    if (q == 0) return 0;
    size_t t = 0;
    while (t + 1 < tiers.size() && q > *tiers[t].up_to) t++;
    return ModelRound(static_cast<__int128>(q) * tiers[t].unit_price_micros);
  }
  __int128 total = 0;
  for (size_t t = 0; t < tiers.size(); t++) {
    uint64_t lo = t == 0 ? 0 : *tiers[t - 1].up_to;
    uint64_t hi = tiers[t].up_to.value_or(UINT64_MAX);
    uint64_t units = std::min(q, hi) - std::min(q, lo);
    total += ModelRound(static_cast<__int128>(units) * tiers[t].unit_price_micros);
  }
  return total;
}

// A price that is often a multiple of a quarter minor unit, so ties happen.
int64_t GenPrice() {
  return *rc::gen::oneOf(rc::gen::inRange<int64_t>(0, 50'000'001),
                         rc::gen::map(rc::gen::inRange<int64_t>(0, 17),
                                      [](int64_t k) { return k * 250'000; }));
}

// A valid plan of 1..5 tiers, each bounded tier 1..2000 units wide.
PricePlanPublished GenPlan(PricingMode mode) {
  size_t n = *rc::gen::inRange<size_t>(1, 6);
  std::vector<PriceTier> tiers;
  uint64_t up_to = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    up_to += *rc::gen::inRange<uint64_t>(1, 2001);
    tiers.push_back({up_to, GenPrice()});
  }
  tiers.push_back({std::nullopt, GenPrice()});
  int64_t fee = *rc::gen::oneOf(rc::gen::just<int64_t>(0), rc::gen::inRange<int64_t>(0, 100'000));
  PricePlanPublished plan = Plan(mode, std::move(tiers), fee);
  plan.version = *rc::gen::inRange<uint32_t>(1, 10);
  return plan;
}

PricingMode GenMode() { return *rc::gen::element(PricingMode::kGraduated, PricingMode::kVolume); }

// min_keys..5 keys with 1..5000 units each; ids from a small alphabet that
// CSV must quote, kept unique and sorted by the map.
std::vector<KeyUsage> GenKeys(size_t min_keys) {
  size_t n = *rc::gen::inRange<size_t>(min_keys, 6);
  std::map<std::string, uint64_t> by_id;
  while (by_id.size() < n) {
    std::string id = *rc::gen::container<std::string>(
        *rc::gen::inRange<size_t>(1, 6), rc::gen::element('k', '_', ',', '"', '\n', '\r', 'z'));
    by_id[id] = *rc::gen::inRange<uint64_t>(1, 5001);
  }
  std::vector<KeyUsage> keys;
  for (const auto& [id, q] : by_id) keys.push_back({id, q});
  return keys;
}

uint64_t SumKeys(const std::vector<KeyUsage>& keys) {
  uint64_t sum = 0;
  for (const KeyUsage& k : keys) sum += k.quantity;
  return sum;
}

int64_t SumLines(const InvoiceIssued& inv) {
  int64_t sum = 0;
  for (const InvoiceLine& l : inv.lines) sum += l.amount_minor;
  return sum;
}

// An input for December 2026 with random usage and 0..3 adjustment months.
// `plans` must outlive the input; it holds the adjustments' plans.
InvoiceInput GenInput(const PricePlanPublished* plan, std::vector<PricePlanPublished>* plans,
                      size_t min_keys) {
  InvoiceInput in = Input(plan, M(2026, 12), GenKeys(min_keys));
  in.workspace_id = *rc::gen::element<std::string>("ws_1", "ws,2", "w");
  in.invoice_number = *rc::gen::inRange<uint64_t>(1, 1'000'000);
  in.covers_sequence = *rc::gen::arbitrary<uint64_t>();
  size_t months = *rc::gen::inRange<size_t>(0, 4);
  plans->reserve(months);
  for (size_t i = 0; i < months; i++) plans->push_back(GenPlan(GenMode()));
  for (size_t i = 0; i < months; i++) {
    uint64_t invoiced = *rc::gen::inRange<uint64_t>(0, 5000);
    uint64_t corrected = invoiced + *rc::gen::inRange<uint64_t>(1, 5000);
    int64_t amount = static_cast<int64_t>(ModelUsagePrice((*plans)[i], invoiced));
    in.adjustments.push_back({M(2026, 9 + static_cast<unsigned>(i)), &(*plans)[i], corrected,
                              invoiced, amount});
  }
  return in;
}

RC_GTEST_PROP(InvoiceProperty, TotalMatchesAnIndependentPricing, ()) {
  PricePlanPublished plan = GenPlan(GenMode());
  std::vector<PricePlanPublished> plans;
  InvoiceInput in = GenInput(&plan, &plans, 0);
  auto r = BuildInvoice(in);
  RC_ASSERT(r.ok());
  const InvoiceIssued& inv = *r;
  uint64_t quantity = SumKeys(in.key_usage);
  __int128 expected = ModelUsagePrice(plan, quantity) + plan.monthly_fee_minor;
  for (const Adjustment& a : in.adjustments) {
    expected += ModelUsagePrice(*a.plan, a.corrected_quantity) - a.invoiced_usage_amount_minor;
  }
  RC_ASSERT(static_cast<__int128>(inv.total_minor) == expected);
  RC_ASSERT(inv.subtotal_minor == SumLines(inv));
  RC_ASSERT(inv.total_minor == inv.subtotal_minor);
  uint64_t tier_units = 0;
  size_t adjustments = 0;
  for (const InvoiceLine& l : inv.lines) {
    if (l.kind == "tier") tier_units += l.quantity;
    if (l.kind == "adjustment") adjustments++;
  }
  RC_ASSERT(tier_units == quantity);
  RC_ASSERT(adjustments == in.adjustments.size());
  RC_ASSERT(inv.key_usage == in.key_usage);
  RC_ASSERT(VerifyInvoiceDigest(inv).ok());
}

RC_GTEST_PROP(InvoiceProperty, SameInputSameBytes, ()) {
  PricePlanPublished plan = GenPlan(GenMode());
  std::vector<PricePlanPublished> plans;
  InvoiceInput in = GenInput(&plan, &plans, 0);
  auto a = BuildInvoice(in);
  auto b = BuildInvoice(in);
  RC_ASSERT(a.ok() && b.ok());
  RC_ASSERT(InvoiceCanonicalBytes(*a) == InvoiceCanonicalBytes(*b));
  RC_ASSERT(a->digest == b->digest);
  RC_ASSERT(*a == *b);
  RC_ASSERT(InvoiceToCsv(*a, 2) == InvoiceToCsv(*b, 2));
  RC_ASSERT(InvoiceToJson(*a, 2).dump() == InvoiceToJson(*b, 2).dump());
}

using Mutation = std::function<void(InvoiceIssued&)>;

// One mutation per content field (and a few structural ones). Each changes
// exactly what its name says. REQUIRES (of the invoice): lines and key_usage
// non-empty, workspace_id non-empty.
std::vector<std::pair<std::string, Mutation>> Mutations(size_t line, size_t key) {
  return {
      {"workspace_id", [](InvoiceIssued& v) { v.workspace_id += "x"; }},
      {"month", [](InvoiceIssued& v) { v.month[6] = v.month[6] == '1' ? '2' : '1'; }},
      {"invoice_number", [](InvoiceIssued& v) { v.invoice_number++; }},
      {"currency", [](InvoiceIssued& v) { v.currency = v.currency == "USD" ? "EUR" : "USD"; }},
      {"line.kind", [=](InvoiceIssued& v) { v.lines[line].kind += "x"; }},
      {"line.description", [=](InvoiceIssued& v) { v.lines[line].description += "x"; }},
      {"line.quantity", [=](InvoiceIssued& v) { v.lines[line].quantity++; }},
      {"line.unit_price_micros", [=](InvoiceIssued& v) { v.lines[line].unit_price_micros++; }},
      {"line.amount_minor", [=](InvoiceIssued& v) { v.lines[line].amount_minor--; }},
      {"line.month", [=](InvoiceIssued& v) { v.lines[line].month += "x"; }},
      {"lines: one less", [](InvoiceIssued& v) { v.lines.pop_back(); }},
      {"lines: one more", [](InvoiceIssued& v) { v.lines.push_back(v.lines.back()); }},
      {"key.key_id", [=](InvoiceIssued& v) { v.key_usage[key].key_id += "x"; }},
      {"key.quantity", [=](InvoiceIssued& v) { v.key_usage[key].quantity++; }},
      {"key_usage: one less", [](InvoiceIssued& v) { v.key_usage.pop_back(); }},
      {"subtotal_minor", [](InvoiceIssued& v) { v.subtotal_minor++; }},
      {"total_minor", [](InvoiceIssued& v) { v.total_minor++; }},
      {"covers_sequence", [](InvoiceIssued& v) { v.covers_sequence ^= 1; }},
      {"plan_id", [](InvoiceIssued& v) { v.plan_id += "x"; }},
      {"plan_version", [](InvoiceIssued& v) { v.plan_version++; }},
      // Same bytes overall, different split between two adjacent strings.
      {"workspace_id|month boundary",
       [](InvoiceIssued& v) {
         v.month.insert(0, 1, v.workspace_id.back());
         v.workspace_id.pop_back();
       }},
  };
}

RC_GTEST_PROP(InvoiceProperty, DigestChangesWhenAnyFieldChanges, ()) {
  PricePlanPublished plan = GenPlan(GenMode());
  std::vector<PricePlanPublished> plans;
  InvoiceInput in = GenInput(&plan, &plans, 1);
  auto r = BuildInvoice(in);
  RC_ASSERT(r.ok());
  RC_ASSERT(!r->lines.empty());  // usage > 0: at least one tier line
  size_t line = *rc::gen::inRange<size_t>(0, r->lines.size());
  size_t key = *rc::gen::inRange<size_t>(0, r->key_usage.size());
  for (const auto& [name, mutate] : Mutations(line, key)) {
    InvoiceIssued changed = *r;
    mutate(changed);
    RC_ASSERT(changed != *r);
    if (InvoiceDigest(changed) == r->digest) RC_FAIL("digest unchanged by " + name);
    if (VerifyInvoiceDigest(changed).code() != Code::kCorruption) RC_FAIL("verified " + name);
  }
}

RC_GTEST_PROP(InvoiceProperty, CsvParsesBackRowForRow, ()) {
  PricePlanPublished plan = GenPlan(GenMode());
  std::vector<PricePlanPublished> plans;
  InvoiceInput in = GenInput(&plan, &plans, 0);
  auto r = BuildInvoice(in);
  RC_ASSERT(r.ok());
  uint8_t e = *rc::gen::inRange<uint8_t>(0, kCurrencyExponentMax + 1);
  auto rows = ParseCsv(InvoiceToCsv(*r, e));
  RC_ASSERT(rows.has_value());
  RC_ASSERT(rows->size() == 2 + r->lines.size() + r->key_usage.size());
  ExpectCsvRows(*r, e, *rows);
  RC_ASSERT(!::testing::Test::HasFailure());
}

// One month's usage arrives in batches: the first before its invoice, the rest
// late, each after the previous invoice. However the batches fall, the usage
// amounts billed for that month over all invoices add up to the price of the
// month's full quantity, each adjustment's quantity is its batch, and under
// graduated pricing no adjustment is a credit.
RC_GTEST_PROP(InvoiceProperty, AMonthsInvoicesAddUpToItsFullPrice, ()) {
  PricingMode mode = GenMode();
  PricePlanPublished plan = GenPlan(mode);
  const BillingMonth month = M(2026, 1);
  uint64_t first = *rc::gen::inRange<uint64_t>(0, 8000);
  size_t late_count = *rc::gen::inRange<size_t>(1, 12);  // invoices for February..December
  std::vector<uint64_t> late = *rc::gen::container<std::vector<uint64_t>>(
      late_count, rc::gen::inRange<uint64_t>(1, 3000));
  InvoiceInput first_in = Input(&plan, month);
  if (first > 0) first_in.key_usage = {{"k", first}};
  auto inv = BuildInvoice(first_in);
  RC_ASSERT(inv.ok());
  uint64_t billed_units = first;
  int64_t billed_amount = inv->total_minor - plan.monthly_fee_minor;
  BillingMonth now = month;
  for (uint64_t batch : late) {
    now = NextMonth(now);
    InvoiceInput in = Input(&plan, now, {{"k", 7}});
    in.adjustments.push_back({month, &plan, billed_units + batch, billed_units, billed_amount});
    auto next = BuildInvoice(in);
    RC_ASSERT(next.ok());
    const InvoiceLine& adj = next->lines.back();
    RC_ASSERT(adj.kind == "adjustment");
    RC_ASSERT(adj.month == month.ToString());
    RC_ASSERT(adj.quantity == batch);
    RC_ASSERT(adj.unit_price_micros == 0);
    if (mode == PricingMode::kGraduated) RC_ASSERT(adj.amount_minor >= 0);
    billed_units += batch;
    billed_amount += adj.amount_minor;
  }
  RC_ASSERT(static_cast<__int128>(billed_amount) == ModelUsagePrice(plan, billed_units));
}

}  // namespace
}  // namespace keyledger
