// Black-box tests: start the real `keyledger serve` process on a free port and
// drive it over real HTTP, as the gateway and a workspace member would.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/http_client.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::Fetch;
using testing::RawResponse;
using testing::ScratchDir;

constexpr char kAdminToken[] = "blackbox-operator-token";
constexpr int kStartTimeoutMs = 20'000;

// A `keyledger serve` child process. Stops it with SIGTERM on destruction.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& data_dir) {
    int out[2];
    if (::pipe(out) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::setenv("KEYLEDGER_ADMIN_TOKEN", kAdminToken, 1);
      ::execl(KEYLEDGER_BINARY, KEYLEDGER_BINARY, "serve", "--data", data_dir.c_str(), "--listen",
              "127.0.0.1:0", "--body-bytes-max", "65536", static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ::close(out[1]);
    stdout_ = ::fdopen(out[0], "r");
    // The server prints "keyledger serving on 127.0.0.1:PORT ..." once it listens.
    char line[512];
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStartTimeoutMs);
    while (port_ == 0 && std::chrono::steady_clock::now() < deadline &&
           std::fgets(line, sizeof(line), stdout_)) {
      unsigned port = 0;
      if (std::sscanf(line, "keyledger serving on 127.0.0.1:%u", &port) == 1) port_ = port;
    }
  }
  ~ServerProcess() { Stop(); }

  uint16_t port() const { return static_cast<uint16_t>(port_); }

  // Sends SIGTERM and returns the exit status (-1 if it did not exit cleanly).
  int Stop() {
    if (pid_ <= 0) return exit_code_;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    if (stdout_) std::fclose(stdout_);
    stdout_ = nullptr;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return exit_code_;
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  unsigned port_ = 0;
  int exit_code_ = -1;
};

class BlackBoxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(dir_.sub("data"));
    ASSERT_NE(server_->port(), 0) << "server did not start";
  }

  RawResponse Do(const std::string& method, const std::string& target, const std::string& body = "",
                 const std::string& bearer = kAdminToken, const std::string& extra = "") {
    std::string headers = extra;
    if (!bearer.empty()) headers += "Authorization: Bearer " + bearer + "\r\n";
    auto r = Fetch(server_->port(), method, target, body, headers);
    EXPECT_TRUE(r.has_value()) << method << " " << target;
    return r.value_or(RawResponse{});
  }
  static json Body(const RawResponse& r) { return json::parse(r.body, nullptr, false); }

  RawResponse Authorize(const std::string& secret, const std::string& ip,
                        const std::string& origin = "") {
    json body = {{"client_ip", ip}};
    if (!origin.empty()) body["origin"] = origin;
    return Do("POST", "/v1/authorize", body.dump(), secret);
  }

  ScratchDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(BlackBoxTest, KeyLifecycleAndDataPlaneOverHttp) {
  EXPECT_EQ(Do("GET", "/healthz", "", "").status, 200);
  EXPECT_EQ(Do("GET", "/v1/workspaces/x", "", "").status, 401);

  auto ws = Do("POST", "/v1/workspaces", R"({"name":"Acme","tps_limit":2})");
  ASSERT_EQ(ws.status, 201) << ws.body;
  EXPECT_EQ(ws.Header("content-type"), "application/json");
  std::string ws_id = Body(ws)["id"];
  std::string base = "/v1/workspaces/" + ws_id;

  auto group = Do("POST", base + "/security-groups",
                  R"({"name":"web","ip_allow":["203.0.113.0/24","2001:db8::/32"],
                      "origin_allow":["https://*.example.com"]})");
  ASSERT_EQ(group.status, 201) << group.body;
  std::string group_id = Body(group)["id"];
  auto open = Do("POST", base + "/security-groups", R"({"name":"open"})");
  std::string open_id = Body(open)["id"];

  auto key = Do("POST", base + "/keys",
                json{{"name", "render"}, {"security_group", group_id}}.dump());
  ASSERT_EQ(key.status, 201) << key.body;
  std::string key_id = Body(key)["id"];
  std::string secret = Body(key)["secret"];
  auto key_b = Do("POST", base + "/keys", json{{"name", "b"}, {"security_group", open_id}}.dump());
  std::string secret_b = Body(key_b)["secret"];

  // Bad input: a clear 4xx, nothing changes.
  auto blank = Do("POST", base + "/keys", json{{"name", " "}, {"security_group", group_id}}.dump());
  EXPECT_EQ(blank.status, 400);
  EXPECT_EQ(Body(blank)["error"]["field"], "name");
  EXPECT_EQ(Do("POST", base + "/keys", "{not json").status, 400);
  EXPECT_EQ(Do("POST", base + "/keys", std::string(70'000, ' ')).status, 413);

  // Authorize: IPv4, IPv6, wildcard origin, refusals.
  EXPECT_EQ(Authorize(secret, "203.0.113.5", "https://app.example.com").status, 200);
  auto v6 = Authorize(secret, "2001:db8::42", "https://x.y.example.com");
  EXPECT_EQ(v6.status, 200) << v6.body;
  EXPECT_FALSE(v6.Header("ratelimit-limit").empty());
  EXPECT_EQ(Authorize(secret, "198.51.100.1", "https://app.example.com").status, 403);
  EXPECT_EQ(Authorize(secret, "203.0.113.5", "https://evil.com").status, 403);
  EXPECT_EQ(Authorize("klk_notakey", "203.0.113.5").status, 401);
  EXPECT_EQ(Do("POST", "/v1/authorize", R"({"client_ip":"203.0.113.5"})", "").status, 401);

  // A burst on one key gets 429s while the other key keeps passing.
  int limited = 0;
  for (int i = 0; i < 20; i++) {
    auto r = Authorize(secret, "203.0.113.5", "https://app.example.com");
    if (r.status == 429) {
      limited++;
      EXPECT_FALSE(r.Header("retry-after").empty());
    }
  }
  EXPECT_GT(limited, 0);
  EXPECT_EQ(Authorize(secret_b, "198.51.100.1").status, 200);

  // Changes are effective immediately.
  auto renamed = Do("PATCH", base + "/keys/" + key_id, R"({"name":"renamed","logging":true})");
  EXPECT_EQ(renamed.status, 200);
  EXPECT_EQ(Body(renamed)["logging"], true);

  // Rotation without grace: the old secret stops at once.
  auto rotated = Do("POST", base + "/keys/" + key_id + "/rotate", "{}");
  ASSERT_EQ(rotated.status, 200);
  std::string secret2 = Body(rotated)["secret"];
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // let the TPS bucket refill
  EXPECT_EQ(Authorize(secret, "203.0.113.5", "https://app.example.com").status, 401);
  EXPECT_EQ(Authorize(secret2, "203.0.113.5", "https://app.example.com").status, 200);
  // Rotation with grace: the old secret works until the grace ends.
  auto rotated2 = Do("POST", base + "/keys/" + key_id + "/rotate", R"({"grace_seconds":1})");
  std::string secret3 = Body(rotated2)["secret"];
  EXPECT_EQ(Authorize(secret2, "203.0.113.5", "https://app.example.com").status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(Authorize(secret2, "203.0.113.5", "https://app.example.com").status, 401);
  EXPECT_EQ(Authorize(secret3, "203.0.113.5", "https://app.example.com").status, 200);

  // Call recording: durable, idempotent by request_id.
  json calls = {{"calls", {{{"request_id", "bb-1"}, {"key_id", key_id},
                            {"occurred_at", "2099-01-01T00:00:00Z"}, {"status", 200}}}}};
  auto future = Do("POST", "/v1/calls", calls.dump());
  EXPECT_EQ(future.status, 400);
  EXPECT_EQ(Body(future)["error"]["field"], "calls[0].occurred_at");
  calls["calls"][0].erase("occurred_at");
  calls["calls"][0]["occurred_at"] = "2020-01-01T00:00:00Z";
  EXPECT_EQ(Do("POST", "/v1/calls", calls.dump()).status, 400);  // too late

  // Delete: the key answers 404 and its secret 401.
  EXPECT_EQ(Do("DELETE", base + "/keys/" + key_id).status, 204);
  EXPECT_EQ(Do("GET", base + "/keys/" + key_id).status, 404);
  EXPECT_EQ(Authorize(secret3, "203.0.113.5", "https://app.example.com").status, 401);

  // Graceful shutdown, then a restart on the same data sees the same state.
  EXPECT_EQ(server_->Stop(), 0);
  server_ = std::make_unique<ServerProcess>(dir_.sub("data"));
  ASSERT_NE(server_->port(), 0);
  EXPECT_EQ(Do("GET", base + "/keys/" + key_id).status, 404);
  auto again = Do("GET", base);
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(Body(again)["tps_limit"], 2);
  EXPECT_EQ(Authorize(secret_b, "198.51.100.1").status, 200);
}

TEST_F(BlackBoxTest, RecordsCallsOnceOverHttp) {
  auto ws = Do("POST", "/v1/workspaces", R"({"name":"Calls"})");
  std::string base = "/v1/workspaces/" + Body(ws)["id"].get<std::string>();
  std::string group = Body(Do("POST", base + "/security-groups", R"({"name":"g"})"))["id"];
  std::string key =
      Body(Do("POST", base + "/keys", json{{"name", "k"}, {"security_group", group}}.dump()))["id"];
  json calls = {{"calls", json::array()}};
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now - std::chrono::seconds(10));
  char when[32];
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  for (int i = 0; i < 100; i++) {
    calls["calls"].push_back({{"request_id", "req-" + std::to_string(i)}, {"key_id", key},
                              {"occurred_at", when}, {"status", i % 10 == 0 ? 500 : 200},
                              {"latency_ms", 20}});
  }
  auto first = Do("POST", "/v1/calls", calls.dump());
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(Body(first)["recorded"], 100);
  auto retry = Do("POST", "/v1/calls", calls.dump());
  EXPECT_EQ(Body(retry)["recorded"], 0);
  EXPECT_EQ(Body(retry)["duplicates"], 100);

  // The tailing projections pick the calls up: metrics count each call once,
  // usage counts the 90 successful (billable) ones.
  json totals;
  for (int attempt = 0; attempt < 100; attempt++) {
    totals = Body(Do("GET", base + "/keys/" + key + "/metrics?step=3600"))["totals"];
    if (totals.is_object() && totals["calls"] == 100) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(totals["calls"], 100) << totals.dump();
  EXPECT_EQ(totals["errors_by_class"]["5xx"], 10);
  auto usage = Do("GET", base + "/usage");
  ASSERT_EQ(usage.status, 200) << usage.body;
  EXPECT_EQ(Body(usage)["total_quantity"], 90);
  // Logging was off: no log entries, but the endpoint answers.
  auto logs = Do("GET", base + "/keys/" + key + "/logs");
  ASSERT_EQ(logs.status, 200) << logs.body;
  EXPECT_EQ(Body(logs)["entries"].size(), 0u);
  // Prometheus text with the request counters.
  auto metrics = Do("GET", "/metrics", "", "");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("keyledger_http_requests_total{route=\"calls\",status=\"200\"} 2"),
            std::string::npos) << metrics.body;
}

}  // namespace
}  // namespace keyledger
