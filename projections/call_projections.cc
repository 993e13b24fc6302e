#include "projections/call_projections.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <chrono>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/prefetch.h"
#include "ledger/scan_ahead.h"
#include "ledger/thread_name.h"
#include "ledger/varint.h"
#include "projections/flat_index.h"

namespace keyledger {
namespace {

// Column families of the store, numbered in this order. Persistent: never renumber.
constexpr int kCallCfLogs = 0;      // key_id '\0' BE(UINT64_MAX - sequence) -> log value
constexpr int kCallCfLogTimes = 1;  // BE(ordered occurred_at) ‖ log key -> "" (the sweep's index)
constexpr int kCallCfMetrics = 2;   // MetricsKey -> MetricsFold cell encoding
constexpr int kCallCfUsage = 3;     // UsageKey -> varint units
constexpr int kCallCfMeta = 4;
constexpr int kCallCfs[] = {kCallCfLogs, kCallCfLogTimes, kCallCfMetrics, kCallCfUsage,
                            kCallCfMeta};

constexpr char kFormatKey[] = "format";
// Bump when any record layout changes: the store is then rebuilt from the log.
// 2: the sweep records its cutoff (kLogSweptBeforeKey); a store of format 1
// may have been swept without one, so it is rebuilt rather than trusted.
// 3: usage months follow the billing zone as of each call's place in the log
// (kZoneKeyPrefix records), no longer the key state's zone at fold time.
// 4: a metrics day cell lacks the latencies of its series' open hour, not
// only of its open minute (MetricsFold merges hours into days as they close).
constexpr char kFormatVersion[] = "call-projections-4";
constexpr char kPositionKey[] = "position";             // sequence (8 BE) ‖ ledger hash (32)
constexpr char kLogChainKey[] = "log_chain";            // 32 bytes
constexpr char kUsageRejectedKey[] = "usage_rejected";  // 8 BE
// kZoneKeyPrefix ‖ workspace_id -> billing zone name (FoldState::zone_names).
constexpr char kZoneKeyPrefix[] = "zone/";
constexpr char kZoneKeyEnd[] = "zone0";  // '0' follows '/': the end of the prefix
// The highest cutoff below which a sweep has deleted log entries, as
// OrderedTime (8 BE); absent while no sweep has deleted any. Every logged call
// that occurred at or after it still has its entry.
constexpr char kLogSweptBeforeKey[] = "log_swept_before";
constexpr int64_t kNeverSwept = std::numeric_limits<int64_t>::min();
constexpr size_t kPositionValueBytes = 8 + 32;

constexpr uint8_t kLogValueVersion = 1;
constexpr size_t kLogHeaderBytes = 1 + 8 + 2;  // version, ordered occurred_at, status
constexpr size_t kSequenceBytes = 8;
// Keys deleted per WriteBatch by the wipe and the sweep.
constexpr size_t kDeleteBatchKeysMax = 10'000;
// Events per batch of RebuildCallProjections.
constexpr size_t kRebuildBatchEventsMax = 65'536;
// RebuildCallProjections reads ahead (ScanAhead) from this many events.
constexpr uint64_t kRebuildReadAheadEventsMin = 16'384;
// DigestOf hashes the metrics cells on two threads from this many cells.
constexpr size_t kDigestCellsOnTwoThreadsMin = 65'536;
constexpr char kDefaultTimeZone[] = "UTC";

KvStoreOptions StoreOptions() {
  KvStoreOptions options;
  for (const char* name : {"logs", "log_times", "metrics", "usage", "meta"}) {  // kCallCf* order
    ColumnFamilySpec spec;
    spec.name = name;
    options.column_families.push_back(std::move(spec));
  }
  options.block_cache_bytes = 16u << 20;
  return options;
}

// ---- Encoding helpers ------------------------------------------------------------------

void PutBytes(std::string_view bytes, std::string* out) {
  PutVarint(bytes.size(), out);
  out->append(bytes);
}

bool GetBytes(std::string_view* in, std::string_view* out) {
  uint64_t size = 0;
  if (!GetVarint(in, &size) || size > in->size()) return false;
  *out = in->substr(0, static_cast<size_t>(size));
  in->remove_prefix(static_cast<size_t>(size));
  return true;
}

bool GetString(std::string_view* in, std::string* out) {
  std::string_view view;
  if (!GetBytes(in, &view)) return false;
  out->assign(view);
  return true;
}

void AppendBigEndian16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v & 0xff));
}

uint16_t DecodeBigEndian16(const char* in) {
  return static_cast<uint16_t>((static_cast<uint8_t>(in[0]) << 8) | static_cast<uint8_t>(in[1]));
}

// Maps int64 to uint64 preserving order, so big-endian keys sort by time.
uint64_t OrderedTime(int64_t t) { return static_cast<uint64_t>(t) ^ (uint64_t{1} << 63); }
int64_t TimeFromOrdered(uint64_t v) { return static_cast<int64_t>(v ^ (uint64_t{1} << 63)); }

std::string EncodeHash(const Hash& h) { return std::string(h.begin(), h.end()); }

bool DecodeHex(std::string_view hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]);
    const int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi << 4 | lo));
  }
  return true;
}

// Returns `bytes` at a word-aligned address (Cap'n Proto reads words): as
// they are if aligned, else copied into *buffer. Valid until *buffer changes.
std::string_view WordAligned(std::string_view bytes, std::vector<uint64_t>* buffer) {
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(uint64_t) == 0) return bytes;
  buffer->resize((bytes.size() + sizeof(uint64_t) - 1) / sizeof(uint64_t));
  std::memcpy(buffer->data(), bytes.data(), bytes.size());
  return std::string_view(reinterpret_cast<const char*>(buffer->data()), bytes.size());
}

int64_t SaturatingSub(int64_t a, int64_t b) {
  assert(b >= 0);
  return a < std::numeric_limits<int64_t>::min() + b ? std::numeric_limits<int64_t>::min() : a - b;
}

// ---- Keys ------------------------------------------------------------------------------

// REQUIRES: key_id has no '\0' (the prefix must end where the key id ends).
void LogKey(std::string_view key_id, uint64_t sequence, std::string* out) {
  assert(key_id.find('\0') == std::string_view::npos);
  out->assign(key_id);
  out->push_back('\0');
  AppendBigEndian64(out, std::numeric_limits<uint64_t>::max() - sequence);
}

// scope (1) ‖ varint id size ‖ id ‖ width code (1) ‖ BE start (8), appended to *out.
void AppendMetricsKey(const MetricsFold::CellRef& cell, std::string* out) {
  std::string& key = *out;
  key.push_back(static_cast<char>(cell.scope));
  PutBytes(cell.id, &key);
  const char code = cell.width_us == kMetricsMinuteUs ? 'm'
                    : cell.width_us == kMetricsHourUs ? 'h'
                                                      : 'd';
  assert(cell.width_us == kMetricsMinuteUs || cell.width_us == kMetricsHourUs ||
         cell.width_us == kMetricsDayUs);
  key.push_back(code);
  AppendBigEndian64(&key, static_cast<uint64_t>(cell.start_us));
}

