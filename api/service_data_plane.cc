// The data-plane endpoints of the Service: POST /v1/authorize, POST /v1/calls.
#include <algorithm>
#include <cassert>

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
  KL_ASSIGN_OR_RETURN(std::vector<CallReport> calls, ParseCallBatch(req.body));
  KL_ASSIGN_OR_RETURN(RecordResult recorded, data_plane->RecordCalls(std::move(calls)));
  return JsonResponse(200, {{"recorded", recorded.recorded}, {"duplicates", recorded.duplicates}});
}

}  // namespace keyledger

