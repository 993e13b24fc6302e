// The billing endpoints of the Service: price plans, usage, invoice runs and
// invoice reads. Money is integer minor units throughout.
#include <algorithm>
#include <map>

#include "api/invoice_compute.h"
#include "api/service_internal.h"
#include "billing/calendar.h"
#include "billing/invoicing.h"
#include "billing/pricing.h"

namespace keyledger {
namespace {

constexpr size_t kPlanIdBytesMax = 64;
constexpr int64_t kHourUs = 3600LL * 1'000'000;
constexpr int64_t kGraceHoursDefault = 24;
constexpr int64_t kGraceHoursMax = 24 * 31;


Status ValidatePlanId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= kPlanIdBytesMax &&
            std::all_of(id.begin(), id.end(), [](char c) {
              return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
            });
  return ok ? Status::Ok()
            : Status::InvalidArgument("id must be 1..64 of a-z 0-9 _ -", "id");
}

Result<std::vector<PriceTier>> ParseTiers(const Json& body) {
  auto it = body.find("tiers");
  if (it == body.end() || !it->is_array()) {
    return Status::InvalidArgument("tiers must be an array", "tiers");
  }
  std::vector<PriceTier> tiers;
  for (size_t i = 0; i < it->size(); i++) {
    const Json& t = (*it)[i];
    const std::string field = "tiers[" + std::to_string(i) + "]";
    if (!t.is_object()) return Status::InvalidArgument("must be an object", field);
    PriceTier tier;
    auto up_to = t.find("up_to");
    if (up_to == t.end()) {
      return Status::InvalidArgument("up_to is required (null for no limit)", field + ".up_to");
    }
    if (!up_to->is_null()) {
      if (!up_to->is_number_unsigned()) {
        return Status::InvalidArgument("must be a positive integer or null", field + ".up_to");
      }
      tier.up_to = up_to->get<uint64_t>();
    }
    auto price = t.find("unit_price_micros");
    if (price == t.end() || !price->is_number_integer()) {
      return Status::InvalidArgument("must be an integer", field + ".unit_price_micros");
    }
    tier.unit_price_micros = price->get<int64_t>();
    tiers.push_back(tier);
  }
  return tiers;
}

Json PlanJson(const PricePlanPublished& p) {
  Json tiers = Json::array();
  for (const auto& t : p.tiers) {
    tiers.push_back({{"up_to", t.up_to ? Json(*t.up_to) : Json(nullptr)},
                     {"unit_price_micros", t.unit_price_micros}});
  }
  return {{"id", p.plan_id}, {"version", p.version}, {"currency", p.currency},
          {"currency_exponent", p.currency_exponent}, {"metric", p.metric},
          {"mode", p.mode == PricingMode::kGraduated ? "graduated" : "volume"},
          {"tiers", tiers}, {"monthly_fee_minor", p.monthly_fee_minor}};
}


}  // namespace

Result<HttpResponse> Service::Impl::PricePlans(const HttpRequest& req, const Principal& who,
                                               const std::vector<std::string_view>& seg) {
  KL_RETURN_IF_ERROR(RequireOperator(who, "manage price plans"));
  if (seg.size() == 3 && req.method == "GET") {
    std::string id(seg[2]);
    auto versions = state().PlanVersions(id);
    if (versions.empty()) return Status::NotFound("no price plan " + id, "price_plan");
    KL_ASSIGN_OR_RETURN(PricePlanPublished latest, ReadPlan(state(), *d.ledger, id, versions.back().version));
    Json j = PlanJson(latest);
    Json history = Json::array();
    for (const auto& v : versions) {
      history.push_back({{"version", v.version}, {"published_at", FormatRfc3339(v.published_at_us)}});
    }
    j["versions"] = history;
    return JsonResponse(200, j);
  }
  if (seg.size() != 2 || req.method != "POST") {
    return Status::InvalidArgument("use POST /v1/price-plans or GET /v1/price-plans/{id}", "method");
  }
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"id", "currency", "metric", "mode", "tiers",
                                                        "monthly_fee_minor"}));
  KL_ASSIGN_OR_RETURN(auto id, OptionalString(body, "id"));
  if (!id) return Status::InvalidArgument("id is required", "id");
  KL_RETURN_IF_ERROR(ValidatePlanId(*id));
  KL_ASSIGN_OR_RETURN(auto currency, OptionalString(body, "currency"));
  if (!currency) return Status::InvalidArgument("currency is required", "currency");
  KL_ASSIGN_OR_RETURN(uint8_t exponent, CurrencyExponent(*currency));
  KL_ASSIGN_OR_RETURN(auto metric, OptionalString(body, "metric"));
  KL_ASSIGN_OR_RETURN(auto mode, OptionalString(body, "mode"));
  if (!mode || (*mode != "graduated" && *mode != "volume")) {
    return Status::InvalidArgument("mode must be \"graduated\" or \"volume\"", "mode");
  }
  KL_ASSIGN_OR_RETURN(auto fee, OptionalInt(body, "monthly_fee_minor", 0, kMonthlyFeeMinorMax));
  PricePlanPublished plan;
  plan.plan_id = *id;
  plan.currency = *currency;
  plan.currency_exponent = exponent;
  plan.metric = metric.value_or("units");
  plan.mode = *mode == "graduated" ? PricingMode::kGraduated : PricingMode::kVolume;
  KL_ASSIGN_OR_RETURN(plan.tiers, ParseTiers(body));
  plan.monthly_fee_minor = fee.value_or(0);
  const uint64_t published = state().PlanVersions(*id).size();
  plan.version = static_cast<uint32_t>(published + 1);
  KL_RETURN_IF_ERROR(ValidatePricePlan(plan));
  KL_RETURN_IF_ERROR(Commit({MakeEvent(PlanStream(*id), published, who, plan)}));
  return JsonResponse(201, PlanJson(plan));
}

