// The data-plane endpoints of the Service: POST /v1/authorize, POST /v1/calls.
#include <algorithm>
#include <cassert>

#include "api/authorize_json.h"
#include "api/call_batch_json.h"
#include "api/service_internal.h"

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

// Room for a 200 answer with generated ids (the body grows if a caller's
// request_id is longer).
constexpr size_t kAuthorizeBodyBytesTypical = 128;
// content-type and the rate-limit headers (AddRateLimitHeaders: at most 4).
constexpr size_t kAuthorizeHeadersMax = 5;

Result<HttpResponse> Service::Impl::Authorize(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(AuthorizeBody body, ParseAuthorizeBody(req.body));
  const std::optional<std::string>& request_id = body.request_id;
  AuthorizeRequest ar;
  ar.authorization = req.Header("authorization");
  ar.client_ip = body.client_ip;
  ar.origin = body.origin ? std::string_view(*body.origin) : req.Header("origin");
  ar.now_us = d.clock->NowUs();
  ar.rate_now_us = RateNowUs();
  AuthorizeDecision decision = data_plane->Authorize(ar);
  if (decision.outcome != AuthorizeOutcome::kAllowed) return AuthorizeRefusal(decision);
  // The hot path: ids are generated base32 and need no escaping, so the
  // body is assembled directly; only a caller's request_id is escaped.
  HttpResponse r;
  r.status = 200;
  r.headers.reserve(kAuthorizeHeadersMax);
  r.headers.emplace_back("content-type", "application/json");
  std::string& b = r.body;
  b.reserve(kAuthorizeBodyBytesTypical);
  b += "{\"allowed\":true,\"key_id\":\"";
  b += decision.key_id;
  b += "\",\"workspace_id\":\"";
  b += decision.workspace_id;
  b += "\",\"logging\":";
  b += decision.logging ? "true" : "false";
  b += ",\"request_id\":";
  if (request_id) {
    b += Json(*request_id).dump(-1, ' ', false, Json::error_handler_t::replace);
  } else {
    b += '"';
    b += NextRequestId();
    b += '"';
  }
  b += '}';
  AddRateLimitHeaders(decision, &r);
  return r;
}

Result<HttpResponse> Service::Impl::RecordCalls(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(std::vector<CallReport> calls, ParseCallBatch(req.body, data_plane->calls_per_batch_max()));
  KL_ASSIGN_OR_RETURN(RecordResult recorded, data_plane->RecordCalls(std::move(calls)));
  return JsonResponse(200, {{"recorded", recorded.recorded}, {"duplicates", recorded.duplicates}});
}

}  // namespace keyledger

