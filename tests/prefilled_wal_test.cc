// Prefilled WAL files (ledger/prefilled_wal.h) through KvStore: a crash
// keeps every synced write, secondary instances follow a prefilled WAL as
// it grows, and the spare file is looked after.
#include "ledger/prefilled_wal.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "ledger/kv_store.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

using testing::Numbered;
using testing::ScratchDir;
namespace fs = std::filesystem;

constexpr uint64_t kPrefillBytes = uint64_t{1} << 20;

KvStoreOptions PrefilledOptions() {
  KvStoreOptions options;
  options.column_families = {{.name = "data"}};
  options.wal_prefill_bytes = kPrefillBytes;
  options.flush_on_close = false;  // leave the WAL for the next open to read
  return options;
}

void Put(KvStore& store, const std::string& key, const std::string& value) {
  KvBatch batch(store);
  batch.Put(0, key, value);
  ASSERT_TRUE(store.Write(batch, Durability::kSync).ok());
}

std::string Get(const KvStore& store, const std::string& key) {
  auto value = store.Get(0, key);
  EXPECT_TRUE(value.ok()) << value.ToStatus().ToString();
  return value.ok() && value->has_value() ? **value : std::string("<missing>");
}

std::vector<fs::path> WalFiles(const std::string& dir) {
  std::vector<fs::path> wals;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".log") wals.push_back(entry.path());
  }
  std::sort(wals.begin(), wals.end());
  return wals;
}

// Whether the file's last `bytes` bytes are all fill.
bool EndsInFill(const fs::path& path, size_t bytes = 64) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(in.tellg());
  if (size < bytes) return false;
  std::string tail(bytes, '\0');
  in.seekg(static_cast<std::streamoff>(size - bytes));
  in.read(tail.data(), static_cast<std::streamsize>(bytes));
  return tail.find_first_not_of(kPrefilledWalFillByte) == std::string::npos;
}

// Waits up to 5 s for the filler thread to leave a spare in `db`.
bool WaitForSpare(const std::string& db) {
  const fs::path spare = fs::path(db) / kPrefilledWalSpareName;
  for (int i = 0; i < 500 && !fs::exists(spare); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return fs::exists(spare);
}

// What a killed process leaves: the directory as the page cache holds it.
// Files RocksDB deletes meanwhile (an obsolete WAL) are skipped.
void CopyAsACrashLeavesIt(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    std::error_code ec;
    fs::copy_file(entry.path(), fs::path(to) / entry.path().filename(), ec);
  }
}

TEST(PrefilledWalTest, TheWalOfAFreshStoreIsPrefilledAndASpareWaits) {
  ScratchDir dir;
  auto store = KvStore::Open(dir.sub("db"), PrefilledOptions());
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  const std::vector<fs::path> wals = WalFiles(dir.sub("db"));
  ASSERT_EQ(wals.size(), 1u);
  EXPECT_EQ(fs::file_size(wals[0]), kPrefillBytes);
  EXPECT_TRUE(fs::exists(wals[0].string() + kPrefilledWalEndSuffix));
  // The spare for the next WAL is filled in the background.
  ASSERT_TRUE(WaitForSpare(dir.sub("db")));
  EXPECT_EQ(fs::file_size(fs::path(dir.sub("db")) / kPrefilledWalSpareName), kPrefillBytes);
}

