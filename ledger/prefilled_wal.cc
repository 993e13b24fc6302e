#include "ledger/prefilled_wal.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "ledger/kv_store.h"
#include "ledger/thread_name.h"

namespace keyledger {
namespace {

// Fill bytes written per write() while filling a spare.
constexpr size_t kFillChunkBytes = size_t{1} << 20;
// Bytes filled between two sync_file_range calls, so the spare's writeback
// trickles out instead of landing in one burst ahead of a WAL fdatasync.
constexpr uint64_t kFillWritebackBytes = uint64_t{8} << 20;
// Wait before filling again after a failure (a full disk, say); meanwhile
// new WAL files are created as RocksDB would create them.
constexpr auto kFillRetryDelay = std::chrono::seconds(10);
// A spare is filled only while the file system has at least this many times
// its size free, so that the fill leaves as much again for the data.
constexpr uint64_t kFillFreeSpaceFactor = 2;
constexpr size_t kEndBytes = 8;  // the side file: bytes written, big-endian

rocksdb::IOStatus ErrnoStatus(std::string_view what, const std::string& path, int err) {
  std::string message(what);
  message += " " + path + ": " + std::strerror(err);
  if (err == ENOSPC) return rocksdb::IOStatus::NoSpace(message);
  return rocksdb::IOStatus::IOError(message);
}

// Writes all of `data` at `offset`. Returns 0 or an errno.
int WriteAllAt(int fd, const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    assert(n > 0 && static_cast<size_t>(n) <= size);
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

// Whether `path` names a RocksDB WAL ("NNNNNN.log") directly in `dir`.
bool IsWalIn(std::string_view dir, std::string_view path) {
  while (dir.size() > 1 && dir.ends_with('/')) dir.remove_suffix(1);
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos || path.substr(0, slash) != dir) return false;
  std::string_view name = path.substr(slash + 1);
  constexpr std::string_view kSuffix = ".log";
  if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix)) return false;
  name.remove_suffix(kSuffix.size());
  return name.find_first_not_of("0123456789") == std::string_view::npos;
}

bool IsWal(std::string_view path) {
  const size_t slash = path.rfind('/');
  return slash != std::string_view::npos && IsWalIn(path.substr(0, slash), path);
}

std::string EndPathOf(const std::string& wal_path) { return wal_path + kPrefilledWalEndSuffix; }

// Returns the end a side file publishes, or nullopt if there is none.
std::optional<uint64_t> ReadPublishedEnd(const std::string& end_path) {
  const int fd = ::open(end_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char bytes[kEndBytes] = {};
  const ssize_t n = ::pread(fd, bytes, sizeof(bytes), 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof(bytes))) return uint64_t{0};  // being created
  return DecodeBigEndian64(bytes);
}

// One prefilled WAL, shared by the file RocksDB writes through and the file
// system, which cuts it when RocksDB moves on to the next WAL.
struct WalState {
  std::mutex mu;
  const std::string path;
  const std::string end_path;
  int fd;                // GUARDED_BY(mu); -1 once closed
  int end_fd;            // GUARDED_BY(mu); -1 once the side file is gone
  uint64_t written = 0;  // GUARDED_BY(mu); the end of the last record
  bool cut = false;      // GUARDED_BY(mu); no fill left, durably

  WalState(std::string wal_path, int wal_fd, int side_fd)
      : path(std::move(wal_path)), end_path(EndPathOf(path)), fd(wal_fd), end_fd(side_fd) {}

  // Publishes `written` to readers of the side file. REQUIRES: mu held.
  void PublishLocked() {
    if (end_fd < 0) return;
    std::string bytes;  // fits the string's inline buffer: no allocation
    AppendBigEndian64(&bytes, written);
    assert(bytes.size() == kEndBytes);
    // Best effort: a reader that misses an update reads less, never more.
    (void)WriteAllAt(end_fd, bytes.data(), bytes.size(), 0);
  }