bool ParseMetricsKey(std::string_view key, MetricsFold::CellRef* cell) {
  if (key.empty() ||
      static_cast<uint8_t>(key[0]) > static_cast<uint8_t>(MetricsScope::kWorkspace)) {
    return false;
  }
  cell->scope = static_cast<MetricsScope>(key[0]);
  key.remove_prefix(1);
  if (!GetBytes(&key, &cell->id) || key.size() != 1 + 8) return false;
  switch (key[0]) {
    case 'm':
      cell->width_us = kMetricsMinuteUs;
      break;
    case 'h':
      cell->width_us = kMetricsHourUs;
      break;
    case 'd':
      cell->width_us = kMetricsDayUs;
      break;
    default:
      return false;
  }
  const uint64_t start = DecodeBigEndian64(key.data() + 1);
  if (start > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  cell->start_us = static_cast<int64_t>(start);
  return true;
}

// varint workspace size ‖ workspace ‖ BE16 year ‖ month (1) ‖ key id.
std::string UsageKey(std::string_view workspace_id, const BillingMonth& month,
                     std::string_view key_id) {
  assert(month.year >= kBillingYearMin && month.year <= kBillingYearMax);
  std::string key;
  PutBytes(workspace_id, &key);
  AppendBigEndian16(&key, static_cast<uint16_t>(month.year));
  key.push_back(static_cast<char>(month.month));
  key.append(key_id);
  return key;
}

// Calls fn(key, value) for each usage record (UsageKey, units) in key order,
// the value as stored (varint units). Sorts `records`.
void ForEachUsageRecord(std::vector<std::pair<std::string, uint64_t>>* records,
                        const std::function<void(std::string_view, std::string_view)>& fn) {
  std::sort(records->begin(), records->end());
  std::string value;
  for (const auto& [key, units] : *records) {
    value.clear();
    PutVarint(units, &value);
    fn(key, value);
  }
}

// The meta key of a workspace's zone record.
std::string ZoneKey(std::string_view workspace_id) {
  return kZoneKeyPrefix + std::string(workspace_id);
}

bool ParseUsageKey(std::string_view key, std::string_view* workspace_id, BillingMonth* month,
                   std::string_view* key_id) {
  if (!GetBytes(&key, workspace_id) || key.size() < 3) return false;
  month->year = DecodeBigEndian16(key.data());
  month->month = static_cast<uint8_t>(key[2]);
  key.remove_prefix(3);
  *key_id = key;
  return month->year >= kBillingYearMin && month->year <= kBillingYearMax && month->month >= 1 &&
         month->month <= 12;
}

// ---- Log values ------------------------------------------------------------------------
//
// version (1) ‖ BE ordered occurred_at (8) ‖ BE status (2) ‖ then, length-
// prefixed or varint: request_id, workspace_id, method, path, latency_us,
// units, request_bytes, response_bytes, client_ip, origin, request excerpt,
// response excerpt (header count, then name and value per header, then body).
// The fixed header lets Logs filter without decoding the rest.

void PutExcerpt(const HttpExcerptView& excerpt, std::string* out) {
  PutVarint(excerpt.headers.size(), out);
  for (const HttpHeaderView& h : excerpt.headers) {
    PutBytes(h.name, out);
    PutBytes(h.value, out);
  }
  PutBytes(excerpt.body_excerpt, out);
}

bool GetExcerpt(std::string_view* in, HttpExcerpt* excerpt) {
  uint64_t count = 0;
  if (!GetVarint(in, &count) || count > in->size()) return false;  // >= 1 byte per header
  excerpt->headers.resize(static_cast<size_t>(count));
  for (HttpHeader& h : excerpt->headers) {
    if (!GetString(in, &h.name) || !GetString(in, &h.value)) return false;
  }
  return GetString(in, &excerpt->body_excerpt);
}

void EncodeLogValue(const ApiCallView& call, std::string* out) {
  out->clear();
  out->push_back(static_cast<char>(kLogValueVersion));
  AppendBigEndian64(out, OrderedTime(call.occurred_at_us));
  AppendBigEndian16(out, call.status);
  PutBytes(call.request_id, out);
  PutBytes(call.workspace_id, out);
  PutBytes(call.method, out);
  PutBytes(call.path, out);
  for (uint64_t v : {call.latency_us, call.units, call.request_bytes, call.response_bytes}) {
    PutVarint(v, out);
  }
  PutBytes(call.client_ip, out);
  PutBytes(call.origin, out);
  PutExcerpt(call.request, out);
  PutExcerpt(call.response, out);
}

// Makes the log entry of call `sequence`: its key, its value, and the record
// key ‖ value that the fold chains. The key has a fixed shape (no '\0' in the
// id, 8 bytes after it), so key ‖ value names one entry unambiguously.
// Returns false, making nothing, for a call that gets no entry: one made
// while logging was off, or with an empty key id or one holding '\0'.
bool MakeLogEntry(const ApiCallView& call, uint64_t sequence, std::string* key, std::string* value,
                  std::string* record) {
  if (!call.logged || call.key_id.empty() || call.key_id.find('\0') != std::string_view::npos) {
    return false;
  }
  LogKey(call.key_id, sequence, key);
  EncodeLogValue(call, value);
  record->assign(*key);
  record->append(*value);
  return true;
}

struct LogHeader {
  int64_t occurred_at_us = 0;
  uint16_t status = 0;
};

bool DecodeLogHeader(std::string_view value, LogHeader* header) {
  if (value.size() < kLogHeaderBytes || static_cast<uint8_t>(value[0]) != kLogValueVersion) {
    return false;
  }
  header->occurred_at_us = TimeFromOrdered(DecodeBigEndian64(value.data() + 1));
  header->status = DecodeBigEndian16(value.data() + 9);
  return true;
}

// REQUIRES: key is a log key (key_id '\0' 8 bytes).
Status DecodeLogEntry(std::string_view key, std::string_view value, LogEntry* entry) {
  ApiCallRecorded& call = entry->call;
  call.logged = true;
  assert(key.size() > kSequenceBytes && key[key.size() - kSequenceBytes - 1] == '\0');
  LogHeader header;
  if (!DecodeLogHeader(value, &header)) return Status::Corruption("log entry: bad header");
  call.key_id.assign(key.substr(0, key.size() - kSequenceBytes - 1));
  entry->sequence = std::numeric_limits<uint64_t>::max() -
                    DecodeBigEndian64(key.data() + key.size() - kSequenceBytes);
  call.occurred_at_us = header.occurred_at_us;
  call.status = header.status;
  value.remove_prefix(kLogHeaderBytes);
  bool ok = GetString(&value, &call.request_id) && GetString(&value, &call.workspace_id) &&
            GetString(&value, &call.method) && GetString(&value, &call.path);
  for (uint64_t* v :
       {&call.latency_us, &call.units, &call.request_bytes, &call.response_bytes}) {
    ok = ok && GetVarint(&value, v);
  }
  ok = ok && GetString(&value, &call.client_ip) && GetString(&value, &call.origin) &&
       GetExcerpt(&value, &call.request) && GetExcerpt(&value, &call.response) && value.empty();
  return ok ? Status::Ok() : Status::Corruption("log entry: malformed body");
}

}  // namespace

// ---- The in-memory fold ------------------------------------------------------------------

namespace call_projections_internal {

struct KeyUnits {
  uint64_t units = 0;
  bool changed = false;  // listed in the batch's changed usage
};
struct MonthUsage {
  uint64_t total = 0;
  std::map<std::string, KeyUnits, std::less<>> by_key;  // units > 0 only
};
using UsageTable = std::map<std::string, std::map<BillingMonth, MonthUsage>, std::less<>>;

// A cache over FoldState::zone_names: each workspace's zone, and the month
// last resolved in it. Pointers into the FoldState's usage stay valid while
// no usage record is erased (never). Neither persisted nor digested.
struct Zones {
  struct Zone {
    std::string name;
    const std::string* workspace = nullptr;  // key in FoldState::usage, once it has one
    BillingMonth month;
    int64_t start_us = 0;
    int64_t end_us = 0;  // start == end: no month resolved yet
    MonthUsage* usage = nullptr;
  };
  // Heterogeneous lookup: find zones by the string_view of a decoded event.
  struct IdHash {
    using is_transparent = void;
    size_t operator()(std::string_view id) const { return std::hash<std::string_view>{}(id); }
  };
  std::unordered_map<std::string, Zone, IdHash, std::equal_to<>> by_workspace;
  const std::string* last_id = nullptr;  // key of `last` in by_workspace
  Zone* last = nullptr;
  // Counts changes of any workspace's zone: a UsageCursor set before one is
  // stale.
  uint64_t generation = 0;
};

// Ids longer than this together are not given a UsageCursor.
constexpr size_t kUsageCursorIdsBytesMax = 64;

// Whether a call of these ids gets a UsageCursor.
bool FitsUsageCursor(std::string_view workspace_id, std::string_view key_id) {
  return workspace_id.size() + key_id.size() <= kUsageCursorIdsBytesMax;
}

// Where the units of one (workspace, key) last went: the usage record of the
// key in a month, and that month's bounds in the workspace's zone. A call of
// the same month then costs one FlatIndex lookup, where it cost a lookup of
// the zone by workspace and a search of the month's keys (29% of a fold of
// 50,000 keys, docs/performance.md). A cache like Zones: pointers into the
// FoldState's usage stay valid; neither persisted nor digested.
struct UsageCursor {
  // The workspace id then the key id, inline: matching reads nothing else.
  std::array<char, kUsageCursorIdsBytesMax> ids{};
  uint8_t workspace_size = 0;
  uint8_t key_size = 0;
  uint64_t zones_generation = 0;  // Zones::generation when the bounds were set
  int64_t start_us = 0;
  int64_t end_us = 0;  // start == end: no month yet
  BillingMonth month;
  const std::string* workspace = nullptr;  // key in FoldState::usage
  MonthUsage* usage = nullptr;
  // The key's record in `usage`, once it has units (only units > 0 are kept).
  const std::string* key = nullptr;  // key in MonthUsage::by_key
  KeyUnits* units = nullptr;

  bool Is(std::string_view workspace_id, std::string_view key_id) const {
    return workspace_id.size() == workspace_size && key_id.size() == key_size &&
           std::memcmp(ids.data(), workspace_id.data(), workspace_size) == 0 &&
           std::memcmp(ids.data() + workspace_size, key_id.data(), key_size) == 0;
  }
  bool Covers(int64_t at_us, uint64_t generation) const {
    return zones_generation == generation && start_us <= at_us && at_us < end_us;
  }
};
struct UsageCursors {
  std::deque<UsageCursor> cursors;  // never move
  FlatIndex<UsageCursor> index;
};

// The index hash of the cursor of (workspace, key), from the hashes of the
// ids (the metrics fold's, so a lookahead hashes each id once).
size_t CursorHash(const MetricsFold::IdHashes& ids) {
  return ids.workspace ^ (ids.key + 0x9e3779b97f4a7c15 + (ids.workspace << 6) + (ids.workspace >> 2));
}

// The state of every call projection held in memory (logs live only in the
// store; the fold keeps the running hash over them).
struct FoldState {
  MetricsFold metrics;
  UsageTable usage;
  // The billing zone of each workspace whose WorkspaceCreated or
  // WorkspaceChanged named one, as of `position` (see "Usage" in the header).
  std::map<std::string, std::string, std::less<>> zone_names;
  Zones zones;
  UsageCursors usage_cursors;
  Hash log_chain{};
  uint64_t usage_rejected = 0;
  uint64_t position = 0;  // the last sequence applied to this state
  // A rebuild's (CallProjectionsRebuildOptions::keep_log_entries): the entry
  // of every logged call folded. Neither persisted nor digested.
  bool keep_log_entries = false;
  std::vector<LogEntryHash> log_entries;
};

// CallProjectionsRebuildOptions::other_events.
using OtherEventsFn = std::function<Status(uint64_t sequence, std::string_view stored)>;

// What a fold applies: every projection, or the usage alone (FoldUsage).
enum class FoldParts : uint8_t { kAll, kUsageOnly };

// Folds one batch of stored events into a FoldState. With `out`, collects the
// records the batch adds or changes into it (the live projection); without,
// only the state changes (the rebuild).
//
// Per event: the body is decoded once (DecodeCallEvent) into a reused view
// whose fields point into the stored bytes, so a call costs no std::string
// or vector allocation; excerpts are only copied into the log value when the
// call is logged.
class BatchFolder {
 public:
  // REQUIRES: parts == kAll when `out` is set (a store holds every part).
  // `other_events` (may be null; must outlive the folder) is called with
  // every event that is not a call, after it was folded.
  BatchFolder(FoldState* state, KvBatch* out, FoldParts parts = FoldParts::kAll,
              const OtherEventsFn* other_events = nullptr)
      : state_(state),
        out_(out),
        parts_(parts),
        other_events_(other_events),
        call_kind_(ApiCallRecordedBodyKind()),
        denial_kind_(AuthorizationDeniedBodyKind()),
        workspace_created_kind_(WorkspaceCreatedBodyKind()),
        workspace_changed_kind_(WorkspaceChangedBodyKind()),
        zones_(state->zones) {
    assert(out_ == nullptr || parts_ == FoldParts::kAll);
  }

