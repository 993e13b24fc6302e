// The only translation unit that includes Boost.Beast/Asio. Structure follows
// Beast's http_server_async / advanced_server examples: an accept loop on its
// own strand, and one Session per connection on its own strand.
//
// Exceptions: Boost calls here use error_code overloads; what may still throw
// (allocation, thread creation) is caught in Start() and in the I/O threads.

#include "api/http_server.h"

#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace keyledger {
namespace http_internal {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

// After a response that closes the connection, unread input is drained for at
// most this long / this many bytes, so that the peer reads the response
// instead of a connection reset (e.g. a 413 sent before the body was read).
constexpr int64_t kLingerTimeoutMs = 1000;
constexpr size_t kLingerBytesMax = 1 << 20;
// Read size while waiting for the first byte of a request.
constexpr size_t kWaitReadBytes = 4096;
// Pause after a failed accept (e.g. out of file descriptors) before retrying.
constexpr int64_t kAcceptRetryDelayMs = 50;

constexpr char kContinueResponse[] = "HTTP/1.1 100 Continue\r\n\r\n";

std::chrono::milliseconds Ms(int64_t ms) { return std::chrono::milliseconds(ms); }

std::string LowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool IsHttpParseError(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category();
}

// Headers the server itself sets from the message framing.
bool IsServerOwnedHeader(std::string_view lower_name) {
  return lower_name == "content-length" || lower_name == "transfer-encoding" ||
         lower_name == "connection";
}

bool IsValidHeaderName(std::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (c <= ' ' || c >= 0x7f || c == ':') return false;
  }
  return true;
}

