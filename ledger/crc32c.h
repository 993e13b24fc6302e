// CRC-32C (Castagnoli), the checksum RocksDB puts on every write-ahead-log
// record. On x86-64 the linker sends RocksDB's crc32c::Extend here (see
// crc32c.cc): Debian's librocksdb.a is built without SSE4.2 and computes it
// from tables. Built only on x86-64 (ledger/CMakeLists.txt); elsewhere
// RocksDB keeps its own, which uses the CPU's instruction where it has one.
//
// Thread safety: thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keyledger {

// Returns the CRC-32C of data[0, size) continuing from `crc`, the CRC-32C of
// the bytes before them (0 for none), as RocksDB's crc32c::Extend does:
// unmasked, so Crc32cExtend(Crc32cExtend(0, a), b) == Crc32cExtend(0, a ++ b).
// Uses the CPU's crc32 instruction when it has SSE4.2, else RocksDB's own.
// REQUIRES: data != nullptr or size == 0.
uint32_t Crc32cExtend(uint32_t crc, const char* data, size_t size);

// Returns true when Crc32cExtend uses the CPU's crc32 instruction.
bool Crc32cUsesHardware();

// Returns how many times RocksDB's calls to crc32c::Extend reached
// Crc32cExtend on the calling thread (tests: proof that the redirection
// holds).
uint64_t Crc32cRedirectedCallsOnThisThread();

}  // namespace keyledger
