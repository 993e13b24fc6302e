// HTTP/1.1 server: the network I/O layer only. It parses requests, enforces
// size limits and timeouts, hands each request to an HttpHandler and writes the
// response. It knows nothing about routes or the ledger.
//
// Built on Boost.Beast/Asio, which only api/http_server.cc includes.
//
// Threading: `threads` I/O threads, each running its own io_context, one
// more thread that only accepts, and `worker_threads` threads for handlers
// that may block. Accepted connections are dealt to the I/O threads in turn,
// and a connection stays on its thread: it is served by one thread at a time
// and its requests are handled one after another (no pipelining in
// parallel). A request that `runs_inline` claims (or every request, without
// workers) is handled on its connection's I/O thread: quick, non-blocking
// work such as an authorization decision, answered without a thread switch.
// Any other request is handed to a worker thread, and its response goes back
// to the I/O thread to be written, so a handler that blocks (e.g. on a synced
// write) holds up only its own connection; at most `worker_threads` such
// handlers run at once, the rest wait in order. I/O threads can then be few
// (about one per core the server may use), which keeps the inline requests'
// tail latency low. (One io_context shared by all I/O threads, with a strand
// per connection, cost 20-30% more CPU per request in locks and wake-ups:
// docs/performance.md.)
//
// Protocol notes: HTTP/1.0 and 1.1; keep-alive as the client asks; pipelined
// requests are answered in order, one at a time; "expect: 100-continue" is
// answered with 100 before the body is read (unless the declared body is too
// large: then 413). Requests the server rejects itself (400 malformed, 413 body
// too large, 431 headers too large) get a JsonError body and close the
// connection. The answer to HEAD is sent without its body (its
// Content-Length stays that of the body the handler gave).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "api/http_types.h"
#include "ledger/status.h"

namespace keyledger {

// Most worker threads one server may run.
inline constexpr int kHttpWorkerThreadsMax = 1024;

struct HttpServerOptions {
  // IP address literal to bind ("127.0.0.1", "0.0.0.0", "::1"); no host names.
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0 picks an ephemeral port; see HttpServer::port()
  int threads = 2;  // I/O threads: reads, writes, and the handler for inline requests. >= 1.
  // Threads that run the handler for requests `runs_inline` does not claim.
  // 0: every request is handled on its I/O thread. 0..kHttpWorkerThreadsMax.
  int worker_threads = 0;
  // Whether a request (body read) is handled on its I/O thread. Must be quick,
  // thread-safe and not throw (one that throws sends the request to a
  // worker). Empty: every request is, and the workers stay idle.
  std::function<bool(const HttpRequest&)> runs_inline;

  uint64_t body_bytes_max = 1 << 20;     // larger bodies get 413
  uint32_t header_bytes_max = 16 << 10;  // request line + headers; larger get 431

  // Time from accept (first request) or from the first byte (later requests)
  // until the whole request, body included, has been read. On expiry the
  // connection is closed without a response.
  int64_t read_timeout_ms = 30000;
  // Time a keep-alive connection may wait for the first byte of its next
  // request before it is closed.
  int64_t idle_timeout_ms = 60000;
  // Time to write one response. On expiry the connection is closed.
  int64_t write_timeout_ms = 30000;
  // Time Stop() waits for in-flight requests before closing what is left.
  int64_t drain_timeout_ms = 10000;

  // Open connections beyond this are accepted and closed at once, without a
  // response (counted in HttpServerStats::connections_rejected).
  uint64_t connections_max = 10000;
  // Requests read and waiting for a worker beyond this are answered 503
  // `unavailable` with Retry-After: 1 instead of queued (counted in
  // requests_rejected), so the queue holds at most this many bodies
  // (× body_bytes_max) rather than one per connection. 0 = no cap.
  // Default 1024.
  uint64_t requests_awaiting_worker_max = 1024;
  // After this many requests the response says "connection: close" and the
  // connection is closed. 0 = unlimited.
  uint64_t requests_per_connection_max = 0;
};

// Gateway mode: relays requests that ProxyHooks::is_own_target refuses to an
// upstream HTTP/1.1 server, streaming both bodies (at most relay_chunk_bytes
// held per direction), with keep-alive connections to the upstream (one per
// client connection, reused while both sides keep it alive).
struct HttpProxyOptions {
  // IP address literal of the upstream, and its port. Required.
  std::string upstream_host;
  uint16_t upstream_port = 0;
  ProxyHooks hooks;  // REQUIRES: both functions set

