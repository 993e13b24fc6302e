// ScanAhead: runs one scan (of a ledger range or a KvStore column family) on
// a thread of its own, ahead of the code that consumes it, so reading and
// consuming overlap on two cores. Used where a whole range is read once:
// verify, projection folds and rebuilds, loading stored projections.
//
// The reading thread copies keys and values into chunks; at most
// kScanAheadChunks chunks of about kScanAheadChunkBytes are held at once.
// Every key and value starts at an 8-byte-aligned address, so a Cap'n Proto
// body found 32 bytes into a stored event is word-aligned (no decode copy).
//
// OfLedgerDecodingCalls also decodes each event (DecodeCallEvent), on the
// reading thread while the consumer has kScanAheadDecodeBacklogChunks chunks
// or more waiting, else on the consumer's thread: whichever thread is ahead
// takes the decoding, so that neither core waits while the other has work.
//
// Thread safety: construct, Scan and destroy on one thread. The scan function
// runs on the reading thread, from the constructor until it ends or the
// ScanAhead is destroyed; whatever it reads must be safe to read from there
// (Ledger and KvStore reads are).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "ledger/codec.h"
#include "ledger/status.h"

namespace keyledger {

class Ledger;
class KvStore;

inline constexpr size_t kScanAheadChunks = 8;
inline constexpr size_t kScanAheadChunkBytes = 1u << 20;
inline constexpr size_t kScanAheadChunkItemsMax = 4096;
// OfLedgerDecodingCalls' reading thread decodes while the consumer has at
// least this many read chunks waiting.
inline constexpr size_t kScanAheadDecodeBacklogChunks = 2;
// ScanDecodedCallEvents fetches items this far ahead into the cache.
inline constexpr size_t kScanAheadPrefetchItems = 4;
// ScanDecodedCallEvents' `ahead` sees the item this far after the one its
// `fn` gets next.
inline constexpr size_t kScanAheadLookaheadItems = 3;
static_assert(kScanAheadLookaheadItems < kScanAheadPrefetchItems);  // its ids are fetched

// What ScanAhead::OfLedgerDecodingCalls made of one stored event (on the
// reading thread or on the consumer's).
struct DecodedCallEvent {
  // OK, or the Corruption that SplitStoredValue or DecodeCallEvent returned.
  Status status;
  // DecodeCallEvent's view of the event's body; meaningful when status.ok().
  CallEventView view;
};

class ScanAhead {
 public:
  // Receives each pair; returns false to stop.
  using Emit = std::function<bool(std::string_view key, std::string_view value)>;
  // Runs the scan, passing each pair to `emit`; stops when `emit` returns
  // false; returns the scan's status.
  using ScanFn = std::function<Status(const Emit& emit)>;

  // Starts the reading thread on `scan`.
  explicit ScanAhead(ScanFn scan);
  // Stops the reading thread (its scan sees `emit` return false) and joins it.
  ~ScanAhead();
  ScanAhead(const ScanAhead&) = delete;
  ScanAhead& operator=(const ScanAhead&) = delete;

  // Reads [from, to] of `ledger` (to == 0: to the last stored event) as Ledger::ScanRaw,
  // with the sequence as an 8-byte big-endian key.
  // REQUIRES: `ledger` outlives the returned object.
  static std::unique_ptr<ScanAhead> OfLedger(const Ledger& ledger, uint64_t from, uint64_t to);
  // The same, and each event is also split (SplitStoredValue) and decoded
  // (DecodeCallEvent), by the reading thread while the consumer has at least
  // `decode_backlog_chunks` chunks waiting, else by the consumer (0: always
  // the reading thread; SIZE_MAX: always the consumer): read them with
  // ScanDecodedCallEvents. REQUIRES: `ledger` outlives the returned object.
  static std::unique_ptr<ScanAhead> OfLedgerDecodingCalls(
      const Ledger& ledger, uint64_t from, uint64_t to,
      size_t decode_backlog_chunks = kScanAheadDecodeBacklogChunks);
  // Reads [start, end) of column family `cf` of `store` as a bulk
  // KvStore::Scan. The views are copied: `start` and `end` need not outlive
  // the call. REQUIRES: `store` outlives the returned object.
  static std::unique_ptr<ScanAhead> OfStore(const KvStore& store, int cf, std::string_view start,
                                            std::string_view end);

  // Calls fn(key, value) for the next pairs in order until fn returns false
  // (that pair is consumed) or the scan ends; the views are valid only
  // during the call. Called again, continues after the last consumed pair.
  // Returns the scan's error once the pairs before it are consumed, OK
  // otherwise.
  [[nodiscard]] Status Scan(const Emit& fn);
  // The same for OfLedger: fn(sequence, stored value).
  [[nodiscard]] Status ScanEvents(const std::function<bool(uint64_t sequence, std::string_view value)>& fn);
  // The same for OfLedgerDecodingCalls: fn(sequence, stored value, what was
  // decoded of it). The event's views, like the value, are valid only during
  // the call.
  using DecodedEventFn = std::function<bool(uint64_t sequence, std::string_view value,
                                            const DecodedCallEvent& event)>;
  // For prefetching: receives what was decoded of the item
  // kScanAheadLookaheadItems after the one `fn` gets next (decoding it now if
  // the reading thread did not), before `fn` gets that one; nothing near the
  // end of a read chunk. The views are valid only during the call.
  using LookaheadFn = std::function<void(const DecodedCallEvent& event)>;
  [[nodiscard]] Status ScanDecodedCallEvents(const DecodedEventFn& fn,
                                             const LookaheadFn& ahead = {});

 private:
  struct Rep;
  ScanAhead(ScanFn scan, bool decode_calls, size_t decode_backlog_chunks);
  std::unique_ptr<Rep> rep_;
};

}  // namespace keyledger