Result<HttpResponse> Service::Impl::Usage(const HttpRequest& req, const WorkspaceView& ws) {
  std::string month_text = PercentDecode(QueryParam(QueryOf(req), "month"));
  BillingMonth month;
  if (month_text.empty()) {
    KL_ASSIGN_OR_RETURN(month, MonthOf(d.clock->NowUs(), ws.billing_timezone));
  } else {
    KL_ASSIGN_OR_RETURN(month, ParseBillingMonth(month_text, "month"));
  }
  KL_ASSIGN_OR_RETURN(auto bounds, MonthBoundsUs(month, ws.billing_timezone));
  WorkspaceUsage usage = d.calls->UsageFor(ws.id, month);
  Json keys = Json::array();
  for (const auto& k : usage.keys) keys.push_back({{"key_id", k.key_id}, {"quantity", k.quantity}});
  Json j = {{"workspace_id", ws.id}, {"month", month.ToString()},
            {"billing_timezone", ws.billing_timezone}, {"keys", keys},
            {"total_quantity", usage.total}, {"as_of_sequence", usage.position}};
  auto in_force = state().PlanInForce(ws.id, bounds.second);
  if (in_force) {
    KL_ASSIGN_OR_RETURN(PricePlanPublished plan, ReadPlan(state(), *d.ledger, in_force->first, in_force->second.version));
    KL_ASSIGN_OR_RETURN(auto lines, PriceUsage(plan, usage.total));
    int64_t amount = 0;
    for (const auto& l : lines) amount += l.amount_minor;
    j["price_plan"] = plan.plan_id;
    j["price_plan_version"] = plan.version;
    j["currency"] = plan.currency;
    j["amount_minor"] = amount;
    j["amount"] = FormatMinor(amount, plan.currency_exponent);
    j["monthly_fee_minor"] = plan.monthly_fee_minor;
  }
  return JsonResponse(200, j);
}

namespace {

// The invoice as finance reads it, with amounts in its currency's minor units.
Result<Json> InvoiceJson(const InvoiceIssued& invoice) {
  KL_ASSIGN_OR_RETURN(uint8_t exponent, CurrencyExponent(invoice.currency));
  return InvoiceToJson(invoice, exponent);
}

}  // namespace

