// Blocking POSIX-socket helpers shared by the test servers (webhook_receiver,
// smtp_sink): a loopback listener and a buffered reader with deadlines that
// gives up when its server is stopping.
//
// Thread safety: ListenLoopback and SendAll are stateless; a SocketReader
// belongs to one thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ledger/status.h"

namespace keyledger::testing {

struct Listener {
  int fd = -1;
  uint16_t port = 0;
};

// Returns a socket listening on 127.0.0.1 at an ephemeral port.
// Errors: IOError naming the failed call.
Result<Listener> ListenLoopback();

// Returns true if `fd` is readable (or has an error) within `timeout_ms`.
bool WaitReadable(int fd, int timeout_ms);

// Returns an accepted connection on `listen_fd`, or -1 if none arrived within
// `timeout_ms` (the caller polls so that it can notice a stop request).
int AcceptWithin(int listen_fd, int timeout_ms);

// Writes all of `data`; returns false if the peer is gone. Never raises SIGPIPE.
bool SendAll(int fd, std::string_view data);

// Reads from one connection through a buffer. Each read gives up at its own
// deadline (`read_timeout_ms` from the call), at end of stream, or when
// `*stopping` becomes true.
class SocketReader {
 public:
  SocketReader(int fd, const std::atomic<bool>* stopping, int64_t read_timeout_ms)
      : fd_(fd), stopping_(stopping), read_timeout_ms_(read_timeout_ms) {}

  // Returns the bytes up to and including the first `delimiter`, or nullopt if
  // it does not arrive within `bytes_max` bytes or before giving up.
  std::optional<std::string> ReadUntil(std::string_view delimiter, size_t bytes_max);

  // Returns exactly `size` bytes, or nullopt if they do not arrive.
  std::optional<std::string> ReadExactly(size_t size);

 private:
  // Appends one recv to buffer_; false at end of stream, error, deadline or stop.
  bool Fill(int64_t deadline_ms);

  int fd_;
  const std::atomic<bool>* stopping_;
  int64_t read_timeout_ms_;
  std::string buffer_;
};

// Milliseconds on a monotonic clock, for deadlines.
int64_t MonotonicMs();

}  // namespace keyledger::testing
