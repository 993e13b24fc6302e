// MetricsFold: per-key and per-workspace call metrics, a plain fold over the
// ApiCallRecorded and AuthorizationDenied events. It never reads a clock:
// every event lands in the UTC minute of its own occurred_at_us, so a late
// event (applied after later ones) lands in the right minute.
//
// Series. Every event counts in the workspace series named by its
// workspace_id and, when key_id is non-empty, also in the key series named by
// key_id. An event with an empty workspace_id (e.g. a denial of an unknown or
// malformed key, which the data plane records with empty ids) counts in the
// workspace series "" — the "unattributed" series.
//
// Counters of one bucket (all from integer arithmetic, no floating point):
//   calls         ApiCallRecorded events (requests that passed authorization
//                 and were reported by the gateway)
//   errors_4xx    calls with 400 <= status <= 499 (429 included)
//   errors_5xx    calls with 500 <= status <= 599
//   auth_denied   authorization refusals: the sum of AuthorizationDenied.count,
//                 whatever the reason
//   rate_limited  calls with status 429 plus refusals with reason kRateLimited
//                 (a sub-class of errors_4xx + auth_denied, never added twice)
//   units         sum of ApiCallRecorded.units (billable units)
//   latency       histogram of ApiCallRecorded.latency_us (refusals have none)
// Derived:
//   requests()        = calls + auth_denied
//   errors()          = errors_4xx + errors_5xx + auth_denied
//   error_rate_ppm()  = floor(errors * 1,000,000 / requests), 0 when no requests
// Any other call status (1xx, 2xx, 3xx, 0, >= 600) is not an error.
// A denial event aggregates `count` refusals; all land in the minute of its
// occurred_at_us (the data plane stamps the first refusal of the aggregate).
//
// Buckets. Minute cells are kept for every (series, UTC minute) with data;
// hour and day cells are maintained incrementally by the same Apply and equal
// the sum of their minutes (the latencies of each series' latest minute reach
// its hour when a later minute opens, and those of its latest hour reach its
// day when a later hour opens; Query adds them until then).
// Query merges the coarsest cells that tile each step window: a 30-day query
// at 1-hour step reads 720 hour cells, not 43,200 minutes. Memory per cell is
// about 100 bytes (in sorted vectors, up to twice that while they grow) plus
// 8 bytes per distinct latency bucket used in it beyond two; nothing is ever
// evicted (retention is the owner's business).
//
// Times outside [0, kMetricsTimeUsLimit) are clamped into that range (the
// ledger never records such times; clamping keeps the fold total).
//
// Thread safety: not thread-safe. Apply* need exclusive access; const methods
// may run concurrently with each other (e.g. under a std::shared_mutex).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ledger/event.h"
#include "ledger/status.h"
#include "projections/flat_index.h"
#include "projections/latency_histogram.h"

namespace keyledger {

inline constexpr int64_t kMetricsMinuteUs = 60'000'000;
inline constexpr int64_t kMetricsHourUs = 60 * kMetricsMinuteUs;
inline constexpr int64_t kMetricsDayUs = 24 * kMetricsHourUs;
// Exclusive upper end of metrics time: 10000-01-01T00:00:00Z (a day boundary).
inline constexpr int64_t kMetricsTimeUsLimit = 253'402'300'800'000'000;
// Longest range of one Query or Totals: 400 days.
inline constexpr int64_t kQueryRangeUsMax = 400 * kMetricsDayUs;
// Most buckets one Query returns. Each holds a dense LatencyHistogram
// (~13.9 KB), so one Query returns at most ~21 MB. Covers a day of minutes
// (1,440), 30 days of hours (720) and 400 days of days (400).
inline constexpr int64_t kQueryPointsMax = 1'500;

static_assert(kMetricsTimeUsLimit % kMetricsDayUs == 0);

enum class MetricsScope : uint8_t { kKey = 0, kWorkspace };

struct MetricsBucket {
  int64_t start_us = 0;  // UTC start of the bucket, inclusive
  uint64_t calls = 0;
  uint64_t errors_4xx = 0;
  uint64_t errors_5xx = 0;
  uint64_t rate_limited = 0;  // 429 calls + kRateLimited refusals
  uint64_t auth_denied = 0;
  uint64_t units = 0;
  LatencyHistogram latency;  // latency.count() == calls