bool IsValidHeaderValue(std::string_view value) {
  for (unsigned char c : value) {
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

bool StatusForbidsBody(int status) { return status == 204 || status == 304; }

// Returns whether the server can send `response` as given.
bool IsValidResponse(const HttpResponse& response) {
  if (response.status < 200 || response.status > 599) return false;
  if (StatusForbidsBody(response.status) && !response.body.empty()) return false;
  for (const auto& [name, value] : response.headers) {
    if (!IsValidHeaderName(name) || !IsValidHeaderValue(value)) return false;
  }
  return true;
}

std::string EndpointText(const tcp::endpoint& endpoint) {
  const std::string address = endpoint.address().to_string();
  const std::string port = std::to_string(endpoint.port());
  return endpoint.address().is_v6() ? "[" + address + "]:" + port : address + ":" + port;
}

Status ValidateOptions(const HttpServerOptions& o, const HttpHandler& handler) {
  if (!handler) return Status::InvalidArgument("handler is empty", "handler");
  if (o.threads < 1) return Status::InvalidArgument("threads must be >= 1", "threads");
  if (o.header_bytes_max < 1) {
    return Status::InvalidArgument("header_bytes_max must be >= 1", "header_bytes_max");
  }
  const std::pair<int64_t, const char*> timeouts[] = {
      {o.read_timeout_ms, "read_timeout_ms"},
      {o.idle_timeout_ms, "idle_timeout_ms"},
      {o.write_timeout_ms, "write_timeout_ms"},
      {o.drain_timeout_ms, "drain_timeout_ms"},
  };
  for (const auto& [ms, name] : timeouts) {
    if (ms < 1) return Status::InvalidArgument(std::string(name) + " must be >= 1", name);
  }
  if (o.connections_max < 1) {
    return Status::InvalidArgument("connections_max must be >= 1", "connections_max");
  }
  return Status::Ok();
}

}  // namespace

// Statistics only: relaxed atomics, no ordering with anything else.
struct Counters {
  std::atomic<uint64_t> connections_accepted{0};
  std::atomic<uint64_t> connections_rejected{0};
  std::atomic<uint64_t> connections_open{0};
  std::atomic<uint64_t> connections_timed_out{0};
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> requests_in_flight{0};
  std::atomic<uint64_t> requests_rejected{0};
  std::atomic<uint64_t> handler_errors{0};
};

void Increment(std::atomic<uint64_t>& counter) { counter.fetch_add(1, std::memory_order_relaxed); }
void Decrement(std::atomic<uint64_t>& counter) { counter.fetch_sub(1, std::memory_order_relaxed); }

class Session;

// Owns the io_context, the acceptor and the I/O threads; tracks sessions so
// Stop() can close idle ones and wait for the rest.
//
// Thread safety: public methods are thread-safe. DoAccept/OnAccept/CloseAcceptor
// run on the acceptor's strand.
class ServerCore {
 public:
  ServerCore(HttpServerOptions options, HttpHandler handler)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        ioc_(std::make_unique<net::io_context>(options_.threads)) {}
  ~ServerCore() { Stop(); }

  // Binds, listens and arms the first accept.
  // Returns InvalidArgument for a bad host, IOError when the socket calls fail.
  Status Listen();
  // Returns IOError when a thread cannot be created (the rest are stopped by ~ServerCore).
  Status StartThreads();

  void Stop();
  void WaitForSignal();
  uint16_t port() const { return port_; }
  HttpServerStats stats() const;

  // For sessions.
  const HttpServerOptions& options() const { return options_; }
  Counters& counters() { return counters_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  // Calls the handler; turns exceptions and invalid responses into 500.
  HttpResponse CallHandler(const HttpRequest& request);
  // Called by ~Session.
  void Unregister(uint64_t session_id);

 private:
  void DoAccept();
  void OnAccept(error_code ec, tcp::socket socket);
  void DoAcceptRetry();
  void CloseAcceptor();
  // Starts a session for `socket`, or closes it when over connections_max or stopping.
  void Admit(tcp::socket socket);
  void DoStop();
  void RunThread();
  bool OnIoThread() const;

  const HttpServerOptions options_;
  const HttpHandler handler_;
  Counters counters_;
  std::atomic<bool> stopping_{false};
  uint16_t port_ = 0;
  std::once_flag stop_once_;
  std::vector<std::thread> threads_;  // written only before Start() returns

  std::mutex mu_;
  std::condition_variable cv_;  // a session ended, Stop() began, or a signal came
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;  // GUARDED_BY(mu_)
  uint64_t next_session_id_ = 1;                                     // GUARDED_BY(mu_)
  bool stop_requested_ = false;                                      // GUARDED_BY(mu_)
  bool signaled_ = false;                                            // GUARDED_BY(mu_)

  // Declared after everything sessions touch: destroying ioc_ destroys the
  // queued handlers and with them the sessions, whose destructors call
  // Unregister(). DoStop() resets these explicitly, ioc_ last.
  std::unique_ptr<net::io_context> ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<net::steady_timer> accept_retry_timer_;  // on the acceptor's strand
  std::unique_ptr<net::signal_set> signals_;               // GUARDED_BY(mu_)
};

// One connection. Reads a request (wait for its first byte, header, optional
// 100 Continue, body), calls the handler, writes the response, and repeats
// while keep-alive holds.
//
// Thread safety: everything but Start() and PostServerStop() runs on the
// connection's strand; those two only post to it.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerCore& core, uint64_t id, tcp::socket socket)
      : core_(core), id_(id), remote_ip_(PeerIp(socket)), stream_(std::move(socket)) {}
  ~Session() { core_.Unregister(id_); }

  void Start();
  // Asks the session to close if it is waiting for a request.
  void PostServerStop();

 private:
  static std::string PeerIp(const tcp::socket& socket);

  void DoWaitForRequest();
  void OnWaitForRequest(error_code ec, size_t bytes);
  void DoReadHeader();
  void OnReadHeader(error_code ec, size_t bytes);
  void DoWriteContinue();
  void OnWriteContinue(error_code ec, size_t bytes);
  void DoReadBody();
  void OnReadBody(error_code ec, size_t bytes);
  void OnReadError(error_code ec);
  void Handle();
  HttpRequest TakeRequest();
  void DoWriteError(int status, std::string_view code, std::string message);
  void DoWrite(HttpResponse response, bool keep_alive, unsigned version);
  void OnWrite(bool close, error_code ec, size_t bytes);
  void DoLinger();
  void DoLingerRead();
  void OnLingerRead(error_code ec, size_t bytes);
  void OnServerStop();
  void Close();

  ServerCore& core_;
  const uint64_t id_;
  const std::string remote_ip_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  uint64_t requests_served_ = 0;
  bool waiting_for_request_ = false;  // no byte of the next request read yet
  size_t linger_bytes_ = 0;
  std::array<char, 4096> linger_buffer_;
};

// ---------------------------------------------------------------------------
// Session

std::string Session::PeerIp(const tcp::socket& socket) {
  error_code ec;
  const tcp::endpoint peer = socket.remote_endpoint(ec);
  return ec ? std::string() : peer.address().to_string();
}

void Session::Start() {
  net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
    // The first request must be complete within read_timeout_ms of accept.
    self->stream_.expires_after(Ms(self->core_.options().read_timeout_ms));
    self->DoWaitForRequest();
  });
}

