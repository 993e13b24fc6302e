// The observability endpoints of the Service: per-key request logs and the
// metrics of keys and workspaces, read from the call projections.
#include <charconv>
#include <map>

#include "api/service_internal.h"
#include "billing/calendar.h"

namespace keyledger {
namespace {

constexpr int64_t kSecondUs = 1'000'000;
constexpr int64_t kDefaultMetricsRangeUs = 24 * 3600 * kSecondUs;
constexpr int64_t kDefaultMetricsStepS = 3600;

// Reads an optional RFC 3339 query parameter.
Result<std::optional<int64_t>> TimeParam(std::string_view query, std::string_view name) {
  std::string_view raw = QueryParam(query, name);
  if (raw.empty()) return std::optional<int64_t>();
  KL_ASSIGN_OR_RETURN(int64_t t, ParseRfc3339(PercentDecode(raw), name));
  if (t < 0) {  // calls are recorded at UTC times since the epoch only
    return Status::InvalidArgument("must not be before 1970-01-01T00:00:00Z", std::string(name));
  }
  return std::optional<int64_t>(t);
}

Result<std::optional<int64_t>> IntParam(std::string_view query, std::string_view name,
                                        int64_t min, int64_t max) {
  std::string_view raw = QueryParam(query, name);
  if (raw.empty()) return std::optional<int64_t>();
  int64_t v = 0;
  auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), v);
  if (ec != std::errc() || end != raw.data() + raw.size() || v < min || v > max) {
    return Status::InvalidArgument("must be an integer from " + std::to_string(min) + " to " +
                                       std::to_string(max),
                                   std::string(name));
  }
  return std::optional<int64_t>(v);
}

// Microseconds as fractional milliseconds, exact (no floating point).
Json Millis(uint64_t us) {
  return Json::parse(std::to_string(us / 1000) + "." + std::to_string(1000 + us % 1000).substr(1));
}

// Parts per million as a fraction with six decimals, exact.
Json Fraction(uint64_t ppm) {
  return Json::parse(std::to_string(ppm / 1'000'000) + "." +
                     std::to_string(1'000'000 + ppm % 1'000'000).substr(1));
}

// A header repeated in the call (Vary, Via, Link, ...; names compared
// without case) keeps every value, joined with ", " in their order under its
// first spelling (RFC 9110, section 5.3). Set-Cookie, which that does not
// allow, is redacted whole when recorded.
Json ExcerptJson(const HttpExcerpt& e) {
  Json headers = Json::object();
  std::map<std::string, std::string> spelling;  // lower-case name -> first spelling
  for (const auto& h : e.headers) {
    auto [first, added] = spelling.try_emplace(AsciiLower(h.name), h.name);
    if (added) {
      headers[h.name] = h.value;
    } else {
      headers[first->second].get_ref<std::string&>() += ", " + h.value;
    }
  }
  return {{"headers", headers}, {"body_excerpt", e.body_excerpt}};
}

Json LogEntryJson(const LogEntry& entry) {
  const ApiCallRecorded& e = entry.call;
  return {{"sequence", entry.sequence}, {"request_id", e.request_id},
          {"occurred_at", FormatRfc3339(e.occurred_at_us)}, {"method", e.method},
          {"path", e.path}, {"status", e.status}, {"latency_ms", Millis(e.latency_us)},
          {"units", e.units}, {"request_bytes", e.request_bytes},
          {"response_bytes", e.response_bytes}, {"client_ip", e.client_ip},
          {"origin", e.origin}, {"request", ExcerptJson(e.request)},
          {"response", ExcerptJson(e.response)}};
}

Json BucketJson(const MetricsBucket& b, bool with_start) {
  Json j = {{"calls", b.calls},
            {"requests", b.requests()},
            {"errors", b.errors()},
            {"error_rate", Fraction(b.error_rate_ppm())},
            {"errors_by_class", {{"4xx", b.errors_4xx}, {"5xx", b.errors_5xx},
                                 {"429", b.rate_limited}, {"authorization", b.auth_denied}}},
            {"latency_ms", {{"p50", Millis(b.latency.Percentile(500))},
                            {"p95", Millis(b.latency.Percentile(950))},
                            {"p99", Millis(b.latency.Percentile(990))},
                            {"max", Millis(b.latency.max())}}},
            {"units", b.units}};
  if (with_start) j["start"] = FormatRfc3339(b.start_us);
  return j;
}

}  // namespace

Result<HttpResponse> Service::Impl::KeyLogs(const HttpRequest& req, const KeyView& key) {
  std::string_view query = QueryOf(req);
  LogQuery q;
  q.key_id = key.id;
  KL_ASSIGN_OR_RETURN(auto from, TimeParam(query, "from"));
  KL_ASSIGN_OR_RETURN(auto to, TimeParam(query, "to"));
  if (from) q.from_us = *from;
  if (to) q.to_us = *to;
  std::string_view status = QueryParam(query, "status");
  if (status.size() == 3 && status.substr(1) == "xx" && status[0] >= '1' && status[0] <= '5') {
    q.status_class = status[0];
  } else if (!status.empty()) {
    KL_ASSIGN_OR_RETURN(auto exact, IntParam(query, "status", 100, 599));
    q.status = static_cast<uint16_t>(*exact);
  }
  KL_ASSIGN_OR_RETURN(auto limit, IntParam(query, "limit", 1, kLogPageMax));
  q.limit = static_cast<size_t>(limit.value_or(100));
  q.cursor = PercentDecode(QueryParam(query, "cursor"));
  KL_ASSIGN_OR_RETURN(LogPage page, d.calls->Logs(q, d.clock->NowUs()));
  Json entries = Json::array();
  for (const auto& e : page.entries) entries.push_back(LogEntryJson(e));
  Json next = page.next_cursor.empty() ? Json(nullptr) : Json(page.next_cursor);
  return JsonResponse(200, {{"entries", entries}, {"next_cursor", next},
                            {"logging", key.logging}});
}

Result<HttpResponse> Service::Impl::MetricsResponse(const HttpRequest& req, MetricsScope scope,
                                                    const std::string& id) {
  std::string_view query = QueryOf(req);
  KL_ASSIGN_OR_RETURN(auto step_s, IntParam(query, "step", 60, 86'400));
  const int64_t step_us = step_s.value_or(kDefaultMetricsStepS) * kSecondUs;
  KL_ASSIGN_OR_RETURN(auto from, TimeParam(query, "from"));
  KL_ASSIGN_OR_RETURN(auto to, TimeParam(query, "to"));
  int64_t to_us = to.value_or(d.clock->NowUs());
  int64_t from_us = from.value_or(std::max<int64_t>(0, to_us - kDefaultMetricsRangeUs));
  if (to_us <= from_us) return Status::InvalidArgument("to must be after from", "to");
  // Buckets are aligned to the step in UTC: widen the range to whole steps.
  from_us -= from_us % step_us;
  to_us += (step_us - to_us % step_us) % step_us;
  KL_ASSIGN_OR_RETURN(auto view, d.calls->MetricsWithTotals(scope, id, from_us, to_us, step_us));
  Json points = Json::array();
  for (const auto& b : view.series) points.push_back(BucketJson(b, true));
  return JsonResponse(200, {{"from", FormatRfc3339(from_us)}, {"to", FormatRfc3339(to_us)},
                            {"step", step_us / kSecondUs}, {"series", points},
                            {"totals", BucketJson(view.totals, false)},
                            {"as_of_sequence", view.position}});
}

}  // namespace keyledger
