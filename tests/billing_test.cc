// Tests for billing/calendar.h (billing months), billing/pricing.h and
// billing/usage.h: exact table cases at tier edges, time-zone month boundaries
// (including DST and clocks that skip or repeat midnight), invalid plans, and
// rapidcheck properties against independent models.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "billing/calendar.h"
#include "billing/pricing.h"
#include "billing/usage.h"

namespace keyledger {
namespace {

constexpr int64_t kHourUs = int64_t{3600} * 1'000'000;
constexpr int64_t kDayUs = 24 * kHourUs;
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// Returns the UTC microseconds of an RFC 3339 time (a test literal).
int64_t Us(std::string_view rfc3339) {
  Result<int64_t> r = ParseRfc3339(rfc3339, "t");
  if (!r.ok()) {
    ADD_FAILURE() << "bad test time " << rfc3339;
    return 0;
  }
  return *r;
}

BillingMonth M(int year, unsigned month) { return BillingMonth{year, month}; }

// Returns the month of `t` in `zone`, or "error:<field>".
std::string MonthOfStr(int64_t t, std::string_view zone) {
  Result<BillingMonth> r = MonthOf(t, zone);
  return r.ok() ? r->ToString() : "error:" + r.status().field();
}

std::pair<int64_t, int64_t> Bounds(BillingMonth m, std::string_view zone) {
  auto r = MonthBoundsUs(m, zone);
  if (!r.ok()) {
    ADD_FAILURE() << r.status().ToString();
    return {0, 0};
  }
  return *r;
}

PricePlanPublished Plan(PricingMode mode, std::vector<PriceTier> tiers,
                        std::string currency = "USD", uint8_t exponent = 2) {
  PricePlanPublished p;
  p.plan_id = "plan_1";
  p.version = 1;
  p.currency = std::move(currency);
  p.currency_exponent = exponent;
  p.metric = "units";
  p.mode = mode;
  p.tiers = std::move(tiers);
  return p;
}

// 2 cents per unit for units 1-1000, 1.5 cents for 1001-10000, 1 cent above.
std::vector<PriceTier> ThreeTiers() {
  return {{1000, 2'000'000}, {10000, 1'500'000}, {std::nullopt, 1'000'000}};
}

int64_t Total(const std::vector<PricedLine>& lines) {
  int64_t total = 0;
  for (const PricedLine& l : lines) total += l.amount_minor;
  return total;
}

// ---- Calendar: billing months -----------------------------------------------

TEST(BillingMonthTest, ParseAndFormat) {
  auto m = ParseBillingMonth("2026-04", "month");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->year, 2026);
  EXPECT_EQ(m->month, 4u);
  EXPECT_EQ(m->ToString(), "2026-04");
  EXPECT_EQ(M(1, 1).ToString(), "0001-01");
  EXPECT_EQ(M(9999, 12).ToString(), "9999-12");
  for (std::string_view bad : {"", "2026-4", "2026-13", "2026-00", "0000-01", "2026-04-01",
                               "abcd-ef", "2026/04", " 2026-04", "2026-04 ", "+026-04"}) {
    auto r = ParseBillingMonth(bad, "query.month");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(r.status().field(), "query.month");
  }
}

TEST(BillingMonthTest, NextMonthAndOrder) {
  EXPECT_EQ(NextMonth(M(2026, 12)), M(2027, 1));
  EXPECT_EQ(NextMonth(M(2026, 1)), M(2026, 2));
  EXPECT_LT(M(2026, 12), M(2027, 1));
  EXPECT_LT(M(2026, 2), M(2026, 11));
}

TEST(BillingMonthTest, SeoulVersusUtcAtMonthEnd) {
  int64_t t = Us("2026-03-31T15:00:00Z");  // 2026-04-01 00:00 in Seoul (+09)
  EXPECT_EQ(MonthOfStr(t, "Asia/Seoul"), "2026-04");
  EXPECT_EQ(MonthOfStr(t, "UTC"), "2026-03");
  EXPECT_EQ(MonthOfStr(t - 1, "Asia/Seoul"), "2026-03");
  auto seoul = Bounds(M(2026, 4), "Asia/Seoul");
  EXPECT_EQ(seoul.first, t);
  EXPECT_EQ(seoul.second, Us("2026-04-30T15:00:00Z"));
  auto utc = Bounds(M(2026, 4), "UTC");
  EXPECT_EQ(utc.first, Us("2026-04-01T00:00:00Z"));
  EXPECT_EQ(utc.second - utc.first, 30 * kDayUs);
}

TEST(BillingMonthTest, NewYorkDstMonthsAreShortAndLong) {
  auto march = Bounds(M(2026, 3), "America/New_York");  // springs forward on the 8th
  EXPECT_EQ(march.first, Us("2026-03-01T05:00:00Z"));
  EXPECT_EQ(march.second, Us("2026-04-01T04:00:00Z"));
  EXPECT_EQ(march.second - march.first, 30 * kDayUs + 23 * kHourUs);
  auto november = Bounds(M(2026, 11), "America/New_York");  // falls back on the 1st
  EXPECT_EQ(november.first, Us("2026-11-01T04:00:00Z"));
  EXPECT_EQ(november.second - november.first, 30 * kDayUs + kHourUs);
}

TEST(BillingMonthTest, HalfHourAndQuarterHourZones) {
  // Lord Howe leaves +11 for +10:30 on 2026-04-05.
  auto april = Bounds(M(2026, 4), "Australia/Lord_Howe");
  EXPECT_EQ(april.first, Us("2026-03-31T13:00:00Z"));
  EXPECT_EQ(april.second, Us("2026-04-30T13:30:00Z"));
  auto january = Bounds(M(2026, 1), "Asia/Kathmandu");  // +05:45
  EXPECT_EQ(january.first, Us("2025-12-31T18:15:00Z"));
}

TEST(BillingMonthTest, MonthOfAtExactBounds) {
  for (std::string_view zone : {"UTC", "Asia/Seoul", "America/New_York", "Pacific/Chatham"}) {
    for (BillingMonth m : {M(2026, 1), M(2026, 3), M(2026, 4), M(2026, 11), M(2026, 12)}) {
      auto [start, end] = Bounds(m, zone);
      SCOPED_TRACE(std::string(zone) + " " + m.ToString());
      BillingMonth prev = m.month == 1 ? M(m.year - 1, 12) : M(m.year, m.month - 1);
      EXPECT_EQ(MonthOfStr(start - 1, zone), prev.ToString());
      EXPECT_EQ(MonthOfStr(start, zone), m.ToString());
      EXPECT_EQ(MonthOfStr(end - 1, zone), m.ToString());
      EXPECT_EQ(MonthOfStr(end, zone), NextMonth(m).ToString());
      EXPECT_EQ(Bounds(NextMonth(m), zone).first, end);
    }
  }
}

TEST(BillingMonthTest, SkippedMidnightStartsTheMonthAtTheClockChange) {
  // Asuncion sprang from 2023-10-01 00:00 (-04) to 01:00 (-03) at 04:00Z.
  auto october = Bounds(M(2023, 10), "America/Asuncion");
  EXPECT_EQ(october.first, Us("2023-10-01T04:00:00Z"));
  auto september = Bounds(M(2023, 9), "America/Asuncion");
  EXPECT_EQ(september.second, october.first);
  EXPECT_EQ(september.second - september.first, 30 * kDayUs);
  EXPECT_EQ(MonthOfStr(october.first - 1, "America/Asuncion"), "2023-09");
  EXPECT_EQ(MonthOfStr(october.first, "America/Asuncion"), "2023-10");
}

TEST(BillingMonthTest, RepeatedLastDayAfterMidnightBelongsToTheNewMonth) {
  // St. John's fell back at 2009-11-01 00:01 NDT (02:31Z) to 2009-10-31 23:01
  // NST: the wall clock read October again after November had begun.
  std::string_view zone = "America/St_Johns";
  auto november = Bounds(M(2009, 11), zone);
  EXPECT_EQ(november.first, Us("2009-11-01T02:30:00Z"));
  EXPECT_EQ(MonthOfStr(Us("2009-11-01T02:29:59Z"), zone), "2009-10");
  EXPECT_EQ(MonthOfStr(Us("2009-11-01T02:45:00Z"), zone), "2009-11");  // reads Oct 31 23:15
  EXPECT_EQ(MonthOfStr(Us("2009-11-01T03:30:00Z"), zone), "2009-11");
}

TEST(BillingMonthTest, Errors) {
  auto r = MonthOf(0, "Mars/Olympus_Mons");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().field(), "billing_timezone");
  EXPECT_EQ(MonthOfStr(0, ""), "error:billing_timezone");
  EXPECT_EQ(MonthBoundsUs(M(2026, 1), "Nowhere").status().field(), "billing_timezone");
  for (BillingMonth bad : {M(2026, 0), M(2026, 13), M(0, 5), M(10000, 1)}) {
    auto b = MonthBoundsUs(bad, "UTC");
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(b.status().field(), "month");
  }
  EXPECT_EQ(MonthOfStr(std::numeric_limits<int64_t>::max(), "UTC"), "error:occurred_at");
  EXPECT_EQ(MonthOfStr(std::numeric_limits<int64_t>::min(), "UTC"), "error:occurred_at");
  EXPECT_EQ(MonthOfStr(Us("9999-12-31T23:59:59Z"), "UTC"), "9999-12");
  EXPECT_EQ(MonthOfStr(Us("9999-12-31T23:59:59Z"), "Asia/Seoul"), "error:occurred_at");
  EXPECT_TRUE(MonthBoundsUs(M(9999, 12), "Asia/Seoul").ok());
}