void Session::PostServerStop() {
  net::post(stream_.get_executor(), [self = shared_from_this()] { self->OnServerStop(); });
}

void Session::OnServerStop() {
  if (waiting_for_request_) stream_.cancel();  // OnWaitForRequest sees operation_aborted
}

void Session::DoWaitForRequest() {
  if (core_.stopping()) return Close();
  if (buffer_.size() > 0) {  // a pipelined request is already buffered
    stream_.expires_after(Ms(core_.options().read_timeout_ms));
    return DoReadHeader();
  }
  if (requests_served_ > 0) stream_.expires_after(Ms(core_.options().idle_timeout_ms));
  waiting_for_request_ = true;
  stream_.async_read_some(
      buffer_.prepare(kWaitReadBytes),
      beast::bind_front_handler(&Session::OnWaitForRequest, shared_from_this()));
}

void Session::OnWaitForRequest(error_code ec, size_t bytes) {
  waiting_for_request_ = false;
  if (ec) {
    // Idle expiry, peer close or Stop(). Only a first request that never
    // arrived counts as a timeout; idle keep-alive expiry is normal.
    if (ec == beast::error::timeout && requests_served_ == 0) {
      Increment(core_.counters().connections_timed_out);
    }
    return Close();
  }
  buffer_.commit(bytes);
  if (requests_served_ > 0) stream_.expires_after(Ms(core_.options().read_timeout_ms));
  DoReadHeader();
}

void Session::DoReadHeader() {
  parser_.emplace();
  parser_->body_limit(core_.options().body_bytes_max);
  parser_->header_limit(core_.options().header_bytes_max);
  http::async_read_header(stream_, buffer_, *parser_,
                          beast::bind_front_handler(&Session::OnReadHeader, shared_from_this()));
}

void Session::OnReadHeader(error_code ec, size_t bytes) {
  if (ec) return OnReadError(ec);
  if (parser_->is_done()) return Handle();  // no body
  const auto& request = parser_->get();
  if (request.version() == 11 && beast::iequals(request[http::field::expect], "100-continue")) {
    return DoWriteContinue();
  }
  DoReadBody();
}

// Runs under the request's read deadline, like the reads around it.
void Session::DoWriteContinue() {
  net::async_write(stream_, net::buffer(kContinueResponse, sizeof(kContinueResponse) - 1),
                   beast::bind_front_handler(&Session::OnWriteContinue, shared_from_this()));
}

void Session::OnWriteContinue(error_code ec, size_t bytes) {
  if (ec) return OnReadError(ec);
  DoReadBody();
}

void Session::DoReadBody() {
  http::async_read(stream_, buffer_, *parser_,
                   beast::bind_front_handler(&Session::OnReadBody, shared_from_this()));
}

void Session::OnReadBody(error_code ec, size_t bytes) {
  if (ec) return OnReadError(ec);
  Handle();
}

void Session::OnReadError(error_code ec) {
  const HttpServerOptions& options = core_.options();
  if (ec == http::error::body_limit) {
    return DoWriteError(413, "payload_too_large",
                        "request body exceeds " + std::to_string(options.body_bytes_max) +
                            " bytes");
  }
  if (ec == http::error::header_limit) {
    return DoWriteError(431, "headers_too_large",
                        "request line and headers exceed " +
                            std::to_string(options.header_bytes_max) + " bytes");
  }
  if (ec == beast::error::timeout) Increment(core_.counters().connections_timed_out);
  // Peer went away (cleanly or mid-message), timeout, or a socket error:
  // nobody to answer.
  if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
      !IsHttpParseError(ec)) {
    return Close();
  }
  DoWriteError(400, "invalid_argument", "malformed HTTP request: " + ec.message());
}

