#include "api/prometheus.h"

#include <cassert>
#include <cstdio>

namespace keyledger {
namespace {

std::string Seconds(uint64_t us) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%llu.%06llu", static_cast<unsigned long long>(us / 1'000'000),
                static_cast<unsigned long long>(us % 1'000'000));
  return buf;
}

// "{labels}", or "" without labels. Appended, not "{" + ...: GCC 12 warns
// falsely there (-Wrestrict).
std::string Braces(std::string_view labels) {
  std::string braces;
  if (!labels.empty()) {
    braces += '{';
    braces += labels;
    braces += '}';
  }
  return braces;
}

}  // namespace

void LatencyHistogramUs::Observe(uint64_t value_us) {
  size_t i = 0;
  while (i < kBoundsUs.size() && value_us > kBoundsUs[i]) i++;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(value_us, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void LatencyHistogramUs::Render(std::string* out, std::string_view name,
                                std::string_view labels) const {
  std::string prefix(labels);
  if (!prefix.empty()) prefix += ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= kBoundsUs.size(); i++) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    std::string le = i < kBoundsUs.size() ? Seconds(kBoundsUs[i]) : "+Inf";
    *out += std::string(name) + "_bucket{" + prefix + "le=\"" + le + "\"} " +
            std::to_string(cumulative) + "\n";
  }
  const std::string braces = Braces(labels);
  *out += std::string(name) + "_sum" + braces + " " + Seconds(sum_us_.load()) + "\n";
  *out += std::string(name) + "_count" + braces + " " + std::to_string(count_.load()) + "\n";
}

std::string_view RequestCounters::RouteName(Route route) {
  switch (route) {
    case kHealthz: return "healthz";
    case kAuthorize: return "authorize";
    case kCalls: return "calls";
    case kManagement: return "management";
    case kGateway: return "gateway";
    case kMetrics: return "metrics";
    case kOther: return "other";
    case kRouteCount: break;
  }
  return "other";
}

void RequestCounters::Count(Route route, int status) {
  assert(route < kRouteCount);
  if (status < kStatusMin || status >= kStatusMin + kStatusCount) status = 500;
  counts_[route][static_cast<size_t>(status - kStatusMin)].fetch_add(1, std::memory_order_relaxed);
}

void RequestCounters::Render(std::string* out) const {
  *out += "# HELP keyledger_http_requests_total HTTP requests by route and status.\n";
  *out += "# TYPE keyledger_http_requests_total counter\n";
  for (int r = 0; r < kRouteCount; r++) {
    for (int s = 0; s < kStatusCount; s++) {
      uint64_t n = counts_[r][s].load(std::memory_order_relaxed);
      if (n == 0) continue;
      *out += "keyledger_http_requests_total{route=\"" +
              std::string(RouteName(static_cast<Route>(r))) + "\",status=\"" +
              std::to_string(s + kStatusMin) + "\"} " + std::to_string(n) + "\n";
    }
  }
}

void RenderGauge(std::string* out, std::string_view name, std::string_view help, uint64_t value,
                 std::string_view type, std::string_view labels) {
  *out += "# HELP " + std::string(name) + " " + std::string(help) + "\n";
  *out += "# TYPE " + std::string(name) + " " + std::string(type) + "\n";
  const std::string braces = Braces(labels);
  *out += std::string(name) + braces + " " + std::to_string(value) + "\n";
}

}  // namespace keyledger
