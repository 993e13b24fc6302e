#include "projections/metrics_fold.h"

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <iterator>
#include <string>
#include <utility>

#include "ledger/varint.h"
#include "ledger/prefetch.h"

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


// Whether `a` comes before `b` in the byte order of varint(size) ‖ id: the
// order of series in a store's keys (TakeChangedCells).
bool IdsInKeyOrder(std::string_view a, std::string_view b) {
  constexpr size_t kOneByteVarintMax = 127;
  if (a.size() <= kOneByteVarintMax && b.size() <= kOneByteVarintMax) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  }
  uint8_t a_size[kVarintBytesMax];
  uint8_t b_size[kVarintBytesMax];
  const std::string_view a_prefix(reinterpret_cast<const char*>(a_size), EncodeVarint(a.size(), a_size));
  const std::string_view b_prefix(reinterpret_cast<const char*>(b_size), EncodeVarint(b.size(), b_size));
  // No varint is a prefix of another: equal prefixes are equal sizes.
  return a_prefix != b_prefix ? a_prefix < b_prefix : a < b;
}

// ForEachCell prefetches the histogram entries of the cell this far ahead.
constexpr size_t kPrefetchCellsAhead = 4;

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

MetricsFold::MetricsFold() = default;
MetricsFold::~MetricsFold() = default;

void MetricsFold::ApplyCall(const ApiCallRecorded& call) {
  ApplyCall(call.workspace_id, call.key_id, call.occurred_at_us, call.status, call.latency_us,
            call.units);
}

void MetricsFold::ApplyCall(std::string_view workspace_id, std::string_view key_id,
                            int64_t occurred_at_us, uint16_t status, uint64_t latency_us,
                            uint64_t units) {
  Delta d;
  d.calls = 1;
  d.units = units;
  d.latency_us = latency_us;
  if (status >= 400 && status <= 499) d.errors_4xx = 1;
  if (status >= 500 && status <= 599) d.errors_5xx = 1;
  if (status == 429) d.rate_limited = 1;
  Apply(workspace_id, key_id, occurred_at_us, d);
}

void MetricsFold::ApplyDenial(const AuthorizationDenied& denied) {
  ApplyDenial(denied.workspace_id, denied.key_id, denied.occurred_at_us, denied.reason,
              denied.count);
}

void MetricsFold::ApplyDenial(std::string_view workspace_id, std::string_view key_id,
                              int64_t occurred_at_us, DenialReason reason, uint64_t count) {
  if (count == 0) return;
  Delta d;
  d.auth_denied = count;
  if (reason == DenialReason::kRateLimited) d.rate_limited = count;
  Apply(workspace_id, key_id, occurred_at_us, d);
}

void MetricsFold::Apply(std::string_view workspace_id, std::string_view key_id,
                        int64_t occurred_at_us, const Delta& delta) {
  assert(delta.calls <= 1);
  const int64_t at_us = ClampTime(occurred_at_us);
  ApplyToSeries(MetricsScope::kWorkspace, workspace_id, at_us, delta);
  if (!key_id.empty()) ApplyToSeries(MetricsScope::kKey, key_id, at_us, delta);
}

// ---- The series index ------------------------------------------------------------------

MetricsFold::SeriesNode& MetricsFold::FindOrAddSeries(MetricsScope scope, std::string_view id) {
  SeriesIndex& index = scope == MetricsScope::kKey ? key_index_ : workspace_index_;
  const size_t hash = IdHash{}(id);
  auto same_id = [id](const SeriesNode& node) { return node.first == id; };
  if (SeriesNode* node = index.Find(hash, same_id)) return *node;
  SeriesMap& map = scope == MetricsScope::kKey ? keys_ : workspaces_;
  auto [it, added] = map.try_emplace(std::string(id));
  assert(added);
  index.Insert(hash, &*it);
  return *it;
}

MetricsFold::IdHashes MetricsFold::HashIds(std::string_view workspace_id, std::string_view key_id) {
  return IdHashes{IdHash{}(workspace_id), key_id.empty() ? 0 : IdHash{}(key_id), !key_id.empty()};
}