  // Folds the stored value of the event at `sequence`.
  // Returns Corruption (with the sequence) when the value does not decode or
  // sequences are not dense from state->position + 1.
  Status Fold(uint64_t sequence, std::string_view stored);
  // The same for an event a ScanAhead decoded already (its status is what
  // this Fold's own split and decode would have returned).
  Status FoldDecoded(uint64_t sequence, std::string_view stored, const DecodedCallEvent& event);

  // Adds the changed metrics cells and usage records to `out` and advances
  // the state's position. Call once, after the last Fold.
  void Finish();

  // For prefetching: takes each event kScanAheadLookaheadItems before it is
  // folded (ScanAhead::ScanDecodedCallEvents' `ahead`). Over tables larger
  // than the cache, the misses of an event's lookups (MetricsFold and usage
  // cursors) are then mostly taken while earlier events are folded: each of
  // the events ahead is one stage further (MetricsFold::PrefetchSeries).
  void LookAhead(const DecodedCallEvent& event);

  uint64_t events_scanned() const { return events_scanned_; }
  uint64_t events_folded() const { return events_folded_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t last_sequence() const { return last_sequence_; }
  const Hash& last_hash() const { return last_hash_; }

 private:
  using Zone = Zones::Zone;
  struct ChangedUsage {
    const std::string* workspace;
    BillingMonth month;
    const std::string* key;
    KeyUnits* units;
  };
  void FoldCall(uint64_t sequence, const ApiCallView& call);
  // Follows a workspace's billing zone. Returns Corruption if `body` (of a
  // WorkspaceCreated or WorkspaceChanged) does not decode.
  Status FoldWorkspace(uint64_t sequence, std::string_view body);
  // Returns the zone of `workspace_id`; consecutive calls are mostly of one
  // workspace, so the last one is remembered.
  Zone& ZoneOf(std::string_view workspace_id);
  // Returns the month usage of the call in `zone`, or nullptr.
  MonthUsage* ResolveUsage(Zone& zone, const ApiCallView& call);
  // Returns the cursor of (workspace_id, key_id), made on first use, or
  // nullptr when the ids are too long for one (kUsageCursorIdsBytesMax).
  UsageCursor* CursorOf(std::string_view workspace_id, std::string_view key_id);
  // Points `cursor` at the usage of the call's key in the call's month.
  // Returns false if that month cannot be resolved (the usage is rejected).
  bool Resolve(const ApiCallView& call, UsageCursor* cursor);
  void ApplyUsage(const ApiCallView& call);
  // Counts the call's units through `cursor`, resolving it first if the
  // call's month is not the one it points at.
  void CountUsage(const ApiCallView& call, UsageCursor* cursor);
  // Chains (and with `out`, keeps) the call's log entry, if it gets one (MakeLogEntry).
  void AppendLog(uint64_t sequence, const ApiCallView& call);
  // Stage `stage` of prefetching a usage cursor (as MetricsFold::PrefetchSeries).
  void PrefetchCursor(size_t hash, int stage) const;

  FoldState* const state_;
  KvBatch* const out_;
  const FoldParts parts_;
  const OtherEventsFn* const other_events_;
  const uint16_t call_kind_;
  const uint16_t denial_kind_;
  const uint16_t workspace_created_kind_;
  const uint16_t workspace_changed_kind_;
  Zones& zones_;
  std::vector<ChangedUsage> changed_usage_;
  // The events LookAhead was given, by their hashes; the last
  // kLookaheadStages, the newest at (lookahead_count_ - 1) % kLookaheadStages.
  struct Lookahead {
    bool metrics = false;  // counts in metrics series
    bool usage = false;    // counts in usage
    MetricsFold::IdHashes ids;
  };
  static constexpr size_t kLookaheadStages = MetricsFold::kPrefetchStages;
  std::array<Lookahead, kLookaheadStages> lookahead_{};
  size_t lookahead_count_ = 0;
  std::vector<std::string> changed_zones_;  // workspace ids, with `out`
  DecodedCallEvent decoded_;       // Fold's, reused
  std::vector<uint64_t> aligned_;  // reused buffers
  std::string log_key_;
  std::string log_value_;
  std::string log_record_;
  // The batch's log entries (key ‖ value each), written at Finish.
  struct PendingLog {
    size_t offset;  // into log_records_
    size_t key_size;
    size_t value_size;
    uint64_t ordered_time;  // OrderedTime(occurred_at_us)
  };
  std::string log_records_;
  std::vector<PendingLog> pending_logs_;
  uint64_t events_scanned_ = 0;
  uint64_t events_folded_ = 0;
  uint64_t bytes_ = 0;
  uint64_t last_sequence_ = 0;
  Hash last_hash_{};
};

Status BatchFolder::Fold(uint64_t sequence, std::string_view stored) {
  Hash hash;
  std::string_view unaligned;
  decoded_.status = SplitStoredValue(stored, &hash, &unaligned);
  if (decoded_.status.ok()) {
    // Reads the body only of calls and denials; refuses exactly what the
    // header decode (any event) and the full decode (calls, denials) would.
    decoded_.status = DecodeCallEvent(WordAligned(unaligned, &aligned_), &decoded_.view);
  }
  return FoldDecoded(sequence, stored, decoded_);
}

Status BatchFolder::FoldDecoded(uint64_t sequence, std::string_view stored,
                                const DecodedCallEvent& event) {
  const uint64_t expected = (events_scanned_ == 0 ? state_->position : last_sequence_) + 1;
  if (sequence != expected) {
    return Status::Corruption(
        "the ledger skips from " + std::to_string(expected - 1) + " to " + std::to_string(sequence),
        expected);
  }
  if (!event.status.ok()) return Status::Corruption(event.status.message(), sequence);
  std::string_view body;
  Status split = SplitStoredValue(stored, &last_hash_, &body);
  assert(split.ok());  // event.status covers it
  ++events_scanned_;
  bytes_ += stored.size();
  last_sequence_ = sequence;
  const CallEventView& view = event.view;
  if (view.body_kind == call_kind_) {
    ++events_folded_;
    FoldCall(sequence, view.call);
    return Status::Ok();
  }
  if (view.body_kind == denial_kind_ && parts_ == FoldParts::kAll) {
    ++events_folded_;
    const AuthorizationDeniedView& d = view.denial;
    state_->metrics.ApplyDenial(d.workspace_id, d.key_id, d.occurred_at_us, d.reason, d.count);
  } else if (view.body_kind == workspace_created_kind_ ||
             view.body_kind == workspace_changed_kind_) {
    KL_RETURN_IF_ERROR(FoldWorkspace(sequence, body));
  }
  return other_events_ != nullptr ? (*other_events_)(sequence, stored) : Status::Ok();
}

void BatchFolder::FoldCall(uint64_t sequence, const ApiCallView& call) {
  ApplyUsage(call);
  if (parts_ == FoldParts::kUsageOnly) return;
  state_->metrics.ApplyCall(call.workspace_id, call.key_id, call.occurred_at_us, call.status,
                            call.latency_us, call.units);
  AppendLog(sequence, call);
}

BatchFolder::Zone& BatchFolder::ZoneOf(std::string_view workspace_id) {
  if (zones_.last != nullptr && *zones_.last_id == workspace_id) return *zones_.last;
  auto it = zones_.by_workspace.find(workspace_id);
  if (it == zones_.by_workspace.end()) {
    Zone zone;
    auto name = state_->zone_names.find(workspace_id);
    zone.name = name != state_->zone_names.end() ? name->second : kDefaultTimeZone;
    it = zones_.by_workspace.emplace(std::string(workspace_id), std::move(zone)).first;
  }
  zones_.last_id = &it->first;
  zones_.last = &it->second;
  return it->second;
}

Status BatchFolder::FoldWorkspace(uint64_t sequence, std::string_view body) {
  Result<Event> event = DecodeEventBody(body);
  if (!event.ok()) return Status::Corruption(event.status().message(), sequence);
  const WorkspaceState* ws = std::visit(
      [](const auto& b) -> const WorkspaceState* {
        if constexpr (std::is_base_of_v<WorkspaceState, std::decay_t<decltype(b)>>) return &b;
        return nullptr;
      },
      event->body);
  assert(ws != nullptr);  // the body kind said so
  const std::string name =
      ws->billing_timezone.empty() ? std::string(kDefaultTimeZone) : ws->billing_timezone;
  auto [it, added] = state_->zone_names.try_emplace(ws->workspace_id, name);
  if (!added && it->second == name) return Status::Ok();
  it->second = name;
  ++zones_.generation;
  auto cached = zones_.by_workspace.find(ws->workspace_id);
  if (cached != zones_.by_workspace.end()) {
    cached->second.name = name;
    cached->second.start_us = cached->second.end_us = 0;  // resolve the month again
  }
  if (out_ != nullptr) changed_zones_.push_back(ws->workspace_id);
  return Status::Ok();
}

MonthUsage* BatchFolder::ResolveUsage(Zone& zone, const ApiCallView& call) {
  const int64_t at = call.occurred_at_us;
  if (zone.start_us <= at && at < zone.end_us) return zone.usage;
  Result<BillingMonth> month = MonthOf(at, zone.name);
  if (!month.ok()) return nullptr;
  auto bounds = MonthBoundsUs(*month, zone.name);
  if (!bounds.ok()) return nullptr;
  // calendar.h: MonthOf(t) == m exactly when t lies in m's bounds.
  assert(bounds->first <= at && at < bounds->second);
  if (zone.workspace == nullptr) {
    auto ws = state_->usage.find(call.workspace_id);
    if (ws == state_->usage.end()) {
      ws = state_->usage.try_emplace(std::string(call.workspace_id)).first;
    }
    zone.workspace = &ws->first;
  }
  auto ws = state_->usage.find(*zone.workspace);
  assert(ws != state_->usage.end());
  zone.month = *month;
  zone.start_us = bounds->first;
  zone.end_us = bounds->second;
  zone.usage = &ws->second[*month];
  return zone.usage;
}

void BatchFolder::LookAhead(const DecodedCallEvent& event) {
  static_assert(kScanAheadLookaheadItems == kLookaheadStages);  // one stage per event
  Lookahead& next = lookahead_[lookahead_count_ % kLookaheadStages];
  next = Lookahead{};
  if (event.status.ok() && event.view.body_kind == call_kind_) {
    const ApiCallView& call = event.view.call;
    next.ids = MetricsFold::HashIds(call.workspace_id, call.key_id);
    next.metrics = parts_ == FoldParts::kAll;
    next.usage = call.units > 0 && FitsUsageCursor(call.workspace_id, call.key_id);
  } else if (event.status.ok() && event.view.body_kind == denial_kind_) {
    next.ids = MetricsFold::HashIds(event.view.denial.workspace_id, event.view.denial.key_id);
    next.metrics = parts_ == FoldParts::kAll;
  }
  ++lookahead_count_;
  const size_t stages = std::min(lookahead_count_, kLookaheadStages);
  for (size_t stage = 0; stage < stages; ++stage) {
    const Lookahead& l = lookahead_[(lookahead_count_ - 1 - stage) % kLookaheadStages];
    if (l.metrics) state_->metrics.PrefetchSeries(l.ids, static_cast<int>(stage));
    if (l.usage) PrefetchCursor(CursorHash(l.ids), static_cast<int>(stage));
  }
}

void BatchFolder::PrefetchCursor(size_t hash, int stage) const {
  const FlatIndex<UsageCursor>& index = state_->usage_cursors.index;
  if (stage == 0) return index.PrefetchSlot(hash);
  const UsageCursor* cursor = index.Guess(hash);
  if (cursor == nullptr) return;
  if (stage == 1) {
    for (size_t line = 0; line < sizeof(UsageCursor); line += 64) {
      PrefetchRead(reinterpret_cast<const char*>(cursor) + line);
    }
    return;
  }
  if (cursor->usage != nullptr) PrefetchRead(cursor->usage);
  if (cursor->units != nullptr) PrefetchRead(cursor->units);
}

UsageCursor* BatchFolder::CursorOf(std::string_view workspace_id, std::string_view key_id) {
  if (!FitsUsageCursor(workspace_id, key_id)) return nullptr;
  const size_t hash = CursorHash(MetricsFold::HashIds(workspace_id, key_id));
  UsageCursors& cursors = state_->usage_cursors;
  auto same = [&](const UsageCursor& c) { return c.Is(workspace_id, key_id); };
  if (UsageCursor* cursor = cursors.index.Find(hash, same)) return cursor;
  UsageCursor& cursor = cursors.cursors.emplace_back();
  cursor.workspace_size = static_cast<uint8_t>(workspace_id.size());
  cursor.key_size = static_cast<uint8_t>(key_id.size());
  std::memcpy(cursor.ids.data(), workspace_id.data(), workspace_id.size());
  std::memcpy(cursor.ids.data() + workspace_id.size(), key_id.data(), key_id.size());
  cursors.index.Insert(hash, &cursor);
  return &cursor;
}

bool BatchFolder::Resolve(const ApiCallView& call, UsageCursor* cursor) {
  Zone& zone = ZoneOf(call.workspace_id);
  MonthUsage* usage = ResolveUsage(zone, call);
  if (usage == nullptr) return false;
  cursor->zones_generation = zones_.generation;
  cursor->start_us = zone.start_us;
  cursor->end_us = zone.end_us;
  cursor->month = zone.month;
  cursor->workspace = zone.workspace;
  cursor->usage = usage;
  auto key = usage->by_key.find(call.key_id);
  cursor->key = key == usage->by_key.end() ? nullptr : &key->first;
  cursor->units = key == usage->by_key.end() ? nullptr : &key->second;
  return true;
}

void BatchFolder::ApplyUsage(const ApiCallView& call) {
  if (call.units == 0) return;
  if (UsageCursor* cursor = CursorOf(call.workspace_id, call.key_id)) return CountUsage(call, cursor);
  UsageCursor once;  // ids too long to keep a cursor for: resolved for this call alone
  CountUsage(call, &once);
}

void BatchFolder::CountUsage(const ApiCallView& call, UsageCursor* cursor) {
  if (!cursor->Covers(call.occurred_at_us, zones_.generation) && !Resolve(call, cursor)) {
    ++state_->usage_rejected;
    return;
  }
  MonthUsage& usage = *cursor->usage;
  if (usage.total > std::numeric_limits<uint64_t>::max() - call.units) {
    ++state_->usage_rejected;
    return;
  }
  usage.total += call.units;
  if (cursor->units == nullptr) {
    auto key = usage.by_key.try_emplace(std::string(call.key_id)).first;
    cursor->key = &key->first;
    cursor->units = &key->second;
  }
  KeyUnits& units = *cursor->units;
  units.units += call.units;  // <= total: no overflow
  if (out_ != nullptr && !units.changed) {
    units.changed = true;
    changed_usage_.push_back(ChangedUsage{cursor->workspace, cursor->month, cursor->key, &units});
  }
}

void BatchFolder::AppendLog(uint64_t sequence, const ApiCallView& call) {
  if (!MakeLogEntry(call, sequence, &log_key_, &log_value_, &log_record_)) return;
  state_->log_chain = ChainHash(state_->log_chain, log_record_);
  if (state_->keep_log_entries) {
    state_->log_entries.push_back(
        LogEntryHash{sequence, call.occurred_at_us, HashBytes(log_record_)});
  }
  if (out_ == nullptr) return;
  // Written at Finish, in key order (see there).
  pending_logs_.push_back(PendingLog{log_records_.size(), log_key_.size(), log_value_.size(),
                                     OrderedTime(call.occurred_at_us)});
  log_records_.append(log_record_);
}

// Every column family's records go into the batch in key order: RocksDB
// inserts a WriteBatch's keys into a memtable skiplist, and an insert just
// after the previous one reuses its position, where a random one searches
// from the top (in event order, the inserts were ~1/3 of a persisted fold).
void BatchFolder::Finish() {
  if (events_scanned_ > 0) state_->position = last_sequence_;
  if (out_ == nullptr) return;
  std::string key;
  // TakeChangedCells' order is the order of MetricsKey.
  state_->metrics.TakeChangedCells([&](const MetricsFold::CellRef& cell, std::string_view encoded) {
    key.clear();
    AppendMetricsKey(cell, &key);
    out_->Put(kCallCfMetrics, key, encoded);
  });
  std::vector<std::pair<std::string, uint64_t>> usage;
  usage.reserve(changed_usage_.size());
  for (const ChangedUsage& c : changed_usage_) {
    assert(c.units->changed && c.units->units > 0);
    c.units->changed = false;
    usage.emplace_back(UsageKey(*c.workspace, c.month, *c.key), c.units->units);
  }
  changed_usage_.clear();
  ForEachUsageRecord(&usage, [&](std::string_view key, std::string_view value) {
    out_->Put(kCallCfUsage, key, value);
  });
  auto log_key = [&](const PendingLog& p) {
    return std::string_view(log_records_).substr(p.offset, p.key_size);
  };
  std::sort(pending_logs_.begin(), pending_logs_.end(),
            [&](const PendingLog& a, const PendingLog& b) { return log_key(a) < log_key(b); });
  for (const PendingLog& p : pending_logs_) {
    out_->Put(kCallCfLogs, log_key(p),
              std::string_view(log_records_).substr(p.offset + p.key_size, p.value_size));
  }
  std::sort(pending_logs_.begin(), pending_logs_.end(),
            [&](const PendingLog& a, const PendingLog& b) {
              return a.ordered_time != b.ordered_time ? a.ordered_time < b.ordered_time
                                                      : log_key(a) < log_key(b);
            });
  for (const PendingLog& p : pending_logs_) {
    key.clear();
    AppendBigEndian64(&key, p.ordered_time);
    key.append(log_key(p));
    out_->Put(kCallCfLogTimes, key, "");
  }
  pending_logs_.clear();
  log_records_.clear();
  std::sort(changed_zones_.begin(), changed_zones_.end());
  changed_zones_.erase(std::unique(changed_zones_.begin(), changed_zones_.end()),
                       changed_zones_.end());
  for (const std::string& workspace : changed_zones_) {
    out_->Put(kCallCfMeta, ZoneKey(workspace), state_->zone_names.at(workspace));
  }
  changed_zones_.clear();
}

// Folds events of [from, to] into `folder` (from `ahead`, which must read
// them with OfLedgerDecodingCalls and be at `from`, or else from `ledger`)
// while more() holds after an event. The first fold error stops the scan and
// is left in *fold; returns the scan's own status.
template <typename More>
Status ScanBatch(const Ledger& ledger, uint64_t from, uint64_t to, ScanAhead* ahead,
                 BatchFolder* folder, Status* fold, const More& more) {
  if (ahead != nullptr) {
    return ahead->ScanDecodedCallEvents(
        [&](uint64_t sequence, std::string_view value, const DecodedCallEvent& event) {
          *fold = folder->FoldDecoded(sequence, value, event);
          return fold->ok() && more();
        },
        [folder](const DecodedCallEvent& event) { folder->LookAhead(event); });
  }
  return ledger.ScanRaw(from, to, [&](uint64_t sequence, std::string_view value) {
    *fold = folder->Fold(sequence, value);
    return fold->ok() && more();
  });
}

// The digest is over the records a store holds for a state, exactly as
// stored, so that a snapshot is digested from its stored bytes without being
// loaded (StoredDigest). Each group of records is hashed in the store's key
// order, a record per key-value pair (RecordHasher::AddKeyValue): the
// metrics cells in kMetricsSlices slices, each scope's series cut in two by
// MetricsSliceOf; the usage records; the zone records; then the log chain
// and the rejected-usage count.
constexpr size_t kMetricsSlices = 4;

// Returns the slice of the metrics cells of a series: two per scope, by the
// low bit of the id's last byte (generated ids end in a random character).
size_t MetricsSliceOf(MetricsScope scope, std::string_view id) {
  const size_t half = id.empty() ? 0 : static_cast<uint8_t>(id.back()) & 1;
  return 2 * static_cast<size_t>(scope) + half;
}

// The hashes the digest is made of (see above).
struct DigestParts {
  std::array<Hash, kMetricsSlices> metrics{};
  Hash usage{};
  Hash zones{};
  Hash log_chain{};
  uint64_t usage_rejected = 0;
};

Hash CombineDigest(const DigestParts& parts) {
  RecordHasher h;
  std::string record;
  for (const Hash& slice : parts.metrics) h.Add({"M", EncodeHash(slice)});
  h.Add({"U", EncodeHash(parts.usage)});
  h.Add({"Z", EncodeHash(parts.zones)});
  record.assign(1, 'l');
  record += EncodeHash(parts.log_chain);
  AppendBigEndian64(&record, parts.usage_rejected);
  h.Add(record);
  return h.Finish();
}

// Returns the hash of one slice of the metrics cells, as the store holds them.
Hash MetricsCellsDigest(const MetricsFold& metrics, size_t slice) {
  const auto scope = static_cast<MetricsScope>(slice / 2);
  RecordHasher h;
  std::string key;
  metrics.ForEachCell(
      scope, [&](std::string_view id) { return MetricsSliceOf(scope, id) == slice; },
      [&](const MetricsFold::CellRef& cell, std::string_view encoded) {
        key.clear();
        AppendMetricsKey(cell, &key);
        h.AddKeyValue(key, encoded);
      });
  return h.Finish();
}

Hash DigestOf(const FoldState& state) {
  // The cells are most of the work: with many, half the slices are hashed
  // on a second thread.
  DigestParts parts;
  auto hash_slices = [&](size_t first) {
    for (size_t slice = first; slice < kMetricsSlices; slice += 2) {
      parts.metrics[slice] = MetricsCellsDigest(state.metrics, slice);
    }
  };
  if (state.metrics.cell_count() >= kDigestCellsOnTwoThreadsMin) {
    std::jthread second([&] { hash_slices(1); });  // joins on every way out
    hash_slices(0);
    second.join();
  } else {
    hash_slices(0);
    hash_slices(1);
  }
  // The usage records, in key order (UsageKey starts with the workspace's
  // size, so the table's order is not the store's).
  std::vector<std::pair<std::string, uint64_t>> usage;
  for (const auto& [workspace, months] : state.usage) {
    for (const auto& [month, month_usage] : months) {
      for (const auto& [key, units] : month_usage.by_key) {
        usage.emplace_back(UsageKey(workspace, month, key), units.units);
      }
    }
  }
  RecordHasher usage_hasher;
  ForEachUsageRecord(&usage, [&](std::string_view key, std::string_view value) {
    usage_hasher.AddKeyValue(key, value);
  });
  parts.usage = usage_hasher.Finish();
  RecordHasher zones;
  for (const auto& [workspace, zone] : state.zone_names) zones.AddKeyValue(ZoneKey(workspace), zone);
  parts.zones = zones.Finish();
  parts.log_chain = state.log_chain;
  parts.usage_rejected = state.usage_rejected;
  return CombineDigest(parts);
}

// Folds (after, to] of `ledger` into `state` in batches, without storage;
// with kUsageOnly, only state->usage, usage_rejected and position change.
Status FoldInMemory(const Ledger& ledger, uint64_t to, FoldState* state,
                    const std::function<void(uint64_t)>& progress,
                    FoldParts parts = FoldParts::kAll,
                    const OtherEventsFn* other_events = nullptr) {
  std::unique_ptr<ScanAhead> ahead;
  if (state->position < to && to - state->position >= kRebuildReadAheadEventsMin) {
    ahead = ScanAhead::OfLedgerDecodingCalls(ledger, state->position + 1, to);
  }
  while (state->position < to) {
    BatchFolder folder(state, nullptr, parts, other_events);
    Status fold;
    KL_RETURN_IF_ERROR(ScanBatch(ledger, state->position + 1, to, ahead.get(), &folder, &fold,
                                 [&] { return folder.events_scanned() < kRebuildBatchEventsMax; }));
    KL_RETURN_IF_ERROR(fold);
    if (folder.events_scanned() == 0) {
      return Status::Corruption("the ledger has no event " + std::to_string(state->position + 1),
                                state->position + 1);
    }
    folder.Finish();
    if (progress) progress(state->position);
  }
  return Status::Ok();
}

}  // namespace call_projections_internal

using call_projections_internal::BatchFolder;
using call_projections_internal::MonthUsage;

struct CallProjections::FoldState : call_projections_internal::FoldState {};

// ---- CallProjections: open, load, wipe ---------------------------------------------------

CallProjections::CallProjections(const Ledger* ledger, const Clock* clock,
                                 CallProjectionsOptions options)
    : ledger_(ledger),
      clock_(clock),
      options_(options),
      batch_events_max_(options.fold_batch_events_max) {}

CallProjections::~CallProjections() { Stop(); }

Result<std::unique_ptr<CallProjections>> CallProjections::Open(const std::string& path,
                                                               const Ledger* ledger,
                                                               const Clock* clock,
                                                               CallProjectionsOptions options) {
  assert(ledger != nullptr && clock != nullptr);
  assert(options.log_retention_us > 0 && options.fold_batch_events_max > 0 &&
         options.tail_wait_us > 0);
  std::unique_ptr<CallProjections> self(new CallProjections(ledger, clock, options));
  KL_ASSIGN_OR_RETURN(self->store_, KvStore::Open(path, StoreOptions()));
  KL_RETURN_IF_ERROR(self->LoadOrWipe());
  const uint64_t head = ledger->head().sequence;
  const uint64_t backlog = head > self->position() ? head - self->position() : 0;
  if (options.read_ahead_events_min > 0 && backlog >= options.read_ahead_events_min) {
    // No one else holds `self` yet: see fold_batch_events_max.
    self->batch_events_max_ = std::max(options.fold_batch_events_max, kOpenFoldBatchEventsMin);
  }
  Status fold = self->CatchUp();
  {
    std::lock_guard<std::mutex> lock(self->fold_mu_);
    self->batch_events_max_ = options.fold_batch_events_max;
  }
  KL_RETURN_IF_ERROR(fold);
  return self;
}

Status CallProjections::WithPositionHeld(uint64_t sequence,
                                         const std::function<Status(uint64_t)>& fn) {
  KL_RETURN_IF_ERROR(CatchUpTo(sequence));
  std::lock_guard<std::mutex> lock(fold_mu_);
  return fn(position());
}

Status CallProjections::LoadOrWipe() {
  KL_ASSIGN_OR_RETURN(auto format, store_->Get(kCallCfMeta, kFormatKey));
  if (!format || *format != kFormatVersion) return Wipe();
  KL_ASSIGN_OR_RETURN(auto stored, store_->Get(kCallCfMeta, kPositionKey));
  uint64_t position = 0;
  Hash hash{};
  if (stored) {
    if (stored->size() != kPositionValueBytes)
      return Status::Corruption("call projections: bad position");
    position = DecodeBigEndian64(stored->data());
    std::copy(stored->begin() + 8, stored->end(), hash.begin());
  }
  KL_ASSIGN_OR_RETURN(bool matches, StoreMatchesLedger(position, hash));
  return matches ? Load() : Wipe();
}

Result<bool> CallProjections::StoreMatchesLedger(uint64_t position, const Hash& hash) const {
  if (position == 0) return true;
  if (position > ledger_->head().sequence) return false;  // the ledger lost its tail
  bool same = false;
  Status split;
  KL_RETURN_IF_ERROR(ledger_->ScanRaw(position, position, [&](uint64_t, std::string_view value) {
    Hash stored;
    std::string_view body;
    split = SplitStoredValue(value, &stored, &body);
    same = split.ok() && stored == hash;
    return false;
  }));
  KL_RETURN_IF_ERROR(split);
  return same;
}

namespace {

using call_projections_internal::FoldState;

Status LoadMetrics(const KvStore& store, FoldState* state) {
  Status load;
  auto cell = [&](std::string_view key, std::string_view value) {
    MetricsFold::CellRef ref;
    load = ParseMetricsKey(key, &ref) ? state->metrics.LoadCell(ref, value)
                                      : Status::Corruption("call projections: bad metrics key");
    return load.ok();
  };
  // Decoding cells costs about as much as reading them: read on another core.
  KL_RETURN_IF_ERROR(ScanAhead::OfStore(store, kCallCfMetrics, "", "")->Scan(cell));
  KL_RETURN_IF_ERROR(load);
  return state->metrics.FinishLoad();
}

// Adds one stored usage record to `state`.
Status LoadUsageRecord(std::string_view key, std::string_view value, FoldState* state) {
  std::string_view workspace, key_id;
  BillingMonth month;
  uint64_t units = 0;
  if (!ParseUsageKey(key, &workspace, &month, &key_id) || !GetVarint(&value, &units) ||
      !value.empty() || units == 0) {
    return Status::Corruption("call projections: bad usage record");
  }
  auto ws = state->usage.find(workspace);
  if (ws == state->usage.end()) ws = state->usage.try_emplace(std::string(workspace)).first;
  MonthUsage& usage = ws->second[month];
  if (usage.total > std::numeric_limits<uint64_t>::max() - units) {
    return Status::Corruption("call projections: a month's usage exceeds 2^64-1");
  }
  usage.total += units;
  usage.by_key[std::string(key_id)].units = units;
  return Status::Ok();
}

Status LoadUsage(const KvStore& store, FoldState* state) {
  Status load;
  auto record = [&](std::string_view key, std::string_view value) {
    load = LoadUsageRecord(key, value, state);
    return load.ok();
  };
  KL_RETURN_IF_ERROR(store.Scan(kCallCfUsage, "", "", record, ScanKind::kBulk));
  return load;
}

Status LoadZones(const KvStore& store, FoldState* state) {
  auto record = [&](std::string_view key, std::string_view value) {
    key.remove_prefix(std::strlen(kZoneKeyPrefix));
    state->zone_names.emplace(key, value);
    return true;
  };
  return store.Scan(kCallCfMeta, kZoneKeyPrefix, kZoneKeyEnd, record, ScanKind::kBulk);
}

// Reads the position, log chain and rejected-usage count (written together).
Status LoadMeta(const KvStore& store, FoldState* state) {
  KL_ASSIGN_OR_RETURN(auto position, store.Get(kCallCfMeta, kPositionKey));
  if (!position) return Status::Ok();  // nothing folded yet
  KL_ASSIGN_OR_RETURN(auto chain, store.Get(kCallCfMeta, kLogChainKey));
  KL_ASSIGN_OR_RETURN(auto rejected, store.Get(kCallCfMeta, kUsageRejectedKey));
  if (position->size() != kPositionValueBytes || !chain ||
      chain->size() != state->log_chain.size() || !rejected || rejected->size() != 8) {
    return Status::Corruption("call projections: bad meta records");
  }
  state->position = DecodeBigEndian64(position->data());
  std::copy(chain->begin(), chain->end(), state->log_chain.begin());
  state->usage_rejected = DecodeBigEndian64(rejected->data());
  return Status::Ok();
}

// Reads every record of the in-memory state from `store`.
Status LoadState(const KvStore& store, FoldState* state) {
  KL_RETURN_IF_ERROR(LoadMetrics(store, state));
  KL_RETURN_IF_ERROR(LoadUsage(store, state));
  KL_RETURN_IF_ERROR(LoadZones(store, state));
  return LoadMeta(store, state);
}

// Returns the store's kLogSweptBeforeKey, kNeverSwept without one, or
// Corruption/IOError.
Result<int64_t> ReadLogSweptBefore(const KvStore& store) {
  KL_ASSIGN_OR_RETURN(auto value, store.Get(kCallCfMeta, kLogSweptBeforeKey));
  if (!value) return kNeverSwept;
  if (value->size() != 8) return Status::Corruption("call projections: bad sweep record");
  return TimeFromOrdered(DecodeBigEndian64(value->data()));
}

}  // namespace

Status CallProjections::Load() {
  auto state = std::make_unique<FoldState>();
  state->metrics.TrackChanges();
  KL_RETURN_IF_ERROR(LoadState(*store_, state.get()));
  KL_ASSIGN_OR_RETURN(log_swept_before_us_, ReadLogSweptBefore(*store_));
  position_.store(state->position, std::memory_order_release);
  state_ = std::move(state);
  return Status::Ok();
}

namespace {

// Deletes every key of column family `cf`, kDeleteBatchKeysMax per batch.
Status DeleteAll(KvStore* store, int cf) {
  std::string start;
  for (;;) {
    KvBatch batch(*store);
    std::string last;
    auto remove = [&](std::string_view key, std::string_view) {
      batch.Delete(cf, key);
      last.assign(key);
      return batch.count() < kDeleteBatchKeysMax;
    };
    KL_RETURN_IF_ERROR(store->Scan(cf, start, "", remove, ScanKind::kBulk));
    if (batch.count() == 0) return Status::Ok();
    KL_RETURN_IF_ERROR(store->Write(batch, Durability::kAsync));
    start = last + '\0';  // the first key after `last`
  }
}

}  // namespace

Status CallProjections::Wipe() {
  for (int cf : kCallCfs) KL_RETURN_IF_ERROR(DeleteAll(store_.get(), cf));
  KvBatch format(*store_);
  format.Put(kCallCfMeta, kFormatKey, kFormatVersion);
  KL_RETURN_IF_ERROR(store_->Write(format, Durability::kSync));
  state_ = std::make_unique<FoldState>();
  state_->metrics.TrackChanges();
  position_.store(0, std::memory_order_release);
  log_swept_before_us_ = kNeverSwept;
  return Status::Ok();
}

// ---- Folding ---------------------------------------------------------------------------

Status CallProjections::CatchUp() { return CatchUpTo(std::numeric_limits<uint64_t>::max()); }

Status CallProjections::CatchUpTo(uint64_t sequence) {
  if (position() >= sequence) return Status::Ok();
  std::lock_guard<std::mutex> lock(fold_mu_);
  KL_RETURN_IF_ERROR(health());
  const uint64_t to = std::min(sequence, ledger_->head().sequence);
  std::unique_ptr<ScanAhead> ahead;
  if (options_.read_ahead_events_min > 0 && position() < to &&
      to - position() >= options_.read_ahead_events_min) {
    ahead = ScanAhead::OfLedgerDecodingCalls(*ledger_, position() + 1, to);
  }
  while (position() < to) {
    Status s = FoldBatchLocked(to, ahead.get());
    if (!s.ok()) {
      std::lock_guard<std::mutex> broken_lock(broken_mu_);
      broken_ = s;
      return s;
    }
  }
  return Status::Ok();
}

Status CallProjections::health() const {
  std::lock_guard<std::mutex> lock(broken_mu_);
  return broken_;
}

// REQUIRES: fold_mu_ held, position() < to <= ledger head.
Status CallProjections::FoldBatchLocked(uint64_t to, ScanAhead* ahead) {
  const uint64_t from = position() + 1;
  assert(from <= to);
  KvBatch batch(*store_);
  uint64_t scanned = 0;
  uint64_t folded = 0;
  std::string meta_position;
  std::string meta_chain;
  std::string meta_rejected;
  {
    std::unique_lock<std::shared_mutex> lock(state_mu_);
    assert(state_->position == from - 1);
    BatchFolder folder(state_.get(), &batch);
    Status fold;
    KL_RETURN_IF_ERROR(ScanBatch(*ledger_, from, to, ahead, &folder, &fold, [&] {
      return folder.events_scanned() < batch_events_max_ &&
             folder.bytes() < options_.fold_batch_bytes_max;
    }));
    KL_RETURN_IF_ERROR(fold);
    if (folder.events_scanned() == 0) {
      return Status::Corruption("the ledger has no event " + std::to_string(from), from);
    }
    folder.Finish();
    scanned = folder.events_scanned();
    folded = folder.events_folded();
    AppendBigEndian64(&meta_position, folder.last_sequence());
    meta_position += EncodeHash(folder.last_hash());
    meta_chain = EncodeHash(state_->log_chain);
    AppendBigEndian64(&meta_rejected, state_->usage_rejected);
  }
  batch.Put(kCallCfMeta, kPositionKey, meta_position);
  batch.Put(kCallCfMeta, kLogChainKey, meta_chain);
  batch.Put(kCallCfMeta, kUsageRejectedKey, meta_rejected);
  // Async is enough: the ledger is the durable truth, and the position travels
  // in this same batch as the records, so a write lost on power loss leaves
  // an older consistent store whose tail Open simply folds again.
  KL_RETURN_IF_ERROR(store_->Write(batch, Durability::kAsync));
  position_.store(from - 1 + scanned, std::memory_order_release);
  events_scanned_.fetch_add(scanned, std::memory_order_relaxed);
  events_folded_.fetch_add(folded, std::memory_order_relaxed);
  return Status::Ok();
}

// ---- The tailing thread ------------------------------------------------------------------

void CallProjections::Start() {
  std::lock_guard<std::mutex> lock(tail_mu_);
  if (started_ || stopping_) return;
  started_ = true;
  tailer_ = std::thread([this] {
    NameThisThread("kl-call-fold");
    TailLoop();
  });
}

void CallProjections::Stop() {
  std::thread tailer;
  {
    std::lock_guard<std::mutex> lock(tail_mu_);
    stopping_ = true;
    tailer = std::move(tailer_);
  }
  tail_cv_.notify_all();
  if (tailer.joinable()) tailer.join();
}

Status CallProjections::tail_status() const {
  std::lock_guard<std::mutex> lock(tail_mu_);
  return tail_status_;
}

void CallProjections::TailLoop() {
  int64_t next_sweep_us = clock_->NowUs();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(tail_mu_);
      if (stopping_) return;
    }
    const auto waited_from = std::chrono::steady_clock::now();
    const uint64_t head = ledger_->WaitForSequence(position(), options_.tail_wait_us);
    const bool progress = head > position();
    Status fold = progress ? CatchUpTo(head) : Status::Ok();
    if (progress) {
      std::lock_guard<std::mutex> lock(tail_mu_);
      tail_status_ = fold;
    }
    MaybeSweep(&next_sweep_us);
    // WaitForSequence returns at once when the ledger is closed: do not spin.
    const auto waited = std::chrono::steady_clock::now() - waited_from;
    const bool returned_early =
        !progress && waited < std::chrono::microseconds(options_.tail_wait_us / 2);
    if (fold.ok() && !returned_early) continue;
    std::unique_lock<std::mutex> lock(tail_mu_);
    tail_cv_.wait_for(lock, std::chrono::microseconds(options_.tail_wait_us),
                      [&] { return stopping_; });
  }
}

