// ledger/crc32c.h, and its use as RocksDB's crc32c::Extend.

#include "ledger/crc32c.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ledger/kv_store.h"
#include "tests/test_util.h"

// The linker's names (--wrap, ledger/CMakeLists.txt): librocksdb's own
// crc32c::Extend, and crc32c.cc's, which RocksDB's callers reach instead.
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size);
extern "C" uint32_t __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size);

namespace keyledger {
namespace {

uint32_t LibraryExtend(uint32_t crc, const char* data, size_t size) {
  return __real__ZN7rocksdb6crc32c6ExtendEjPKcm(crc, data, size);
}
uint32_t RedirectedExtend(uint32_t crc, const char* data, size_t size) {
  return __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(crc, data, size);
}

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

std::string Repeat(int byte, size_t n) { return std::string(n, static_cast<char>(byte)); }

// RFC 3720 (iSCSI), appendix B.4, and the common check value.
TEST(Crc32cTest, MatchesPublishedCheckValues) {
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  const std::vector<std::pair<std::string, uint32_t>> cases = {
      {Repeat(0x00, 32), 0x8a9136aa}, {Repeat(0xff, 32), 0x62a8ab43},
      {ascending, 0x46dd794e},        {descending, 0x113fdb5c},
      {"123456789", 0xe3069283},      {"", 0},
      {Bytes({0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
              0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
              0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
              0x00, 0x00, 0x00, 0x00, 0x00, 0x00}),
       0xd9963a56},
  };
  for (const auto& [input, want] : cases) {
    EXPECT_EQ(Crc32cExtend(0, input.data(), input.size()), want) << input.size() << " bytes";
    EXPECT_EQ(Crc32cByTable(0, input.data(), input.size()), want) << input.size() << " bytes";
  }
}

TEST(Crc32cTest, UsesTheCpuInstructionOnThisMachine) {
  // Every x86-64 server CPU of the last fifteen years has SSE4.2; without it
  // the table path is correct but the change this file guards is moot.
#if defined(__x86_64__)
  EXPECT_TRUE(Crc32cUsesHardware());
#else
  GTEST_SKIP() << "not x86-64";
#endif
}

RC_GTEST_PROP(Crc32cTest, AgreesWithTheTableAndWithRocksDbsOwn, (const std::string& data)) {
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();
  const size_t split = *rc::gen::inRange<size_t>(0, data.size() + 1);
  const uint32_t whole = Crc32cExtend(seed, data.data(), data.size());
  RC_ASSERT(whole == Crc32cByTable(seed, data.data(), data.size()));
  RC_ASSERT(whole == LibraryExtend(seed, data.data(), data.size()));
  RC_ASSERT(whole == RedirectedExtend(seed, data.data(), data.size()));
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

// What RocksDB writes with this CRC it reads back: a synced write survives a
// reopen, which replays the write-ahead log and checks every record's CRC.
TEST(Crc32cTest, RocksDbRecoversItsWriteAheadLog) {
  testing::ScratchDir dir;
  KvStoreOptions options;
  options.column_families.push_back(ColumnFamilySpec{"c"});
  {
    auto store = KvStore::Open(dir.path(), options);
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    KvBatch batch(**store);
    for (int i = 0; i < 100; ++i) batch.Put(0, testing::Numbered("k", i), Repeat('a' + i % 26, 1000));
    ASSERT_TRUE((*store)->Write(batch, Durability::kSync).ok());
  }
  auto store = KvStore::Open(dir.path(), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  for (int i = 0; i < 100; ++i) {
    auto value = (*store)->Get(0, testing::Numbered("k", i));
    ASSERT_TRUE(value.ok() && value->has_value()) << i;
    EXPECT_EQ(**value, Repeat('a' + i % 26, 1000));
  }
}

}  // namespace
}  // namespace keyledger