// A spare never takes the space the data needs: with less than twice its
// size free, none is filled, and the store works without one.
TEST(PrefilledWalTest, NoSpareIsFilledWhenTheSpaceIsShort) {
  ScratchDir dir;
  KvStoreOptions options = PrefilledOptions();
  options.wal_prefill_bytes = uint64_t{1} << 60;  // an exabyte: more than any disk here
  auto store = KvStore::Open(dir.sub("db"), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  Put(**store, "a", "first");
  EXPECT_EQ(Get(**store, "a"), "first");
  EXPECT_FALSE(fs::exists(fs::path(dir.sub("db")) / kPrefilledWalSpareName));
  EXPECT_FALSE(fs::exists(fs::path(dir.sub("db")) / kPrefilledWalFillingName));
  for (const fs::path& wal : WalFiles(dir.sub("db"))) {
    EXPECT_LT(fs::file_size(wal), uint64_t{1} << 20) << wal;
  }
}

TEST(PrefilledWalTest, ACrashKeepsEverySyncedWriteAcrossWalFiles) {
  ScratchDir dir;
  {
    auto store = KvStore::Open(dir.sub("db"), PrefilledOptions());
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    Put(**store, "a", "first");
    ASSERT_TRUE((*store)->Flush().ok());  // a new WAL: the old one is cut
    Put(**store, "b", std::string(100'000, 'b'));  // spans WAL blocks
    ASSERT_TRUE((*store)->Flush().ok());
    Put(**store, "c", "third");
    for (int i = 0; i < 50; i++) Put(**store, Numbered("k", i), Numbered("v", i));
    const std::vector<fs::path> wals = WalFiles(dir.sub("db"));
    ASSERT_FALSE(wals.empty());
    for (size_t i = 0; i + 1 < wals.size(); i++) {
      EXPECT_FALSE(EndsInFill(wals[i])) << wals[i] << ": only the newest WAL may hold fill";
    }
    EXPECT_TRUE(EndsInFill(wals.back())) << "the crash must leave fill to read past";
    CopyAsACrashLeavesIt(dir.sub("db"), dir.sub("crashed"));
  }
  for (const std::string name : {"crashed", "crashed"}) {  // and a second open after the first
    auto reopened = KvStore::Open(dir.sub(name), PrefilledOptions());
    ASSERT_TRUE(reopened.ok()) << reopened.ToStatus().ToString();
    EXPECT_EQ(Get(**reopened, "a"), "first");
    EXPECT_EQ(Get(**reopened, "b"), std::string(100'000, 'b'));
    EXPECT_EQ(Get(**reopened, "c"), "third");
    for (int i = 0; i < 50; i++) EXPECT_EQ(Get(**reopened, Numbered("k", i)), Numbered("v", i));
    Put(**reopened, "after", "the crash");
    EXPECT_EQ(Get(**reopened, "after"), "the crash");
  }
}

TEST(PrefilledWalTest, ClosingCutsTheFillAndRemovesTheSideFiles) {
  ScratchDir dir;
  {
    auto store = KvStore::Open(dir.sub("db"), PrefilledOptions());
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    Put(**store, "a", "1");
  }
  bool any_wal = false;
  for (const auto& entry : fs::directory_iterator(dir.sub("db"))) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find(kPrefilledWalEndSuffix), std::string::npos) << name;
    if (entry.path().extension() == ".log") {
      any_wal = true;
      EXPECT_LT(fs::file_size(entry.path()), kPrefillBytes) << name;
      EXPECT_FALSE(EndsInFill(entry.path())) << name;
    }
  }
  EXPECT_TRUE(any_wal);
  auto reopened = KvStore::Open(dir.sub("db"), PrefilledOptions());
  ASSERT_TRUE(reopened.ok()) << reopened.ToStatus().ToString();
  EXPECT_EQ(Get(**reopened, "a"), "1");
}

// A closing store flushes, and RocksDB makes one last WAL for it that lives
// only until the next open: that WAL must not spend the spare.
TEST(PrefilledWalTest, ClosingKeepsTheSpareForTheNextOpen) {
  ScratchDir dir;
  KvStoreOptions options = PrefilledOptions();
  options.flush_on_close = true;
  const fs::path spare = fs::path(dir.sub("db")) / kPrefilledWalSpareName;
  struct stat before;
  {
    auto store = KvStore::Open(dir.sub("db"), options);
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    Put(**store, "a", "1");
    ASSERT_TRUE(WaitForSpare(dir.sub("db")));
    ASSERT_EQ(::stat(spare.c_str(), &before), 0);
  }
  struct stat after;
  ASSERT_EQ(::stat(spare.c_str(), &after), 0) << "closing spent the spare";
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_EQ(after.st_nlink, 1u);
  // The next open's WAL is that spare.
  auto reopened = KvStore::Open(dir.sub("db"), options);
  ASSERT_TRUE(reopened.ok()) << reopened.ToStatus().ToString();
  EXPECT_EQ(Get(**reopened, "a"), "1");
  bool took_it = false;
  for (const fs::path& wal : WalFiles(dir.sub("db"))) {
    struct stat st;
    ASSERT_EQ(::stat(wal.c_str(), &st), 0);
    took_it = took_it || st.st_ino == before.st_ino;
  }
  EXPECT_TRUE(took_it);
}

TEST(PrefilledWalTest, ASecondaryFollowsAPrefilledWalAsItGrows) {
  ScratchDir dir;
  auto primary = KvStore::Open(dir.sub("db"), PrefilledOptions());
  ASSERT_TRUE(primary.ok()) << primary.ToStatus().ToString();
  Put(**primary, "k0", "v0");
  KvStoreOptions view_options = PrefilledOptions();
  view_options.mode = OpenMode::kSecondary;
  view_options.secondary_path = dir.sub("secondary");
  auto view = KvStore::Open(dir.sub("db"), view_options);
  ASSERT_TRUE(view.ok()) << view.ToStatus().ToString();
  EXPECT_EQ(Get(**view, "k0"), "v0");
  for (int i = 1; i <= 40; i++) {
    Put(**primary, Numbered("k", i), std::string(3'000, static_cast<char>('a' + i % 26)));
    if (i % 10 == 0) {
      ASSERT_TRUE((*primary)->Flush().ok());  // move on to a new WAL
    }
    if (i % 3 == 0) {
      ASSERT_TRUE((*view)->CatchUp().ok());
      for (int j = 1; j <= i; j++) {
        ASSERT_EQ(Get(**view, Numbered("k", j)),
                  std::string(3'000, static_cast<char>('a' + j % 26)))
            << "key " << j << " after write " << i;
      }
    }
  }
}

// Only the newest WAL may hold fill: recovery stops at fill, so an older WAL
// with fill would hide every newer one. The file system cuts the previous
// WAL when RocksDB asks for the next, before RocksDB closes it.
TEST(PrefilledWalTest, CreatingAWalCutsThePreviousOneAtOnce) {
  ScratchDir dir;
  fs::create_directories(dir.sub("db"));
  auto files = NewPrefilledWalFileSystem(rocksdb::FileSystem::Default(), dir.sub("db"),
                                         kPrefillBytes);
  std::unique_ptr<rocksdb::FSWritableFile> first;
  ASSERT_TRUE(files->NewWritableFile(dir.sub("db/000007.log"), rocksdb::FileOptions(), &first,
                                     nullptr).ok());
  ASSERT_TRUE(first->Append("records", rocksdb::IOOptions(), nullptr).ok());
  EXPECT_EQ(fs::file_size(dir.sub("db/000007.log")), kPrefillBytes);
  EXPECT_EQ(first->GetFileSize(rocksdb::IOOptions(), nullptr), 7u);
  ASSERT_TRUE(WaitForSpare(dir.sub("db")));  // the one the second WAL takes
  std::unique_ptr<rocksdb::FSWritableFile> second;
  ASSERT_TRUE(files->NewWritableFile(dir.sub("db/000009.log"), rocksdb::FileOptions(), &second,
                                     nullptr).ok());
  EXPECT_EQ(fs::file_size(dir.sub("db/000007.log")), 7u) << "the first WAL still holds fill";
  EXPECT_FALSE(fs::exists(dir.sub("db/000007.log") + kPrefilledWalEndSuffix));
  EXPECT_EQ(fs::file_size(dir.sub("db/000009.log")), kPrefillBytes);
  // Other files are created as usual.
  std::unique_ptr<rocksdb::FSWritableFile> other;
  ASSERT_TRUE(files->NewWritableFile(dir.sub("db/000010.sst"), rocksdb::FileOptions(), &other,
                                     nullptr).ok());
  EXPECT_EQ(fs::file_size(dir.sub("db/000010.sst")), 0u);
}

TEST(PrefilledWalTest, ASpareThatAWalSharesIsNotUsed) {
  ScratchDir dir;
  fs::create_directories(dir.sub("db"));
  const fs::path spare = fs::path(dir.sub("db")) / kPrefilledWalSpareName;
  const fs::path other = fs::path(dir.sub("db")) / "a-wal-name";
  { std::ofstream(spare, std::ios::binary) << std::string(kPrefillBytes, kPrefilledWalFillByte); }
  fs::create_hard_link(spare, other);  // as a crash between link and unlink leaves it
  std::ofstream(fs::path(dir.sub("db")) / kPrefilledWalFillingName) << "half";
  struct stat before;
  ASSERT_EQ(::stat(other.c_str(), &before), 0);
  auto store = KvStore::Open(dir.sub("db"), PrefilledOptions());
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  Put(**store, "a", "1");
  EXPECT_FALSE(fs::exists(fs::path(dir.sub("db")) / kPrefilledWalFillingName));
  for (const fs::path& wal : WalFiles(dir.sub("db"))) {
    struct stat st;
    ASSERT_EQ(::stat(wal.c_str(), &st), 0);
    EXPECT_NE(st.st_ino, before.st_ino) << wal << " took the shared spare";
  }
}

}  // namespace
}  // namespace keyledger
