// Tests for api/http_server.h over real TCP, with a tiny POSIX-socket client.

#include "api/http_server.h"
#include "tests/http_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace keyledger {
namespace {

using namespace std::chrono_literals;
using testing::Client;
using testing::Get;
using testing::Lower;
using testing::Post;
using testing::RawResponse;

// Echoes the request as "METHOD TARGET|x-test header|remote ip|body".
// /slow sleeps first; /throw throws; /bad returns an invalid status.
HttpResponse EchoHandler(const HttpRequest& request) {
  if (request.target == "/slow") std::this_thread::sleep_for(500ms);
  if (request.target == "/throw") throw std::runtime_error("boom");
  HttpResponse response;
  if (request.target == "/bad") response.status = 42;
  response.headers.emplace_back("content-type", "text/plain");
  response.headers.emplace_back("content-length", "999");  // server-owned: dropped
  response.body = request.method + " " + request.target + "|" +
                  std::string(request.Header("x-test")) + "|" + request.remote_ip + "|" +
                  request.body;
  return response;
}

std::unique_ptr<HttpServer> StartServer(HttpServerOptions options = {},
                                        HttpHandler handler = EchoHandler) {
  options.port = 0;
  auto server = HttpServer::Start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.ok()) << server.ToStatus().ToString();
  return std::move(server).value();
}

// Polls `read` until it returns `want` or 2 s pass; for counters the server
// updates just after the client can observe the effect (e.g. a close).
template <typename Read>
uint64_t Eventually(uint64_t want, Read read) {
  auto deadline = std::chrono::steady_clock::now() + 2s;
  uint64_t got = read();
  while (got != want && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
    got = read();
  }
  return got;
}

void ExpectJsonError(const RawResponse& r, int status, const std::string& code) {
  EXPECT_EQ(r.status, status);
  EXPECT_EQ(r.Header("content-type"), "application/json");
  auto json = nlohmann::json::parse(r.body);
  EXPECT_EQ(json["error"]["code"], code) << r.body;
  EXPECT_TRUE(json["error"]["message"].is_string());
  EXPECT_FALSE(json["error"].contains("field")) << r.body;
}

TEST(HttpServerTest, GetEcho) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send(Get("/v1/keys?limit=10", "X-Test: Hello\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "GET /v1/keys?limit=10|Hello|127.0.0.1|");
  EXPECT_EQ(r->Header("content-length"), std::to_string(r->body.size()));
  EXPECT_EQ(r->Header("server"), "keyledger");
  EXPECT_EQ(r->Header("content-type"), "text/plain");
}

// The server frames every response itself: status line with the reason
// phrase, the handler's headers in order without those it owns (any case),
// one Server header, Content-Length (not for 204), Connection as HTTP/1.x wants.
HttpResponse FramingHandler(const HttpRequest& request) {
  HttpResponse response;
  response.status = request.target == "/empty" ? 204 : 404;
  response.headers.emplace_back("Content-Type", "text/plain");
  response.headers.emplace_back("SERVER", "someone-else");
  response.headers.emplace_back("Transfer-Encoding", "chunked");
  response.headers.emplace_back("CONNECTION", "upgrade");
  response.headers.emplace_back("X-Trace", "a");
  response.headers.emplace_back("X-Trace", "b");
  if (response.status != 204) response.body = "nope";
  return response;
}

TEST(HttpServerTest, ResponsesAreFramedByTheServer) {
  auto server = StartServer({}, FramingHandler);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/missing")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->head,
            "HTTP/1.1 404 Not Found\r\n"
            "Content-Type: text/plain\r\n"
            "X-Trace: a\r\n"
            "X-Trace: b\r\n"
            "Server: keyledger\r\n"
            "Content-Length: 4");
  EXPECT_EQ(r->body, "nope");
  // 204: no Content-Length, and the connection stays open.
  ASSERT_TRUE(client.Send(Get("/empty")));
  r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->head,
            "HTTP/1.1 204 No Content\r\n"
            "Content-Type: text/plain\r\n"
            "X-Trace: a\r\n"
            "X-Trace: b\r\n"
            "Server: keyledger");
  ASSERT_TRUE(client.Send(Get("/missing", "Connection: close\r\n")));
  r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->Header("connection"), "close");
  EXPECT_TRUE(client.ReadEof());
}

TEST(HttpServerTest, Http10KeepsAliveOnlyWhenAsked) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->head.substr(0, r->head.find("\r\n")), "HTTP/1.0 200 OK");
  EXPECT_EQ(r->Header("connection"), "keep-alive");
  EXPECT_EQ(r->body, "GET /a||127.0.0.1|");
  ASSERT_TRUE(client.Send("GET /b HTTP/1.0\r\n\r\n"));
  r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->head.substr(0, r->head.find("\r\n")), "HTTP/1.0 200 OK");
  EXPECT_EQ(r->Header("connection"), "");
  EXPECT_EQ(r->body, "GET /b||127.0.0.1|");
  EXPECT_TRUE(client.ReadEof());
}

TEST(HttpServerTest, PostEcho) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(Post("/v1/usage", "{\"calls\":3}")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /v1/usage||127.0.0.1|{\"calls\":3}");
}

TEST(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/one")));
  auto first = client.ReadResponse();
  ASSERT_TRUE(first);
  EXPECT_NE(Lower(first->Header("connection")), "close");
  ASSERT_TRUE(client.Send(Post("/two", "body")));
  auto second = client.ReadResponse();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->body, "POST /two||127.0.0.1|body");
  HttpServerStats stats = server->stats();
  EXPECT_EQ(stats.connections_accepted, 1u);
  EXPECT_EQ(stats.requests_total, 2u);
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/a") + Get("/b")));
  auto a = client.ReadResponse();
  auto b = client.ReadResponse();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->body, "GET /a||127.0.0.1|");
  EXPECT_EQ(b->body, "GET /b||127.0.0.1|");
}

TEST(HttpServerTest, OversizeBodyGets413AndClose) {
  HttpServerOptions options;
  options.body_bytes_max = 1024;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Post("/big", std::string(4096, 'x'))));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 413, "payload_too_large");
  EXPECT_EQ(Lower(r->Header("connection")), "close");
  EXPECT_TRUE(client.ReadEof());
  EXPECT_EQ(server->stats().requests_total, 0u);
  EXPECT_EQ(server->stats().requests_rejected, 1u);
}

