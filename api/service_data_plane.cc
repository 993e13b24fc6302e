// The data-plane endpoints of the Service: POST /v1/authorize, POST /v1/calls.
#include <algorithm>
#include <cassert>

#include "api/service_internal.h"
#include "billing/calendar.h"


namespace keyledger {

void AddRateLimitHeaders(const AuthorizeDecision& d, HttpResponse* r) {
  if (!d.rate_checked) return;
  auto ceil_seconds = [](int64_t us) { return std::to_string((us + 999'999) / 1'000'000); };
  r->headers.emplace_back("ratelimit-limit", std::to_string(d.rate.limit));
  r->headers.emplace_back("ratelimit-remaining", std::to_string(d.rate.remaining));
  r->headers.emplace_back("ratelimit-reset", ceil_seconds(d.rate.reset_us));
  if (!d.rate.allowed) {
    r->headers.emplace_back("retry-after", ceil_seconds(std::max<int64_t>(d.rate.retry_after_us, 1)));
  }
}

HttpResponse AuthorizeRefusal(const AuthorizeDecision& decision) {
  assert(decision.outcome != AuthorizeOutcome::kAllowed);
  HttpResponse r;
  switch (decision.outcome) {
    case AuthorizeOutcome::kAllowed:
      break;
    case AuthorizeOutcome::kUnauthenticated:
      r = JsonError(401, "unauthenticated", decision.message);
      r.headers.emplace_back("www-authenticate", "Bearer");
      break;
    case AuthorizeOutcome::kForbidden:
      r = JsonError(403, "permission_denied", decision.message,
                    decision.reason == DenialReason::kIpNotAllowed ? "client_ip" : "origin");
      break;
    case AuthorizeOutcome::kRateLimited:
      r = JsonError(429, "rate_limited", decision.message);
      break;
    case AuthorizeOutcome::kInvalidArgument:
      r = JsonError(400, "invalid_argument", decision.message, "client_ip");
      break;
  }
  AddRateLimitHeaders(decision, &r);
  return r;
}

namespace {

Result<HttpExcerpt> ParseExcerpt(const Json& call, std::string_view name, const std::string& field) {
  HttpExcerpt out;
  auto it = call.find(name);
  if (it == call.end() || it->is_null()) return out;
  if (!it->is_object()) return Status::InvalidArgument("must be an object", field);
  auto headers = it->find("headers");
  if (headers != it->end() && !headers->is_null()) {
    if (!headers->is_object()) {
      return Status::InvalidArgument("must be an object of header: value", field + ".headers");
    }
    for (const auto& [k, v] : headers->items()) {
      if (!v.is_string()) return Status::InvalidArgument("must be a string", field + ".headers." + k);
      out.headers.push_back(HttpHeader{k, v.get<std::string>()});
    }
  }
  auto body = it->find("body_excerpt");
  if (body != it->end() && !body->is_null()) {
    if (!body->is_string()) return Status::InvalidArgument("must be a string", field + ".body_excerpt");
    out.body_excerpt = body->get<std::string>();
  }
  return out;
}

// Reads one element of "calls" into a CallReport; errors name calls[i].field.
Result<CallReport> ParseCall(const Json& call, size_t i) {
  const std::string prefix = "calls[" + std::to_string(i) + "].";
  if (!call.is_object()) {
    return Status::InvalidArgument("must be an object", "calls[" + std::to_string(i) + "]");
  }
  static constexpr std::string_view kFields[] = {
      "request_id", "key_id", "occurred_at", "method", "path", "status", "latency_ms", "units",
      "request_bytes", "response_bytes", "client_ip", "origin", "request", "response"};
  for (const auto& [name, value] : call.items()) {
    if (std::find(std::begin(kFields), std::end(kFields), name) == std::end(kFields)) {
      return Status::InvalidArgument("unknown field \"" + name + "\"", prefix + name);
    }
  }
  auto prefixed = [&](Status s) {
    return s.field().empty() || s.field().starts_with("calls[")
               ? s
               : Status::InvalidArgument(s.message(), prefix + s.field());
  };
  CallReport report;
  ApiCallRecorded& c = report.call;
  auto str = [&](std::string_view name, std::string* out) -> Status {
    auto v = OptionalString(call, name);
    if (!v.ok()) return prefixed(v.status());
    if (*v) *out = **v;
    return Status::Ok();
  };
  auto num = [&](std::string_view name, int64_t max, std::optional<int64_t>* out) -> Status {
    auto v = OptionalInt(call, name, 0, max);
    if (!v.ok()) return prefixed(v.status());
    *out = *v;
    return Status::Ok();
  };
  KL_RETURN_IF_ERROR(str("request_id", &c.request_id));
  KL_RETURN_IF_ERROR(str("key_id", &c.key_id));
  std::string occurred_at;
  KL_RETURN_IF_ERROR(str("occurred_at", &occurred_at));
  if (occurred_at.empty()) {
    return Status::InvalidArgument("occurred_at is required", prefix + "occurred_at");
  }
  KL_ASSIGN_OR_RETURN(c.occurred_at_us, ParseRfc3339(occurred_at, prefix + "occurred_at"));
  KL_RETURN_IF_ERROR(str("method", &c.method));
  KL_RETURN_IF_ERROR(str("path", &c.path));
  KL_RETURN_IF_ERROR(str("client_ip", &c.client_ip));
  KL_RETURN_IF_ERROR(str("origin", &c.origin));
  std::optional<int64_t> status, units, request_bytes, response_bytes;
  KL_RETURN_IF_ERROR(num("status", 999, &status));
  if (!status) return Status::InvalidArgument("status is required", prefix + "status");
  c.status = static_cast<uint16_t>(*status);
  KL_RETURN_IF_ERROR(num("units", INT64_MAX, &units));
  if (units) report.units = static_cast<uint64_t>(*units);
  KL_RETURN_IF_ERROR(num("request_bytes", INT64_MAX, &request_bytes));
  KL_RETURN_IF_ERROR(num("response_bytes", INT64_MAX, &response_bytes));
  c.request_bytes = static_cast<uint64_t>(request_bytes.value_or(0));
  c.response_bytes = static_cast<uint64_t>(response_bytes.value_or(0));
  auto latency = call.find("latency_ms");
  if (latency != call.end() && !latency->is_null()) {
    // Milliseconds may be fractional on the wire; stored as integer µs.
    if (!latency->is_number() || latency->get<double>() < 0 || latency->get<double>() > 86'400'000) {
      return Status::InvalidArgument("must be a number of milliseconds, 0..86400000",
                                     prefix + "latency_ms");
    }
    c.latency_us = latency->is_number_integer()
                       ? static_cast<uint64_t>(latency->get<int64_t>()) * 1000
                       : static_cast<uint64_t>(latency->get<double>() * 1000.0 + 0.5);
  }
  KL_ASSIGN_OR_RETURN(c.request, ParseExcerpt(call, "request", prefix + "request"));
  KL_ASSIGN_OR_RETURN(c.response, ParseExcerpt(call, "response", prefix + "response"));
  return report;
}

}  // namespace

Result<HttpResponse> Service::Impl::Authorize(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"client_ip", "origin", "request_id"}));
  KL_ASSIGN_OR_RETURN(auto client_ip, OptionalString(body, "client_ip"));
  if (!client_ip) return Status::InvalidArgument("client_ip is required", "client_ip");
  KL_ASSIGN_OR_RETURN(auto origin, OptionalString(body, "origin"));
  KL_ASSIGN_OR_RETURN(auto request_id, OptionalString(body, "request_id"));
  AuthorizeRequest ar;
  ar.authorization = req.Header("authorization");
  ar.client_ip = *client_ip;
  ar.origin = origin ? std::string_view(*origin) : req.Header("origin");
  ar.now_us = d.clock->NowUs();
  AuthorizeDecision decision = data_plane->Authorize(ar);
  if (decision.outcome != AuthorizeOutcome::kAllowed) return AuthorizeRefusal(decision);
  // The hot path: ids are generated base32 and need no escaping, so the
  // body is assembled directly; only a caller's request_id is escaped.
  HttpResponse r;
  r.status = 200;
  r.headers.emplace_back("content-type", "application/json");
  r.body = "{\"allowed\":true,\"key_id\":\"" + decision.key_id + "\",\"workspace_id\":\"" +
           decision.workspace_id + "\",\"logging\":" + (decision.logging ? "true" : "false") +
           ",\"request_id\":" +
           (request_id ? Json(*request_id).dump(-1, ' ', false, Json::error_handler_t::replace)
                       : "\"" + NextRequestId() + "\"") +
           "}";
  AddRateLimitHeaders(decision, &r);
  return r;
}

Result<HttpResponse> Service::Impl::RecordCalls(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"calls"}));
  auto calls_json = body.find("calls");
  if (calls_json == body.end() || !calls_json->is_array()) {
    return Status::InvalidArgument("calls must be an array", "calls");
  }
  std::vector<CallReport> calls;
  calls.reserve(calls_json->size());
  for (size_t i = 0; i < calls_json->size(); i++) {
    KL_ASSIGN_OR_RETURN(CallReport c, ParseCall((*calls_json)[i], i));
    calls.push_back(std::move(c));
  }
  KL_ASSIGN_OR_RETURN(RecordResult recorded, data_plane->RecordCalls(std::move(calls)));
  return JsonResponse(200, {{"recorded", recorded.recorded}, {"duplicates", recorded.duplicates}});
}

}  // namespace keyledger

