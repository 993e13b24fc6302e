// Black-box tests: start the real `keyledger serve` process on a free port and
// drive it over real HTTP, as the gateway and a workspace member would.
#include <gtest/gtest.h>

#include <filesystem>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include <sodium.h>

#include "tests/http_client.h"
#include "tests/support/smtp_sink.h"
#include "tests/support/webhook_receiver.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::Fetch;
using testing::RawResponse;
using testing::ReceivedRequest;
using testing::ScratchDir;
using testing::SmtpSink;
using testing::WebhookReceiver;

constexpr char kAdminToken[] = "blackbox-operator-token";
constexpr int kStartTimeoutMs = 20'000;

// A `keyledger serve` child process. Stops it with SIGTERM on destruction.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& data_dir, std::vector<std::string> extra_args = {}) {
    std::vector<std::string> args = {KEYLEDGER_BINARY, "serve", "--data", data_dir, "--listen",
                                     "127.0.0.1:0", "--body-bytes-max", "65536"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2];
    if (::pipe(out) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::setenv("KEYLEDGER_ADMIN_TOKEN", kAdminToken, 1);
      ::execv(KEYLEDGER_BINARY, argv.data());
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

  // Kills the server with SIGKILL, as a crash would, and waits for it.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    if (stdout_) std::fclose(stdout_);
    stdout_ = nullptr;
  }

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
  void SetUp() override { StartServer(); }
  void StartServer(std::vector<std::string> extra_args = {}) {
    server_.reset();
    server_ = std::make_unique<ServerProcess>(dir_.sub("data"), std::move(extra_args));
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
  auto expired = Authorize(secret2, "203.0.113.5", "https://app.example.com");
  EXPECT_EQ(expired.status, 401);
  // Answered as a key that never existed: a leaked old secret learns nothing.
  auto never = Authorize("klk_" + std::string(32, 'a'), "203.0.113.5", "https://app.example.com");
  EXPECT_EQ(never.status, 401);
  EXPECT_EQ(expired.body, never.body);
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
  char month[16];  // the calls' month (UTC, the workspace's zone), not today's
  std::strftime(month, sizeof(month), "%Y-%m", std::gmtime(&t));
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
  auto usage = Do("GET", base + "/usage?month=" + std::string(month));
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
  EXPECT_NE(metrics.body.find("keyledger_http_connections_accepted_total "), std::string::npos);
  EXPECT_NE(metrics.body.find("keyledger_http_requests_in_flight 1"), std::string::npos)
      << "the /metrics request itself is in flight";
}

// Every acknowledged write survives a kill -9 of the server (started with
// `args`; a prefilled write-ahead log makes recovery read past unwritten
// fill). Calls posted again after the restart are all duplicates, and the
// ledger verifies.
class KillTest : public BlackBoxTest {
 protected:
  void SetUp() override {}  // each test starts the server with its own flags
  // Starts the server with `args` and returns the id of a new key.
  std::string StartWithAKey(const std::vector<std::string>& args) {
    StartServer(args);
    auto ws = Do("POST", "/v1/workspaces", R"({"name":"Crash"})");
    EXPECT_EQ(ws.status, 201) << ws.body;
    std::string base = "/v1/workspaces/" + Body(ws)["id"].get<std::string>();
    std::string group = Body(Do("POST", base + "/security-groups", R"({"name":"g"})"))["id"];
    return Body(
        Do("POST", base + "/keys", json{{"name", "k"}, {"security_group", group}}.dump()))["id"];
  }

  // A POST /v1/calls body of `count` calls of `key`, ids prefix-0.. prefix-(count - 1).
  static std::string CallBatch(const std::string& key, const std::string& prefix, int count) {
    std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    json calls = {{"calls", json::array()}};
    for (int i = 0; i < count; i++) {
      calls["calls"].push_back({{"request_id", prefix + std::to_string(i)},
                                {"key_id", key}, {"occurred_at", when}, {"status", 200}});
    }
    return calls.dump();
  }

