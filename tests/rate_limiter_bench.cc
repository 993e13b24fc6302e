// Benchmarks for RateLimiter::Admit. Target: >= 5 million Admit/s on one core
// for a bucket that is already held.
//   build/tests/rate_limiter_bench [--benchmark_filter=...]
#include "projections/rate_limiter.h"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace keyledger {
namespace {

constexpr int64_t kT0Us = 1'700'000'000'000'000;
constexpr size_t kDistinctBuckets = 100'000;

// Returns names shaped like the API's bucket names.
std::vector<std::string> BucketNames(size_t n) {
  std::vector<std::string> names;
  names.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::string name = "ws_01HZX";
    name.append(std::to_string(i % 97)).append("/key_01HZY").append(std::to_string(i));
    names.push_back(std::move(name));
  }
  return names;
}

// One held bucket, every request admitted (time moves 1 us per request).
void BM_AdmitHeldBucketAllowed(benchmark::State& state) {
  RateLimiter rl({});
  const std::string name = "ws_01HZX0/key_01HZY0000000000000";
  int64_t now_us = kT0Us;
  (void)rl.Admit(name, kTpsLimitMax, now_us);
  for (auto _ : state) {
    benchmark::DoNotOptimize(rl.Admit(name, kTpsLimitMax, ++now_us));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitHeldBucketAllowed);

// One held bucket over its limit: every request refused.
void BM_AdmitHeldBucketRefused(benchmark::State& state) {
  RateLimiter rl({});
  const std::string name = "ws_01HZX0/key_01HZY0000000000000";
  (void)rl.Admit(name, 1, kT0Us);
  for (auto _ : state) {
    benchmark::DoNotOptimize(rl.Admit(name, 1, kT0Us));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitHeldBucketRefused);

// 100k held buckets visited round-robin (cache misses dominate).
void BM_AdmitDistinctBuckets(benchmark::State& state) {
  RateLimiter rl({});
  const std::vector<std::string> names = BucketNames(kDistinctBuckets);
  int64_t now_us = kT0Us;
  for (const std::string& n : names) (void)rl.Admit(n, 100, now_us);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(rl.Admit(names[i], 100, now_us));
    if (++i == names.size()) {
      i = 0;
      now_us += 1'000;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitDistinctBuckets);

// New buckets into a full limiter whose buckets have all expired: measures
// creation plus amortized eviction sweeps.
void BM_AdmitNewBucketsWithEviction(benchmark::State& state) {
  RateLimiterOptions options;
  options.buckets_max = kDistinctBuckets / 2;
  RateLimiter rl(options);
  const std::vector<std::string> names = BucketNames(kDistinctBuckets);
  int64_t now_us = kT0Us;
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(rl.Admit(names[i], 100, now_us));
    if (++i == names.size()) i = 0;
    now_us += 1'000;  // every bucket expires 10 ms after its request
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitNewBucketsWithEviction);

// Two threads, each on its own held bucket.
void BM_AdmitHeldBucketThreads(benchmark::State& state) {
  static RateLimiter* rl = nullptr;
  if (state.thread_index() == 0) rl = new RateLimiter({});
  std::string name = "key_";
  name.append(std::to_string(state.thread_index()));
  int64_t now_us = kT0Us;
  for (auto _ : state) {
    benchmark::DoNotOptimize(rl->Admit(name, kTpsLimitMax, ++now_us));
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    delete rl;
    rl = nullptr;
  }
}
BENCHMARK(BM_AdmitHeldBucketThreads)->Threads(2);

}  // namespace
}  // namespace keyledger

BENCHMARK_MAIN();