TEST(HttpServerTest, OversizeChunkedBodyGets413) {
  HttpServerOptions options;
  options.body_bytes_max = 1024;
  auto server = StartServer(options);
  Client client(server->port());
  std::string chunk(2000, 'y');
  ASSERT_TRUE(client.Send("POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                          std::string("7d0\r\n") + chunk + "\r\n0\r\n\r\n"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 413, "payload_too_large");
}

// Beast puts no limit on a chunk-size line or a trailer: the read buffer's
// own cap turns an endless one into a 400 instead of unbounded memory.
TEST(HttpServerTest, AnEndlessChunkHeaderOrTrailerGets400) {
  for (const std::string& endless : {std::string("1;") + std::string(200'000, 'a'),
                                     std::string("0\r\nX-T: ") + std::string(200'000, 'a')}) {
    auto server = StartServer();
    Client client(server->port());
    ASSERT_TRUE(client.Send("POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                            endless));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r);
    ExpectJsonError(*r, 400, "invalid_argument");
    EXPECT_NE(r->body.find("buffer overflow"), std::string::npos) << r->body;
  }
}

TEST(HttpServerTest, BodyAtLimitIsAccepted) {
  HttpServerOptions options;
  options.body_bytes_max = 1024;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Post("/ok", std::string(1024, 'x'))));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, GarbageGets400AndClose) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(std::string("\x01\x02 garbage \x7f\r\n\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 400, "invalid_argument");
  EXPECT_TRUE(client.ReadEof());
}

TEST(HttpServerTest, OversizeHeaderGets431) {
  HttpServerOptions options;
  options.header_bytes_max = 1024;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/", "X-Big: " + std::string(4096, 'h') + "\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 431, "headers_too_large");
  EXPECT_TRUE(client.ReadEof());
}

TEST(HttpServerTest, ExpectContinueGets100ThenResponse) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(
      "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  auto interim = client.ReadResponse();
  ASSERT_TRUE(interim);
  EXPECT_EQ(interim->status, 100);
  ASSERT_TRUE(client.Send("hello"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "POST /up||127.0.0.1|hello");
}

TEST(HttpServerTest, ReadTimeoutClosesSlowClient) {
  HttpServerOptions options;
  options.read_timeout_ms = 200;
  auto server = StartServer(options);
  Client client(server->port());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(client.Send("GET / HTTP/1.1\r\nHost: t\r\n"));  // never finished
  EXPECT_TRUE(client.ReadEof());
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, 150ms);
  EXPECT_LT(elapsed, 3s);
  EXPECT_EQ(Eventually(1, [&] { return server->stats().connections_timed_out; }), 1u);
  EXPECT_EQ(server->stats().requests_total, 0u);
}

TEST(HttpServerTest, ReadTimeoutCoversSlowBody) {
  HttpServerOptions options;
  options.read_timeout_ms = 200;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc"));
  EXPECT_TRUE(client.ReadEof());
  EXPECT_EQ(server->stats().requests_total, 0u);
}

TEST(HttpServerTest, IdleTimeoutClosesKeepAliveConnection) {
  HttpServerOptions options;
  options.idle_timeout_ms = 200;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/")));
  ASSERT_TRUE(client.ReadResponse());
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(client.ReadEof());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 150ms);
  EXPECT_EQ(server->stats().connections_timed_out, 0u);  // idle expiry is not a timeout
}

TEST(HttpServerTest, RequestsPerConnectionMaxClosesConnection) {
  HttpServerOptions options;
  options.requests_per_connection_max = 2;
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/1")));
  auto first = client.ReadResponse();
  ASSERT_TRUE(first);
  EXPECT_NE(Lower(first->Header("connection")), "close");
  ASSERT_TRUE(client.Send(Get("/2")));
  auto second = client.ReadResponse();
  ASSERT_TRUE(second);
  EXPECT_EQ(Lower(second->Header("connection")), "close");
  EXPECT_TRUE(client.ReadEof());
}

TEST(HttpServerTest, ConnectionsOverMaxAreClosed) {
  HttpServerOptions options;
  options.connections_max = 1;
  auto server = StartServer(options);
  Client first(server->port());
  ASSERT_TRUE(first.Send(Get("/")));
  ASSERT_TRUE(first.ReadResponse());  // the first session is registered now
  Client second(server->port());
  ASSERT_TRUE(second.connected());  // accepted by the kernel, then closed
  EXPECT_TRUE(second.ReadEof());
  EXPECT_EQ(server->stats().connections_rejected, 1u);
  EXPECT_EQ(server->stats().connections_open, 1u);
}

TEST(HttpServerTest, HandlerExceptionGets500AndServerKeepsServing) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/throw")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 500, "internal");
  EXPECT_EQ(r->body.find("boom"), std::string::npos);  // no leak of the exception text
  ASSERT_TRUE(client.Send(Get("/after")));
  auto after = client.ReadResponse();
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
  EXPECT_EQ(server->stats().handler_errors, 1u);
}

TEST(HttpServerTest, InvalidHandlerResponseGets500) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/bad")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  ExpectJsonError(*r, 500, "internal");
}

TEST(HttpServerTest, GracefulStopLetsInFlightRequestFinish) {
  auto server = StartServer();
  Client idle(server->port());
  ASSERT_TRUE(idle.Send(Get("/warmup")));
  ASSERT_TRUE(idle.ReadResponse());  // now an idle keep-alive connection

  std::optional<RawResponse> slow_response;
  std::thread slow([&] {
    Client client(server->port());
    client.Send(Get("/slow"));
    slow_response = client.ReadResponse();
  });
  while (server->stats().requests_in_flight == 0) std::this_thread::sleep_for(1ms);
  auto start = std::chrono::steady_clock::now();
  server->Stop();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);  // waited for the handler
  slow.join();
  ASSERT_TRUE(slow_response);
  EXPECT_EQ(slow_response->status, 200);
  EXPECT_EQ(slow_response->body, "GET /slow||127.0.0.1|");
  EXPECT_EQ(Lower(slow_response->Header("connection")), "close");
  EXPECT_TRUE(idle.ReadEof());
  EXPECT_EQ(server->stats().connections_open, 0u);

  Client late(server->port());
  EXPECT_FALSE(late.connected() && late.Send(Get("/")) && late.ReadResponse());
  server->Stop();  // idempotent
}

TEST(HttpServerTest, StopWithIdleConnectionsIsFast) {
  HttpServerOptions options;
  options.drain_timeout_ms = 5000;
  auto server = StartServer(options);
  Client fresh(server->port());  // connected, nothing sent yet
  ASSERT_TRUE(fresh.connected());
  Client idle(server->port());
  ASSERT_TRUE(idle.Send(Get("/")));
  ASSERT_TRUE(idle.ReadResponse());
  while (server->stats().connections_open < 2) std::this_thread::sleep_for(1ms);
  auto start = std::chrono::steady_clock::now();
  server->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_TRUE(fresh.ReadEof());
  EXPECT_TRUE(idle.ReadEof());
}

TEST(HttpServerTest, DrainTimeoutBoundsStop) {
  HttpServerOptions options;
  options.drain_timeout_ms = 100;
  auto server = StartServer(options);
  Client stuck(server->port());
  ASSERT_TRUE(stuck.Send("GET / HTTP/1.1\r\nHost: t\r\n"));  // half a request
  while (server->stats().connections_open < 1) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);  // let the server read the partial request
  auto start = std::chrono::steady_clock::now();
  server->Stop();
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, 80ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_TRUE(stuck.ReadEof());
}

