// The only translation unit that includes Boost.Beast/Asio. Structure follows
// Beast's http_server_async / advanced_server examples (do_x/on_x pairs, a
// timeout and a body limit on every read), with one io_context per I/O
// thread instead of one shared by all: a connection lives on one thread,
// whose io_context serializes its handlers as a strand would.
//
// Gateway mode (HttpProxyOptions) relays a request and its response with one
// C++20 coroutine per exchange, on the connection's thread: a relay is a loop
// of reads and writes in two directions, which reads best as straight code.
//
// Exceptions: Boost calls here use error_code overloads (redirect_error in
// coroutines); what may still throw (allocation, thread creation) is caught in
// Start(), in the I/O threads and in a relay's completion handler.

#include "api/http_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <sys/socket.h>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <exception>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ledger/thread_name.h"

namespace keyledger {
namespace http_internal {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
// A connection's executor is its thread's io_context, which only that thread
// runs: its handlers never run concurrently, as on a strand, without the
// strand's queue and locks. Named by its concrete type rather than erased as
// in beast::tcp_stream (any_io_executor).
using Executor = net::io_context::executor_type;
using Socket = tcp::socket::rebind_executor<Executor>::other;
using Stream = beast::basic_stream<tcp, Executor>;
using error_code = boost::system::error_code;

namespace {

// After a response that closes the connection, unread input is drained for at
// most this long / this many bytes, so that the peer reads the response
// instead of a connection reset (e.g. a 413 sent before the body was read).
constexpr int64_t kLingerTimeoutMs = 1000;
constexpr size_t kLingerBytesMax = 1 << 20;
// Read size while waiting for the first byte of a request.
constexpr size_t kWaitReadBytes = 4096;
// How far a connection's read buffer may grow past the header limit: one of
// Beast's reads (64 KiB). Beast 1.74 puts no limit on a chunk-size line or
// a trailer section, so without this cap one client sending an endless one
// grows the buffer until the read timeout; with it the read fails with
// buffer_overflow (a 400). Bodies never pile up here: the parser takes
// their bytes as they arrive.
constexpr size_t kReadBufferBeyondHeaderBytes = 64 << 10;
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

// Compares ASCII case-insensitively (header names), without a copy.
bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return beast::iequals(beast::string_view(a.data(), a.size()),
                        beast::string_view(b.data(), b.size()));
}

// Headers the server itself sets from the message framing (any case).
bool IsServerOwnedHeader(std::string_view name) {
  return EqualsIgnoringCase(name, "content-length") ||
         EqualsIgnoringCase(name, "transfer-encoding") || EqualsIgnoringCase(name, "connection");
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

// A connection keeps up to this much header-buffer capacity between responses.
constexpr size_t kWriteBufferKeepBytesMax = 64u << 10;

// "HTTP/1.1" for 11. REQUIRES: version < 100 (10 * major + minor, as Beast parses it).
void AppendHttpVersion(unsigned version, std::string* out) {
  assert(version < 100);
  out->append("HTTP/");
  out->push_back(static_cast<char>('0' + version / 10));
  out->push_back('.');
  out->push_back(static_cast<char>('0' + version % 10));
}

// Writes the status line and header of `response` into `out` (replacing what
// was there, keeping its capacity), as Beast's serializer would frame it: the
// handler's headers in order, except those the server owns and `server`;
// then `Server: keyledger`, `Content-Length` (not for 204/304), and
// `Connection` as message::keep_alive(keep_alive) sets it for `version`.
// `version` is the request's (10 * major + minor, as Beast parses it).
// REQUIRES: IsValidResponse(response).
void SerializeResponseHead(const HttpResponse& response, bool keep_alive, unsigned version,
                           std::string* out) {
  out->clear();
  AppendHttpVersion(version, out);
  out->push_back(' ');
  out->append(std::to_string(response.status));
  out->push_back(' ');
  const beast::string_view reason = http::obsolete_reason(http::int_to_status(
      static_cast<unsigned>(response.status)));
  out->append(reason.data(), reason.size());
  out->append("\r\n");
  for (const auto& [name, value] : response.headers) {
    if (IsServerOwnedHeader(name) || EqualsIgnoringCase(name, "server")) continue;
    out->append(name);
    out->append(": ");
    out->append(value);
    out->append("\r\n");
  }
  out->append("Server: keyledger\r\n");
  if (!StatusForbidsBody(response.status)) {
    out->append("Content-Length: ");
    out->append(std::to_string(response.body.size()));
    out->append("\r\n");
  }
  if (version >= 11 && !keep_alive) out->append("Connection: close\r\n");
  if (version < 11 && keep_alive) out->append("Connection: keep-alive\r\n");
  out->append("\r\n");
}

void AppendFields(const http::fields& fields, std::string* out) {
  for (const auto& field : fields) {
    const beast::string_view name = field.name_string();
    const beast::string_view value = field.value();
    out->append(name.data(), name.size());
    out->append(": ");
    out->append(value.data(), value.size());
    out->append("\r\n");
  }
  out->append("\r\n");
}

// Returns what makes a request's framing ambiguous, "" if nothing: a hop
// before or after this server could find the body's end elsewhere and read
// a second, unchecked request out of it (RFC 9112 6.1, 6.3). Beast takes a
// body as chunked only when "chunked" is the last coding, and forwards a
// Content-Length beside other codings; so only one field of exactly
// "chunked", or one Content-Length of digits alone, is taken.
const char* AmbiguousFraming(const http::request_header<>& header) {
  size_t codings = 0, lengths = 0;
  for (const auto& field : header) {
    if (field.name() == http::field::transfer_encoding) {
      if (++codings > 1 || !beast::iequals(field.value(), "chunked")) {
        return "Transfer-Encoding may only be one field of \"chunked\"";
      }
    } else if (field.name() == http::field::content_length) {
      const beast::string_view v = field.value();
      if (++lengths > 1 || v.empty() ||
          !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return "Content-Length must be one field of digits";
      }
    }
  }
  if (codings > 0 && lengths > 0) return "a request may not have both Transfer-Encoding and Content-Length";
  if (codings > 0 && header.version() < 11) return "HTTP/1.0 has no Transfer-Encoding";
  return "";
}

// A relayed message's start line and fields, into `out` (replacing what was
// there), byte for byte as Beast's serializer writes them: the gateway frames
// the header of every relayed message whose body is not chunked itself, and
// then relays the body's bytes as they are. Beast's buffer_body serializer
// cost ~35,000 instructions of a relayed GET's ~150,000.
void SerializeRelayedHeader(const http::request_header<>& header, std::string* out) {
  out->clear();
  const beast::string_view method = header.method_string();
  const beast::string_view target = header.target();
  out->append(method.data(), method.size());
  out->push_back(' ');
  out->append(target.data(), target.size());
  out->push_back(' ');
  AppendHttpVersion(header.version(), out);
  out->append("\r\n");
  AppendFields(header, out);
}

void SerializeRelayedHeader(const http::response_header<>& header, std::string* out) {
  out->clear();
  AppendHttpVersion(header.version(), out);
  out->push_back(' ');
  const unsigned status = header.result_int();
  assert(status >= 100 && status <= 999);  // the parser takes three digits
  out->push_back(static_cast<char>('0' + status / 100));
  out->push_back(static_cast<char>('0' + status / 10 % 10));
  out->push_back(static_cast<char>('0' + status % 10));
  out->push_back(' ');
  const beast::string_view reason = header.reason();
  out->append(reason.data(), reason.size());
  out->append("\r\n");
  AppendFields(header, out);
}

std::string EndpointText(const tcp::endpoint& endpoint) {
  const std::string address = endpoint.address().to_string();
  const std::string port = std::to_string(endpoint.port());
  return endpoint.address().is_v6() ? "[" + address + "]:" + port : address + ":" + port;
}

Status ValidateOptions(const HttpServerOptions& o, const HttpHandler& handler) {
  if (!handler) return Status::InvalidArgument("handler is empty", "handler");
  if (o.threads < 1) return Status::InvalidArgument("threads must be >= 1", "threads");
  if (o.worker_threads < 0 || o.worker_threads > kHttpWorkerThreadsMax) {
    return Status::InvalidArgument(
        "worker_threads must be 0.." + std::to_string(kHttpWorkerThreadsMax), "worker_threads");
  }
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

// Smallest relay chunk: a chunk smaller than this only adds system calls.
constexpr size_t kRelayChunkBytesMin = 1024;

Status ValidateProxyOptions(const HttpProxyOptions& o) {
  if (!o.hooks.is_own_target || !o.hooks.admit) {
    return Status::InvalidArgument("both proxy hooks must be set", "proxy.hooks");
  }
  if (o.upstream_port == 0) {
    return Status::InvalidArgument("upstream port must be 1..65535", "proxy.upstream_port");
  }
  const std::pair<int64_t, const char*> timeouts[] = {
      {o.connect_timeout_ms, "proxy.connect_timeout_ms"},
      {o.response_header_timeout_ms, "proxy.response_header_timeout_ms"},
      {o.relay_idle_timeout_ms, "proxy.relay_idle_timeout_ms"},
  };
  for (const auto& [ms, name] : timeouts) {
    if (ms < 1) return Status::InvalidArgument(std::string(name) + " must be >= 1", name);
  }
  if (o.relay_chunk_bytes < kRelayChunkBytesMin) {
    return Status::InvalidArgument("relay_chunk_bytes must be >= " +
                                       std::to_string(kRelayChunkBytesMin),
                                   "proxy.relay_chunk_bytes");
  }
  if (o.response_header_bytes_max < 1) {
    return Status::InvalidArgument("response_header_bytes_max must be >= 1",
                                   "proxy.response_header_bytes_max");
  }
  return Status::Ok();
}

// Copies a header's fields, names lower-cased, in received order.
template <class Fields>
std::vector<std::pair<std::string, std::string>> LowerFields(const Fields& fields) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(static_cast<size_t>(std::distance(fields.begin(), fields.end())));
  for (const auto& field : fields) {
    const beast::string_view name = field.name_string();
    out.emplace_back(LowerAscii(std::string_view(name.data(), name.size())),
                     std::string(field.value()));
  }
  return out;
}

// The request without its body.
template <class Message>
HttpRequest RequestHead(const Message& message, const std::string& remote_ip) {
  HttpRequest request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  request.headers = LowerFields(message);
  request.remote_ip = remote_ip;
  return request;
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
  std::atomic<uint64_t> requests_awaiting_worker{0};
  std::atomic<uint64_t> requests_rejected{0};
  std::atomic<uint64_t> handler_errors{0};
  std::atomic<uint64_t> proxy_relayed{0};
  std::atomic<uint64_t> proxy_answered{0};
  std::atomic<uint64_t> proxy_upstream_failures{0};
};

void Increment(std::atomic<uint64_t>& counter) { counter.fetch_add(1, std::memory_order_relaxed); }
void Decrement(std::atomic<uint64_t>& counter) { counter.fetch_sub(1, std::memory_order_relaxed); }

class Session;

// Owns the io_contexts (one per thread), the acceptor, the accepting thread
// and the I/O threads; tracks sessions so Stop() can close idle ones and wait
// for the rest.
//
// Thread safety: public methods are thread-safe. DoAccept/OnAccept/CloseAcceptor
// run on the accepting thread.
class ServerCore {
 public:
  ServerCore(HttpServerOptions options, HttpHandler handler,
             std::optional<HttpProxyOptions> proxy)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        proxy_(std::move(proxy)) {
    assert(options_.threads >= 1);
    const size_t contexts = static_cast<size_t>(options_.threads) + 1;  // + the acceptor's
    ioc_.reserve(contexts);
    // Each io_context is run by exactly one thread: the hint lets Asio skip
    // waking other threads for every completion. Other threads (Stop(), the
    // accepting one) still post to it, so its locking stays on.
    for (size_t i = 0; i < contexts; i++) ioc_.push_back(std::make_unique<net::io_context>(1));
    if (options_.worker_threads > 0) worker_ioc_ = std::make_unique<net::io_context>();
  }
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
  // Whether `request` is handled on its I/O thread rather than by a worker.
  bool RunsInline(const HttpRequest& request) const;
  // Runs `task` on a worker thread; tasks start in the order they were
  // handed over. REQUIRES: options().worker_threads > 0.
  template <class Task>
  void PostToWorker(Task&& task);
  // Gateway mode: nullptr when off.
  const HttpProxyOptions* proxy() const { return proxy_ ? &*proxy_ : nullptr; }
  const tcp::endpoint& upstream() const { return upstream_; }
  // Whether `target` goes to the handler (always, when not in gateway mode).
  bool IsOwnTarget(std::string_view target) const;
  // Calls the admit hook; turns exceptions and invalid answers into 500.
  ProxyAdmission Admit(const HttpRequest& head);
  // Called by ~Session.
  void Unregister(uint64_t session_id);

 private:
  void DoAccept();
  void OnAccept(error_code ec, Socket socket);
  void DoAcceptRetry();
  void CloseAcceptor();
  // Starts a session for `socket`, or closes it when over connections_max or stopping.
  void Admit(Socket socket);
  void DoStop();
  void RunThread(net::io_context& ioc);
  // The io_context of the next accepted connection: round-robin over the I/O threads.
  net::io_context& NextConnectionContext();
  bool OnIoThread() const;

  const HttpServerOptions options_;
  const HttpHandler handler_;
  const std::optional<HttpProxyOptions> proxy_;
  tcp::endpoint upstream_;  // set by Listen() in gateway mode
  Counters counters_;
  std::atomic<bool> stopping_{false};
  uint16_t port_ = 0;
  std::once_flag stop_once_;
  std::vector<std::thread> threads_;  // written only before Start() returns
  std::vector<std::thread> worker_threads_;  // likewise
  size_t next_context_ = 1;           // used only by the accepting thread

  std::mutex mu_;
  std::condition_variable cv_;  // a session ended, Stop() began, or a signal came
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;  // GUARDED_BY(mu_)
  uint64_t next_session_id_ = 1;                                     // GUARDED_BY(mu_)
  bool stop_requested_ = false;                                      // GUARDED_BY(mu_)
  bool signaled_ = false;                                            // GUARDED_BY(mu_)

  // Declared after everything sessions touch: destroying an io_context
  // destroys its queued handlers and with them the sessions, whose
  // destructors call Unregister(). DoStop() resets these explicitly, ioc_ last.
  // ioc_[i] is run by threads_[i]. ioc_[0] holds the acceptor (and the
  // signal set), so accepts never wait for a blocked handler; ioc_[1..] the
  // connections.
  std::vector<std::unique_ptr<net::io_context>> ioc_;
  std::vector<net::executor_work_guard<Executor>> work_;
  // The workers' queue, run by all of worker_threads_ (nullptr without
  // workers). Its tasks post back to ioc_[1..], so DoStop() joins the
  // workers before it destroys those.
  std::unique_ptr<net::io_context> worker_ioc_;
  std::optional<net::executor_work_guard<Executor>> worker_work_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<net::steady_timer> accept_retry_timer_;  // on the acceptor's io_context
  std::unique_ptr<net::signal_set> signals_;               // GUARDED_BY(mu_)
};

// One connection. Reads a request (wait for its first byte, header, optional
// 100 Continue, body), calls the handler, writes the response, and repeats
// while keep-alive holds.
//
// Thread safety: everything but Start() and PostServerStop() runs on the
// connection's I/O thread; those two only post to it.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerCore& core, uint64_t id, Socket socket)
      : core_(core),
        id_(id),
        remote_ip_(PeerIp(socket)),
        stream_(std::move(socket)),
        buffer_(core.options().header_bytes_max + kReadBufferBeyondHeaderBytes),
        upstream_buffer_(kReadBufferBeyondHeaderBytes +
                         (core.proxy() != nullptr ? core.proxy()->response_header_bytes_max : 0)) {}
  ~Session() { core_.Unregister(id_); }

  void Start();
  // Asks the session to close if it is waiting for a request.
  void PostServerStop();

 private:
  static std::string PeerIp(const Socket& socket);

  void DoWaitForRequest();
  void OnWaitForRequest(error_code ec, size_t bytes);
  void DoReadHeader();
  void OnReadHeader(error_code ec, size_t bytes);
  void DoWriteContinue();
  void OnWriteContinue(error_code ec, size_t bytes);
  void DoReadBody();
  void OnReadBody(error_code ec, size_t bytes);
  void OnReadError(error_code ec);
  // Gateway mode, once the header is parsed: whether the request is for the
  // server's own paths, and the body limit that applies to it.
  bool TargetIsOwn() const;
  uint64_t BodyLimitOfTarget() const;
  void Handle();
  // Writes the response of a request handled by a worker (on the I/O thread).
  void OnHandled(HttpResponse response, bool wants_keep_alive, unsigned version, bool head);
  HttpRequest TakeRequest();
  void DoWriteError(int status, std::string_view code, std::string message);
  // Puts `response` into write_head_ and write_body_ (no body with `head`),
  // framed for the client. Returns whether the connection must close after it.
  bool PrepareResponse(HttpResponse response, bool keep_alive, unsigned version, bool head);
  // The prepared response as one gather write (valid until the next Prepare).
  std::array<net::const_buffer, 2> ResponseBuffers() const;
  // Frees the body written, and the header buffer if a large header grew it.
  void ReleaseResponse();
  // `head`: the answer to a HEAD request, whose header is sent without the
  // body (RFC 9110, section 9.3.2), so a keep-alive peer reads no body.
  void DoWrite(HttpResponse response, bool keep_alive, unsigned version, bool head);

  // Gateway mode.
  void StartProxy();
  net::awaitable<void> Relay(std::shared_ptr<Session> self, ProxyAdmission admission);
  // Opens upstream_ (a fresh connection). Returns the error, if any.
  net::awaitable<error_code> ConnectUpstream();
  // Sends the request header upstream, reconnecting once when a kept-alive
  // connection turns out to be closed by the upstream.
  // With `serializer` empty, sends relay_head_ (the request header framed by
  // SerializeRelayedHeader); otherwise makes the serializer and writes through it.
  net::awaitable<error_code> WriteRequestHeader(
      std::optional<http::request_serializer<http::buffer_body>>* serializer,
      http::request<http::buffer_body>& request);
  // Writes a response of the server's own in the middle of a relay (e.g.
  // 502), then closes the connection.
  // REQUIRES (both): reference arguments outlive the returned awaitable.
  net::awaitable<void> AnswerAndClose(const HttpResponse& response, unsigned version);
  // Counts an upstream failure, answers `status` and closes.
  net::awaitable<void> FailUpstream(ProxyExchange& exchange, int status, std::string_view code,
                                    const std::string& message, unsigned version);
  void CloseUpstream();
  // Whether the connection stays open after the current request.
  bool MayKeepAlive(bool wants_keep_alive) const;
  void OnWrite(bool close, error_code ec, size_t bytes);
  void DoLinger();
  void DoLingerRead();
  void OnLingerRead(error_code ec, size_t bytes);
  void OnServerStop();
  void Close();

  ServerCore& core_;
  const uint64_t id_;
  const std::string remote_ip_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  uint64_t body_limit_bytes_ = 0;  // the body limit parser_ applies now
  // The response being written: its status line and header, serialized here
  // (cheaper than Beast's serializer for a small, complete response; its
  // capacity is kept between responses up to kWriteBufferKeepBytesMax), and
  // the handler's body.
  std::string write_head_;
  std::string write_body_;
  uint64_t requests_served_ = 0;
  bool waiting_for_request_ = false;  // no byte of the next request read yet
  size_t linger_bytes_ = 0;
  std::array<char, 4096> linger_buffer_;
  // Gateway mode: the connection to the upstream, reused between exchanges.
  std::optional<Stream> upstream_;
  beast::flat_buffer upstream_buffer_;
  std::vector<char> relay_buffer_;  // relay_chunk_bytes, allocated on first use
  // A relayed header framed by the gateway (its capacity kept between
  // exchanges up to kWriteBufferKeepBytesMax).
  std::string relay_head_;
};

// ---------------------------------------------------------------------------
// Session

std::string Session::PeerIp(const Socket& socket) {
  error_code ec;
  const tcp::endpoint peer = socket.remote_endpoint(ec);
  if (ec) return std::string();
  net::ip::address address = peer.address();
  if (address.is_v6()) {
    // A link-local peer's text would end in its zone ("fe80::1%eth0"), which
    // no address rule names and the address parser refuses: drop it.
    net::ip::address_v6 v6 = address.to_v6();
    v6.scope_id(0);
    address = v6;
  }
  return address.to_string();
}

void Session::Start() {
  // A response may leave in more than one write (a relayed header, then its
  // body): without TCP_NODELAY the second waits for the peer's delayed ACK.
  error_code ec;
  stream_.socket().set_option(tcp::no_delay(true), ec);  // best effort
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
  // A declared length is checked against the limit while the header is
  // parsed; in gateway mode the target is not known yet, so the larger of the
  // two limits applies here and OnReadHeader narrows it for own requests.
  const HttpProxyOptions* proxy = core_.proxy();
  body_limit_bytes_ = proxy ? std::max(proxy->request_body_bytes_max, core_.options().body_bytes_max)
                            : core_.options().body_bytes_max;
  parser_->body_limit(body_limit_bytes_);
  parser_->header_limit(core_.options().header_bytes_max);
  http::async_read_header(stream_, buffer_, *parser_,
                          beast::bind_front_handler(&Session::OnReadHeader, shared_from_this()));
}

bool Session::TargetIsOwn() const {
  const beast::string_view target = parser_->get().target();
  return core_.IsOwnTarget(std::string_view(target.data(), target.size()));
}

uint64_t Session::BodyLimitOfTarget() const {
  return TargetIsOwn() ? core_.options().body_bytes_max : core_.proxy()->request_body_bytes_max;
}

void Session::OnReadHeader(error_code ec, size_t bytes) {
  if (ec) return OnReadError(ec);
  const auto& request = parser_->get();
  if (const char* problem = AmbiguousFraming(request); *problem != '\0') {
    return DoWriteError(400, "invalid_argument", problem);  // and closes
  }
  if (core_.proxy() != nullptr) {
    // The header's parse checked a declared length against the larger limit.
    body_limit_bytes_ = BodyLimitOfTarget();
    if (parser_->content_length().value_or(0) > body_limit_bytes_) {
      return OnReadError(http::error::body_limit);
    }
    if (!TargetIsOwn()) return StartProxy();
    parser_->body_limit(body_limit_bytes_);
  }
  if (parser_->is_done()) return Handle();  // no body
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
    // A declared length may have failed against the larger of the two
    // gateway limits while the header was read: name the one for its target.
    const uint64_t limit = core_.proxy() != nullptr && parser_ && parser_->is_header_done()
                               ? BodyLimitOfTarget()
                               : body_limit_bytes_;
    return DoWriteError(413, "payload_too_large",
                        "request body exceeds " + std::to_string(limit) + " bytes");
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
  const bool head = message.method() == http::verb::head;
  requests_served_++;
  if (core_.RunsInline(request)) {
    HttpResponse response = core_.CallHandler(request);
    return OnHandled(std::move(response), wants_keep_alive, version, head);
  }
  const uint64_t awaiting_max = core_.options().requests_awaiting_worker_max;
  if (awaiting_max != 0 &&
      core_.counters().requests_awaiting_worker.load(std::memory_order_relaxed) >= awaiting_max) {
    Increment(core_.counters().requests_rejected);
    HttpResponse busy = JsonError(503, "unavailable", "the server is busy; retry later");
    busy.headers.emplace_back("retry-after", "1");
    return OnHandled(std::move(busy), wants_keep_alive, version, head);
  }
  // Nothing else happens on this connection until OnHandled: no read is
  // pending, and DoWrite sets a fresh timeout.
  core_.PostToWorker([self = shared_from_this(), request = std::move(request),
                      wants_keep_alive, version, head]() mutable {
    HttpResponse response = self->core_.CallHandler(request);
    // The session moves on to its I/O thread: its last reference must not
    // be dropped here, on the worker.
    auto executor = self->stream_.get_executor();
    net::post(executor, [self = std::move(self), response = std::move(response),
                         wants_keep_alive, version, head]() mutable {
      self->OnHandled(std::move(response), wants_keep_alive, version, head);
    });
  });
}

void Session::OnHandled(HttpResponse response, bool wants_keep_alive, unsigned version,
                        bool head) {
  // After the handler: Stop() may have begun while it ran.
  DoWrite(std::move(response), MayKeepAlive(wants_keep_alive), version, head);
}

bool Session::MayKeepAlive(bool wants_keep_alive) const {
  const uint64_t served_max = core_.options().requests_per_connection_max;
  return wants_keep_alive && !core_.stopping() &&
         (served_max == 0 || requests_served_ < served_max);
}

// Moves the parsed request out of parser_ (its header stays readable).
HttpRequest Session::TakeRequest() {
  auto& message = parser_->get();
  HttpRequest request = RequestHead(message, remote_ip_);
  request.body = std::move(message.body());
  return request;
}

void Session::DoWriteError(int status, std::string_view code, std::string message) {
  Increment(core_.counters().requests_rejected);
  DoWrite(JsonError(status, code, message), /*keep_alive=*/false, /*version=*/11, /*head=*/false);
}

bool Session::PrepareResponse(HttpResponse response, bool keep_alive, unsigned version,
                              bool head) {
  // Every response was checked whole where it was made (CallHandler, Admit)
  // or is the server's own (JsonError); scanning its headers again here cost
  // 2.6% of an authorization's instructions, so only the O(1) part is asserted.
  assert(response.status >= 200 && response.status <= 599);
  assert(!StatusForbidsBody(response.status) || response.body.empty());
  SerializeResponseHead(response, keep_alive, version, &write_head_);
  write_body_ = std::move(response.body);
  if (head) write_body_.clear();  // its length stays in the header, as for GET
  return !keep_alive;
}

std::array<net::const_buffer, 2> Session::ResponseBuffers() const {
  return {net::buffer(write_head_), net::buffer(write_body_)};
}

void Session::ReleaseResponse() {
  write_body_ = std::string();  // the handler's body: free it now, not at the next response
  if (write_head_.capacity() > kWriteBufferKeepBytesMax) write_head_ = std::string();
}

void Session::DoWrite(HttpResponse response, bool keep_alive, unsigned version, bool head) {
  const bool close = PrepareResponse(std::move(response), keep_alive, version, head);
  stream_.expires_after(Ms(core_.options().write_timeout_ms));
  net::async_write(stream_, ResponseBuffers(),
                   beast::bind_front_handler(&Session::OnWrite, shared_from_this(), close));
}

void Session::OnWrite(bool close, error_code ec, size_t bytes) {
  if (ec) {
    if (ec == beast::error::timeout) Increment(core_.counters().connections_timed_out);
    return Close();
  }
  ReleaseResponse();
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
// Gateway mode: relaying to the upstream

namespace {

// Status reported for an exchange the client abandoned (nginx's convention).
constexpr int kClientClosedStatus = 499;
constexpr std::string_view kUpstreamUnavailable = "upstream_unavailable";
constexpr std::string_view kUpstreamTimeout = "upstream_timeout";

// Hop-by-hop headers (RFC 9110 section 7.6.1): never relayed. Framing
// (content-length, transfer-encoding) is kept: the body is relayed as framed.
bool IsHopByHop(http::field name) {
  switch (name) {
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::upgrade:
    case http::field::proxy_authenticate:
    case http::field::proxy_authorization:
      return true;
    default:
      return false;
  }
}

// Erases the hop-by-hop fields and those the Connection field names, in one
// pass over the fields (erasing each name by lookup cost ~3,800
// instructions per relayed response). The Connection fields go last: the
// names collected from them are views into their values.
template <class Fields>
void EraseHopByHop(Fields& fields) {
  std::vector<std::string_view> named;  // most often "keep-alive", or nothing
  for (const auto& field : fields) {  // every Connection field, not just the first
    if (field.name() != http::field::connection) continue;
    for (const auto& token : http::token_list{field.value()}) {
      const std::string_view name(token.data(), token.size());
      if (!EqualsIgnoringCase(name, "content-length") &&
          !EqualsIgnoringCase(name, "transfer-encoding") && !EqualsIgnoringCase(name, "host")) {
        named.push_back(name);
      }
    }
  }
  for (auto it = fields.begin(); it != fields.end();) {
    const http::field known = it->name();
    bool hop = known != http::field::connection && IsHopByHop(known);
    const beast::string_view name = it->name_string();
    for (size_t i = 0; !hop && known != http::field::connection && i < named.size(); i++) {
      hop = EqualsIgnoringCase(std::string_view(name.data(), name.size()), named[i]);
    }
    it = hop ? fields.erase(it) : std::next(it);
  }
  fields.erase(http::field::connection);
}

// The values of every field named `name` (any case), in order, each followed
// by ", ": a list-valued field may come as several fields (RFC 9110 5.3).
template <typename Fields>
std::string JoinedFieldValues(const Fields& fields, std::string_view name) {
  std::string joined;
  for (const auto& field : fields) {
    const beast::string_view field_name = field.name_string();
    if (!EqualsIgnoringCase(std::string_view(field_name.data(), field_name.size()), name)) continue;
    joined.append(field.value().data(), field.value().size());
    joined += ", ";
  }
  return joined;
}

void EditRequestHeader(http::request<http::buffer_body>& request, const ProxyAdmission& admission,
                       const std::string& remote_ip) {
  EraseHopByHop(request);
  request.erase(http::field::expect);  // the server answered 100-continue itself
  for (const std::string& name : admission.remove_request_headers) request.erase(name);
  for (const auto& [name, value] : admission.set_request_headers) request.set(name, value);
  // Every X-Forwarded-For field, in order, as one list (GatewayClientIp read
  // them all), then the peer.
  request.set("x-forwarded-for", JoinedFieldValues(request, "x-forwarded-for") + remote_ip);
  request.version(11);
  request.keep_alive(true);
}

void EditResponseHeader(http::response<http::buffer_body>& response,
                        const ProxyAdmission& admission, unsigned version, bool keep_alive) {
  EraseHopByHop(response);
  for (const auto& [name, value] : admission.set_response_headers) {
    const bool list = EqualsIgnoringCase(name, "vary") ||
                      EqualsIgnoringCase(name, "access-control-expose-headers");
    response.set(name, list ? JoinedFieldValues(response, name) + value : value);
  }
  response.version(version);
  if (version < 11 && response.chunked()) {
    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    response.chunked(false);
    keep_alive = false;
  }
  response.keep_alive(keep_alive);
}

void Capture(std::string* excerpt, const char* data, size_t bytes, size_t excerpt_bytes_max) {
  if (excerpt->size() >= excerpt_bytes_max) return;
  excerpt->append(data, std::min(bytes, excerpt_bytes_max - excerpt->size()));
}

// Reports a relayed exchange to the hooks exactly once: when the relay calls
// Report(), or else when it ends any other way (its coroutine destroyed at
// server stop, an exception), as abandoned.
class ExchangeReporter {
 public:
  explicit ExchangeReporter(std::function<void(ProxyExchange)> on_done)
      : on_done_(std::move(on_done)), start_(std::chrono::steady_clock::now()) {}
  ~ExchangeReporter() { Report(); }
  ExchangeReporter(const ExchangeReporter&) = delete;
  ExchangeReporter& operator=(const ExchangeReporter&) = delete;

  ProxyExchange& exchange() { return exchange_; }

  void Report() {
    if (!on_done_) return;
    if (exchange_.status == 0) exchange_.status = kClientClosedStatus;
    exchange_.latency_us = std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::steady_clock::now() - start_)
                               .count();
    std::function<void(ProxyExchange)> on_done = std::move(on_done_);
    on_done_ = nullptr;
    try {
      on_done(std::move(exchange_));
    } catch (...) {
      // A hook bug must not take the connection's thread down.
    }
  }

 private:
  std::function<void(ProxyExchange)> on_done_;
  const std::chrono::steady_clock::time_point start_;
  ProxyExchange exchange_;
};

}  // namespace

void Session::StartProxy() {
  const auto& message = parser_->get();
  const HttpRequest head = RequestHead(message, remote_ip_);
  const unsigned version = message.version();
  const bool body_pending = !parser_->is_done();
  const bool wants_keep_alive = message.keep_alive();
  requests_served_++;
  ProxyAdmission admission = core_.Admit(head);
  if (!admission.relay) {
    Increment(core_.counters().proxy_answered);
    // An unread body is not drained for reuse: the connection closes after the answer.
    return DoWrite(std::move(admission.answer), !body_pending && MayKeepAlive(wants_keep_alive),
                   version, message.method() == http::verb::head);
  }
  Increment(core_.counters().proxy_relayed);
  auto self = shared_from_this();
  net::co_spawn(stream_.get_executor(), Relay(self, std::move(admission)),
                [self](std::exception_ptr error) {
                  if (!error) return;
                  self->CloseUpstream();
                  self->Close();
                });
}

net::awaitable<void> Session::Relay(std::shared_ptr<Session> self, ProxyAdmission admission) {
  const HttpProxyOptions& o = *core_.proxy();
  ExchangeReporter reporter(std::move(admission.on_done));
  ProxyExchange& exchange = reporter.exchange();
  const size_t capture_max = admission.capture_bytes_max;
  if (relay_buffer_.size() != o.relay_chunk_bytes) relay_buffer_.resize(o.relay_chunk_bytes);
  char* const chunk = relay_buffer_.data();
  error_code ec;
  auto token = net::redirect_error(net::use_awaitable, ec);

  // The request: switch the parser to streaming (only the header was read).
  http::request_parser<http::buffer_body> request{std::move(*parser_)};
  parser_.reset();
  request.body_limit(o.request_body_bytes_max);
  auto& req = request.get();
  const unsigned version = req.version();
  const bool wants_keep_alive = req.keep_alive();
  const bool is_head = req.method() == http::verb::head;
  const bool expects_continue =
      version == 11 && beast::iequals(req[http::field::expect], "100-continue");
  EditRequestHeader(req, admission, remote_ip_);

  if (expects_continue) {
    stream_.expires_after(Ms(core_.options().write_timeout_ms));
    co_await net::async_write(stream_, net::buffer(kContinueResponse, sizeof(kContinueResponse) - 1),
                              token);
    if (ec) co_return Close();  // reported as abandoned
  }

  // A body that is not chunked goes as it arrives, behind a header framed
  // here; a chunked one is re-chunked by Beast's serializer.
  const bool frame_request = !req.chunked();
  std::optional<http::request_serializer<http::buffer_body>> request_writer;
  if (frame_request) SerializeRelayedHeader(req, &relay_head_);
  ec = co_await WriteRequestHeader(frame_request ? nullptr : &request_writer, req);
  if (ec) {
    const std::string message = "the upstream could not be reached: " + ec.message();
    co_await FailUpstream(exchange, 502, kUpstreamUnavailable, message, version);
    co_return;
  }
  // The request body, as it arrives.
  while (frame_request ? !request.is_done() : !request_writer->is_done()) {
    size_t bytes = 0;
    if (!request.is_done()) {
      req.body().data = chunk;
      req.body().size = o.relay_chunk_bytes;
      stream_.expires_after(Ms(o.relay_idle_timeout_ms));
      co_await http::async_read_some(stream_, buffer_, request, token);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {  // the client went away, stalled, or sent too much
        CloseUpstream();
        if (ec != http::error::body_limit) co_return Close();  // reported as abandoned
        exchange.status = 413;
        const HttpResponse answer = JsonError(
            413, "payload_too_large",
            "request body exceeds " + std::to_string(o.request_body_bytes_max) + " bytes");
        co_await AnswerAndClose(answer, version);
        co_return;
      }
      bytes = o.relay_chunk_bytes - req.body().size;
      if (bytes == 0 && !request.is_done()) continue;
    }
    Capture(&exchange.request_body_excerpt, chunk, bytes, capture_max);
    exchange.request_body_bytes += bytes;
    upstream_->expires_after(Ms(o.relay_idle_timeout_ms));
    if (frame_request) {
      co_await net::async_write(*upstream_, net::buffer(chunk, bytes), token);
    } else {
      req.body().data = bytes > 0 ? chunk : nullptr;
      req.body().size = bytes;
      req.body().more = !request.is_done();
      co_await http::async_write(*upstream_, *request_writer, token);
      if (ec == http::error::need_buffer) ec = {};
    }
    if (ec) {
      const std::string message = "the upstream broke the connection: " + ec.message();
      co_await FailUpstream(exchange, 502, kUpstreamUnavailable, message, version);
      co_return;
    }
  }

  // The response header; interim 1xx responses are dropped.
  std::optional<http::response_parser<http::buffer_body>> response;
  unsigned status = 0;
  do {
    response.emplace();
    // The upstream is trusted with its response sizes. (Not boost::none:
    // Beast 1.74 compares a declared length with it as "len > none", true.)
    response->body_limit(std::numeric_limits<uint64_t>::max());
    response->header_limit(o.response_header_bytes_max);
    response->skip(is_head);
    upstream_->expires_after(Ms(o.response_header_timeout_ms));
    co_await http::async_read_header(*upstream_, upstream_buffer_, *response, token);
    if (!ec) status = response->get().result_int();
  } while (!ec && status >= 100 && status < 200 && status != 101);
  // Beast reads any three digits; only 200..599 is a final status to relay.
  if (ec || status < 200 || status > 599) {
    // Awaited with a local message: GCC 12 mishandles non-trivial
    // temporaries (and conditionals) inside a co_await expression.
    const bool timed_out = ec == beast::error::timeout;
    std::string message;
    if (timed_out) {
      message = "the upstream did not answer within " +
                std::to_string(o.response_header_timeout_ms) + " ms";
    } else if (ec) {
      message = "the upstream's response was unreadable: " + ec.message();
    } else if (status == 101) {
      message = "the upstream switched protocols, which is not relayed";
    } else {
      message = "the upstream answered with status " + std::to_string(status) +
                ", outside 100-599";
    }
    co_await FailUpstream(exchange, timed_out ? 504 : 502,
                          timed_out ? kUpstreamTimeout : kUpstreamUnavailable, message, version);
    co_return;
  }
  auto& res = response->get();
  exchange.status = static_cast<int>(status);
  if (admission.capture_response_headers) exchange.response_headers = LowerFields(res);
  const bool upstream_keep_alive = res.keep_alive();
  EditResponseHeader(res, admission, version, MayKeepAlive(wants_keep_alive));
  // Framed here unless a chunked body follows, as the request above. (No
  // body follows a HEAD, 204 or 304 answer even when its header says
  // chunked; Beast's serializer would still end it with a last chunk.)
  const bool frame_response = !res.chunked() || response->is_done();
  std::optional<http::response_serializer<http::buffer_body>> response_writer;
  bool head_sent = false;  // when frame_response
  if (frame_response) {
    SerializeRelayedHeader(res, &relay_head_);
  } else {
    response_writer.emplace(res);
  }
  // When the body (or its start) came in with the header, the first write
  // below sends the header and that chunk together: one send instead of two.
  // Otherwise the header goes now, so a slow body does not hold it back.
  if (!response->is_done() && upstream_buffer_.size() == 0) {
    stream_.expires_after(Ms(core_.options().write_timeout_ms));
    if (frame_response) {
      co_await net::async_write(stream_, net::buffer(relay_head_), token);
      head_sent = true;
    } else {
      co_await http::async_write_header(stream_, *response_writer, token);
    }
    if (ec) {
      exchange.status = kClientClosedStatus;
      CloseUpstream();
      co_return Close();
    }
  }
  // The response body, as it arrives.
  while (frame_response ? !(head_sent && response->is_done()) : !response_writer->is_done()) {
    size_t bytes = 0;
    if (!response->is_done()) {
      res.body().data = chunk;
      res.body().size = o.relay_chunk_bytes;
      upstream_->expires_after(Ms(o.relay_idle_timeout_ms));
      co_await http::async_read_some(*upstream_, upstream_buffer_, *response, token);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {  // too late for a 502: the client sees the connection close early
        exchange.upstream_failed = true;
        Increment(core_.counters().proxy_upstream_failures);
        CloseUpstream();
        co_return Close();
      }
      bytes = o.relay_chunk_bytes - res.body().size;
      if (bytes == 0 && !response->is_done()) continue;
    }
    Capture(&exchange.response_body_excerpt, chunk, bytes, capture_max);
    exchange.response_body_bytes += bytes;
    stream_.expires_after(Ms(o.relay_idle_timeout_ms));
    if (frame_response) {
      const std::array<net::const_buffer, 2> parts = {
          net::buffer(relay_head_.data(), head_sent ? 0 : relay_head_.size()),
          net::buffer(chunk, bytes)};
      head_sent = true;
      co_await net::async_write(stream_, parts, token);
    } else {
      res.body().data = bytes > 0 ? chunk : nullptr;
      res.body().size = bytes;
      res.body().more = !response->is_done();
      co_await http::async_write(stream_, *response_writer, token);
      if (ec == http::error::need_buffer) ec = {};
    }
    if (ec) {
      exchange.status = kClientClosedStatus;
      CloseUpstream();
      co_return Close();
    }
  }
  if (!upstream_keep_alive) CloseUpstream();
  if (relay_head_.capacity() > kWriteBufferKeepBytesMax) relay_head_ = std::string();
  reporter.Report();
  if (res.need_eof()) co_return DoLinger();
  DoWaitForRequest();
}

net::awaitable<error_code> Session::ConnectUpstream() {
  CloseUpstream();
  upstream_.emplace(stream_.get_executor());
  upstream_->expires_after(Ms(core_.proxy()->connect_timeout_ms));
  error_code ec;
  co_await upstream_->async_connect(core_.upstream(), net::redirect_error(net::use_awaitable, ec));
  if (!ec) upstream_->socket().set_option(tcp::no_delay(true), ec);
  co_return ec;
}

// Whether an idle kept-alive upstream connection was closed by the upstream
// (or holds bytes nobody asked for). Writing to it would succeed and only the
// response read would fail, as a 502; so it is dropped before reuse.
template <typename Socket>
bool IdleConnectionIsUnusable(Socket& socket) {
  char byte;
  const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;
  return true;  // 0: closed by the upstream; > 0: stray bytes
}

net::awaitable<error_code> Session::WriteRequestHeader(
    std::optional<http::request_serializer<http::buffer_body>>* serializer,
    http::request<http::buffer_body>& request) {
  const bool reused = upstream_.has_value();
  error_code ec;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (upstream_ && IdleConnectionIsUnusable(upstream_->socket())) CloseUpstream();
    if (!upstream_) {
      ec = co_await ConnectUpstream();
      if (ec) co_return ec;
    }
    upstream_->expires_after(Ms(core_.proxy()->relay_idle_timeout_ms));
    if (serializer == nullptr) {
      co_await net::async_write(*upstream_, net::buffer(relay_head_),
                                net::redirect_error(net::use_awaitable, ec));
    } else {
      serializer->emplace(request);
      co_await http::async_write_header(*upstream_, **serializer,
                                        net::redirect_error(net::use_awaitable, ec));
    }
    // A kept-alive connection may have been closed by the upstream meanwhile.
    if (!ec || !reused) break;
    CloseUpstream();
  }
  co_return ec;
}

net::awaitable<void> Session::FailUpstream(ProxyExchange& exchange, int status,
                                           std::string_view code, const std::string& message,
                                           unsigned version) {
  Increment(core_.counters().proxy_upstream_failures);
  exchange.status = status;
  exchange.upstream_failed = true;
  CloseUpstream();
  const HttpResponse answer = JsonError(status, code, message);
  co_await AnswerAndClose(answer, version);
}

net::awaitable<void> Session::AnswerAndClose(const HttpResponse& response, unsigned version) {
  // The connection closes after it: the body of an answer to HEAD cannot be
  // read as the start of another response.
  PrepareResponse(response, /*keep_alive=*/false, version, /*head=*/false);
  stream_.expires_after(Ms(core_.options().write_timeout_ms));
  error_code ec;
  co_await net::async_write(stream_, ResponseBuffers(), net::redirect_error(net::use_awaitable, ec));
  ReleaseResponse();
  if (ec) co_return Close();
  DoLinger();  // drains what is left of the request
}

void Session::CloseUpstream() {
  if (upstream_) {
    error_code ec;
    upstream_->socket().shutdown(tcp::socket::shutdown_both, ec);
    upstream_->close();
    upstream_.reset();
  }
  upstream_buffer_.clear();
}

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
  acceptor_ = std::make_unique<tcp::acceptor>(*ioc_.front());
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
  if (proxy_) {
    const net::ip::address upstream = net::ip::make_address(proxy_->upstream_host, ec);
    if (ec) {
      return Status::InvalidArgument("upstream host is not an IP address literal: " +
                                         proxy_->upstream_host,
                                     "proxy.upstream_host");
    }
    upstream_ = tcp::endpoint(upstream, proxy_->upstream_port);
  }
  DoAccept();
  return Status::Ok();
}

