// Plain HTTP request/response values exchanged between the HTTP I/O layer
// (api/http_server.h) and request handling. No Boost here on purpose: only
// api/http_server.cc knows Beast.
//
// Thread safety: HttpRequest and HttpResponse are values; distinct objects may
// be used concurrently, one object needs external synchronization.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keyledger {

struct HttpRequest {
  std::string method;  // as received, e.g. "GET"
  std::string target;  // path + query as received, e.g. "/v1/keys?limit=10"
  // In received order; names lower-cased, values as received. A repeated header
  // appears once per occurrence.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string remote_ip;  // peer address text, e.g. "127.0.0.1" or "::1"

  // Returns the value of the first header named `lower_name`, or "" if absent.
  // REQUIRES: `lower_name` is lower-case.
  // The view points into `headers`; it is invalidated when `headers` changes.
  std::string_view Header(std::string_view lower_name) const;
};

struct HttpResponse {
  int status = 200;  // REQUIRES: 200..599; the server answers 500 otherwise
  // Added to the response as given (e.g. {"content-type", "application/json"}).
  // The server owns and drops content-length, transfer-encoding and
  // connection, and sets "server: keyledger".
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // REQUIRES: empty for 204 and 304
};

// Returns a response with `status`, content-type application/json and body
//   {"error":{"code":<code>,"message":<message>,"field":<field>}}
// where "field" is omitted when `field` is empty. Strings are JSON-escaped;
// invalid UTF-8 is replaced with U+FFFD.
HttpResponse JsonError(int status, std::string_view code, std::string_view message,
                       std::string_view field = {});

// Turns one request into one response. Synchronous and may block (e.g. on a
// synced disk write), which occupies one server I/O thread for that long.
//
// Thread safety: the server calls the handler from several threads at once
// (one call at a time per connection), so it must be thread-safe. It should
// not throw; if it does, the server answers 500 "internal".
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

}  // namespace keyledger

namespace keyledger {

// ---- Reverse proxy (gateway mode) --------------------------------------------
//
// With ProxyHooks given to HttpServer::Start, requests outside the server's
// own paths are relayed to an upstream instead of being passed to the handler.
// The hooks decide; the server only moves bytes.

// What the server reports about one relayed exchange, once, when it ends.
struct ProxyExchange {
  // The upstream's status as relayed to the client; or the server's own
  // answer when the upstream failed (502 unreachable or broken, 504 no
  // response header in time); or 499 when the client went away before the
  // response was complete.
  int status = 0;
  bool upstream_failed = false;      // 502/504 above, or broken mid-response
  int64_t latency_us = 0;            // from admission to the last byte sent (or failure)
  uint64_t request_body_bytes = 0;   // relayed to the upstream
  uint64_t response_body_bytes = 0;  // relayed to the client
  // The upstream's response headers (lower-cased names), when the admission
  // asked for them (capture_response_headers); empty when it failed.
  std::vector<std::pair<std::string, std::string>> response_headers;
  // The first ProxyAdmission::capture_bytes_max bytes of each body.
  std::string request_body_excerpt;
  std::string response_body_excerpt;
};

// The hooks' answer for one request, given its header (body not read yet).
struct ProxyAdmission {
  // false: `answer` is sent to the client instead (the request's body, if
  // any, is not read and the connection is closed after the answer).
  bool relay = false;
  HttpResponse answer;
  // Header changes for the upstream request: names (lower-case) removed, then
  // fields set (replacing any of the same name).
  std::vector<std::string> remove_request_headers;
  std::vector<std::pair<std::string, std::string>> set_request_headers;
  // Fields set on the response to the client, replacing the upstream's;
  // except the list-valued "vary" and "access-control-expose-headers", whose
  // values are appended to the upstream's (", ").
  std::vector<std::pair<std::string, std::string>> set_response_headers;
  // Bytes of each body to copy into ProxyExchange excerpts; 0 = none.
  size_t capture_bytes_max = 0;
  // Whether to copy the upstream's response headers into the exchange
  // (a copy of every field per request: ask only when they are logged).
  bool capture_response_headers = false;
  // Called exactly once when a relayed exchange ends, on an I/O thread; also
  // when the server is stopped mid-exchange. Must not block.
  std::function<void(ProxyExchange)> on_done;
};

struct ProxyHooks {
  // true: the request is the server's own (passed to the HttpHandler).
  // `target` is the request target as received (path and query).
  std::function<bool(std::string_view target)> is_own_target;
  // Decides a proxied request. `head` has everything but the body.
  std::function<ProxyAdmission(const HttpRequest& head)> admit;
};

}  // namespace keyledger