TEST(HttpServerTest, ConcurrentClientsGetTheirOwnAnswers) {
  auto server = StartServer();
  constexpr int kClients = 8;
  constexpr int kRequestsPerClient = 50;
  std::atomic<int> correct{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; c++) {
    clients.emplace_back([&, c] {
      Client client(server->port());
      for (int i = 0; i < kRequestsPerClient; i++) {
        std::string body = "client" + std::to_string(c) + "-req" + std::to_string(i);
        if (!client.Send(Post("/c", body))) return;
        auto r = client.ReadResponse();
        if (r && r->status == 200 && r->body == "POST /c||127.0.0.1|" + body) correct++;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(correct.load(), kClients * kRequestsPerClient);
  EXPECT_EQ(server->stats().requests_total, uint64_t{kClients * kRequestsPerClient});
  EXPECT_EQ(server->stats().connections_accepted, uint64_t{kClients});
}

// Connections are dealt to the I/O threads in turn and stay there: a blocked
// handler holds up the connections of its own thread only.
TEST(HttpServerTest, ABlockedHandlerHoldsOnlyItsThreadsConnections) {
  std::atomic<bool> slow_done{false};
  HttpServerOptions options;
  options.threads = 2;
  auto server = StartServer(options, [&](const HttpRequest& request) {
    HttpResponse response = EchoHandler(request);
    if (request.target == "/slow") slow_done = true;
    return response;
  });
  Client first(server->port());  // dealt to thread 0
  ASSERT_TRUE(first.Send(Get("/slow")));
  while (server->stats().requests_in_flight == 0) std::this_thread::sleep_for(1ms);

  Client second(server->port());  // thread 1: answered while /slow still runs
  ASSERT_TRUE(second.Send(Get("/second")));
  auto r = second.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_FALSE(slow_done.load());

  Client third(server->port());  // thread 0 again: waits for /slow
  ASSERT_TRUE(third.Send(Get("/third")));
  r = third.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(slow_done.load());
  r = first.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "GET /slow||127.0.0.1|");
}

// A handler that waits until the test opens the gate (at most 5 s) for
// /blocked, and echoes every request.
class GatedHandler {
 public:
  HttpResponse operator()(const HttpRequest& request) {
    if (request.target == "/blocked") {
      std::unique_lock<std::mutex> lock(mu_);
      entered_++;
      cv_.notify_all();
      cv_.wait_for(lock, 5s, [&] { return open_; });
    }
    return EchoHandler(request);
  }
  void WaitForEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, 5s, [&] { return entered_ >= n; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int entered() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  bool open_ = false;
};

HttpServerOptions OneIoThreadWithWorkers(int workers) {
  HttpServerOptions options;
  options.threads = 1;
  options.worker_threads = workers;
  options.runs_inline = [](const HttpRequest& request) { return request.target != "/blocked"; };
  return options;
}

// Requests beyond the cap on those waiting for a worker are answered 503 at
// once rather than queued; the queued ones are served.
TEST(HttpServerTest, RequestsBeyondTheWorkerQueueCapGet503) {
  auto gate = std::make_shared<GatedHandler>();
  HttpServerOptions options = OneIoThreadWithWorkers(1);
  options.requests_awaiting_worker_max = 1;
  auto server = StartServer(options, [gate](const HttpRequest& request) { return (*gate)(request); });
  Client running(server->port());
  ASSERT_TRUE(running.Send(Get("/blocked")));
  gate->WaitForEntered(1);  // on the one worker
  Client queued(server->port());
  ASSERT_TRUE(queued.Send(Get("/blocked")));
  for (int i = 0; i < 500 && server->stats().requests_awaiting_worker < 1; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server->stats().requests_awaiting_worker, 1u);
  Client refused(server->port());
  ASSERT_TRUE(refused.Send(Get("/blocked")));
  auto busy = refused.ReadResponse();
  ASSERT_TRUE(busy);
  ExpectJsonError(*busy, 503, "unavailable");
  EXPECT_EQ(busy->Header("retry-after"), "1");
  gate->Open();
  auto first = running.ReadResponse();
  auto second = queued.ReadResponse();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(second->status, 200);
}

// One I/O thread serves every connection; a handler blocked on a worker holds
// up its own connection only, where without workers it held up them all.
TEST(HttpServerTest, AHandlerOnAWorkerHoldsUpOnlyItsOwnConnection) {
  auto gate = std::make_shared<GatedHandler>();
  auto server = StartServer(OneIoThreadWithWorkers(2),
                            [gate](const HttpRequest& request) { return (*gate)(request); });
  Client first(server->port());
  Client second(server->port());
  ASSERT_TRUE(first.Send(Get("/blocked")));
  ASSERT_TRUE(second.Send(Get("/blocked")));
  gate->WaitForEntered(2);  // both run at once, on the two workers
  EXPECT_EQ(server->stats().requests_in_flight, 2u);

  Client third(server->port());  // the same I/O thread answers at once
  ASSERT_TRUE(third.Send(Get("/quick")));
  auto r = third.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "GET /quick||127.0.0.1|");
  EXPECT_EQ(server->stats().requests_in_flight, 2u);  // the blocked ones still wait

  gate->Open();
  for (Client* client : {&first, &second}) {
    r = client->ReadResponse();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "GET /blocked||127.0.0.1|");
    // The connection stays usable: its next request is served as before.
    ASSERT_TRUE(client->Send(Get("/after")));
    r = client->ReadResponse();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /after||127.0.0.1|");
  }
  EXPECT_EQ(server->stats().requests_awaiting_worker, 0u);
}

// With every worker busy, later requests wait in order for one.
TEST(HttpServerTest, RequestsWaitForAFreeWorker) {
  auto gate = std::make_shared<GatedHandler>();
  auto server = StartServer(OneIoThreadWithWorkers(1),
                            [gate](const HttpRequest& request) { return (*gate)(request); });
  Client first(server->port());
  ASSERT_TRUE(first.Send(Get("/blocked")));
  gate->WaitForEntered(1);
  Client second(server->port());
  ASSERT_TRUE(second.Send(Get("/blocked")));
  EXPECT_EQ(Eventually(1, [&] { return server->stats().requests_awaiting_worker; }), 1u);
  gate->Open();
  for (Client* client : {&first, &second}) {
    auto r = client->ReadResponse();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body, "GET /blocked||127.0.0.1|");
  }
  EXPECT_EQ(server->stats().requests_awaiting_worker, 0u);
}

TEST(HttpServerTest, GracefulStopLetsAHandlerOnAWorkerFinish) {
  auto server = StartServer(OneIoThreadWithWorkers(1));
  std::optional<RawResponse> response;
  std::thread client_thread([&] {
    Client client(server->port());
    client.Send(Get("/slow"));  // EchoHandler sleeps 500 ms
    response = client.ReadResponse();
  });
  while (server->stats().requests_in_flight == 0) std::this_thread::sleep_for(1ms);
  server->Stop();
  client_thread.join();
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "GET /slow||127.0.0.1|");
  EXPECT_EQ(Lower(response->Header("connection")), "close");
}

