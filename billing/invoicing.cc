#include "billing/invoicing.h"

#include <array>
#include <cassert>
#include <limits>
#include <utility>

#include "billing/pricing.h"
#include "ledger/hash.h"

namespace keyledger {

namespace {

constexpr std::string_view kDigestDomain = "keyledger.invoice.v1";
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// ---- Input validation -------------------------------------------------------------

bool ValidMonth(const BillingMonth& m) {
  return m.year >= kBillingYearMin && m.year <= kBillingYearMax && m.month >= 1 && m.month <= 12;
}

std::string Indexed(std::string_view list, size_t i, std::string_view member) {
  std::string field(list);
  field.push_back('[');
  field.append(std::to_string(i));
  field.push_back(']');
  if (member.empty()) return field;
  field.push_back('.');
  field.append(member);
  return field;
}

// Validates a plan input named `field`, prefixing ValidatePricePlan's field.
Status ValidatePlanInput(const PricePlanPublished* plan, const std::string& field) {
  if (plan == nullptr) return Status::InvalidArgument("a price plan is required", field);
  Status s = ValidatePricePlan(*plan);
  if (s.ok()) return s;
  // ValidatePricePlan returns only InvalidArgument.
  assert(s.code() == Code::kInvalidArgument);
  return Status::InvalidArgument(s.message(), field + "." + s.field());
}

Status ValidateHeader(const InvoiceInput& in) {
  if (in.workspace_id.empty() || in.workspace_id.size() > kInvoiceIdBytesMax) {
    return Status::InvalidArgument(
        "workspace_id must be 1.." + std::to_string(kInvoiceIdBytesMax) + " bytes",
        "workspace_id");
  }
  if (!ValidMonth(in.month)) {
    return Status::InvalidArgument("month must be a valid YYYY-MM billing month", "month");
  }
  if (in.invoice_number == 0) {
    return Status::InvalidArgument("invoice numbers start at 1", "invoice_number");
  }
  return ValidatePlanInput(in.plan, "plan");
}

// Validates key_usage and returns the sum of its units.
Result<uint64_t> ValidateKeyUsage(const std::vector<KeyUsage>& keys) {
  if (keys.size() > kInvoiceKeyUsagesMax) {
    return Status::ResourceExhausted(
        "at most " + std::to_string(kInvoiceKeyUsagesMax) + " keys per invoice", "key_usage");
  }
  uint64_t total = 0;
  size_t id_bytes = 0;
  for (size_t i = 0; i < keys.size(); i++) {
    const std::string& id = keys[i].key_id;
    id_bytes += id.size();
    if (id_bytes > kInvoiceKeyIdBytesTotalMax) {
      return Status::ResourceExhausted("the key ids of one invoice may total at most " +
                                           std::to_string(kInvoiceKeyIdBytesTotalMax) + " bytes",
                                       "key_usage");
    }
    if (id.empty() || id.size() > kInvoiceIdBytesMax || (i > 0 && id <= keys[i - 1].key_id)) {
      return Status::InvalidArgument(
          "key ids must be 1.." + std::to_string(kInvoiceIdBytesMax) +
              " bytes, unique and sorted ascending",
          Indexed("key_usage", i, "key_id"));
    }
    if (keys[i].quantity == 0) {
      return Status::InvalidArgument("a key's quantity must be > 0",
                                     Indexed("key_usage", i, "quantity"));
    }
    if (keys[i].quantity > kU64Max - total) {
      return Status::ResourceExhausted("the month's units exceed 2^64-1", "key_usage");
    }
    total += keys[i].quantity;
  }
  return total;
}

Status ValidateAdjustment(const InvoiceInput& in, size_t i) {
  const Adjustment& a = in.adjustments[i];
  bool ordered = i == 0 || in.adjustments[i - 1].month < a.month;
  if (!ValidMonth(a.month) || !(a.month < in.month) || !ordered) {
    return Status::InvalidArgument(
        "adjustment months must be valid, before the invoice's month, unique and ascending",
        Indexed("adjustments", i, "month"));
  }
  std::string plan_field = Indexed("adjustments", i, "plan");
  KL_RETURN_IF_ERROR(ValidatePlanInput(a.plan, plan_field));
  if (a.plan->currency != in.plan->currency) {
    return Status::InvalidArgument("an adjustment's plan must bill in the invoice's currency " +
                                       in.plan->currency,
                                   plan_field + ".currency");
  }
  if (a.corrected_quantity <= a.invoiced_quantity) {
    return Status::InvalidArgument(
        "corrected_quantity must exceed invoiced_quantity (late calls only add units)",
        Indexed("adjustments", i, "corrected_quantity"));
  }
  if (a.invoiced_usage_amount_minor < 0 || a.invoiced_usage_amount_minor > kAmountMinorMax) {
    return Status::InvalidArgument(
        "invoiced_usage_amount_minor must be 0.." + std::to_string(kAmountMinorMax),
        Indexed("adjustments", i, "invoiced_usage_amount_minor"));
  }
  return Status::Ok();
}

Status ValidateAdjustments(const InvoiceInput& in) {
  if (in.adjustments.size() > kInvoiceAdjustmentsMax) {
    return Status::ResourceExhausted(
        "at most " + std::to_string(kInvoiceAdjustmentsMax) + " adjusted months per invoice",
        "adjustments");
  }
  for (size_t i = 0; i < in.adjustments.size(); i++) {
    KL_RETURN_IF_ERROR(ValidateAdjustment(in, i));
  }
  return Status::Ok();
}

// ---- Lines ------------------------------------------------------------------------

// Returns the sum of `lines`' amounts. REQUIRES: each amount within 0..kAmountMinorMax.
int64_t SumAmounts(const std::vector<PricedLine>& lines) {
  int64_t sum = 0;
  for (const PricedLine& l : lines) sum += l.amount_minor;
  return sum;
}

// Prices `quantity` under a validated plan; renames PriceUsage's overflow
// field ("quantity") to `field`.
Result<std::vector<PricedLine>> PriceValidated(const PricePlanPublished& plan, uint64_t quantity,
                                               const std::string& field) {
  Result<std::vector<PricedLine>> r = PriceUsage(plan, quantity);
  if (r.ok()) return r;
  // The plan is valid, so only the amount limit can fail.
  assert(r.status().code() == Code::kResourceExhausted);
  return Status::ResourceExhausted(r.status().message(), field);
}

std::string PlanName(const PricePlanPublished& plan) {
  return plan.plan_id + " v" + std::to_string(plan.version);
}

Result<InvoiceLine> AdjustmentLine(const Adjustment& a, size_t i) {
  KL_ASSIGN_OR_RETURN(
      std::vector<PricedLine> priced,
      PriceValidated(*a.plan, a.corrected_quantity, Indexed("adjustments", i, "corrected_quantity")));
  int64_t corrected_amount = SumAmounts(priced);
  assert(corrected_amount >= 0 && corrected_amount <= kAmountMinorMax);
  uint8_t e = a.plan->currency_exponent;
  std::string month = a.month.ToString();
  uint64_t late = a.corrected_quantity - a.invoiced_quantity;
  std::string description =
      "late usage for " + month + ": +" + std::to_string(late) + " units; " +
      std::to_string(a.corrected_quantity) + " units re-priced under " + PlanName(*a.plan) +
      ": " + FormatMinor(corrected_amount, e) + ", minus " +
      FormatMinor(a.invoiced_usage_amount_minor, e) + " already invoiced for " +
      std::to_string(a.invoiced_quantity) + " units";
  // Both within 0..kAmountMinorMax: the difference cannot overflow.
  int64_t amount = corrected_amount - a.invoiced_usage_amount_minor;
  return InvoiceLine{"adjustment", std::move(description), late, 0, amount, std::move(month)};
}

void AppendUsageLines(std::vector<PricedLine> priced, const std::string& month,
                      std::vector<InvoiceLine>* lines) {
  for (PricedLine& p : priced) {
    assert(p.kind == "tier" && p.quantity > 0);
    lines->push_back(InvoiceLine{std::move(p.kind), std::move(p.description), p.quantity,
                                 p.unit_price_micros, p.amount_minor, month});
  }
}

Result<std::vector<InvoiceLine>> BuildLines(const InvoiceInput& in, uint64_t quantity) {
  std::string month = in.month.ToString();
  KL_ASSIGN_OR_RETURN(std::vector<PricedLine> priced,
                      PriceValidated(*in.plan, quantity, "key_usage"));
  std::vector<InvoiceLine> lines;
  AppendUsageLines(std::move(priced), month, &lines);
  if (in.plan->monthly_fee_minor > 0) {
    lines.push_back(InvoiceLine{"monthly_fee", "monthly fee, plan " + PlanName(*in.plan), 1, 0,
                                in.plan->monthly_fee_minor, month});
  }
  for (size_t i = 0; i < in.adjustments.size(); i++) {
    KL_ASSIGN_OR_RETURN(InvoiceLine line, AdjustmentLine(in.adjustments[i], i));
    lines.push_back(std::move(line));
  }
  return lines;
}

// Checks what BuildInvoice promises about a finished invoice.
void AssertInvoiceInvariants(const InvoiceIssued& inv, uint64_t quantity) {
  int64_t sum = 0;
  uint64_t tier_units = 0;
  for (const InvoiceLine& l : inv.lines) {
    sum += l.amount_minor;  // |amounts| <= kAmountMinorMax, < 200 lines: no overflow
    if (l.kind == "tier") tier_units += l.quantity;
    assert(l.kind == "tier" || l.unit_price_micros == 0);
    assert(l.kind == "adjustment" || (l.amount_minor >= 0 && l.month == inv.month));
  }
  assert(tier_units == quantity);
  assert(sum == inv.subtotal_minor && inv.total_minor == inv.subtotal_minor);
  assert(VerifyInvoiceDigest(inv).ok());
}

// ---- Canonical bytes --------------------------------------------------------------

void PutU64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}
void PutI64(int64_t v, std::string* out) { PutU64(static_cast<uint64_t>(v), out); }
void PutStr(std::string_view s, std::string* out) {
  PutU64(s.size(), out);
  out->append(s);
}

void PutLine(const InvoiceLine& l, std::string* out) {
  PutStr(l.kind, out);
  PutStr(l.description, out);
  PutU64(l.quantity, out);
  PutI64(l.unit_price_micros, out);
  PutI64(l.amount_minor, out);
  PutStr(l.month, out);
}

// ---- CSV --------------------------------------------------------------------------

constexpr size_t kCsvColumns = 11;
using CsvRow = std::array<std::string, kCsvColumns>;

void AppendCsvField(std::string_view field, std::string* out) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) {
    out->append(field);
    return;
  }
  out->push_back('"');
  for (char c : field) {
    if (c == '"') out->push_back('"');
    out->push_back(c);
  }
  out->push_back('"');
}

