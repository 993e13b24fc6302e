// Private to kl_ledger: the chain walk behind Ledger::Verify.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "ledger/kv_store.h"
#include "ledger/ledger.h"

namespace keyledger::ledger_internal {

// Verify calls `progress` every this many events.
inline constexpr uint64_t kVerifyProgressEvents = 65'536;

// Walks the whole log of `ledger` as Ledger::Verify documents (hashes from
// the stored bytes, dense sequences, envelope positions, stream versions),
// on two threads: a ScanAhead reads the stored values, this one checks
// them, so reading and hashing overlap; the reading thread also hashes while
// this one lags (`options`). Then checks that the stream and event-id
// indexes of `store` (the ledger's own) hold exactly one entry per event,
// naming it (see CheckIndexes in the .cc). Returns the count and the head it
// reached, or Corruption with the first bad sequence, or the scan's error.
// Does not compare the result with the stored head record (the caller does).
Result<VerifyResult> VerifyChain(const Ledger& ledger, const KvStore& store,
                                 const VerifyOptions& options,
                                 const std::function<void(uint64_t)>& progress);

// The key of `stream_id`'s event `version` in the ledger's streams column
// family: stream_id '\0' big-endian(version). (Its value: the sequence, 8 BE.)
// The one definition of that layout: the append path, reads and Verify use it.
void AppendStreamKey(std::string_view stream_id, uint64_t version, std::string* out);
// The same, as a new string.
std::string StreamKey(std::string_view stream_id, uint64_t version);

}  // namespace keyledger::ledger_internal