  // Returns calls + auth_denied.
  uint64_t requests() const { return calls + auth_denied; }
  // Returns errors_4xx + errors_5xx + auth_denied.
  uint64_t errors() const { return errors_4xx + errors_5xx + auth_denied; }
  // Returns floor(errors() * 1,000,000 / requests()); 0 when requests() == 0.
  // REQUIRES: errors() <= requests() (true of every bucket the fold returns).
  uint64_t error_rate_ppm() const;

  // Adds every counter and the histogram of `other`; start_us is unchanged.
  void Merge(const MetricsBucket& other);

  bool operator==(const MetricsBucket&) const = default;
};

class MetricsFold {
 public:
  MetricsFold();
  ~MetricsFold();

  MetricsFold(const MetricsFold&) = delete;
  MetricsFold& operator=(const MetricsFold&) = delete;

  // Counts one call in the minute, hour and day of call.occurred_at_us of
  // its series (see the file comment). Never fails.
  void ApplyCall(const ApiCallRecorded& call);
  // The same from the fields the fold reads, for callers that hold views of a
  // decoded event (projections/call_projections.cc) rather than the struct.
  void ApplyCall(std::string_view workspace_id, std::string_view key_id, int64_t occurred_at_us,
                 uint16_t status, uint64_t latency_us, uint64_t units);

  // Counts denied.count refusals in the minute, hour and day of
  // denied.occurred_at_us of its series. Never fails; count 0 is a no-op.
  void ApplyDenial(const AuthorizationDenied& denied);
  // The same from the fields the fold reads.
  void ApplyDenial(std::string_view workspace_id, std::string_view key_id,
                   int64_t occurred_at_us, DenialReason reason, uint64_t count);

  // Returns one bucket per step window [s, s + step_us) for s = from_us,
  // from_us + step_us, ... < to_us, in time order, including empty windows
  // (all counters zero). A series never seen gives all-empty buckets: the
  // fold cannot tell an unknown id from an idle one.
  // step_us: a multiple of 60 s that divides 86,400 s (1 min .. 1 day); the
  // windows are aligned to UTC (the epoch).
  // Returns InvalidArgument (the first failing check, in this order) with field
  //   "step"  if step_us is not such a step, or (to_us - from_us) / step_us
  //           exceeds kQueryPointsMax (checked last);
  //   "from"  if from_us < 0, from_us >= kMetricsTimeUsLimit, or from_us is not
  //           a multiple of step_us;
  //   "to"    if to_us <= from_us, to_us > kMetricsTimeUsLimit, to_us is not a
  //           multiple of step_us, or to_us - from_us > kQueryRangeUsMax.
  Result<std::vector<MetricsBucket>> Query(MetricsScope scope, std::string_view id,
                                           int64_t from_us, int64_t to_us,
                                           int64_t step_us) const;

  // Returns the sum over [from_us, to_us) as one bucket with start_us = from_us.
  // Returns InvalidArgument with field "from" or "to" as Query does with a
  // step of 60 s (the points limit does not apply).
  Result<MetricsBucket> Totals(MetricsScope scope, std::string_view id, int64_t from_us,
                               int64_t to_us) const;

  // ---- Prefetching, for a fold that sees its next events --------------------
  //
  // Hints only: nothing changes, and any ids may be given. Over tables larger
  // than the cache, each event's lookups miss it several times in a row
  // (index slot, series, latest cells). Given the event a few events ahead,
  // PrefetchSeries(hashes, 0) fetches the index slots of its series; an event
  // later, stage 1 fetches the series the slots point to; an event later
  // still, stage 2 fetches their latest cells. Each stage reads only what the
  // previous one fetched.
  struct IdHashes {
    size_t workspace = 0;
    size_t key = 0;
    bool has_key = false;  // whether the event counts in a key series
  };
  // Returns the hashes of the series an event of these ids counts in.
  static IdHashes HashIds(std::string_view workspace_id, std::string_view key_id);
  static constexpr int kPrefetchStages = 3;
  // REQUIRES: 0 <= stage < kPrefetchStages.
  void PrefetchSeries(const IdHashes& ids, int stage) const;

