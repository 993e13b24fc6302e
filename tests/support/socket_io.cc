#include "tests/support/socket_io.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace keyledger::testing {
namespace {

constexpr int kPollSliceMs = 50;  // how quickly a blocked read notices a stop

Status Errno(const char* call) {
  return Status::IOError(std::string(call) + ": " + std::strerror(errno));
}

}  // namespace

int64_t MonotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Result<Listener> ListenLoopback() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 64) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size) != 0) {
    Status error = Errno("bind/listen");
    ::close(fd);
    return error;
  }
  return Listener{fd, ntohs(addr.sin_port)};
}

bool WaitReadable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int n = ::poll(&p, 1, timeout_ms);
  return n > 0;
}

int AcceptWithin(int listen_fd, int timeout_ms) {
  if (!WaitReadable(listen_fd, timeout_ms)) return -1;
  return ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool SocketReader::Fill(int64_t deadline_ms) {
  while (!stopping_->load(std::memory_order_acquire)) {
    int64_t left_ms = deadline_ms - MonotonicMs();
    if (left_ms <= 0) return false;
    if (!WaitReadable(fd_, static_cast<int>(std::min<int64_t>(left_ms, kPollSliceMs)))) continue;
    char chunk[16 * 1024];
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }
  return false;
}

std::optional<std::string> SocketReader::ReadUntil(std::string_view delimiter,
                                                   size_t bytes_max) {
  int64_t deadline_ms = MonotonicMs() + read_timeout_ms_;
  size_t searched = 0;  // bytes already known not to start the delimiter
  while (true) {
    size_t at = buffer_.find(delimiter, searched);
    if (at != std::string::npos && at + delimiter.size() <= bytes_max) {
      std::string out = buffer_.substr(0, at + delimiter.size());
      buffer_.erase(0, out.size());
      return out;
    }
    if (buffer_.size() >= bytes_max) return std::nullopt;
    searched = buffer_.size() >= delimiter.size() ? buffer_.size() - delimiter.size() + 1 : 0;
    if (!Fill(deadline_ms)) return std::nullopt;
  }
}

std::optional<std::string> SocketReader::ReadExactly(size_t size) {
  int64_t deadline_ms = MonotonicMs() + read_timeout_ms_;
  while (buffer_.size() < size) {
    if (!Fill(deadline_ms)) return std::nullopt;
  }
  std::string out = buffer_.substr(0, size);
  buffer_.erase(0, size);
  return out;
}

}  // namespace keyledger::testing