void CallProjections::MaybeSweep(int64_t* next_sweep_us) {
  const int64_t now = clock_->NowUs();
  if (now < *next_sweep_us) return;
  *next_sweep_us = now + options_.log_sweep_interval_us;
  Result<size_t> swept = SweepExpiredLogs();
  if (!swept.ok()) {
    std::lock_guard<std::mutex> lock(tail_mu_);
    tail_status_ = swept.status();
  }
}

Result<size_t> CallProjections::SweepExpiredLogs() {
  std::lock_guard<std::mutex> lock(sweep_mu_);
  const int64_t cutoff = SaturatingSub(clock_->NowUs(), options_.log_retention_us);
  std::string end;
  AppendBigEndian64(&end, OrderedTime(cutoff));
  size_t deleted = 0;
  std::string start;
  for (;;) {
    KvBatch batch(*store_);
    size_t keys = 0;
    std::string last;
    KL_RETURN_IF_ERROR(
        store_->Scan(kCallCfLogTimes, start, end, [&](std::string_view key, std::string_view) {
          batch.Delete(kCallCfLogTimes, key);
          if (key.size() > 8) batch.Delete(kCallCfLogs, key.substr(8));
          last.assign(key);
          return ++keys < kDeleteBatchKeysMax;
        }));
    if (keys == 0) break;
    // The cutoff goes with the first deletions it makes, in one WriteBatch: a
    // store never lacks an entry at or after its recorded cutoff. (Only ever
    // raised: a later sweep with a longer retention or an earlier clock must
    // not hide what an earlier one deleted.)
    if (cutoff > log_swept_before_us_) {
      std::string ordered;
      AppendBigEndian64(&ordered, OrderedTime(cutoff));
      batch.Put(kCallCfMeta, kLogSweptBeforeKey, ordered);
    }
    // Async: a lost delete is redone by the next sweep, and is lost together
    // with its cutoff record.
    KL_RETURN_IF_ERROR(store_->Write(batch, Durability::kAsync));
    log_swept_before_us_ = std::max(log_swept_before_us_, cutoff);
    deleted += keys;
    if (keys < kDeleteBatchKeysMax) break;
    start = last + '\0';
  }
  return deleted;
}