// ---- Pricing: currencies and plan validation ---------------------------------

TEST(CurrencyTest, Exponents) {
  const std::vector<std::pair<std::string_view, int>> cases = {
      {"USD", 2}, {"EUR", 2}, {"GBP", 2}, {"JPY", 0}, {"KRW", 0}, {"CNY", 2}, {"INR", 2},
      {"CHF", 2}, {"CAD", 2}, {"AUD", 2}, {"SGD", 2}, {"HKD", 2}, {"BRL", 2}, {"MXN", 2},
      {"SEK", 2}, {"NOK", 2}, {"DKK", 2}, {"PLN", 2}, {"CZK", 2}, {"HUF", 2}, {"TWD", 2},
      {"THB", 2}, {"VND", 0}, {"IDR", 2}, {"ISK", 0}, {"CLP", 0}, {"BHD", 3}, {"KWD", 3},
      {"JOD", 3}, {"OMR", 3}, {"TND", 3}, {"CLF", 4}};
  for (const auto& [code, exponent] : cases) {
    auto r = CurrencyExponent(code);
    ASSERT_TRUE(r.ok()) << code;
    EXPECT_EQ(*r, exponent) << code;
  }
  for (std::string_view bad : {"", "usd", "XYZ", "USDX", "US", "XAU"}) {
    auto r = CurrencyExponent(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(r.status().field(), "currency");
  }
}

// Returns the field of ValidatePricePlan's error, "" if OK.
std::string BadField(const PricePlanPublished& plan) {
  Status s = ValidatePricePlan(plan);
  if (!s.ok()) {
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
  }
  return s.field();
}

TEST(ValidatePricePlanTest, AcceptsGoodPlans) {
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers())), "");
  EXPECT_EQ(BadField(Plan(PricingMode::kVolume, {{std::nullopt, 0}})), "");
  PricePlanPublished max = Plan(PricingMode::kGraduated, {{1, kUnitPriceMicrosMax},
                                                          {kU64Max - 1, 0},
                                                          {std::nullopt, kUnitPriceMicrosMax}});
  max.monthly_fee_minor = kMonthlyFeeMinorMax;
  EXPECT_EQ(BadField(max), "");
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers(), "KRW", 0)), "");
}

