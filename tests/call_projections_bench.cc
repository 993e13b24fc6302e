// Benchmarks for CallProjections: the fold rate of API-call events read from a
// real ledger (RocksDB), decode included. Target: >= 1,000,000 events/s.
//   build/tests/call_projections_bench [--benchmark_filter=...]
//
// Workload (built once, before the first benchmark): 100 workspaces with 10
// keys each (1,000 keys), billing time zones cycling through seven zones;
// 1,000,000 ApiCallRecorded events round-robin over the keys, occurred_at
// spread evenly over three days from 2026-05-30T00:00Z (so every zone crosses
// a month boundary) and up to 2 s earlier than that even spread (late
// arrivals); 10% of the keys have logging on, so 10% of the calls carry
// excerpts (3 request headers, a ~200-byte JSON body, 2 response headers, a
// 256-byte binary body); 3% 4xx (a sixth of them 429), 2% 5xx; units 0..3;
// plus one AuthorizationDenied after every 100 calls. 1,010,100 events.
//
// Set KL_BENCH_DIR to keep the ledger in that directory between runs (it is
// built there once and reused; remove the directory to rebuild it).
//
//   BM_ScanRaw              Ledger::ScanRaw alone: the floor for any fold
//   BM_ScanAndHeader        + DecodeEnvelopeHeader per event (the old skip test)
//   BM_ScanAndDecode        + full body decode of calls into ApiCallRecorded
//   BM_ScanAndDecodeCallView  + DecodeCallEvent (the fold's decoder) instead
//   BM_MetricsFoldDecoded   (a) MetricsFold over already-decoded events, no ledger
//   BM_RebuildDigest        (c) RebuildCallProjectionsDigest: the whole in-memory fold
//   BM_Digest               the digest alone, of a state folded once beforehand
//   BM_OpenAndCatchUp       (b) CallProjections::Open on an empty store: fold + persist
//   BM_OpenAndCatchUpServe  (b) the same with serve's fold_batch_events_max (4,096)
//   BM_OpenAndCatchUpOneThread (b) the same without the read-ahead thread
// The labels of (b) and (c) carry the first 16 hex digits of the digest: it
// must not change when the fold is optimised.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/ledger.h"
#include "projections/call_projections.h"
#include "projections/key_state_store.h"
#include "projections/metrics_fold.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

constexpr uint64_t kCalls = 1'000'000;
constexpr uint64_t kWorkspaces = 100;
constexpr uint64_t kKeysPerWorkspace = 10;
constexpr uint64_t kKeys = kWorkspaces * kKeysPerWorkspace;
constexpr uint64_t kLoggedKeyEvery = 10;    // 10% of the keys log
constexpr uint64_t kDenialAfterCalls = 100;  // one denial per 100 calls
constexpr size_t kAppendBatch = 5'000;
constexpr int64_t kT0Us = 1'780'099'200'000'000;  // 2026-05-30T00:00:00Z
constexpr int64_t kSpanUs = 3LL * 86'400 * 1'000'000;
constexpr int64_t kJitterUsMax = 2'000'000;
constexpr uint64_t kEvents = kWorkspaces + kCalls + kCalls / kDenialAfterCalls;
constexpr const char* kZones[] = {"UTC",          "Asia/Seoul",          "America/New_York",
                                  "Europe/Berlin", "Australia/Sydney", "America/Los_Angeles",
                                  "Asia/Kolkata"};
constexpr char kReadyFile[] = "READY-v2";

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::string WorkspaceId(uint64_t w) { return "ws_" + std::to_string(1000 + w); }
std::string KeyId(uint64_t k) { return "key_" + std::to_string(100000 + k); }

void SetId(std::string_view seed, EventId* id) {
  const Hash h = HashBytes(seed);
  std::copy_n(h.begin(), id->size(), id->begin());
}

NewEvent WorkspaceEvent(uint64_t w) {
  NewEvent e;
  SetId("bench-ws-" + std::to_string(w), &e.event_id);
  e.stream_id = "ws/" + WorkspaceId(w);
  e.actor = "operator";
  WorkspaceCreated created;
  created.workspace_id = WorkspaceId(w);
  created.name = "bench " + std::to_string(w);
  created.tps_limit = 1000;
  created.billing_timezone = kZones[w % std::size(kZones)];
  e.body = created;
  return e;
}

