// ledger/crc32c.h, and its use as RocksDB's crc32c::Extend (built on x86-64
// only, as the redirection is).

#include "ledger/crc32c.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ledger/kv_store.h"
#include "tests/test_util.h"

// The linker's name (--wrap, ledger/CMakeLists.txt) for librocksdb's own
// crc32c::Extend.
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size);

namespace keyledger {
namespace {

uint32_t LibraryExtend(uint32_t crc, const char* data, size_t size) {
  return __real__ZN7rocksdb6crc32c6ExtendEjPKcm(crc, data, size);
}

std::string Repeat(int byte, size_t n) { return std::string(n, static_cast<char>(byte)); }

// RFC 3720 (iSCSI), appendix B.4, and the common check value.
TEST(Crc32cTest, MatchesPublishedCheckValues) {
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  std::string read_command(48, '\0');  // an iSCSI SCSI Read (10) command PDU
  for (auto [at, byte] : {std::pair{0, 0x01}, {1, 0xc0}, {16, 0x14}, {22, 0x04}, {27, 0x14},
                          {31, 0x18}, {32, 0x28}, {40, 0x02}}) {
    read_command[static_cast<size_t>(at)] = static_cast<char>(byte);
  }
  const std::vector<std::pair<std::string, uint32_t>> cases = {
      {Repeat(0x00, 32), 0x8a9136aa}, {Repeat(0xff, 32), 0x62a8ab43}, {ascending, 0x46dd794e},
      {descending, 0x113fdb5c},       {read_command, 0xd9963a56},     {"123456789", 0xe3069283},
      {"", 0},
  };
  for (const auto& [input, want] : cases) {
    EXPECT_EQ(Crc32cExtend(0, input.data(), input.size()), want) << input.size() << " bytes";
    EXPECT_EQ(LibraryExtend(0, input.data(), input.size()), want) << input.size() << " bytes";
  }
}

// Every x86-64 server CPU of the last fifteen years has SSE4.2; an emulated
// CPU without it (QEMU's qemu64) fails here, though Crc32cExtend stays
// correct there (it falls back to RocksDB's own).
TEST(Crc32cTest, UsesTheCpuInstructionOnThisMachine) { EXPECT_TRUE(Crc32cUsesHardware()); }

RC_GTEST_PROP(Crc32cTest, AgreesWithRocksDbsOwn, (const std::string& data)) {
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();
  const size_t split = *rc::gen::inRange<size_t>(0, data.size() + 1);
  const uint32_t whole = Crc32cExtend(seed, data.data(), data.size());
  RC_ASSERT(whole == LibraryExtend(seed, data.data(), data.size()));
  // Extending in two parts gives the CRC of the whole, from any offset
  // (unaligned loads included).
  const uint32_t head = Crc32cExtend(seed, data.data(), split);
  RC_ASSERT(whole == Crc32cExtend(head, data.data() + split, data.size() - split));
}

TEST(Crc32cTest, LargeUnalignedBuffersAgreeWithRocksDbsOwn) {
  std::string data(1 << 20, '\0');
  uint64_t x = 0x9e3779b97f4a7c15;
  for (char& c : data) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>(x);
  }
  for (size_t offset : {0, 1, 3, 7}) {
    const char* p = data.data() + offset;
    const size_t n = data.size() - offset;
    EXPECT_EQ(Crc32cExtend(0, p, n), LibraryExtend(0, p, n)) << "offset " << offset;
  }
}

// RocksDB's synced write reaches Crc32cExtend (the write-ahead-log record's
// CRC is computed on the writing thread), and what it writes with it, it
// reads back: the reopen replays the log (no flush at close), checking
// every record's CRC.
TEST(Crc32cTest, RocksDbChecksumsItsWriteAheadLogWithIt) {
  testing::ScratchDir dir;
  KvStoreOptions options;
  options.column_families.push_back(ColumnFamilySpec{"c"});
  options.flush_on_close = false;
  auto value_of = [](int i) { return Repeat('a' + i % 26, 1000); };
  {
    auto store = KvStore::Open(dir.path(), options);
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    KvBatch batch(**store);
    for (int i = 0; i < 100; ++i) batch.Put(0, testing::Numbered("k", i), value_of(i));
    const uint64_t before = Crc32cRedirectedCallsOnThisThread();
    ASSERT_TRUE((*store)->Write(batch, Durability::kSync).ok());
    EXPECT_GT(Crc32cRedirectedCallsOnThisThread(), before);
  }
  auto store = KvStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  for (int i = 0; i < 100; ++i) {
    auto value = (*store)->Get(0, testing::Numbered("k", i));
    ASSERT_TRUE(value.ok() && value->has_value()) << i;
    EXPECT_EQ(**value, value_of(i));
  }
}

}  // namespace
}  // namespace keyledger
