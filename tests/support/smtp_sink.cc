#include "tests/support/smtp_sink.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <optional>

#include "tests/support/socket_io.h"

namespace keyledger::testing {
namespace {

constexpr int kAcceptPollMs = 50;  // how quickly the accept loop notices a stop

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// Returns the text between the first '<' and the following '>', "" if none.
std::string Path(std::string_view argument) {
  size_t open = argument.find('<');
  size_t close = argument.find('>', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) return "";
  return std::string(argument.substr(open + 1, close - open - 1));
}

}  // namespace

// One SMTP conversation on an accepted connection.
class SmtpSink::Session {
 public:
  Session(SmtpSink* sink, int fd)
      : sink_(sink), fd_(fd), reader_(fd, &sink->stopping_, kReadTimeoutMs) {}

  void Run() {
    if (!Reply("220 smtp-sink ready")) return;
    while (true) {
      std::optional<std::string> line = reader_.ReadUntil("\r\n", kLineBytesMax);
      if (!line) return;
      line->resize(line->size() - 2);
      if (!Command(*line)) return;
    }
  }

 private:
  bool Reply(std::string_view text) { return SendAll(fd_, std::string(text) + "\r\n"); }

  // Handles one command line; returns false when the session ends.
  bool Command(std::string_view line) {
    std::string verb = Upper(line.substr(0, line.find(' ')));
    if (verb == "EHLO") return Reply("250-smtp-sink\r\n250 8BITMIME");
    if (verb == "HELO") return Reply("250 smtp-sink");
    if (verb == "MAIL" && Upper(line).starts_with("MAIL FROM:")) {
      current_ = ReceivedEmail{};
      current_.from = Path(line);
      in_transaction_ = true;
      return Reply("250 OK");
    }
    if (verb == "RCPT" && Upper(line).starts_with("RCPT TO:")) {
      if (!in_transaction_) return Reply("503 MAIL first");
      if (sink_->TakeRejection()) return Reply("550 no such user");
      current_.recipients.push_back(Path(line));
      return Reply("250 OK");
    }
    if (verb == "DATA") return Data();
    if (verb == "RSET") {
      current_ = ReceivedEmail{};
      in_transaction_ = false;
      return Reply("250 OK");
    }
    if (verb == "NOOP") return Reply("250 OK");
    if (verb == "QUIT") {
      (void)Reply("221 bye");
      return false;
    }
    return Reply("502 command not implemented");
  }

  // Reads the message up to the lone "." line, undoing dot-stuffing.
  bool Data() {
    if (!in_transaction_ || current_.recipients.empty()) return Reply("503 RCPT first");
    if (!Reply("354 end data with <CR><LF>.<CR><LF>")) return false;
    while (true) {
      std::optional<std::string> line = reader_.ReadUntil("\r\n", kLineBytesMax);
      if (!line) return false;
      if (*line == ".\r\n") break;
      std::string_view text = *line;
      if (text.starts_with('.')) text.remove_prefix(1);
      if (current_.data.size() + text.size() > kMessageBytesMax) {
        (void)Reply("552 message too large");
        return false;
      }
      current_.data += text;
    }
    sink_->Record(std::move(current_));
    current_ = ReceivedEmail{};
    in_transaction_ = false;
    return Reply("250 OK queued");
  }

  SmtpSink* sink_;
  int fd_;
  SocketReader reader_;
  ReceivedEmail current_;
  bool in_transaction_ = false;
};

Result<std::unique_ptr<SmtpSink>> SmtpSink::Start() {
  KL_ASSIGN_OR_RETURN(Listener listener, ListenLoopback());
  return std::unique_ptr<SmtpSink>(new SmtpSink(listener.fd, listener.port));
}

SmtpSink::SmtpSink(int listen_fd, uint16_t port)
    : listen_fd_(listen_fd), port_(port), thread_([this] { Serve(); }) {}

SmtpSink::~SmtpSink() {
  stopping_.store(true, std::memory_order_release);
  thread_.join();
  ::close(listen_fd_);
}

std::string SmtpSink::HostPort() const { return "127.0.0.1:" + std::to_string(port_); }

void SmtpSink::RejectNextRecipients(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  reject_remaining_ = n;
}

std::vector<ReceivedEmail> SmtpSink::Messages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_;
}

size_t SmtpSink::SessionCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_;
}

bool SmtpSink::WaitForMessages(size_t n, int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return messages_.size() >= n; });
}

void SmtpSink::Serve() {
  while (!stopping_.load(std::memory_order_acquire)) {
    int fd = AcceptWithin(listen_fd_, kAcceptPollMs);
    if (fd < 0) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sessions_++;
    }
    Session(this, fd).Run();
    ::close(fd);
  }
}

bool SmtpSink::TakeRejection() {
  std::lock_guard<std::mutex> lock(mu_);
  if (reject_remaining_ == 0) return false;
  reject_remaining_--;
  return true;
}

void SmtpSink::Record(ReceivedEmail email) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    messages_.push_back(std::move(email));
  }
  cv_.notify_all();
}

}  // namespace keyledger::testing