// ---- Queries ---------------------------------------------------------------------------

uint64_t CallProjections::usage_rejected() const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  return state_->usage_rejected;
}

Hash CallProjections::Digest() const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  return call_projections_internal::DigestOf(*state_);
}

namespace {

Status CheckLogQuery(const LogQuery& q) {
  if (q.key_id.empty() || q.key_id.find('\0') != std::string::npos) {
    return Status::InvalidArgument("key_id must be a key id", "key_id");
  }
  if (q.to_us <= q.from_us) return Status::InvalidArgument("to must be after from", "to");
  if (q.limit == 0 || q.limit > kLogPageMax) {
    return Status::InvalidArgument("limit must be 1.." + std::to_string(kLogPageMax), "limit");
  }
  if (q.status_class && (*q.status_class < '1' || *q.status_class > '5')) {
    return Status::InvalidArgument("status_class must be one of 1, 2, 3, 4, 5", "status_class");
  }
  return Status::Ok();
}

bool Matches(const LogQuery& q, int64_t from_us, const LogHeader& h) {
  if (h.occurred_at_us < from_us || h.occurred_at_us >= q.to_us) return false;
  if (q.status && h.status != *q.status) return false;
  return !q.status_class || h.status / 100 == static_cast<uint16_t>(*q.status_class - '0');
}

}  // namespace