void AppendCsvRow(const CsvRow& row, std::string* out) {
  for (size_t i = 0; i < row.size(); i++) {
    if (i > 0) out->push_back(',');
    AppendCsvField(row[i], out);
  }
  out->append("\r\n");
}

// A row with the invoice's columns filled and the line's left empty.
CsvRow InvoiceCsvRow(const InvoiceIssued& inv, std::string kind) {
  CsvRow row;
  row[0] = std::to_string(inv.invoice_number);
  row[1] = inv.workspace_id;
  row[2] = inv.month;
  row[3] = std::move(kind);
  row[10] = inv.currency;
  return row;
}

CsvRow LineCsvRow(const InvoiceIssued& inv, const InvoiceLine& l, uint8_t e) {
  CsvRow row = InvoiceCsvRow(inv, l.kind);
  row[4] = l.month;
  row[5] = l.description;
  row[6] = std::to_string(l.quantity);
  row[7] = std::to_string(l.unit_price_micros);
  row[8] = std::to_string(l.amount_minor);
  row[9] = FormatMinor(l.amount_minor, e);
  return row;
}

}  // namespace

Result<InvoiceIssued> BuildInvoice(const InvoiceInput& input) {
  KL_RETURN_IF_ERROR(ValidateHeader(input));
  KL_ASSIGN_OR_RETURN(uint64_t quantity, ValidateKeyUsage(input.key_usage));
  KL_RETURN_IF_ERROR(ValidateAdjustments(input));
  KL_ASSIGN_OR_RETURN(std::vector<InvoiceLine> lines, BuildLines(input, quantity));
  InvoiceIssued inv;
  inv.workspace_id = input.workspace_id;
  inv.month = input.month.ToString();
  inv.invoice_number = input.invoice_number;
  inv.currency = input.plan->currency;
  inv.lines = std::move(lines);
  inv.key_usage = input.key_usage;
  for (const InvoiceLine& l : inv.lines) inv.subtotal_minor += l.amount_minor;
  inv.total_minor = inv.subtotal_minor;  // no tax
  inv.covers_sequence = input.covers_sequence;
  inv.plan_id = input.plan->plan_id;
  inv.plan_version = input.plan->version;
  inv.digest = InvoiceDigest(inv);
  AssertInvoiceInvariants(inv, quantity);
  return inv;
}

