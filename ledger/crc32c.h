// CRC-32C (Castagnoli), the checksum RocksDB puts on every write-ahead-log
// record. crc32c.cc hands RocksDB this implementation (see the comment
// there): Debian's librocksdb is built without SSE4.2 and computes it a byte
// at a time from tables.
//
// Thread safety: stateless functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keyledger {

// Returns the CRC-32C of data[0, size) continuing from `crc`, the CRC-32C of
// the bytes before them (0 for none), as RocksDB's crc32c::Extend does:
// unmasked, so Crc32cExtend(Crc32cExtend(0, a), b) == Crc32cExtend(0, a ++ b).
// Uses the CPU's crc32 instruction when it has SSE4.2, else Crc32cByTable.
// REQUIRES: data != nullptr or size == 0.
uint32_t Crc32cExtend(uint32_t crc, const char* data, size_t size);

// The same result a byte at a time from a table (the fallback; tests compare
// the two).
uint32_t Crc32cByTable(uint32_t crc, const char* data, size_t size);

// Returns true when Crc32cExtend uses the CPU's crc32 instruction.
bool Crc32cUsesHardware();

}  // namespace keyledger