TEST(ValidatePricePlanTest, NamesTheBadField) {
  using T = std::vector<PriceTier>;
  auto graduated = [](T tiers) { return Plan(PricingMode::kGraduated, std::move(tiers)); };
  const auto open = std::nullopt;
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers(), "usd", 2)), "currency");
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers(), "XYZ", 2)), "currency");
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers(), "USD", 0)), "currency_exponent");
  EXPECT_EQ(BadField(Plan(PricingMode::kGraduated, ThreeTiers(), "KRW", 2)), "currency_exponent");
  PricePlanPublished metric = graduated(ThreeTiers());
  metric.metric = "calls";
  EXPECT_EQ(BadField(metric), "metric");
  EXPECT_EQ(BadField(Plan(static_cast<PricingMode>(7), ThreeTiers())), "mode");
  EXPECT_EQ(BadField(graduated({})), "tiers");
  EXPECT_EQ(BadField(graduated(T(kPriceTiersMax + 1, PriceTier{open, 0}))), "tiers");
  EXPECT_EQ(BadField(graduated({{open, 0}, {open, 0}})), "tiers[0].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}, {200, 0}})), "tiers[1].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}})), "tiers[0].up_to");
  EXPECT_EQ(BadField(graduated({{0, 0}, {open, 0}})), "tiers[0].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}, {100, 0}, {open, 0}})), "tiers[1].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}, {200, 0}, {150, 0}, {open, 0}})), "tiers[2].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}, {200, 0}, {open, 0}, {open, 0}})), "tiers[2].up_to");
  EXPECT_EQ(BadField(graduated({{100, 0}, {open, -1}})), "tiers[1].unit_price_micros");
  EXPECT_EQ(BadField(graduated({{100, 0}, {open, kUnitPriceMicrosMax + 1}})),
            "tiers[1].unit_price_micros");
  PricePlanPublished fee = graduated(ThreeTiers());
  fee.monthly_fee_minor = -1;
  EXPECT_EQ(BadField(fee), "monthly_fee_minor");
  fee.monthly_fee_minor = kMonthlyFeeMinorMax + 1;
  EXPECT_EQ(BadField(fee), "monthly_fee_minor");
  // PriceUsage refuses an invalid plan with the same error.
  auto r = PriceUsage(graduated({{100, 0}, {200, 0}}), 5);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().field(), "tiers[1].up_to");
}

// ---- Pricing: tiers, rounding, formatting --------------------------------------

struct PriceCase {
  uint64_t quantity;
  std::vector<std::tuple<uint64_t, int64_t, int64_t>> lines;  // quantity, price, amount
};

void ExpectPriced(const PricePlanPublished& plan, const std::vector<PriceCase>& cases) {
  for (const PriceCase& c : cases) {
    SCOPED_TRACE("quantity " + std::to_string(c.quantity));
    auto r = PriceUsage(plan, c.quantity);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->size(), c.lines.size());
    for (size_t i = 0; i < c.lines.size(); i++) {
      EXPECT_EQ((*r)[i].kind, "tier");
      EXPECT_EQ((*r)[i].quantity, std::get<0>(c.lines[i]));
      EXPECT_EQ((*r)[i].unit_price_micros, std::get<1>(c.lines[i]));
      EXPECT_EQ((*r)[i].amount_minor, std::get<2>(c.lines[i]));
    }
  }
}