Result<LogPage> CallProjections::Logs(const LogQuery& query, int64_t now_us) const {
  KL_RETURN_IF_ERROR(CheckLogQuery(query));
  const std::string prefix = query.key_id + '\0';
  std::string start = prefix;
  if (!query.cursor.empty()) {
    if (!DecodeHex(query.cursor, &start) || start.size() != prefix.size() + kSequenceBytes ||
        !start.starts_with(prefix)) {
      return Status::InvalidArgument("cursor is not a cursor of this key's log", "cursor");
    }
    start.push_back('\0');  // the first key after the cursor's
  }
  const std::string end = query.key_id + '\x01';
  const int64_t from_us = std::max(query.from_us, SaturatingSub(now_us, options_.log_retention_us));
  LogPage page;
  size_t examined = 0;
  size_t bytes = 0;
  bool more = false;
  std::string last_key;  // the last key returned or passed over
  Status decode;
  KL_RETURN_IF_ERROR(
      store_->Scan(kCallCfLogs, start, end, [&](std::string_view key, std::string_view value) {
        if (examined == kLogScanEntriesMax) {
          more = true;
          return false;
        }
        ++examined;
        LogHeader header;
        const bool is_entry = key.size() == prefix.size() + kSequenceBytes;  // ids hold no '\0'
        if (is_entry && !DecodeLogHeader(value, &header)) {
          decode = Status::Corruption("log entry: bad header");
          return false;
        }
        if (!is_entry || !Matches(query, from_us, header)) {
          last_key.assign(key);
          return true;
        }
        if (page.entries.size() == query.limit || bytes >= kLogPageBytesMax) {
          more = true;
          return false;
        }
        decode = DecodeLogEntry(key, value, &page.entries.emplace_back());
        bytes += value.size();
        last_key.assign(key);
        return decode.ok();
      }));
  KL_RETURN_IF_ERROR(decode);
  if (more) {
    assert(!last_key.empty());
    page.next_cursor = ToHex(reinterpret_cast<const uint8_t*>(last_key.data()), last_key.size());
  }
  return page;
}

