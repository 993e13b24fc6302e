// A small HTTP/1.1 server on 127.0.0.1 for tests that deliver webhooks: it
// records every request and answers from a script (FailNext, SetStallMs,
// SetResponseBody). One request per connection ("connection: close"); bodies
// by Content-Length only (no chunked requests). Connections are served one at
// a time, in arrival order, on one background thread.
//
// Thread safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ledger/status.h"

namespace keyledger::testing {

struct ReceivedRequest {
  std::string method;                          // "POST"
  std::string target;                          // "/hook?x=1"
  std::map<std::string, std::string> headers;  // names lower-cased; repeats joined with ", "
  std::string body;

  // Returns the value of header `name` (lower-case), "" if absent.
  std::string Header(const std::string& name) const;
};

class WebhookReceiver {
 public:
  // Limits on what a request may carry; larger requests get a 400 and are not recorded.
  static constexpr size_t kHeadBytesMax = 64 * 1024;
  static constexpr size_t kBodyBytesMax = 16 * 1024 * 1024;
  // How long a connection may stay silent mid-request before it is dropped.
  static constexpr int64_t kReadTimeoutMs = 5000;

  // Returns a running receiver on an ephemeral port. Errors: IOError.
  static Result<std::unique_ptr<WebhookReceiver>> Start();

  // Stops accepting, wakes a stalled answer, and joins the thread.
  ~WebhookReceiver();
  WebhookReceiver(const WebhookReceiver&) = delete;
  WebhookReceiver& operator=(const WebhookReceiver&) = delete;

  uint16_t port() const { return port_; }
  // Returns "http://127.0.0.1:<port><path>"; `path` starts with '/'.
  std::string Url(std::string_view path = "/hook") const;

  // The next `n` requests are answered with `status` (then 200 again). A 3xx
  // carries "location: /redirected".
  void FailNext(size_t n, uint32_t status);
  // Every later request waits `ms` after being recorded before it is answered
  // (0: answer at once). A stop cuts the wait short.
  void SetStallMs(int64_t ms);
  // The body of every later answer (default "ok").
  void SetResponseBody(std::string body);

  // Returns a copy of the requests recorded so far, oldest first.
  std::vector<ReceivedRequest> Requests() const;
  size_t RequestCount() const;
  // Returns the number of TCP connections accepted so far.
  size_t ConnectionCount() const;
  // Returns true once at least `n` requests are recorded, false after `timeout_ms`.
  bool WaitForRequests(size_t n, int64_t timeout_ms) const;

 private:
  WebhookReceiver(int listen_fd, uint16_t port);
  void Serve();
  void HandleConnection(int fd);
  // Returns the status to answer the next request with, per the script.
  uint32_t NextStatus();
  void Stall();

  const int listen_fd_;
  const uint16_t port_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // signals new requests and stops
  std::vector<ReceivedRequest> requests_;
  size_t connections_ = 0;
  size_t fail_remaining_ = 0;
  uint32_t fail_status_ = 500;
  int64_t stall_ms_ = 0;
  std::string response_body_ = "ok";

  std::thread thread_;  // last: starts after every member above exists
};

}  // namespace keyledger::testing
