// Benchmarks for CallProjections: the fold rate of API-call events read from a
// real ledger (RocksDB), decode included. Target: >= 1,000,000 events/s.
//   build/tests/call_projections_bench [--benchmark_filter=...]
// The ledger (1,000,000 call events over 1,000 keys of one workspace, 5%
// logged with small excerpts, one call per millisecond) is built once, in a
// scratch directory, before the first benchmark.
//
//   BM_ScanRaw           Ledger::ScanRaw alone: the floor for any fold
//   BM_ScanAndHeader     + DecodeEnvelopeHeader per event (the skip test)
//   BM_ScanAndDecode     + full body decode per event (the codec copies unaligned bodies)
//   BM_ScanAndDecodeWithoutHeader  the body decode alone, for comparison
//   BM_RebuildDigest     RebuildCallProjectionsDigest: the whole in-memory fold
//   BM_OpenAndCatchUp    CallProjections::Open on an empty store: fold + persist
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/ledger.h"
#include "projections/call_projections.h"
#include "projections/key_state_store.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

constexpr uint64_t kCalls = 1'000'000;
constexpr uint64_t kKeys = 1'000;
constexpr uint64_t kLoggedEvery = 20;  // 5%
constexpr size_t kAppendBatch = 10'000;
constexpr int64_t kT0Us = 1'780'000'000'000'000;

struct Fixture {
  testing::ScratchDir dir;
  ManualClock clock{kT0Us};
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<KeyState> key_state;

  Fixture() {
    LedgerOptions lo;
    lo.clock = &clock;
    ledger = std::move(Ledger::Open(dir.sub("ledger"), lo)).value();
    NewEvent ws;
    const Hash ws_id = HashBytes("bench-workspace");
    std::copy_n(ws_id.begin(), ws.event_id.size(), ws.event_id.begin());
    ws.stream_id = "ws/ws_a";
    ws.actor = "bench";
    WorkspaceCreated created;
    created.workspace_id = "ws_a";
    created.name = "bench";
    created.tps_limit = 1000;
    created.billing_timezone = "Asia/Seoul";
    ws.body = created;
    Check(ledger->Append({ws}, {Durability::kAsync}).ToStatus());
    std::vector<NewEvent> batch;
    for (uint64_t n = 0; n < kCalls; n++) {
      NewEvent e = testing::MakeCallEvent(n, "key_" + std::to_string(n % kKeys));
      // Random ids, as the data plane's (hashes of request ids): the event-id
      // index's hashed memtable assumes their first bytes are spread.
      const Hash id = HashBytes("bench-" + std::to_string(n));
      std::copy_n(id.begin(), e.event_id.size(), e.event_id.begin());
      auto& call = std::get<ApiCallRecorded>(e.body);
      call.occurred_at_us = kT0Us + static_cast<int64_t>(n) * 1000;
      call.status = n % 50 == 0 ? 500 : 200;
      call.latency_us = 20'000 + (n * 7919) % 60'000;
      if (n % kLoggedEvery == 0) {
        call.logged = true;
        call.request.headers = {{"content-type", "application/json"},
                                {"authorization", "[REDACTED]"}};
        call.request.body_excerpt = R"({"template":"invoice","format":"png","width":1024})";
        call.response.headers = {{"content-type", "image/png"}};
      }
      batch.push_back(std::move(e));
      if (batch.size() == kAppendBatch) {
        Check(ledger->Append(batch, {Durability::kAsync}).ToStatus());
        batch.clear();
      }
    }
    key_state = std::move(RebuildKeyState(*ledger, 0)).value();
  }

  static void Check(const Status& s) {
    if (!s.ok()) {
      fprintf(stderr, "setup failed: %s\n", s.ToString().c_str());
      std::abort();
    }
  }
};

Fixture& Shared() {
  static Fixture fixture;
  return fixture;
}

void SetRate(benchmark::State& state, uint64_t events) {
  state.counters["events_per_sec"] = benchmark::Counter(
      static_cast<double>(events), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_ScanRaw(benchmark::State& state) {
  Fixture& f = Shared();
  for (auto _ : state) {
    uint64_t bytes = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      bytes += v.size();
      return true;
    }));
    benchmark::DoNotOptimize(bytes);
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_ScanRaw)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_ScanAndHeader(benchmark::State& state) {
  Fixture& f = Shared();
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  for (auto _ : state) {
    uint64_t calls = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      Hash hash;
      std::string_view body;
      if (!SplitStoredValue(v, &hash, &body).ok()) return false;
      auto header = DecodeEnvelopeHeader(body);
      calls += header.ok() && header->body_kind == call_kind;
      return header.ok();
    }));
    benchmark::DoNotOptimize(calls);
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_ScanAndHeader)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_ScanAndDecode(benchmark::State& state) {
  Fixture& f = Shared();
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  for (auto _ : state) {
    uint64_t units = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      Hash hash;
      std::string_view body;
      if (!SplitStoredValue(v, &hash, &body).ok()) return false;
      auto header = DecodeEnvelopeHeader(body);
      if (!header.ok() || header->body_kind != call_kind) return header.ok();
      auto event = DecodeEventBody(body);
      if (!event.ok()) return false;
      units += std::get<ApiCallRecorded>(event->body).units;
      return true;
    }));
    benchmark::DoNotOptimize(units);
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_ScanAndDecode)->Unit(benchmark::kMillisecond)->Iterations(3);

// For comparison: the full decode without the header test first (what a fold
// that did not skip by header would pay when nearly every event is a call).
void BM_ScanAndDecodeWithoutHeader(benchmark::State& state) {
  Fixture& f = Shared();
  for (auto _ : state) {
    uint64_t units = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      Hash hash;
      std::string_view body;
      if (!SplitStoredValue(v, &hash, &body).ok()) return false;
      auto event = DecodeEventBody(body);
      if (!event.ok()) return false;
      if (const auto* call = std::get_if<ApiCallRecorded>(&event->body)) units += call->units;
      return true;
    }));
    benchmark::DoNotOptimize(units);
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_ScanAndDecodeWithoutHeader)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_RebuildDigest(benchmark::State& state) {
  Fixture& f = Shared();
  for (auto _ : state) {
    auto digest = RebuildCallProjectionsDigest(*f.ledger, *f.key_state, 0);
    Fixture::Check(digest.ToStatus());
    benchmark::DoNotOptimize(digest);
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_RebuildDigest)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_OpenAndCatchUp(benchmark::State& state) {
  Fixture& f = Shared();
  int run = 0;
  for (auto _ : state) {
    const std::string path = f.dir.sub("calls-" + std::to_string(run++));
    auto p = CallProjections::Open(path, f.ledger.get(), f.key_state.get(), &f.clock, {});
    Fixture::Check(p.ToStatus());
    state.PauseTiming();
    p.value().reset();
    std::filesystem::remove_all(path);
    state.ResumeTiming();
  }
  SetRate(state, f.ledger->head().sequence);
}
BENCHMARK(BM_OpenAndCatchUp)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace keyledger

BENCHMARK_MAIN();