Result<std::vector<MetricsBucket>> CallProjections::Metrics(MetricsScope scope, std::string_view id,
                                                            int64_t from_us, int64_t to_us,
                                                            int64_t step_us) const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  return state_->metrics.Query(scope, id, from_us, to_us, step_us);
}

Result<MetricsBucket> CallProjections::Totals(MetricsScope scope, std::string_view id,
                                              int64_t from_us, int64_t to_us) const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  return state_->metrics.Totals(scope, id, from_us, to_us);
}

Result<CallProjections::MetricsView> CallProjections::MetricsWithTotals(
    MetricsScope scope, std::string_view id, int64_t from_us, int64_t to_us,
    int64_t step_us) const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  MetricsView view;
  KL_ASSIGN_OR_RETURN(view.series, state_->metrics.Query(scope, id, from_us, to_us, step_us));
  KL_ASSIGN_OR_RETURN(view.totals, state_->metrics.Totals(scope, id, from_us, to_us));
  view.position = state_->position;
  return view;
}

namespace {

WorkspaceUsage UsageOf(const call_projections_internal::FoldState& state,
                       std::string_view workspace_id, const BillingMonth& month) {
  WorkspaceUsage out;
  out.month = month;
  out.position = state.position;
  auto ws = state.usage.find(workspace_id);
  if (ws == state.usage.end()) return out;
  auto it = ws->second.find(month);
  if (it == ws->second.end()) return out;
  out.total = it->second.total;
  out.keys.reserve(it->second.by_key.size());
  for (const auto& [key_id, units] : it->second.by_key) {
    out.keys.push_back(KeyUsage{key_id, units.units});
  }
  return out;
}

// FoldUsage's result: usage folded in memory, never changed after.
class FoldedUsage final : public UsageReader {
 public:
  explicit FoldedUsage(std::unique_ptr<call_projections_internal::FoldState> state)
      : state_(std::move(state)) {}
  WorkspaceUsage UsageFor(std::string_view workspace_id, const BillingMonth& month) const override {
    return UsageOf(*state_, workspace_id, month);
  }

 private:
  const std::unique_ptr<call_projections_internal::FoldState> state_;
};

}  // namespace

WorkspaceUsage CallProjections::UsageFor(std::string_view workspace_id,
                                         const BillingMonth& month) const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  return UsageOf(*state_, workspace_id, month);
}

