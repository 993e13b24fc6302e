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
