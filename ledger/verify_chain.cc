#include "ledger/verify_chain.h"

#include <atomic>
#include <cassert>
#include <string>
#include <string_view>
#include <unordered_map>

#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/scan_ahead.h"

namespace keyledger::ledger_internal {
namespace {

// Transparent hashing, so stream ids are looked up without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// What the reading thread found when it hashed an event itself, passed to the
// checking thread in the ninth byte of the key (after the sequence).
enum class HashVerdict : char { kNotHashed = 0, kMatches = 1, kDiffers = 2 };

constexpr size_t kVerdictKeyBytes = 9;

// The checking thread publishes how far it got every this many events (not
// every event: the reading thread reads the counter on the other core).
constexpr uint64_t kCheckedPublishEvents = 256;

// The checks of one event, in log order.
class ChainChecker {
 public:
  // `verdict` is the reading thread's, if it hashed the event. Returns Ok,
  // or Corruption naming `sequence`.
  Status Check(uint64_t sequence, std::string_view value, HashVerdict verdict) {
    if (sequence != expected_) {
      return Status::Corruption("sequence " + std::to_string(expected_) + " is missing", expected_);
    }
    Hash stored_hash;
    std::string_view body;
    if (!SplitStoredValue(value, &stored_hash, &body).ok()) {
      return Status::Corruption("stored event too short", sequence);
    }
    // Hashes are public: a plain comparison is enough here.
    if (verdict == HashVerdict::kNotHashed && ChainHash(prev_, body) != stored_hash) {
      verdict = HashVerdict::kDiffers;
    }
    if (verdict == HashVerdict::kDiffers) {
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

// The reading thread's side: reads the log in order and hashes an event
// itself while the checker is at least `lag_events` behind. The hash it
// chains from is the previous stored hash in scan order, which is the
// checker's own (the checker consumes the same events in the same order).
// Thread safety: runs on the reading thread only; `checked` is the
// checker's published count.
Status ReadAndMaybeHash(const Ledger& ledger, uint64_t lag_events,
                        const std::atomic<uint64_t>& checked, const ScanAhead::Emit& emit) {
  Hash prev{};
  uint64_t emitted = 0;
  std::string key;
  return ledger.ScanRaw(1, 0, [&](uint64_t sequence, std::string_view value) {
    HashVerdict verdict = HashVerdict::kNotHashed;
    Hash stored_hash{};
    std::string_view body;
    // A value too short to split is left to the checker, which reports it.
    if (SplitStoredValue(value, &stored_hash, &body).ok() &&
        emitted - checked.load(std::memory_order_relaxed) >= lag_events) {
      verdict = ChainHash(prev, body) == stored_hash ? HashVerdict::kMatches : HashVerdict::kDiffers;
    }
    prev = stored_hash;
    key.clear();
    AppendBigEndian64(&key, sequence);
    key.push_back(static_cast<char>(verdict));
    emitted++;
    return emit(key, value);
  });
}

}  // namespace

Result<VerifyResult> VerifyChain(const Ledger& ledger, const VerifyOptions& options,
                                 const std::function<void(uint64_t)>& progress) {
  std::atomic<uint64_t> checked{0};
  const uint64_t lag_events = options.reader_hashes_at_lag_events;
  // Declared after `checked`, so its reading thread is joined before that goes.
  ScanAhead ahead([&](const ScanAhead::Emit& emit) {
    return ReadAndMaybeHash(ledger, lag_events, checked, emit);
  });
  ChainChecker checker;
  Status status;
  uint64_t next_progress = kVerifyProgressEvents;
  Status scanned = ahead.Scan([&](std::string_view key, std::string_view value) {
    assert(key.size() == kVerdictKeyBytes);
    const uint64_t sequence = DecodeBigEndian64(key.data());
    status = checker.Check(sequence, value, static_cast<HashVerdict>(key[8]));
    const uint64_t verified = checker.verified();
    if (verified % kCheckedPublishEvents == 0) checked.store(verified, std::memory_order_relaxed);
    if (progress && verified >= next_progress) {
      progress(verified);
      next_progress += kVerifyProgressEvents;
    }
    return status.ok();
  });
  KL_RETURN_IF_ERROR(scanned);
  KL_RETURN_IF_ERROR(status);
  VerifyResult result;
  result.events_verified = checker.verified();
  result.head.sequence = checker.verified();
  result.head.hash = checker.head_hash();
  return result;
}

}  // namespace keyledger::ledger_internal
