#include "ledger/crc32c.h"

#include <array>
#include <cassert>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace keyledger {
namespace {

constexpr uint32_t kCastagnoliReflected = 0x82f63b78;

// The byte-at-a-time table of the reflected Castagnoli polynomial.
constexpr std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) != 0 ? kCastagnoliReflected : 0);
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = MakeTable();

#if defined(__x86_64__)
// REQUIRES: the CPU has SSE4.2.
__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t crc, const char* data,
                                                        size_t size) {
  uint64_t state = crc ^ 0xffffffffu;
  // Eight bytes per instruction; memcpy keeps the loads unaligned-safe.
  for (; size >= sizeof(uint64_t); size -= sizeof(uint64_t), data += sizeof(uint64_t)) {
    uint64_t word;
    std::memcpy(&word, data, sizeof(word));
    state = _mm_crc32_u64(state, word);
  }
  auto state32 = static_cast<uint32_t>(state);
  for (; size > 0; --size, ++data) state32 = _mm_crc32_u8(state32, static_cast<uint8_t>(*data));
  return state32 ^ 0xffffffffu;
}

bool CpuHasSse42() { return __builtin_cpu_supports("sse4.2") != 0; }
#endif

}  // namespace

uint32_t Crc32cByTable(uint32_t crc, const char* data, size_t size) {
  assert(data != nullptr || size == 0);
  uint32_t state = crc ^ 0xffffffffu;
  for (size_t i = 0; i < size; ++i) {
    state = kTable[(state ^ static_cast<uint8_t>(data[i])) & 0xff] ^ (state >> 8);
  }
  return state ^ 0xffffffffu;
}

bool Crc32cUsesHardware() {
#if defined(__x86_64__)
  static const bool has = CpuHasSse42();
  return has;
#else
  return false;
#endif
}

uint32_t Crc32cExtend(uint32_t crc, const char* data, size_t size) {
  assert(data != nullptr || size == 0);
#if defined(__x86_64__)
  if (Crc32cUsesHardware()) return ExtendSse42(crc, data, size);
#endif
  return Crc32cByTable(crc, data, size);
}

}  // namespace keyledger

// RocksDB checksums every write-ahead-log record with crc32c::Extend.
// Debian's librocksdb is built for any x86-64 (no SSE4.2), so its Extend
// computes CRC-32C from tables, a byte at a time: 5% of the server's CPU
// under POST /v1/calls, on the appends' serial path (docs/performance.md,
// "Hardware CRC-32C and a compressed level 0"). The linker sends RocksDB's
// calls here instead (--wrap, ledger/CMakeLists.txt): the same results, from
// the CPU's crc32 instruction. tests/crc32c_test.cc compares them with the
// library's own (__real_...) on random input. The name is the linker's
// convention: "__wrap_" and the mangled name of rocksdb::crc32c::Extend.
extern "C" uint32_t __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size) {
  return keyledger::Crc32cExtend(crc, data, size);
}