  // Returns the number of cells held (minutes + hours + days, all series).
  size_t cell_count() const { return cell_count_; }

  // ---- Persistence: cells as records, for an owner that stores the fold ------
  //
  // The fold's whole state is its cells, each exactly as held: hour cells
  // lack the latencies of their series' latest minute and day cells those of
  // its latest hour (see Series in the private section), which LoadCell +
  // FinishLoad re-establish. So
  // loading every cell a fold ever reported gives a fold equal to it: same
  // queries, same further behaviour, same ForEachCell output.

  // Names one cell. `id` is valid only during the visitor call.
  struct CellRef {
    MetricsScope scope = MetricsScope::kKey;
    std::string_view id;
    int64_t width_us = kMetricsMinuteUs;  // kMetricsMinuteUs, kMetricsHourUs or kMetricsDayUs
    int64_t start_us = 0;                 // UTC start, a multiple of width_us
  };
  // Receives a cell and its encoding (valid only during the call).
  using CellVisitor = std::function<void(const CellRef& cell, std::string_view encoded)>;

  // Starts remembering which cells Apply* changes, for TakeChangedCells.
  // Off by default (the pure fold pays nothing). Costs one flag test per cell
  // touched and 48 bytes per changed cell until taken.
  void TrackChanges() { track_changes_ = true; }

  // Calls fn for every cell changed since the last call (or since
  // TrackChanges), and forgets them, in key order: key series before
  // workspace series; series in the byte order of varint(id size) ‖ id (for
  // ids under 128 bytes: shorter ids first, ids of one length in byte
  // order); days before hours before minutes; then by start. (That is the
  // byte order of keys laid out as scope, varint(id size), id, width as 'd' <
  // 'h' < 'm', big-endian start, so a store's writes of them arrive sorted,
  // and the order a store of such keys is read in.)
  void TakeChangedCells(const CellVisitor& fn);

  // Calls fn for every cell in key order (see TakeChangedCells). Equal folds
  // give equal calls (for digests).
  void ForEachCell(const CellVisitor& fn) const;
  // The same for the series of one scope whose id `take` accepts.
  void ForEachCell(MetricsScope scope, const std::function<bool(std::string_view id)>& take,
                   const CellVisitor& fn) const;

  // Restores one cell from its encoding. Call for every stored cell, in any
  // order, then FinishLoad once before any Apply* or query.
  // Returns Corruption if `encoded` is not a cell encoding, the width is not
  // one of the three, start_us is not a multiple of width_us or outside
  // [0, kMetricsTimeUsLimit), or the cell is already present.
  // REQUIRES: no Apply* call yet.
  Status LoadCell(const CellRef& cell, std::string_view encoded);

  // Re-establishes each series' latest minute after the LoadCell calls.
  // Returns Corruption if the loaded cells do not fit together (a cell whose
  // latency count disagrees with its calls, an hour or day without the
  // minutes it sums). REQUIRES: called once, after the last LoadCell.
  Status FinishLoad();

