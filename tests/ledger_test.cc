#include "ledger/ledger.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/scan_ahead.h"
#include "ledger/thread_name.h"
#include "ledger/varint.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

using testing::MakeCallEvent;
using testing::MakeEventId;
using testing::ScratchDir;

class LedgerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Ledger> OpenLedger() {
    LedgerOptions options;
    options.clock = &clock_;
    auto ledger = Ledger::Open(dir_.sub("ledger"), options);
    EXPECT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    return ledger.ok() ? std::move(ledger).value() : nullptr;
  }

  // A read-only secondary view of the ledger, as the audit tools open it.
  Result<std::unique_ptr<Ledger>> OpenSecondaryView() {
    LedgerOptions options;
    options.clock = &clock_;
    options.mode = OpenMode::kSecondary;
    options.secondary_path = dir_.sub("secondary");
    return Ledger::Open(dir_.sub("ledger"), options);
  }

  ScratchDir dir_;
  ManualClock clock_{1'700'000'000'000'000};
};

NewEvent KeyRenamedEvent(uint64_t n, const std::string& stream, std::optional<uint64_t> expected) {
  NewEvent e;
  e.event_id = MakeEventId(n);
  e.stream_id = stream;
  e.expected_version = expected;
  e.actor = "operator";
  e.body = KeyRenamed{"ws_a", "key_a", "name-" + std::to_string(n)};
  return e;
}

TEST_F(LedgerTest, AppendAndReadBack) {
  auto ledger = OpenLedger();
  auto r = ledger->Append({MakeCallEvent(1), MakeCallEvent(2)});
  ASSERT_TRUE(r.ok()) << r.ToStatus().ToString();
  EXPECT_EQ(r->sequences, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(r->duplicates, 0u);
  EXPECT_EQ(ledger->head().sequence, 2u);

  auto events = ledger->ReadRange(1, 10);
  ASSERT_TRUE(events.ok()) << events.ToStatus().ToString();
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].sequence, 1u);
  EXPECT_EQ((*events)[0].stream_version, 1u);
  EXPECT_EQ((*events)[1].stream_version, 2u);
  EXPECT_EQ((*events)[0].prev_hash, Hash{});
  EXPECT_EQ((*events)[1].prev_hash, (*events)[0].hash);
  EXPECT_EQ((*events)[1].hash, ledger->head().hash);
  EXPECT_EQ((*events)[0].recorded_at_us, clock_.NowUs());
  EXPECT_EQ(std::get<ApiCallRecorded>((*events)[1].body).request_id, "req-2");

  auto stream = ledger->ReadStream("calls/key_a", 2, 10);
  ASSERT_TRUE(stream.ok());
  ASSERT_EQ(stream->size(), 1u);
  EXPECT_EQ(stream->front().sequence, 2u);
  EXPECT_EQ(ledger->StreamVersion("calls/key_a").value(), 2u);
  EXPECT_EQ(ledger->StreamVersion("calls/other").value(), 0u);
  EXPECT_EQ(ledger->Read(3).status().code(), Code::kNotFound);
}

TEST_F(LedgerTest, WrongExpectedVersionConflictsAndStoresNothing) {
  auto ledger = OpenLedger();
  ASSERT_TRUE(ledger->Append({KeyRenamedEvent(1, "key/key_a", 0)}).ok());
  auto conflict = ledger->Append({KeyRenamedEvent(2, "key/key_b", 0),
                                  KeyRenamedEvent(3, "key/key_a", 0)});
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.status().code(), Code::kConflict);
  EXPECT_EQ(ledger->head().sequence, 1u);  // the key_b event of that call was not stored
  EXPECT_EQ(ledger->StreamVersion("key/key_b").value(), 0u);
  auto ok = ledger->Append({KeyRenamedEvent(3, "key/key_a", 1)});
  ASSERT_TRUE(ok.ok()) << ok.ToStatus().ToString();
  EXPECT_EQ(ok->sequences.front(), 2u);
}

TEST_F(LedgerTest, RetriedEventIdReturnsOriginalSequence) {
  auto ledger = OpenLedger();
  ASSERT_TRUE(ledger->Append({MakeCallEvent(1), MakeCallEvent(2)}).ok());
  auto retry = ledger->Append({MakeCallEvent(2), MakeCallEvent(3)});
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->sequences, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(retry->duplicates, 1u);
  EXPECT_EQ(ledger->head().sequence, 3u);
  // A retry carrying a stale expected version is still acknowledged: it is the same event.
  auto stale = ledger->Append({KeyRenamedEvent(9, "key/key_a", 0)});
  ASSERT_TRUE(stale.ok());
  auto stale_retry = ledger->Append({KeyRenamedEvent(9, "key/key_a", 0)});
  ASSERT_TRUE(stale_retry.ok());
  EXPECT_EQ(stale_retry->sequences, stale->sequences);
}

TEST_F(LedgerTest, RejectsBadInput) {
  auto ledger = OpenLedger();
  EXPECT_EQ(ledger->Append({}).status().code(), Code::kInvalidArgument);
  auto bad_stream = MakeCallEvent(1);
  bad_stream.stream_id = "has space";
  EXPECT_EQ(ledger->Append({bad_stream}).status().field(), "stream_id");
  EXPECT_EQ(ledger->Append({MakeCallEvent(1), MakeCallEvent(1)}).status().code(),
            Code::kInvalidArgument);
  auto huge = MakeCallEvent(2, "key_a", std::string(kEventBytesMax, 'x'));
  EXPECT_EQ(ledger->Append({huge}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ledger->Append({MakeCallEvent(3), huge}).status().field(), "events[1]");
  EXPECT_EQ(ledger->head().sequence, 0u);
}

TEST_F(LedgerTest, ReopenKeepsEverythingAndContinuesTheChain) {
  LedgerHead before;
  {
    auto ledger = OpenLedger();
    for (uint64_t i = 1; i <= 50; i++) ASSERT_TRUE(ledger->Append({MakeCallEvent(i)}).ok());
    before = ledger->head();
  }
  auto ledger = OpenLedger();
  EXPECT_EQ(ledger->head().sequence, before.sequence);
  EXPECT_EQ(ledger->head().hash, before.hash);
  auto dup = ledger->Append({MakeCallEvent(10)});
  ASSERT_TRUE(dup.ok());
  EXPECT_EQ(dup->sequences.front(), 10u);
  auto next = ledger->Append({MakeCallEvent(51)});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->sequences.front(), 51u);
  auto read = ledger->Read(51);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->prev_hash, before.hash);
  EXPECT_EQ(read->stream_version, 51u);
  auto verified = ledger->Verify();
  ASSERT_TRUE(verified.ok()) << verified.ToStatus().ToString();
  EXPECT_EQ(verified->events_verified, 51u);
}