void Session::Handle() {
  HttpRequest request = TakeRequest();
  const auto& message = parser_->get();
  const bool wants_keep_alive = message.keep_alive();
  const unsigned version = message.version();
  requests_served_++;
  const uint64_t served_max = core_.options().requests_per_connection_max;
  HttpResponse response = core_.CallHandler(request);
  // After the handler: Stop() may have begun while it ran.
  const bool keep_alive = wants_keep_alive && !core_.stopping() &&
                          (served_max == 0 || requests_served_ < served_max);
  DoWrite(std::move(response), keep_alive, version);
}

// Moves the parsed request out of parser_ (its header stays readable).
HttpRequest Session::TakeRequest() {
  auto& message = parser_->get();
  HttpRequest request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  for (const auto& field : message) {
    const beast::string_view name = field.name_string();
    request.headers.emplace_back(LowerAscii(std::string_view(name.data(), name.size())),
                                 std::string(field.value()));
  }
  request.body = std::move(message.body());
  request.remote_ip = remote_ip_;
  return request;
}

void Session::DoWriteError(int status, std::string_view code, std::string message) {
  Increment(core_.counters().requests_rejected);
  DoWrite(JsonError(status, code, message), /*keep_alive=*/false, /*version=*/11);
}

void Session::DoWrite(HttpResponse response, bool keep_alive, unsigned version) {
  assert(IsValidResponse(response));
  response_ = {};
  response_.version(version);
  response_.result(static_cast<unsigned>(response.status));
  for (auto& [name, value] : response.headers) {
    if (!IsServerOwnedHeader(LowerAscii(name))) response_.insert(name, value);
  }
  response_.set(http::field::server, "keyledger");
  if (!StatusForbidsBody(response.status)) response_.content_length(response.body.size());
  response_.body() = std::move(response.body);
  response_.keep_alive(keep_alive);
  const bool close = response_.need_eof();
  stream_.expires_after(Ms(core_.options().write_timeout_ms));
  http::async_write(stream_, response_,
                    beast::bind_front_handler(&Session::OnWrite, shared_from_this(), close));
}

void Session::OnWrite(bool close, error_code ec, size_t bytes) {
  if (ec) {
    if (ec == beast::error::timeout) Increment(core_.counters().connections_timed_out);
    return Close();
  }
  response_ = {};  // free the body now, not at the next response
  if (close) return DoLinger();
  DoWaitForRequest();  // closes at once if Stop() began meanwhile
}

// Half-closes, then reads and discards what the peer still sends until it
// closes too, kLingerTimeoutMs passes, or kLingerBytesMax were discarded.
void Session::DoLinger() {
  error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return Close();
  stream_.expires_after(Ms(kLingerTimeoutMs));
  DoLingerRead();
}

void Session::DoLingerRead() {
  stream_.async_read_some(net::buffer(linger_buffer_),
                          beast::bind_front_handler(&Session::OnLingerRead, shared_from_this()));
}

void Session::OnLingerRead(error_code ec, size_t bytes) {
  linger_bytes_ += bytes;
  if (ec || linger_bytes_ > kLingerBytesMax) return Close();
  DoLingerRead();
}

// Closes the socket; the session is destroyed when its last handler returns.
void Session::Close() { stream_.close(); }

// ---------------------------------------------------------------------------
// ServerCore