TEST(PriceUsageTest, GraduatedAtAndAroundTierEdges) {
  ExpectPriced(Plan(PricingMode::kGraduated, ThreeTiers()),
               {
                   {0, {}},
                   {1, {{1, 2'000'000, 2}}},
                   {999, {{999, 2'000'000, 1998}}},
                   {1000, {{1000, 2'000'000, 2000}}},
                   {1001, {{1000, 2'000'000, 2000}, {1, 1'500'000, 2}}},      // 1.5 -> 2
                   {1003, {{1000, 2'000'000, 2000}, {3, 1'500'000, 4}}},      // 4.5 -> 4
                   {9999, {{1000, 2'000'000, 2000}, {8999, 1'500'000, 13498}}},  // 13498.5
                   {10000, {{1000, 2'000'000, 2000}, {9000, 1'500'000, 13500}}},
                   {10001,
                    {{1000, 2'000'000, 2000}, {9000, 1'500'000, 13500}, {1, 1'000'000, 1}}},
               });
}

TEST(PriceUsageTest, VolumeAtAndAroundTierEdges) {
  ExpectPriced(Plan(PricingMode::kVolume, ThreeTiers()),
               {
                   {0, {}},
                   {1, {{1, 2'000'000, 2}}},
                   {999, {{999, 2'000'000, 1998}}},
                   {1000, {{1000, 2'000'000, 2000}}},      // up_to is inclusive
                   {1001, {{1001, 1'500'000, 1502}}},      // 1501.5 -> 1502
                   {1003, {{1003, 1'500'000, 1504}}},      // 1504.5 -> 1504
                   {9999, {{9999, 1'500'000, 14998}}},     // 14998.5 -> 14998
                   {10000, {{10000, 1'500'000, 15000}}},
                   {10001, {{10001, 1'000'000, 10001}}},
               });
}

TEST(PriceUsageTest, Descriptions) {
  auto g = PriceUsage(Plan(PricingMode::kGraduated, ThreeTiers()), 12345);
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->size(), 3u);
  EXPECT_EQ((*g)[0].description, "units 1-1000 (tier 1)");
  EXPECT_EQ((*g)[1].description, "units 1001-10000 (tier 2)");
  EXPECT_EQ((*g)[2].description, "units 10001-12345 (tier 3)");
  auto v = PriceUsage(Plan(PricingMode::kVolume, ThreeTiers()), 12345);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)[0].description, "units 1-12345 (volume tier 3)");
}

TEST(PriceUsageTest, FreeTierKeepsItsLineWithZeroAmount) {
  auto r = PriceUsage(Plan(PricingMode::kGraduated, {{100, 0}, {std::nullopt, 10'000'000}}), 101);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].amount_minor, 0);
  EXPECT_EQ((*r)[0].quantity, 100u);
  EXPECT_EQ((*r)[1].amount_minor, 10);
}

