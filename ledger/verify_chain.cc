#include "ledger/verify_chain.h"

#include <atomic>
#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include <sodium.h>

#include "ledger/codec.h"
#include "ledger/varint.h"
#include "ledger/hash.h"
#include "ledger/random.h"
#include "ledger/scan_ahead.h"
#include "ledger/thread_name.h"

namespace keyledger::ledger_internal {

void AppendStreamKey(std::string_view stream_id, uint64_t version, std::string* out) {
  out->append(stream_id);
  out->push_back('\0');
  AppendBigEndian64(out, version);
}

std::string StreamKey(std::string_view stream_id, uint64_t version) {
  std::string key;
  AppendStreamKey(stream_id, version, &key);
  return key;
}

namespace {

// An index of the ledger (the streams or the event-id column family) as an
// order-free multiset digest: the count of its entries and the sum, mod 2^64,
// of a keyed SipHash (libsodium's crypto_shorthash) of each varint(key size)
// ‖ key ‖ value (the size keeps an entry whose key and value split the same
// bytes elsewhere from hashing alike). The
// key is drawn per Verify, so nobody can choose entries whose sums cancel. An
// index equals the one the events imply exactly when (up to a 2^-64 chance)
// count and sum agree: no entry missing, changed or added.
class IndexDigest {
 public:
  explicit IndexDigest(const uint8_t* key) : key_(key) {}
  void Add(std::string_view key, std::string_view value) {
    uint8_t size[kVarintBytesMax];
    buffer_.assign(reinterpret_cast<const char*>(size), EncodeVarint(key.size(), size));
    buffer_.append(key);
    buffer_.append(value);
    uint64_t h = 0;
    crypto_shorthash(reinterpret_cast<unsigned char*>(&h),
                     reinterpret_cast<const unsigned char*>(buffer_.data()), buffer_.size(), key_);
    sum_ += h;
    count_++;
  }
  bool operator==(const IndexDigest& other) const {
    return count_ == other.count_ && sum_ == other.sum_;
  }