Result<HttpResponse> Service::Impl::InvoiceRun(const HttpRequest& req, const Principal& who) {
  KL_RETURN_IF_ERROR(RequireOperator(who, "run invoices"));
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"month", "grace_hours"}));
  KL_ASSIGN_OR_RETURN(auto month_text, OptionalString(body, "month"));
  if (!month_text) return Status::InvalidArgument("month is required (YYYY-MM)", "month");
  KL_ASSIGN_OR_RETURN(BillingMonth month, ParseBillingMonth(*month_text, "month"));
  KL_ASSIGN_OR_RETURN(auto grace, OptionalInt(body, "grace_hours", 0, kGraceHoursMax));
  const int64_t grace_us = grace.value_or(kGraceHoursDefault) * kHourUs;
  const int64_t now_us = d.clock->NowUs();
  std::vector<NewEvent> events;
  Json issued = Json::array(), already = Json::array(), not_due = Json::array(),
       failed = Json::array();
  // A workspace whose own data forbids its invoice (over a billing limit; an
  // adjustment in another currency than its plan's now; a time zone the tz
  // database no longer knows) is listed in `failed` with the error body the
  // request would have answered: no other workspace's invoice may wait on
  // it. Errors of the system (IOError, Corruption, ...) end the run.
  auto fails_alone = [&failed](const std::string& workspace_id, const Status& s) {
    if (s.code() != Code::kResourceExhausted && s.code() != Code::kInvalidArgument) return false;
    failed.push_back({{"workspace_id", workspace_id},
                      {"error", Json::parse(ErrorResponse(s).body)["error"]}});
    return true;
  };
  // Usage accounts for every call recorded before the run, all of it at one
  // position (folds held), which becomes every invoice's covers_sequence.
  KL_RETURN_IF_ERROR(d.calls->WithPositionHeld(d.ledger->head().sequence, [&](uint64_t position) {
    uint64_t next_number = state().invoice_count() + 1;
    for (const WorkspaceView& ws : state().ListWorkspaces()) {
      if (auto done = state().FindInvoice(ws.id, month.ToString())) {
        KL_ASSIGN_OR_RETURN(InvoiceIssued invoice, ReadInvoice(*d.ledger, *done));
        KL_ASSIGN_OR_RETURN(Json json, InvoiceJson(invoice));
        already.push_back(std::move(json));
        continue;
      }
      auto bounds = MonthBoundsUs(month, ws.billing_timezone);
      if (!bounds.ok() && fails_alone(ws.id, bounds.status())) continue;
      KL_RETURN_IF_ERROR(bounds.ToStatus());
      if (!state().PlanInForce(ws.id, bounds->second)) continue;  // nothing to bill
      if (now_us < bounds->second + grace_us) {
        not_due.push_back(ws.id);
        continue;
      }
      auto invoice = ComputeInvoice(state(), *d.ledger, *d.calls, ws, month, next_number, position);
      const Status computed = invoice.ToStatus();
      if (!computed.ok() && fails_alone(ws.id, computed)) continue;
      KL_RETURN_IF_ERROR(computed);
      assert(invoice->has_value());
      KL_ASSIGN_OR_RETURN(Json json, InvoiceJson(**invoice));
      issued.push_back(std::move(json));
      events.push_back(MakeEvent(InvoiceStream(ws.id), std::nullopt, who, std::move(**invoice)));
      next_number++;
    }
    return Status::Ok();
  }));
  if (events.empty() && already.empty() && failed.empty() && !not_due.empty()) {
    return Status::FailedPrecondition(
        "month " + month.ToString() + " has not ended plus " +
            std::to_string(grace_us / kHourUs) + " h of grace in the workspaces' time zones",
        "month");
  }
  // The run's invoices land in appends of at most
  // invoice_run_append_events_max, in order and under the command lock, so
  // their numbers stay gap-free; if one append fails, the invoices before it
  // stay issued and a re-run issues the rest.
  const size_t chunk = o.invoice_run_append_events_max;
  assert(chunk >= 1 && chunk <= kAppendEventsMax);
  for (size_t begin = 0; begin < events.size(); begin += chunk) {
    const size_t end = std::min(events.size(), begin + chunk);
    KL_RETURN_IF_ERROR(Commit(std::vector<NewEvent>(std::make_move_iterator(events.begin() + begin),
                                                    std::make_move_iterator(events.begin() + end))));
  }
  return JsonResponse(200, {{"month", month.ToString()}, {"issued", issued},
                            {"already_issued", already}, {"not_due", not_due}, {"failed", failed}});
}

Result<HttpResponse> Service::Impl::Invoices(const HttpRequest& req, const WorkspaceView& ws,
                                             const std::vector<std::string_view>& seg) {
  if (seg.size() == 4) {
    Json list = Json::array();
    for (const InvoiceRef& ref : state().ListInvoices(ws.id)) {
      KL_ASSIGN_OR_RETURN(InvoiceIssued invoice, ReadInvoice(*d.ledger, ref));
      KL_ASSIGN_OR_RETURN(uint8_t exponent, CurrencyExponent(invoice.currency));
      list.push_back({{"month", invoice.month}, {"invoice_number", invoice.invoice_number},
                      {"currency", invoice.currency}, {"total_minor", invoice.total_minor},
                      {"total", FormatMinor(invoice.total_minor, exponent)},
                      {"digest", ToHex(invoice.digest)}});
    }
    return JsonResponse(200, {{"invoices", list}});
  }
  if (seg.size() != 5) return Status::NotFound("no such endpoint");
  // A malformed month or format is the caller's mistake, not a month
  // without an invoice.
  KL_RETURN_IF_ERROR(ParseBillingMonth(seg[4], "month").ToStatus());
  const std::string_view format = QueryParam(QueryOf(req), "format");
  if (!format.empty() && format != "json" && format != "csv") {
    return Status::InvalidArgument("format must be json or csv", "format");
  }
  auto ref = state().FindInvoice(ws.id, seg[4]);
  if (!ref) return Status::NotFound("no invoice for " + std::string(seg[4]), "month");
  KL_ASSIGN_OR_RETURN(InvoiceIssued invoice, ReadInvoice(*d.ledger, *ref));
  KL_ASSIGN_OR_RETURN(uint8_t exponent, CurrencyExponent(invoice.currency));
  if (format == "csv") {
    HttpResponse r;
    r.status = 200;
    r.headers.emplace_back("content-type", "text/csv; charset=utf-8");
    r.headers.emplace_back("content-disposition", "attachment; filename=\"invoice-" + ws.id + "-" +
                                                      invoice.month + ".csv\"");
    r.body = InvoiceToCsv(invoice, exponent);
    return r;
  }
  return JsonResponse(200, InvoiceToJson(invoice, exponent));
}

}  // namespace keyledger