TEST(PriceUsageTest, KrwHasNoMinorDigits) {
  // 1.5 won per unit; KRW's minor unit is the won itself.
  PricePlanPublished krw = Plan(PricingMode::kVolume, {{std::nullopt, 1'500'000}}, "KRW", 0);
  ExpectPriced(krw, {{1, {{1, 1'500'000, 2}}}, {3, {{3, 1'500'000, 4}}},
                     {1'000'000, {{1'000'000, 1'500'000, 1'500'000}}}});
  auto r = PriceUsage(krw, 3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(FormatMinor((*r)[0].amount_minor, krw.currency_exponent), "4");
}

TEST(PriceUsageTest, OverflowIsAnErrorNotUb) {
  PricePlanPublished max = Plan(PricingMode::kGraduated, {{std::nullopt, kUnitPriceMicrosMax}});
  auto r = PriceUsage(max, kU64Max);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_EQ(r.status().field(), "quantity");
  // One minor unit per unit: exactly kAmountMinorMax fits, one more does not.
  PricePlanPublished one = Plan(PricingMode::kVolume, {{std::nullopt, kMicrosPerMinor}});
  auto at = PriceUsage(one, static_cast<uint64_t>(kAmountMinorMax));
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(Total(*at), kAmountMinorMax);
  EXPECT_FALSE(PriceUsage(one, static_cast<uint64_t>(kAmountMinorMax) + 1).ok());
  // Each line fits, their sum does not.
  PricePlanPublished two = Plan(
      PricingMode::kGraduated,
      {{static_cast<uint64_t>(kAmountMinorMax), kMicrosPerMinor}, {std::nullopt, kMicrosPerMinor}});
  auto sum = PriceUsage(two, static_cast<uint64_t>(kAmountMinorMax) + 1);
  ASSERT_FALSE(sum.ok());
  EXPECT_EQ(sum.status().code(), Code::kResourceExhausted);
}

TEST(RoundingTest, HalfToEvenBothSigns) {
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {0, 0},           {1, 0},          {499'999, 0},     {500'000, 0},    {500'001, 1},
      {1'500'000, 2},   {2'500'000, 2},  {2'500'001, 3},   {3'500'000, 4},  {2'499'999, 2},
      {-1, 0},          {-500'000, 0},   {-500'001, -1},   {-1'500'000, -2}, {-2'500'000, -2},
      {-2'500'001, -3}, {-3'500'000, -4}, {-2'499'999, -2}, {1'000'000, 1},  {-1'000'000, -1},
  };
  for (const auto& [micros, minor] : cases) {
    EXPECT_EQ(RoundHalfEvenMicros(micros), minor) << micros;
  }
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(RoundHalfEvenMicros(static_cast<__int128>(kMax) * kMicrosPerMinor), kMax);
  EXPECT_EQ(RoundHalfEvenMicros(-static_cast<__int128>(kMax) * kMicrosPerMinor), -kMax);
}

TEST(FormatMinorTest, Cases) {
  EXPECT_EQ(FormatMinor(1234, 2), "12.34");
  EXPECT_EQ(FormatMinor(1234, 0), "1234");
  EXPECT_EQ(FormatMinor(-5, 2), "-0.05");
  EXPECT_EQ(FormatMinor(0, 2), "0.00");
  EXPECT_EQ(FormatMinor(0, 0), "0");
  EXPECT_EQ(FormatMinor(100, 2), "1.00");
  EXPECT_EQ(FormatMinor(5, 3), "0.005");
  EXPECT_EQ(FormatMinor(-1234, 0), "-1234");
  EXPECT_EQ(FormatMinor(12345, 4), "1.2345");
  EXPECT_EQ(FormatMinor(std::numeric_limits<int64_t>::min(), 2), "-92233720368547758.08");
  EXPECT_EQ(FormatMinor(std::numeric_limits<int64_t>::max(), 0), "9223372036854775807");
}

// ---- UsageFold ----------------------------------------------------------------

ApiCallRecorded Call(std::string ws, std::string key, int64_t at_us, uint64_t units) {
  ApiCallRecorded c;
  c.workspace_id = std::move(ws);
  c.key_id = std::move(key);
  c.occurred_at_us = at_us;
  c.units = units;
  return c;
}

TEST(UsageFoldTest, FoldsByWorkspaceMonthAndKey) {
  UsageFold fold;
  int64_t t = Us("2026-03-31T15:00:00Z");
  ASSERT_TRUE(fold.Apply(Call("w1", "k_b", t, 5), "Asia/Seoul").ok());        // April
  ASSERT_TRUE(fold.Apply(Call("w1", "k_a", t - 1, 7), "Asia/Seoul").ok());    // March
  ASSERT_TRUE(fold.Apply(Call("w1", "k_a", t + kDayUs, 3), "Asia/Seoul").ok());
  ASSERT_TRUE(fold.Apply(Call("w2", "k_c", t, 11), "UTC").ok());              // March
  ASSERT_TRUE(fold.Apply(Call("w1", "k_z", t, 0), "Asia/Seoul").ok());        // nothing
  EXPECT_EQ(fold.Quantity("w1", M(2026, 4)), 8u);
  EXPECT_EQ(fold.Quantity("w1", M(2026, 3)), 7u);
  EXPECT_EQ(fold.Quantity("w2", M(2026, 3)), 11u);
  EXPECT_EQ(fold.Quantity("w2", M(2026, 4)), 0u);
  EXPECT_EQ(fold.Quantity("w3", M(2026, 4)), 0u);
  using KQ = std::vector<std::pair<std::string, uint64_t>>;
  EXPECT_EQ(fold.KeyQuantities("w1", M(2026, 4)), (KQ{{"k_a", 3}, {"k_b", 5}}));
  EXPECT_EQ(fold.KeyQuantities("w1", M(2026, 5)), KQ{});
  EXPECT_EQ(fold.Months("w1"), (std::vector<BillingMonth>{M(2026, 3), M(2026, 4)}));
  EXPECT_TRUE(fold.Months("w9").empty());
}

TEST(UsageFoldTest, TheZonePassedDecidesTheMonth) {
  UsageFold fold;
  int64_t t = Us("2026-03-31T15:00:00Z");
  ASSERT_TRUE(fold.Apply(Call("w", "k", t, 1), "Asia/Seoul").ok());
  ASSERT_TRUE(fold.Apply(Call("w", "k", t, 2), "UTC").ok());
  EXPECT_EQ(fold.Quantity("w", M(2026, 4)), 1u);
  EXPECT_EQ(fold.Quantity("w", M(2026, 3)), 2u);
}

TEST(UsageFoldTest, CallsAtExactMonthEdges) {
  UsageFold fold;
  auto [start, end] = Bounds(M(2026, 4), "Asia/Seoul");
  // Each Apply may answer from the month cached by the one before.
  for (int64_t t : {start, end, end - 1, start - 1, start, end}) {
    ASSERT_TRUE(fold.Apply(Call("w", "k", t, 1), "Asia/Seoul").ok());
  }
  EXPECT_EQ(fold.Quantity("w", M(2026, 3)), 1u);
  EXPECT_EQ(fold.Quantity("w", M(2026, 4)), 3u);
  EXPECT_EQ(fold.Quantity("w", M(2026, 5)), 2u);
}

TEST(UsageFoldTest, ErrorsLeaveTheFoldUnchanged) {
  UsageFold fold;
  int64_t t = Us("2026-05-10T00:00:00Z");
  Status bad_zone = fold.Apply(Call("w", "k", t, 1), "Not/A_Zone");
  EXPECT_EQ(bad_zone.field(), "billing_timezone");
  ASSERT_TRUE(fold.Apply(Call("w", "k", t, kU64Max), "UTC").ok());
  Status overflow = fold.Apply(Call("w", "k2", t, 1), "UTC");
  EXPECT_EQ(overflow.code(), Code::kResourceExhausted);
  EXPECT_EQ(overflow.field(), "units");
  EXPECT_EQ(fold.Quantity("w", M(2026, 5)), kU64Max);
  using KQ = std::vector<std::pair<std::string, uint64_t>>;
  EXPECT_EQ(fold.KeyQuantities("w", M(2026, 5)), (KQ{{"k", kU64Max}}));
}

// ---- Properties -----------------------------------------------------------------

// Half-even rounding written differently from the library: round half up,
// then step back from an odd result on an exact tie. REQUIRES: micros >= 0.
__int128 ModelRound(__int128 micros) {
  __int128 up = (2 * micros + kMicrosPerMinor) / (2 * kMicrosPerMinor);
  bool tie = micros % kMicrosPerMinor == kMicrosPerMinor / 2;
  if (tie && up % 2 != 0) up -= 1;
  return up;
}

// A price that is often a multiple of a quarter minor unit, so ties happen.
int64_t GenPrice(int64_t max_price) {
  return *rc::gen::oneOf(rc::gen::inRange<int64_t>(0, max_price + 1),
                         rc::gen::map(rc::gen::inRange<int64_t>(0, 17),
                                      [](int64_t k) { return k * 250'000; }));
}

// Returns a value in [0, 2^bits) for a random bits in 0..max_bits, so that
// small and huge magnitudes are both common. REQUIRES: max_bits <= 64.
uint64_t GenLogUniform(int max_bits) {
  int bits = *rc::gen::inRange(0, max_bits + 1);
  if (bits == 0) return 0;
  uint64_t end = bits == 64 ? kU64Max : uint64_t{1} << bits;
  return *rc::gen::inRange<uint64_t>(0, end);
}

// A valid plan of 1..6 tiers; width() gives each bounded tier's width - 1.
template <typename WidthGen>
PricePlanPublished GenPlanWith(PricingMode mode, WidthGen width, int64_t max_price) {
  size_t n = *rc::gen::inRange<size_t>(1, 7);
  std::vector<PriceTier> tiers;
  uint64_t up_to = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    up_to += 1 + width();  // widths stay below 2^60: six of them cannot overflow
    tiers.push_back({up_to, GenPrice(max_price)});
  }
  tiers.push_back({std::nullopt, GenPrice(max_price)});
  return Plan(mode, std::move(tiers));
}

// A plan whose bounded tiers are 1..max_width units wide.
PricePlanPublished GenPlan(PricingMode mode, uint64_t max_width, int64_t max_price) {
  return GenPlanWith(mode, [&] { return *rc::gen::inRange<uint64_t>(0, max_width); }, max_price);
}

// A plan whose bounded tier widths range over magnitudes up to 2^60.
PricePlanPublished GenWidePlan(PricingMode mode, int64_t max_price) {
  return GenPlanWith(mode, [] { return GenLogUniform(60); }, max_price);
}

// The tier of unit number `unit` (1-based): the first whose up_to >= unit.
size_t TierOfUnit(const std::vector<PriceTier>& tiers, uint64_t unit) {
  size_t i = 0;
  while (tiers[i].up_to.has_value() && *tiers[i].up_to < unit) i++;
  return i;
}

RC_GTEST_PROP(PricingProperty, GraduatedMatchesUnitByUnitModel, ()) {
  PricePlanPublished plan = GenPlan(PricingMode::kGraduated, 300, 5'000'000);
  uint64_t quantity = *rc::gen::inRange<uint64_t>(0, 2000);
  std::vector<uint64_t> units(plan.tiers.size(), 0);
  std::vector<__int128> micros(plan.tiers.size(), 0);
  for (uint64_t u = 1; u <= quantity; u++) {
    size_t t = TierOfUnit(plan.tiers, u);
    units[t]++;
    micros[t] += plan.tiers[t].unit_price_micros;
  }
  auto r = PriceUsage(plan, quantity);
  RC_ASSERT(r.ok());
  size_t line = 0;
  for (size_t t = 0; t < plan.tiers.size(); t++) {
    if (units[t] == 0) continue;
    RC_ASSERT(line < r->size());
    RC_ASSERT((*r)[line].quantity == units[t]);
    RC_ASSERT((*r)[line].unit_price_micros == plan.tiers[t].unit_price_micros);
    RC_ASSERT(static_cast<__int128>((*r)[line].amount_minor) == ModelRound(micros[t]));
    line++;
  }
  RC_ASSERT(line == r->size());
}

// The units of tier i for a total of q, by clamping q into the tier's range.
uint64_t ClampedUnits(const std::vector<PriceTier>& tiers, size_t i, uint64_t q) {
  uint64_t lo = i == 0 ? 0 : *tiers[i - 1].up_to;
  uint64_t hi = tiers[i].up_to.value_or(kU64Max);
  return std::min(q, hi) - std::min(q, lo);
}

// Graduated over the whole uint64 range: either the lines match the clamped
// per-tier model, or the model's total exceeds kAmountMinorMax and the result
// is ResourceExhausted.
RC_GTEST_PROP(PricingProperty, GraduatedMatchesPerTierModelOrOverflows, ()) {
  PricePlanPublished plan = GenWidePlan(
      PricingMode::kGraduated, *rc::gen::element(int64_t{5}, int64_t{5'000'000}, kUnitPriceMicrosMax));
  uint64_t quantity = GenLogUniform(64);
  std::vector<std::pair<uint64_t, __int128>> model;  // (units, rounded amount) per used tier
  __int128 model_total = 0;
  uint64_t model_units = 0;
  for (size_t i = 0; i < plan.tiers.size(); i++) {
    uint64_t n = ClampedUnits(plan.tiers, i, quantity);
    if (n == 0) continue;
    __int128 amount = ModelRound(static_cast<__int128>(n) * plan.tiers[i].unit_price_micros);
    model.push_back({n, amount});
    model_total += amount;
    model_units += n;
  }
  RC_ASSERT(model_units == quantity);
  auto r = PriceUsage(plan, quantity);
  if (model_total > kAmountMinorMax) {
    RC_ASSERT(!r.ok());
    RC_ASSERT(r.status().code() == Code::kResourceExhausted);
    return;
  }
  RC_ASSERT(r.ok());
  RC_ASSERT(r->size() == model.size());
  uint64_t line_units = 0;
  for (size_t i = 0; i < model.size(); i++) {
    RC_ASSERT((*r)[i].quantity == model[i].first);
    RC_ASSERT(static_cast<__int128>((*r)[i].amount_minor) == model[i].second);
    line_units += (*r)[i].quantity;
  }
  RC_ASSERT(line_units == quantity);
  RC_ASSERT(static_cast<__int128>(Total(*r)) == model_total);
}

RC_GTEST_PROP(PricingProperty, VolumeMatchesModel, ()) {
  PricePlanPublished plan = GenWidePlan(PricingMode::kVolume, 5'000'000);
  uint64_t quantity = GenLogUniform(40);
  auto r = PriceUsage(plan, quantity);
  RC_ASSERT(r.ok());
  if (quantity == 0) {
    RC_ASSERT(r->empty());
    return;
  }
  // The tier the total falls in, scanning from the top: the last tier whose
  // lower bound (the previous up_to) is below the total.
  size_t tier = plan.tiers.size() - 1;
  while (tier > 0 && quantity <= *plan.tiers[tier - 1].up_to) tier--;
  int64_t price = plan.tiers[tier].unit_price_micros;
  RC_ASSERT(r->size() == 1u);
  RC_ASSERT((*r)[0].quantity == quantity);
  RC_ASSERT((*r)[0].unit_price_micros == price);
  RC_ASSERT(static_cast<__int128>((*r)[0].amount_minor) ==
            ModelRound(static_cast<__int128>(quantity) * price));
}

// Every line is rounded once: within half a minor unit of exact, ties to even.
RC_GTEST_PROP(PricingProperty, EveryLineIsRoundedOnceHalfToEven, ()) {
  PricingMode mode = *rc::gen::element(PricingMode::kGraduated, PricingMode::kVolume);
  PricePlanPublished plan = GenPlan(mode, 100'000, 50'000'000);
  uint64_t quantity = *rc::gen::inRange<uint64_t>(0, 10'000'000);
  auto r = PriceUsage(plan, quantity);
  RC_ASSERT(r.ok());
  for (const PricedLine& line : *r) {
    RC_ASSERT(line.quantity > 0u);
    __int128 exact = static_cast<__int128>(line.quantity) * line.unit_price_micros;
    __int128 diff = static_cast<__int128>(line.amount_minor) * kMicrosPerMinor - exact;
    RC_ASSERT(diff <= kMicrosPerMinor / 2 && diff >= -kMicrosPerMinor / 2);
    if (diff == kMicrosPerMinor / 2 || diff == -kMicrosPerMinor / 2) {
      RC_ASSERT(line.amount_minor % 2 == 0);
    }
  }
}

RC_GTEST_PROP(PricingProperty, RoundHalfEvenIsSymmetricAndClosest, (int64_t micros)) {
  int64_t r = RoundHalfEvenMicros(micros);
  RC_ASSERT(RoundHalfEvenMicros(-static_cast<__int128>(micros)) == -r);
  __int128 diff = static_cast<__int128>(r) * kMicrosPerMinor - micros;
  RC_ASSERT(diff <= kMicrosPerMinor / 2 && diff >= -kMicrosPerMinor / 2);
  if (diff == kMicrosPerMinor / 2 || diff == -kMicrosPerMinor / 2) RC_ASSERT(r % 2 == 0);
}

const std::vector<std::string> kZones = {"UTC",           "Asia/Seoul",          "America/New_York",
                                         "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu",
                                         "Pacific/Chatham"};

RC_GTEST_PROP(CalendarProperty, MonthOfLiesInItsBounds, ()) {
  static const int64_t kFromUs = Us("2000-01-01T00:00:00Z");
  static const int64_t kToUs = Us("2100-01-01T00:00:00Z");
  std::string zone = *rc::gen::elementOf(kZones);
  int64_t t = *rc::gen::inRange<int64_t>(kFromUs, kToUs);
  auto month = MonthOf(t, zone);
  RC_ASSERT(month.ok());
  auto bounds = MonthBoundsUs(*month, zone);
  RC_ASSERT(bounds.ok());
  RC_ASSERT(bounds->first <= t);
  RC_ASSERT(t < bounds->second);
  auto next = MonthBoundsUs(NextMonth(*month), zone);
  RC_ASSERT(next.ok());
  RC_ASSERT(next->first == bounds->second);
  auto parsed = ParseBillingMonth(month->ToString(), "month");
  RC_ASSERT(parsed.ok());
  RC_ASSERT(*parsed == *month);
}

// Aimed at the edges: a random month's first and last microseconds and their
// neighbours, and a random instant inside.
RC_GTEST_PROP(CalendarProperty, BoundsAgreeWithMonthOfAtTheEdges, ()) {
  std::string zone = *rc::gen::elementOf(kZones);
  BillingMonth m{*rc::gen::inRange(2000, 2100), *rc::gen::inRange(1u, 13u)};
  auto bounds = MonthBoundsUs(m, zone);
  RC_ASSERT(bounds.ok());
  auto [start, end] = *bounds;
  // Months are 28..31 days, give or take a DST hour (or two, in odd zones).
  RC_ASSERT(end - start >= 28 * kDayUs - 2 * kHourUs);
  RC_ASSERT(end - start <= 31 * kDayUs + 2 * kHourUs);
  int64_t inside = start + *rc::gen::inRange<int64_t>(0, end - start);
  for (int64_t t : {start, end - 1, inside}) {
    auto got = MonthOf(t, zone);
    RC_ASSERT(got.ok());
    RC_ASSERT(*got == m);
  }
  RC_ASSERT(*MonthOf(end, zone) == NextMonth(m));
  RC_ASSERT(*MonthOf(start - 1, zone) != m);
}

RC_GTEST_PROP(UsageFoldProperty, MatchesAnIndependentTally, ()) {
  static const int64_t kFromUs = Us("2025-11-01T00:00:00Z");
  static const int64_t kToUs = Us("2026-05-01T00:00:00Z");
  const std::map<std::string, std::string> zone_of = {
      {"w1", "Asia/Seoul"}, {"w2", "America/New_York"}, {"w3", "UTC"}};
  size_t n = *rc::gen::inRange<size_t>(0, 200);
  UsageFold fold;
  // (workspace, "YYYY-MM", key) -> units, tallied with MonthOf directly.
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> model;
  std::map<std::string, uint64_t> applied;
  for (size_t i = 0; i < n; i++) {
    std::string ws = *rc::gen::element<std::string>("w1", "w2", "w3");
    std::string key = *rc::gen::element<std::string>("k1", "k2", "k3", "k4");
    int64_t t = *rc::gen::inRange<int64_t>(kFromUs, kToUs);
    uint64_t units = *rc::gen::inRange<uint64_t>(0, 1'000'000);
    RC_ASSERT(fold.Apply(Call(ws, key, t, units), zone_of.at(ws)).ok());
    applied[ws] += units;
    if (units > 0) model[{ws, MonthOf(t, zone_of.at(ws))->ToString(), key}] += units;
  }
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> folded;
  for (const auto& [ws, zone] : zone_of) {
    uint64_t ws_total = 0;
    for (const BillingMonth& m : fold.Months(ws)) {
      uint64_t month_total = 0;
      for (const auto& [key, units] : fold.KeyQuantities(ws, m)) {
        RC_ASSERT(units > 0u);
        folded[{ws, m.ToString(), key}] = units;
        month_total += units;
      }
      RC_ASSERT(month_total == fold.Quantity(ws, m));
      ws_total += month_total;
    }
    RC_ASSERT(ws_total == applied[ws]);
  }
  RC_ASSERT(folded == model);
}

}  // namespace
}  // namespace keyledger