std::vector<BillingMonth> CallProjections::UsageMonths(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(state_mu_);
  std::vector<BillingMonth> out;
  auto ws = state_->usage.find(workspace_id);
  if (ws == state_->usage.end()) return out;
  for (const auto& entry : ws->second) out.push_back(entry.first);
  return out;
}

// ---- Rebuild ---------------------------------------------------------------------------

namespace {

// Returns InvalidArgument (field "until") if `until` is beyond the ledger head.
Status CheckUntil(const Ledger& ledger, uint64_t until) {
  const uint64_t head = ledger.head().sequence;
  if (until <= head) return Status::Ok();
  return Status::InvalidArgument("until (" + std::to_string(until) +
                                     ") is beyond the ledger head (" + std::to_string(head) + ")",
                                 "until");
}

}  // namespace

Result<Hash> RebuildCallProjectionsDigest(const Ledger& ledger, uint64_t until,
                                          const std::function<void(uint64_t)>& progress) {
  CallProjectionsRebuildOptions options;
  options.progress = progress;
  KL_ASSIGN_OR_RETURN(RebuiltCallProjections rebuilt,
                      RebuildCallProjections(ledger, until, options));
  return rebuilt.digest;
}

Result<RebuiltCallProjections> RebuildCallProjections(
    const Ledger& ledger, uint64_t until, const CallProjectionsRebuildOptions& options) {
  KL_RETURN_IF_ERROR(CheckUntil(ledger, until));
  const uint64_t head = ledger.head().sequence;
  call_projections_internal::FoldState state;
  state.keep_log_entries = options.keep_log_entries;
  const call_projections_internal::OtherEventsFn* other =
      options.other_events ? &options.other_events : nullptr;
  KL_RETURN_IF_ERROR(call_projections_internal::FoldInMemory(
      ledger, until == 0 ? head : until, &state, options.progress,
      call_projections_internal::FoldParts::kAll, other));
  if (options.folded) options.folded();
  RebuiltCallProjections rebuilt;
  rebuilt.digest = call_projections_internal::DigestOf(state);
  rebuilt.log_entries = std::move(state.log_entries);
  return rebuilt;
}

Result<std::unique_ptr<UsageReader>> FoldUsage(const Ledger& ledger, uint64_t to) {
  KL_RETURN_IF_ERROR(CheckUntil(ledger, to));
  auto state = std::make_unique<call_projections_internal::FoldState>();
  KL_RETURN_IF_ERROR(call_projections_internal::FoldInMemory(
      ledger, to, state.get(), {}, call_projections_internal::FoldParts::kUsageOnly));
  return std::unique_ptr<UsageReader>(std::make_unique<FoldedUsage>(std::move(state)));
}

Hash EmptyCallProjectionsDigest() {
  return call_projections_internal::DigestOf(call_projections_internal::FoldState{});
}

// ---- Read-only snapshot (audit) --------------------------------------------------------

namespace {

// Opens the store at `path` as a secondary instance and checks its format.
Result<std::unique_ptr<KvStore>> OpenSnapshotStore(const std::string& path,
                                                   const std::string& secondary_path) {
  KvStoreOptions options = StoreOptions();
  options.mode = OpenMode::kSecondary;
  options.secondary_path = secondary_path;
  KL_ASSIGN_OR_RETURN(auto store, KvStore::Open(path, options));
  KL_ASSIGN_OR_RETURN(auto format, store->Get(kCallCfMeta, kFormatKey));
  if (!format || *format != kFormatVersion) {
    return Status::FailedPrecondition("the call projections at " + path + " have format '" +
                                      format.value_or("") + "', not '" + kFormatVersion +
                                      "' (the server rebuilds them at its next start)");
  }
  return store;
}

}  // namespace

Result<uint64_t> ReadCallProjectionsPosition(const std::string& path,
                                             const std::string& secondary_path) {
  KL_ASSIGN_OR_RETURN(auto store, OpenSnapshotStore(path, secondary_path));
  call_projections_internal::FoldState state;
  KL_RETURN_IF_ERROR(LoadMeta(*store, &state));
  return state.position;
}

namespace {

// Returns the stored log entries in sequence order; Corruption for a key
// that is not a log key or a sequence beyond `position`.
Result<std::vector<LogEntryHash>> ReadStoredLogEntries(const KvStore& store, uint64_t position) {
  std::vector<LogEntryHash> entries;
  std::string record;
  Status bad;
  KL_RETURN_IF_ERROR(store.Scan(
      kCallCfLogs, "", "",
      [&](std::string_view key, std::string_view value) {
        if (key.size() <= kSequenceBytes || key[key.size() - kSequenceBytes - 1] != '\0') {
          bad = Status::Corruption("call projections: a log key of an unknown shape");
          return false;
        }
        const uint64_t sequence = std::numeric_limits<uint64_t>::max() -
                                  DecodeBigEndian64(key.data() + key.size() - kSequenceBytes);
        if (sequence == 0 || sequence > position) {
          bad = Status::Corruption("call projections: a log entry beyond the position", sequence);
          return false;
        }
        record.assign(key);
        record.append(value);
        entries.push_back(LogEntryHash{sequence, 0, HashBytes(record)});
        return true;
      },
      ScanKind::kBulk));
  KL_RETURN_IF_ERROR(bad);
  std::sort(entries.begin(), entries.end(),
            [](const LogEntryHash& a, const LogEntryHash& b) { return a.sequence < b.sequence; });
  return entries;
}

}  // namespace

namespace {

// Returns the digest of the records `store` holds (see DigestOf), reading
// the meta records into `meta`.
Result<Hash> StoredDigest(const KvStore& store, call_projections_internal::FoldState* meta) {
  using call_projections_internal::DigestParts;
  using call_projections_internal::kMetricsSlices;
  using call_projections_internal::MetricsSliceOf;
  KL_RETURN_IF_ERROR(LoadMeta(store, meta));
  DigestParts parts;
  parts.log_chain = meta->log_chain;
  parts.usage_rejected = meta->usage_rejected;
  std::array<RecordHasher, kMetricsSlices> slices;
  Status bad;
  auto cell = [&](std::string_view key, std::string_view value) {
    MetricsFold::CellRef ref;
    if (!ParseMetricsKey(key, &ref)) {
      bad = Status::Corruption("call projections: bad metrics key");
      return false;
    }
    slices[MetricsSliceOf(ref.scope, ref.id)].AddKeyValue(key, value);
    return true;
  };
  // Hashing costs about as much as reading: read on another core.
  KL_RETURN_IF_ERROR(ScanAhead::OfStore(store, kCallCfMetrics, "", "")->Scan(cell));
  KL_RETURN_IF_ERROR(bad);
  for (size_t slice = 0; slice < kMetricsSlices; ++slice) parts.metrics[slice] = slices[slice].Finish();
  RecordHasher usage;
  KL_RETURN_IF_ERROR(store.Scan(kCallCfUsage, "", "", [&](std::string_view key, std::string_view value) {
    usage.AddKeyValue(key, value);
    return true;
  }, ScanKind::kBulk));
  parts.usage = usage.Finish();
  RecordHasher zones;
  KL_RETURN_IF_ERROR(store.Scan(kCallCfMeta, kZoneKeyPrefix, kZoneKeyEnd,
                                [&](std::string_view key, std::string_view value) {
                                  zones.AddKeyValue(key, value);
                                  return true;
                                },
                                ScanKind::kBulk));
  parts.zones = zones.Finish();
  return call_projections_internal::CombineDigest(parts);
}

}  // namespace

Result<CallProjectionsSnapshot> LoadCallProjectionsSnapshot(const std::string& path,
                                                            const std::string& secondary_path) {
  KL_ASSIGN_OR_RETURN(auto store, OpenSnapshotStore(path, secondary_path));
  call_projections_internal::FoldState meta;
  CallProjectionsSnapshot snapshot;
  KL_ASSIGN_OR_RETURN(snapshot.digest, StoredDigest(*store, &meta));
  snapshot.position = meta.position;
  KL_ASSIGN_OR_RETURN(snapshot.log_swept_before_us, ReadLogSweptBefore(*store));
  KL_ASSIGN_OR_RETURN(snapshot.log_entries, ReadStoredLogEntries(*store, meta.position));
  return snapshot;
}

// One merge walk in sequence order; the first disagreement is reported.
Status CheckLogEntries(const std::vector<LogEntryHash>& stored,
                       const std::vector<LogEntryHash>& made, int64_t swept_before_us) {
  size_t s = 0;
  size_t m = 0;
  while (s < stored.size() || m < made.size()) {
    if (s > 0 && s < stored.size() && stored[s].sequence == stored[s - 1].sequence) {
      return Status::Corruption("more than one log entry names this event", stored[s].sequence);
    }
    const bool stored_first =
        m == made.size() || (s < stored.size() && stored[s].sequence < made[m].sequence);
    if (stored_first) {
      return Status::Corruption("a log entry of an event that is not a logged call",
                                stored[s].sequence);
    }
    const bool both = s < stored.size() && stored[s].sequence == made[m].sequence;
    if (both) {
      if (stored[s].record_hash != made[m].record_hash) {
        return Status::Corruption("a log entry differs from the call it was made from",
                                  stored[s].sequence);
      }
      ++s;
    } else if (made[m].occurred_at_us >= swept_before_us) {
      // A call older than the cutoff may have had an entry that expired.
      return Status::Corruption("the log entry of a logged call is missing", made[m].sequence);
    }
    ++m;
  }
  return Status::Ok();
}

}  // namespace keyledger