NewEvent CallEvent(uint64_t n) {
  const uint64_t r = Mix(n);
  const uint64_t k = n % kKeys;
  ApiCallRecorded call;
  call.request_id = ToHex(HashBytes("req-" + std::to_string(n)).data(), 16);
  call.workspace_id = WorkspaceId(k / kKeysPerWorkspace);
  call.key_id = KeyId(k);
  call.occurred_at_us = kT0Us + static_cast<int64_t>(n) * (kSpanUs / static_cast<int64_t>(kCalls)) -
                        static_cast<int64_t>(r % kJitterUsMax);
  call.method = r % 4 == 0 ? "GET" : "POST";
  call.path = "/v1/render/" + std::to_string(r % 17);
  const uint64_t s = (r >> 20) % 1000;
  call.status = s < 20 ? 500 : s < 25 ? 429 : s < 50 ? 404 : 200;
  call.latency_us = 2'000 + (r >> 32) % 400'000;
  call.units = (r >> 12) % 100 == 0 ? 0 : 1 + (r >> 14) % 3;
  call.request_bytes = 200 + (r >> 24) % 2000;
  call.response_bytes = 10'000 + (r >> 28) % 200'000;
  call.client_ip = "203.0.113." + std::to_string(r % 250);
  if (r % 3 == 0) call.origin = "https://app.example.com";
  if (k % kLoggedKeyEvery == 3) {
    call.logged = true;
    call.request.headers = {{"content-type", "application/json"},
                            {"authorization", "[REDACTED]"},
                            {"user-agent", "render-client/2.3.1 (linux; x86_64)"}};
    call.request.body_excerpt =
        R"({"template":"invoice","format":"png","width":1024,"height":768,"dpi":144,)"
        R"("data":{"customer":"ACME Corp","lines":[{"sku":"A-100","qty":3},)"
        R"({"sku":"B-200","qty":1}],"currency":"EUR","note":"rush order #)" +
        std::to_string(n) + "\"}}";
    call.response.headers = {{"content-type", "image/png"},
                             {"content-length", std::to_string(call.response_bytes)}};
    call.response.body_excerpt.resize(256);
    for (size_t i = 0; i < 256; i++) {
      call.response.body_excerpt[i] = static_cast<char>(Mix(n * 256 + i));
    }
  }
  NewEvent e;
  SetId("bench-call-" + std::to_string(n), &e.event_id);
  e.stream_id = "calls/" + call.key_id;
  e.actor = "gateway";
  e.body = std::move(call);
  return e;
}

NewEvent DenialEvent(uint64_t d) {
  const uint64_t r = Mix(~d);
  AuthorizationDenied denied;
  denied.request_id = ToHex(HashBytes("denied-" + std::to_string(d)).data(), 16);
  denied.occurred_at_us = kT0Us + static_cast<int64_t>(d * kDenialAfterCalls) *
                                      (kSpanUs / static_cast<int64_t>(kCalls));
  denied.client_ip = "198.51.100." + std::to_string(r % 250);
  if (r % 2 == 0) {  // a known key over its limit
    const uint64_t k = r % kKeys;
    denied.workspace_id = WorkspaceId(k / kKeysPerWorkspace);
    denied.key_id = KeyId(k);
    denied.reason = DenialReason::kRateLimited;
  } else {  // an unidentifiable key, aggregated
    denied.reason = DenialReason::kUnknownKey;
    denied.count = 1 + r % 5;
  }
  NewEvent e;
  SetId("bench-denied-" + std::to_string(d), &e.event_id);
  e.stream_id = "denials";
  e.actor = "gateway";
  e.body = std::move(denied);
  return e;
}

struct Fixture {
  testing::ScratchDir scratch;
  std::string dir;
  ManualClock clock{kT0Us + kSpanUs};
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<KeyState> key_state;

  Fixture() {
    const char* keep = std::getenv("KL_BENCH_DIR");
    dir = keep != nullptr && *keep != '\0' ? std::string(keep) : scratch.path();
    const std::string ready = dir + "/" + kReadyFile;
    const bool reuse = std::filesystem::exists(ready);
    if (!reuse) std::filesystem::remove_all(dir + "/ledger");
    std::filesystem::create_directories(dir);
    LedgerOptions lo;
    lo.clock = &clock;
    auto opened = Ledger::Open(dir + "/ledger", lo);
    Check(opened.ToStatus());
    ledger = std::move(opened).value();
    if (!reuse) {
      Build();
      std::ofstream(ready) << kEvents << "\n";
    }
    if (ledger->head().sequence != kEvents) {
      fprintf(stderr, "ledger in %s has %llu events, want %llu: remove it\n", dir.c_str(),
              static_cast<unsigned long long>(ledger->head().sequence),
              static_cast<unsigned long long>(kEvents));
      std::abort();
    }
    auto rebuilt = RebuildKeyState(*ledger, 0);
    Check(rebuilt.ToStatus());
    key_state = std::move(rebuilt).value();
  }

