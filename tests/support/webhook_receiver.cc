#include "tests/support/webhook_receiver.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <chrono>
#include <optional>

#include "tests/support/socket_io.h"

namespace keyledger::testing {
namespace {

constexpr int kAcceptPollMs = 50;  // how quickly the accept loop notices a stop

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

const char* Reason(uint32_t status) {
  switch (status) {
    case 200: return "OK";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

// Parses the request line and headers of `head` (which ends with CRLFCRLF).
// Returns nullopt if the request line is malformed.
std::optional<ReceivedRequest> ParseHead(std::string_view head) {
  ReceivedRequest r;
  size_t line_end = head.find("\r\n");
  std::string_view line = head.substr(0, line_end);
  size_t sp1 = line.find(' ');
  size_t sp2 = line.find(' ', sp1 == std::string_view::npos ? sp1 : sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) return std::nullopt;
  r.method = std::string(line.substr(0, sp1));
  r.target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  size_t pos = line_end + 2;
  while (pos < head.size()) {
    size_t end = head.find("\r\n", pos);
    std::string_view header = head.substr(pos, end - pos);
    pos = end + 2;
    size_t colon = header.find(':');
    if (header.empty() || colon == std::string_view::npos) continue;
    std::string name = Lower(std::string(Trim(header.substr(0, colon))));
    std::string value(Trim(header.substr(colon + 1)));
    auto [it, inserted] = r.headers.emplace(name, value);
    if (!inserted) it->second += ", " + value;
  }
  return r;
}

// Returns the Content-Length of `r` (0 if absent), or nullopt if invalid.
std::optional<size_t> ContentLength(const ReceivedRequest& r) {
  std::string value = r.Header("content-length");
  if (value.empty()) return 0;
  size_t n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || end != value.data() + value.size()) return std::nullopt;
  return n;
}

std::string Response(uint32_t status, const std::string& body) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) + "\r\n";
  out += "content-type: text/plain\r\n";
  out += "content-length: " + std::to_string(body.size()) + "\r\n";
  out += "connection: close\r\n";
  if (status >= 300 && status <= 399) out += "location: /redirected\r\n";
  out += "\r\n" + body;
  return out;
}

}  // namespace

std::string ReceivedRequest::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

Result<std::unique_ptr<WebhookReceiver>> WebhookReceiver::Start() {
  KL_ASSIGN_OR_RETURN(Listener listener, ListenLoopback());
  return std::unique_ptr<WebhookReceiver>(new WebhookReceiver(listener.fd, listener.port));
}

WebhookReceiver::WebhookReceiver(int listen_fd, uint16_t port)
    : listen_fd_(listen_fd), port_(port), thread_([this] { Serve(); }) {}

WebhookReceiver::~WebhookReceiver() {
  {
    // Under the lock so that a Stall() between its check and its wait cannot miss it.
    std::lock_guard<std::mutex> lock(mu_);
    stopping_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  thread_.join();
  ::close(listen_fd_);
}

std::string WebhookReceiver::Url(std::string_view path) const {
  return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
}

void WebhookReceiver::FailNext(size_t n, uint32_t status) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_remaining_ = n;
  fail_status_ = status;
}

void WebhookReceiver::SetStallMs(int64_t ms) {
  std::lock_guard<std::mutex> lock(mu_);
  stall_ms_ = ms;
}

void WebhookReceiver::SetResponseBody(std::string body) {
  std::lock_guard<std::mutex> lock(mu_);
  response_body_ = std::move(body);
}

std::vector<ReceivedRequest> WebhookReceiver::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

size_t WebhookReceiver::RequestCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_.size();
}

size_t WebhookReceiver::ConnectionCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connections_;
}

bool WebhookReceiver::WaitForRequests(size_t n, int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return requests_.size() >= n; });
}

void WebhookReceiver::Serve() {
  while (!stopping_.load(std::memory_order_acquire)) {
    int fd = AcceptWithin(listen_fd_, kAcceptPollMs);
    if (fd < 0) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      connections_++;
    }
    HandleConnection(fd);
    ::close(fd);
  }
}

void WebhookReceiver::HandleConnection(int fd) {
  SocketReader reader(fd, &stopping_, kReadTimeoutMs);
  std::optional<std::string> head = reader.ReadUntil("\r\n\r\n", kHeadBytesMax);
  if (!head) return;
  std::optional<ReceivedRequest> request = ParseHead(*head);
  std::optional<size_t> length = request ? ContentLength(*request) : std::nullopt;
  if (!length || *length > kBodyBytesMax) {
    (void)SendAll(fd, Response(400, "bad request"));
    return;
  }
  std::optional<std::string> body = reader.ReadExactly(*length);
  if (!body) return;
  request->body = std::move(*body);
  uint32_t status = NextStatus();
  std::string response_body;
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(std::move(*request));
    response_body = response_body_;
  }
  cv_.notify_all();
  Stall();
  // The client may have given up during a stall; a failed send is expected then.
  (void)SendAll(fd, Response(status, response_body));
  ::shutdown(fd, SHUT_WR);
}

uint32_t WebhookReceiver::NextStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_remaining_ == 0) return 200;
  fail_remaining_--;
  return fail_status_;
}

void WebhookReceiver::Stall() {
  std::unique_lock<std::mutex> lock(mu_);
  if (stall_ms_ <= 0) return;
  cv_.wait_for(lock, std::chrono::milliseconds(stall_ms_),
               [&] { return stopping_.load(std::memory_order_acquire); });
}

}  // namespace keyledger::testing
