// Invoicing: builds one month's InvoiceIssued for a workspace from its usage,
// its price plan and the late usage of earlier months; computes and verifies
// the invoice digest; renders an invoice as CSV and JSON for finance. Pure
// functions on integers; no floating point, no clock, no storage.
//
// ---- What an invoice holds ----------------------------------------------------
//
// Usage is billed monthly, the month after: invoice_number n of workspace w for
// month m prices w's units in m as of ledger position covers_sequence, under
// the plan version in force at m's end. Its lines, in this order:
//   1. "tier" lines: PriceUsage(plan, Q) where Q is the sum of key_usage, one
//      line per tier with units, in tier order (billing/pricing.h). month = m.
//   2. one "monthly_fee" line if plan.monthly_fee_minor > 0: quantity 1,
//      unit_price_micros 0, amount_minor = the fee. month = m.
//   3. one "adjustment" line per earlier month with late usage, oldest first
//      (see below). month = that earlier month.
// unit_price_micros is non-zero only on "tier" lines, where amount_minor =
// round_half_even(quantity x unit_price_micros / 10^6); on the other kinds it
// is 0 and amount_minor is the amount itself.
// subtotal_minor = the sum of every line's amount_minor; there is no tax, so
// total_minor = subtotal_minor. Only an adjustment can be negative (see below),
// so a total below 0 is a credit owed to the customer; it is issued as is and
// not carried forward. currency, plan_id and plan_version are the
// plan's; key_usage is the input's (units > 0 per key, sorted by key id).
//
// Zero invoices: every workspace with a plan gets an invoice every month. With
// no usage, a fee line alone; with no usage, no fee and no late usage, an
// invoice with no lines and a total of 0. It is still issued so that invoice
// numbers and covers_sequence advance month by month, and so that the month
// has an invoiced quantity (0) that later late usage is adjusted against.
//
// ---- Late usage: adjustment lines ---------------------------------------------
//
// A call that occurred in an earlier month e but was recorded after e's invoice
// never changes that invoice. It appears on the workspace's NEXT invoice as one
// "adjustment" line for e, priced with e's plan version Pe (the version in force
// at e's end, the one e's own invoice used):
//   C = e's full corrected quantity (every call of e known at this invoice's
//       covers_sequence);
//   I = the units of e already billed (e's invoice plus earlier adjustments);
//   A = the usage amount of e already billed (the sum of those invoices' tier
//       and adjustment lines for e, excluding the monthly fee);
//   line: quantity = C - I, unit_price_micros = 0,
//         amount_minor = Total(PriceUsage(Pe, C)) - A,
//   where Total is the sum of the rounded lines.
// That is "re-price the month's total, minus what was billed", not "price only
// the extra units": under graduated tiers the two differ (priced alone, the
// extra units would start again at tier 1, though they are units I+1..C of the
// month; and each tier line is rounded once, so even within one tier
// round(a) + round(b) may differ from round(a + b)), and only this rule makes
// the sum of every invoice's usage amounts for e equal
// Total(PriceUsage(Pe, C)), the correct price of e. Under volume pricing a
// larger quantity can cost less (every unit drops to a cheaper tier), so an
// adjustment's amount may be NEGATIVE: a credit. Its quantity is never negative
// (calls are only added). The description reads e.g. "late usage for 2026-10:
// +123 units; 1234 units re-priced under plan_1 v3: 24.68, minus 12.34 already
// invoiced for 1111 units", so each adjustment can be reproduced from the line
// alone.
//
// ---- The digest -----------------------------------------------------------------
//
// digest = BLAKE2b-256 (32-byte output, no key) of InvoiceCanonicalBytes:
//   str("keyledger.invoice.v1")
//   str(workspace_id) str(month) u64(invoice_number) str(currency)
//   u64(number of lines), then per line in order:
//     str(kind) str(description) u64(quantity) i64(unit_price_micros)
//     i64(amount_minor) str(month)
//   u64(number of key_usage entries), then per entry in order:
//     str(key_id) u64(quantity)
//   i64(subtotal_minor) i64(total_minor) u64(covers_sequence)
//   str(plan_id) u64(plan_version)
// where u64(x) is x as 8 bytes big-endian; i64(x) is x as 8 bytes big-endian
// two's complement; str(s) is u64(byte length of s) followed by s's bytes
// (UTF-8 as stored, no terminator). That is every InvoiceIssued field in schema
// (ordinal) order except the digest itself, so any change to any field changes
// the bytes, and the length prefixes keep adjacent strings from running into
// each other.
//
// Thread safety: stateless functions, safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "billing/calendar.h"
#include "ledger/event.h"
#include "ledger/status.h"