  void Build() {
    std::vector<NewEvent> batch;
    auto flush = [&] {
      Check(ledger->Append(batch, {Durability::kAsync}).ToStatus());
      batch.clear();
    };
    for (uint64_t w = 0; w < kWorkspaces; w++) batch.push_back(WorkspaceEvent(w));
    flush();
    for (uint64_t n = 0; n < kCalls; n++) {
      batch.push_back(CallEvent(n));
      if ((n + 1) % kDenialAfterCalls == 0) batch.push_back(DenialEvent(n / kDenialAfterCalls));
      if (batch.size() >= kAppendBatch) flush();
    }
    if (!batch.empty()) flush();
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

double ProcessCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// Wall-clock and whole-process CPU time of the timed parts of a benchmark loop.
class WallTimer {
 public:
  void Start() {
    start_ = std::chrono::steady_clock::now();
    cpu_start_ = ProcessCpuSeconds();
  }
  void Stop() {
    total_ += std::chrono::steady_clock::now() - start_;
    cpu_total_ += ProcessCpuSeconds() - cpu_start_;
  }
  double seconds() const { return std::chrono::duration<double>(total_).count(); }
  double cpu_seconds() const { return cpu_total_; }

 private:
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::duration total_{};
  double cpu_start_ = 0;
  double cpu_total_ = 0;
};

// events_per_sec: per second of the benchmark thread's CPU time (the fold's
// thread; a read-ahead thread's work is not in it). all_cpu_events_per_sec:
// per second of CPU time of every thread of the process (the read-ahead
// thread and RocksDB's flushes and compactions included). wall_events_per_sec:
// per second of wall-clock time (what a user waits for; it suffers most when
// other processes share the machine).
void SetRate(benchmark::State& state, uint64_t events, const WallTimer& timer) {
  const double total = static_cast<double>(events) * static_cast<double>(state.iterations());
  state.counters["events_per_sec"] = benchmark::Counter(
      static_cast<double>(events), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["all_cpu_events_per_sec"] = total / timer.cpu_seconds();
  state.counters["wall_events_per_sec"] = total / timer.seconds();
}

std::string DigestLabel(const Hash& h) { return "digest=" + ToHex(h).substr(0, 16); }

void BM_ScanRaw(benchmark::State& state) {
  Fixture& f = Shared();
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
    uint64_t bytes = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      bytes += v.size();
      return true;
    }));
    benchmark::DoNotOptimize(bytes);
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
}
BENCHMARK(BM_ScanRaw)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_ScanAndHeader(benchmark::State& state) {
  Fixture& f = Shared();
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
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
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
}
BENCHMARK(BM_ScanAndHeader)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_ScanAndDecode(benchmark::State& state) {
  Fixture& f = Shared();
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
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
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
}
BENCHMARK(BM_ScanAndDecode)->Unit(benchmark::kMillisecond)->Iterations(3);

// The fold's decoder: every event once through DecodeCallEvent into a reused
// view (calls and denials read in full, as views; other kinds by header).
void BM_ScanAndDecodeCallView(benchmark::State& state) {
  Fixture& f = Shared();
  const uint16_t call_kind = ApiCallRecordedBodyKind();
  std::vector<uint64_t> aligned;
  CallEventView view;
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
    uint64_t units = 0;
    Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
      Hash hash;
      std::string_view body;
      if (!SplitStoredValue(v, &hash, &body).ok()) return false;
      aligned.resize((body.size() + 7) / 8);
      std::memcpy(aligned.data(), body.data(), body.size());
      if (!DecodeCallEvent(std::string_view(reinterpret_cast<const char*>(aligned.data()),
                                            body.size()),
                           &view)
               .ok()) {
        return false;
      }
      if (view.body_kind == call_kind) units += view.call.units;
      return true;
    }));
    benchmark::DoNotOptimize(units);
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
}
BENCHMARK(BM_ScanAndDecodeCallView)->Unit(benchmark::kMillisecond)->Iterations(3);