Status ServerCore::StartThreads() {
  try {
    if (worker_ioc_) {
      worker_work_.emplace(net::make_work_guard(*worker_ioc_));
      for (int i = 0; i < options_.worker_threads; ++i) {
        worker_threads_.emplace_back([this, i] {
          NameThisThread(("kl-http-work-" + std::to_string(i + 1)).c_str());
          RunThread(*worker_ioc_);
        });
      }
    }
    work_.reserve(ioc_.size());
    threads_.reserve(ioc_.size());
    for (size_t i = 0; i < ioc_.size(); ++i) {
      work_.push_back(net::make_work_guard(*ioc_[i]));
      threads_.emplace_back([this, i, &ioc = *ioc_[i]] {
        NameThisThread(i == 0 ? "kl-http-accept" : ("kl-http-" + std::to_string(i)).c_str());
        RunThread(ioc);
      });
    }
  } catch (const std::system_error& e) {
    return Status::IOError(std::string("start http server threads: ") + e.what());
  }
  return Status::Ok();
}

void ServerCore::RunThread(net::io_context& ioc) {
  for (;;) {
    try {
      ioc.run();
      return;
    } catch (const std::exception& e) {
      // A completion handler threw (e.g. bad_alloc); its connection is lost,
      // the server keeps serving.
      std::fprintf(stderr, "keyledger http server: I/O thread caught: %s\n", e.what());
    }
  }
}

