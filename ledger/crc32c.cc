#include "ledger/crc32c.h"

#include <nmmintrin.h>

#include <cassert>
#include <cstring>

// RocksDB's own crc32c::Extend, by the linker's name for the definition a
// --wrap'ed symbol had (ledger/CMakeLists.txt).
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size);

namespace keyledger {
namespace {

thread_local uint64_t redirected_calls = 0;

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

bool CpuHasSse42() {
  __builtin_cpu_init();  // may run before libgcc's constructor has (static initializers)
  return __builtin_cpu_supports("sse4.2") != 0;
}

}  // namespace

bool Crc32cUsesHardware() {
  static const bool has = CpuHasSse42();
  return has;
}

uint32_t Crc32cExtend(uint32_t crc, const char* data, size_t size) {
  assert(data != nullptr || size == 0);
  if (Crc32cUsesHardware()) return ExtendSse42(crc, data, size);
  return __real__ZN7rocksdb6crc32c6ExtendEjPKcm(crc, data, size);
}

uint64_t Crc32cRedirectedCallsOnThisThread() { return redirected_calls; }

}  // namespace keyledger

// RocksDB checksums every write-ahead-log record with crc32c::Extend.
// Debian's librocksdb is built for any x86-64 (no SSE4.2), so its Extend
// computes CRC-32C from tables: 5% of the server's CPU under POST /v1/calls,
// on the appends' serial path (docs/performance.md, "CPU per recorded
// call"). The linker sends RocksDB's calls here instead (--wrap,
// ledger/CMakeLists.txt): the same results, from the CPU's crc32
// instruction. tests/crc32c_test.cc compares them with the library's own on
// random input and checks that a synced write reaches this function. The
// name is the linker's convention: "__wrap_" and the mangled name of
// rocksdb::crc32c::Extend. (RocksDB's LOG still says "Fast CRC32 supported:
// Not supported on x86": it reports how the library was built.)
extern "C" uint32_t __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size) {
  ++keyledger::redirected_calls;
  return keyledger::Crc32cExtend(crc, data, size);
}
