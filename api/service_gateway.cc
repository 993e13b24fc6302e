// Gateway mode (`serve --upstream`): the Service's side of the reverse proxy.
// The HTTP server relays the bytes; this file decides what is relayed
// (authorization, CORS) and turns each relayed exchange into a recorded call.
#include <algorithm>
#include <cassert>
#include <string_view>
#include <vector>

#include "api/service_internal.h"

namespace keyledger {
namespace {

// Own paths: everything else is the rendering API's.
bool IsOwnPath(std::string_view target) { return RouteOf(target) != RequestCounters::kOther; }

// Methods a browser may be allowed to use across origins.
constexpr std::string_view kCorsMethods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};
// How long a browser may cache a preflight answer (seconds).
constexpr char kPreflightMaxAgeSeconds[] = "600";
// Response headers a browser script may read besides the CORS-safelisted ones.
constexpr char kCorsExposedHeaders[] =
    "ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after, x-request-id";
// The longest Access-Control-Request-Headers value answered.
constexpr size_t kPreflightHeaderListBytesMax = 1024;

bool IsTokenListChar(char c) {  // a token, or the ", " between tokens of a list
  return IsHttpTokenChar(c) || c == ',' || c == ' ';
}

void AddCorsHeaders(std::string_view origin,
                    std::vector<std::pair<std::string, std::string>>* headers) {
  headers->emplace_back("access-control-allow-origin", std::string(origin));
  headers->emplace_back("access-control-expose-headers", kCorsExposedHeaders);
  headers->emplace_back("vary", "Origin");
}

std::vector<HttpHeader> ExcerptHeaders(const std::vector<std::pair<std::string, std::string>>& in) {
  std::vector<HttpHeader> out;
  const size_t n = std::min(in.size(), kExcerptHeadersMax);
  out.reserve(n);
  for (size_t i = 0; i < n; i++) out.push_back(HttpHeader{in[i].first, in[i].second});
  return out;
}

// The call as POST /v1/calls would carry it, from what the gateway saw:
// this much from the request, at admission (so the relay keeps it, not the
// whole request head), and FinishCallReport adds the exchange. RecordCalls
// fills in the workspace, the units (1 for a 2xx), the logging switch, and
// trims and redacts the excerpts.
CallReport StartCallReport(const HttpRequest& head, std::string client_ip,
                           const AuthorizeDecision& decision, std::string request_id,
                           int64_t occurred_at_us) {
  CallReport report;
  ApiCallRecorded& call = report.call;
  call.request_id = std::move(request_id);
  call.key_id = decision.key_id;
  call.occurred_at_us = occurred_at_us;
  call.method = head.method.substr(0, kCallMethodBytesMax);
  call.path = head.target.substr(0, kCallPathBytesMax);
  call.client_ip = std::move(client_ip);
  call.origin = std::string(head.Header("origin").substr(0, kCallOriginBytesMax));
  call.logged = decision.logging;  // the data plane decides again from the key
  report.logging_when_made = decision.logging;
  if (decision.logging) call.request.headers = ExcerptHeaders(head.headers);
  return report;
}

void FinishCallReport(ProxyExchange exchange, CallReport* report) {
  ApiCallRecorded& call = report->call;
  assert(exchange.status >= 100 && exchange.status <= 599);
  call.status = static_cast<uint16_t>(exchange.status);
  call.latency_us = static_cast<uint64_t>(std::max<int64_t>(exchange.latency_us, 0));
  call.request_bytes = exchange.request_body_bytes;
  call.response_bytes = exchange.response_body_bytes;
  if (call.logged) {
    call.request.body_excerpt = std::move(exchange.request_body_excerpt);
    call.response.headers = ExcerptHeaders(exchange.response_headers);
    call.response.body_excerpt = std::move(exchange.response_body_excerpt);
  }
}

// Splits the X-Forwarded-For headers of `head` into their entries, in order,
// keeping at most the last kForwardedForHopsMax (trimmed of spaces and tabs).
std::vector<std::string_view> ForwardedForEntries(const HttpRequest& head) {
  std::vector<std::string_view> entries;
  for (const auto& [name, value] : head.headers) {
    if (name != "x-forwarded-for") continue;
    std::string_view rest = value;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      std::string_view entry = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      const size_t first = entry.find_first_not_of(" \t");
      const size_t last = entry.find_last_not_of(" \t");
      entries.push_back(first == std::string_view::npos ? std::string_view()
                                                        : entry.substr(first, last - first + 1));
      if (entries.size() > kForwardedForHopsMax) entries.erase(entries.begin());
    }
  }
  return entries;
}

}  // namespace

// Returns the address of an X-Forwarded-For entry without the port some
// proxies add ("203.0.113.9:51234", "[2001:db8::1]:443", "[2001:db8::1]").
std::string_view WithoutPort(std::string_view entry) {
  if (entry.starts_with('[')) {
    const size_t close = entry.find(']');
    return close == std::string_view::npos ? entry : entry.substr(1, close - 1);
  }
  const size_t colon = entry.find(':');
  // One colon: IPv4 and a port (IPv6 text has at least two).
  return colon != std::string_view::npos && entry.find(':', colon + 1) == std::string_view::npos
             ? entry.substr(0, colon)
             : entry;
}