// At the drain deadline the running handler finishes, and a request still
// waiting for a worker is dropped unhandled: its client sees the connection
// close (it was never acknowledged, so it may retry).
TEST(HttpServerTest, StopDropsRequestsStillWaitingForAWorker) {
  auto gate = std::make_shared<GatedHandler>();
  HttpServerOptions options = OneIoThreadWithWorkers(1);
  options.drain_timeout_ms = 100;
  auto server = StartServer(options, [gate](const HttpRequest& request) { return (*gate)(request); });
  Client running(server->port());
  ASSERT_TRUE(running.Send(Get("/blocked")));
  gate->WaitForEntered(1);
  Client waiting(server->port());
  ASSERT_TRUE(waiting.Send(Get("/blocked")));
  EXPECT_EQ(Eventually(1, [&] { return server->stats().requests_awaiting_worker; }), 1u);

  std::thread stopper([&] { server->Stop(); });
  std::this_thread::sleep_for(300ms);  // past the drain deadline
  gate->Open();
  stopper.join();
  EXPECT_EQ(gate->entered(), 1);  // the waiting request never reached the handler
  EXPECT_EQ(server->stats().requests_awaiting_worker, 0u);  // nor waits any more
  EXPECT_FALSE(running.ReadResponse());  // its answer was dropped with the I/O threads
  EXPECT_TRUE(waiting.ReadEof());
}

TEST(HttpServerTest, AThrowingRunsInlineSendsTheRequestToAWorker) {
  HttpServerOptions options = OneIoThreadWithWorkers(1);
  options.runs_inline = [](const HttpRequest&) -> bool { throw std::runtime_error("bug"); };
  auto server = StartServer(options);
  Client client(server->port());
  ASSERT_TRUE(client.Send(Get("/x")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "GET /x||127.0.0.1|");
  EXPECT_EQ(server->stats().handler_errors, 0u);
}

TEST(HttpServerTest, BindFailureNamesTheAddress) {
  auto first = StartServer();
  HttpServerOptions options;
  options.port = first->port();
  auto second = HttpServer::Start(options, EchoHandler);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kIOError);
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string(first->port())),
            std::string::npos)
      << second.status().ToString();
}

TEST(HttpServerTest, InvalidOptionsAreRejected) {
  HttpServerOptions options;
  options.port = 0;
  options.threads = 0;
  auto r = HttpServer::Start(options, EchoHandler);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().field(), "threads");

  options.threads = 1;
  for (int workers : {-1, kHttpWorkerThreadsMax + 1}) {
    options.worker_threads = workers;
    r = HttpServer::Start(options, EchoHandler);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().field(), "worker_threads");
  }
  options.worker_threads = 0;
  options.host = "localhost";
  r = HttpServer::Start(options, EchoHandler);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().field(), "host");

  options.host = "127.0.0.1";
  r = HttpServer::Start(options, HttpHandler());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().field(), "handler");
}

TEST(HttpServerTest, WaitForSignalReturnsWhenStoppedElsewhere) {
  auto server = StartServer();
  std::thread waiter([&] { server->WaitForSignal(); });
  std::this_thread::sleep_for(50ms);
  server->Stop();
  waiter.join();
  Client late(server->port());
  EXPECT_FALSE(late.connected() && late.Send(Get("/")) && late.ReadResponse());
}

TEST(HttpServerTest, WaitForSignalReturnsOnSigterm) {
  auto server = StartServer();
  std::thread waiter([&] { server->WaitForSignal(); });
  // Wait until Asio has installed its SIGTERM handler, so the signal cannot
  // kill the test process.
  for (;;) {
    struct sigaction current {};
    ::sigaction(SIGTERM, nullptr, &current);
    if (current.sa_handler != SIG_DFL) break;
    std::this_thread::sleep_for(1ms);
  }
  ::kill(::getpid(), SIGTERM);
  waiter.join();
  Client late(server->port());
  EXPECT_FALSE(late.connected() && late.Send(Get("/")) && late.ReadResponse());
}

// ---- Gateway mode: relaying to an upstream ------------------------------------

// A gateway in front of an echo server; the hooks are scripted per test.
struct ProxyFixture {
  std::unique_ptr<HttpServer> upstream = StartServer();
  std::mutex mu;
  std::vector<ProxyExchange> done;  // GUARDED_BY(mu)
  std::atomic<int> admitted{0};
  std::unique_ptr<HttpServer> gateway;
  // More fields for the hooks to set on every relayed response.
  std::vector<std::pair<std::string, std::string>> extra_response_headers;