  // Cuts the fill off, syncs the cut, and removes the side file (readers
  // then read the file to its end). REQUIRES: mu held.
  rocksdb::IOStatus CutLocked() {
    if (cut || fd < 0) return rocksdb::IOStatus::OK();
    if (::ftruncate(fd, static_cast<off_t>(written)) != 0) return ErrnoStatus("truncate", path, errno);
    if (::fdatasync(fd) != 0) return ErrnoStatus("fdatasync", path, errno);
    cut = true;
    RemoveSideFileLocked();
    return rocksdb::IOStatus::OK();
  }

  void RemoveSideFileLocked() {
    if (end_fd < 0) return;
    ::close(end_fd);
    end_fd = -1;
    ::unlink(end_path.c_str());
  }
};

// A WAL written over its fill from offset 0. RocksDB's WAL writer calls
// Append/Close from one thread at a time; Sync may run beside them.
class PrefilledWalFile final : public rocksdb::FSWritableFile {
 public:
  PrefilledWalFile(std::shared_ptr<WalState> state, const rocksdb::FileOptions& options)
      : rocksdb::FSWritableFile(options), state_(std::move(state)) {}
  ~PrefilledWalFile() override { (void)Close(rocksdb::IOOptions(), nullptr); }

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions&,
                           rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return WriteLocked(data, state_->written);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo&,
                           rocksdb::IODebugContext* dbg) override {
    return Append(data, options, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return WriteLocked(data, offset);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo&,
                                     rocksdb::IODebugContext* dbg) override {
    return PositionedAppend(data, offset, options, dbg);
  }
  rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions&,
                             rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (::ftruncate(state_->fd, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus("truncate", state_->path, errno);
    }
    state_->written = size;
    state_->PublishLocked();
    return rocksdb::IOStatus::OK();
  }
  // Cuts the fill off durably: a closed WAL may be followed by newer ones,
  // and recovery must not stop at it.
  rocksdb::IOStatus Close(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->fd < 0) return rocksdb::IOStatus::OK();
    rocksdb::IOStatus status = state_->CutLocked();
    state_->RemoveSideFileLocked();
    if (::close(state_->fd) != 0 && status.ok()) status = ErrnoStatus("close", state_->path, errno);
    state_->fd = -1;
    return status;
  }
  // Appends go straight to the kernel; nothing is buffered here.
  rocksdb::IOStatus Flush(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::OK();
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    // The descriptor stays open until Close, which RocksDB never runs beside a Sync.
    if (::fdatasync(Descriptor()) != 0) return ErrnoStatus("fdatasync", state_->path, errno);
    return rocksdb::IOStatus::OK();
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    if (::fsync(Descriptor()) != 0) return ErrnoStatus("fsync", state_->path, errno);
    return rocksdb::IOStatus::OK();
  }
  bool IsSyncThreadSafe() const override { return true; }
  uint64_t GetFileSize(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->written;
  }

 private:
  int Descriptor() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->fd;
  }

  // REQUIRES: state_->mu held.
  rocksdb::IOStatus WriteLocked(const rocksdb::Slice& data, uint64_t offset) {
    if (const int err = WriteAllAt(state_->fd, data.data(), data.size(), offset)) {
      return ErrnoStatus("write", state_->path, err);
    }
    state_->written = std::max(state_->written, offset + data.size());
    state_->PublishLocked();
    return rocksdb::IOStatus::OK();
  }

  const std::shared_ptr<WalState> state_;
};

class PrefilledWalFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  PrefilledWalFileSystem(std::shared_ptr<rocksdb::FileSystem> base, std::string db_path,
                         uint64_t prefill_bytes)
      : rocksdb::FileSystemWrapper(base),
        db_path_(std::move(db_path)),
        spare_path_(db_path_ + "/" + kPrefilledWalSpareName),
        filling_path_(db_path_ + "/" + kPrefilledWalFillingName),
        prefill_bytes_(prefill_bytes) {
    assert(prefill_bytes_ > 0);
    ::unlink(filling_path_.c_str());
    spare_ready_ = SpareIsGood();
    if (!spare_ready_) spare_ready_ = FillSpare().ok();
    const bool fill_failed = !spare_ready_;
    filler_ = std::thread([this, fill_failed] {
      NameThisThread("kl-wal-prefill");
      FillLoop(fill_failed);
    });
  }

  ~PrefilledWalFileSystem() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    filler_.join();
  }

  const char* Name() const override { return "KeyledgerPrefilledWalFileSystem"; }

  void KeepSpare() {
    std::lock_guard<std::mutex> lock(mu_);
    keep_spare_ = true;
  }

  rocksdb::IOStatus NewWritableFile(const std::string& path, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    if (options.use_direct_writes || !IsWalIn(db_path_, path)) {
      return target()->NewWritableFile(path, options, result, dbg);
    }
    // Only the newest WAL may hold fill: cut the one RocksDB is leaving.
    rocksdb::IOStatus cut = CutOpenWals();
    if (!cut.ok()) return cut;
    std::shared_ptr<WalState> state = TakeSpare(path);
    if (state == nullptr) return target()->NewWritableFile(path, options, result, dbg);
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_wals_.push_back(state);
    }
    *result = std::make_unique<PrefilledWalFile>(std::move(state), options);
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus DeleteFile(const std::string& path, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override {
    if (IsWalIn(db_path_, path)) ::unlink(EndPathOf(path).c_str());
    return target()->DeleteFile(path, options, dbg);
  }

 private:
  // A spare of full size that no WAL shares (a crash between linking it to
  // a WAL's name and unlinking its own leaves two names on one file).
  bool SpareIsGood() {
    struct stat st;
    if (::stat(spare_path_.c_str(), &st) != 0) return false;
    if (st.st_nlink == 1 && static_cast<uint64_t>(st.st_size) >= prefill_bytes_) return true;
    ::unlink(spare_path_.c_str());
    return false;
  }

  rocksdb::IOStatus CutOpenWals() {
    std::vector<std::shared_ptr<WalState>> open;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& weak : open_wals_) {
        if (auto state = weak.lock()) open.push_back(std::move(state));
      }
      open_wals_.clear();
    }
    for (const auto& state : open) {
      std::lock_guard<std::mutex> lock(state->mu);
      rocksdb::IOStatus cut = state->CutLocked();
      if (!cut.ok()) return cut;
    }
    return rocksdb::IOStatus::OK();
  }

  // Gives the spare the name `path`, with its side file (made first, so no
  // reader ever sees the WAL without it). Returns nullptr, leaving `path`
  // to be created as usual, if no spare is ready or a step fails. Wakes
  // the filler once the spare is taken.
  std::shared_ptr<WalState> TakeSpare(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!spare_ready_ || keep_spare_) return nullptr;
    const std::string end_path = EndPathOf(path);
    const int end_fd = ::open(end_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (end_fd < 0) return nullptr;
    const char zero_end[kEndBytes] = {};
    int fd = -1;
    // link, not rename: never replace a file of that name.
    if (WriteAllAt(end_fd, zero_end, sizeof(zero_end), 0) == 0 &&
        ::link(spare_path_.c_str(), path.c_str()) == 0) {
      ::unlink(spare_path_.c_str());
      spare_ready_ = false;
      cv_.notify_one();
      fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    }
    if (fd < 0) {
      ::close(end_fd);
      ::unlink(end_path.c_str());
      return nullptr;  // RocksDB's own create truncates whatever was linked
    }
    return std::make_shared<WalState>(path, fd, end_fd);
  }

  // `fill_failed`: the constructor's fill failed, so wait before trying
  // again, as after any failure.
  void FillLoop(bool fill_failed) {
    std::unique_lock<std::mutex> lock(mu_);
    if (fill_failed) cv_.wait_for(lock, kFillRetryDelay, [this] { return stopping_; });
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || (!spare_ready_ && !keep_spare_); });
      if (stopping_) return;
      lock.unlock();
      const rocksdb::IOStatus filled = FillSpare();
      lock.lock();
      if (filled.ok()) {
        spare_ready_ = true;
      } else {
        cv_.wait_for(lock, kFillRetryDelay, [this] { return stopping_; });
      }
    }
  }

  // Writes prefill_bytes of fill under the filling name, syncs them and
  // renames the file to the spare name. Leaves no partial file behind.
  rocksdb::IOStatus FillSpare() {
    static const std::vector<char> fill(kFillChunkBytes, kPrefilledWalFillByte);
    // The spare is an optimisation: it must never take the space the data
    // needs (a write failing for space stops the ledger until a restart).
    struct statvfs fs_stats {};
    if (::statvfs(db_path_.c_str(), &fs_stats) != 0) return ErrnoStatus("statvfs", db_path_, errno);
    const unsigned __int128 free_bytes =
        static_cast<unsigned __int128>(fs_stats.f_bavail) * fs_stats.f_frsize;
    if (free_bytes < static_cast<unsigned __int128>(prefill_bytes_) * kFillFreeSpaceFactor) {
      return rocksdb::IOStatus::NoSpace("not filling a spare write-ahead log: less than " +
                                        std::to_string(kFillFreeSpaceFactor) + " x " +
                                        std::to_string(prefill_bytes_) + " bytes free in " +
                                        db_path_);
    }
    const int fd = ::open(filling_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("create", filling_path_, errno);
    rocksdb::IOStatus status;
    for (uint64_t written = 0; status.ok() && written < prefill_bytes_;) {
      if (Stopping()) {
        status = rocksdb::IOStatus::Aborted("closing");
        break;
      }
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(kFillChunkBytes, prefill_bytes_ - written));
      if (const int err = WriteAllAt(fd, fill.data(), chunk, written)) {
        status = ErrnoStatus("write", filling_path_, err);
        break;
      }
      written += chunk;
      if (written % kFillWritebackBytes == 0) {
        ::sync_file_range(fd, static_cast<off_t>(written - kFillWritebackBytes),
                          static_cast<off_t>(kFillWritebackBytes), SYNC_FILE_RANGE_WRITE);
      }
    }
    if (status.ok() && ::fdatasync(fd) != 0) status = ErrnoStatus("fdatasync", filling_path_, errno);
    ::close(fd);
    if (status.ok() && ::rename(filling_path_.c_str(), spare_path_.c_str()) != 0) {
      status = ErrnoStatus("rename", filling_path_, errno);
    }
    if (!status.ok()) ::unlink(filling_path_.c_str());
    return status;
  }

  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }

  const std::string db_path_;
  const std::string spare_path_;
  const std::string filling_path_;
  const uint64_t prefill_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool spare_ready_ = false;                           // GUARDED_BY(mu_)
  bool stopping_ = false;                              // GUARDED_BY(mu_)
  bool keep_spare_ = false;                            // GUARDED_BY(mu_)
  std::vector<std::weak_ptr<WalState>> open_wals_;     // GUARDED_BY(mu_)
  std::thread filler_;
};