Status ServerCore::Listen() {
  error_code ec;
  const net::ip::address address = net::ip::make_address(options_.host, ec);
  if (ec) {
    return Status::InvalidArgument("host is not an IP address literal: " + options_.host, "host");
  }
  const tcp::endpoint endpoint(address, options_.port);
  const std::string where = EndpointText(endpoint);
  acceptor_ = std::make_unique<tcp::acceptor>(net::make_strand(*ioc_));
  accept_retry_timer_ = std::make_unique<net::steady_timer>(acceptor_->get_executor());
  if (acceptor_->open(endpoint.protocol(), ec)) {
    return Status::IOError("open socket for " + where + ": " + ec.message());
  }
  if (acceptor_->set_option(net::socket_base::reuse_address(true), ec)) {
    return Status::IOError("set SO_REUSEADDR for " + where + ": " + ec.message());
  }
  if (acceptor_->bind(endpoint, ec)) return Status::IOError("bind " + where + ": " + ec.message());
  if (acceptor_->listen(net::socket_base::max_listen_connections, ec)) {
    return Status::IOError("listen on " + where + ": " + ec.message());
  }
  const tcp::endpoint bound = acceptor_->local_endpoint(ec);
  if (ec) return Status::IOError("local address of " + where + ": " + ec.message());
  port_ = bound.port();
  DoAccept();
  return Status::Ok();
}

Status ServerCore::StartThreads() {
  work_.emplace(ioc_->get_executor());
  try {
    threads_.reserve(static_cast<size_t>(options_.threads));
    for (int i = 0; i < options_.threads; i++) threads_.emplace_back([this] { RunThread(); });
  } catch (const std::system_error& e) {
    return Status::IOError(std::string("start http server threads: ") + e.what());
  }
  return Status::Ok();
}

void ServerCore::RunThread() {
  for (;;) {
    try {
      ioc_->run();
      return;
    } catch (const std::exception& e) {
      // A completion handler threw (e.g. bad_alloc); its connection is lost,
      // the server keeps serving.
      std::fprintf(stderr, "keyledger http server: I/O thread caught: %s\n", e.what());
    }
  }
}

bool ServerCore::OnIoThread() const {
  for (const std::thread& t : threads_) {
    if (t.get_id() == std::this_thread::get_id()) return true;
  }
  return false;
}

void ServerCore::DoAccept() {
  acceptor_->async_accept(net::make_strand(*ioc_),
                          beast::bind_front_handler(&ServerCore::OnAccept, this));
}

void ServerCore::OnAccept(error_code ec, tcp::socket socket) {
  if (stopping()) return;  // the acceptor is closing; `socket` closes on destruction
  if (ec) return DoAcceptRetry();
  try {
    Admit(std::move(socket));
  } catch (const std::exception&) {
    // Out of memory for the session: drop this connection, keep accepting.
    Increment(counters_.connections_rejected);
  }
  DoAccept();
}

void ServerCore::DoAcceptRetry() {
  accept_retry_timer_->expires_after(Ms(kAcceptRetryDelayMs));
  accept_retry_timer_->async_wait([this](error_code ec) {
    if (!ec && !stopping()) DoAccept();
  });
}

void ServerCore::CloseAcceptor() {
  error_code ec;
  acceptor_->close(ec);
  accept_retry_timer_->cancel();
}

void ServerCore::Admit(tcp::socket socket) {
  std::shared_ptr<Session> session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_requested_ && sessions_.size() < options_.connections_max) {
      // The slot goes in first: once the session exists, its destructor
      // (which locks mu_) must find it, and nothing after make_shared throws.
      const uint64_t id = next_session_id_++;
      auto slot = sessions_.emplace(id, std::weak_ptr<Session>()).first;
      try {
        session = std::make_shared<Session>(*this, id, std::move(socket));
      } catch (...) {
        sessions_.erase(slot);
        throw;
      }
      slot->second = session;
      counters_.connections_open.store(sessions_.size(), std::memory_order_relaxed);
    }
  }
  if (!session) {
    Increment(counters_.connections_rejected);
    error_code ec;
    socket.close(ec);
    return;
  }
  Increment(counters_.connections_accepted);
  session->Start();
}

void ServerCore::Unregister(uint64_t session_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t erased = sessions_.erase(session_id);
    assert(erased == 1);
    counters_.connections_open.store(sessions_.size(), std::memory_order_relaxed);
  }
  cv_.notify_all();
}