  // Restarts the server with `args` after the kill; every batch posted again
  // is all duplicates, and the ledger verifies.
  void ExpectAllAcknowledgedAfterARestart(const std::vector<std::string>& args,
                                          const std::vector<std::string>& batches, int count) {
    StartServer(args);
    for (const std::string& batch : batches) {
      auto again = Do("POST", "/v1/calls", batch);
      ASSERT_EQ(again.status, 200) << again.body;
      EXPECT_EQ(Body(again)["duplicates"], count);
    }
    ASSERT_EQ(server_->Stop(), 0);
    const std::string verify = std::string(KEYLEDGER_BINARY) + " audit verify --data " +
                               dir_.sub("data") + " > /dev/null 2>&1";
    EXPECT_EQ(std::system(verify.c_str()), 0);
  }

  void ExpectAcknowledgedCallsSurviveAKill(const std::vector<std::string>& args) {
    const std::string key = StartWithAKey(args);
    std::vector<std::string> batches;
    for (int b = 0; b < 20; b++) {
      batches.push_back(CallBatch(key, "kill-" + std::to_string(b) + "-", 100));
      auto r = Do("POST", "/v1/calls", batches.back());
      ASSERT_EQ(r.status, 200) << r.body;
      ASSERT_EQ(Body(r)["recorded"], 100);
    }
    server_->Kill();
    ExpectAllAcknowledgedAfterARestart(args, batches, 100);
  }
};

TEST_F(KillTest, AcknowledgedCallsSurviveAKill) { ExpectAcknowledgedCallsSurviveAKill({}); }

TEST_F(KillTest, AcknowledgedCallsSurviveAKillWithAPrefilledLog) {
  ExpectAcknowledgedCallsSurviveAKill({"--wal-prefill-mib", "96"});
}

// Four clients post calls while the kill lands, so groups are being written
// and fsynced at once (the ledger's two-stage group commit): every batch
// acknowledged before the kill is found after it.
TEST_F(KillTest, CallsAcknowledgedWhileOthersAreInFlightSurviveAKill) {
  constexpr int kClients = 4;
  constexpr int kCallsPerBatch = 50;
  constexpr size_t kAcknowledgedBeforeKill = 60;
  const std::string key = StartWithAKey({});
  const uint16_t port = server_->port();
  const std::string auth = std::string("Authorization: Bearer ") + kAdminToken + "\r\n";
  std::mutex mu;
  std::vector<std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; c++) {
    clients.emplace_back([&, c] {
      for (int b = 0; !stop.load(); b++) {
        std::string prefix = "c";
        prefix.append(std::to_string(c)).append("-").append(std::to_string(b)).append("-");
        std::string batch = CallBatch(key, prefix, kCallsPerBatch);
        auto r = Fetch(port, "POST", "/v1/calls", batch, auth);
        if (!r) return;  // the server is gone
        if (r->status != 200) continue;
        std::lock_guard<std::mutex> lock(mu);
        acknowledged.push_back(std::move(batch));
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool enough = false;
  while (!enough && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard<std::mutex> lock(mu);
    enough = acknowledged.size() >= kAcknowledgedBeforeKill;
  }
  server_->Kill();  // on a timeout too: the clients then stop
  stop = true;
  for (auto& c : clients) c.join();
  ASSERT_TRUE(enough) << "only " << acknowledged.size() << " batches acknowledged in 30 s";
  ExpectAllAcknowledgedAfterARestart({}, acknowledged, kCallsPerBatch);
}

// ---- Alarms: a real webhook receiver and SMTP sink, started by the test ----------

std::string Rfc3339(std::chrono::system_clock::time_point t) {
  std::time_t s = std::chrono::system_clock::to_time_t(t);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&s));
  return text;
}

// Recomputes a Standard Webhooks signature with libsodium directly.
std::string ExpectedSignature(const std::string& secret_base64, const ReceivedRequest& r) {
  std::vector<unsigned char> key(secret_base64.size());
  size_t key_len = 0;
  if (sodium_base642bin(key.data(), key.size(), secret_base64.data(), secret_base64.size(), nullptr,
                        &key_len, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0) {
    return "bad secret";
  }
  std::string signed_text = r.Header("webhook-id") + "." + r.Header("webhook-timestamp") + "." + r.body;
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key.data(), key_len);
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(signed_text.data()),
                                signed_text.size());
  crypto_auth_hmacsha256_final(&st, mac);
  char b64[sodium_base64_ENCODED_LEN(sizeof(mac), sodium_base64_VARIANT_ORIGINAL)];
  sodium_bin2base64(b64, sizeof(b64), mac, sizeof(mac), sodium_base64_VARIANT_ORIGINAL);
  return std::string("v1,") + b64;
}