std::string InvoiceCanonicalBytes(const InvoiceIssued& inv) {
  std::string out;
  PutStr(kDigestDomain, &out);
  PutStr(inv.workspace_id, &out);
  PutStr(inv.month, &out);
  PutU64(inv.invoice_number, &out);
  PutStr(inv.currency, &out);
  PutU64(inv.lines.size(), &out);
  for (const InvoiceLine& l : inv.lines) PutLine(l, &out);
  PutU64(inv.key_usage.size(), &out);
  for (const KeyUsage& k : inv.key_usage) {
    PutStr(k.key_id, &out);
    PutU64(k.quantity, &out);
  }
  PutI64(inv.subtotal_minor, &out);
  PutI64(inv.total_minor, &out);
  PutU64(inv.covers_sequence, &out);
  PutStr(inv.plan_id, &out);
  PutU64(inv.plan_version, &out);
  return out;
}

Hash InvoiceDigest(const InvoiceIssued& invoice) {
  return HashBytes(InvoiceCanonicalBytes(invoice));
}

Status VerifyInvoiceDigest(const InvoiceIssued& invoice) {
  if (ConstantTimeEqual(invoice.digest, InvoiceDigest(invoice))) return Status::Ok();
  return Status::Corruption("invoice digest mismatch");
}

