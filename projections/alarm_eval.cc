#include "projections/alarm_eval.h"

#include <cassert>
#include <cstdlib>

namespace keyledger {
namespace {

constexpr int64_t kMicros = 1'000'000;

// Multiplies without overflow: metric counters are far below 2^43 in
// practice, but a bucket's counter is a uint64_t, so saturate.
int64_t ToMicros(uint64_t count) {
  constexpr uint64_t kCountMax = static_cast<uint64_t>(INT64_MAX / kMicros);
  return count > kCountMax ? INT64_MAX : static_cast<int64_t>(count) * kMicros;
}

}  // namespace

std::string FormatMicros(int64_t micros) {
  // INT64_MIN has no positive counterpart; thresholds are bounded far below.
  assert(micros != INT64_MIN);
  std::string out = micros < 0 ? "-" : "";
  uint64_t v = static_cast<uint64_t>(std::llabs(micros));
  out += std::to_string(v / kMicros);
  uint64_t frac = v % kMicros;
  if (frac != 0) {
    std::string digits = std::to_string(kMicros + frac).substr(1);
    while (digits.back() == '0') digits.pop_back();
    out += '.';
    out += digits;
  }
  return out;
}

bool Breaches(Comparator comparator, int64_t value_micros, int64_t threshold_micros) {
  switch (comparator) {
    case Comparator::kGreater: return value_micros > threshold_micros;
    case Comparator::kGreaterOrEqual: return value_micros >= threshold_micros;
    case Comparator::kLess: return value_micros < threshold_micros;
    case Comparator::kLessOrEqual: return value_micros <= threshold_micros;
  }
  return false;
}

std::optional<int64_t> AlarmDatapoint(AlarmMetric metric, const MetricsBucket& bucket) {
  assert(metric != AlarmMetric::kSpendMinor);
  if (bucket.requests() == 0) return std::nullopt;
  switch (metric) {
    case AlarmMetric::kCalls: return ToMicros(bucket.calls);
    case AlarmMetric::kErrors: return ToMicros(bucket.errors());
    case AlarmMetric::kErrorRate:
      // error_rate_ppm is the ratio in millionths already.
      return static_cast<int64_t>(bucket.error_rate_ppm());
    case AlarmMetric::kLatencyP95Ms:
      if (bucket.latency.count() == 0) return std::nullopt;
      // Microseconds of latency are thousandths of a millisecond.
      return ToMicros(bucket.latency.Percentile(kAlarmLatencyPerMille)) / 1000;
    case AlarmMetric::kUnits: return ToMicros(bucket.units);
    case AlarmMetric::kSpendMinor: break;
  }
  return std::nullopt;
}

AlarmDecision EvaluateAlarm(const AlarmSpec& spec, AlarmState current,
                            const std::vector<std::optional<int64_t>>& datapoints) {
  const uint32_t m = spec.datapoints_to_alarm;
  assert(datapoints.size() == spec.evaluation_periods);
  assert(m >= 1 && m <= spec.evaluation_periods);
  uint32_t breaching = 0;
  uint32_t counted = 0;
  AlarmDecision decision;
  for (const auto& point : datapoints) {
    if (point) {
      decision.value_micros = *point;
      counted++;
      breaching += Breaches(spec.comparator, *point, spec.threshold_micros) ? 1 : 0;
    } else if (spec.missing_data == MissingData::kBreaching) {
      counted++;
      breaching++;
    } else if (spec.missing_data == MissingData::kNotBreaching) {
      counted++;
    }
  }
  assert(breaching <= counted && counted <= datapoints.size());
  const std::string rule = std::string(kComparatorNames[static_cast<int>(spec.comparator)]) + " " +
                           FormatMicros(spec.threshold_micros);
  const std::string tally = std::to_string(breaching) + " of the last " +
                            std::to_string(datapoints.size()) + " datapoints breached (" + rule +
                            ", " + std::to_string(m) + " needed)";
  if (breaching >= m) {
    decision.state = AlarmState::kAlarm;
    decision.reason = tally;
  } else if (counted < m) {
    decision.state = spec.missing_data == MissingData::kIgnore ? current
                                                               : AlarmState::kInsufficientData;
    decision.reason = std::to_string(counted) + " of the last " +
                      std::to_string(datapoints.size()) + " datapoints present, " +
                      std::to_string(m) + " needed";
  } else {
    decision.state = AlarmState::kOk;
    decision.reason = tally;
  }
  return decision;
}

const char* AlarmStateName(AlarmState state) {
  switch (state) {
    case AlarmState::kInsufficientData: return "INSUFFICIENT_DATA";
    case AlarmState::kOk: return "OK";
    case AlarmState::kAlarm: return "ALARM";
  }
  return "?";
}

}  // namespace keyledger