  // Time to open a TCP connection to the upstream; on expiry the client gets 502.
  int64_t connect_timeout_ms = 5000;
  // Time from the end of the request until the upstream's response header
  // has arrived; on expiry the client gets 504.
  int64_t response_header_timeout_ms = 120000;
  // Longest wait for any one read or write while a body is relayed (in either
  // direction); on expiry both connections are closed.
  int64_t relay_idle_timeout_ms = 60000;
  // Largest request body relayed (the server's own body_bytes_max does not
  // apply to relayed requests); larger ones get 413 before anything is sent
  // upstream when the length is declared, or a closed connection otherwise.
  uint64_t request_body_bytes_max = 256ull << 20;
  // Largest upstream response header block; larger ones get 502.
  uint32_t response_header_bytes_max = 64 << 10;
  // Size of each relay read/write.
  size_t relay_chunk_bytes = 64 << 10;
};

// A snapshot of counters since Start(); for /metrics.
struct HttpServerStats {
  uint64_t connections_accepted = 0;  // connections that got a session
  uint64_t connections_rejected = 0;  // closed at accept: over connections_max or stopping
  uint64_t connections_open = 0;      // sessions alive now
  uint64_t connections_timed_out = 0;  // closed by read or write timeout (not idle)
  uint64_t requests_total = 0;         // requests passed to the handler
  uint64_t requests_in_flight = 0;     // handler calls running now
  uint64_t requests_awaiting_worker = 0;  // handed to the workers, not started yet
  uint64_t requests_rejected = 0;      // answered 400/413/431 by the server itself
  uint64_t handler_errors = 0;         // handler threw or returned an invalid response
  uint64_t proxy_relayed = 0;          // gateway mode: exchanges relayed to the upstream
  uint64_t proxy_answered = 0;         // gateway mode: answered by the hooks (refusals, preflights)
  uint64_t proxy_upstream_failures = 0;  // 502/504 sent, or upstream broke mid-response
};

namespace http_internal {
class ServerCore;
}

// Thread safety: all methods are thread-safe. Stop() and the destructor must
// not be called from inside the handler (they wait for the I/O threads).
class HttpServer {
 public:
  // Binds options.host:options.port, starts listening and starts the I/O
  // threads. `handler` is called for every well-formed request.
  // Returns:
  //   InvalidArgument - an option is out of range (field names it), or host
  //                     is not an IP address literal, or handler is empty.
  //   IOError         - the address could not be bound or listened on (the
  //                     message names it), or threads could not be started.
  // With `proxy`, the server runs in gateway mode (see HttpProxyOptions);
  // InvalidArgument also when its upstream address, ports, hooks or limits
  // are invalid (field "proxy.<name>").
  static Result<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                   HttpHandler handler,
                                                   std::optional<HttpProxyOptions> proxy = {});

  // Calls Stop().
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Returns the bound port (the actual one when options.port was 0).
  uint16_t port() const;

  // Stops gracefully: stops accepting, closes connections waiting for a
  // request, lets requests already being read or handled finish and their
  // responses (sent with "connection: close") be written, then closes
  // everything and joins the I/O and worker threads. What is still open
  // after drain_timeout_ms is closed; a handler that is still running is not
  // interrupted, so Stop() also waits for it to return, but requests still
  // waiting for a worker then are dropped unhandled (their connections close
  // without an answer, as for a request still being read).
  // Idempotent; concurrent callers all return once the server has stopped.
  // REQUIRES: not called from inside the handler.
  void Stop();

  // Blocks until SIGINT or SIGTERM arrives or Stop() is called (from another
  // thread), then stops gracefully and returns. SIGINT/SIGTERM are caught from
  // the first call on, for the rest of the server's life.
  // REQUIRES: not called from inside the handler.
  void WaitForSignal();

  HttpServerStats stats() const;

 private:
  explicit HttpServer(std::unique_ptr<http_internal::ServerCore> core);

  std::unique_ptr<http_internal::ServerCore> core_;
};

}  // namespace keyledger