// Reads a WAL no further than its side file says, or to its end without
// one. Reads with pread at its own position: a stdio-buffered reader (as
// RocksDB's own) would keep fill it read ahead and hand it out later as if
// it were the records written over it since.
class EndCappedWalFile final : public rocksdb::FSSequentialFile {
 public:
  EndCappedWalFile(int fd, std::string path)
      : fd_(fd), path_(std::move(path)), end_path_(EndPathOf(path_)) {
    assert(fd_ >= 0);
  }
  ~EndCappedWalFile() override { ::close(fd_); }

  rocksdb::IOStatus Read(size_t n, const rocksdb::IOOptions&, rocksdb::Slice* result,
                         char* scratch, rocksdb::IODebugContext*) override {
    if (const std::optional<uint64_t> end = ReadPublishedEnd(end_path_)) {
      n = static_cast<size_t>(std::min<uint64_t>(n, *end > position_ ? *end - position_ : 0));
    }
    size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd_, scratch + done, n - done, static_cast<off_t>(position_ + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("read", path_, errno);
      }
      if (got == 0) break;  // the end of the file, for now
      done += static_cast<size_t>(got);
    }
    position_ += done;
    *result = rocksdb::Slice(scratch, done);
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Skip(uint64_t n) override {
    position_ += n;
    return rocksdb::IOStatus::OK();
  }

