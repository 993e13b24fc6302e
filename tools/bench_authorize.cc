// In-process authorization decisions per second: the hot path without HTTP.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/service.h"
#include "tools/commands.h"
#include "tools/local_stack.h"

namespace keyledger::tools {
namespace {

struct Fixture : LocalStack {
  std::vector<std::string> secrets;  // "Bearer <secret>" of each key
};

std::string Field(const HttpResponse& r, const std::string& name) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains(name) ? j[name].get<std::string>() : std::string();
}

HttpResponse Post(Service& s, const std::string& target, const std::string& body,
                  const std::string& token) {
  HttpRequest req;
  req.method = "POST";
  req.target = target;
  req.body = body;
  req.headers.emplace_back("authorization", "Bearer " + token);
  return s.Handle(req);
}

// Creates a workspace at the maximum TPS limit, one group and `keys` keys.
Status Setup(Fixture& f, const std::string& dir, int keys) {
  KL_RETURN_IF_ERROR(f.Open(dir, /*create=*/true));
  const std::string op = "bench-operator-token";
  KL_RETURN_IF_ERROR(f.service->BootstrapOperatorToken(op).ToStatus());
  auto ws = Post(*f.service, "/v1/workspaces", R"({"name":"bench","tps_limit":1000000})", op);
  std::string base = "/v1/workspaces/" + Field(ws, "id");
  auto group = Post(*f.service, base + "/security-groups",
                    R"({"name":"g","ip_allow":["10.0.0.0/8","203.0.113.0/24"],
                        "origin_allow":["https://*.example.com"]})", op);
  std::string group_id = Field(group, "id");
  for (int i = 0; i < keys; i++) {
    auto key = Post(*f.service, base + "/keys",
                    "{\"name\":\"k" + std::to_string(i) + "\",\"security_group\":\"" + group_id +
                        "\"}", op);
    f.secrets.push_back("Bearer " + Field(key, "secret"));
  }
  if (f.secrets.empty() || f.secrets.front() == "Bearer ") return Status::Internal("setup failed");
  return Status::Ok();
}

}  // namespace

int RunBenchAuthorize(const BenchAuthorizeOptions& options) {
  if (Status dir = PrepareBenchDir(options.data_dir, /*wipe=*/true); !dir.ok()) {
    std::fprintf(stderr, "keyledger bench authorize: %s\n", dir.message().c_str());
    return dir.code() == Code::kInvalidArgument ? 2 : 1;
  }
  Fixture f;
  Status setup = Setup(f, options.data_dir, options.keys);
  if (!setup.ok()) {
    std::fprintf(stderr, "bench authorize: %s\n", setup.ToString().c_str());
    return 1;
  }
  DataPlane& plane = f.service->data_plane();
  std::atomic<uint64_t> allowed{0};
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < options.threads; t++) {
    threads.emplace_back([&, t] {
      uint64_t ok = 0;
      AuthorizeRequest req;
      req.client_ip = "203.0.113.7";
      req.origin = "https://app.example.com";
      for (uint64_t i = 0; i < options.iterations; i++) {
        req.authorization = f.secrets[(i + static_cast<uint64_t>(t)) % f.secrets.size()];
        // A synthetic clock spreads requests 1 µs apart so the limiter sees a
        // steady rate; reading the real clock here would measure the clock.
        req.now_us = static_cast<int64_t>(i);
        req.rate_now_us = req.now_us;
        ok += plane.Authorize(req).outcome == AuthorizeOutcome::kAllowed;
      }
      allowed += ok;
    });
  }
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  uint64_t total = options.iterations * static_cast<uint64_t>(options.threads);
  std::printf(
      "{\"benchmark\":\"authorize\",\"decisions\":%llu,\"allowed\":%llu,\"keys\":%d,"
      "\"threads\":%d,\"seconds\":%.3f,\"decisions_per_sec\":%.0f,"
      "\"decisions_per_sec_per_thread\":%.0f}\n",
      static_cast<unsigned long long>(total), static_cast<unsigned long long>(allowed.load()),
      options.keys, options.threads, seconds, static_cast<double>(total) / seconds,
      static_cast<double>(total) / seconds / options.threads);
  return 0;
}

}  // namespace keyledger::tools
