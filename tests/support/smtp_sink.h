// A minimal SMTP server on 127.0.0.1 for tests that deliver e-mail: 220
// greeting, EHLO/HELO, MAIL FROM, RCPT TO, DATA (until CRLF.CRLF, with
// dot-unstuffing), RSET, NOOP, QUIT; anything else gets 502. No STARTTLS, no
// AUTH. Sessions are served one at a time on one background thread.
//
// Thread safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ledger/status.h"

namespace keyledger::testing {

struct ReceivedEmail {
  std::string from;                     // the MAIL FROM path without angle brackets
  std::vector<std::string> recipients;  // RCPT TO paths without angle brackets
  std::string data;                     // the message as sent, unstuffed, CRLF line ends
};

class SmtpSink {
 public:
  static constexpr size_t kLineBytesMax = 64 * 1024;         // a command or data line
  static constexpr size_t kMessageBytesMax = 16 * 1024 * 1024;
  // How long a session may stay silent before it is dropped.
  static constexpr int64_t kReadTimeoutMs = 5000;

  // Returns a running sink on an ephemeral port. Errors: IOError.
  static Result<std::unique_ptr<SmtpSink>> Start();

  // Stops accepting and joins the thread.
  ~SmtpSink();
  SmtpSink(const SmtpSink&) = delete;
  SmtpSink& operator=(const SmtpSink&) = delete;

  uint16_t port() const { return port_; }
  // Returns "127.0.0.1:<port>", the form NotifierOptions::smtp_host_port takes.
  std::string HostPort() const;

  // The next `n` RCPT TO commands are answered "550" (then accepted again).
  void RejectNextRecipients(size_t n);

  // Returns a copy of the messages accepted so far, oldest first.
  std::vector<ReceivedEmail> Messages() const;
  // Returns the number of TCP sessions accepted so far.
  size_t SessionCount() const;
  // Returns true once at least `n` messages are accepted, false after `timeout_ms`.
  bool WaitForMessages(size_t n, int64_t timeout_ms) const;

 private:
  class Session;

  SmtpSink(int listen_fd, uint16_t port);
  void Serve();
  // Returns true if this RCPT is to be rejected, per the script.
  bool TakeRejection();
  void Record(ReceivedEmail email);

  const int listen_fd_;
  const uint16_t port_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // signals new messages
  std::vector<ReceivedEmail> messages_;
  size_t sessions_ = 0;
  size_t reject_remaining_ = 0;

  std::thread thread_;  // last: starts after every member above exists
};

}  // namespace keyledger::testing
