#include "ledger/ledger.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <span>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/verify_chain.h"

namespace keyledger {
namespace {

constexpr char kHeadKey[] = "head";
constexpr char kFormatKey[] = "format";
constexpr char kFormatVersion[] = "keyledger-ledger-1";
constexpr size_t kHashBytes = 32;
constexpr size_t kStreamReadEventsMax = 100'000;

using ledger_internal::AppendStreamKey;
using ledger_internal::StreamKey;

std::string_view EventIdKey(const EventId& id) {
  return std::string_view(reinterpret_cast<const char*>(id.data()), id.size());
}

// Big-endian, like AppendBigEndian64, into a fixed buffer.
void PutBigEndian64(char out[8], uint64_t value) {
  for (int i = 7; i >= 0; i--) {
    out[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

// Heterogeneous lookup: find a std::string key by std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

std::string EncodeHead(const LedgerHead& head) {
  std::string v;
  AppendBigEndian64(&v, head.sequence);
  v.append(reinterpret_cast<const char*>(head.hash.data()), head.hash.size());
  return v;
}

Status ValidateNewEvents(const std::vector<NewEvent>& events) {
  if (events.empty()) return Status::InvalidArgument("no events to append", "events");
  if (events.size() > kAppendEventsMax) {
    return Status::InvalidArgument("at most " + std::to_string(kAppendEventsMax) +
                                   " events per append", "events");
  }
  for (const auto& e : events) {
    KL_RETURN_IF_ERROR(ValidateStreamId(e.stream_id));
    if (e.actor.size() > kActorBytesMax) {
      return Status::InvalidArgument("actor too long", "actor");
    }
  }
  if (events.size() > 1) {
    // Any total order finds duplicates: two native words compare inline,
    // where the arrays' operator< calls memcmp (200 instructions per event).
    static_assert(sizeof(EventId) == 2 * sizeof(uint64_t));
    std::vector<std::pair<uint64_t, uint64_t>> ids(events.size());
    for (size_t i = 0; i < events.size(); i++) {
      std::memcpy(&ids[i].first, events[i].event_id.data(), sizeof(uint64_t));
      std::memcpy(&ids[i].second, events[i].event_id.data() + sizeof(uint64_t), sizeof(uint64_t));
    }
    std::sort(ids.begin(), ids.end());
    if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) {
      return Status::InvalidArgument("an event id appears twice in one append", "event_id");
    }
  }
  return Status::Ok();
}

}  // namespace

// Stream ids are printable ASCII without spaces, so a NUL can end them in keys.
Status ValidateStreamId(std::string_view id) {
  if (id.empty() || id.size() > kStreamIdBytesMax) {
    return Status::InvalidArgument("stream id must be 1.." + std::to_string(kStreamIdBytesMax) +
                                   " bytes", "stream_id");
  }
  for (char c : id) {
    if (c <= 0x20 || c >= 0x7f) {
      return Status::InvalidArgument("stream id must be printable ASCII", "stream_id");
    }
  }
  return Status::Ok();
}

Status SplitStoredValue(std::string_view value, Hash* hash, std::string_view* body) {
  if (value.size() <= kHashBytes) return Status::Corruption("stored event too short");
  std::memcpy(hash->data(), value.data(), kHashBytes);
  *body = value.substr(kHashBytes);
  return Status::Ok();
}

std::string EventKey(uint64_t sequence) {
  std::string key;
  AppendBigEndian64(&key, sequence);
  return key;
}

// A stream's version in the ledger's cache: as stored, and as the group
// being committed takes it (when pending_group is that group's number).
struct CachedVersion {
  uint64_t stored = 0;
  uint64_t pending = 0;
  uint64_t pending_group = 0;
};

// One caller of Append waiting in the group-commit queue.
struct Writer {
  const std::vector<NewEvent>* events = nullptr;
  Durability durability = Durability::kSync;
  bool done = false;
  Status status;
  AppendResult result;
  std::condition_variable cv;
};

struct Ledger::Rep {
  LedgerOptions options;
  std::unique_ptr<KvStore> store;

  // mu guards everything below it, and the writer queue.
  //
  // A group commit has two stages. Stage 1 (one group at a time, in queue
  // order) checks ids and versions, chains the hashes and writes the batch
  // to RocksDB without fsync: the events are then in the memtable and the
  // OS, not yet on disk. Stage 2 fsyncs the WAL and publishes the group:
  // `head` moves and the writers are answered. Group N's stage 2 overlaps
  // group N + 1's stage 1, so the fsync is off the serial path; groups are
  // published strictly in order (tickets), so `head` only ever covers
  // events that are durable (for kSync writers; a group of kAsync writers
  // alone is published once written) and reads are bounded by it
  // (ReadRange, ReadStream; the projections scan up to it): nothing
  // unpublished is seen.
  mutable std::mutex mu;
  mutable std::condition_variable appended;  // signalled when head moves or on close
  std::condition_variable published;         // signalled when published_ticket moves
  std::deque<Writer*> writers;               // waiting for a stage-1 leader
  bool leading = false;                      // a leader is in stage 1
  LedgerHead written_head;                   // head after every stage 1 so far
  uint64_t tickets_issued = 0;               // stage-1 groups so far
  uint64_t written_ticket = 0;               // the last group whose stage 1 ended
  uint64_t durable_ticket = 0;               // every group <= this is fsynced
  bool syncing = false;                      // an fsync is running (one at a time)
  uint64_t published_ticket = 0;             // the last group published
  LedgerHead head;               // published: what readers see
  uint64_t synced_sequence = 0;  // every event <= this is on disk (fsync'ed)
  int64_t last_recorded_at_us = 0;
  bool closed = false;
  // The first failed write or fsync after which the store may hold events
  // that are not durable: every later append fails with it (an fsync that
  // failed once may have dropped the pages; a later one succeeding proves
  // nothing), until the process restarts and RocksDB recovers the WAL.
  // Groups from broken_from_ticket on fail with it (those already answered
  // were kAsync alone); earlier ones are answered once their own fsync ends.
  Status broken;
  uint64_t broken_from_ticket = UINT64_MAX;
  LedgerStats stats;

  // Touched only by the group-commit leader (one at a time; the leader
  // updates `stored` under mu once its group is written).
  std::unordered_map<std::string, CachedVersion, StringHash, std::equal_to<>> stream_versions;
  uint64_t group_number = 0;  // the group being committed; 0: none yet
  // Entries the current group gave a pending version, some maybe twice or
  // rolled back since (pending_group tells). References into stream_versions
  // stay valid: it is cleared only between groups.
  std::vector<CachedVersion*> pending_streams;
  EventEncoder encoder{kHashBytes};  // leaves room for the hash: stored = hash || body
  std::unique_ptr<KvBatch> batch;    // reused, so its buffer is allocated once

  Result<uint64_t> LookupStreamVersion(std::string_view stream_id) const;
  // The cache entry of `stream_id`, read from the store on a miss.
  Result<CachedVersion*> CachedStreamVersion(std::string_view stream_id);
  // Stage 1 of a group commit (see mu): writes the group's new events after
  // `start` without fsync. Sets *new_head, and *needs_sync when a kSync
  // writer's events (new, or the originals of its retried ids) may not be
  // on disk yet: those past `synced`, a snapshot of synced_sequence.
  // noexcept: an exception here (std::bad_alloc; the adapters it calls turn
  // every library's into a Status) would leave `leading` set and every
  // queued writer waiting forever. Ending the process instead leaves the
  // store as the last write left it, which Open recovers.
  Status CommitGroup(const std::vector<Writer*>& group, const LedgerHead& start, int64_t now_us,
                     uint64_t synced, LedgerHead* new_head, bool* needs_sync) noexcept;
  // Takes the writers at the front of the queue, up to group_events_max
  // events (at least one writer), out of it. REQUIRES: mu held, a writer queued.
  std::vector<Writer*> TakeGroup();
  // After the group's batch is written: its pending versions become stored.
  // REQUIRES: mu held, by the leader that committed the group.
  void StorePendingVersions();
  // Returns once group `ticket` is on disk: an fsync started after its
  // write covers it, so one fsync serves every group written while the
  // previous one ran. Returns `broken` if the ledger broke before that.
  // REQUIRES: `lock` holds mu; group `ticket` has ended stage 1.
  Status AwaitDurable(uint64_t ticket, std::unique_lock<std::mutex>& lock);
  // Records the first failure that may leave non-durable events in the
  // store: group `from_ticket` and every later one fail with it.
  // REQUIRES: mu held.
  void Break(const Status& failure, uint64_t from_ticket);
  // Stage 2's end: unless `io` failed, moves head to new_head; answers the
  // group's writers (each with `io` if it failed).
  // REQUIRES: mu held; every earlier ticket published.
  void Publish(const std::vector<Writer*>& group, const LedgerHead& start,
               const LedgerHead& new_head, bool synced_now, uint64_t write_us,
               const Status& io);
  Result<Event> DecodeStored(uint64_t sequence, std::string_view value) const;
};

Result<uint64_t> Ledger::Rep::LookupStreamVersion(std::string_view stream_id) const {
  std::string floor(stream_id);
  floor.push_back('\0');
  KL_ASSIGN_OR_RETURN(auto found,
                      store->SeekForPrev(kCfStreams, StreamKey(stream_id, UINT64_MAX), floor));
  if (!found) return uint64_t{0};
  const std::string& key = found->first;
  if (key.size() != floor.size() + 8) return Status::Corruption("bad stream index key");
  return DecodeBigEndian64(key.data() + floor.size());
}

Result<CachedVersion*> Ledger::Rep::CachedStreamVersion(std::string_view stream_id) {
  auto it = stream_versions.find(stream_id);
  if (it != stream_versions.end()) return &it->second;
  KL_ASSIGN_OR_RETURN(uint64_t version, LookupStreamVersion(stream_id));
  return &stream_versions.emplace(std::string(stream_id), CachedVersion{.stored = version})
              .first->second;
}

std::vector<Writer*> Ledger::Rep::TakeGroup() {
  assert(!writers.empty());
  std::vector<Writer*> group;
  size_t group_events = 0;
  while (!writers.empty()) {
    Writer* w = writers.front();
    if (!group.empty() && group_events + w->events->size() > options.group_events_max) break;
    group.push_back(w);
    group_events += w->events->size();
    writers.pop_front();
  }
  return group;
}

void Ledger::Rep::Break(const Status& failure, uint64_t from_ticket) {
  assert(!failure.ok());
  if (broken.ok()) broken = failure;
  broken_from_ticket = std::min(broken_from_ticket, from_ticket);
}

Status Ledger::Rep::AwaitDurable(uint64_t ticket, std::unique_lock<std::mutex>& lock) {
  assert(written_ticket >= ticket);
  while (durable_ticket < ticket && broken_from_ticket > ticket) {
    if (syncing) {
      published.wait(lock);
      continue;
    }
    syncing = true;
    const uint64_t target = written_ticket;
    lock.unlock();
    Status sync = store->SyncWal();
    lock.lock();
    syncing = false;
    if (sync.ok()) {
      durable_ticket = std::max(durable_ticket, target);
    } else {
      Break(sync, durable_ticket + 1);
    }
    published.notify_all();
  }
  return durable_ticket >= ticket && ticket < broken_from_ticket ? Status::Ok() : broken;
}

void Ledger::Rep::StorePendingVersions() {
  for (CachedVersion* v : pending_streams) {
    if (v->pending_group == group_number) v->stored = v->pending;
  }
  pending_streams.clear();
}

Ledger::Ledger(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
Ledger::~Ledger() { Close(); }

namespace {

// Returns Ok if `last`, the last entry of the events family (if any), is the
// event at `head_sequence` (none when 0), else Corruption naming where the
// log and its head record part.
Status TailMatchesHead(const std::optional<std::pair<std::string, std::string>>& last,
                       uint64_t head_sequence) {
  if (last && last->first.size() != 8) {
    return Status::Corruption("the last stored event key is not a sequence", head_sequence + 1);
  }
  const uint64_t last_sequence = last ? DecodeBigEndian64(last->first.data()) : 0;
  if (last_sequence == head_sequence) return Status::Ok();
  return Status::Corruption("head record says " + std::to_string(head_sequence) +
                                " but the last stored event is " + std::to_string(last_sequence),
                            std::max(last_sequence, head_sequence));
}

}  // namespace

Result<std::unique_ptr<Ledger>> Ledger::Open(const std::string& path,
                                             const LedgerOptions& options) {
  assert(options.clock != nullptr);
  auto rep = std::make_unique<Rep>();
  rep->options = options;
  KvStoreOptions kv = options.storage;
  kv.mode = options.mode;
  kv.secondary_path = options.secondary_path;
  // Order matches LedgerColumnFamily. "streams" is scanned, not probed.
  kv.column_families = {{.name = "events", .ascending_keys = true},
                        {.name = "streams", .ordered_group_delimiter = '\0'},
                        {.name = "event_ids", .point_lookups = true, .random_point_keys = true},
                        {.name = "meta"}};
  KL_ASSIGN_OR_RETURN(rep->store, KvStore::Open(path, kv));
  rep->batch = std::make_unique<KvBatch>(*rep->store);

  KL_ASSIGN_OR_RETURN(auto format, rep->store->Get(kCfMeta, kFormatKey));
  if (format && *format != kFormatVersion) {
    return Status::Corruption("unknown ledger format '" + *format + "' in " + path);
  }
  KL_ASSIGN_OR_RETURN(auto head_value, rep->store->Get(kCfMeta, kHeadKey));
  if (head_value) {
    if (head_value->size() != 8 + kHashBytes) return Status::Corruption("bad head record");
    rep->head.sequence = DecodeBigEndian64(head_value->data());
    std::memcpy(rep->head.hash.data(), head_value->data() + 8, kHashBytes);
  }
  // The head and the last event are written in one batch, so they must agree.
  assert(!options.open_past_head_mismatch || options.mode != OpenMode::kReadWrite);
  KL_ASSIGN_OR_RETURN(auto last, rep->store->SeekForPrev(kCfEvents, EventKey(UINT64_MAX), ""));
  Status tail = TailMatchesHead(last, rep->head.sequence);
  if (!tail.ok() && !options.open_past_head_mismatch) return tail;
  if (last && tail.ok()) {
    const uint64_t last_sequence = rep->head.sequence;
    Result<Event> event = rep->DecodeStored(last_sequence, last->second);
    if (event.ok()) {
      rep->last_recorded_at_us = event->recorded_at_us;
    } else if (options.mode == OpenMode::kReadWrite) {
      return event.status();  // never append after a damaged tail
    }
    // A read-only view (the audit tools) opens anyway: Verify walks the log
    // in order and names the first bad event, which may come before this one.
  }
  if (!format && options.mode == OpenMode::kReadWrite) {
    KvBatch batch(*rep->store);
    batch.Put(kCfMeta, kFormatKey, kFormatVersion);
    KL_RETURN_IF_ERROR(rep->store->Write(batch, Durability::kSync));
  }
  rep->synced_sequence = rep->head.sequence;  // recovered from disk, so durable
  rep->written_head = rep->head;
  return std::unique_ptr<Ledger>(new Ledger(std::move(rep)));
}

Result<Event> Ledger::Rep::DecodeStored(uint64_t sequence, std::string_view value) const {
  Hash hash;
  std::string_view body;
  Status split = SplitStoredValue(value, &hash, &body);
  if (!split.ok()) return Status::Corruption(split.message(), sequence);
  auto decoded = DecodeEventBody(body);
  if (!decoded.ok()) return Status::Corruption(decoded.status().message(), sequence);
  Event event = std::move(decoded).value();
  if (event.sequence != sequence) {
    return Status::Corruption("event stored under sequence " + std::to_string(sequence) +
                                  " says " + std::to_string(event.sequence),
                              sequence);
  }
  if (!ConstantTimeEqual(ChainHash(event.prev_hash, body), hash)) {
    return Status::Corruption("hash mismatch", sequence);
  }
  event.hash = hash;
  return event;
}

// Prepares and writes one group. Per-writer outcomes go into each Writer
// (Conflict, InvalidArgument); the returned Status is the group's I/O outcome.
// Each event is encoded (into the encoder's reused buffer), hashed in place
// and copied once, into the WriteBatch; a writer that fails is rolled back
// out of the batch to its save point.
// REQUIRES: called by the current leader only, without holding mu.
Status Ledger::Rep::CommitGroup(const std::vector<Writer*>& group, const LedgerHead& start,
                                int64_t now_us, uint64_t synced, LedgerHead* new_head,
                                bool* needs_sync_out) noexcept {
  // 1. Which proposed events are already stored? One MultiGet for the group.
  size_t group_events = 0;
  for (Writer* w : group) group_events += w->events->size();
  assert(pending_streams.empty());
  group_number++;
  // The cache is bounded between groups, so no entry moves during one.
  if (stream_versions.size() + group_events > options.stream_cache_entries_max) {
    stream_versions.clear();
  }
  std::vector<std::string_view> id_views;
  id_views.reserve(group_events);
  for (Writer* w : group) {
    for (const auto& e : *w->events) id_views.push_back(EventIdKey(e.event_id));
  }
  std::vector<std::optional<std::string>> stored;
  KL_RETURN_IF_ERROR(store->MultiGet(kCfEventIds, id_views, &stored));

  // A group that once grew the batch past 8 MiB gives that memory back.
  constexpr size_t kBatchBytesRetained = 8u << 20;
  if (batch->bytes() > kBatchBytesRetained) batch = std::make_unique<KvBatch>(*store);
  batch->Clear();
  // Views into the writers' events, which outlive the group.
  std::unordered_map<std::string_view, uint64_t> group_ids;  // id -> sequence, earlier writers
  // (stream, what it was) per change by the current writer, to undo it.
  std::vector<std::pair<CachedVersion*, CachedVersion>> undo;
  std::string stream_key;
  LedgerHead head = start;
  size_t writer_base = 0;  // index of this writer's first event in id_views
  bool needs_sync = false;

  for (size_t wi = 0; wi < group.size(); wi++) {
    Writer* w = group[wi];
    const auto& events = *w->events;
    w->result.sequences.assign(events.size(), 0);
    LedgerHead tentative = head;
    Status status;
    const size_t base = writer_base;
    writer_base += events.size();
    undo.clear();
    batch->SetSavePoint();
    for (size_t i = 0; i < events.size(); i++) {
      const NewEvent& e = events[i];
      const auto& original = stored[base + i];
      auto in_group = group_ids.empty() ? group_ids.end() : group_ids.find(id_views[base + i]);
      if (original || in_group != group_ids.end()) {
        if (original && original->size() != 8) return Status::Corruption("bad event id index");
        uint64_t seq = original ? DecodeBigEndian64(original->data()) : in_group->second;
        w->result.sequences[i] = seq;
        w->result.duplicates++;
        needs_sync |= seq > synced && w->durability == Durability::kSync;
        continue;
      }
      const std::string_view stream_id = e.stream_id;
      auto cached = CachedStreamVersion(stream_id);
      if (!cached.ok()) return cached.status();
      CachedVersion& stream = **cached;
      const bool pending = stream.pending_group == group_number;
      const uint64_t current = pending ? stream.pending : stream.stored;
      if (e.expected_version && *e.expected_version != current) {
        status = Status::Conflict("stream " + e.stream_id + " is at version " +
                                  std::to_string(current) + ", expected " +
                                  std::to_string(*e.expected_version));
        break;
      }
      const uint64_t version = current + 1;
      const uint64_t sequence = tentative.sequence + 1;
      undo.emplace_back(&stream, stream);
      if (!pending) pending_streams.push_back(&stream);
      stream.pending = version;
      stream.pending_group = group_number;

      EnvelopeFields envelope;
      envelope.sequence = sequence;
      envelope.recorded_at_us = now_us;
      envelope.stream_id = &e.stream_id;
      envelope.stream_version = version;
      envelope.event_id = &e.event_id;
      envelope.actor = &e.actor;
      envelope.prev_hash = &tentative.hash;
      const std::span<char> value = encoder.Encode(envelope, e.body);  // room || body
      const std::string_view body(value.data() + kHashBytes, value.size() - kHashBytes);
      if (body.size() > kEventBytesMax) {
        status = Status::InvalidArgument("event " + std::to_string(i) + " encodes to " +
                                         std::to_string(body.size()) + " bytes, over the " +
                                         std::to_string(kEventBytesMax) + " limit",
                                         "events[" + std::to_string(i) + "]");
        break;
      }
      // hash(n) = BLAKE2b(hash(n-1) || body): with hash(n-1) in the room in
      // front of the body that is one contiguous input, and the room then
      // takes hash(n) (the same as ChainHash, in one call).
      std::memcpy(value.data(), tentative.hash.data(), kHashBytes);
      const Hash hash = HashBytes(std::string_view(value.data(), value.size()));
      std::memcpy(value.data(), hash.data(), kHashBytes);

      char sequence_be[8];
      PutBigEndian64(sequence_be, sequence);
      const std::string_view sequence_value(sequence_be, sizeof(sequence_be));
      batch->Put(kCfEvents, sequence_value, std::string_view(value.data(), value.size()));
      stream_key.clear();
      AppendStreamKey(stream_id, version, &stream_key);
      batch->Put(kCfStreams, stream_key, sequence_value);
      batch->Put(kCfEventIds, id_views[base + i], sequence_value);

      tentative.sequence = sequence;
      tentative.hash = hash;
      w->result.sequences[i] = sequence;
    }
    if (!status.ok()) {
      batch->RollbackToSavePoint();
      for (auto u = undo.rbegin(); u != undo.rend(); ++u) *u->first = u->second;
      w->status = status;
      continue;
    }
    batch->PopSavePoint();
    if (wi + 1 < group.size()) {
      // Later writers of this group may retry these ids.
      for (size_t i = 0; i < events.size(); i++) {
        const uint64_t seq = w->result.sequences[i];
        if (seq > head.sequence) group_ids.emplace(id_views[base + i], seq);
      }
    }
    head = tentative;
    if (w->durability == Durability::kSync) needs_sync = true;
  }

  *new_head = head;
  *needs_sync_out = needs_sync;
  if (head.sequence == start.sequence) return Status::Ok();
  batch->Put(kCfMeta, kHeadKey, EncodeHead(head));
  // Not synced here: stage 2 fsyncs, off the serial path (see mu).
  return store->Write(*batch, Durability::kAsync);
}

Result<AppendResult> Ledger::Append(const std::vector<NewEvent>& events,
                                    const AppendOptions& options) {
  KL_RETURN_IF_ERROR(ValidateNewEvents(events));
  if (rep_->options.mode != OpenMode::kReadWrite) {
    return Status::Unavailable("the ledger is open read-only");
  }
  Writer self;
  self.events = &events;
  self.durability = options.durability;

  std::unique_lock<std::mutex> lock(rep_->mu);
  if (rep_->closed) return Status::Unavailable("the ledger is closing");
  if (!rep_->broken.ok()) return rep_->broken;
  rep_->writers.push_back(&self);
  // A writer taken into a group has left the queue, which may then be empty.
  while (!self.done &&
         (rep_->leading || rep_->writers.empty() || &self != rep_->writers.front())) {
    self.cv.wait(lock);
  }
  if (self.done) {
    if (!self.status.ok()) return self.status;
    return std::move(self.result);
  }

  // This writer leads stage 1.
  const std::vector<Writer*> group = rep_->TakeGroup();
  rep_->leading = true;
  const uint64_t ticket = ++rep_->tickets_issued;
  const LedgerHead start = rep_->written_head;
  const uint64_t synced = rep_->synced_sequence;
  const Status broken = rep_->broken;
  // recorded_at never goes backwards, even if the wall clock does.
  const int64_t now_us = std::max(rep_->options.clock->NowUs(), rep_->last_recorded_at_us);
  lock.unlock();

  LedgerHead new_head = start;
  bool needs_sync = false;
  const auto write_start = std::chrono::steady_clock::now();
  Status io = broken.ok() ? rep_->CommitGroup(group, start, now_us, synced, &new_head, &needs_sync)
                          : broken;

  lock.lock();
  if (io.ok()) {
    assert(new_head.sequence >= start.sequence);
    rep_->StorePendingVersions();
    rep_->written_head = new_head;
    if (new_head.sequence > start.sequence) rep_->last_recorded_at_us = now_us;
  } else {
    // Forget the group's pending versions. A failed RocksDB write may have
    // left part of the batch behind: no later group may chain onto it.
    rep_->pending_streams.clear();
    rep_->stream_versions.clear();
    if (new_head.sequence > start.sequence) rep_->Break(io, ticket);
  }
  rep_->leading = false;
  rep_->written_ticket = ticket;
  if (!rep_->writers.empty()) rep_->writers.front()->cv.notify_one();

  // Stage 2: fsync (overlapping the next group's stage 1), then publish in order.
  if (io.ok() && needs_sync) io = rep_->AwaitDurable(ticket, lock);
  const auto write_us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - write_start).count();
  rep_->published.wait(lock, [&] { return rep_->published_ticket == ticket - 1; });
  // An earlier group this one chains onto may be lost.
  if (io.ok() && ticket >= rep_->broken_from_ticket) io = rep_->broken;
  rep_->Publish(group, start, new_head, needs_sync, static_cast<uint64_t>(write_us), io);
  rep_->published_ticket = ticket;
  rep_->published.notify_all();
  if (!self.status.ok()) return self.status;
  return std::move(self.result);
}

void Ledger::Rep::Publish(const std::vector<Writer*>& group, const LedgerHead& start,
                          const LedgerHead& new_head, bool synced_now, uint64_t write_us,
                          const Status& io) {
  if (io.ok()) {
    if (new_head.sequence > start.sequence) {
      const uint64_t stored = new_head.sequence - start.sequence;
      stats.group_commits++;
      stats.events_appended += stored;
      stats.group_events_max = std::max(stats.group_events_max, stored);
      stats.write_us_total += write_us;
      assert(head.sequence == start.sequence);
      head = new_head;
      appended.notify_all();
    }
    if (synced_now) synced_sequence = std::max(synced_sequence, new_head.sequence);
  }
  for (Writer* w : group) {
    if (!io.ok()) w->status = io;
    w->done = true;
    w->cv.notify_one();
  }
}

LedgerHead Ledger::head() const {
  std::lock_guard<std::mutex> lock(rep_->mu);
  return rep_->head;
}

Status Ledger::write_health() const {
  std::lock_guard<std::mutex> lock(rep_->mu);
  return rep_->broken;
}

LedgerStats Ledger::stats() const {
  std::lock_guard<std::mutex> lock(rep_->mu);
  return rep_->stats;
}

Result<std::vector<Event>> Ledger::ReadRange(uint64_t from, size_t max_events) const {
  std::vector<Event> out;
  from = std::max<uint64_t>(from, 1);
  // Only published events: a group being fsynced is in the store already.
  const uint64_t last = head().sequence;
  if (max_events == 0 || from > last) return out;
  max_events = static_cast<size_t>(std::min<uint64_t>(max_events, last - from + 1));
  Status decode_status;
  std::optional<Hash> expected_prev;
  if (from > 1) {
    // The predecessor's stored hash anchors the first event's prev_hash.
    auto prev = rep_->store->Get(kCfEvents, EventKey(from - 1));
    if (!prev.ok()) return prev.status();
    // Every sequence up to the head is stored: a missing one is damage,
    // and without it the first event's link could not be checked.
    if (!*prev) {
      return Status::Corruption("the ledger has no event " + std::to_string(from - 1), from - 1);
    }
    Hash h;
    std::string_view body;
    Status split = SplitStoredValue(**prev, &h, &body);
    if (!split.ok()) return Status::Corruption(split.message(), from - 1);
    expected_prev = h;
  } else {
    expected_prev = Hash{};
  }
  Status scan = rep_->store->Scan(kCfEvents, EventKey(from), "", [&](std::string_view key,
                                                                     std::string_view value) {
    uint64_t seq = key.size() == 8 ? DecodeBigEndian64(key.data()) : 0;
    uint64_t want = from + out.size();
    if (seq != want) {
      decode_status = Status::Corruption("missing event " + std::to_string(want), want);
      return false;
    }
    auto event = rep_->DecodeStored(seq, value);
    if (!event.ok()) {
      decode_status = event.status();
      return false;
    }
    if (expected_prev && !ConstantTimeEqual(*expected_prev, event->prev_hash)) {
      decode_status = Status::Corruption("chain broken: prev_hash differs from the stored hash "
                                         "of the previous event", seq);
      return false;
    }
    expected_prev = event->hash;
    out.push_back(std::move(event).value());
    return out.size() < max_events;
  });
  KL_RETURN_IF_ERROR(scan);
  KL_RETURN_IF_ERROR(decode_status);
  return out;
}

Result<Event> Ledger::Read(uint64_t sequence) const {
  KL_ASSIGN_OR_RETURN(auto events, ReadRange(sequence, 1));
  if (events.empty() || events.front().sequence != sequence) {
    return Status::NotFound("no event at sequence " + std::to_string(sequence));
  }
  return std::move(events.front());
}

Result<std::vector<Event>> Ledger::ReadStream(std::string_view stream_id, uint64_t from_version,
                                              size_t max_events) const {
  KL_RETURN_IF_ERROR(ValidateStreamId(stream_id));
  max_events = std::min(max_events, kStreamReadEventsMax);
  std::vector<uint64_t> sequences;
  Status bad;
  // Only published events (see ReadRange); a stream's sequences ascend.
  const uint64_t last = head().sequence;
  std::string start = StreamKey(stream_id, std::max<uint64_t>(from_version, 1));
  std::string end = StreamKey(stream_id, UINT64_MAX);
  KL_RETURN_IF_ERROR(rep_->store->Scan(kCfStreams, start, end, [&](std::string_view,
                                                                   std::string_view value) {
    if (value.size() != 8) {
      bad = Status::Corruption("bad stream index entry");
      return false;
    }
    const uint64_t sequence = DecodeBigEndian64(value.data());
    if (sequence > last) return false;
    sequences.push_back(sequence);
    return sequences.size() < max_events;
  }));
  KL_RETURN_IF_ERROR(bad);
  std::vector<Event> out;
  out.reserve(sequences.size());
  for (uint64_t seq : sequences) {
    KL_ASSIGN_OR_RETURN(Event e, Read(seq));
    if (e.stream_id != stream_id) {
      return Status::Corruption("stream index points at an event of another stream", seq);
    }
    out.push_back(std::move(e));
  }
  return out;
}

Result<uint64_t> Ledger::StreamVersion(std::string_view stream_id) const {
  KL_RETURN_IF_ERROR(ValidateStreamId(stream_id));
  return rep_->LookupStreamVersion(stream_id);
}

Status Ledger::ScanRaw(uint64_t from, uint64_t to,
                       const std::function<bool(uint64_t, std::string_view)>& fn) const {
  std::string end = to == 0 ? std::string() : EventKey(to + 1);
  if (to == UINT64_MAX) end.clear();
  Status bad;
  uint64_t last = std::max<uint64_t>(from, 1) - 1;  // the last sequence walked
  // From the family's start when walking from the first event, so that no
  // key sorting before sequence 1 goes unseen.
  KL_RETURN_IF_ERROR(rep_->store->Scan(
      kCfEvents, from <= 1 ? std::string() : EventKey(from), end,
      [&](std::string_view key, std::string_view value) {
        if (key.size() != 8 || DecodeBigEndian64(key.data()) == 0) {
          // Not a sequence: the log breaks right after the event it sorts after.
          bad = Status::Corruption("a stored event key is not a sequence", last + 1);
          return false;
        }
        last = DecodeBigEndian64(key.data());
        return fn(last, value);
      },
      ScanKind::kBulk));
  return bad;
}

uint64_t Ledger::WaitForSequence(uint64_t after, int64_t timeout_us) const {
  std::unique_lock<std::mutex> lock(rep_->mu);
  rep_->appended.wait_for(lock, std::chrono::microseconds(timeout_us), [&] {
    return rep_->closed || rep_->head.sequence > after;
  });
  return rep_->head.sequence;
}

Result<VerifyResult> Ledger::Verify(const std::function<void(uint64_t)>& progress,
                                    const VerifyOptions& options) const {
  KL_ASSIGN_OR_RETURN(VerifyResult result,
                      ledger_internal::VerifyChain(*this, *rep_->store, options, progress));
  LedgerHead stored_head = head();
  if (rep_->options.mode == OpenMode::kReadWrite &&
      (stored_head.sequence != result.head.sequence ||
       !ConstantTimeEqual(stored_head.hash, result.head.hash))) {
    return Status::Corruption("head record does not match the log", result.head.sequence + 1);
  }
  return result;
}

Status Ledger::CatchUp() {
  if (rep_->options.mode != OpenMode::kSecondary) {
    return Status::Unavailable("catch up applies to a secondary view only");
  }
  KL_RETURN_IF_ERROR(rep_->store->CatchUp());
  KL_ASSIGN_OR_RETURN(auto head_value, rep_->store->Get(kCfMeta, kHeadKey));
  // As Open: a head record of another size is damage, not "no news".
  if (head_value && head_value->size() != 8 + kHashBytes) {
    return Status::Corruption("bad head record");
  }
  std::lock_guard<std::mutex> lock(rep_->mu);
  if (head_value) {
    rep_->head.sequence = DecodeBigEndian64(head_value->data());
    std::memcpy(rep_->head.hash.data(), head_value->data() + 8, kHashBytes);
  }
  return Status::Ok();
}

Status Ledger::CatchUpTo(uint64_t sequence) {
  if (sequence <= head().sequence) return Status::Ok();
  if (rep_->options.mode == OpenMode::kSecondary) KL_RETURN_IF_ERROR(CatchUp());
  const uint64_t now = head().sequence;
  if (sequence <= now) return Status::Ok();
  return Status::Corruption(
      "sequence " + std::to_string(sequence) + " is beyond the ledger head " + std::to_string(now),
      sequence);
}

void Ledger::Close() {
  std::lock_guard<std::mutex> lock(rep_->mu);
  rep_->closed = true;
  rep_->appended.notify_all();
}

}  // namespace keyledger
