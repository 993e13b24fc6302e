#include "ledger/verify_chain.h"

#include <atomic>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ledger/codec.h"
#include "ledger/hash.h"

namespace keyledger::ledger_internal {
namespace {

// Stored values of consecutive sequences, copied out of the scan.
struct RawBatch {
  uint64_t first_sequence = 0;
  std::string bytes;
  std::vector<uint32_t> ends;  // ends[i]: end offset of event first_sequence + i
  Status scan_status;          // set on the last batch only
  bool last = false;
};

// A bounded single-producer single-consumer queue of batches. Close() wakes
// both sides; Push then refuses and Pop drains what is left.
class BatchQueue {
 public:
  // Returns false once closed.
  bool Push(RawBatch batch) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return closed_ || queue_.size() < kVerifyQueueBatchesMax; });
    if (closed_) return false;
    queue_.push_back(std::move(batch));
    not_empty_.notify_one();
    return true;
  }
  // Returns std::nullopt once closed and empty.
  std::optional<RawBatch> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return closed_ || !queue_.empty(); });
    if (queue_.empty()) return std::nullopt;
    RawBatch batch = std::move(queue_.front());
    queue_.pop_front();
    not_full_.notify_one();
    return batch;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<RawBatch> queue_;
  bool closed_ = false;
};

// Transparent hashing, so stream ids are looked up without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// The checks of one event, in log order.
class ChainChecker {
 public:
  // Returns Ok, or Corruption naming `sequence`.
  Status Check(uint64_t sequence, std::string_view value) {
    if (sequence != expected_) {
      return Status::Corruption("sequence " + std::to_string(expected_) + " is missing", expected_);
    }
    Hash stored_hash;
    std::string_view body;
    if (!SplitStoredValue(value, &stored_hash, &body).ok()) {
      return Status::Corruption("stored event too short", sequence);
    }
    // Hashes are public: a plain comparison is enough here.
    if (ChainHash(prev_, body) != stored_hash) {
      return Status::Corruption("hash mismatch: stored bytes were changed", sequence);
    }
    auto header = DecodeEnvelopeHeader(body);
    if (!header.ok() || header->sequence != sequence || header->prev_hash != prev_) {
      return Status::Corruption(
          header.ok() ? "envelope does not match its position" : header.status().message(),
          sequence);
    }
    auto it = versions_.find(std::string_view(header->stream_id));
    const uint64_t version = it == versions_.end() ? 0 : it->second;
    if (header->stream_version != version + 1) {
      return Status::Corruption("stream " + header->stream_id + " jumps from version " +
                                    std::to_string(version) + " to " +
                                    std::to_string(header->stream_version),
                                sequence);
    }
    if (it == versions_.end()) {
      versions_.emplace(std::move(header->stream_id), 1);
    } else {
      it->second = header->stream_version;
    }
    prev_ = stored_hash;
    expected_++;
    return Status::Ok();
  }
  uint64_t verified() const { return expected_ - 1; }
  const Hash& head_hash() const { return prev_; }

 private:
  Hash prev_{};
  uint64_t expected_ = 1;
  std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> versions_;
};

// The reading side: scans the log into batches until the end, a refused
// Push (the checker stopped), or a scan error (sent with the last batch).
void ReadBatches(const Ledger& ledger, BatchQueue* queue) {
  RawBatch batch;
  bool open = true;
  Status scanned = ledger.ScanRaw(1, 0, [&](uint64_t sequence, std::string_view value) {
    if (batch.ends.empty()) batch.first_sequence = sequence;
    batch.bytes.append(value);
    batch.ends.push_back(static_cast<uint32_t>(batch.bytes.size()));
    if (batch.ends.size() < kVerifyBatchEventsMax && batch.bytes.size() < kVerifyBatchBytesMax) {
      return true;
    }
    open = queue->Push(std::move(batch));
    batch = RawBatch{};
    return open;
  });
  if (!open) return;
  batch.scan_status = scanned;
  batch.last = true;
  queue->Push(std::move(batch));
}

}  // namespace

Result<VerifyResult> VerifyChain(const Ledger& ledger,
                                 const std::function<void(uint64_t)>& progress) {
  BatchQueue queue;
  std::thread reader(ReadBatches, std::cref(ledger), &queue);
  ChainChecker checker;
  Status status;
  uint64_t next_progress = kVerifyProgressEvents;
  bool done = false;
  while (!done && status.ok()) {
    std::optional<RawBatch> batch = queue.Pop();
    assert(batch.has_value());  // the reader always ends with a `last` batch
    uint32_t begin = 0;
    for (size_t i = 0; i < batch->ends.size() && status.ok(); i++) {
      const std::string_view value(batch->bytes.data() + begin, batch->ends[i] - begin);
      status = checker.Check(batch->first_sequence + i, value);
      begin = batch->ends[i];
    }
    if (progress && checker.verified() >= next_progress) {
      progress(checker.verified());
      next_progress = (checker.verified() / kVerifyProgressEvents + 1) * kVerifyProgressEvents;
    }
    done = batch->last;
    if (done && status.ok()) status = batch->scan_status;
  }
  queue.Close();  // stops the reader early after a failed check
  reader.join();
  KL_RETURN_IF_ERROR(status);
  VerifyResult result;
  result.events_verified = checker.verified();
  result.head.sequence = checker.verified();
  result.head.hash = checker.head_hash();
  return result;
}

}  // namespace keyledger::ledger_internal