 private:
  // What one event adds to a cell.
  struct Delta {
    uint64_t calls = 0;
    uint64_t errors_4xx = 0;
    uint64_t errors_5xx = 0;
    uint64_t rate_limited = 0;
    uint64_t auth_denied = 0;
    uint64_t units = 0;
    uint64_t latency_us = 0;  // recorded once when calls == 1
  };
  // The counters of one (series, minute | hour | day).
  struct Cell {
    int64_t start_us = 0;  // UTC start, a multiple of the level's width
    uint64_t calls = 0;
    uint64_t errors_4xx = 0;
    uint64_t errors_5xx = 0;
    uint64_t rate_limited = 0;
    uint64_t auth_denied = 0;
    uint64_t units = 0;
    // Minute cells: latency.count() == calls. Hour cells lack the latencies
    // of their series' open minute, day cells those of its open hour (see
    // Series).
    CompactLatencyHistogram latency;
    bool changed = false;  // listed in changed_ (when tracking changes)
  };
  // The cells of one level of one series, sorted by start_us. Events mostly
  // arrive in time order, so a new cell is mostly appended; a late event's
  // new cell is inserted in the middle. Cells move: hold indexes or starts.
  using Cells = std::vector<Cell>;
  static constexpr size_t kLevels = 3;      // minute, hour, day
  static constexpr std::array<int64_t, kLevels> kLevelUs = {kMetricsMinuteUs, kMetricsHourUs,
                                                            kMetricsDayUs};
  // The open minute is the latest minute cell, levels[0].back() (none when
  // empty), and the open hour the latest hour cell, levels[1].back(), the
  // open minute's hour. The open minute's latencies are recorded in it alone
  // and merged into the open hour when a later minute opens; the open hour's
  // are merged into its day, levels[2].back(), when a later hour opens. So
  // an in-order call costs one histogram Record, and a day's histogram (the
  // largest: hundreds of buckets) takes one merge per hour, not one per
  // minute. A late call (for an earlier minute) is recorded in its minute,
  // in its hour, and in its day unless its hour is the open one.
  struct Series {
    std::array<Cells, kLevels> levels;
    uint32_t take_group = UINT32_MAX;  // scratch of TakeChangedCells
  };
  // Heterogeneous lookup: find by std::string_view without a copy.
  struct IdHash {
    using is_transparent = void;
    size_t operator()(std::string_view id) const { return std::hash<std::string_view>{}(id); }
  };
  // Owns the series; nodes never move, so the index below points into them.
  using SeriesMap = std::unordered_map<std::string, Series, IdHash, std::equal_to<>>;
  // A series and its id: a node of a SeriesMap.
  using SeriesNode = SeriesMap::value_type;
  // The lookup of every event, kept small and flat so that it mostly hits the
  // cache.
  using SeriesIndex = FlatIndex<SeriesNode>;

  static void AddCounters(const Delta& delta, Cell* cell);
  // Merges the open minute's latencies into the open hour, then, when
  // `hour_closes` (the minute opening is in a later hour), the open hour's
  // into its day.
  static void CloseOpenMinute(Series* series, bool hour_closes);
  // Returns the calls of `cell` (at `level`) whose latencies it lacks.
  static uint64_t PendingCalls(const Series& series, size_t level, const Cell& cell);
  // Returns the index of the cell of `cells` starting at start_us, inserting
  // an empty one if there is none (*inserted tells).
  static size_t FindOrInsertCell(Cells* cells, int64_t start_us, bool* inserted);
  // Returns the first cell of `cells` starting at or after start_us.
  static Cells::const_iterator LowerBound(const Cells& cells, int64_t start_us);
  static void MergeCells(const Cells& cells, int64_t from_us, int64_t to_us,
                         MetricsBucket* out);
  static void MergeRange(const Series& series, int64_t from_us, int64_t to_us,
                         MetricsBucket* out);

  void Apply(std::string_view workspace_id, std::string_view key_id, int64_t occurred_at_us,
             const Delta& delta);
  void ApplyToSeries(MetricsScope scope, std::string_view id, int64_t at_us, const Delta& delta);
  // Returns the series of `id`, adding an empty one if there is none.
  SeriesNode& FindOrAddSeries(MetricsScope scope, std::string_view id);
  const Series* Find(MetricsScope scope, std::string_view id) const;

  // A cell changed since the last TakeChangedCells. Series are never erased
  // and their nodes never move; cells are never erased but move within their
  // level, so they are named by start (with the index as a hint).
  struct ChangedCell {
    MetricsScope scope;
    uint8_t level;
    const std::string* id;  // the key of the series in keys_ / workspaces_
    Series* series;
    int64_t start_us;
    size_t index_hint;
  };
  void MarkChanged(MetricsScope scope, SeriesNode& node, size_t level, size_t index);
  // Replaces *out with the encoding of `cell`.
  static void EncodeCell(const Cell& cell, std::string* out);
  static Status DecodeCell(std::string_view bytes, Cell* cell);
  static Status FinishSeries(Series* series);

  SeriesMap keys_;
  SeriesMap workspaces_;
  SeriesIndex key_index_;
  SeriesIndex workspace_index_;
  size_t cell_count_ = 0;
  bool track_changes_ = false;
  std::vector<ChangedCell> changed_;
};

}  // namespace keyledger