// Writes directly into the ledger's RocksDB, as an attacker with disk access would.
void Tamper(const std::string& path, const std::function<void(KvStore&, KvBatch&)>& edit) {
  KvStoreOptions options;
  options.column_families = {{"events"}, {"streams"}, {"event_ids"}, {"meta"}};
  auto store = KvStore::Open(path, options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  KvBatch batch(**store);
  edit(**store, batch);
  ASSERT_TRUE((*store)->Write(batch, Durability::kSync).ok());
}

std::string StoredValue(KvStore& store, uint64_t seq) {
  auto v = store.Get(kCfEvents, EventKey(seq));
  EXPECT_TRUE(v.ok() && v->has_value());
  return v.ok() && v->has_value() ? **v : std::string();
}

// Parameter: VerifyOptions::reader_hashes_at_lag_events, so every tamper case
// is found when the reading thread hashes every event (0), when the checking
// thread does (UINT64_MAX), and when the two share it event by event (1).
class TamperTest : public LedgerTest, public ::testing::WithParamInterface<uint64_t> {
 protected:
  void SetUp() override {
    auto ledger = OpenLedger();
    for (uint64_t i = 1; i <= 20; i++) ASSERT_TRUE(ledger->Append({MakeCallEvent(i)}).ok());
  }
  Status VerifyAfterReopen() {
    LedgerOptions options;
    options.clock = &clock_;
    auto ledger = Ledger::Open(dir_.sub("ledger"), options);
    if (!ledger.ok()) return ledger.status();
    VerifyOptions verify;
    verify.reader_hashes_at_lag_events = GetParam();
    return (*ledger)->Verify({}, verify).ToStatus();
  }
};

INSTANTIATE_TEST_SUITE_P(WhoHashes, TamperTest,
                         ::testing::Values(uint64_t{0}, std::numeric_limits<uint64_t>::max(),
                                           uint64_t{1}),
                         [](const ::testing::TestParamInfo<uint64_t>& info) {
                           return std::string(info.param == 0   ? "ReadingThread"
                                              : info.param == 1 ? "EitherThread"
                                                                : "CheckingThread");
                         });

TEST_P(TamperTest, AnUntouchedLogVerifies) {
  EXPECT_TRUE(VerifyAfterReopen().ok());
}

TEST_P(TamperTest, FlippedByteIsFoundWithItsSequence) {
  Tamper(dir_.sub("ledger"), [](KvStore& store, KvBatch& batch) {
    std::string v = StoredValue(store, 7);
    v[v.size() - 20] ^= 0x01;
    batch.Put(kCfEvents, EventKey(7), v);
  });
  Status s = VerifyAfterReopen();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_EQ(s.sequence(), 7u) << s.ToString();
  // Reading it fails too, with the same sequence.
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  auto read = ledger->ReadRange(1, 100);
  EXPECT_EQ(read.status().code(), Code::kCorruption);
  EXPECT_EQ(read.status().sequence(), 7u);
}

// The event-id index is what makes appends idempotent: with an entry gone,
// a retry of that event would be stored twice. Verify finds the gap (and,
// once it happened, the second copy), unless told to skip the indexes.
TEST_P(TamperTest, ADeletedEventIdEntryIsFoundUnlessIndexesAreSkipped) {
  Tamper(dir_.sub("ledger"), [](KvStore&, KvBatch& batch) {
    const EventId id = MakeEventId(9);
    batch.Delete(kCfEventIds, std::string(reinterpret_cast<const char*>(id.data()), id.size()));
  });
  Status s = VerifyAfterReopen();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_EQ(s.sequence(), 9u) << s.ToString();
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  VerifyOptions chain_only;
  chain_only.reader_hashes_at_lag_events = GetParam();
  chain_only.check_indexes = false;
  EXPECT_TRUE(ledger->Verify({}, chain_only).ok());
  auto again = ledger->Append({MakeCallEvent(9)});  // the retry the index no longer stops
  ASSERT_TRUE(again.ok());
  VerifyOptions full;
  full.reader_hashes_at_lag_events = GetParam();
  Status after = ledger->Verify({}, full).ToStatus();
  EXPECT_EQ(after.code(), Code::kCorruption);
  EXPECT_EQ(after.sequence(), 9u) << after.ToString();
}

TEST_P(TamperTest, DeletedEventIsFound) {
  Tamper(dir_.sub("ledger"),
         [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(12)); });
  Status s = VerifyAfterReopen();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_EQ(s.sequence(), 12u) << s.ToString();
}

// A read starting right after a deleted event cannot check its first link:
// it says so rather than return events unchecked.
TEST_P(TamperTest, AReadStartingAfterADeletedEventNamesIt) {
  Tamper(dir_.sub("ledger"),
         [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(12)); });
  LedgerOptions options;
  options.clock = &clock_;
  auto ledger = Ledger::Open(dir_.sub("ledger"), options);
  ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
  auto read = (*ledger)->ReadRange(13, 5);
  EXPECT_EQ(read.ToStatus().code(), Code::kCorruption);
  EXPECT_EQ(read.ToStatus().sequence(), 12u) << read.ToStatus().ToString();
  EXPECT_TRUE((*ledger)->ReadRange(14, 5).ok());  // its neighbours read as before
}

TEST_P(TamperTest, DeletedLastEventIsFoundAtOpen) {
  Tamper(dir_.sub("ledger"),
         [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(20)); });
  Status s = VerifyAfterReopen();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_EQ(s.sequence(), 20u) << s.ToString();
}

TEST_P(TamperTest, SwappedEventsAreFound) {
  Tamper(dir_.sub("ledger"), [](KvStore& store, KvBatch& batch) {
    std::string a = StoredValue(store, 4);
    std::string b = StoredValue(store, 5);
    batch.Put(kCfEvents, EventKey(4), b);
    batch.Put(kCfEvents, EventKey(5), a);
  });
  Status s = VerifyAfterReopen();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_EQ(s.sequence(), 4u) << s.ToString();
}

TEST_F(LedgerTest, WaitForSequenceWakesOnAppend) {
  auto ledger = OpenLedger();
  std::thread appender([&] { ASSERT_TRUE(ledger->Append({MakeCallEvent(1)}).ok()); });
  uint64_t head = 0;
  for (int i = 0; i < 100 && head == 0; i++) head = ledger->WaitForSequence(0, 100'000);
  appender.join();
  EXPECT_EQ(head, 1u);
  EXPECT_EQ(ledger->WaitForSequence(1, 1'000), 1u);  // times out, returns the head
}

// A group's fsync overlaps the next group's write, so the store holds
// events past the head while appends run: reads must never return them
// (an event seen there could still be lost). All events share one stream,
// so a stream version equals the sequence.
TEST_F(LedgerTest, ReadsNeverReturnEventsPastTheHeadWhileAppendsRun) {
  auto ledger = OpenLedger();
  constexpr uint64_t kWriters = 4;
  constexpr uint64_t kAppendsPerWriter = 150;
  constexpr uint64_t kEventsPerAppend = 5;
  std::atomic<bool> writing{true};
  std::atomic<uint64_t> failed_appends{0};
  std::vector<std::thread> writers;
  for (uint64_t t = 0; t < kWriters; t++) {
    writers.emplace_back([&, t] {
      for (uint64_t a = 0; a < kAppendsPerWriter; a++) {
        std::vector<NewEvent> events;
        for (uint64_t i = 0; i < kEventsPerAppend; i++) {
          events.push_back(MakeCallEvent((t * kAppendsPerWriter + a) * kEventsPerAppend + i + 1));
        }
        AppendOptions ao;
        ao.durability = a % 2 == 0 ? Durability::kSync : Durability::kAsync;
        if (!ledger->Append(events, ao).ok()) failed_appends++;
      }
    });
  }
  uint64_t reads = 0;
  uint64_t past_head = 0;
  uint64_t short_reads = 0;
  Status read_error;
  std::string stream;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  // Failures end the loop rather than the test, so the writers are joined.
  while (writing.load() && read_error.ok() && std::chrono::steady_clock::now() < deadline) {
    const uint64_t before = ledger->head().sequence;
    auto events = ledger->ReadRange(1, 1'000'000);
    if (!events.ok()) {
      read_error = events.status();
      break;
    }
    if (!events->empty() && stream.empty()) stream = events->front().stream_id;
    std::vector<Event> tail;
    if (!stream.empty()) {
      auto read = ledger->ReadStream(stream, before > 20 ? before - 20 : 1, 100);
      if (!read.ok()) {
        read_error = read.status();
        break;
      }
      tail = std::move(read).value();
    }
    const uint64_t after = ledger->head().sequence;
    if (events->size() < before) short_reads++;
    if (!events->empty() && events->back().sequence > after) past_head++;
    if (!tail.empty() && tail.back().sequence > after) past_head++;
    reads++;
    if (after == kWriters * kAppendsPerWriter * kEventsPerAppend) writing = false;
    if (failed_appends.load() > 0) writing = false;
  }
  for (auto& w : writers) w.join();
  EXPECT_TRUE(read_error.ok()) << read_error.ToString();
  EXPECT_EQ(failed_appends.load(), 0u);
  EXPECT_GT(reads, 0u);
  EXPECT_EQ(past_head, 0u) << "of " << reads << " reads";
  EXPECT_EQ(short_reads, 0u) << "of " << reads << " reads";
  EXPECT_EQ(ledger->head().sequence, kWriters * kAppendsPerWriter * kEventsPerAppend);
}

// A gate on the ledger's WAL syncs (KvStoreOptions::wal_sync_gate): holds
// them while shut, fails them with `failure` when set.
class WalSyncGate {
 public:
  Status Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    entered_++;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    return failure_;
  }
  void Shut() { Set([&] { open_ = false; }); }
  void Open() { Set([&] { open_ = true; }); }
  void FailWith(Status failure) { Set([&] { failure_ = std::move(failure); }); }
  uint64_t entered() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_;
  }
  // Returns whether `count` syncs have entered the gate within 30 s (at
  // once when they do: the limit only ends a test that went wrong).
  bool AwaitEntered(uint64_t count) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [&] { return entered_ >= count; });
  }

 private:
  template <typename F>
  void Set(F change) {
    std::lock_guard<std::mutex> lock(mu_);
    change();
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  Status failure_;
  uint64_t entered_ = 0;
};