bool ServerCore::OnIoThread() const {
  for (const auto* pool : {&threads_, &worker_threads_}) {
    for (const std::thread& t : *pool) {
      if (t.get_id() == std::this_thread::get_id()) return true;
    }
  }
  return false;
}

net::io_context& ServerCore::NextConnectionContext() {
  net::io_context& ioc = *ioc_[next_context_];
  next_context_ = next_context_ + 1 == ioc_.size() ? 1 : next_context_ + 1;
  return ioc;
}

void ServerCore::DoAccept() {
  acceptor_->async_accept(NextConnectionContext(),
                          beast::bind_front_handler(&ServerCore::OnAccept, this));
}

void ServerCore::OnAccept(error_code ec, Socket socket) {
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

void ServerCore::Admit(Socket socket) {
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

bool ServerCore::RunsInline(const HttpRequest& request) const {
  if (!worker_ioc_ || !options_.runs_inline) return true;
  try {
    return options_.runs_inline(request);
  } catch (...) {
    return false;  // a predicate bug: a worker handles it, which is always safe
  }
}

// Counts a request out of requests_awaiting_worker once: when a worker
// takes it, or when Stop() drops it unrun (its handler is destroyed).
class AwaitingWorker {
 public:
  explicit AwaitingWorker(std::atomic<uint64_t>* gauge) : gauge_(gauge) { Increment(*gauge_); }
  AwaitingWorker(AwaitingWorker&& other) noexcept : gauge_(std::exchange(other.gauge_, nullptr)) {}
  AwaitingWorker& operator=(AwaitingWorker&&) = delete;
  ~AwaitingWorker() { Taken(); }
  void Taken() {
    if (gauge_ != nullptr) Decrement(*std::exchange(gauge_, nullptr));
  }

 private:
  std::atomic<uint64_t>* gauge_;
};

template <class Task>
void ServerCore::PostToWorker(Task&& task) {
  assert(worker_ioc_);
  net::post(*worker_ioc_, [awaiting = AwaitingWorker(&counters_.requests_awaiting_worker),
                           task = std::forward<Task>(task)]() mutable {
    awaiting.Taken();
    task();
  });
}

bool ServerCore::IsOwnTarget(std::string_view target) const {
  if (!proxy_) return true;
  try {
    return proxy_->hooks.is_own_target(target);
  } catch (...) {
    return true;  // a hook bug: the handler answers (most likely 404), nothing is relayed
  }
}

ProxyAdmission ServerCore::Admit(const HttpRequest& head) {
  std::optional<ProxyAdmission> admission;
  try {
    admission = proxy_->hooks.admit(head);
  } catch (...) {
    // Swallowed on purpose, as in CallHandler.
  }
  const auto valid_fields = [](const std::vector<std::pair<std::string, std::string>>& fields) {
    return std::all_of(fields.begin(), fields.end(), [](const auto& field) {
      return IsValidHeaderName(field.first) && IsValidHeaderValue(field.second);
    });
  };
  const bool valid = admission && (admission->relay ? valid_fields(admission->set_request_headers) &&
                                                          valid_fields(admission->set_response_headers)
                                                    : IsValidResponse(admission->answer));
  if (!valid) {
    Increment(counters_.handler_errors);
    ProxyAdmission refused;
    refused.answer = JsonError(500, "internal", "internal error");
    return refused;
  }
  return std::move(*admission);
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
  work_.clear();
  // Abandons whatever did not drain; a running handler still finishes (its
  // response is dropped with ioc_ below), and requests still waiting for a
  // worker are dropped with worker_ioc_: run unanswered, a synced append
  // would only keep Stop() waiting.
  if (worker_ioc_) worker_ioc_->stop();
  for (auto& ioc : ioc_) ioc->stop();
  for (std::thread& t : threads_) t.join();
  worker_work_.reset();
  for (std::thread& t : worker_threads_) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    signals_.reset();
  }
  accept_retry_timer_.reset();
  acceptor_.reset();
  worker_ioc_.reset();
  ioc_.clear();  // destroys queued handlers and the sessions they hold
  assert(sessions_.empty());
}

void ServerCore::WaitForSignal() {
  assert(!OnIoThread() && "WaitForSignal() from inside the handler would deadlock");
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!stop_requested_ && !signals_) {
      signals_ = std::make_unique<net::signal_set>(*ioc_.front());
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
  s.requests_awaiting_worker = load(counters_.requests_awaiting_worker);
  s.requests_rejected = load(counters_.requests_rejected);
  s.handler_errors = load(counters_.handler_errors);
  s.proxy_relayed = load(counters_.proxy_relayed);
  s.proxy_answered = load(counters_.proxy_answered);
  s.proxy_upstream_failures = load(counters_.proxy_upstream_failures);
  return s;
}

}  // namespace http_internal

// ---------------------------------------------------------------------------
// HttpServer

Result<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                      HttpHandler handler,
                                                      std::optional<HttpProxyOptions> proxy) {
  KL_RETURN_IF_ERROR(http_internal::ValidateOptions(options, handler));
  if (proxy) KL_RETURN_IF_ERROR(http_internal::ValidateProxyOptions(*proxy));
  try {
    auto core = std::make_unique<http_internal::ServerCore>(std::move(options), std::move(handler),
                                                            std::move(proxy));
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
