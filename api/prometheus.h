// Counters and fixed-bucket histograms for GET /metrics (Prometheus text
// format 0.0.4). Lock-free: updates are relaxed atomic adds.
//
// Thread safety: all classes are thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace keyledger {

// A histogram over microseconds with fixed upper bounds (Prometheus "le" in
// seconds): 50 µs .. 10 s, plus +Inf.
class LatencyHistogramUs {
 public:
  static constexpr std::array<uint64_t, 16> kBoundsUs = {
      50, 100, 250, 500, 1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000,
      500'000, 1'000'000, 2'500'000, 10'000'000};

  void Observe(uint64_t value_us);
  // Appends the series `name`{labels,le=…} to `out`. `labels` is either empty
  // or like `route="authorize"`.
  void Render(std::string* out, std::string_view name, std::string_view labels) const;

 private:
  std::array<std::atomic<uint64_t>, kBoundsUs.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_us_{0};
  std::atomic<uint64_t> count_{0};
};

// Request counts by route and HTTP status.
class RequestCounters {
 public:
  enum Route : uint8_t { kHealthz = 0, kAuthorize, kCalls, kManagement, kGateway, kMetrics, kOther,
                         kRouteCount };
  static std::string_view RouteName(Route route);

  void Count(Route route, int status);
  void Render(std::string* out) const;

 private:
  static constexpr int kStatusMin = 100;
  static constexpr int kStatusCount = 500;  // 100..599
  std::array<std::array<std::atomic<uint64_t>, kStatusCount>, kRouteCount> counts_{};
};

// Appends "# HELP", "# TYPE" and one sample line. `labels` is either empty
// or like `projection="key_state"`; it goes on the sample only.
void RenderGauge(std::string* out, std::string_view name, std::string_view help, uint64_t value,
                 std::string_view type = "gauge", std::string_view labels = {});

}  // namespace keyledger