  // Relays every target but /own, adding x-test, capturing 5 bytes of each body.
  ProxyHooks Hooks() {
    ProxyHooks hooks;
    hooks.is_own_target = [](std::string_view target) { return target == "/own"; };
    hooks.admit = [this](const HttpRequest& head) {
      admitted++;
      ProxyAdmission a;
      if (head.target == "/refuse") {
        a.answer = JsonError(403, "permission_denied", "no");
        return a;
      }
      if (head.target == "/throw") throw std::runtime_error("hook bug");
      a.relay = true;
      a.remove_request_headers = {"authorization"};
      a.set_request_headers = {{"x-test", "from-gateway " + std::string(head.Header("authorization"))}};
      a.set_response_headers = {{"x-gateway", "1"}};
      for (const auto& field : extra_response_headers) a.set_response_headers.push_back(field);
      a.capture_bytes_max = 5;
      a.on_done = [this](ProxyExchange e) {
        std::lock_guard<std::mutex> lock(mu);
        done.push_back(std::move(e));
      };
      return a;
    };
    return hooks;
  }

  void Start(HttpServerOptions options = {}, uint16_t upstream_port = 0,
             uint64_t relayed_body_bytes_max = HttpProxyOptions{}.request_body_bytes_max) {
    HttpProxyOptions proxy;
    proxy.request_body_bytes_max = relayed_body_bytes_max;
    proxy.upstream_host = "127.0.0.1";
    proxy.upstream_port = upstream_port ? upstream_port : upstream->port();
    proxy.hooks = Hooks();
    options.port = 0;
    auto started = HttpServer::Start(
        options, [](const HttpRequest&) { HttpResponse r; r.body = "own"; return r; }, proxy);
    ASSERT_TRUE(started.ok()) << started.ToStatus().ToString();
    gateway = std::move(started).value();
  }

  std::vector<ProxyExchange> Done(size_t n) {
    Eventually(n, [this] { std::lock_guard<std::mutex> lock(mu); return uint64_t{done.size()}; });
    std::lock_guard<std::mutex> lock(mu);
    return done;
  }
};

TEST(HttpProxyTest, RelaysOverOneKeptAliveUpstreamConnectionAndReportsEachExchange) {
  ProxyFixture f;
  f.Start();
  Client client(f.gateway->port());
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(client.Send(Post("/render/" + std::to_string(i), "hello world",
                                 "Authorization: Bearer s3cret\r\n")));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    // The echo shows what reached the upstream: the hook's header, not the secret.
    EXPECT_EQ(r->body, "POST /render/" + std::to_string(i) + "|from-gateway Bearer s3cret|127.0.0.1|hello world");
    EXPECT_EQ(r->Header("x-gateway"), "1");
  }
  EXPECT_EQ(f.upstream->stats().connections_accepted, 1u);
  EXPECT_EQ(f.upstream->stats().requests_total, 3u);
  auto done = f.Done(3);
  ASSERT_EQ(done.size(), 3u);
  for (const auto& e : done) {
    EXPECT_EQ(e.status, 200);
    EXPECT_FALSE(e.upstream_failed);
    EXPECT_EQ(e.request_body_bytes, 11u);
    EXPECT_EQ(e.request_body_excerpt, "hello");
    EXPECT_EQ(e.response_body_excerpt, "POST ");
    EXPECT_GT(e.response_body_bytes, 11u);
    EXPECT_GE(e.latency_us, 0);
  }
  EXPECT_EQ(f.gateway->stats().proxy_relayed, 3u);
  EXPECT_EQ(f.gateway->stats().requests_total, 0u);  // the handler saw none
}

TEST(HttpProxyTest, OwnTargetsGoToTheHandlerAndRefusalsNeverReachTheUpstream) {
  ProxyFixture f;
  f.Start();
  auto own = testing::Fetch(f.gateway->port(), "GET", "/own");
  ASSERT_TRUE(own);
  EXPECT_EQ(own->body, "own");
  // Refused with a body pending: answered, then the connection closes.
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send(Post("/refuse", std::string(3000, 'b'))));
  auto refused = client.ReadResponse();
  ASSERT_TRUE(refused);
  ExpectJsonError(*refused, 403, "permission_denied");
  EXPECT_TRUE(client.ReadEof());
  auto hook_bug = testing::Fetch(f.gateway->port(), "GET", "/throw");
  ASSERT_TRUE(hook_bug);
  EXPECT_EQ(hook_bug->status, 500);
  EXPECT_EQ(f.upstream->stats().requests_total, 0u);
  EXPECT_EQ(f.gateway->stats().proxy_answered, 2u);
  EXPECT_TRUE(f.Done(0).empty());
}

TEST(HttpProxyTest, UnreachableUpstreamGets502AndIsReported) {
  ProxyFixture f;
  const uint16_t closed_port = f.upstream->port();
  f.upstream.reset();  // nothing listens there any more
  f.Start({}, closed_port);
  auto r = testing::Fetch(f.gateway->port(), "GET", "/render");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["code"], "upstream_unavailable");
  auto done = f.Done(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, 502);
  EXPECT_TRUE(done[0].upstream_failed);
  EXPECT_EQ(f.gateway->stats().proxy_upstream_failures, 1u);
}

TEST(HttpProxyTest, ChunkedRequestBodyIsRelayedWhole) {
  ProxyFixture f;
  f.Start();
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "POST /c|from-gateway|127.0.0.1|hello world");  // no authorization: value trimmed
}

TEST(HttpProxyTest, ServerStopMidExchangeStillReportsItOnce) {
  ProxyFixture f;
  HttpServerOptions options;
  options.drain_timeout_ms = 100;  // the upstream's /slow takes 500 ms
  f.Start(options);
  std::thread client([&] { testing::Fetch(f.gateway->port(), "GET", "/slow"); });
  ASSERT_EQ(Eventually(1, [&] { return uint64_t(f.admitted.load()); }), 1u);
  f.gateway->Stop();
  client.join();
  auto done = f.Done(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, 499);  // abandoned: the response never reached the client
}

// A one-connection upstream on a raw loopback socket: `serve` runs on its
// own thread with the listening socket, which the destructor shuts down (to
// wake an accept() nobody answered) before joining it.
class RawUpstream {
 public:
  explicit RawUpstream(std::function<void(int listen_fd)> serve) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len), 0);
    EXPECT_EQ(::listen(listen_fd_, 4), 0);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, serve = std::move(serve)] { serve(listen_fd_); });
  }
  ~RawUpstream() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }

 private:
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