std::string InvoiceCsvHeader() {
  std::string out;
  AppendCsvRow({"invoice_number", "workspace_id", "month", "line_kind", "line_month",
                "description", "quantity", "unit_price_micros", "amount_minor", "amount",
                "currency"},
               &out);
  return out;
}

std::string InvoiceToCsv(const InvoiceIssued& inv, uint8_t currency_exponent) {
  assert(currency_exponent <= kCurrencyExponentMax);
  std::string out = InvoiceCsvHeader();
  for (const InvoiceLine& l : inv.lines) AppendCsvRow(LineCsvRow(inv, l, currency_exponent), &out);
  for (const KeyUsage& k : inv.key_usage) {
    CsvRow row = InvoiceCsvRow(inv, "key_usage");
    row[4] = inv.month;
    row[5] = k.key_id;
    row[6] = std::to_string(k.quantity);
    AppendCsvRow(row, &out);
  }
  CsvRow total = InvoiceCsvRow(inv, "total");
  total[8] = std::to_string(inv.total_minor);
  total[9] = FormatMinor(inv.total_minor, currency_exponent);
  AppendCsvRow(total, &out);
  return out;
}

nlohmann::json InvoiceToJson(const InvoiceIssued& inv, uint8_t exponent) {
  assert(exponent <= kCurrencyExponentMax);
  nlohmann::json lines = nlohmann::json::array();
  for (const InvoiceLine& l : inv.lines) {
    lines.push_back({{"kind", l.kind},
                     {"month", l.month},
                     {"description", l.description},
                     {"quantity", l.quantity},
                     {"unit_price_micros", l.unit_price_micros},
                     {"amount_minor", l.amount_minor},
                     {"amount", FormatMinor(l.amount_minor, exponent)}});
  }
  nlohmann::json keys = nlohmann::json::array();
  for (const KeyUsage& k : inv.key_usage) {
    keys.push_back({{"key_id", k.key_id}, {"quantity", k.quantity}});
  }
  return {{"invoice_number", inv.invoice_number},
          {"workspace_id", inv.workspace_id},
          {"month", inv.month},
          {"currency", inv.currency},
          {"currency_exponent", exponent},
          {"plan_id", inv.plan_id},
          {"plan_version", inv.plan_version},
          {"covers_sequence", inv.covers_sequence},
          {"lines", std::move(lines)},
          {"key_usage", std::move(keys)},
          {"subtotal_minor", inv.subtotal_minor},
          {"subtotal", FormatMinor(inv.subtotal_minor, exponent)},
          {"total_minor", inv.total_minor},
          {"total", FormatMinor(inv.total_minor, exponent)},
          {"digest", ToHex(inv.digest)}};
}

}  // namespace keyledger