 private:
  const uint8_t* key_;  // crypto_shorthash_KEYBYTES
  std::string buffer_;  // reused
  uint64_t sum_ = 0;
  uint64_t count_ = 0;
};

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

// The keys an event's index entries have, in the order of `kIndexFamilies`.
constexpr int kIndexFamilies[] = {kCfStreams, kCfEventIds};
// Sets *out to the key of `header`'s entry in index `cf` (a reused buffer:
// the chain walk calls this twice per event).
void SetIndexKey(int cf, const EnvelopeHeader& header, std::string* out) {
  out->clear();
  if (cf == kCfStreams) {
    AppendStreamKey(header.stream_id, header.stream_version, out);
  } else {
    out->append(reinterpret_cast<const char*>(header.event_id.data()), header.event_id.size());
  }
}
std::string IndexKey(int cf, const EnvelopeHeader& header) {
  std::string key;
  SetIndexKey(cf, header, &key);
  return key;
}

// The checks of one event, in log order.
class ChainChecker {
 public:
  // `index_key`: the IndexDigest key, or nullptr when the indexes are not checked.
  explicit ChainChecker(const uint8_t* index_key)
      : digest_indexes_(index_key != nullptr), streams_(index_key), event_ids_(index_key) {}

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
    if (digest_indexes_) {
      sequence_value_.clear();
      AppendBigEndian64(&sequence_value_, sequence);
      SetIndexKey(kCfStreams, *header, &index_key_);
      streams_.Add(index_key_, sequence_value_);
      SetIndexKey(kCfEventIds, *header, &index_key_);
      event_ids_.Add(index_key_, sequence_value_);
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
  // What the streams and event-id indexes must hold, as the events imply.
  const IndexDigest& streams() const { return streams_; }
  const IndexDigest& event_ids() const { return event_ids_; }

 private:
  const bool digest_indexes_;
  IndexDigest streams_;
  IndexDigest event_ids_;
  std::string sequence_value_;  // reused
  std::string index_key_;       // reused
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

// The digest of column family `cf` of the ledger's store, read whole.
Result<IndexDigest> DigestIndex(const KvStore& store, int cf, const uint8_t* key) {
  IndexDigest digest(key);
  KL_RETURN_IF_ERROR(store.Scan(
      cf, "", "",
      [&](std::string_view k, std::string_view v) {
        digest.Add(k, v);
        return true;
      },
      ScanKind::kBulk));
  return digest;
}

// The header of the stored event `value`. REQUIRES: the chain walk accepted it.
EnvelopeHeader HeaderOf(std::string_view value) {
  Hash hash;
  std::string_view body;
  Status split = SplitStoredValue(value, &hash, &body);
  assert(split.ok());
  auto header = DecodeEnvelopeHeader(body);
  assert(header.ok());
  return std::move(header).value();
}

// After a digest mismatch (rare: tampering), finds what differs, one lookup
// per event: the first event of 1..head without its exact entries, else the
// event an extra entry names. Returns that Corruption, or the store's error.
Status FindBadIndexEntry(const Ledger& ledger, const KvStore& store, uint64_t head) {
  Status bad;
  std::string expected;
  KL_RETURN_IF_ERROR(ledger.ScanRaw(1, head, [&](uint64_t sequence, std::string_view value) {
    const EnvelopeHeader header = HeaderOf(value);
    expected.clear();
    AppendBigEndian64(&expected, sequence);
    for (int cf : kIndexFamilies) {
      auto entry = store.Get(cf, IndexKey(cf, header));
      if (!entry.ok()) {
        bad = entry.status();
      } else if (!*entry || **entry != expected) {
        bad = Status::Corruption(std::string(cf == kCfStreams ? "stream" : "event-id") +
                                     " index entry of the event is missing or changed",
                                 sequence);
      }
      if (!bad.ok()) return false;
    }
    return true;
  }));
  KL_RETURN_IF_ERROR(bad);
  for (int cf : kIndexFamilies) {  // every event has its entries: one is extra
    KL_RETURN_IF_ERROR(store.Scan(cf, "", "", [&](std::string_view key, std::string_view value) {
      // A value that is no sequence names no event: reported past the head.
      const uint64_t sequence = value.size() == 8 ? DecodeBigEndian64(value.data()) : UINT64_MAX;
      bool matches = false;
      if (sequence >= 1 && sequence <= head) {
        Status read = ledger.ScanRaw(sequence, sequence, [&](uint64_t, std::string_view stored) {
          matches = IndexKey(cf, HeaderOf(stored)) == key;
          return false;
        });
        if (!read.ok()) bad = read;
      }
      if (bad.ok() && !matches) {
        bad = Status::Corruption("an index entry names no event with its key",
                                 sequence <= head ? sequence : head + 1);
      }
      return bad.ok();
    }));
    KL_RETURN_IF_ERROR(bad);
  }
  return Status::Corruption("the indexes do not match the log", head + 1);
}

// The digests of both indexes, read on a thread of their own while the
// chain walk runs. Thread safety: construct, Check and destroy on one thread.
class IndexReader {
 public:
  IndexReader(const KvStore& store, const uint8_t* key)
      : streams_(Status::Unavailable("not read yet")),
        event_ids_(Status::Unavailable("not read yet")),
        thread_([this, &store, key] {
          NameThisThread("kl-verify-index");
          streams_ = DigestIndex(store, kCfStreams, key);
          event_ids_ = DigestIndex(store, kCfEventIds, key);
        }) {}
  ~IndexReader() {
    if (thread_.joinable()) thread_.join();
  }
  // Checks that the indexes hold exactly the entries the verified events
  // imply (see IndexDigest); on a difference, names it (FindBadIndexEntry).
  Status Check(const Ledger& ledger, const KvStore& store, const ChainChecker& checker) {
    thread_.join();
    KL_RETURN_IF_ERROR(streams_.ToStatus());
    KL_RETURN_IF_ERROR(event_ids_.ToStatus());
    if (*streams_ == checker.streams() && *event_ids_ == checker.event_ids()) return Status::Ok();
    return FindBadIndexEntry(ledger, store, checker.verified());
  }

 private:
  Result<IndexDigest> streams_;
  Result<IndexDigest> event_ids_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace

Result<VerifyResult> VerifyChain(const Ledger& ledger, const KvStore& store,
                                 const VerifyOptions& options,
                                 const std::function<void(uint64_t)>& progress) {
  std::atomic<uint64_t> checked{0};
  const uint64_t lag_events = options.reader_hashes_at_lag_events;
  // Declared after `checked`, so its reading thread is joined before that goes.
  ScanAhead ahead([&](const ScanAhead::Emit& emit) {
    return ReadAndMaybeHash(ledger, lag_events, checked, emit);
  });
  uint8_t index_key[crypto_shorthash_KEYBYTES];
  SecureRandom().Fill(index_key, sizeof(index_key));
  ChainChecker checker(options.check_indexes ? index_key : nullptr);
  // After index_key, which its thread reads: joined before that goes.
  std::optional<IndexReader> indexes;
  if (options.check_indexes) indexes.emplace(store, index_key);
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
  if (indexes) KL_RETURN_IF_ERROR(indexes->Check(ledger, store, checker));
  VerifyResult result;
  result.events_verified = checker.verified();
  result.head.sequence = checker.verified();
  result.head.hash = checker.head_hash();
  return result;
}

}  // namespace keyledger::ledger_internal