// Reads from `fd` until a request head has arrived (or the peer closed);
// returns what was read.
std::string ReceiveHead(int fd) {
  std::string in;
  char buf[4096];
  while (in.find("\r\n\r\n") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  return in;
}

// Answers the first request with its header at once and its 4-byte body
// `body_delay_ms` later.
class SlowBodyUpstream {
 public:
  explicit SlowBodyUpstream(int body_delay_ms)
      : raw_([body_delay_ms](int listen_fd) { Serve(listen_fd, body_delay_ms); }) {}
  uint16_t port() const { return raw_.port(); }

 private:
  static void Serve(int listen_fd, int body_delay_ms) {
    const int fd = ::accept(listen_fd, nullptr, nullptr);
    if (fd < 0) return;
    ReceiveHead(fd);
    char buf[4096];
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
    ::send(fd, head.data(), head.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(body_delay_ms));
    ::send(fd, "body", 4, MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    while (::recv(fd, buf, sizeof(buf), 0) > 0) {}  // until the gateway closes
    ::close(fd);
  }

  RawUpstream raw_;
};

TEST(HttpProxyTest, ASlowBodyDoesNotHoldBackTheResponseHeader) {
  constexpr int kBodyDelayMs = 800;
  SlowBodyUpstream upstream(kBodyDelayMs);
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(client.Send("GET /slow-body HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
  std::string received;
  std::optional<std::chrono::steady_clock::duration> header_after;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(client.fd(), buf, sizeof(buf), 0);
    if (n <= 0) break;
    received.append(buf, static_cast<size_t>(n));
    if (!header_after && received.find("\r\n\r\n") != std::string::npos) {
      header_after = std::chrono::steady_clock::now() - start;
    }
  }
  ASSERT_TRUE(header_after.has_value()) << received;
  EXPECT_LT(*header_after, std::chrono::milliseconds(kBodyDelayMs / 2));
  EXPECT_EQ(received.substr(0, 15), "HTTP/1.1 200 OK");
  EXPECT_EQ(received.substr(received.size() - 4), "body");
}

// Answers each request with the next scripted response, byte for byte, and
// keeps the requests it got.
class ScriptedUpstream {
 public:
  explicit ScriptedUpstream(std::vector<std::string> responses)
      : raw_([this, responses = std::move(responses)](int listen_fd) { Serve(listen_fd, responses); }) {}
  uint16_t port() const { return raw_.port(); }
  // The requests received so far, each header and body as sent.
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Serve(int listen_fd, const std::vector<std::string>& responses) {
    const int fd = ::accept(listen_fd, nullptr, nullptr);
    if (fd < 0) return;
    std::string in;
    char buf[4096];
    auto fill = [&] {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n > 0) in.append(buf, static_cast<size_t>(n));
      return n > 0;
    };
    for (const std::string& response : responses) {
      size_t end;
      while ((end = in.find("\r\n\r\n")) == std::string::npos) {
        if (!fill()) break;
      }
      if (end == std::string::npos) break;
      size_t length = 0;
      const std::string head = Lower(in.substr(0, end));
      if (const size_t at = head.find("content-length: "); at != std::string::npos) {
        length = std::stoul(head.substr(at + 16));
      }
      while (in.size() < end + 4 + length && fill()) {}
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(in.substr(0, end + 4 + length));
      }
      in.erase(0, end + 4 + length);
      ::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
    }
    ::shutdown(fd, SHUT_WR);
    while (::recv(fd, buf, sizeof(buf), 0) > 0) {}  // until the gateway closes
    ::close(fd);
  }

  std::mutex mu_;
  std::vector<std::string> requests_;  // GUARDED_BY(mu_)
  RawUpstream raw_;  // last: its thread starts once the members above exist
};

// Reads from `fd` until `bytes` bytes arrived or the peer closed.
std::string ReceiveUpTo(int fd, size_t bytes) {
  std::string received;
  char buf[4096];
  while (received.size() < bytes) {
    const ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), bytes - received.size()), 0);
    if (n <= 0) break;
    received.append(buf, static_cast<size_t>(n));
  }
  return received;
}

// The server's own answer to HEAD has a header and no body (the handler's
// body is dropped), so the next response on the connection reads whole.
TEST(HttpServerTest, AnAnswerToHeadHasNoBodyAndTheConnectionGoesOn) {
  auto server = StartServer();
  Client client(server->port());
  ASSERT_TRUE(client.Send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n"));
  const std::string get_body = "GET /g||127.0.0.1|";
  std::string received;
  while (!received.ends_with(get_body)) {
    const std::string byte = ReceiveUpTo(client.fd(), 1);
    if (byte.empty()) break;
    received += byte;
  }
  ASSERT_TRUE(received.ends_with(get_body)) << received;
  EXPECT_EQ(received.find("HEAD /h"), std::string::npos) << received;  // the HEAD's body
  const size_t first_end = received.find("\r\n\r\n");
  ASSERT_NE(first_end, std::string::npos);
  EXPECT_EQ(received.substr(first_end + 4, 8), "HTTP/1.1") << received;
  // Its Content-Length is the body's, as for GET.
  EXPECT_NE(received.substr(0, first_end).find("ength: 19"), std::string::npos) << received;
}

TEST(HttpProxyTest, RelayedHeadersAndBodiesArriveByteForByte) {
  ScriptedUpstream upstream({"HTTP/1.1 299 Custom Reason\r\nContent-Length: 2\r\nX-Up: a\r\n\r\nhi",
                             "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew"});
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("GET /x?q=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n"));
  const std::string first =
      "HTTP/1.1 299 Custom Reason\r\nContent-Length: 2\r\nX-Up: a\r\nx-gateway: 1\r\n\r\nhi";
  EXPECT_EQ(ReceiveUpTo(client.fd(), first.size()), first);
  ASSERT_TRUE(client.Send("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"));
  const std::string second = "HTTP/1.1 201 Created\r\nContent-Length: 3\r\nx-gateway: 1\r\n\r\nnew";
  EXPECT_EQ(ReceiveUpTo(client.fd(), second.size()), second);
  const std::vector<std::string> requests = upstream.requests();
  ASSERT_EQ(requests.size(), 2u);
  // The hook's headers and x-forwarded-for are appended; nothing else changes.
  EXPECT_EQ(requests[0],
            "GET /x?q=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\nx-test: from-gateway\r\n"
            "x-forwarded-for: 127.0.0.1\r\n\r\n");
  EXPECT_EQ(requests[1],
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nx-test: from-gateway\r\n"
            "x-forwarded-for: 127.0.0.1\r\n\r\nhello");
  auto done = f.Done(2);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].status, 299);
  EXPECT_EQ(done[0].response_body_bytes, 2u);
  EXPECT_EQ(done[1].request_body_bytes, 5u);
}