 private:
  const int fd_;
  const std::string path_;
  const std::string end_path_;
  uint64_t position_ = 0;
};

class WalEndCappedFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit WalEndCappedFileSystem(std::shared_ptr<rocksdb::FileSystem> base)
      : rocksdb::FileSystemWrapper(std::move(base)) {}

  const char* Name() const override { return "KeyledgerWalEndCappedFileSystem"; }

  rocksdb::IOStatus NewSequentialFile(const std::string& path, const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSSequentialFile>* result,
                                      rocksdb::IODebugContext* dbg) override {
    if (options.use_direct_reads || !IsWal(path)) {
      return target()->NewSequentialFile(path, options, result, dbg);
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return rocksdb::IOStatus::PathNotFound("open " + path);
      return ErrnoStatus("open", path, errno);
    }
    *result = std::make_unique<EndCappedWalFile>(fd, path);
    return rocksdb::IOStatus::OK();
  }
};

// A WAL file whose syncs pass `gate` first (NewSyncGatedWalFileSystem).
class SyncGatedWalFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  SyncGatedWalFile(std::unique_ptr<rocksdb::FSWritableFile> file,
                   std::function<rocksdb::IOStatus()> gate)
      : rocksdb::FSWritableFileOwnerWrapper(std::move(file)), gate_(std::move(gate)) {}

  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                         rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus passed = gate_();
    return passed.ok() ? target()->Sync(options, dbg) : passed;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus passed = gate_();
    return passed.ok() ? target()->Fsync(options, dbg) : passed;
  }

 private:
  const std::function<rocksdb::IOStatus()> gate_;
};

class SyncGatedWalFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  SyncGatedWalFileSystem(std::shared_ptr<rocksdb::FileSystem> base,
                         std::function<rocksdb::IOStatus()> gate)
      : rocksdb::FileSystemWrapper(std::move(base)), gate_(std::move(gate)) {}

  const char* Name() const override { return "KeyledgerSyncGatedWalFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& path, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(path, options, result, dbg);
    if (s.ok() && IsWal(path)) {
      *result = std::make_unique<SyncGatedWalFile>(std::move(*result), gate_);
    }
    return s;
  }

 private:
  const std::function<rocksdb::IOStatus()> gate_;
};

}  // namespace

std::shared_ptr<rocksdb::FileSystem> NewSyncGatedWalFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base, std::function<rocksdb::IOStatus()> gate) {
  return std::make_shared<SyncGatedWalFileSystem>(std::move(base), std::move(gate));
}

std::shared_ptr<rocksdb::FileSystem> NewPrefilledWalFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base, std::string db_path, uint64_t prefill_bytes) {
  return std::make_shared<PrefilledWalFileSystem>(std::move(base), std::move(db_path),
                                                  prefill_bytes);
}

void KeepPrefilledWalSpare(rocksdb::FileSystem& file_system) {
  if (auto* prefilled = dynamic_cast<PrefilledWalFileSystem*>(&file_system)) prefilled->KeepSpare();
}

std::shared_ptr<rocksdb::FileSystem> NewWalEndCappedFileSystem(
    std::shared_ptr<rocksdb::FileSystem> base) {
  return std::make_shared<WalEndCappedFileSystem>(std::move(base));
}

}  // namespace keyledger
