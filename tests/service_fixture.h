// An in-process Service on a scratch ledger, for handler-level tests.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <mutex>

#include "api/service.h"
#include "ledger/ledger.h"
#include "projections/key_state_store.h"
#include "tests/test_util.h"

namespace keyledger::testing {

constexpr char kOperatorToken[] = "operator-token-for-tests";

class ServiceHarness {
 public:
  explicit ServiceHarness(uint64_t seed = 42, ServiceOptions options = {},
                          Notifier* notifier = nullptr)
      : random_(seed), options_(options), notifier_(notifier) {
    Open();
  }

  void Open() {
    service_.reset();
    calls_.reset();
    key_state_.reset();
    ledger_.reset();
    LedgerOptions lo;
    lo.clock = &clock_;
    lo.storage.wal_sync_gate = [this] {
      std::lock_guard<std::mutex> lock(wal_sync_mu_);
      return wal_sync_result_;
    };
    auto ledger = Ledger::Open(dir_.sub("ledger"), lo);
    EXPECT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    ledger_ = std::move(ledger).value();
    auto ks = KeyStateStore::Open(dir_.sub("projections"), ledger_.get());
    EXPECT_TRUE(ks.ok()) << ks.ToStatus().ToString();
    key_state_ = std::move(ks).value();
    // No tailing thread: tests fold call events explicitly (calls().CatchUp()).
    auto calls = CallProjections::Open(dir_.sub("calls"), ledger_.get(), &clock_,
                                       CallProjectionsOptions{});
    EXPECT_TRUE(calls.ok()) << calls.ToStatus().ToString();
    calls_ = std::move(calls).value();
    ServiceDeps deps{ledger_.get(), key_state_.get(), &clock_, &random_, calls_.get(), notifier_};
    if (separate_rate_clock_) deps.rate_clock = &rate_clock_;
    service_ = std::make_unique<Service>(deps, options_);
    auto boot = service_->BootstrapOperatorToken(std::string(kOperatorToken));
    EXPECT_TRUE(boot.ok()) << boot.ToStatus().ToString();
  }

  struct Reply {
    int status = 0;
    nlohmann::json body;
    std::string raw;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string Header(const std::string& name) const {
      for (const auto& [k, v] : headers) {
        if (k == name) return v;
      }
      return "";
    }
  };

  Reply Call(const std::string& method, const std::string& target, const std::string& body = "",
             const std::string& token = kOperatorToken) {
    HttpRequest req;
    req.method = method;
    req.target = target;
    req.body = body;
    req.remote_ip = "127.0.0.1";
    if (!token.empty()) req.headers.emplace_back("authorization", "Bearer " + token);
    return Send(req);
  }

  Reply Send(const HttpRequest& req) {
    HttpResponse resp = service_->Handle(req);
    Reply r;
    r.status = resp.status;
    r.raw = resp.body;
    r.headers = resp.headers;
    if (!resp.body.empty()) r.body = nlohmann::json::parse(resp.body, nullptr, false);
    return r;
  }

  std::string CreateWorkspace(const std::string& name = "Acme") {
    auto r = Call("POST", "/v1/workspaces", nlohmann::json{{"name", name}}.dump());
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  std::string CreateGroup(const std::string& ws, nlohmann::json body = {{"name", "default"}}) {
    auto r = Call("POST", "/v1/workspaces/" + ws + "/security-groups", body.dump());
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  // Returns {id, secret}.
  std::pair<std::string, std::string> CreateKey(const std::string& ws, const std::string& group,
                                                const std::string& name = "render") {
    auto r = Call("POST", "/v1/workspaces/" + ws + "/keys",
                  nlohmann::json{{"name", name}, {"security_group", group}}.dump());
    EXPECT_EQ(r.status, 201) << r.raw;
    return {r.body.value("id", ""), r.body.value("secret", "")};
  }

  // Every later fsync of the ledger's write-ahead log returns `result`
  // instead of syncing (Ok: sync again), as a failing disk would.
  void SetWalSyncResult(Status result) {
    std::lock_guard<std::mutex> lock(wal_sync_mu_);
    wal_sync_result_ = std::move(result);
  }

  Ledger& ledger() { return *ledger_; }
  Service& service() { return *service_; }
  CallProjections& calls() { return *calls_; }
  KeyStateStore& key_state() { return *key_state_; }
  ManualClock& clock() { return clock_; }
  // From the next Open on, the rate limiter reads rate_clock() rather than
  // clock(), as `serve` gives it a steady clock of its own.
  void SeparateRateClock() { separate_rate_clock_ = true; }
  ManualClock& rate_clock() { return rate_clock_; }
  // Where the stores live (for reading them as an audit does).
  std::string key_state_path() const { return dir_.sub("projections"); }
  std::string calls_path() const { return dir_.sub("calls"); }

 private:
  ScratchDir dir_;
  ManualClock clock_{1'780'000'000'000'000};
  ManualClock rate_clock_{1'000'000};
  bool separate_rate_clock_ = false;
  SeededRandom random_;
  ServiceOptions options_;
  Notifier* notifier_;
  std::mutex wal_sync_mu_;
  Status wal_sync_result_;  // GUARDED_BY(wal_sync_mu_)
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<KeyStateStore> key_state_;
  std::unique_ptr<CallProjections> calls_;
  std::unique_ptr<Service> service_;
};

}  // namespace keyledger::testing
