#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <time.h>
#include <vector>

#include "ledger/codec.h"
#include "ledger/ledger.h"
#include "ledger/random.h"
#include "tools/commands.h"
#include "tools/local_stack.h"

namespace keyledger::tools {
namespace {

NewEvent SyntheticCall(RandomSource& random, uint64_t n, uint64_t keys, size_t padding_bytes) {
  ApiCallRecorded call;
  call.request_id = "bench-" + std::to_string(n);
  call.workspace_id = "ws_bench";
  call.key_id = "key_bench_" + std::to_string(n % keys);
  call.occurred_at_us = 1'700'000'000'000'000 + static_cast<int64_t>(n);
  call.method = "POST";
  call.path = "/v1/render";
  call.status = 200;
  call.latency_us = 1000 + n % 5000;
  call.units = 1;
  call.client_ip = "203.0.113.7";
  call.request.body_excerpt.assign(padding_bytes, 'x');
  NewEvent e;
  random.Fill(e.event_id.data(), e.event_id.size());
  e.stream_id = "calls/" + call.key_id;
  e.actor = "bench";
  e.body = std::move(call);
  return e;
}

// Bytes an event takes beyond its padding, so --value-size means stored bytes.
size_t StoredOverheadBytes() {
  SeededRandom random(1);
  NewEvent e = SyntheticCall(random, 0, 1, 0);
  Event envelope;
  envelope.sequence = 1;
  envelope.stream_id = e.stream_id;
  envelope.actor = e.actor;
  envelope.body = e.body;
  return EncodeEventBody(envelope).size() + 32;
}

// CPU time of the calling thread: with fsync in the loop, wall time mixes
// disk latency with CPU; this is the appending CPU alone (RocksDB's
// background flushes and compactions run on other threads and are not in it).
int64_t ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

int RunBenchAppend(const BenchAppendOptions& options) {
  SystemClock clock;
  if (Status dir = PrepareBenchDir(options.data_dir, /*wipe=*/false); !dir.ok()) {
    std::fprintf(stderr, "keyledger bench append: %s\n", dir.message().c_str());
    return dir.code() == Code::kInvalidArgument ? 2 : 1;
  }
  LedgerOptions lo;
  lo.clock = &clock;
  lo.storage.wal_prefill_bytes = options.wal_prefill_mib << 20;
  auto ledger = Ledger::Open(options.data_dir, lo);
  if (!ledger.ok()) {
    std::fprintf(stderr, "bench append: %s\n", ledger.status().ToString().c_str());
    return 1;
  }
  size_t overhead = StoredOverheadBytes();
  size_t padding = options.value_size_bytes > overhead ? options.value_size_bytes - overhead : 0;
  uint64_t per_thread = options.events / static_cast<uint64_t>(options.threads);
  AppendOptions ao;
  ao.durability = options.sync ? Durability::kSync : Durability::kAsync;

  // Build every batch up front so the timed loop measures the append path only.
  SecureRandom random;
  std::vector<std::vector<std::vector<NewEvent>>> work(options.threads);
  uint64_t n = 0;
  for (auto& batches : work) {
    for (uint64_t done = 0; done < per_thread;) {
      uint64_t count = std::min<uint64_t>(options.batch, per_thread - done);
      std::vector<NewEvent> batch;
      for (uint64_t i = 0; i < count; i++) {
        batch.push_back(SyntheticCall(random, n++, options.keys, padding));
      }
      batches.push_back(std::move(batch));
      done += count;
    }
  }

  std::atomic<bool> failed{false};
  std::atomic<int64_t> cpu_ns{0};
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (auto& batches : work) {
    threads.emplace_back([&, &batches = batches] {
      const int64_t cpu_start = ThreadCpuNs();
      for (const auto& batch : batches) {
        auto r = (*ledger)->Append(batch, ao);
        if (!r.ok()) {
          std::fprintf(stderr, "bench append: %s\n", r.status().ToString().c_str());
          failed = true;
          return;
        }
      }
      cpu_ns += ThreadCpuNs() - cpu_start;
    });
  }
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) return 1;
  std::printf(
      "{\"benchmark\":\"append\",\"events\":%llu,\"value_size\":%zu,\"batch\":%zu,"
      "\"threads\":%d,\"keys\":%llu,\"sync\":%s,\"seconds\":%.3f,\"events_per_sec\":%.0f,"
      "\"append_cpu_us_per_event\":%.2f}\n",
      static_cast<unsigned long long>(n), options.value_size_bytes, options.batch,
      options.threads, static_cast<unsigned long long>(options.keys),
      options.sync ? "true" : "false", seconds,
      static_cast<double>(n) / seconds, static_cast<double>(cpu_ns.load()) / 1e3 / static_cast<double>(n));
  return 0;
}

}  // namespace keyledger::tools