Result<std::unique_ptr<Ledger>> OpenGated(const std::string& path, const Clock* clock,
                                          const std::shared_ptr<WalSyncGate>& gate) {
  LedgerOptions options;
  options.clock = clock;
  options.storage.wal_sync_gate = [gate] { return gate->Pass(); };
  return Ledger::Open(path, options);
}

// The write of a group reaches RocksDB before its fsync: a kSync append is
// answered, and its event becomes readable, only once the fsync is done.
TEST_F(LedgerTest, ASyncedAppendIsAnsweredOnlyAfterItsFsync) {
  auto gate = std::make_shared<WalSyncGate>();
  auto ledger = OpenGated(dir_.sub("gated"), &clock_, gate);
  ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
  gate->Shut();
  const uint64_t syncs_before = gate->entered();
  std::atomic<bool> answered{false};
  Status appended;
  std::thread appender([&] {
    appended = (*ledger)->Append({MakeCallEvent(1)}).ToStatus();
    answered = true;
  });
  const bool held = gate->AwaitEntered(syncs_before + 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const bool answered_while_held = answered.load();
  const uint64_t head_while_held = (*ledger)->head().sequence;
  auto read_while_held = (*ledger)->ReadRange(1, 10);
  gate->Open();
  appender.join();
  EXPECT_TRUE(held) << "the append never synced";
  EXPECT_FALSE(answered_while_held) << "answered before its fsync ended";
  EXPECT_EQ(head_while_held, 0u);
  ASSERT_TRUE(read_while_held.ok());
  EXPECT_TRUE(read_while_held->empty()) << "an event being synced was read";
  EXPECT_TRUE(appended.ok()) << appended.ToString();
  EXPECT_EQ((*ledger)->head().sequence, 1u);
}

// After a failed fsync nothing is published and every append fails, even
// once the disk answers again (the failed sync may have dropped pages): also
// a kAsync group written while that fsync ran, which chains onto the lost
// events and needs no fsync of its own. Reopened, the ledger recovers what
// its WAL holds and takes appends again.
TEST_F(LedgerTest, AFailedFsyncBreaksTheLedgerUntilItIsReopened) {
  auto gate = std::make_shared<WalSyncGate>();
  {
    auto ledger = OpenGated(dir_.sub("gated"), &clock_, gate);
    ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    ASSERT_TRUE((*ledger)->Append({MakeCallEvent(1)}).ok());
    gate->Shut();
    const uint64_t syncs_before = gate->entered();
    Status synced_append;
    std::thread synced([&] { synced_append = (*ledger)->Append({MakeCallEvent(2)}).ToStatus(); });
    const bool held = gate->AwaitEntered(syncs_before + 1);
    Status async_append;
    std::thread async([&] {
      AppendOptions options;
      options.durability = Durability::kAsync;
      async_append = (*ledger)->Append({MakeCallEvent(3)}, options).ToStatus();
    });
    // Event 3's group is written (stage 1) while event 2's fsync is held:
    // ScanRaw with to == 0 reads the store past the head.
    bool written = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!written && std::chrono::steady_clock::now() < deadline) {
      Status scan = (*ledger)->ScanRaw(3, 0, [&](uint64_t sequence, std::string_view) {
        written = sequence == 3;
        return false;
      });
      if (!scan.ok()) break;
      if (!written) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    gate->FailWith(Status::IOError("injected fsync failure"));
    gate->Open();
    synced.join();
    async.join();
    EXPECT_TRUE(held) << "the append never synced";
    EXPECT_TRUE(written) << "event 3 was not written while event 2's fsync was held";
    EXPECT_EQ(synced_append.code(), Code::kIOError) << synced_append.ToString();
    EXPECT_EQ(async_append.code(), Code::kIOError) << async_append.ToString();
    gate->FailWith(Status::Ok());
    auto later = (*ledger)->Append({MakeCallEvent(4)});
    EXPECT_EQ(later.ToStatus().code(), Code::kIOError) << later.ToStatus().ToString();
    EXPECT_EQ((*ledger)->head().sequence, 1u);
    auto events = (*ledger)->ReadRange(1, 10);
    ASSERT_TRUE(events.ok());
    EXPECT_EQ(events->size(), 1u);
  }
  auto reopened = OpenGated(dir_.sub("gated"), &clock_, gate);
  ASSERT_TRUE(reopened.ok()) << reopened.ToStatus().ToString();
  const uint64_t recovered = (*reopened)->head().sequence;
  EXPECT_LE(recovered, 3u);  // events 2 and 3 reached the WAL, maybe the disk
  auto retried = (*reopened)->Append({MakeCallEvent(2), MakeCallEvent(3), MakeCallEvent(4)});
  ASSERT_TRUE(retried.ok()) << retried.ToStatus().ToString();
  EXPECT_EQ(retried->sequences, (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_EQ(retried->duplicates, recovered - 1);
  auto verified = (*reopened)->Verify();
  ASSERT_TRUE(verified.ok()) << verified.ToStatus().ToString();
  EXPECT_EQ(verified->events_verified, 4u);
}

// A head record of the wrong size is damage for a secondary's catch-up, as
// for Open: the view keeps its head and says so.
TEST_F(LedgerTest, ASecondaryCatchUpRefusesADamagedHeadRecord) {
  { ASSERT_TRUE(OpenLedger()->Append({MakeCallEvent(1), MakeCallEvent(2)}).ok()); }
  auto view = OpenSecondaryView();
  ASSERT_TRUE(view.ok()) << view.ToStatus().ToString();
  Tamper(dir_.sub("ledger"), [](KvStore&, KvBatch& batch) { batch.Put(kCfMeta, "head", "short"); });
  EXPECT_EQ((*view)->CatchUp().code(), Code::kCorruption);
  EXPECT_EQ((*view)->head().sequence, 2u);
}

TEST_F(LedgerTest, SecondaryViewReadsARunningLedger) {
  auto ledger = OpenLedger();
  ASSERT_TRUE(ledger->Append({MakeCallEvent(1), MakeCallEvent(2)}).ok());
  auto view = OpenSecondaryView();
  ASSERT_TRUE(view.ok()) << view.ToStatus().ToString();
  EXPECT_EQ((*view)->head().sequence, 2u);
  EXPECT_EQ((*view)->Append({MakeCallEvent(3)}).status().code(), Code::kUnavailable);
  ASSERT_TRUE(ledger->Append({MakeCallEvent(3)}).ok());
  ASSERT_TRUE((*view)->CatchUp().ok());
  EXPECT_EQ((*view)->head().sequence, 3u);
  ASSERT_TRUE(ledger->Append({MakeCallEvent(4)}).ok());
  EXPECT_TRUE((*view)->CatchUpTo(3).ok());
  EXPECT_EQ((*view)->head().sequence, 3u);  // at 3 already: no catch-up
  ASSERT_TRUE((*view)->CatchUpTo(4).ok());
  EXPECT_EQ((*view)->head().sequence, 4u);
  Status beyond = (*view)->CatchUpTo(5);
  EXPECT_EQ(beyond.code(), Code::kCorruption);
  EXPECT_EQ(beyond.sequence(), 5u);
  EXPECT_EQ(ledger->CatchUpTo(4).code(), Code::kOk);  // a primary is always at its head
  EXPECT_EQ(ledger->CatchUpTo(5).code(), Code::kCorruption);
  auto verified = (*view)->Verify();
  ASSERT_TRUE(verified.ok()) << verified.ToStatus().ToString();
  EXPECT_EQ(verified->events_verified, 4u);
}

// Property: random interleavings of appends (with retries and stream
// conflicts) from several threads keep the log dense, every acknowledged event
// readable after reopen at the acknowledged sequence, the chain valid, and no
// event id stored twice.
RC_GTEST_PROP(LedgerProperty, ConcurrentAppendsStayDenseAndExact, ()) {
  const int threads = *rc::gen::inRange(2, 5);
  const int appends_per_thread = *rc::gen::inRange(1, 25);
  const int id_space = *rc::gen::inRange(5, 200);  // small space: many retries
  const auto durability =
      *rc::gen::element(Durability::kSync, Durability::kAsync);
  std::vector<std::vector<std::vector<uint64_t>>> plans(threads);
  for (auto& plan : plans) {
    for (int a = 0; a < appends_per_thread; a++) {
      plan.push_back(*rc::gen::unique<std::vector<uint64_t>>(
          *rc::gen::inRange<size_t>(1, 5), rc::gen::inRange<uint64_t>(1, id_space + 1)));
    }
  }
  ScratchDir dir;
  ManualClock clock(1'700'000'000'000'000);
  LedgerOptions options;
  options.clock = &clock;
  options.group_events_max = 7;  // force many groups
  std::map<uint64_t, uint64_t> acknowledged;  // event number -> sequence
  std::mutex ack_mu;
  bool consistent = true;
  {
    auto ledger = Ledger::Open(dir.sub("l"), options);
    RC_ASSERT(ledger.ok());
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; t++) {
      workers.emplace_back([&, t] {
        for (const auto& ids : plans[t]) {
          std::vector<NewEvent> events;
          for (uint64_t id : ids) events.push_back(MakeCallEvent(id, "key_" + std::to_string(id % 3)));
          AppendOptions ao;
          ao.durability = durability;
          auto r = (*ledger)->Append(events, ao);
          std::lock_guard<std::mutex> lock(ack_mu);
          if (!r.ok()) {
            consistent = false;
            continue;
          }
          for (size_t i = 0; i < ids.size(); i++) {
            auto [it, inserted] = acknowledged.emplace(ids[i], r->sequences[i]);
            if (!inserted && it->second != r->sequences[i]) consistent = false;
          }
        }
      });
    }
    for (auto& w : workers) w.join();
  }
  RC_ASSERT(consistent);
  auto ledger = Ledger::Open(dir.sub("l"), options);
  RC_ASSERT(ledger.ok());
  RC_ASSERT((*ledger)->head().sequence == acknowledged.size());
  auto events = (*ledger)->ReadRange(1, acknowledged.size() + 10);
  RC_ASSERT(events.ok());
  RC_ASSERT(events->size() == acknowledged.size());
  std::set<std::string> request_ids;
  for (size_t i = 0; i < events->size(); i++) {
    RC_ASSERT((*events)[i].sequence == i + 1);
    RC_ASSERT(request_ids.insert(std::get<ApiCallRecorded>((*events)[i].body).request_id).second);
  }
  for (auto [id, seq] : acknowledged) {
    RC_ASSERT(std::get<ApiCallRecorded>((*events)[seq - 1].body).request_id ==
              "req-" + std::to_string(id));
  }
  auto verified = (*ledger)->Verify();
  RC_ASSERT(verified.ok());
  RC_ASSERT(verified->events_verified == acknowledged.size());
}

// Appenders race on a few streams with expected versions, some of them
// stale, through small groups and a stream-version cache that may hold a
// single stream: a conflicting writer is rolled back out of a group another
// writer of the same group may have advanced the stream in.
RC_GTEST_PROP(LedgerProperty, ExpectedVersionsHoldUnderConcurrentAppends, ()) {
  const int threads = *rc::gen::inRange(2, 5);
  const int appends_per_thread = *rc::gen::inRange(1, 20);
  const size_t cache_entries = *rc::gen::element<size_t>(1, 2, 1'000);
  constexpr int kStreams = 3;
  ScratchDir dir;
  ManualClock clock(1'700'000'000'000'000);
  LedgerOptions options;
  options.clock = &clock;
  options.group_events_max = 5;
  options.stream_cache_entries_max = cache_entries;
  // Each thread's plan: per append, (stream, offset from the version the
  // thread last saw, kNone: no expectation) per event.
  constexpr int kNone = -2;
  using Plan = std::vector<std::vector<std::pair<int, int>>>;
  std::vector<Plan> plans(threads);
  for (auto& plan : plans) {
    for (int a = 0; a < appends_per_thread; a++) {
      plan.push_back(*rc::gen::container<std::vector<std::pair<int, int>>>(
          *rc::gen::inRange<size_t>(1, 4),
          rc::gen::pair(rc::gen::inRange(0, kStreams), rc::gen::inRange(kNone, 2))));
    }
  }
  auto stream_name = [](int s) { return "key/key_" + std::to_string(s); };
  std::mutex mu;
  std::vector<std::string> failures;
  // sequence -> expected version of the event stored there.
  std::map<uint64_t, uint64_t> expectations;
  std::atomic<uint64_t> next_id{1};
  {
    auto ledger = Ledger::Open(dir.sub("l"), options);
    RC_ASSERT(ledger.ok());
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; t++) {
      workers.emplace_back([&, t] {
        for (const auto& append : plans[t]) {
          std::vector<NewEvent> events;
          std::map<int, uint64_t> seen;  // this append's view of its streams
          for (const auto& [stream, offset] : append) {
            std::optional<uint64_t> expected;
            if (offset != kNone) {
              auto known = seen.find(stream);
              uint64_t base = known != seen.end()
                                  ? known->second
                                  : (*ledger)->StreamVersion(stream_name(stream)).value();
              expected = static_cast<uint64_t>(std::max<int64_t>(0, int64_t(base) + offset));
            }
            events.push_back(KeyRenamedEvent(next_id++, stream_name(stream), expected));
            if (expected) seen[stream] = *expected + 1;
          }
          auto r = (*ledger)->Append(events);
          std::lock_guard<std::mutex> lock(mu);
          if (!r.ok()) {
            if (r.status().code() != Code::kConflict) failures.push_back(r.status().ToString());
            continue;
          }
          for (size_t i = 0; i < events.size(); i++) {
            if (events[i].expected_version) {
              expectations[r->sequences[i]] = *events[i].expected_version;
            }
          }
        }
      });
    }
    for (auto& w : workers) w.join();
  }
  RC_ASSERT(failures.empty());
  auto ledger = Ledger::Open(dir.sub("l"), options);
  RC_ASSERT(ledger.ok());
  RC_ASSERT((*ledger)->Verify().ok());  // versions dense per stream
  auto events = (*ledger)->ReadRange(1, 10'000);
  RC_ASSERT(events.ok());
  std::map<std::string, uint64_t> counts;
  for (const Event& e : *events) {
    RC_ASSERT(e.stream_version == ++counts[e.stream_id]);
    auto expected = expectations.find(e.sequence);
    if (expected != expectations.end()) RC_ASSERT(e.stream_version == expected->second + 1);
  }
  for (int s = 0; s < kStreams; s++) {
    const uint64_t count = counts[stream_name(s)];
    RC_ASSERT((*ledger)->StreamVersion(stream_name(s)).value() == count);
    if (count > 0) {
      auto stale = (*ledger)->Append({KeyRenamedEvent(next_id++, stream_name(s), count - 1)});
      RC_ASSERT(!stale.ok());
      RC_ASSERT(stale.status().code() == Code::kConflict);
    }
    RC_ASSERT((*ledger)->Append({KeyRenamedEvent(next_id++, stream_name(s), count)}).ok());
    RC_ASSERT((*ledger)->Append({KeyRenamedEvent(next_id++, stream_name(s), count + 1)}).ok());
  }
}

// Total bytes of the write-ahead log files in a RocksDB directory.
uint64_t WalBytes(const std::string& path) {
  // RocksDB may delete a file while we list: skip what vanished.
  uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    if (entry.path().extension() != ".log") continue;
    const uintmax_t size = std::filesystem::file_size(entry.path(), ec);
    if (!ec) bytes += size;
  }
  return bytes;
}

KvStoreOptions TwoFamilies() {
  KvStoreOptions options;
  options.column_families = {{"bulk"}, {"small"}};
  return options;
}

// Writes `batches` batches of 64 KiB into "bulk", each with a few bytes into
// "small" (as the ledger writes its head into meta with every append).
void WriteBulkAndSmall(KvStore& store, int batches) {
  const std::string value(64u << 10, 'v');
  for (int i = 0; i < batches; i++) {
    KvBatch batch(store);
    batch.Put(0, EventKey(static_cast<uint64_t>(i) + 1), value);
    batch.Put(1, "head", std::to_string(i));
    ASSERT_TRUE(store.Write(batch, Durability::kAsync).ok());
  }
}

TEST(KvStoreTest, ASmallFamilyDoesNotPinTheWholeLog) {
  ScratchDir dir;
  KvStoreOptions options = TwoFamilies();
  options.write_buffer_bytes = 2u << 20;
  options.wal_bytes_max = 1u << 20;
  options.flush_on_close = false;
  auto store = KvStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  WriteBulkAndSmall(**store, 256);  // 16 MiB: "bulk" fills eight memtables
  // Each filled "bulk" memtable starts a new log file; once the closed files
  // pass wal_bytes_max RocksDB flushes "small" too, which frees them. Without
  // the limit "small" would pin all 16 MiB. Flushes run in the background:
  // allow them a few seconds on a loaded machine.
  uint64_t wal_bytes = WalBytes(dir.path());
  for (int i = 0; i < 100 && wal_bytes >= (6u << 20); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    wal_bytes = WalBytes(dir.path());
  }
  EXPECT_LT(wal_bytes, 6u << 20);
  EXPECT_EQ((*(*store)->Get(1, "head")).value_or(""), "255");
}

TEST(KvStoreTest, CloseFlushesSoTheNextOpenReplaysNoLog) {
  ScratchDir dir;
  {
    auto store = KvStore::Open(dir.path(), TwoFamilies());
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    WriteBulkAndSmall(**store, 64);  // 4 MiB
    EXPECT_GT(WalBytes(dir.path()), 4u << 20);
  }
  EXPECT_LT(WalBytes(dir.path()), 64u << 10);
  auto store = KvStore::Open(dir.path(), TwoFamilies());
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  EXPECT_EQ((*(*store)->Get(1, "head")).value_or(""), "63");
  EXPECT_EQ((*(*store)->Get(0, EventKey(64))).value_or("").size(), 64u << 10);
}

TEST(KvStoreTest, BulkAndShortScansReturnTheSame) {
  ScratchDir dir;
  auto store = KvStore::Open(dir.path(), TwoFamilies());
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  WriteBulkAndSmall(**store, 32);
  ASSERT_TRUE((*store)->Flush().ok());  // read from table files, not only the memtable
  std::vector<std::string> seen[2];
  for (ScanKind kind : {ScanKind::kShort, ScanKind::kBulk}) {
    auto& keys = seen[kind == ScanKind::kBulk];
    ASSERT_TRUE((*store)
                    ->Scan(0, EventKey(3), EventKey(30),
                           [&](std::string_view key, std::string_view value) {
                             EXPECT_EQ(value.size(), 64u << 10);
                             keys.emplace_back(key);
                             return true;
                           },
                           kind)
                    .ok());
  }
  EXPECT_EQ(seen[0].size(), 27u);
  EXPECT_EQ(seen[0], seen[1]);
}

// keyledger's own memtables (ledger/memtables.h).
enum class Memtable { kHashed, kAscending, kGrouped };

// A store with one family in `memtable`. Closing does not flush, so a
// reopen replays the log into a new memtable.
KvStoreOptions FamilyIn(Memtable memtable) {
  KvStoreOptions options;
  ColumnFamilySpec spec{.name = "f"};
  spec.point_lookups = memtable == Memtable::kHashed;
  spec.random_point_keys = memtable == Memtable::kHashed;
  spec.ascending_keys = memtable == Memtable::kAscending;
  if (memtable == Memtable::kGrouped) spec.ordered_group_delimiter = '\0';
  options.column_families = {spec};
  options.flush_on_close = false;
  return options;
}

// Keys from a small pool, so that puts and deletes hit the same keys again
// (several versions of a key in one memtable), with bytes that make sort
// prefixes tie: "", "\0", "a", "a\0", long keys sharing 8 bytes.
rc::Gen<std::string> PoolKey() {
  return rc::gen::elementOf(std::vector<std::string>{
      "", std::string(1, '\0'), "a", std::string("a\0", 2), "ab", "b", "\xff",
      "0123456789abcdef", "0123456789abcdeg", "01234567", "01234567\xff", "zzzzzzzzzzzzzzzzzzzz"});
}

// Keys that mostly ascend, as the log's do, with a key from the pool now
// and then (out of order, or a second version of a key).
rc::Gen<std::string> MostlyAscendingKey(uint64_t* next) {
  return rc::gen::exec([next] {
    if (*rc::gen::inRange(0, 8) == 0) return *PoolKey();
    return EventKey((*next)++);
  });
}

// Keys "<group>\0<version>" with versions ascending per group, groups
// interleaved (a stream index), and a key from the pool now and then.
rc::Gen<std::string> MostlyAscendingPerGroupKey(std::map<std::string, uint64_t>* versions) {
  return rc::gen::exec([versions] {
    if (*rc::gen::inRange(0, 8) == 0) return *PoolKey();
    const std::string group =
        *rc::gen::elementOf(std::vector<std::string>{"", "a", "ab", "b", "calls/k1", "calls/k10"});
    std::string key = group + std::string(1, '\0');
    AppendBigEndian64(&key, ++(*versions)[group]);
    return key;
  });
}

// Every read of a family in `memtable` agrees with a std::map, before and
// after flushes and reopens: Get, MultiGet, ordered scans, SeekForPrev.
void CheckReadsAsAMap(Memtable memtable, const rc::Gen<std::string>& key_gen) {
  ScratchDir dir;
  auto store = KvStore::Open(dir.path(), FamilyIn(memtable));
  RC_ASSERT(store.ok());
  std::map<std::string, std::string> model;
  const int steps = *rc::gen::inRange(1, 120);
  for (int step = 0; step < steps; step++) {
    const int op = *rc::gen::inRange(0, 11);
    const std::string key = *key_gen;
    if (op <= 3) {
      const std::string value = *rc::gen::container<std::string>(rc::gen::character<char>());
      KvBatch batch(**store);
      batch.Put(0, key, value);
      RC_ASSERT((*store)->Write(batch, Durability::kAsync).ok());
      model[key] = value;
    } else if (op == 4) {
      KvBatch batch(**store);
      batch.Delete(0, key);
      RC_ASSERT((*store)->Write(batch, Durability::kAsync).ok());
      model.erase(key);
    } else if (op == 5) {
      RC_ASSERT((*store)->Flush().ok());
    } else if (op == 6) {
      (*store).reset();  // closes it: RocksDB allows one open per directory
      store = KvStore::Open(dir.path(), FamilyIn(memtable));
      RC_ASSERT(store.ok());
    } else if (op == 7) {
      const auto floor = model.upper_bound(key);
      auto found = (*store)->SeekForPrev(0, key, "");
      RC_ASSERT(found.ok());
      if (floor == model.begin()) {
        RC_ASSERT(!found->has_value());
      } else {
        RC_ASSERT(found->has_value());
        RC_ASSERT((*found)->first == std::prev(floor)->first);
        RC_ASSERT((*found)->second == std::prev(floor)->second);
      }
    } else if (op == 8) {  // the first few pairs at or after `key`
      std::vector<std::pair<std::string, std::string>> scanned;
      RC_ASSERT((*store)
                    ->Scan(0, key, "",
                           [&](std::string_view k, std::string_view v) {
                             scanned.emplace_back(k, v);
                             return scanned.size() < 3;
                           })
                    .ok());
      std::vector<std::pair<std::string, std::string>> expected;
      for (auto it = model.lower_bound(key); it != model.end() && expected.size() < 3; ++it) {
        expected.emplace_back(*it);
      }
      RC_ASSERT(scanned == expected);
    } else {
      auto got = (*store)->Get(0, key);
      RC_ASSERT(got.ok());
      const auto want = model.find(key);
      RC_ASSERT(got->has_value() == (want != model.end()));
      if (want != model.end()) RC_ASSERT(**got == want->second);
    }
  }
  std::vector<std::pair<std::string, std::string>> scanned;
  RC_ASSERT((*store)
                ->Scan(0, "", "",
                       [&](std::string_view key, std::string_view value) {
                         scanned.emplace_back(key, value);
                         return true;
                       })
                .ok());
  const std::vector<std::pair<std::string, std::string>> model_pairs(model.begin(), model.end());
  RC_ASSERT(scanned == model_pairs);
  std::vector<std::string> pool = {"",   "a",          "b",          "0123456789abcdef",
                                   "01234567\xff", EventKey(1), EventKey(3), "nope"};
  std::vector<std::string_view> keys(pool.begin(), pool.end());
  std::vector<std::optional<std::string>> values;
  RC_ASSERT((*store)->MultiGet(0, keys, &values).ok());
  for (size_t i = 0; i < pool.size(); i++) {
    const auto want = model.find(pool[i]);
    RC_ASSERT(values[i].has_value() == (want != model.end()));
    if (want != model.end()) RC_ASSERT(*values[i] == want->second);
  }
}

RC_GTEST_PROP(KvStoreProperty, HashedFamilyReadsAsAMap, ()) {
  CheckReadsAsAMap(Memtable::kHashed, PoolKey());
}

RC_GTEST_PROP(KvStoreProperty, AscendingFamilyReadsAsAMapInAnyOrder, ()) {
  CheckReadsAsAMap(Memtable::kAscending, PoolKey());
}

RC_GTEST_PROP(KvStoreProperty, AscendingFamilyReadsAsAMapWhileKeysMostlyAscend, ()) {
  uint64_t next = 1;
  CheckReadsAsAMap(Memtable::kAscending, MostlyAscendingKey(&next));
}

RC_GTEST_PROP(KvStoreProperty, GroupedFamilyReadsAsAMapInAnyOrder, ()) {
  CheckReadsAsAMap(Memtable::kGrouped, PoolKey());
}

RC_GTEST_PROP(KvStoreProperty, GroupedFamilyReadsAsAMapWhileGroupsMostlyAscend, ()) {
  std::map<std::string, uint64_t> versions;
  CheckReadsAsAMap(Memtable::kGrouped, MostlyAscendingPerGroupKey(&versions));
}

// Lookups while the writer inserts (and the hash table grows, or the array
// takes new chunks, under them) find every key written before they began.
// `stride` 1 writes keys in order, a large odd one scatters them.
void CheckFindsKeysWhileItGrows(Memtable memtable, uint64_t stride) {
  ScratchDir dir;
  auto store = KvStore::Open(dir.path(), FamilyIn(memtable));
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  // The hash table starts at 65,536 slots (it grows 3 times), the array's
  // chunks hold 16,384 entries (it takes 13).
  constexpr uint64_t kKeys = 200'000;
  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> misses{0};
  std::thread reader([&] {
    uint64_t probe = 1;
    while (written.load() < kKeys) {
      const uint64_t upto = written.load();
      if (upto == 0) continue;
      probe = probe * 6364136223846793005ull + 1442695040888963407ull;
      const uint64_t i = probe % upto;
      auto got = (*store)->Get(0, EventKey(i * stride));
      if (!got.ok() || !got->has_value() || **got != std::to_string(i)) misses++;
    }
  });
  for (uint64_t i = 0; i < kKeys; i++) {
    KvBatch batch(**store);
    batch.Put(0, EventKey(i * stride), std::to_string(i));
    ASSERT_TRUE((*store)->Write(batch, Durability::kAsync).ok());
    written.store(i + 1);
  }
  reader.join();
  EXPECT_EQ(misses.load(), 0u);
  uint64_t previous = 0;
  uint64_t count = 0;
  ASSERT_TRUE((*store)
                  ->Scan(0, "", "",
                         [&](std::string_view key, std::string_view) {
                           const uint64_t k = DecodeBigEndian64(key.data());
                           EXPECT_TRUE(count == 0 || k > previous);
                           previous = k;
                           count++;
                           return true;
                         })
                  .ok());
  EXPECT_EQ(count, kKeys);
}

TEST(KvStoreTest, HashedFamilyFindsKeysWhileItGrows) {
  CheckFindsKeysWhileItGrows(Memtable::kHashed, 0x9E3779B97F4A7C15ull);
}

TEST(KvStoreTest, AscendingFamilyFindsKeysWhileItGrows) {
  CheckFindsKeysWhileItGrows(Memtable::kAscending, 1);
}

TEST(KvStoreTest, GroupedFamilyFindsKeysWhileItGrows) {
  CheckFindsKeysWhileItGrows(Memtable::kGrouped, 1);
}

// An ascending-key family's level-0 files never overlap, and compressed like
// the levels below they are moved down by compaction, not rewritten
// (kv_store.cc, MakeCfOptions): RocksDB counts no compaction, only moves.
TEST(KvStoreTest, AscendingFamilyFilesAreMovedDownNotRewritten) {
  testing::ScratchDir dir;
  KvStoreOptions options;
  ColumnFamilySpec log;
  log.name = "log";
  log.ascending_keys = true;
  options.column_families.push_back(log);
  auto store = KvStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  constexpr int kFlushes = 8;  // level 0 compacts from 4 files (RocksDB's default)
  constexpr int kKeysPerFlush = 500;
  uint64_t key = 0;
  for (int f = 0; f < kFlushes; ++f) {
    KvBatch batch(**store);
    for (int i = 0; i < kKeysPerFlush; ++i) {
      batch.Put(0, EventKey(key++), std::string(200, static_cast<char>('a' + f)));
    }
    ASSERT_TRUE((*store)->Write(batch, Durability::kAsync).ok());
    ASSERT_TRUE((*store)->Flush().ok());
  }
  auto int_property = [&](const std::string& name) {
    auto value = (*store)->Property(0, name);
    EXPECT_TRUE(value.ok()) << name;
    return value.ok() ? std::stoull(*value) : 0;
  };
  // Compactions run in the background: wait until none is pending or running.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (int_property("rocksdb.compaction-pending") != 0 ||
         int_property("rocksdb.num-running-compactions") != 0) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "compactions never settled";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LT(int_property("rocksdb.num-files-at-level0"), uint64_t{kFlushes})
      << "no compaction ran";
  auto stats = (*store)->MapProperty(0, "rocksdb.cfstats");
  ASSERT_TRUE(stats.ok());
  // RocksDB counts a flush as a "compaction" into level 0 and a rewrite as one
  // into its output level; a trivial move is not counted.
  ASSERT_EQ(stats->count("compaction.Sum.CompCount"), 1u);
  ASSERT_EQ(stats->count("compaction.L0.CompCount"), 1u);
  EXPECT_EQ(std::stod(stats->at("compaction.L0.CompCount")), double{kFlushes});
  EXPECT_EQ(std::stod(stats->at("compaction.Sum.CompCount")), double{kFlushes})
      << "a compaction rewrote level-0 files instead of moving them";
  for (uint64_t k = 0; k < key; k += 997) {
    auto value = (*store)->Get(0, EventKey(k));
    ASSERT_TRUE(value.ok() && value->has_value()) << k;
  }
}

TEST(KvStoreTest, PropertyNamesAnUnknownProperty) {
  testing::ScratchDir dir;
  KvStoreOptions options;
  options.column_families.push_back(ColumnFamilySpec{"c"});
  auto store = KvStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok());
  auto unknown = (*store)->Property(0, "rocksdb.no-such-property");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(unknown.status().field(), "name");
}

TEST(NameThisThreadTest, NamesTheCallingThreadOnlyAndCutsLongNames) {
  auto name_of = [](pthread_t thread) {
    char name[64] = {};
    EXPECT_EQ(pthread_getname_np(thread, name, sizeof(name)), 0);
    return std::string(name);
  };
  const std::string before = name_of(pthread_self());
  std::string inside;
  std::thread([&] {
    NameThisThread("kl-a-rather-long-thread-name");
    inside = name_of(pthread_self());
  }).join();
  EXPECT_EQ(inside, "kl-a-rather-lon");  // Linux keeps 15 bytes
  EXPECT_EQ(name_of(pthread_self()), before);
}

// A scan of `count` pairs ("k<i>", i copies of 'v' modulo 5,000 bytes; pair
// 7 is 600 KiB, larger than a chunk), failing after `fail_after` if set.
ScanAhead::ScanFn SyntheticScan(int count, std::optional<int> fail_after = std::nullopt) {
  return [count, fail_after](const ScanAhead::Emit& emit) {
    for (int i = 0; i < count; i++) {
      if (fail_after && i == *fail_after) return Status::IOError("disk gone");
      const size_t size = i == 7 ? (600u << 10) : static_cast<size_t>(i % 5000);
      if (!emit(testing::Numbered("k", i), std::string(size, static_cast<char>('a' + i % 26)))) {
        break;
      }
    }
    return Status::Ok();
  };
}

TEST(ScanAheadTest, HandsOverEveryPairInOrderAtAlignedAddresses) {
  ScanAhead ahead(SyntheticScan(20'000));  // about 50 MB: many times kScanAheadChunks chunks
  int next = 0;
  Status scan = ahead.Scan([&](std::string_view key, std::string_view value) {
    EXPECT_EQ(key, testing::Numbered("k", next));
    const size_t size = next == 7 ? (600u << 10) : static_cast<size_t>(next % 5000);
    EXPECT_EQ(value, std::string(size, static_cast<char>('a' + next % 26)));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(key.data()) % 8, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(value.data()) % 8, 0u);
    next++;
    return true;
  });
  EXPECT_TRUE(scan.ok()) << scan.ToString();
  EXPECT_EQ(next, 20'000);
}

TEST(ScanAheadTest, ContinuesAfterTheLastConsumedPair) {
  ScanAhead ahead(SyntheticScan(3'000));
  std::vector<std::string> keys;
  for (int round = 0; round < 3; round++) {
    int taken = 0;
    ASSERT_TRUE(ahead
                    .Scan([&](std::string_view key, std::string_view) {
                      keys.emplace_back(key);
                      return ++taken < 1'000;
                    })
                    .ok());
  }
  ASSERT_EQ(keys.size(), 3'000u);
  for (int i = 0; i < 3'000; i++) EXPECT_EQ(keys[static_cast<size_t>(i)], testing::Numbered("k", i));
  EXPECT_TRUE(ahead.Scan([](std::string_view, std::string_view) { return true; }).ok());
}

TEST(ScanAheadTest, ReportsTheScanErrorAfterThePairsBeforeIt) {
  ScanAhead ahead(SyntheticScan(5'000, 4'321));
  int seen = 0;
  Status scan = ahead.Scan([&](std::string_view, std::string_view) {
    seen++;
    return true;
  });
  EXPECT_EQ(scan.code(), Code::kIOError);
  EXPECT_EQ(seen, 4'321);
}

TEST(ScanAheadTest, DestroyingItEarlyStopsTheReader) {
  for (int consumed : {0, 1, 2'500}) {
    ScanAhead ahead(SyntheticScan(1'000'000));  // far more than it holds at once
    int taken = 0;
    if (consumed > 0) {
      ASSERT_TRUE(ahead.Scan([&](std::string_view, std::string_view) { return ++taken < consumed; }).ok());
    }
  }  // each destructor returns: the reader sees its emit refused and ends
}

TEST(ScanAheadTest, OfStoreAndOfLedgerReadWhatTheirScansRead) {
  ScratchDir dir;
  {
    auto store = KvStore::Open(dir.sub("kv"), TwoFamilies());
    ASSERT_TRUE(store.ok());
    WriteBulkAndSmall(**store, 40);
    std::vector<std::string> direct, ahead_keys;
    ASSERT_TRUE((*store)->Scan(0, EventKey(5), EventKey(30), [&](std::string_view k, std::string_view) {
      direct.emplace_back(k);
      return true;
    }).ok());
    auto ahead = ScanAhead::OfStore(**store, 0, EventKey(5), EventKey(30));
    ASSERT_TRUE(ahead->Scan([&](std::string_view k, std::string_view) {
      ahead_keys.emplace_back(k);
      return true;
    }).ok());
    EXPECT_EQ(direct.size(), 25u);
    EXPECT_EQ(ahead_keys, direct);
  }
  LedgerOptions options;
  ManualClock clock(1'700'000'000'000'000);
  options.clock = &clock;
  auto ledger = Ledger::Open(dir.sub("ledger"), options);
  ASSERT_TRUE(ledger.ok());
  for (uint64_t i = 1; i <= 30; i++) ASSERT_TRUE((*ledger)->Append({MakeCallEvent(i)}).ok());
  std::vector<std::pair<uint64_t, std::string>> direct, ahead_events;
  ASSERT_TRUE((*ledger)->ScanRaw(4, 20, [&](uint64_t seq, std::string_view v) {
    direct.emplace_back(seq, std::string(v));
    return true;
  }).ok());
  auto ahead = ScanAhead::OfLedger(**ledger, 4, 20);
  ASSERT_TRUE(ahead->ScanEvents([&](uint64_t seq, std::string_view v) {
    ahead_events.emplace_back(seq, std::string(v));
    return true;
  }).ok());
  EXPECT_EQ(direct.size(), 17u);
  EXPECT_EQ(ahead_events, direct);
}

// The reading thread's decode (OfLedgerDecodingCalls) gives, event by event,
// what DecodeCallEvent gives on the stored bytes: the same kind and fields,
// and a damaged event's Corruption in that event's place, the scan going on,
// whichever thread decodes.
TEST_F(LedgerTest, OfLedgerDecodingCallsDecodesAsDecodeCallEventDoes) {
  {
    auto ledger = OpenLedger();
    for (uint64_t i = 1; i <= 30; i++) {
      ASSERT_TRUE(ledger->Append({i % 10 == 5 ? KeyRenamedEvent(i, "key/key_a", std::nullopt)
                                              : MakeCallEvent(i, "key_" + std::to_string(i % 3))})
                      .ok());
    }
  }
  Tamper(dir_.sub("ledger"), [](KvStore& store, KvBatch& batch) {
    batch.Put(kCfEvents, EventKey(7), StoredValue(store, 7).substr(0, 10));  // no whole hash
    std::string garbled = StoredValue(store, 9);
    for (size_t i = 32; i < garbled.size(); i++) garbled[i] = '\xff';  // no Cap'n Proto message
    batch.Put(kCfEvents, EventKey(9), garbled);
  });
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  std::map<uint64_t, std::string> stored;
  ASSERT_TRUE(ledger->ScanRaw(3, 28, [&](uint64_t seq, std::string_view v) {
    stored.emplace(seq, v);
    return true;
  }).ok());
  // Decoded by the reading thread, by the consumer, and by whichever is
  // ahead (the default): the same.
  for (size_t backlog : {size_t{0}, SIZE_MAX, kScanAheadDecodeBacklogChunks}) {
    SCOPED_TRACE(backlog);
    auto ahead = ScanAhead::OfLedgerDecodingCalls(*ledger, 3, 28, backlog);
    uint64_t next = 3;
    uint64_t calls = 0;
    ASSERT_TRUE(ahead->ScanDecodedCallEvents([&](uint64_t seq, std::string_view v,
                                                 const DecodedCallEvent& event) {
      EXPECT_EQ(seq, next++);
      EXPECT_EQ(v, stored[seq]);
      std::vector<uint64_t> words((v.size() + 7) / 8);
      std::memcpy(words.data(), v.data(), v.size());
      const std::string_view aligned(reinterpret_cast<const char*>(words.data()), v.size());
      Hash hash;
      std::string_view body;
      CallEventView expected;
      Status status = SplitStoredValue(aligned, &hash, &body);
      if (status.ok()) status = DecodeCallEvent(body, &expected);
      EXPECT_EQ(event.status.code(), status.code()) << seq;
      EXPECT_EQ(event.status.message(), status.message()) << seq;
      EXPECT_EQ(event.status.ok(), seq != 7 && seq != 9) << seq;
      if (!status.ok()) return true;
      EXPECT_EQ(event.view.body_kind, expected.body_kind) << seq;
      if (expected.body_kind != ApiCallRecordedBodyKind()) return true;
      ++calls;
      EXPECT_EQ(event.view.call.request_id, "req-" + std::to_string(seq));
      EXPECT_EQ(event.view.call.key_id, expected.call.key_id);
      EXPECT_EQ(event.view.call.occurred_at_us, expected.call.occurred_at_us);
      EXPECT_EQ(event.view.call.latency_us, expected.call.latency_us);
      EXPECT_EQ(event.view.call.path, "/v1/render");
      return true;
    }).ok());
    EXPECT_EQ(next, 29u);
    EXPECT_EQ(calls, 21u);  // 26 events, less 7, 9 and the renames 5, 15, 25
  }
}

// Appends call events 1..events (of 7 keys) to `ledger`, 1,000 per append.
void AppendCallEvents(Ledger* ledger, uint64_t events) {
  constexpr size_t kBatch = 1'000;
  std::vector<NewEvent> batch;
  for (uint64_t i = 1; i <= events; i++) {
    batch.push_back(MakeCallEvent(i, "key_" + std::to_string(i % 7)));
    if (batch.size() == kBatch || i == events) {
      ASSERT_TRUE(ledger->Append(batch).ok());
      batch.clear();
    }
  }
}

// Over many chunks, with the consumer starting late, the first chunks are
// read while nothing waits (the consumer decodes them) and later ones while
// chunks wait (the reading thread decodes them): every event arrives decoded
// as DecodeCallEvent decodes it, in order.
TEST_F(LedgerTest, OfLedgerDecodingCallsMixesWhoDecodes) {
  constexpr uint64_t kEvents = 3 * kScanAheadChunkItemsMax + 100;
  auto ledger = OpenLedger();
  ASSERT_NO_FATAL_FAILURE(AppendCallEvents(ledger.get(), kEvents));
  for (size_t backlog : {size_t{0}, SIZE_MAX, size_t{1}, kScanAheadDecodeBacklogChunks}) {
    SCOPED_TRACE(backlog);
    auto ahead = ScanAhead::OfLedgerDecodingCalls(*ledger, 1, kEvents, backlog);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let chunks wait
    uint64_t next = 1;
    std::vector<uint64_t> words;
    ASSERT_TRUE(ahead->ScanDecodedCallEvents([&](uint64_t seq, std::string_view v,
                                                 const DecodedCallEvent& event) {
      EXPECT_EQ(seq, next++);
      words.assign((v.size() + 7) / 8, 0);
      std::memcpy(words.data(), v.data(), v.size());
      Hash hash;
      std::string_view body;
      CallEventView expected;
      EXPECT_TRUE(SplitStoredValue(std::string_view(reinterpret_cast<const char*>(words.data()),
                                                    v.size()),
                                   &hash, &body)
                      .ok());
      EXPECT_TRUE(DecodeCallEvent(body, &expected).ok());
      EXPECT_TRUE(event.status.ok()) << seq;
      EXPECT_EQ(event.view.body_kind, ApiCallRecordedBodyKind()) << seq;
      EXPECT_EQ(event.view.call.request_id, "req-" + std::to_string(seq));
      EXPECT_EQ(event.view.call.key_id, expected.call.key_id) << seq;
      EXPECT_EQ(event.view.call.occurred_at_us, expected.call.occurred_at_us) << seq;
      return !::testing::Test::HasFailure();
    }).ok());
    EXPECT_EQ(next, kEvents + 1);
  }
}

// The lookahead sees the event kScanAheadLookaheadItems after the one the
// consumer gets next (none near a chunk's end), decoded as the consumer will
// get it; decoding it early (when the reading thread did not) changes
// nothing the consumer gets.
TEST_F(LedgerTest, ScanDecodedCallEventsLooksAhead) {
  constexpr uint64_t kEvents = 2 * kScanAheadChunkItemsMax + 100;
  auto ledger = OpenLedger();
  ASSERT_NO_FATAL_FAILURE(AppendCallEvents(ledger.get(), kEvents));
  for (size_t backlog : {size_t{0}, SIZE_MAX, kScanAheadDecodeBacklogChunks}) {
    SCOPED_TRACE(backlog);
    auto ahead = ScanAhead::OfLedgerDecodingCalls(*ledger, 1, kEvents, backlog);
    uint64_t next = 1;
    uint64_t looked = 0;
    std::optional<std::string> seen;  // the request id of the last lookahead
    ASSERT_TRUE(ahead->ScanDecodedCallEvents(
                        [&](uint64_t seq, std::string_view, const DecodedCallEvent& event) {
                          EXPECT_EQ(seq, next++);
                          EXPECT_TRUE(event.status.ok()) << seq;
                          EXPECT_EQ(event.view.call.request_id, "req-" + std::to_string(seq));
                          if (seen) {
                            EXPECT_EQ(*seen,
                                      "req-" + std::to_string(seq + kScanAheadLookaheadItems));
                            ++looked;
                          }
                          seen.reset();
                          return !::testing::Test::HasFailure();
                        },
                        [&](const DecodedCallEvent& event) {
                          EXPECT_FALSE(seen.has_value());  // one per event the consumer gets
                          EXPECT_TRUE(event.status.ok());
                          seen.emplace(event.view.call.request_id);
                        })
                    .ok());
    EXPECT_EQ(next, kEvents + 1);
    // All but the last few events of each chunk (chunks of these events
    // hold thousands).
    EXPECT_GE(looked, kEvents - kEvents / 100);
    EXPECT_LT(looked, kEvents);  // none beyond the last
  }
}

// ---- RecordHasher -------------------------------------------------------------------------

RC_GTEST_PROP(RecordHasherProperty, HashesTheLengthPrefixedConcatenation,
              (const std::vector<std::string>& records)) {
  RecordHasher hasher;
  std::string framed;
  for (const std::string& record : records) {
    hasher.Add(record);
    PutVarint(record.size(), &framed);
    framed += record;
  }
  RC_ASSERT(hasher.Finish() == HashBytes(framed));
}

// Records around and beyond the hasher's buffer (4 KiB), whole or in parts:
// the buffer fills, flushes, and a part larger than its room is hashed in
// place.
RC_GTEST_PROP(RecordHasherProperty, LargeRecordsHashAsTheirConcatenation, ()) {
  const auto sizes = *rc::gen::container<std::vector<size_t>>(
      rc::gen::oneOf(rc::gen::inRange<size_t>(0, 64), rc::gen::inRange<size_t>(4000, 4200),
                     rc::gen::inRange<size_t>(0, 20'000)));
  RecordHasher hasher;
  std::string framed;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string record(sizes[i], static_cast<char>('a' + i % 26));
    if (i % 2 == 0) {
      hasher.Add(record);
    } else {  // the same record in three parts
      const std::string_view whole = record;
      const size_t cut = whole.size() / 3;
      hasher.Add({whole.substr(0, cut), whole.substr(cut, cut), whole.substr(2 * cut)});
    }
    PutVarint(record.size(), &framed);
    framed += record;
  }
  RC_ASSERT(hasher.Finish() == HashBytes(framed));
}

TEST(RecordHasherTest, RecordBoundariesChangeTheHash) {
  auto hash_of = [](std::initializer_list<std::string_view> records) {
    RecordHasher hasher;
    for (std::string_view r : records) hasher.Add(r);
    return hasher.Finish();
  };
  EXPECT_NE(hash_of({"ab", "c"}), hash_of({"a", "bc"}));
  EXPECT_NE(hash_of({"abc"}), hash_of({"abc", ""}));
  EXPECT_NE(hash_of({}), hash_of({""}));
  EXPECT_EQ(hash_of({"ab", "c"}), hash_of({"ab", "c"}));
  // A record of 200 bytes has a two-byte length.
  EXPECT_EQ(hash_of({std::string(200, 'x')}), HashBytes("\xc8\x01" + std::string(200, 'x')));
}

}  // namespace
}  // namespace keyledger