void MetricsFold::PrefetchSeries(const IdHashes& ids, int stage) const {
  assert(stage >= 0 && stage < kPrefetchStages);
  auto prefetch = [&](const SeriesIndex& index, size_t hash) {
    if (stage == 0) return index.PrefetchSlot(hash);
    const SeriesNode* node = index.Guess(hash);
    if (node == nullptr) return;
    if (stage == 1) {
      PrefetchRead(node);
      PrefetchRead(reinterpret_cast<const char*>(node) + 64);
      return;
    }
    PrefetchRead(node->first.data());  // compared with the event's id
    for (const Cells& cells : node->second.levels) {
      if (!cells.empty()) PrefetchRead(&cells.back());
    }
  };
  prefetch(workspace_index_, ids.workspace);
  if (ids.has_key) prefetch(key_index_, ids.key);
}

const MetricsFold::Series* MetricsFold::Find(MetricsScope scope, std::string_view id) const {
  const SeriesIndex& index = scope == MetricsScope::kKey ? key_index_ : workspace_index_;
  const SeriesNode* node =
      index.Find(IdHash{}(id), [id](const SeriesNode& n) { return n.first == id; });
  return node == nullptr ? nullptr : &node->second;
}

// ---- Cells -------------------------------------------------------------------------------

MetricsFold::Cells::const_iterator MetricsFold::LowerBound(const Cells& cells, int64_t start_us) {
  return std::lower_bound(cells.begin(), cells.end(), start_us,
                          [](const Cell& c, int64_t t) { return c.start_us < t; });
}

size_t MetricsFold::FindOrInsertCell(Cells* cells, int64_t start_us, bool* inserted) {
  *inserted = false;
  // The common cases first: the latest cell again, or a new latest cell.
  if (!cells->empty() && cells->back().start_us == start_us) return cells->size() - 1;
  if (cells->empty() || cells->back().start_us < start_us) {
    cells->emplace_back().start_us = start_us;
    *inserted = true;
    return cells->size() - 1;
  }
  const size_t at = static_cast<size_t>(LowerBound(*cells, start_us) - cells->begin());
  if ((*cells)[at].start_us == start_us) return at;
  Cell cell;
  cell.start_us = start_us;
  cells->insert(cells->begin() + static_cast<std::ptrdiff_t>(at), std::move(cell));
  *inserted = true;
  return at;
}

