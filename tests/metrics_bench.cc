// Benchmarks for MetricsFold. Targets: ApplyCall >= 1,000,000 events/s; a
// 30-day query at 1-hour step for a key with 10 million calls <= 50 ms.
//   build/tests/metrics_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "projections/latency_histogram.h"
#include "projections/metrics_fold.h"

namespace keyledger {
namespace {

constexpr int64_t kT0Us = 1'700'006'400'000'000;  // 2023-11-15T00:00:00Z
constexpr int64_t kThirtyDaysUs = 30 * kMetricsDayUs;
constexpr uint64_t kBigKeyCalls = 10'000'000;

// xorshift64: deterministic, cheap.
uint64_t NextRandom(uint64_t* state) {
  uint64_t x = *state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *state = x;
  return x;
}

// A rendering API's latencies: mostly 20..80 ms, 5% up to 2 s.
uint64_t NextLatencyUs(uint64_t* state) {
  const uint64_t r = NextRandom(state);
  if (r % 20 == 0) return 80'000 + (r >> 8) % 1'920'000;
  return 20'000 + (r >> 8) % 60'000;
}

uint16_t NextStatus(uint64_t r) {
  if (r % 100 == 0) return 500;
  if (r % 50 == 1) return 429;
  return 200;
}

// Applies `n` calls for one key spread evenly over [kT0Us, kT0Us + 30 days).
void FillOneKey(MetricsFold* fold, uint64_t n) {
  ApiCallRecorded call;
  call.workspace_id = "ws_01HZX0000000000000000000";
  call.key_id = "key_01HZY000000000000000000";
  uint64_t rng = 88172645463325252ull;
  const int64_t gap_us = kThirtyDaysUs / static_cast<int64_t>(n);
  for (uint64_t i = 0; i < n; ++i) {
    call.occurred_at_us = kT0Us + static_cast<int64_t>(i) * gap_us;
    call.latency_us = NextLatencyUs(&rng);
    call.status = NextStatus(rng);
    call.units = call.status == 200 ? 1 : 0;
    fold->ApplyCall(call);
  }
}

// The 10-million-call key, built once for all query benchmarks.
const MetricsFold& BigFold() {
  static const MetricsFold* fold = [] {
    auto* f = new MetricsFold();
    FillOneKey(f, kBigKeyCalls);
    return f;
  }();
  return *fold;
}

// One key, time moving forward (~260 us apart, as in the 10M/30-day case).
void BM_ApplyCallOneKey(benchmark::State& state) {
  MetricsFold fold;
  ApiCallRecorded call;
  call.workspace_id = "ws_01HZX0000000000000000000";
  call.key_id = "key_01HZY000000000000000000";
  call.status = 200;
  call.units = 1;
  uint64_t rng = 1;
  int64_t t = kT0Us;
  for (auto _ : state) {
    call.occurred_at_us = (t += 260);
    call.latency_us = NextLatencyUs(&rng);
    fold.ApplyCall(call);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["cells"] = static_cast<double>(fold.cell_count());
}
BENCHMARK(BM_ApplyCallOneKey);

// state.range(0) keys in 100 workspaces, visited round-robin, `gap_us`
// apart. With `warm`, every key has had one call before the timing starts,
// so only the steady state is measured (a key's first call also creates its
// series: a one-time cost per key that dominates short runs over many keys).
void ApplyCallManyKeys(benchmark::State& state, int64_t gap_us, bool warm) {
  const auto kKeys = static_cast<size_t>(state.range(0));
  std::vector<ApiCallRecorded> calls(kKeys);
  for (size_t i = 0; i < kKeys; ++i) {
    calls[i].workspace_id = "ws_01HZX" + std::to_string(100000 + i % 100);
    calls[i].key_id = "key_01HZY" + std::to_string(1000000 + i);
    calls[i].status = 200;
    calls[i].units = 1;
  }
  MetricsFold fold;
  uint64_t rng = 1;
  int64_t t = kT0Us;
  size_t i = 0;
  const auto apply_next = [&] {
    ApiCallRecorded& call = calls[i];
    call.occurred_at_us = (t += gap_us);
    call.latency_us = NextLatencyUs(&rng);
    fold.ApplyCall(call);
    if (++i == kKeys) i = 0;
  };
  if (warm) {
    for (size_t n = 0; n < kKeys; ++n) apply_next();
  }
  for (auto _ : state) apply_next();
  state.SetItemsProcessed(state.iterations());
  state.counters["cells"] = static_cast<double>(fold.cell_count());
}

// Calls 10 us apart: a key's minute collects many calls (100 ms apart over
// 10,000 keys), counted from the first call of each key.
void BM_ApplyCallManyKeys(benchmark::State& state) { ApplyCallManyKeys(state, 10, false); }
BENCHMARK(BM_ApplyCallManyKeys)->Arg(1'000)->Arg(10'000)->Arg(100'000);

// The same after one call per key: the steady state.
void BM_ApplyCallManyKeysWarm(benchmark::State& state) { ApplyCallManyKeys(state, 10, true); }
BENCHMARK(BM_ApplyCallManyKeysWarm)->Arg(1'000)->Arg(10'000)->Arg(100'000);

// Sparse keys: each key's calls a minute apart, so every call opens a new
// minute cell of its key (and closes the previous one into its hour, and
// each hour into its day): the most work per call an in-order fold does.
void BM_ApplyCallSparseKeysWarm(benchmark::State& state) {
  ApplyCallManyKeys(state, kMetricsMinuteUs / state.range(0), true);
}
BENCHMARK(BM_ApplyCallSparseKeysWarm)->Arg(1'000)->Arg(10'000);

// Late calls: random minutes of the past 30 days.
void BM_ApplyCallLate(benchmark::State& state) {
  MetricsFold fold;
  FillOneKey(&fold, 100'000);
  ApiCallRecorded call;
  call.workspace_id = "ws_01HZX0000000000000000000";
  call.key_id = "key_01HZY000000000000000000";
  call.status = 200;
  uint64_t rng = 7;
  for (auto _ : state) {
    call.occurred_at_us = kT0Us + static_cast<int64_t>(NextRandom(&rng) % kThirtyDaysUs);
    call.latency_us = NextLatencyUs(&rng);
    fold.ApplyCall(call);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ApplyCallLate);

// Building the 10M-call key (includes allocation of every cell).
void BM_BuildTenMillionCallKey(benchmark::State& state) {
  for (auto _ : state) {
    MetricsFold fold;
    FillOneKey(&fold, kBigKeyCalls);
    state.counters["cells"] = static_cast<double>(fold.cell_count());
  }
  state.SetItemsProcessed(state.iterations() * kBigKeyCalls);
}
BENCHMARK(BM_BuildTenMillionCallKey)->Iterations(1)->Unit(benchmark::kMillisecond);

// 720 hourly buckets, as the API would read them.
void BM_Query30DaysHourly(benchmark::State& state) {
  const MetricsFold& fold = BigFold();
  uint64_t calls = 0;
  for (auto _ : state) {
    auto r = fold.Query(MetricsScope::kKey, "key_01HZY000000000000000000", kT0Us,
                        kT0Us + kThirtyDaysUs, kMetricsHourUs);
    calls = 0;
    for (const MetricsBucket& b : *r) calls += b.calls;
    benchmark::DoNotOptimize(calls);
  }
  state.counters["calls"] = static_cast<double>(calls);
}
BENCHMARK(BM_Query30DaysHourly)->Unit(benchmark::kMillisecond);

// The same plus p50/p95/p99 and error rate of every bucket.
void BM_Query30DaysHourlyWithPercentiles(benchmark::State& state) {
  const MetricsFold& fold = BigFold();
  for (auto _ : state) {
    auto r = fold.Query(MetricsScope::kKey, "key_01HZY000000000000000000", kT0Us,
                        kT0Us + kThirtyDaysUs, kMetricsHourUs);
    uint64_t sum = 0;
    for (const MetricsBucket& b : *r) {
      sum += b.latency.Percentile(500) + b.latency.Percentile(950) +
             b.latency.Percentile(990) + b.latency.max() + b.error_rate_ppm();
    }
    benchmark::DoNotOptimize(sum);
  }
}
BENCHMARK(BM_Query30DaysHourlyWithPercentiles)->Unit(benchmark::kMillisecond);

// One day at minute step (1,440 buckets).
void BM_QueryOneDayMinutes(benchmark::State& state) {
  const MetricsFold& fold = BigFold();
  for (auto _ : state) {
    auto r = fold.Query(MetricsScope::kKey, "key_01HZY000000000000000000",
                        kT0Us + 10 * kMetricsDayUs, kT0Us + 11 * kMetricsDayUs, kMetricsMinuteUs);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_QueryOneDayMinutes)->Unit(benchmark::kMillisecond);

// Totals over 30 days not aligned to hours (minutes + hours + days).
void BM_Totals30Days(benchmark::State& state) {
  const MetricsFold& fold = BigFold();
  for (auto _ : state) {
    auto r = fold.Totals(MetricsScope::kKey, "key_01HZY000000000000000000",
                         kT0Us + 37 * kMetricsMinuteUs, kT0Us + kThirtyDaysUs - 5 * kMetricsMinuteUs);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_Totals30Days)->Unit(benchmark::kMillisecond);

void BM_HistogramRecord(benchmark::State& state) {
  LatencyHistogram h;
  uint64_t rng = 3;
  for (auto _ : state) h.Record(NextLatencyUs(&rng));
  benchmark::DoNotOptimize(h.count());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramRecord);

// A busy cell's sparse histogram (all of the latency distribution's buckets).
void BM_CompactHistogramRecord(benchmark::State& state) {
  CompactLatencyHistogram h;
  uint64_t rng = 3;
  for (int i = 0; i < 100'000; ++i) h.Record(NextLatencyUs(&rng));
  for (auto _ : state) h.Record(NextLatencyUs(&rng));
  state.counters["entries"] = static_cast<double>(h.entry_count());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CompactHistogramRecord);

}  // namespace
}  // namespace keyledger

BENCHMARK_MAIN();