constexpr char kSecretBase64[] = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

class AlarmBlackBoxTest : public BlackBoxTest {
 protected:
  void SetUp() override {
    auto receiver = WebhookReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.ToStatus().ToString();
    receiver_ = std::move(receiver).value();
    auto sink = SmtpSink::Start();
    ASSERT_TRUE(sink.ok()) << sink.ToStatus().ToString();
    sink_ = std::move(sink).value();
    StartServer(Args("200"));
    // A workspace, a group and a key to watch.
    base_ = "/v1/workspaces/" + Body(Do("POST", "/v1/workspaces", R"({"name":"Alarmed"})"))["id"].get<std::string>();
    std::string group = Body(Do("POST", base_ + "/security-groups", R"({"name":"g"})"))["id"];
    key_ = Body(Do("POST", base_ + "/keys", json{{"name", "renderer"}, {"security_group", group}}.dump()))["id"];
  }
  std::vector<std::string> Args(const std::string& retry_base_ms) {
    return {"--allow-private-webhooks",  "--smtp",     sink_->HostPort(), "--alarm-interval-ms",
            "100", "--alarm-settle-seconds", "0", "--notification-retry-base-ms", retry_base_ms};
  }
  std::string CreateAlarm(json rule) {
    auto r = Do("POST", base_ + "/keys/" + key_ + "/alarms", rule.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    return Body(r).value("id", "");
  }
  // Records `count` calls with `status` in each of the current minute and the
  // five before it, so the last three complete minutes hold them even if a
  // minute boundary passes during the test.
  void RecordCalls(int count, int status) {
    auto minute = std::chrono::floor<std::chrono::minutes>(std::chrono::system_clock::now());
    json calls = json::array();
    for (int m = 0; m < 6; m++) {
      for (int i = 0; i < count; i++) {
        calls.push_back({{"request_id", std::to_string(next_id_++)}, {"key_id", key_},
                         {"occurred_at", Rfc3339(minute - std::chrono::minutes(m) + std::chrono::seconds(1))},
                         {"status", status}, {"latency_ms", 15}});
      }
    }
    auto r = Do("POST", "/v1/calls", json{{"calls", calls}}.dump());
    ASSERT_EQ(r.status, 200) << r.body;
  }
  json History(const std::string& alarm) {
    return Body(Do("GET", base_ + "/keys/" + key_ + "/alarms/" + alarm + "/history"))["events"];
  }
  static size_t CountType(const json& events, const std::string& type) {
    size_t n = 0;
    for (const auto& e : events) n += e["type"] == type;
    return n;
  }

  std::unique_ptr<WebhookReceiver> receiver_;
  std::unique_ptr<SmtpSink> sink_;
  std::string base_, key_;
  int next_id_ = 0;
};

TEST_F(AlarmBlackBoxTest, BreachAndRecoveryNotifyOnceEachWithSignedWebhooksAndEmail) {
  std::string alarm = CreateAlarm(
      {{"name", "failing renders"}, {"metric", "error_rate"}, {"comparator", ">="},
       {"threshold", 0.5}, {"period_seconds", 60}, {"evaluation_periods", 3},
       {"datapoints_to_alarm", 2}, {"missing_data", "ignore"},
       {"channels", {{{"type", "webhook"}, {"url", receiver_->Url()},
                      {"secret", std::string("whsec_") + kSecretBase64}},
                     {{"type", "email"}, {"to", "ops@example.com"}}}}});
  receiver_->FailNext(2, 500);  // the receiver fails twice, then succeeds
  RecordCalls(20, 500);         // every call fails: error rate 1.0

  ASSERT_TRUE(receiver_->WaitForRequests(3, 20'000)) << receiver_->RequestCount();
  ASSERT_TRUE(sink_->WaitForMessages(1, 20'000));
  auto requests = receiver_->Requests();
  for (const auto& r : requests) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.Header("webhook-id"), requests[0].Header("webhook-id"));
    EXPECT_EQ(r.body, requests[0].body);
    EXPECT_EQ(r.Header("webhook-signature"), ExpectedSignature(kSecretBase64, r));
  }
  json triggered = json::parse(requests[0].body);
  EXPECT_EQ(triggered["type"], "alarm.triggered");
  EXPECT_EQ(triggered["data"]["state"], "ALARM");
  EXPECT_EQ(triggered["data"]["key_name"], "renderer");
  EXPECT_EQ(triggered["data"]["value"], 1);
  auto mail = sink_->Messages()[0];
  EXPECT_EQ(mail.recipients, std::vector<std::string>{"ops@example.com"});
  EXPECT_NE(mail.data.find("Subject: [keyledger] ALARM: failing renders (key renderer)"),
            std::string::npos) << mail.data;
  EXPECT_NE(mail.data.find("Metric:     error_rate"), std::string::npos) << mail.data;
  EXPECT_NE(mail.data.find("Message-ID: <"), std::string::npos);

  // The breach holds over many evaluation rounds: nothing more is sent.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(receiver_->RequestCount(), 3u);
  EXPECT_EQ(sink_->Messages().size(), 1u);
  json history = History(alarm);
  EXPECT_EQ(CountType(history, "state_changed"), 1u) << history.dump();
  EXPECT_EQ(CountType(history, "notification_failed"), 2u);
  EXPECT_EQ(CountType(history, "notification_delivered"), 2u);  // webhook + e-mail

  // Recovery: enough successful calls bring the error rate to 1/4.
  RecordCalls(60, 200);
  ASSERT_TRUE(receiver_->WaitForRequests(4, 20'000));
  ASSERT_TRUE(sink_->WaitForMessages(2, 20'000));
  json resolved = json::parse(receiver_->Requests()[3].body);
  EXPECT_EQ(resolved["type"], "alarm.resolved");
  EXPECT_EQ(resolved["data"]["previous_state"], "ALARM");
  EXPECT_EQ(resolved["data"]["state"], "OK");
  EXPECT_NE(receiver_->Requests()[3].Header("webhook-id"), requests[0].Header("webhook-id"));
  EXPECT_NE(sink_->Messages()[1].data.find("Subject: [keyledger] RESOLVED: failing renders"),
            std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(receiver_->RequestCount(), 4u);
  EXPECT_EQ(sink_->Messages().size(), 2u);
  auto alarm_now = Body(Do("GET", base_ + "/keys/" + key_ + "/alarms/" + alarm));
  EXPECT_EQ(alarm_now["state"], "OK");
  EXPECT_EQ(alarm_now["pending_notifications"], 0);
}

TEST_F(AlarmBlackBoxTest, ServerRestartedMidRetryStillDeliversOnce) {
  StartServer(Args("600"));  // slower retries: the restart lands between attempts
  std::string alarm = CreateAlarm(
      {{"name", "busy"}, {"metric", "calls"}, {"comparator", ">"}, {"threshold", 10},
       {"period_seconds", 60}, {"evaluation_periods", 1}, {"datapoints_to_alarm", 1},
       {"missing_data", "ignore"},
       {"channels", {{{"type", "webhook"}, {"url", receiver_->Url()},
                      {"secret", std::string("whsec_") + kSecretBase64}}}}});
  receiver_->FailNext(3, 503);
  RecordCalls(20, 200);
  ASSERT_TRUE(receiver_->WaitForRequests(1, 20'000));
  EXPECT_EQ(server_->Stop(), 0);  // SIGTERM mid-retry
  const size_t before_restart = receiver_->RequestCount();
  ASSERT_LT(before_restart, 4u);  // no success yet: the first three attempts fail
  StartServer(Args("600"));
  ASSERT_TRUE(receiver_->WaitForRequests(4, 30'000)) << receiver_->RequestCount();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto requests = receiver_->Requests();
  ASSERT_EQ(requests.size(), 4u);  // exactly one successful delivery, never repeated
  for (const auto& r : requests) {
    EXPECT_EQ(r.Header("webhook-id"), requests[0].Header("webhook-id"));
    EXPECT_EQ(r.Header("webhook-signature"), ExpectedSignature(kSecretBase64, r));
  }
  json history = History(alarm);
  EXPECT_EQ(CountType(history, "notification_failed"), 3u) << history.dump();
  EXPECT_EQ(CountType(history, "notification_delivered"), 1u);
}

// Gateway mode: keyledger in front of a rendering API (a WebhookReceiver
// standing in for it), relaying what it authorizes and recording each call.
class GatewayBlackBoxTest : public BlackBoxTest {
 protected:
  static constexpr char kOrigin[] = "https://app.example.com";

  void SetUp() override {
    auto upstream = WebhookReceiver::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.ToStatus().ToString();
    upstream_ = std::move(upstream).value();
    StartServer({"--upstream", "http://127.0.0.1:" + std::to_string(upstream_->port())});
    auto ws = Do("POST", "/v1/workspaces", R"({"name":"Renderer","tps_limit":3})");
    ASSERT_EQ(ws.status, 201) << ws.body;
    ws_ = Body(ws)["id"];
    base_ = "/v1/workspaces/" + ws_;
    // Browser callers from one origin only; the client address is loopback.
    std::string group = Body(Do("POST", base_ + "/security-groups",
                                json{{"name", "web"},
                                     {"ip_allow", {"127.0.0.0/8", "::1/128"}},
                                     {"origin_allow", {kOrigin}}}
                                    .dump()))["id"];
    for (auto* key : {&key_a_, &key_b_}) {
      auto created = Do("POST", base_ + "/keys", json{{"name", "k"}, {"security_group", group}}.dump());
      ASSERT_EQ(created.status, 201) << created.body;
      key->first = Body(created)["id"];
      key->second = Body(created)["secret"];
    }
    ASSERT_EQ(Do("PATCH", base_ + "/keys/" + key_a_.first, R"({"logging":true})").status, 200);
  }

  // A request of the rendering API's own, sent to keyledger.
  RawResponse Render(const std::string& method, const std::string& target, const std::string& body,
                     const std::string& secret, const std::string& origin = kOrigin) {
    std::string headers = origin.empty() ? "" : "Origin: " + origin + "\r\n";
    return Do(method, target, body, secret, headers);
  }

  // Polls the key's log until it holds `n` entries (the call projections fold
  // in the background after the gateway's batch is durable).
  json WaitForLogEntries(const std::string& key, size_t n) {
    json entries;
    for (int i = 0; i < 100; i++) {
      entries = Body(Do("GET", base_ + "/keys/" + key + "/logs"))["entries"];
      if (entries.is_array() && entries.size() >= n) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return entries;
  }

  std::unique_ptr<WebhookReceiver> upstream_;
  std::string ws_, base_;
  std::pair<std::string, std::string> key_a_, key_b_;  // id, secret
};

TEST_F(GatewayBlackBoxTest, RelaysAuthorizedRequestsStreamingBothBodiesAndRecordsThem) {
  // Larger than a relay chunk in both directions.
  std::string request_body(200'000, 'q');
  for (size_t i = 0; i < request_body.size(); i += 97) request_body[i] = static_cast<char>('a' + i % 26);
  std::string response_body(300'000, 'r');
  for (size_t i = 0; i < response_body.size(); i += 89) response_body[i] = static_cast<char>('A' + i % 26);
  upstream_->SetResponseBody(response_body);

  auto r = Render("POST", "/render?size=large", request_body, key_a_.second);
  ASSERT_EQ(r.status, 200) << r.body.substr(0, 200);
  EXPECT_EQ(r.body, response_body);
  EXPECT_EQ(r.Header("ratelimit-limit"), "3");
  EXPECT_FALSE(r.Header("x-request-id").empty());
  EXPECT_EQ(r.Header("access-control-allow-origin"), kOrigin);

  ASSERT_EQ(upstream_->RequestCount(), 1u);
  const ReceivedRequest got = upstream_->Requests()[0];
  EXPECT_EQ(got.method, "POST");
  EXPECT_EQ(got.target, "/render?size=large");
  EXPECT_EQ(got.body, request_body);
  EXPECT_EQ(got.Header("authorization"), "") << "the secret must not reach the upstream";
  EXPECT_EQ(got.Header("x-keyledger-key-id"), key_a_.first);
  EXPECT_EQ(got.Header("x-keyledger-workspace-id"), ws_);
  EXPECT_EQ(got.Header("x-request-id"), r.Header("x-request-id"));
  EXPECT_EQ(got.Header("x-forwarded-for"), "127.0.0.1");

  // Recorded as a call: in the key's log (logging is on) with the upstream's
  // status, sizes and excerpts, and the secret redacted.
  json entries = WaitForLogEntries(key_a_.first, 1);
  ASSERT_EQ(entries.size(), 1u) << entries.dump();
  const json& e = entries[0];
  EXPECT_EQ(e["request_id"], r.Header("x-request-id"));
  EXPECT_EQ(e["path"], "/render?size=large");
  EXPECT_EQ(e["method"], "POST");
  EXPECT_EQ(e["status"], 200);
  EXPECT_EQ(e["units"], 1);
  EXPECT_EQ(e["request_bytes"], request_body.size());
  EXPECT_EQ(e["response_bytes"], response_body.size());
  EXPECT_EQ(e["origin"], kOrigin);
  EXPECT_EQ(e["request"]["body_excerpt"].get<std::string>(), request_body.substr(0, 4096));
  EXPECT_EQ(e["response"]["body_excerpt"].get<std::string>(), response_body.substr(0, 4096));
  EXPECT_EQ(e["client_ip"], "127.0.0.1");
  EXPECT_FALSE(e["request"]["headers"].empty()) << e.dump();
  EXPECT_FALSE(e["response"]["headers"].empty()) << e.dump();
  const std::string log_text = entries.dump();
  EXPECT_EQ(log_text.find(key_a_.second), std::string::npos) << "a secret reached the log";

  // Usage counts it once.
  auto metrics = Body(Do("GET", base_ + "/keys/" + key_a_.first + "/metrics"));
  EXPECT_EQ(metrics["totals"]["calls"], 1) << metrics.dump();
}

TEST_F(GatewayBlackBoxTest, RefusesWithoutRelayingAndLimitsEachKeyAlone) {
  EXPECT_EQ(Render("GET", "/render", "", "").status, 401);
  EXPECT_EQ(Render("GET", "/render", "", "klk_notakey").status, 401);
  EXPECT_EQ(Render("GET", "/render", "", key_a_.second, "https://evil.example").status, 403);
  EXPECT_EQ(upstream_->RequestCount(), 0u) << "refused requests must not reach the upstream";

  // keyledger's own paths are never relayed.
  EXPECT_EQ(Do("GET", "/healthz", "", "").status, 200);
  EXPECT_EQ(Do("GET", "/v1/nothing-here").status, 404);
  EXPECT_EQ(upstream_->RequestCount(), 0u);

  // A burst on key A meets 429s with Retry-After; key B keeps passing.
  int limited = 0;
  for (int i = 0; i < 12; i++) {
    auto r = Render("GET", "/render", "", key_a_.second);
    if (r.status == 429) {
      limited++;
      EXPECT_FALSE(r.Header("retry-after").empty());
      EXPECT_EQ(r.Header("access-control-allow-origin"), kOrigin);
    } else {
      EXPECT_EQ(r.status, 200) << r.body;
    }
  }
  EXPECT_GT(limited, 0);
  EXPECT_EQ(Render("GET", "/render", "", key_b_.second).status, 200);
  EXPECT_EQ(upstream_->RequestCount(), static_cast<size_t>(12 - limited + 1));
}

TEST_F(GatewayBlackBoxTest, AnswersCorsPreflightsForAllowedOriginsOnly) {
  auto ok = Do("OPTIONS", "/render", "", "",
               std::string("Origin: ") + kOrigin +
                   "\r\nAccess-Control-Request-Method: POST\r\n"
                   "Access-Control-Request-Headers: authorization, content-type\r\n");
  EXPECT_EQ(ok.status, 204) << ok.body;
  EXPECT_EQ(ok.Header("access-control-allow-origin"), kOrigin);
  EXPECT_EQ(ok.Header("access-control-allow-methods"), "POST");
  EXPECT_EQ(ok.Header("access-control-allow-headers"), "authorization, content-type");
  auto refused = Do("OPTIONS", "/render", "", "",
                    "Origin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n");
  EXPECT_EQ(refused.status, 403);
  EXPECT_EQ(refused.Header("access-control-allow-origin"), "");
  EXPECT_EQ(upstream_->RequestCount(), 0u);
}

TEST_F(GatewayBlackBoxTest, RelaysUpstreamErrorsAndAnswers502WhenItIsDown) {
  upstream_->FailNext(1, 503);
  auto failed = Render("GET", "/render", "", key_a_.second);
  EXPECT_EQ(failed.status, 503);
  upstream_.reset();  // the rendering API goes away
  auto down = Render("GET", "/render", "", key_b_.second);
  EXPECT_EQ(down.status, 502) << down.body;
  EXPECT_EQ(Body(down)["error"]["code"], "upstream_unavailable");
  // Both are recorded, with the status the client got.
  json entries = WaitForLogEntries(key_a_.first, 1);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]["status"], 503);
  EXPECT_EQ(entries[0]["units"], 0);
  json b_metrics;
  for (int i = 0; i < 100; i++) {
    b_metrics = Body(Do("GET", base_ + "/keys/" + key_b_.first + "/metrics"));
    if (b_metrics["totals"]["calls"] == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(b_metrics["totals"]["calls"], 1) << b_metrics.dump();
  EXPECT_EQ(b_metrics["totals"]["errors"], 1) << b_metrics.dump();
}

TEST_F(BlackBoxTest, GatewayTakesTheClientFromForwardedForOnlyBehindATrustedProxy) {
  // Refused at start as bad flags (exit 2), before the data directory is
  // created: a bad range, and a trusted proxy without gateway mode.
  ServerProcess bad_cidr(dir_.sub("bad1"), {"--upstream", "http://127.0.0.1:9", "--trusted-proxy", "10.0.0.1/8"});
  EXPECT_EQ(bad_cidr.port(), 0);
  EXPECT_EQ(bad_cidr.Stop(), 2);
  EXPECT_FALSE(std::filesystem::exists(dir_.sub("bad1")));
  ServerProcess no_gateway(dir_.sub("bad2"), {"--trusted-proxy", "10.0.0.0/8"});
  EXPECT_EQ(no_gateway.port(), 0);
  EXPECT_EQ(no_gateway.Stop(), 2);
  EXPECT_FALSE(std::filesystem::exists(dir_.sub("bad2")));

  auto upstream = WebhookReceiver::Start();
  ASSERT_TRUE(upstream.ok()) << upstream.ToStatus().ToString();
  // The test client on loopback plays the load balancer.
  StartServer({"--upstream", "http://127.0.0.1:" + std::to_string((*upstream)->port()),
               "--trusted-proxy", "127.0.0.0/8", "--trusted-proxy", "::1/128"});
  std::string ws = Body(Do("POST", "/v1/workspaces", R"({"name":"R","tps_limit":100})"))["id"];
  std::string base = "/v1/workspaces/" + ws;
  std::string group = Body(Do("POST", base + "/security-groups",
                              R"({"name":"office","ip_allow":["203.0.113.0/24"]})"))["id"];
  auto key = Body(Do("POST", base + "/keys", json{{"name", "k"}, {"security_group", group}}.dump()));
  const std::string key_id = key["id"], secret = key["secret"];
  ASSERT_EQ(Do("PATCH", base + "/keys/" + key_id, R"({"logging":true})").status, 200);

  auto admitted = Do("GET", "/render", "", secret, "X-Forwarded-For: 203.0.113.77\r\n");
  EXPECT_EQ(admitted.status, 200) << admitted.body;
  auto spoofed_left = Do("GET", "/render", "", secret, "X-Forwarded-For: 203.0.113.78, 198.51.100.1\r\n");
  EXPECT_EQ(spoofed_left.status, 403) << spoofed_left.body;  // the LB saw 198.51.100.1
  EXPECT_EQ(Do("GET", "/render", "", secret).status, 403);    // no header: the LB itself
  EXPECT_EQ((*upstream)->RequestCount(), 1u);
  json entries;
  for (int i = 0; i < 100 && !(entries.is_array() && entries.size() == 1); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    entries = Body(Do("GET", base + "/keys/" + key_id + "/logs"))["entries"];
  }
  ASSERT_EQ(entries.size(), 1u) << entries.dump();
  EXPECT_EQ(entries[0]["client_ip"], "203.0.113.77");
}

}  // namespace
}  // namespace keyledger