TEST(HttpProxyTest, HopByHopFieldsAndThoseConnectionNamesAreNotRelayed) {
  ScriptedUpstream upstream({"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-up-drop\r\n"
                             "X-Up-Drop: 1\r\nUpgrade: h2c\r\nX-Up-Keep: 3\r\n\r\nok"});
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("GET /h HTTP/1.1\r\nHost: t\r\nConnection: X-Drop, keep-alive\r\n"
                          "x-drop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Keep: 2\r\n"
                          "Proxy-Authorization: Basic abc\r\nConnection: x-second\r\n"
                          "X-Second: 1\r\n\r\n"));
  const std::string expected = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up-Keep: 3\r\nx-gateway: 1\r\n\r\nok";
  EXPECT_EQ(ReceiveUpTo(client.fd(), expected.size()), expected);
  const std::vector<std::string> requests = upstream.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0],
            "GET /h HTTP/1.1\r\nHost: t\r\nX-Keep: 2\r\nx-test: from-gateway\r\n"
            "x-forwarded-for: 127.0.0.1\r\n\r\n");
}

// Sends HEAD then GET on one connection to an upstream that answers the HEAD
// with `head_framing` (one header line) and no body: the client must get
// that header alone, then the GET's answer whole.
void ExpectHeadAnswerEndsWithItsHeader(const std::string& head_framing) {
  ScriptedUpstream upstream({"HTTP/1.1 200 OK\r\n" + head_framing + "\r\n\r\n",
                             "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"});
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n"));
  const std::string both = "HTTP/1.1 200 OK\r\n" + head_framing + "\r\nx-gateway: 1\r\n\r\n" +
                           "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-gateway: 1\r\n\r\nok";
  EXPECT_EQ(ReceiveUpTo(client.fd(), both.size()), both);
}

TEST(HttpProxyTest, AHeadResponseHasNoBodyAndTheConnectionGoesOn) {
  ExpectHeadAnswerEndsWithItsHeader("Content-Length: 4");
}

// A HEAD answer whose header says chunked has no body, not even a last chunk.
TEST(HttpProxyTest, AChunkedHeadResponseEndsWithItsHeader) {
  ExpectHeadAnswerEndsWithItsHeader("Transfer-Encoding: chunked");
}

TEST(HttpProxyTest, AChunkedResponseStaysChunkedForHttp11AndEndsTheConnectionForHttp10) {
  const std::string chunked =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  {
    ScriptedUpstream upstream({chunked});
    ProxyFixture f;
    f.Start({}, upstream.port());
    Client client(f.gateway->port());
    ASSERT_TRUE(client.Send("GET /c HTTP/1.1\r\nHost: t\r\n\r\n"));
    const std::string expected = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-gateway: 1\r\n\r\n"
                                 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    EXPECT_EQ(ReceiveUpTo(client.fd(), expected.size()), expected);
  }
  {
    ScriptedUpstream upstream({chunked});
    ProxyFixture f;
    f.Start({}, upstream.port());
    Client client(f.gateway->port());
    ASSERT_TRUE(client.Send("GET /c HTTP/1.0\r\nHost: t\r\n\r\n"));
    // HTTP/1.0 has no chunked coding: the body is sent plain, up to the close.
    EXPECT_EQ(ReceiveUpTo(client.fd(), 4096),
              "HTTP/1.0 200 OK\r\nx-gateway: 1\r\n\r\nhello world");
  }
}

TEST(HttpProxyTest, InvalidProxyOptionsAreRejected) {
  HttpProxyOptions proxy;
  proxy.upstream_host = "127.0.0.1";
  proxy.upstream_port = 1;
  auto no_hooks = HttpServer::Start({}, EchoHandler, proxy);
  ASSERT_FALSE(no_hooks.ok());
  EXPECT_EQ(no_hooks.status().field(), "proxy.hooks");
  ProxyFixture f;
  proxy.hooks = f.Hooks();
  proxy.upstream_host = "upstream.example";
  HttpServerOptions options;
  options.port = 0;
  auto name = HttpServer::Start(options, EchoHandler, proxy);
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.status().field(), "proxy.upstream_host");
}

TEST(JsonErrorTest, EscapesQuotesAndControlCharacters) {
  HttpResponse r = JsonError(400, "invalid_argument", "bad \"name\"\n\x01 \\ end", "na\"me");
  EXPECT_EQ(r.status, 400);
  ASSERT_EQ(r.headers.size(), 1u);
  EXPECT_EQ(r.headers[0].first, "content-type");
  EXPECT_EQ(r.headers[0].second, "application/json");
  EXPECT_EQ(r.body,
            R"({"error":{"code":"invalid_argument","message":"bad \"name\"\n\u0001 \\ end",)"
            R"("field":"na\"me"}})");
  auto json = nlohmann::json::parse(r.body);
  EXPECT_EQ(json["error"]["message"], "bad \"name\"\n\x01 \\ end");
}

TEST(JsonErrorTest, OmitsEmptyField) {
  HttpResponse r = JsonError(413, "payload_too_large", "too big");
  EXPECT_EQ(r.body, R"({"error":{"code":"payload_too_large","message":"too big"}})");
}

TEST(JsonErrorTest, ReplacesInvalidUtf8) {
  HttpResponse r = JsonError(400, "invalid_argument", std::string("bad \xff byte"));
  auto json = nlohmann::json::parse(r.body);
  EXPECT_EQ(json["error"]["message"], "bad \xEF\xBF\xBD byte");
}

TEST(HttpRequestTest, HeaderFindsFirstOrEmpty) {
  HttpRequest request;
  request.headers = {{"a", "1"}, {"b", "2"}, {"a", "3"}};
  EXPECT_EQ(request.Header("a"), "1");
  EXPECT_EQ(request.Header("b"), "2");
  EXPECT_EQ(request.Header("c"), "");
}

}  // namespace
}  // namespace keyledger

namespace keyledger {
namespace {

// An upstream that answers each request on a connection of its own, then
// closes that connection, as an upstream whose keep-alive timeout is shorter
// than the gateway's does; without "Connection: close", so the gateway keeps
// the connection for the next request.
class OneRequestPerConnectionUpstream {
 public:
  OneRequestPerConnectionUpstream() : raw_([this](int listen_fd) { Serve(listen_fd); }) {}
  uint16_t port() const { return raw_.port(); }
  int connections() const { return connections_.load(); }

