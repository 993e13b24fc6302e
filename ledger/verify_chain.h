// Private to kl_ledger: the chain walk behind Ledger::Verify.
#pragma once

#include <cstdint>
#include <functional>

#include "ledger/ledger.h"

namespace keyledger::ledger_internal {

// Events per batch handed from the reading thread to the checking thread.
inline constexpr size_t kVerifyBatchEventsMax = 8192;
// Stored bytes per batch (a batch closes at whichever limit comes first).
inline constexpr size_t kVerifyBatchBytesMax = 4u << 20;
// Batches in flight between the two threads: bounds memory to about
// kVerifyQueueBatchesMax * kVerifyBatchBytesMax.
inline constexpr size_t kVerifyQueueBatchesMax = 4;
// Verify calls `progress` every this many events.
inline constexpr uint64_t kVerifyProgressEvents = 65'536;

// Walks the whole log of `ledger` as Ledger::Verify documents (hashes from
// the stored bytes, dense sequences, envelope positions, stream versions),
// on two threads: one reads the stored values (ScanRaw), this one checks
// them, so reading and hashing overlap. Returns the count and the head it
// reached, or Corruption with the first bad sequence, or the scan's error.
// Does not compare the result with the stored head record (the caller does).
Result<VerifyResult> VerifyChain(const Ledger& ledger,
                                 const std::function<void(uint64_t)>& progress);

}  // namespace keyledger::ledger_internal