HttpResponse ServerCore::CallHandler(const HttpRequest& request) {
  Increment(counters_.requests_total);
  Increment(counters_.requests_in_flight);
  std::optional<HttpResponse> response;
  try {
    response = handler_(request);
  } catch (...) {
    // Swallowed on purpose: a handler bug must not take the server down, and
    // its message must not leak to the client.
  }
  Decrement(counters_.requests_in_flight);
  if (!response || !IsValidResponse(*response)) {
    Increment(counters_.handler_errors);
    return JsonError(500, "internal", "internal error");
  }
  return std::move(*response);
}

void ServerCore::Stop() {
  std::call_once(stop_once_, [this] { DoStop(); });
}

void ServerCore::DoStop() {
  assert(!OnIoThread() && "Stop() from inside the handler would join its own thread");
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_.store(true, std::memory_order_release);
    stop_requested_ = true;
    if (signals_) {
      error_code ec;
      signals_->cancel(ec);
    }
    for (auto& [id, weak] : sessions_) {
      if (auto session = weak.lock()) live.push_back(std::move(session));
    }
  }
  cv_.notify_all();
  if (acceptor_) net::post(acceptor_->get_executor(), [this] { CloseAcceptor(); });
  for (auto& session : live) session->PostServerStop();
  live.clear();  // our references would keep the sessions alive

  const auto deadline = std::chrono::steady_clock::now() + Ms(options_.drain_timeout_ms);
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, deadline, [this] { return sessions_.empty(); });
  }
  work_.reset();
  ioc_->stop();  // abandons whatever did not drain; a running handler still finishes
  for (std::thread& t : threads_) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    signals_.reset();
  }
  accept_retry_timer_.reset();
  acceptor_.reset();
  ioc_.reset();  // destroys queued handlers and the sessions they hold
  assert(sessions_.empty());
}

void ServerCore::WaitForSignal() {
  assert(!OnIoThread() && "WaitForSignal() from inside the handler would deadlock");
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!stop_requested_ && !signals_) {
      signals_ = std::make_unique<net::signal_set>(*ioc_);
      error_code ec;
      signals_->add(SIGINT, ec);
      assert(!ec);
      signals_->add(SIGTERM, ec);
      assert(!ec);
      signals_->async_wait([this](error_code ec, int /*signal*/) {
        if (ec) return;  // cancelled by Stop()
        {
          std::lock_guard<std::mutex> lock(mu_);
          signaled_ = true;
        }
        cv_.notify_all();
      });
    }
    cv_.wait(lock, [this] { return stop_requested_ || signaled_; });
  }
  Stop();
}

HttpServerStats ServerCore::stats() const {
  const auto load = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  HttpServerStats s;
  s.connections_accepted = load(counters_.connections_accepted);
  s.connections_rejected = load(counters_.connections_rejected);
  s.connections_open = load(counters_.connections_open);
  s.connections_timed_out = load(counters_.connections_timed_out);
  s.requests_total = load(counters_.requests_total);
  s.requests_in_flight = load(counters_.requests_in_flight);
  s.requests_rejected = load(counters_.requests_rejected);
  s.handler_errors = load(counters_.handler_errors);
  return s;
}

}  // namespace http_internal

// ---------------------------------------------------------------------------
// HttpServer

Result<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                      HttpHandler handler) {
  KL_RETURN_IF_ERROR(http_internal::ValidateOptions(options, handler));
  try {
    auto core = std::make_unique<http_internal::ServerCore>(std::move(options), std::move(handler));
    KL_RETURN_IF_ERROR(core->Listen());
    KL_RETURN_IF_ERROR(core->StartThreads());
    return std::unique_ptr<HttpServer>(new HttpServer(std::move(core)));
  } catch (const std::exception& e) {
    return Status::IOError(std::string("start http server: ") + e.what());
  }
}

HttpServer::HttpServer(std::unique_ptr<http_internal::ServerCore> core) : core_(std::move(core)) {}

HttpServer::~HttpServer() { Stop(); }

uint16_t HttpServer::port() const { return core_->port(); }

void HttpServer::Stop() { core_->Stop(); }

void HttpServer::WaitForSignal() { core_->WaitForSignal(); }

HttpServerStats HttpServer::stats() const { return core_->stats(); }

}  // namespace keyledger