void MetricsFold::ApplyToSeries(MetricsScope scope, std::string_view id, int64_t at_us,
                                const Delta& delta) {
  SeriesNode& node = FindOrAddSeries(scope, id);
  Series& series = node.second;
  Cells& minutes = series.levels[0];
  const int64_t minute_us = FloorTo(at_us, kMetricsMinuteUs);
  // A later minute than the open one opens: the open minute closes first. Its
  // hour and day are the latest (an event's hour and day are never before its
  // minute's), so the cells added below go after them.
  const bool opens = minutes.empty() || minute_us > minutes.back().start_us;
  if (opens && !minutes.empty()) {
    const bool hour_closes = FloorTo(minute_us, kMetricsHourUs) > series.levels[1].back().start_us;
    if (track_changes_) {
      // Closing adds the open minute's latencies to the open hour, and the
      // hour's (the minute's included) to its day if the hour closes: a cell
      // changes only if some are added (a minute of denials adds none).
      const uint64_t minute_latencies = minutes.back().latency.count();
      const uint64_t hour_latencies = series.levels[1].back().latency.count() + minute_latencies;
      if (minute_latencies > 0) MarkChanged(scope, node, 1, series.levels[1].size() - 1);
      if (hour_closes && hour_latencies > 0) {
        MarkChanged(scope, node, 2, series.levels[2].size() - 1);
      }
    }
    CloseOpenMinute(&series, hour_closes);
  }
  std::array<size_t, kLevels> cells;
  for (size_t level = 0; level < kLevels; ++level) {
    bool inserted = false;
    cells[level] = FindOrInsertCell(&series.levels[level], FloorTo(at_us, kLevelUs[level]),
                                    &inserted);
    cell_count_ += inserted;
    AddCounters(delta, &series.levels[level][cells[level]]);
    if (track_changes_) MarkChanged(scope, node, level, cells[level]);
  }
  const bool in_open_minute = cells[0] == minutes.size() - 1;
  const bool in_open_hour = cells[1] == series.levels[1].size() - 1;
  assert(!opens || in_open_minute);
  assert(!in_open_minute || in_open_hour);
  if (delta.calls == 1) {
    // A late call is recorded where its latencies are not pending: in its
    // hour unless the call is in the open minute, in its day unless its hour
    // is the open hour.
    minutes[cells[0]].latency.Record(delta.latency_us);
    if (!in_open_minute) series.levels[1][cells[1]].latency.Record(delta.latency_us);
    if (!in_open_hour) series.levels[2][cells[2]].latency.Record(delta.latency_us);
  }
  for (size_t level = 0; level < kLevels; ++level) {
    const Cell& c = series.levels[level][cells[level]];
    assert(c.latency.count() + PendingCalls(series, level, c) == c.calls);
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

// REQUIRES: the series has an open minute, and its hour and day are the
// latest cells of their levels.
void MetricsFold::CloseOpenMinute(Series* series, bool hour_closes) {
  assert(!series->levels[0].empty());
  const Cell& open_minute = series->levels[0].back();
  Cell& open_hour = series->levels[1].back();
  assert(open_hour.start_us == FloorTo(open_minute.start_us, kMetricsHourUs));
  open_hour.latency.Merge(open_minute.latency);
  if (!hour_closes) return;
  Cell& open_day = series->levels[2].back();
  assert(open_day.start_us == FloorTo(open_hour.start_us, kMetricsDayUs));
  assert(open_hour.latency.count() == open_hour.calls);
  open_day.latency.Merge(open_hour.latency);
}

// The open minute's latencies are pending in its hour; the open hour's
// (the open minute's included) in its day.
uint64_t MetricsFold::PendingCalls(const Series& series, size_t level, const Cell& cell) {
  if (level == 0 || series.levels[0].empty()) return 0;
  const Cell& open = series.levels[level - 1].back();
  const bool holds_open = FloorTo(open.start_us, kLevelUs[level]) == cell.start_us;
  return holds_open ? open.calls : 0;
}

void MetricsFold::MergeCells(const Cells& cells, int64_t from_us, int64_t to_us,
                             MetricsBucket* out) {
  for (auto it = LowerBound(cells, from_us); it != cells.end() && it->start_us < to_us; ++it) {
    const Cell& c = *it;
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
  // The hour and day cells read above lack the open minute's latencies, and
  // the day cells also the open hour's (see PendingCalls).
  if (!series.levels[0].empty()) {
    const Cell& open_minute = series.levels[0].back();
    const Cell& open_hour = series.levels[1].back();
    if (open_minute.start_us >= hour_lo && open_minute.start_us < hour_hi) {
      open_minute.latency.MergeInto(&out->latency);
    }
    if (open_hour.start_us >= day_lo && open_hour.start_us < day_hi) {
      open_hour.latency.MergeInto(&out->latency);
    }
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

void MetricsFold::MarkChanged(MetricsScope scope, SeriesNode& node, size_t level, size_t index) {
  Cell& cell = node.second.levels[level][index];
  if (cell.changed) return;
  cell.changed = true;
  changed_.push_back(ChangedCell{scope, static_cast<uint8_t>(level), &node.first, &node.second,
                                 cell.start_us, index});
}

void MetricsFold::TakeChangedCells(const CellVisitor& fn) {
  // Group the changed cells by series (counting sort), order the groups, and
  // each group's cells.
  struct Group {
    const ChangedCell* first;  // scope and id
    uint32_t begin = 0;        // into `order`
    uint32_t count = 0;
  };
  std::vector<Group> groups;
  for (const ChangedCell& c : changed_) {
    if (c.series->take_group == UINT32_MAX) {
      c.series->take_group = static_cast<uint32_t>(groups.size());
      groups.push_back(Group{&c});
    }
    ++groups[c.series->take_group].count;
  }
  uint32_t next = 0;
  for (Group& g : groups) {
    g.begin = next;
    next += g.count;
    g.count = 0;
  }
  std::vector<const ChangedCell*> order(changed_.size());
  for (const ChangedCell& c : changed_) {
    Group& g = groups[c.series->take_group];
    order[g.begin + g.count++] = &c;
  }
  std::sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) {
    if (a.first->scope != b.first->scope) return a.first->scope < b.first->scope;
    return IdsInKeyOrder(*a.first->id, *b.first->id);
  });
  std::string encoded;
  for (const Group& g : groups) {
    const auto begin = order.begin() + g.begin;
    const auto end = begin + g.count;
    std::sort(begin, end, [](const ChangedCell* a, const ChangedCell* b) {
      return a->level != b->level ? a->level > b->level : a->start_us < b->start_us;
    });
    g.first->series->take_group = UINT32_MAX;
    for (auto it = begin; it != end; ++it) {
      const ChangedCell& c = **it;
      Cells& cells = c.series->levels[c.level];
      // A late cell inserted after this one was marked moved it up.
      size_t at = c.index_hint;
      if (at >= cells.size() || cells[at].start_us != c.start_us) {
        at = static_cast<size_t>(LowerBound(cells, c.start_us) - cells.begin());
      }
      Cell& cell = cells[at];
      assert(cell.start_us == c.start_us && cell.changed);
      cell.changed = false;
      EncodeCell(cell, &encoded);
      fn(CellRef{c.scope, *c.id, kLevelUs[c.level], c.start_us}, encoded);
    }
  }
  changed_.clear();
}

void MetricsFold::ForEachCell(const CellVisitor& fn) const {
  for (MetricsScope scope : {MetricsScope::kKey, MetricsScope::kWorkspace}) {
    ForEachCell(scope, [](std::string_view) { return true; }, fn);
  }
}

void MetricsFold::ForEachCell(MetricsScope scope,
                              const std::function<bool(std::string_view id)>& take,
                              const CellVisitor& fn) const {
  const SeriesMap& map = scope == MetricsScope::kKey ? keys_ : workspaces_;
  std::vector<const SeriesNode*> sorted;
  sorted.reserve(map.size());
  for (const SeriesNode& node : map) {
    if (take(node.first)) sorted.push_back(&node);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const SeriesNode* a, const SeriesNode* b) { return IdsInKeyOrder(a->first, b->first); });
  std::string encoded;
  for (const SeriesNode* node : sorted) {
    for (size_t level = kLevels; level-- > 0;) {  // days, hours, minutes
      const Cells& cells = node->second.levels[level];
      for (size_t i = 0; i < cells.size(); ++i) {
        // Entries beyond two live on the heap: fetch those of a later cell
        // while this one is encoded.
        if (i + kPrefetchCellsAhead < cells.size()) cells[i + kPrefetchCellsAhead].latency.Prefetch();
        EncodeCell(cells[i], &encoded);
        fn(CellRef{scope, node->first, kLevelUs[level], cells[i].start_us}, encoded);
      }
    }
  }
}

void MetricsFold::EncodeCell(const Cell& cell, std::string* out) {
  out->clear();
  {
    VarintAppender appender(out);
    appender.PutByte(kCellFormatVersion);
    for (uint64_t v : {cell.calls, cell.errors_4xx, cell.errors_5xx, cell.rate_limited,
                       cell.auth_denied, cell.units}) {
      appender.PutVarint(v);
    }
  }
  cell.latency.SerializeTo(out);
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
  cell.start_us = ref.start_us;
  SeriesNode& node = FindOrAddSeries(ref.scope, ref.id);
  Cells& cells = node.second.levels[static_cast<size_t>(level_it - kLevelUs.begin())];
  // A store scan delivers each level in order: mostly an append.
  if (cells.empty() || cells.back().start_us < ref.start_us) {
    cells.push_back(std::move(cell));
  } else {
    const auto at = LowerBound(cells, ref.start_us);
    if (at->start_us == ref.start_us) return Status::Corruption("metrics cell: loaded twice");
    cells.insert(at, std::move(cell));
  }
  ++cell_count_;
  return Status::Ok();
}

Status MetricsFold::FinishSeries(Series* series) {
  const Cells& minutes = series->levels[0];
  for (const Cell& minute : minutes) {
    for (size_t level = 1; level < kLevels; ++level) {
      const Cells& cells = series->levels[level];
      const int64_t start = FloorTo(minute.start_us, kLevelUs[level]);
      const auto it = LowerBound(cells, start);
      if (it == cells.end() || it->start_us != start) {
        return Status::Corruption("metrics cell: a minute without its hour or day");
      }
    }
  }
  // The open minute's hour and day are the latest: nothing after them.
  for (size_t level = 1; level < kLevels; ++level) {
    const Cells& cells = series->levels[level];
    if (minutes.empty() ? !cells.empty()
                        : cells.back().start_us !=
                              FloorTo(minutes.back().start_us, kLevelUs[level])) {
      return Status::Corruption("metrics cell: an hour or day after the last minute");
    }
  }
  for (size_t level = 0; level < kLevels; ++level) {
    for (const Cell& cell : series->levels[level]) {
      const uint64_t pending = PendingCalls(*series, level, cell);
      if (cell.latency.count() + pending != cell.calls) {
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
