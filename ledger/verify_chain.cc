#include "ledger/verify_chain.h"

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

}  // namespace

Result<VerifyResult> VerifyChain(const Ledger& ledger,
                                 const std::function<void(uint64_t)>& progress) {
  std::unique_ptr<ScanAhead> ahead = ScanAhead::OfLedger(ledger, 1, 0);
  ChainChecker checker;
  Status status;
  uint64_t next_progress = kVerifyProgressEvents;
  Status scanned = ahead->ScanEvents([&](uint64_t sequence, std::string_view value) {
    status = checker.Check(sequence, value);
    if (progress && checker.verified() >= next_progress) {
      progress(checker.verified());
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