namespace keyledger {

// Limits of one invoice's input. Together they keep the encoded
// InvoiceIssued below the ledger's one-event limit (1 MiB); a test encodes the
// largest invoice they admit. keyledger's key ids are 30 bytes, so a month
// may bill the full 16,384 keys with usage; ids of 128 bytes, ~3,800.
constexpr size_t kInvoiceIdBytesMax = 128;             // workspace_id and each key_id
constexpr size_t kInvoiceKeyUsagesMax = 16'384;        // keys with usage in one month
constexpr size_t kInvoiceKeyIdBytesTotalMax = 512 * 1024;  // those keys' ids together
constexpr size_t kInvoiceAdjustmentsMax = 120;  // earlier months adjusted at once (10 years)

// The late usage of one earlier month (see "Late usage" above).
struct Adjustment {
  BillingMonth month;                        // the earlier month; before the invoice's month
  const PricePlanPublished* plan = nullptr;  // that month's plan version; not owned
  uint64_t corrected_quantity = 0;           // C: the month's units now known
  uint64_t invoiced_quantity = 0;            // I: units of the month already billed
  int64_t invoiced_usage_amount_minor = 0;   // A: usage amount of the month already billed
};

struct InvoiceInput {
  std::string workspace_id;
  BillingMonth month;            // the month invoiced
  uint64_t invoice_number = 0;   // gap-free, from 1; assigned by the caller
  uint64_t covers_sequence = 0;  // the ledger position key_usage and adjustments reflect
  // The plan version in force at the month's end; not owned, must outlive the call.
  const PricePlanPublished* plan = nullptr;
  // This month's units per key as of covers_sequence: units > 0, strictly
  // ascending by key id (bytewise), as UsageFold::KeyQuantities returns them.
  std::vector<KeyUsage> key_usage;
  // Earlier months with late usage, strictly ascending by month.
  std::vector<Adjustment> adjustments;
};

// Returns the invoice for `input` (see the rules above), digest included.
// Errors, all InvalidArgument unless noted, with the field named:
//   "workspace_id"          empty or longer than kInvoiceIdBytesMax
//   "month"                 month outside 1..12 or year outside
//                           kBillingYearMin..kBillingYearMax
//   "invoice_number"        0 (numbers start at 1)
//   "plan"                  null
//   "plan.<field>"          the plan fails ValidatePricePlan (<field> as there)
//   "key_usage"             ResourceExhausted: more than kInvoiceKeyUsagesMax
//                           entries, key ids longer than
//                           kInvoiceKeyIdBytesTotalMax together, the units
//                           sum past 2^64-1, or the usage amount exceeds
//                           kAmountMinorMax
//   "key_usage[i].key_id"   empty, longer than kInvoiceIdBytesMax, or not
//                           strictly after the previous key id
//   "key_usage[i].quantity" 0
//   "adjustments"           ResourceExhausted: more than kInvoiceAdjustmentsMax
//   "adjustments[i].month"  invalid (as "month"), not before the invoice's
//                           month, or not strictly after the previous
//                           adjustment's month
//   "adjustments[i].plan"   null
//   "adjustments[i].plan.<field>"  the plan fails ValidatePricePlan; or
//                           "adjustments[i].plan.currency" when its currency
//                           differs from the invoice plan's (one invoice, one
//                           currency)
//   "adjustments[i].corrected_quantity"  not greater than invoiced_quantity (an
//                           adjustment without late units is a caller bug);
//                           ResourceExhausted if its price exceeds kAmountMinorMax
//   "adjustments[i].invoiced_usage_amount_minor"  outside 0..kAmountMinorMax
Result<InvoiceIssued> BuildInvoice(const InvoiceInput& input);

// Returns the canonical bytes of `invoice` that its digest covers (layout in
// "The digest" above; the digest field itself is not read).
std::string InvoiceCanonicalBytes(const InvoiceIssued& invoice);

// Returns BLAKE2b-256 of InvoiceCanonicalBytes(invoice).
Hash InvoiceDigest(const InvoiceIssued& invoice);

// Returns OK if invoice.digest equals InvoiceDigest(invoice), Corruption
// ("invoice digest mismatch", sequence 0) otherwise. Checks only the digest,
// not that the amounts add up.
Status VerifyInvoiceDigest(const InvoiceIssued& invoice);

// Returns `invoice` as RFC 4180 CSV (CRLF line ends, the last row ended too).
// Columns: invoice_number, workspace_id, month, line_kind, line_month,
// description, quantity, unit_price_micros, amount_minor, amount, currency.
// Rows: the header; one per line (line_kind = the line's kind); one per
// key_usage entry (line_kind "key_usage", line_month = the invoice's month,
// description = the key id, quantity = its units, price and amounts empty);
// one "total" row (line_month and quantity empty, unit_price_micros empty,
// amount_minor = total_minor). `amount` is FormatMinor(amount_minor,
// currency_exponent). A field containing a comma, a double quote, CR or LF is
// quoted, with its quotes doubled; no other field is.
// REQUIRES: currency_exponent <= kCurrencyExponentMax (use
// CurrencyExponent(invoice.currency)).
std::string InvoiceToCsv(const InvoiceIssued& invoice, uint8_t currency_exponent);
// Returns InvoiceToCsv's header row (with its CRLF): all a CSV of no invoice holds.
std::string InvoiceCsvHeader();

// Returns `invoice` as JSON for finance:
//   {"invoice_number", "workspace_id", "month", "currency", "currency_exponent",
//    "plan_id", "plan_version", "covers_sequence",
//    "lines": [{"kind", "month", "description", "quantity", "unit_price_micros",
//               "amount_minor", "amount"}],
//    "key_usage": [{"key_id", "quantity"}],
//    "subtotal_minor", "subtotal", "total_minor", "total", "digest"}
// where *_minor, quantities and unit prices are JSON integers, "amount",
// "subtotal" and "total" are FormatMinor strings, and "digest" is 64 lower-case
// hex digits.
// REQUIRES: exponent <= kCurrencyExponentMax.
nlohmann::json InvoiceToJson(const InvoiceIssued& invoice, uint8_t exponent);

}  // namespace keyledger