// (a) The metrics fold alone over events decoded beforehand (not timed).
void BM_MetricsFoldDecoded(benchmark::State& state) {
  Fixture& f = Shared();
  std::vector<EventBody> events;
  events.reserve(kCalls + kCalls / kDenialAfterCalls);
  Fixture::Check(f.ledger->ScanRaw(1, 0, [&](uint64_t, std::string_view v) {
    Hash hash;
    std::string_view body;
    Fixture::Check(SplitStoredValue(v, &hash, &body));
    auto event = DecodeEventBody(body);
    Fixture::Check(event.ToStatus());
    if (std::holds_alternative<ApiCallRecorded>(event->body) ||
        std::holds_alternative<AuthorizationDenied>(event->body)) {
      events.push_back(std::move(event->body));
    }
    return true;
  }));
  WallTimer wall;
  for (auto _ : state) {
    state.PauseTiming();
    auto fold = std::make_unique<MetricsFold>();
    state.ResumeTiming();
    wall.Start();
    for (const EventBody& body : events) {
      if (const auto* call = std::get_if<ApiCallRecorded>(&body)) {
        fold->ApplyCall(*call);
      } else {
        fold->ApplyDenial(std::get<AuthorizationDenied>(body));
      }
    }
    benchmark::DoNotOptimize(fold->cell_count());
    wall.Stop();
    state.PauseTiming();
    fold.reset();
    state.ResumeTiming();
  }
  SetRate(state, events.size(), wall);
}
BENCHMARK(BM_MetricsFoldDecoded)->Unit(benchmark::kMillisecond)->Iterations(3);

// (c) The whole in-memory fold from the ledger, no persistence.
void BM_RebuildDigest(benchmark::State& state) {
  Fixture& f = Shared();
  Hash last{};
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
    auto digest = RebuildCallProjectionsDigest(*f.ledger, 0);
    Fixture::Check(digest.ToStatus());
    last = *digest;
    benchmark::DoNotOptimize(digest);
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
  state.SetLabel(DigestLabel(last));
}
BENCHMARK(BM_RebuildDigest)->Unit(benchmark::kMillisecond)->Iterations(3);

// The digest of a folded state alone (the end of every rebuild and of every
// read of a stored projection in `audit replay`): events/s of the ledger the
// state was folded from.
void BM_Digest(benchmark::State& state) {
  Fixture& f = Shared();
  const std::string path = f.scratch.sub("calls-digest");
  auto p = CallProjections::Open(path, f.ledger.get(), &f.clock, {});
  Fixture::Check(p.ToStatus());
  Hash last{};
  WallTimer wall;
  for (auto _ : state) {
    wall.Start();
    last = p.value()->Digest();
    benchmark::DoNotOptimize(last);
    wall.Stop();
  }
  SetRate(state, f.ledger->head().sequence, wall);
  state.SetLabel(DigestLabel(last));
  p.value().reset();
  std::filesystem::remove_all(path);
}
BENCHMARK(BM_Digest)->Unit(benchmark::kMillisecond)->Iterations(5);

// (b) The full fold from the ledger into a fresh store, persistence included.
void OpenAndCatchUp(benchmark::State& state, CallProjectionsOptions options) {
  Fixture& f = Shared();
  int run = 0;
  Hash last{};
  WallTimer wall;
  for (auto _ : state) {
    const std::string path = f.scratch.sub("calls-" + std::to_string(run++));
    wall.Start();
    auto p = CallProjections::Open(path, f.ledger.get(), &f.clock, options);
    Fixture::Check(p.ToStatus());
    wall.Stop();
    state.PauseTiming();
    last = p.value()->Digest();
    p.value().reset();
    std::filesystem::remove_all(path);
    state.ResumeTiming();
  }
  SetRate(state, f.ledger->head().sequence, wall);
  state.SetLabel(DigestLabel(last));
}

void BM_OpenAndCatchUp(benchmark::State& state) { OpenAndCatchUp(state, {}); }
BENCHMARK(BM_OpenAndCatchUp)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_OpenAndCatchUpServe(benchmark::State& state) {
  CallProjectionsOptions options;
  options.fold_batch_events_max = 4096;  // tools/serve.cc
  OpenAndCatchUp(state, options);
}
BENCHMARK(BM_OpenAndCatchUpServe)->Unit(benchmark::kMillisecond)->Iterations(3);

// (b) without the read-ahead thread: the fold and the ledger reads on one thread.
void BM_OpenAndCatchUpOneThread(benchmark::State& state) {
  CallProjectionsOptions options;
  options.read_ahead_events_min = 0;
  OpenAndCatchUp(state, options);
}
BENCHMARK(BM_OpenAndCatchUpOneThread)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace keyledger

BENCHMARK_MAIN();
