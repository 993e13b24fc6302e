#include "projections/metrics_fold.h"

#include <algorithm>
#include <cassert>
#include <iterator>
#include <string>
#include <utility>

#include "ledger/varint.h"

namespace keyledger {
namespace {

constexpr uint64_t kPartsPerMillion = 1'000'000;

static_assert(kMetricsDayUs % kMetricsHourUs == 0 && kMetricsHourUs % kMetricsMinuteUs == 0);
static_assert(kQueryRangeUsMax < kMetricsTimeUsLimit);

// REQUIRES: t >= 0, width > 0.
int64_t FloorTo(int64_t t, int64_t width) {
  assert(t >= 0 && width > 0);
  return t - t % width;
}

// REQUIRES: 0 <= t <= kMetricsTimeUsLimit, width divides kMetricsTimeUsLimit.
int64_t CeilTo(int64_t t, int64_t width) {
  assert(t >= 0 && t <= kMetricsTimeUsLimit && kMetricsTimeUsLimit % width == 0);
  const int64_t floor = FloorTo(t, width);
  return floor == t ? t : floor + width;
}

int64_t ClampTime(int64_t t) { return std::clamp<int64_t>(t, 0, kMetricsTimeUsLimit - 1); }

bool IsValidStep(int64_t step_us) {
  return step_us > 0 && step_us % kMetricsMinuteUs == 0 && kMetricsDayUs % step_us == 0;
}

// Checks a half-open range whose ends must be multiples of align_us.
// REQUIRES: IsValidStep(align_us).
Status CheckRange(int64_t from_us, int64_t to_us, int64_t align_us) {
  assert(IsValidStep(align_us));
  const std::string align = std::to_string(align_us / 1'000'000) + " s";
  if (from_us < 0 || from_us >= kMetricsTimeUsLimit) {
    return Status::InvalidArgument("from is outside 1970-01-01 .. 9999-12-31", "from");
  }
  if (from_us % align_us != 0) {
    return Status::InvalidArgument("from must be a multiple of " + align + " (UTC)", "from");
  }
  if (to_us <= from_us) return Status::InvalidArgument("to must be after from", "to");
  if (to_us > kMetricsTimeUsLimit) {
    return Status::InvalidArgument("to is after 10000-01-01", "to");
  }
  if (to_us % align_us != 0) {
    return Status::InvalidArgument("to must be a multiple of " + align + " (UTC)", "to");
  }
  if (to_us - from_us > kQueryRangeUsMax) {
    return Status::InvalidArgument("the range from..to is longer than 400 days", "to");
  }
  return Status::Ok();
}


// Version byte of a cell encoding (EncodeCell).
constexpr uint8_t kCellFormatVersion = 1;

}  // namespace

// ---- MetricsBucket ------------------------------------------------------------------

uint64_t MetricsBucket::error_rate_ppm() const {
  const uint64_t total = requests();
  const uint64_t bad = errors();
  assert(bad <= total);
  if (total == 0) return 0;
  return static_cast<uint64_t>(static_cast<unsigned __int128>(bad) * kPartsPerMillion / total);
}

void MetricsBucket::Merge(const MetricsBucket& other) {
  calls += other.calls;
  errors_4xx += other.errors_4xx;
  errors_5xx += other.errors_5xx;
  rate_limited += other.rate_limited;
  auth_denied += other.auth_denied;
  units += other.units;
  latency.Merge(other.latency);
}

// ---- MetricsFold -----------------------------------------------------------------------

MetricsFold::Series::Series() {
  for (size_t level = 0; level < kLevels; ++level) hints[level] = levels[level].end();
  open = levels[0].end();
}

MetricsFold::MetricsFold() = default;
MetricsFold::~MetricsFold() = default;

void MetricsFold::ApplyCall(const ApiCallRecorded& call) {
  Delta d;
  d.calls = 1;
  d.units = call.units;
  d.latency_us = call.latency_us;
  if (call.status >= 400 && call.status <= 499) d.errors_4xx = 1;
  if (call.status >= 500 && call.status <= 599) d.errors_5xx = 1;
  if (call.status == 429) d.rate_limited = 1;
  Apply(call.workspace_id, call.key_id, call.occurred_at_us, d);
}

void MetricsFold::ApplyDenial(const AuthorizationDenied& denied) {
  if (denied.count == 0) return;
  Delta d;
  d.auth_denied = denied.count;
  if (denied.reason == DenialReason::kRateLimited) d.rate_limited = denied.count;
  Apply(denied.workspace_id, denied.key_id, denied.occurred_at_us, d);
}

void MetricsFold::Apply(std::string_view workspace_id, std::string_view key_id,
                        int64_t occurred_at_us, const Delta& delta) {
  assert(delta.calls <= 1);
  const int64_t at_us = ClampTime(occurred_at_us);
  ApplyToSeries(MetricsScope::kWorkspace, workspace_id, at_us, delta);
  if (!key_id.empty()) ApplyToSeries(MetricsScope::kKey, key_id, at_us, delta);
}

void MetricsFold::ApplyToSeries(MetricsScope scope, std::string_view id, int64_t at_us,
                                const Delta& delta) {
  SeriesMap* map = scope == MetricsScope::kKey ? &keys_ : &workspaces_;
  auto found = map->find(id);
  if (found == map->end()) found = map->try_emplace(std::string(id)).first;
  Series& series = found->second;
  std::array<CellMap::iterator, kLevels> cells;
  for (size_t level = 0; level < kLevels; ++level) {
    CellMap& level_cells = series.levels[level];
    const size_t before = level_cells.size();
    // The hint makes the common cases (same cell again, next cell) O(1).
    cells[level] = level_cells.try_emplace(series.hints[level], FloorTo(at_us, kLevelUs[level]));
    cell_count_ += level_cells.size() - before;
    series.hints[level] = cells[level];
    AddCounters(delta, &cells[level]->second);
    if (track_changes_) MarkChanged(scope, &found->first, level, cells[level]);
  }
  if (series.open == series.levels[0].end() || cells[0]->first > series.open->first) {
    if (track_changes_ && series.open != series.levels[0].end()) {
      // Closing the open minute adds its latencies to its hour and day.
      for (size_t level = 1; level < kLevels; ++level) {
        auto it = series.levels[level].find(FloorTo(series.open->first, kLevelUs[level]));
        assert(it != series.levels[level].end());
        MarkChanged(scope, &found->first, level, it);
      }
    }
    CloseOpenMinute(&series);
    series.open = cells[0];
  }
  if (delta.calls == 1) {
    cells[0]->second.latency.Record(delta.latency_us);
    if (cells[0] != series.open) {  // late: its hour and day are not pending
      cells[1]->second.latency.Record(delta.latency_us);
      cells[2]->second.latency.Record(delta.latency_us);
    }
  }
  for (size_t level = 0; level < kLevels; ++level) {
    const Cell& c = cells[level]->second;
    assert(c.latency.count() + PendingCalls(series, level, *cells[level]) == c.calls);
  }
}

void MetricsFold::AddCounters(const Delta& delta, Cell* cell) {
  cell->calls += delta.calls;
  cell->errors_4xx += delta.errors_4xx;
  cell->errors_5xx += delta.errors_5xx;
  cell->rate_limited += delta.rate_limited;
  cell->auth_denied += delta.auth_denied;
  cell->units += delta.units;
}

void MetricsFold::CloseOpenMinute(Series* series) {
  if (series->open == series->levels[0].end()) return;
  const int64_t minute = series->open->first;
  const CompactLatencyHistogram& latencies = series->open->second.latency;
  for (size_t level = 1; level < kLevels; ++level) {
    auto it = series->levels[level].find(FloorTo(minute, kLevelUs[level]));
    assert(it != series->levels[level].end());
    it->second.latency.Merge(latencies);
  }
  series->open = series->levels[0].end();
}

uint64_t MetricsFold::PendingCalls(const Series& series, size_t level,
                                   const CellMap::value_type& cell) {
  if (level == 0 || series.open == series.levels[0].end()) return 0;
  const bool holds_open = FloorTo(series.open->first, kLevelUs[level]) == cell.first;
  return holds_open ? series.open->second.calls : 0;
}

const MetricsFold::Series* MetricsFold::Find(MetricsScope scope, std::string_view id) const {
  const SeriesMap& map = scope == MetricsScope::kKey ? keys_ : workspaces_;
  auto it = map.find(id);
  return it == map.end() ? nullptr : &it->second;
}

void MetricsFold::MergeCells(const CellMap& cells, int64_t from_us, int64_t to_us,
                             MetricsBucket* out) {
  for (auto it = cells.lower_bound(from_us); it != cells.end() && it->first < to_us; ++it) {
    const Cell& c = it->second;
    out->calls += c.calls;
    out->errors_4xx += c.errors_4xx;
    out->errors_5xx += c.errors_5xx;
    out->rate_limited += c.rate_limited;
    out->auth_denied += c.auth_denied;
    out->units += c.units;
    c.latency.MergeInto(&out->latency);
  }
}

// Tiles [from_us, to_us) with minutes up to the first hour boundary, hours up
// to the first day boundary, whole days, then hours and minutes again.
void MetricsFold::MergeRange(const Series& series, int64_t from_us, int64_t to_us,
                             MetricsBucket* out) {
  assert(from_us < to_us && from_us % kMetricsMinuteUs == 0 && to_us % kMetricsMinuteUs == 0);
  const int64_t hour_lo = std::min(CeilTo(from_us, kMetricsHourUs), to_us);
  const int64_t hour_hi = std::max(FloorTo(to_us, kMetricsHourUs), hour_lo);
  const int64_t day_lo = std::min(CeilTo(hour_lo, kMetricsDayUs), hour_hi);
  const int64_t day_hi = std::max(FloorTo(hour_hi, kMetricsDayUs), day_lo);
  assert(from_us <= hour_lo && hour_lo <= day_lo && day_lo <= day_hi && day_hi <= hour_hi &&
         hour_hi <= to_us);
  MergeCells(series.levels[0], from_us, hour_lo, out);
  MergeCells(series.levels[1], hour_lo, day_lo, out);
  MergeCells(series.levels[2], day_lo, day_hi, out);
  MergeCells(series.levels[1], day_hi, hour_hi, out);
  MergeCells(series.levels[0], hour_hi, to_us, out);
  // The open minute's latencies are in its minute cell only.
  const bool has_open = series.open != series.levels[0].end();
  if (has_open && series.open->first >= hour_lo && series.open->first < hour_hi) {
    series.open->second.latency.MergeInto(&out->latency);
  }
  assert(out->latency.count() == out->calls);
}

Result<std::vector<MetricsBucket>> MetricsFold::Query(MetricsScope scope, std::string_view id,
                                                      int64_t from_us, int64_t to_us,
                                                      int64_t step_us) const {
  if (!IsValidStep(step_us)) {
    return Status::InvalidArgument("step must be a multiple of 60 s that divides a day", "step");
  }
  KL_RETURN_IF_ERROR(CheckRange(from_us, to_us, step_us));
  const int64_t points = (to_us - from_us) / step_us;
  if (points > kQueryPointsMax) {
    return Status::InvalidArgument("more than " + std::to_string(kQueryPointsMax) +
                                       " points; use a larger step or a shorter range",
                                   "step");
  }
  const Series* series = Find(scope, id);
  std::vector<MetricsBucket> out(static_cast<size_t>(points));
  for (int64_t i = 0; i < points; ++i) {
    MetricsBucket& b = out[static_cast<size_t>(i)];
    b.start_us = from_us + i * step_us;
    if (series != nullptr) MergeRange(*series, b.start_us, b.start_us + step_us, &b);
  }
  return out;
}

Result<MetricsBucket> MetricsFold::Totals(MetricsScope scope, std::string_view id,
                                          int64_t from_us, int64_t to_us) const {
  KL_RETURN_IF_ERROR(CheckRange(from_us, to_us, kMetricsMinuteUs));
  MetricsBucket total;
  total.start_us = from_us;
  const Series* series = Find(scope, id);
  if (series != nullptr) MergeRange(*series, from_us, to_us, &total);
  return total;
}

// ---- Persistence ---------------------------------------------------------------------

void MetricsFold::MarkChanged(MetricsScope scope, const std::string* id, size_t level,
                              CellMap::iterator cell) {
  if (cell->second.changed) return;
  cell->second.changed = true;
  changed_.push_back(ChangedCell{scope, static_cast<uint8_t>(level), id, cell});
}

void MetricsFold::TakeChangedCells(const CellVisitor& fn) {
  for (const ChangedCell& c : changed_) {
    assert(c.cell->second.changed);
    c.cell->second.changed = false;
    fn(CellRef{c.scope, *c.id, kLevelUs[c.level], c.cell->first}, EncodeCell(c.cell->second));
  }
  changed_.clear();
}

void MetricsFold::ForEachCell(const CellVisitor& fn) const {
  for (MetricsScope scope : {MetricsScope::kKey, MetricsScope::kWorkspace}) {
    const SeriesMap& map = scope == MetricsScope::kKey ? keys_ : workspaces_;
    std::vector<const SeriesMap::value_type*> sorted;
    sorted.reserve(map.size());
    for (const auto& entry : map) sorted.push_back(&entry);
    std::sort(sorted.begin(), sorted.end(),
              [](const auto* a, const auto* b) { return a->first < b->first; });
    for (const auto* entry : sorted) {
      for (size_t level = 0; level < kLevels; ++level) {
        for (const auto& [start_us, cell] : entry->second.levels[level]) {
          fn(CellRef{scope, entry->first, kLevelUs[level], start_us}, EncodeCell(cell));
        }
      }
    }
  }
}

std::string MetricsFold::EncodeCell(const Cell& cell) {
  std::string out;
  out.push_back(static_cast<char>(kCellFormatVersion));
  for (uint64_t v : {cell.calls, cell.errors_4xx, cell.errors_5xx, cell.rate_limited,
                     cell.auth_denied, cell.units}) {
    PutVarint(v, &out);
  }
  out += cell.latency.Serialize();
  return out;
}

Status MetricsFold::DecodeCell(std::string_view bytes, Cell* cell) {
  if (bytes.empty() || static_cast<uint8_t>(bytes[0]) != kCellFormatVersion) {
    return Status::Corruption("metrics cell: unknown format version");
  }
  bytes.remove_prefix(1);
  for (uint64_t* v : {&cell->calls, &cell->errors_4xx, &cell->errors_5xx, &cell->rate_limited,
                      &cell->auth_denied, &cell->units}) {
    if (!GetVarint(&bytes, v)) return Status::Corruption("metrics cell: truncated counter");
  }
  // MetricsBucket::error_rate_ppm relies on errors() <= requests().
  if (cell->errors_4xx > cell->calls || cell->errors_5xx > cell->calls - cell->errors_4xx) {
    return Status::Corruption("metrics cell: more errors than calls");
  }
  KL_ASSIGN_OR_RETURN(cell->latency, CompactLatencyHistogram::Deserialize(bytes));
  if (cell->latency.count() > cell->calls) {
    return Status::Corruption("metrics cell: more latencies than calls");
  }
  return Status::Ok();
}

Status MetricsFold::LoadCell(const CellRef& ref, std::string_view encoded) {
  const auto level_it = std::find(kLevelUs.begin(), kLevelUs.end(), ref.width_us);
  if (level_it == kLevelUs.end()) return Status::Corruption("metrics cell: unknown width");
  if (ref.start_us < 0 || ref.start_us >= kMetricsTimeUsLimit || ref.start_us % ref.width_us != 0) {
    return Status::Corruption("metrics cell: start outside the time range or unaligned");
  }
  Cell cell;
  KL_RETURN_IF_ERROR(DecodeCell(encoded, &cell));
  SeriesMap& map = ref.scope == MetricsScope::kKey ? keys_ : workspaces_;
  auto found = map.find(ref.id);
  if (found == map.end()) found = map.try_emplace(std::string(ref.id)).first;
  CellMap& cells = found->second.levels[static_cast<size_t>(level_it - kLevelUs.begin())];
  if (!cells.try_emplace(ref.start_us, std::move(cell)).second) {
    return Status::Corruption("metrics cell: loaded twice");
  }
  ++cell_count_;
  return Status::Ok();
}

Status MetricsFold::FinishSeries(Series* series) {
  CellMap& minutes = series->levels[0];
  series->open = minutes.empty() ? minutes.end() : std::prev(minutes.end());
  for (const auto& minute : minutes) {
    for (size_t level = 1; level < kLevels; ++level) {
      if (!series->levels[level].contains(FloorTo(minute.first, kLevelUs[level]))) {
        return Status::Corruption("metrics cell: a minute without its hour or day");
      }
    }
  }
  for (size_t level = 0; level < kLevels; ++level) {
    for (const auto& cell : series->levels[level]) {
      const uint64_t pending = PendingCalls(*series, level, cell);
      if (cell.second.latency.count() + pending != cell.second.calls) {
        return Status::Corruption("metrics cell: latency count disagrees with calls");
      }
    }
  }
  return Status::Ok();
}

Status MetricsFold::FinishLoad() {
  for (SeriesMap* map : {&keys_, &workspaces_}) {
    for (auto& [id, series] : *map) {
      Status s = FinishSeries(&series);
      if (!s.ok()) return Status::Corruption(s.message() + " (series " + id + ")");
    }
  }
  return Status::Ok();
}

}  // namespace keyledger
