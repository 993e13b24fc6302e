#include "billing/pricing.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <limits>

namespace keyledger {

namespace {

struct CurrencyInfo {
  std::string_view code;
  uint8_t exponent;
};

// ISO 4217 active codes with a defined minor unit (funds codes such as BOV and
// precious metals such as XAU have none and are left out), sorted by code.
// HUF, TWD and IDR have exponent 2 in ISO 4217 even though cash rarely uses it.
constexpr std::array kCurrencies = std::to_array<CurrencyInfo>({
    {"AED", 2}, {"AFN", 2}, {"ALL", 2}, {"AMD", 2}, {"ANG", 2}, {"AOA", 2}, {"ARS", 2},
    {"AUD", 2}, {"AWG", 2}, {"AZN", 2}, {"BAM", 2}, {"BBD", 2}, {"BDT", 2}, {"BGN", 2},
    {"BHD", 3}, {"BIF", 0}, {"BMD", 2}, {"BND", 2}, {"BOB", 2}, {"BRL", 2}, {"BSD", 2},
    {"BTN", 2}, {"BWP", 2}, {"BYN", 2}, {"BZD", 2}, {"CAD", 2}, {"CDF", 2}, {"CHF", 2},
    {"CLF", 4}, {"CLP", 0}, {"CNY", 2}, {"COP", 2}, {"CRC", 2}, {"CUP", 2}, {"CVE", 2},
    {"CZK", 2}, {"DJF", 0}, {"DKK", 2}, {"DOP", 2}, {"DZD", 2}, {"EGP", 2}, {"ERN", 2},
    {"ETB", 2}, {"EUR", 2}, {"FJD", 2}, {"FKP", 2}, {"GBP", 2}, {"GEL", 2}, {"GHS", 2},
    {"GIP", 2}, {"GMD", 2}, {"GNF", 0}, {"GTQ", 2}, {"GYD", 2}, {"HKD", 2}, {"HNL", 2},
    {"HTG", 2}, {"HUF", 2}, {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"IQD", 3}, {"IRR", 2},
    {"ISK", 0}, {"JMD", 2}, {"JOD", 3}, {"JPY", 0}, {"KES", 2}, {"KGS", 2}, {"KHR", 2},
    {"KMF", 0}, {"KPW", 2}, {"KRW", 0}, {"KWD", 3}, {"KYD", 2}, {"KZT", 2}, {"LAK", 2},
    {"LBP", 2}, {"LKR", 2}, {"LRD", 2}, {"LSL", 2}, {"LYD", 3}, {"MAD", 2}, {"MDL", 2},
    {"MGA", 2}, {"MKD", 2}, {"MMK", 2}, {"MNT", 2}, {"MOP", 2}, {"MRU", 2}, {"MUR", 2},
    {"MVR", 2}, {"MWK", 2}, {"MXN", 2}, {"MYR", 2}, {"MZN", 2}, {"NAD", 2}, {"NGN", 2},
    {"NIO", 2}, {"NOK", 2}, {"NPR", 2}, {"NZD", 2}, {"OMR", 3}, {"PAB", 2}, {"PEN", 2},
    {"PGK", 2}, {"PHP", 2}, {"PKR", 2}, {"PLN", 2}, {"PYG", 0}, {"QAR", 2}, {"RON", 2},
    {"RSD", 2}, {"RUB", 2}, {"RWF", 0}, {"SAR", 2}, {"SBD", 2}, {"SCR", 2}, {"SDG", 2},
    {"SEK", 2}, {"SGD", 2}, {"SHP", 2}, {"SLE", 2}, {"SOS", 2}, {"SRD", 2}, {"SSP", 2},
    {"STN", 2}, {"SVC", 2}, {"SYP", 2}, {"SZL", 2}, {"THB", 2}, {"TJS", 2}, {"TMT", 2},
    {"TND", 3}, {"TOP", 2}, {"TRY", 2}, {"TTD", 2}, {"TWD", 2}, {"TZS", 2}, {"UAH", 2},
    {"UGX", 0}, {"USD", 2}, {"UYU", 2}, {"UYW", 4}, {"UZS", 2}, {"VED", 2}, {"VES", 2},
    {"VND", 0}, {"VUV", 0}, {"WST", 2}, {"XAF", 0}, {"XCD", 2}, {"XCG", 2}, {"XOF", 0},
    {"XPF", 0}, {"YER", 2}, {"ZAR", 2}, {"ZMW", 2}, {"ZWG", 2},
});

constexpr bool CodeLess(const CurrencyInfo& a, const CurrencyInfo& b) { return a.code < b.code; }
static_assert(std::is_sorted(kCurrencies.begin(), kCurrencies.end(), CodeLess));
static_assert(std::all_of(kCurrencies.begin(), kCurrencies.end(),
                          [](const CurrencyInfo& c) { return c.exponent <= kCurrencyExponentMax; }));

std::string TierField(size_t i, std::string_view member) {
  std::string field = "tiers[" + std::to_string(i) + "].";
  field.append(member);
  return field;
}

// Checks tiers[i].up_to against the previous tier's (nullopt for i == 0).
Status ValidateUpTo(const std::vector<PriceTier>& tiers, size_t i) {
  const std::optional<uint64_t>& up_to = tiers[i].up_to;
  bool last = i + 1 == tiers.size();
  if (last && up_to.has_value()) {
    return Status::InvalidArgument("the last tier must have no upper bound (up_to null)",
                                   TierField(i, "up_to"));
  }
  if (last) return Status::Ok();
  if (!up_to.has_value()) {
    return Status::InvalidArgument("only the last tier may have no upper bound",
                                   TierField(i, "up_to"));
  }
  if (i == 0 && *up_to == 0) {
    return Status::InvalidArgument("up_to must be at least 1", TierField(i, "up_to"));
  }
  if (i > 0 && *up_to <= *tiers[i - 1].up_to) {
    return Status::InvalidArgument("up_to must be greater than the previous tier's up_to",
                                   TierField(i, "up_to"));
  }
  return Status::Ok();
}

Status ValidateTiers(const std::vector<PriceTier>& tiers) {
  if (tiers.empty() || tiers.size() > kPriceTiersMax) {
    return Status::InvalidArgument(
        "a plan needs 1.." + std::to_string(kPriceTiersMax) + " tiers", "tiers");
  }
  for (size_t i = 0; i < tiers.size(); i++) {
    KL_RETURN_IF_ERROR(ValidateUpTo(tiers, i));
    int64_t price = tiers[i].unit_price_micros;
    if (price < 0 || price > kUnitPriceMicrosMax) {
      return Status::InvalidArgument(
          "unit_price_micros must be 0.." + std::to_string(kUnitPriceMicrosMax),
          TierField(i, "unit_price_micros"));
    }
  }
  return Status::Ok();
}

// "units 1001-10000 (tier 2)": the units that `quantity` units after `first_unit - 1`
// cover. REQUIRES: quantity > 0.
std::string Describe(uint64_t first_unit, uint64_t quantity, size_t tier, bool volume) {
  assert(quantity > 0);
  std::string s = "units " + std::to_string(first_unit) + "-" +
                  std::to_string(first_unit + (quantity - 1));
  s += volume ? " (volume tier " : " (tier ";
  s += std::to_string(tier + 1);
  s += ")";
  return s;
}

// Prices one line and adds its amount to *sum_minor. Returns ResourceExhausted
// field "quantity" if the line or the sum would exceed kAmountMinorMax.
// REQUIRES: quantity > 0, 0 <= price <= kUnitPriceMicrosMax, *sum_minor <= kAmountMinorMax.
Result<PricedLine> PriceLine(uint64_t quantity, int64_t price, std::string description,
                             int64_t* sum_minor) {
  assert(quantity > 0 && price >= 0 && price <= kUnitPriceMicrosMax);
  assert(*sum_minor >= 0 && *sum_minor <= kAmountMinorMax);
  // < 2^64 * 2^50 = 2^114: exact in 128 bits.
  __int128 micros = static_cast<__int128>(quantity) * price;
  auto too_large = [] {
    return Status::ResourceExhausted(
        "the usage amount exceeds " + std::to_string(kAmountMinorMax) + " minor units",
        "quantity");
  };
  if (micros / kMicrosPerMinor > kAmountMinorMax) return too_large();
  int64_t amount = RoundHalfEvenMicros(micros);
  if (amount > kAmountMinorMax - *sum_minor) return too_large();
  *sum_minor += amount;
  return PricedLine{"tier", std::move(description), quantity, price, amount};
}

Result<std::vector<PricedLine>> PriceGraduated(const std::vector<PriceTier>& tiers,
                                               uint64_t quantity) {
  std::vector<PricedLine> lines;
  int64_t sum_minor = 0;
  uint64_t below = 0;  // units priced by earlier tiers
  for (size_t i = 0; i < tiers.size() && below < quantity; i++) {
    uint64_t up_to = tiers[i].up_to.value_or(std::numeric_limits<uint64_t>::max());
    assert(up_to > below);
    uint64_t count = std::min(quantity, up_to) - below;
    KL_ASSIGN_OR_RETURN(PricedLine line,
                        PriceLine(count, tiers[i].unit_price_micros,
                                  Describe(below + 1, count, i, false), &sum_minor));
    lines.push_back(std::move(line));
    below += count;
  }
  assert(below == quantity);  // the last tier is unbounded
  return lines;
}

Result<std::vector<PricedLine>> PriceVolume(const std::vector<PriceTier>& tiers,
                                            uint64_t quantity) {
  std::vector<PricedLine> lines;
  if (quantity == 0) return lines;
  size_t i = 0;
  while (tiers[i].up_to.has_value() && quantity > *tiers[i].up_to) i++;
  int64_t sum_minor = 0;
  KL_ASSIGN_OR_RETURN(PricedLine line, PriceLine(quantity, tiers[i].unit_price_micros,
                                                 Describe(1, quantity, i, true), &sum_minor));
  lines.push_back(std::move(line));
  return lines;
}

}  // namespace

Result<uint8_t> CurrencyExponent(std::string_view iso_code) {
  auto it = std::lower_bound(kCurrencies.begin(), kCurrencies.end(), CurrencyInfo{iso_code, 0},
                             CodeLess);
  if (it == kCurrencies.end() || it->code != iso_code) {
    return Status::InvalidArgument(
        "unknown currency; use an upper-case ISO 4217 code such as \"USD\"", "currency");
  }
  return it->exponent;
}

Status ValidatePricePlan(const PricePlanPublished& plan) {
  KL_ASSIGN_OR_RETURN(uint8_t exponent, CurrencyExponent(plan.currency));
  if (plan.currency_exponent != exponent) {
    return Status::InvalidArgument(
        "currency_exponent must be " + std::to_string(exponent) + " for " + plan.currency,
        "currency_exponent");
  }
  if (plan.metric != kPriceMetricUnits) {
    return Status::InvalidArgument("metric must be \"units\"", "metric");
  }
  if (plan.mode != PricingMode::kGraduated && plan.mode != PricingMode::kVolume) {
    return Status::InvalidArgument("mode must be \"graduated\" or \"volume\"", "mode");
  }
  KL_RETURN_IF_ERROR(ValidateTiers(plan.tiers));
  if (plan.monthly_fee_minor < 0 || plan.monthly_fee_minor > kMonthlyFeeMinorMax) {
    return Status::InvalidArgument(
        "monthly_fee_minor must be 0.." + std::to_string(kMonthlyFeeMinorMax),
        "monthly_fee_minor");
  }
  return Status::Ok();
}

Result<std::vector<PricedLine>> PriceUsage(const PricePlanPublished& plan, uint64_t quantity) {
  KL_RETURN_IF_ERROR(ValidatePricePlan(plan));
  if (plan.mode == PricingMode::kVolume) return PriceVolume(plan.tiers, quantity);
  return PriceGraduated(plan.tiers, quantity);
}

int64_t RoundHalfEvenMicros(__int128 micros) {
  constexpr __int128 kHalf = kMicrosPerMinor / 2;
  __int128 quotient = micros / kMicrosPerMinor;   // truncated toward zero
  __int128 remainder = micros % kMicrosPerMinor;  // same sign as micros
  __int128 magnitude = remainder < 0 ? -remainder : remainder;
  if (magnitude > kHalf || (magnitude == kHalf && quotient % 2 != 0)) {
    quotient += micros < 0 ? -1 : 1;
  }
  assert(quotient >= std::numeric_limits<int64_t>::min() &&
         quotient <= std::numeric_limits<int64_t>::max());
  return static_cast<int64_t>(quotient);
}

std::string FormatMinor(int64_t amount_minor, uint8_t exponent) {
  assert(exponent <= kCurrencyExponentMax);
  // Unsigned negation: INT64_MIN has no positive int64 counterpart.
  uint64_t magnitude = static_cast<uint64_t>(amount_minor);
  if (amount_minor < 0) magnitude = 0 - magnitude;
  std::string digits = std::to_string(magnitude);
  if (exponent > 0) {
    if (digits.size() <= exponent) digits.insert(0, exponent + 1 - digits.size(), '0');
    digits.insert(digits.size() - exponent, 1, '.');
  }
  if (amount_minor < 0) digits.insert(0, 1, '-');
  return digits;
}

}  // namespace keyledger
