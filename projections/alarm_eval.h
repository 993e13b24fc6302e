// Alarm evaluation: the pure decision "which state is this alarm in, given
// its last N datapoints" (CloudWatch's "M out of N"), and the datapoint of
// each metric from a metrics bucket. No clock, no I/O: the caller gathers the
// datapoints (api/service_alarm_engine.cc) and records transitions as events.
//
// Rules (docs/api.md, "Alarms"):
//   - A datapoint is the metric's value over one period, in millionths
//     (value_micros), or missing: a period with no request at all (no call and
//     no refusal) is missing for every metric, and latency_p95_ms is also
//     missing when the period had refusals only.
//   - A present datapoint breaches when `value comparator threshold` holds.
//     A missing one counts as breaching (missing_data = breaching), as not
//     breaching (not_breaching), or not at all (missing, ignore).
//   - ALARM when at least datapoints_to_alarm (M) of the N datapoints breach.
//     Otherwise, when fewer than M datapoints count (present, or missing ones
//     that count): INSUFFICIENT_DATA for missing_data = missing, the current
//     state kept for ignore. Otherwise OK.
//
// Thread safety: stateless functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ledger/event.h"
#include "projections/metrics_fold.h"

namespace keyledger {

// The API's names of metrics and comparators, indexed by enum value.
inline constexpr const char* kAlarmMetricNames[] = {"calls", "errors", "error_rate",
                                                    "latency_p95_ms", "units", "spend_minor"};
inline constexpr const char* kComparatorNames[] = {">", ">=", "<", "<="};

// The percentile latency_p95_ms reports, in per mille.
inline constexpr uint32_t kAlarmLatencyPerMille = 950;

struct AlarmDecision {
  AlarmState state = AlarmState::kInsufficientData;
  // The newest present datapoint (0 when all are missing): the value a
  // notification reports.
  int64_t value_micros = 0;
  // Why, for people: e.g. "2 of the last 3 datapoints breached (> 1000)".
  std::string reason;
};

// Returns true when `value comparator threshold` holds.
bool Breaches(Comparator comparator, int64_t value_micros, int64_t threshold_micros);

// Returns the value of `metric` over `bucket` in millionths, or std::nullopt
// when the bucket is missing data for it (see the file comment).
// REQUIRES: metric != kSpendMinor (spend is priced by the billing layer).
std::optional<int64_t> AlarmDatapoint(AlarmMetric metric, const MetricsBucket& bucket);

// Decides the state from `datapoints` (oldest first; missing = std::nullopt).
// REQUIRES: datapoints.size() == spec.evaluation_periods,
//           1 <= spec.datapoints_to_alarm <= spec.evaluation_periods.
AlarmDecision EvaluateAlarm(const AlarmSpec& spec, AlarmState current,
                            const std::vector<std::optional<int64_t>>& datapoints);

// Formats millionths as a plain decimal without trailing zeros:
// 1000000 -> "1", 50000 -> "0.05", -2500000 -> "-2.5".
// REQUIRES: micros != INT64_MIN.
std::string FormatMicros(int64_t micros);

// "OK", "ALARM", "INSUFFICIENT_DATA".
const char* AlarmStateName(AlarmState state);

}  // namespace keyledger
