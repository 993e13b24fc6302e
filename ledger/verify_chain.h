// Private to kl_ledger: the chain walk behind Ledger::Verify.
#pragma once

#include <cstdint>
#include <functional>

#include "ledger/ledger.h"

namespace keyledger::ledger_internal {

// Verify calls `progress` every this many events.
inline constexpr uint64_t kVerifyProgressEvents = 65'536;

// Walks the whole log of `ledger` as Ledger::Verify documents (hashes from
// the stored bytes, dense sequences, envelope positions, stream versions),
// on two threads: a ScanAhead reads the stored values, this one checks
// them, so reading and hashing overlap; the reading thread also hashes while
// this one lags (`options`). Returns the count and the head it reached, or
// Corruption with the first bad sequence, or the scan's error. Does not
// compare the result with the stored head record (the caller does).
Result<VerifyResult> VerifyChain(const Ledger& ledger, const VerifyOptions& options,
                                 const std::function<void(uint64_t)>& progress);

}  // namespace keyledger::ledger_internal