 private:
  void Serve(int listen_fd) {
    for (;;) {
      const int fd = ::accept(listen_fd, nullptr, nullptr);
      if (fd < 0) return;
      connections_++;
      ReceiveHead(fd);
      const std::string response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
      ::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
      ::close(fd);
    }
  }

  std::atomic<int> connections_{0};
  RawUpstream raw_;  // last: its thread starts once the members above exist
};

TEST(HttpProxyTest, AKeptAliveUpstreamConnectionTheUpstreamClosedIsNotUsedAgain) {
  OneRequestPerConnectionUpstream upstream;
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  const std::string expected = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-gateway: 1\r\n\r\nok";
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(client.Send("GET /again HTTP/1.1\r\nHost: t\r\n\r\n"));
    EXPECT_EQ(ReceiveUpTo(client.fd(), expected.size()), expected) << "request " << i;
    std::this_thread::sleep_for(50ms);  // the upstream's close arrives meanwhile
  }
  EXPECT_EQ(upstream.connections(), 3);
  auto done = f.Done(3);
  for (const ProxyExchange& e : done) EXPECT_EQ(e.status, 200);
}

TEST(HttpProxyTest, AnUpstreamStatusOutside100To599Gets502AndTheServerGoesOn) {
  for (const std::string status : {"999", "600", "099"}) {
    ScriptedUpstream upstream({"HTTP/1.1 " + status + " Odd\r\nContent-Length: 0\r\n\r\n"});
    ProxyFixture f;
    f.Start({}, upstream.port());
    Client client(f.gateway->port());
    ASSERT_TRUE(client.Send("GET /odd HTTP/1.1\r\nHost: t\r\n\r\n"));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value()) << status;
    EXPECT_EQ(r->status, 502) << status;
    EXPECT_NE(r->body.find("status " + std::string(status[0] == '0' ? "99" : status)),
              std::string::npos)
        << r->body;
    auto done = f.Done(1);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].status, 502);
    Client again(f.gateway->port());  // still serving
    ASSERT_TRUE(again.Send(Get("/own")));
    auto own = again.ReadResponse();
    ASSERT_TRUE(own.has_value());
    EXPECT_EQ(own->status, 200);
  }
}

TEST(HttpProxyTest, AmbiguousFramingGets400AndReachesNeitherTheUpstreamNorTheHooks) {
  ScriptedUpstream upstream({});
  ProxyFixture f;
  f.Start({}, upstream.port());
  const std::string smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
  const std::string length = "Content-Length: " + std::to_string(smuggled.size()) + "\r\n";
  const std::vector<std::string> heads = {
      "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, x\r\n" + length,
      "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n",
      "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n" + length,
      "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
      "POST /a HTTP/1.1\r\nHost: t\r\n" + length + length,
      "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n",
      "POST /a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n",
      "POST /own HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n" + length,
  };
  for (const std::string& head : heads) {
    Client client(f.gateway->port());
    ASSERT_TRUE(client.Send(head + "\r\n" + smuggled));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value()) << head;
    EXPECT_EQ(r->status, 400) << head;
    EXPECT_EQ(r->Header("connection"), "close") << head;
  }
  EXPECT_EQ(f.admitted.load(), 0);
  EXPECT_TRUE(upstream.requests().empty());
}

TEST(HttpProxyTest, VaryAndExposedHeadersAreMergedWithTheUpstreams) {
  ScriptedUpstream upstream({"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVary: Accept-Encoding\r\n"
                             "Access-Control-Expose-Headers: content-disposition\r\n"
                             "vary: Cookie\r\n\r\nok",
                             "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"});
  ProxyFixture f;
  f.extra_response_headers = {{"vary", "Origin"}, {"access-control-expose-headers", "x-request-id"}};
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("GET /v HTTP/1.1\r\nHost: t\r\n\r\n"));
  auto merged = client.ReadResponse();
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->Header("vary"), "Accept-Encoding, Cookie, Origin");
  EXPECT_EQ(merged->Header("access-control-expose-headers"), "content-disposition, x-request-id");
  ASSERT_TRUE(client.Send("GET /v HTTP/1.1\r\nHost: t\r\n\r\n"));
  auto set = client.ReadResponse();
  ASSERT_TRUE(set.has_value());
  EXPECT_EQ(set->Header("vary"), "Origin");
}

TEST(HttpProxyTest, EveryForwardedForFieldIsRelayedAsOneList) {
  ScriptedUpstream upstream({"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"});
  ProxyFixture f;
  f.Start({}, upstream.port());
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("GET /f HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.1.1.1\r\n"
                          "x-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n"));
  ASSERT_TRUE(client.ReadResponse().has_value());
  const std::vector<std::string> requests = upstream.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0],
            "GET /f HTTP/1.1\r\nHost: t\r\nx-test: from-gateway\r\n"
            "x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n\r\n");
}

TEST(HttpProxyTest, ADeclaredBodyOverTheRelayLimitGets413NamingThatLimit) {
  ScriptedUpstream upstream({});
  ProxyFixture f;
  HttpServerOptions options;
  options.body_bytes_max = 4096;
  f.Start(options, upstream.port(), /*relayed_body_bytes_max=*/1000);
  Client client(f.gateway->port());
  ASSERT_TRUE(client.Send("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" +
                          std::string(2000, 'x')));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(r->body.find("exceeds 1000 bytes"), std::string::npos) << r->body;
  Client own(f.gateway->port());  // the server's own paths keep their limit
  ASSERT_TRUE(own.Send("POST /own HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"));
  auto own_r = own.ReadResponse();
  ASSERT_TRUE(own_r.has_value());
  EXPECT_EQ(own_r->status, 413);
  EXPECT_NE(own_r->body.find("exceeds 4096 bytes"), std::string::npos) << own_r->body;
  // Over both limits: still the own path's limit is named.
  Client huge(f.gateway->port());
  ASSERT_TRUE(huge.Send("POST /own HTTP/1.1\r\nHost: t\r\nContent-Length: 300000000\r\n\r\n"));
  auto huge_r = huge.ReadResponse();
  ASSERT_TRUE(huge_r.has_value());
  EXPECT_EQ(huge_r->status, 413);
  EXPECT_NE(huge_r->body.find("exceeds 4096 bytes"), std::string::npos) << huge_r->body;
  EXPECT_EQ(f.admitted.load(), 0);
  EXPECT_TRUE(upstream.requests().empty());
}

}  // namespace
}  // namespace keyledger