std::string GatewayClientIp(const HttpRequest& head, const SecurityRules* trusted_proxies) {
  if (trusted_proxies == nullptr) return head.remote_ip;
  assert(trusted_proxies->ip_restricted());  // an empty list would trust everyone
  Result<IpAddress> hop = ParseIpAddress(head.remote_ip);
  if (!hop.ok() || !trusted_proxies->AllowsIp(*hop)) return head.remote_ip;
  const std::vector<std::string_view> entries = ForwardedForEntries(head);
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    Result<IpAddress> forwarded = ParseIpAddress(WithoutPort(*it));
    if (!forwarded.ok()) return kUnknownClientIp;  // fail closed: trust no address left of it
    hop = std::move(forwarded);
    if (!trusted_proxies->AllowsIp(*hop)) break;
  }
  return hop->ToString();
}

HttpResponse Service::Impl::AnswerPreflight(const HttpRequest& head,
                                            std::string_view origin) const {
  const std::string_view method = head.Header("access-control-request-method");
  const std::string_view requested_headers = head.Header("access-control-request-headers");
  const bool method_ok =
      std::find(std::begin(kCorsMethods), std::end(kCorsMethods), method) != std::end(kCorsMethods);
  const bool headers_ok =
      requested_headers.size() <= kPreflightHeaderListBytesMax &&
      std::all_of(requested_headers.begin(), requested_headers.end(), IsTokenListChar);
  if (!method_ok || !headers_ok || !state().AnyGroupAllowsOrigin(origin)) {
    // No CORS headers: the browser refuses the request that would follow.
    return JsonError(403, "permission_denied",
                     "origin, method or headers are not allowed by any security group", "origin");
  }
  HttpResponse r;
  r.status = 204;
  r.headers.emplace_back("access-control-allow-origin", std::string(origin));
  r.headers.emplace_back("access-control-allow-methods", std::string(method));
  r.headers.emplace_back("access-control-allow-headers",
                         requested_headers.empty() ? std::string("authorization")
                                                   : std::string(requested_headers));
  r.headers.emplace_back("access-control-max-age", kPreflightMaxAgeSeconds);
  r.headers.emplace_back("vary", "Origin");
  return r;
}

ProxyAdmission Service::Impl::AdmitProxied(const HttpRequest& head) {
  ProxyAdmission admission;
  const std::string_view origin = head.Header("origin");
  if (head.method == "OPTIONS" && !origin.empty() &&
      !head.Header("access-control-request-method").empty()) {
    admission.answer = AnswerPreflight(head, origin);
    requests.Count(RequestCounters::kGateway, admission.answer.status);
    return admission;
  }
  // Reserve the recording slot first: a request refused for lack of one must
  // not have used its key's rate allowance.
  if (!data_plane->ReserveCall()) {
    // Recording is behind (the disk is slow or failing): refuse rather than
    // relay a call that could not be recorded.
    admission.answer = JsonError(503, "unavailable", "call recording is behind; retry shortly");
    admission.answer.headers.emplace_back("retry-after", "1");
    requests.Count(RequestCounters::kGateway, 503);
    return admission;
  }
  std::string client_ip = GatewayClientIp(head, o.trusted_proxies.get());
  AuthorizeRequest ar;
  ar.authorization = head.Header("authorization");
  ar.client_ip = client_ip;
  ar.origin = origin;
  ar.now_us = d.clock->NowUs();
  ar.rate_now_us = RateNowUs();
  const auto start = std::chrono::steady_clock::now();
  AuthorizeDecision decision = data_plane->Authorize(ar);
  authorize_latency.Observe(ElapsedUs(start));
  if (decision.outcome != AuthorizeOutcome::kAllowed) {
    data_plane->CancelReservedCall();  // refusals are aggregated, not queued
    admission.answer = AuthorizeRefusal(decision);
    if (!origin.empty() && decision.outcome != AuthorizeOutcome::kForbidden) {
      AddCorsHeaders(origin, &admission.answer.headers);  // the script may read why
    }
    requests.Count(RequestCounters::kGateway, admission.answer.status);
    return admission;
  }
  std::string request_id = NextRequestId();
  admission.relay = true;
  // The rendering API learns who called, never the secret.
  admission.remove_request_headers = {"authorization"};
  admission.set_request_headers = {{"x-keyledger-key-id", decision.key_id},
                                   {"x-keyledger-workspace-id", decision.workspace_id},
                                   {"x-request-id", request_id}};
  HttpResponse rate_headers;
  AddRateLimitHeaders(decision, &rate_headers);
  admission.set_response_headers = std::move(rate_headers.headers);
  admission.set_response_headers.emplace_back("x-request-id", request_id);
  if (!origin.empty()) {
    AddCorsHeaders(origin, &admission.set_response_headers);
  } else {
    // The answer to the same request with an Origin differs (CORS headers).
    admission.set_response_headers.emplace_back("vary", "Origin");
  }
  admission.capture_bytes_max = decision.logging ? kBodyExcerptBytesMax : 0;
  admission.capture_response_headers = decision.logging;
  admission.on_done = [this, report = StartCallReport(head, std::move(client_ip), decision,
                                                      std::move(request_id), ar.now_us)](
                           ProxyExchange exchange) mutable {
    requests.Count(RequestCounters::kGateway, exchange.status);
    FinishCallReport(std::move(exchange), &report);
    data_plane->QueueReservedCall(std::move(report));
  };
  return admission;
}

ProxyHooks Service::GatewayHooks() {
  ProxyHooks hooks;
  hooks.is_own_target = IsOwnPath;
  hooks.admit = [impl = impl_](const HttpRequest& head) { return impl->AdmitProxied(head); };
  return hooks;
}

}  // namespace keyledger
