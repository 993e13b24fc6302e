// Pricing: currencies, price-plan validation, tiered pricing of a month's
// usage, and money formatting. Pure functions on integers; no floating point.
//
// Money is an integer number of minor units (cents for USD, won for KRW, fils
// for KWD); the exponent of the currency says how many minor units make a major
// one. Unit prices are integer micros: millionths of one minor unit.
//
// A plan is the PricePlanPublished event itself (ledger/event.h): it already
// holds every field a price plan has, and pricing the stored event directly
// means there is no second copy to keep in step with the persistent format.
//
// Tier semantics: tiers are ordered; up_to is INCLUSIVE. With up_to[-1] = 0,
// tier i covers the units (up_to[i-1], up_to[i]], i.e. units up_to[i-1]+1 ..
// up_to[i]; the last tier has no up_to and covers everything above.
//   graduated: each tier prices the units that fall in it, one line per tier
//              that has units.
//   volume:    all units are priced at the tier that the total falls in, one
//              line (so a total of exactly up_to[i] uses tier i).
//
// Rounding: a line's amount is quantity x unit_price_micros / 1'000'000,
// computed exactly in 128 bits and rounded half to even exactly once. An
// invoice's total is the sum of its rounded lines, never a rounded sum.
//
// Thread safety: stateless functions, safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/event.h"
#include "ledger/status.h"

namespace keyledger {

// The only metric a plan can price today: ApiCallRecorded::units.
inline constexpr std::string_view kPriceMetricUnits = "units";

// Limits of a valid plan.
constexpr size_t kPriceTiersMax = 64;
// 10^15 micros = 10^9 minor units per unit (ten million dollars at USD).
constexpr int64_t kUnitPriceMicrosMax = 1'000'000'000'000'000;
// The largest amount of one priced line, of the sum of PriceUsage's lines, and
// of a monthly fee: 10^15 minor units (ten trillion dollars at USD). Keeps
// "fee + usage" far from int64 overflow for the invoice builder.
constexpr int64_t kAmountMinorMax = 1'000'000'000'000'000;
constexpr int64_t kMonthlyFeeMinorMax = kAmountMinorMax;
// The largest currency exponent in ISO 4217 (CLF, UYW).
constexpr uint8_t kCurrencyExponentMax = 4;

constexpr int64_t kMicrosPerMinor = 1'000'000;

// Returns the ISO 4217 minor-unit exponent of `iso_code` (upper-case, e.g.
// "USD" -> 2, "KRW" -> 0, "KWD" -> 3). Returns InvalidArgument field
// "currency" for a code not in the table (which covers the active ISO 4217
// codes that have a minor unit defined).
Result<uint8_t> CurrencyExponent(std::string_view iso_code);

// Returns OK if `plan` can be priced, or InvalidArgument naming the first bad
// field:
//   "currency"                    not a known ISO 4217 code
//   "currency_exponent"           differs from CurrencyExponent(currency)
//   "metric"                      not kPriceMetricUnits
//   "mode"                        not graduated or volume
//   "tiers"                       empty, or more than kPriceTiersMax
//   "tiers[i].up_to"              missing on a tier that is not the last;
//                                 present on the last tier; 0 on the first
//                                 tier; not greater than the previous up_to
//   "tiers[i].unit_price_micros"  outside 0..kUnitPriceMicrosMax
//   "monthly_fee_minor"           outside 0..kMonthlyFeeMinorMax
// plan_id and version are identity, checked by whoever publishes the plan.
Status ValidatePricePlan(const PricePlanPublished& plan);

// One priced line of usage. Mirrors the usage part of InvoiceLine.
struct PricedLine {
  std::string kind;         // "tier"
  std::string description;  // e.g. "units 1001-10000 (tier 2)"; stable, it is persisted
  uint64_t quantity = 0;
  int64_t unit_price_micros = 0;
  int64_t amount_minor = 0;  // RoundHalfEvenMicros(quantity * unit_price_micros)
  bool operator==(const PricedLine&) const = default;
};

// Prices `quantity` units of one month under `plan` (see the tier semantics
// above). Returns the lines in tier order; a tier with no units has no line, so
// a quantity of 0 yields no lines at all. The monthly fee is not a usage line:
// the invoice builder adds it. Every line has quantity > 0 and
// 0 <= amount_minor <= kAmountMinorMax, and the sum of the amounts is
// <= kAmountMinorMax.
// Errors: whatever ValidatePricePlan(plan) returns; ResourceExhausted field
// "quantity" if a line or the sum would exceed kAmountMinorMax.
Result<std::vector<PricedLine>> PriceUsage(const PricePlanPublished& plan, uint64_t quantity);

// Returns `micros` / 1'000'000 rounded half to even (2.5 -> 2, 3.5 -> 4,
// -2.5 -> -2, -3.5 -> -4).
// REQUIRES: the result fits in int64_t.
int64_t RoundHalfEvenMicros(__int128 micros);

// Formats an amount of minor units as a plain decimal in major units:
// (1234, 2) -> "12.34", (1234, 0) -> "1234", (-5, 2) -> "-0.05",
// (5, 3) -> "0.005". No currency symbol, no grouping.
// REQUIRES: exponent <= kCurrencyExponentMax.
std::string FormatMinor(int64_t amount_minor, uint8_t exponent);

}  // namespace keyledger
