// Helpers shared by tests: scratch directories and event builders.
#pragma once

#include <atomic>
#include <filesystem>
#include <string>
#include <string_view>
#include <unistd.h>

#include "ledger/event.h"
#include "ledger/random.h"

namespace keyledger::testing {

// A fresh directory under the system temp dir, removed on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("keyledger-test-" + std::to_string(::getpid()) + "-" +
             std::to_string(counter.fetch_add(1)));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// prefix followed by n in decimal ("k" 7 -> "k7"). Not `"k" + std::to_string(n)`:
// GCC 12 warns falsely there at -O2 (-Wrestrict).
inline std::string Numbered(std::string_view prefix, uint64_t n) {
  std::string out(prefix);
  out += std::to_string(n);
  return out;
}

inline EventId MakeEventId(uint64_t n) {
  EventId id{};
  for (int i = 0; i < 8; i++) id[15 - i] = static_cast<uint8_t>(n >> (8 * i));
  id[0] = 0xe1;
  return id;
}

inline NewEvent MakeCallEvent(uint64_t n, const std::string& key = "key_a",
                              std::string_view padding = {}) {
  ApiCallRecorded call;
  call.request_id = "req-" + std::to_string(n);
  call.workspace_id = "ws_a";
  call.key_id = key;
  call.occurred_at_us = 1'700'000'000'000'000 + static_cast<int64_t>(n);
  call.method = "POST";
  call.path = "/v1/render";
  call.status = 200;
  call.latency_us = 1000 + n % 1000;
  call.units = 1;
  call.client_ip = "203.0.113.7";
  call.request.body_excerpt = std::string(padding);
  NewEvent e;
  e.event_id = MakeEventId(n);
  e.stream_id = "calls/" + key;
  e.actor = "gateway";
  e.body = std::move(call);
  return e;
}

}  // namespace keyledger::testing
