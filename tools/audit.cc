// The audit commands: `keyledger events dump`, `keyledger audit verify`,
// `keyledger audit replay`. All read the data directory of a (possibly
// running) server through RocksDB secondary instances and never write to it.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

#include "api/invoice_compute.h"
#include "billing/calendar.h"
#include "ledger/codec.h"
#include "ledger/hash.h"
#include "ledger/ledger.h"
#include "projections/call_projections.h"
#include "projections/key_state.h"
#include "projections/key_state_store.h"
#include "tools/commands.h"
#include "tools/event_json.h"

namespace keyledger::tools {
namespace {

namespace fs = std::filesystem;

// Called now and then during a walk over the log with the last sequence walked.
using ProgressFn = std::function<void(uint64_t)>;

// Events read per ledger call while dumping.
constexpr size_t kDumpPageEvents = 1024;
// How often the verify progress line is refreshed on a terminal.
constexpr int64_t kTtyProgressIntervalUs = 250'000;
// How often a plain progress line is printed when stderr is not a terminal.
constexpr int64_t kPlainProgressIntervalUs = 10'000'000;
// mkdtemp template of the scratch directory for secondary instances.
constexpr char kScratchTemplate[] = "/tmp/keyledger-audit-XXXXXX";

constexpr int kExitFailed = 1;   // a check failed, or an error
constexpr int kExitUsage = 2;    // bad arguments
// The reader of stdout went away: the status a shell reports for SIGPIPE.
constexpr int kExitReaderGone = 128 + SIGPIPE;

int Fail(const char* command, const std::string& message) {
  std::fprintf(stderr, "keyledger %s: %s\n", command, message.c_str());
  return kExitFailed;
}

int Usage(const char* command, const std::string& message) {
  std::fprintf(stderr, "keyledger %s: %s\n", command, message.c_str());
  return kExitUsage;
}

int64_t SteadyNowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Removes `path` if SIGINT, SIGTERM or SIGHUP ends the process early (an
// auditor pressing Ctrl-C during a long verify), then exits with 128 + signal.
// The signals are blocked in every thread and taken by one waiting thread,
// where removing a directory is safe (it is not in a signal handler).
// REQUIRES: called once, before any other thread starts (RocksDB's threads
// inherit the blocked mask).
void RemoveOnTerminatingSignal(const std::string& path) {
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals, path] {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) return;
    std::error_code ec;
    fs::remove_all(path, ec);
    std::_Exit(128 + sig);
  }).detach();
}

// A fresh directory under /tmp for the scratch files of RocksDB secondary
// instances, removed with its contents on destruction or on a terminating signal.
// REQUIRES: every store using it is closed before it is destroyed; at most
// one per process.
class ScratchDir {
 public:
  // Returns IOError if the directory cannot be created.
  static Result<std::unique_ptr<ScratchDir>> Create() {
    std::string path = kScratchTemplate;
    if (::mkdtemp(path.data()) == nullptr) {
      return Status::IOError("create a scratch directory under /tmp: " +
                             std::string(std::strerror(errno)));
    }
    RemoveOnTerminatingSignal(path);
    return std::unique_ptr<ScratchDir>(new ScratchDir(std::move(path)));
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  // Returns a new empty subdirectory for one store; IOError on failure.
  Result<std::string> Sub(const std::string& name) const {
    std::string sub = path_ + "/" + name;
    std::error_code ec;
    if (!fs::create_directory(sub, ec)) {
      return Status::IOError("create " + sub + ": " + (ec ? ec.message() : "exists"));
    }
    return sub;
  }

 private:
  explicit ScratchDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// A read-only view of DIR/ledger and the scratch directory it needs.
// Members are destroyed in reverse order: the ledger before its scratch files.
struct LedgerView {
  std::unique_ptr<ScratchDir> scratch;
  std::unique_ptr<Ledger> ledger;
};

// How OpenLedgerView treats a log whose head record disagrees with its tail.
enum class HeadMismatch {
  kRefuse,    // Corruption from Ledger::Open
  kOpenAnyway,  // for verify, which walks the log and then checks the head record
};

// Opens DIR/ledger as a RocksDB secondary instance. From here on a closed
// stdout ends the command through EPIPE, not SIGPIPE, so that the scratch
// directory is still removed.
// Returns NotFound if DIR or DIR/ledger does not exist, IOError/Corruption from Ledger::Open.
Result<LedgerView> OpenLedgerView(const std::string& data_dir,
                                  HeadMismatch head_mismatch = HeadMismatch::kRefuse) {
  std::signal(SIGPIPE, SIG_IGN);
  static const SystemClock clock;  // recorded_at is never assigned by a secondary
  std::error_code ec;
  if (!fs::is_directory(data_dir, ec)) {
    return Status::NotFound("data directory " + data_dir +
                                (fs::exists(data_dir, ec) ? " is not a directory" : " does not exist"),
                            "data");
  }
  const std::string path = data_dir + "/ledger";
  if (!fs::exists(path + "/CURRENT", ec)) {
    return Status::NotFound("no ledger at " + path +
                                " (--data must be the directory `keyledger serve --data` uses)",
                            "data");
  }
  LedgerView view;
  KL_ASSIGN_OR_RETURN(view.scratch, ScratchDir::Create());
  LedgerOptions options;
  options.clock = &clock;
  options.mode = OpenMode::kSecondary;
  options.open_past_head_mismatch = head_mismatch == HeadMismatch::kOpenAnyway;
  KL_ASSIGN_OR_RETURN(options.secondary_path, view.scratch->Sub("ledger"));
  KL_ASSIGN_OR_RETURN(view.ledger, Ledger::Open(path, options));
  return view;
}

// "corruption at sequence N: ..." for Corruption; "code: message" otherwise.
std::string Describe(const Status& s) {
  if (s.code() == Code::kCorruption && s.sequence() != 0) {
    return "corruption at sequence " + std::to_string(s.sequence()) + ": " + s.message();
  }
  return std::string(CodeName(s.code())) + ": " + s.message();
}

// ---- events dump -----------------------------------------------------------------

// Returns Unavailable when the reader of stdout went away (EPIPE, e.g.
// `| head`), IOError on any other write failure.
Status StdoutError() {
  if (errno == EPIPE) return Status::Unavailable("stdout closed by its reader");
  return Status::IOError("write to stdout: " + std::string(std::strerror(errno)));
}

// Flushes stdout and returns `exit_code`, or kExitReaderGone when the reader
// of stdout went away, or kExitFailed on another write failure (a full disk):
// output that did not arrive never counts as success.
int FinishOutput(const char* command, int exit_code) {
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return exit_code;
  Status s = StdoutError();
  if (s.code() == Code::kUnavailable) return kExitReaderGone;
  return Fail(command, Describe(s));
}

Status WriteEventLine(const Event& event) {
  std::string line = DumpJsonLine(EventToJson(event));
  line.push_back('\n');
  if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size()) return StdoutError();
  return Status::Ok();
}

// Writes the events in [from, to] in sequence order, up to the first bad
// one, whose Corruption it returns. REQUIRES: to <= the head.
Status DumpRange(const Ledger& ledger, uint64_t from, uint64_t to) {
  uint64_t next = from;
  while (next <= to) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(kDumpPageEvents, to - next + 1));
    Result<std::vector<Event>> read = ledger.ReadRange(next, want);
    if (!read.ok()) {
      const Status bad = read.status();
      if (bad.code() != Code::kCorruption || bad.sequence() <= next) return bad;
      // The page failed at a later event: the good ones before it still print.
      KL_ASSIGN_OR_RETURN(std::vector<Event> good, ledger.ReadRange(next, bad.sequence() - next));
      for (const Event& e : good) KL_RETURN_IF_ERROR(WriteEventLine(e));
      return bad;
    }
    const std::vector<Event>& page = *read;
    if (page.empty()) break;
    for (const Event& e : page) KL_RETURN_IF_ERROR(WriteEventLine(e));
    next = page.back().sequence + 1;
  }
  return Status::Ok();
}

// Writes the events of `stream` whose sequence is in [from, to], in order.
Status DumpStream(const Ledger& ledger, const std::string& stream, uint64_t from, uint64_t to) {
  uint64_t next_version = 1;
  for (;;) {
    KL_ASSIGN_OR_RETURN(std::vector<Event> page,
                        ledger.ReadStream(stream, next_version, kDumpPageEvents));
    for (const Event& e : page) {
      if (e.sequence > to) return Status::Ok();
      if (e.sequence >= from) KL_RETURN_IF_ERROR(WriteEventLine(e));
    }
    if (page.size() < kDumpPageEvents) return Status::Ok();
    next_version = page.back().stream_version + 1;
  }
}

// ---- audit verify ----------------------------------------------------------------

// Reports the progress of walks over the log on stderr: one line refreshed
// in place with \r on a terminal (events/s and ETA), a plain line every
// kPlainProgressIntervalUs otherwise. Walks that run at once (a replay's
// rebuilds) each report through their own Part; the line shows their sum.
//
// Thread safety: thread-safe.
class Progress {
 public:
  // `command` as in messages ("audit verify"); `action` names the walk ("verifying").
  Progress(const char* command, std::string action)
      : tty_(::isatty(STDERR_FILENO) == 1),
        command_(command),
        action_(std::move(action)),
        start_us_(SteadyNowUs()) {}

  // A callback for one walk of `events` more events; it takes the count
  // walked so far (the last sequence walked). The walk counts towards the
  // total from its first report on: a replay asks for parts of walks that
  // another walk may do for them (SharedRebuild), and those never report.
  ProgressFn Part(uint64_t events) {
    auto index = std::make_shared<std::optional<size_t>>();  // set at the first report
    return [this, events, index](uint64_t done) { Update(events, index.get(), done); };
  }

  // Clears the in-place line so that what follows starts on a clean line.
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    if (tty_ && printed_) std::fputs("\r\033[K", stderr);
    printed_ = false;
  }

 private:
  void Update(uint64_t events, std::optional<size_t>* index, uint64_t done) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!index->has_value()) {
      total_ += events;
      parts_.push_back(0);
      *index = parts_.size() - 1;
    }
    const size_t part = **index;
    done_ += done - std::min(done, parts_[part]);
    parts_[part] = std::max(done, parts_[part]);
    const int64_t now = SteadyNowUs();
    const int64_t interval = tty_ ? kTtyProgressIntervalUs : kPlainProgressIntervalUs;
    if (now - last_us_ < interval) return;
    last_us_ = now;
    const double seconds = std::max<double>(1e-6, static_cast<double>(now - start_us_) / 1e6);
    const double rate = static_cast<double>(done_) / seconds;
    const double eta = rate > 0 && total_ > done_ ? static_cast<double>(total_ - done_) / rate : 0;
    if (tty_) {
      std::fprintf(stderr, "\r%s: %llu / %llu events (%.0f%%), %.0f events/s, ETA %.0fs   ",
                   action_.c_str(), static_cast<unsigned long long>(done_),
                   static_cast<unsigned long long>(total_),
                   total_ ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0,
                   rate, eta);
      printed_ = true;
    } else {
      std::fprintf(stderr, "keyledger %s: %s: %llu of %llu events (%.0f events/s)\n", command_,
                   action_.c_str(), static_cast<unsigned long long>(done_),
                   static_cast<unsigned long long>(total_), rate);
    }
    std::fflush(stderr);
  }

  const bool tty_;
  const char* const command_;
  const std::string action_;
  const int64_t start_us_;
  std::mutex mu_;
  uint64_t total_ = 0;         // guarded by mu_
  uint64_t done_ = 0;          // guarded by mu_: the sum of parts_
  std::vector<uint64_t> parts_;  // guarded by mu_
  int64_t last_us_ = 0;        // guarded by mu_
  bool printed_ = false;       // guarded by mu_
};

struct HeadPin {
  uint64_t sequence = 0;
  Hash hash{};
};

// Parses "SEQ:HASH" (HASH: 64 hex digits). Returns InvalidArgument otherwise.
Result<HeadPin> ParseHeadPin(const std::string& text) {
  HeadPin pin;
  const size_t colon = text.find(':');
  const std::string seq = text.substr(0, colon);
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(seq.c_str(), &end, 10);
  if (colon == std::string::npos || seq.empty() || *end != '\0' || errno != 0 || n == 0 ||
      seq.find_first_not_of("0123456789") != std::string::npos ||
      !ParseHashHex(std::string_view(text).substr(colon + 1), &pin.hash)) {
    return Status::InvalidArgument(
        "--expect-head must be SEQ:HASH (sequence >= 1, 64 hex digits), got \"" + text + "\"",
        "expect-head");
  }
  pin.sequence = n;
  return pin;
}

// Returns OK when event `pin.sequence` is stored with hash `pin.hash`;
// FailedPrecondition saying what differs otherwise.
Status CheckPin(const Ledger& ledger, const HeadPin& pin) {
  const uint64_t head = ledger.head().sequence;
  if (pin.sequence > head) {
    return Status::FailedPrecondition(
        "--expect-head mismatch: the pinned sequence " + std::to_string(pin.sequence) +
        " is beyond the ledger head " + std::to_string(head) + " (events were removed)");
  }
  KL_ASSIGN_OR_RETURN(Event event, ledger.Read(pin.sequence));
  if (!ConstantTimeEqual(event.hash, pin.hash)) {
    return Status::FailedPrecondition(
        "--expect-head mismatch: event " + std::to_string(pin.sequence) + " has hash " +
        ToHex(event.hash) + " but the pin says " + ToHex(pin.hash) +
        " (the log was rewritten since the pin was taken)");
  }
  return Status::Ok();
}

// Verify skips its head-record check on a secondary view (the primary may
// move on); this view is never caught up, so the record must match here.
// Returns Corruption unless the head record names the walk's last event and
// its hash. It names the first sequence where the two part: past the
// shorter of the two when their lengths differ (a log missing its last
// events, or holding events the head never counted), else the last event.
Status CheckHeadRecord(const Ledger& ledger, const VerifyResult& verified) {
  const LedgerHead stored = ledger.head();
  if (stored.sequence != verified.head.sequence) {
    return Status::Corruption("the head record says " + std::to_string(stored.sequence) +
                                  " but the log ends at " +
                                  std::to_string(verified.head.sequence),
                              std::min(stored.sequence, verified.head.sequence) + 1);
  }
  if (!ConstantTimeEqual(stored.hash, verified.head.hash)) {
    return Status::Corruption("the head record's hash is not the last event's",
                              verified.head.sequence);
  }
  return Status::Ok();
}

int ReportCorruption(const Status& s) {
  nlohmann::json out = {{"error", CodeName(s.code())}, {"message", s.message()}};
  if (s.code() == Code::kCorruption) out["first_bad_sequence"] = s.sequence();
  std::printf("%s\n", DumpJsonLine(out).c_str());
  return FinishOutput("audit verify", Fail("audit verify", Describe(s)));
}

// ---- audit replay ----------------------------------------------------------------

// A live projection as the server last persisted it.
class ReplayInputs;

struct LiveProjection {
  Hash digest{};
  uint64_t position = 0;  // the last sequence it has folded
  // What must also hold between the live projection and the rebuild at
  // `position`, checked once both are done; empty: nothing. Returns the
  // Corruption it finds, or an error of the rebuild.
  std::function<Status(ReplayInputs& inputs)> check;
};

// Values computed once per ledger position and then shared.
//
// Thread safety: thread-safe.
template <typename T>
class OncePerPosition {
 public:
  // Returns the value for `to`, computing it on the first request for `to`;
  // a request for the same `to` meanwhile waits for it. A failure is kept:
  // later requests get it at once (a failing scan runs once). Valid until
  // this object's end.
  Result<const T*> Get(uint64_t to, const std::function<Result<std::unique_ptr<T>>()>& compute) {
    Slot* slot = SlotOf(to);
    std::lock_guard<std::mutex> lock(slot->mu);
    if (!slot->value && slot->failure.ok()) {
      auto computed = compute();
      if (computed.ok()) {
        slot->value = std::move(computed).value();
      } else {
        slot->failure = computed.status();
      }
    }
    if (!slot->failure.ok()) return slot->failure;
    return static_cast<const T*>(slot->value.get());
  }

  // Makes Asked(to) true before any Get(to).
  void Reserve(uint64_t to) { SlotOf(to); }

  // Whether Get(to) or Reserve(to) was called (Get may still be computing,
  // or have failed).
  bool Asked(uint64_t to) {
    std::lock_guard<std::mutex> lock(mu_);
    return slots_.count(to) > 0;
  }

 private:
  struct Slot {
    std::mutex mu;
    std::unique_ptr<T> value;  // guarded by mu
    Status failure;            // guarded by mu
  };

  // Returns the slot of `to`, made on the first request.
  Slot* SlotOf(uint64_t to) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& entry = slots_[to];
    if (!entry) entry = std::make_unique<Slot>();
    return entry.get();
  }

  std::mutex mu_;
  std::map<uint64_t, std::unique_ptr<Slot>> slots_;  // guarded by mu_
};

using IssuedInvoiceList = std::vector<std::pair<uint64_t, InvoiceIssued>>;
Result<IssuedInvoiceList> IssuedInvoices(const Ledger& ledger, uint64_t to,
                                         const ProgressFn& progress);

// What one scan of the log 1..to rebuilds: the call projections, with the
// log entries they made (for CheckLogEntries), and from the events that are
// not calls (other_events), the key state's digest and the issued invoices.
struct SharedRebuild {
  RebuiltCallProjections calls;
  Hash key_state_digest{};
  IssuedInvoiceList invoices;
};

// Runs `task` on a new thread; if no thread can be started, runs it now and
// returns a thread that is not joinable.
std::jthread StartOrRun(const std::function<void()>& task) {
  try {
    return std::jthread(task);
  } catch (const std::system_error&) {
    task();
    return std::jthread();
  }
}

// Returns the SharedRebuild of 1..to, with the log entries made only if
// `keep_log_entries` (48 bytes per logged call). REQUIRES: to > 0.
Result<std::unique_ptr<SharedRebuild>> RebuildShared(Ledger& ledger, uint64_t to,
                                                     bool keep_log_entries,
                                                     const ProgressFn& progress) {
  assert(to > 0);
  KL_RETURN_IF_ERROR(ledger.CatchUpTo(to));
  auto shared = std::make_unique<SharedRebuild>();
  auto key_state = std::make_unique<KeyState>();
  CallProjectionsRebuildOptions options;
  options.progress = progress;
  options.keep_log_entries = keep_log_entries;
  options.other_events = [&shared, &key_state](uint64_t sequence,
                                               std::string_view stored) -> Status {
    Event event;
    KL_RETURN_IF_ERROR(FoldStoredEvent(sequence, stored, key_state.get(), &event));
    if (auto* invoice = std::get_if<InvoiceIssued>(&event.body)) {
      shared->invoices.emplace_back(sequence, std::move(*invoice));
    }
    return Status::Ok();
  };
  // The key state is whole once the fold is: its digest is computed, and
  // the state freed, while the call projections' digest is computed. (A
  // jthread: joined on every way out, before `shared` and `key_state` go.)
  std::jthread key_state_digest;
  options.folded = [&shared, &key_state, &key_state_digest, to] {
    key_state->AdvancePosition(to);  // as RebuildKeyState: the last event walked
    key_state_digest = StartOrRun([&shared, &key_state] {
      shared->key_state_digest = key_state->Digest();
      key_state.reset();
    });
  };
  auto calls = RebuildCallProjections(ledger, to, options);
  if (key_state_digest.joinable()) key_state_digest.join();
  KL_RETURN_IF_ERROR(calls.ToStatus());
  shared->calls = std::move(calls).value();
  return shared;
}

// What the work of one replay shares: the data directory, the ledger view,
// its scratch directory, and what is rebuilt once per position: the
// SharedRebuild (the call projections' rebuild, their live read's log-entry
// check, and the key state and invoices at the same position), and the key
// state and the issued invoices at other positions (a running server's
// projections may stand at different positions).
//
// Thread safety: thread-safe.
class ReplayInputs {
 public:
  // `progress` (outliving this object) gets a part for each shared rebuild;
  // with `compare_with_live`, those keep the log entries the live
  // projection's check needs.
  ReplayInputs(std::string data_dir, Ledger& ledger, const ScratchDir& scratch,
               Progress* progress, bool compare_with_live)
      : data_dir_(std::move(data_dir)),
        ledger_(ledger),
        scratch_(scratch),
        progress_(progress),
        compare_with_live_(compare_with_live) {}

  const std::string& data_dir() const { return data_dir_; }
  Ledger& ledger() const { return ledger_; }  // a secondary view: thread-safe, never appended to
  const ScratchDir& scratch() const { return scratch_; }
  Progress& progress() const { return *progress_; }

  // The SharedRebuild of 1..to (see OncePerPosition::Get), whoever asks
  // first; it reports to its own part of the progress. REQUIRES: to > 0.
  Result<const SharedRebuild*> SharedRebuildAt(uint64_t to) {
    return shared_.Get(to, [&] {
      return RebuildShared(ledger_, to, compare_with_live_, progress_->Part(to));
    });
  }

  // Makes KeyStateDigestAt and IssuedInvoicesAt at `to` take the SharedRebuild's,
  // which the first of them to ask computes. (Without this they do so only
  // if the call projections' rebuild asked for it first.)
  void ShareRebuildAt(uint64_t to) { shared_.Reserve(to); }

  // The digest of the key state rebuilt to `to`: the SharedRebuild's if one
  // was asked for at `to` and succeeded, else by a scan of its own (see
  // OncePerPosition::Get), so that a call event the call projections refuse
  // fails their row alone.
  Result<Hash> KeyStateDigestAt(uint64_t to, const ProgressFn& progress) {
    if (to > 0 && shared_.Asked(to)) {
      auto shared = SharedRebuildAt(to);
      if (shared.ok()) return (*shared)->key_state_digest;
    }
    KL_ASSIGN_OR_RETURN(const KeyState* state, key_states_.Get(to, [&] {
      return RebuildKeyState(ledger_, to, progress);
    }));
    return state->Digest();
  }

  // Every InvoiceIssued event in 1..to, as KeyStateDigestAt.
  Result<const IssuedInvoiceList*> IssuedInvoicesAt(uint64_t to, const ProgressFn& progress) {
    if (to > 0 && shared_.Asked(to)) {
      auto shared = SharedRebuildAt(to);
      if (shared.ok()) return &(*shared)->invoices;
    }
    return issued_invoices_.Get(to, [&]() -> Result<std::unique_ptr<IssuedInvoiceList>> {
      KL_ASSIGN_OR_RETURN(IssuedInvoiceList list, IssuedInvoices(ledger_, to, progress));
      return std::make_unique<IssuedInvoiceList>(std::move(list));
    });
  }

 private:
  const std::string data_dir_;
  Ledger& ledger_;
  const ScratchDir& scratch_;
  Progress* const progress_;
  const bool compare_with_live_;
  OncePerPosition<SharedRebuild> shared_;
  OncePerPosition<KeyState> key_states_;
  OncePerPosition<IssuedInvoiceList> issued_invoices_;
};

// One row of the replay table. To add a projection, add a reader of its
// persisted state and a rebuild to kChecks.
struct ProjectionCheck {
  const char* name;
  // Reads the live projection without writing to it; scratch is an empty
  // directory for a RocksDB secondary instance.
  Result<LiveProjection> (*live)(ReplayInputs& inputs, const std::string& scratch);
  // Reads the live position alone, much faster than `live`, so the rebuild
  // runs while `live` reads the rest; nullptr: `live` runs first.
  Result<uint64_t> (*live_position)(ReplayInputs& inputs, const std::string& scratch);
  // Folds events 1..to (to == 0: none) into a fresh projection; returns its
  // digest. Reports the last sequence walked to `progress` now and then.
  Result<Hash> (*rebuild)(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress);
};

Result<LiveProjection> LiveKeyState(ReplayInputs& inputs, const std::string& scratch) {
  const std::string path = inputs.data_dir() + "/projections";
  std::error_code ec;
  if (!fs::exists(path + "/CURRENT", ec)) {
    return Status::NotFound("no projection store at " + path);
  }
  KL_ASSIGN_OR_RETURN(KeyState::StoredDigest stored, ReadKeyStateSnapshotDigest(path, scratch));
  return LiveProjection{stored.digest, stored.position, {}};
}

Result<Hash> RebuiltKeyState(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return KeyState().Digest();  // RebuildKeyState reads 0 as "the head"
  return inputs.KeyStateDigestAt(to, progress);
}

// Call projections (logs, metrics, usage): the store the server persisted,
// and a fresh in-memory fold of the log to the same position.
Result<std::string> CallProjectionsPath(const ReplayInputs& inputs) {
  std::string path = inputs.data_dir() + "/calls";
  std::error_code ec;
  if (!fs::exists(path + "/CURRENT", ec)) return Status::NotFound("no call projections at " + path);
  return path;
}

Result<LiveProjection> LiveCallProjections(ReplayInputs& inputs, const std::string& scratch) {
  KL_ASSIGN_OR_RETURN(std::string path, CallProjectionsPath(inputs));
  KL_ASSIGN_OR_RETURN(CallProjectionsSnapshot snapshot, LoadCallProjectionsSnapshot(path, scratch));
  auto stored = std::make_shared<const CallProjectionsSnapshot>(std::move(snapshot));
  LiveProjection live{stored->digest, stored->position, {}};
  // The digest covers log entries only through their running hash: each
  // stored entry is compared with the one the rebuild made.
  live.check = [stored](ReplayInputs& in) -> Status {
    if (stored->position == 0) {
      return CheckLogEntries(stored->log_entries, {}, stored->log_swept_before_us);
    }
    KL_ASSIGN_OR_RETURN(const SharedRebuild* rebuilt, in.SharedRebuildAt(stored->position));
    return CheckLogEntries(stored->log_entries, rebuilt->calls.log_entries,
                           stored->log_swept_before_us);
  };
  return live;
}

Result<uint64_t> LiveCallProjectionsPosition(ReplayInputs& inputs, const std::string& scratch) {
  KL_ASSIGN_OR_RETURN(std::string path, CallProjectionsPath(inputs));
  return ReadCallProjectionsPosition(path, scratch);
}

Result<Hash> RebuiltCallProjections(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return EmptyCallProjectionsDigest();
  KL_ASSIGN_OR_RETURN(const SharedRebuild* shared, inputs.SharedRebuildAt(to));
  return shared->calls.digest;
}

// Every InvoiceIssued event in 1..to with its sequence. Only the envelope
// header of the other events is decoded.
Result<IssuedInvoiceList> IssuedInvoices(const Ledger& ledger, uint64_t to,
                                         const ProgressFn& progress) {
  constexpr uint64_t kProgressEvents = 65'536;
  const uint16_t invoice_kind = InvoiceIssuedBodyKind();
  IssuedInvoiceList invoices;
  Status failed;
  KL_RETURN_IF_ERROR(ledger.ScanRaw(1, to, [&](uint64_t seq, std::string_view value) {
    if (progress && seq % kProgressEvents == 0) progress(seq);
    Hash hash;
    std::string_view body;
    failed = SplitStoredValue(value, &hash, &body);
    auto header = failed.ok() ? DecodeEnvelopeHeader(body) : Result<EnvelopeHeader>(failed);
    if (!header.ok()) {
      failed = Status::Corruption(header.status().message(), seq);
      return false;
    }
    if (header->body_kind != invoice_kind) return true;
    auto event = DecodeEventBody(body);
    if (!event.ok()) {
      failed = Status::Corruption(event.status().message(), seq);
      return false;
    }
    invoices.emplace_back(seq, std::move(std::get<InvoiceIssued>(event->body)));
    return true;
  }));
  KL_RETURN_IF_ERROR(failed);
  return invoices;
}

// Invoices: every issued invoice event in 1..to, or with `reproduce` the same
// invoices recomputed from the log alone (ReproduceInvoiceRun). The digest is
// over their digests in order.
Result<Hash> InvoiceDigests(ReplayInputs& inputs, uint64_t to, bool reproduce,
                            const ProgressFn& progress) {
  KL_ASSIGN_OR_RETURN(const IssuedInvoiceList* issued,
                      inputs.IssuedInvoicesAt(to, reproduce ? ProgressFn() : progress));
  const IssuedInvoiceList& invoices = *issued;
  std::string digests;
  // One run's invoices are consecutive events covering one position: they
  // are reproduced together, with one fold of the usage.
  size_t run_begin = 0;
  while (run_begin < invoices.size()) {
    size_t run_end = run_begin + 1;
    while (run_end < invoices.size() &&
           invoices[run_end].first == invoices[run_end - 1].first + 1 &&
           invoices[run_end].second.covers_sequence ==
               invoices[run_begin].second.covers_sequence) {
      run_end++;
    }
    std::vector<Hash> run_digests;
    if (reproduce) {
      if (progress) progress(invoices[run_begin].first);
      std::vector<InvoiceRef> refs;
      for (size_t i = run_begin; i < run_end; i++) {
        const auto& [seq, invoice] = invoices[i];
        refs.push_back(InvoiceRef{invoice.workspace_id, invoice.month, invoice.invoice_number, seq});
      }
      KL_ASSIGN_OR_RETURN(auto again, ReproduceInvoiceRun(inputs.ledger(), refs));
      for (const InvoiceIssued& invoice : again) run_digests.push_back(invoice.digest);
    } else {
      for (size_t i = run_begin; i < run_end; i++) run_digests.push_back(invoices[i].second.digest);
    }
    for (const Hash& digest : run_digests) {
      digests.append(reinterpret_cast<const char*>(digest.data()), digest.size());
    }
    run_begin = run_end;
  }
  return HashBytes(digests);
}

// The live invoices are the InvoiceIssued events of the log, as far as the
// ledger view reached when it opened.
Result<LiveProjection> LiveInvoices(ReplayInputs& inputs, const std::string&) {
  const uint64_t head = inputs.ledger().head().sequence;
  KL_ASSIGN_OR_RETURN(Hash digest, InvoiceDigests(inputs, head, /*reproduce=*/false, {}));
  return LiveProjection{digest, head, {}};
}

Result<Hash> RebuiltInvoices(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return HashBytes("");
  return InvoiceDigests(inputs, to, /*reproduce=*/true, progress);
}

constexpr ProjectionCheck kChecks[] = {
    {"key_state", LiveKeyState, nullptr, RebuiltKeyState},
    {"call_projections", LiveCallProjections, LiveCallProjectionsPosition, RebuiltCallProjections},
    {"invoices", LiveInvoices, nullptr, RebuiltInvoices},
};

struct ReplayRow {
  std::string name;
  std::string position;
  std::string live;
  std::string rebuilt;
  std::string status;
  bool ok = false;
  double live_seconds = 0;     // reading the live projection
  double rebuild_seconds = 0;  // of the rebuild alone (all of them, if it ran twice)
};

// Returns the last sequence recorded at or before `utc_us` (0: none), by
// binary search: recorded_at never decreases along the log.
Result<uint64_t> SequenceAtOrBefore(const Ledger& ledger, int64_t utc_us) {
  uint64_t lo = 0;  // recorded at or before utc_us (0: the empty prefix)
  uint64_t hi = ledger.head().sequence;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo + 1) / 2;
    KL_ASSIGN_OR_RETURN(Event event, ledger.Read(mid));
    if (event.recorded_at_us <= utc_us) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Parses --until: a sequence (digits) or an RFC 3339 time.
// Returns InvalidArgument on anything else or on a sequence beyond the head.
Result<uint64_t> ParseUntil(const Ledger& ledger, const std::string& text) {
  const uint64_t head = ledger.head().sequence;
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    errno = 0;
    const unsigned long long n = std::strtoull(text.c_str(), nullptr, 10);
    if (errno != 0 || n > head) {
      return Status::InvalidArgument("--until " + text + " is beyond the ledger head " +
                                         std::to_string(head),
                                     "until");
    }
    return static_cast<uint64_t>(n);
  }
  auto utc_us = ParseRfc3339(text, "until");
  if (!utc_us.ok()) {
    return Status::InvalidArgument(
        "--until must be a sequence number or an RFC 3339 time: " + utc_us.status().message(),
        "until");
  }
  return SequenceAtOrBefore(ledger, *utc_us);
}

// One projection's work in a replay, and what it found.
//
// Thread safety: its two tasks (ReplayLive, ReplayRebuild) may run at once;
// each writes only its own members.
struct ReplayWork {
  const ProjectionCheck* check = nullptr;
  ReplayRow row;
  std::optional<Result<LiveProjection>> live;  // written by the live task
  std::optional<Result<uint64_t>> to;          // written by the rebuild task
  std::optional<Result<Hash>> rebuilt;         // written by the rebuild task
};

// Rebuilds work->check to `to`, timed, reporting to `progress`.
Result<Hash> TimedRebuild(ReplayWork* work, ReplayInputs& inputs, uint64_t to, Progress* progress) {
  KL_RETURN_IF_ERROR(inputs.ledger().CatchUpTo(to));
  const int64_t start_us = SteadyNowUs();
  auto rebuilt = work->check->rebuild(inputs, to, progress->Part(to));
  work->row.rebuild_seconds += static_cast<double>(SteadyNowUs() - start_us) / 1e6;
  return rebuilt;
}

Result<std::string> ScratchFor(const ReplayInputs& inputs, const ReplayWork& work,
                               const char* suffix) {
  return inputs.scratch().Sub(std::string(work.check->name) + suffix);
}

// Reads the live projection.
void ReplayLive(ReplayWork* work, ReplayInputs& inputs) {
  const int64_t start_us = SteadyNowUs();
  auto dir = ScratchFor(inputs, *work, "-live");
  work->live = dir.ok() ? work->check->live(inputs, *dir) : Result<LiveProjection>(dir.status());
  work->row.live_seconds = static_cast<double>(SteadyNowUs() - start_us) / 1e6;
}

// Reads the live position alone. REQUIRES: work->check->live_position.
void ReadLivePosition(ReplayWork* work, ReplayInputs& inputs) {
  auto dir = ScratchFor(inputs, *work, "-position");
  work->to = dir.ok() ? work->check->live_position(inputs, *dir) : Result<uint64_t>(dir.status());
}

// Rebuilds to the live position, read on its own when the check can (the
// live read may still be running; CompareAllWithLive reads it first), else
// after the live read.
void ReplayRebuild(ReplayWork* work, ReplayInputs& inputs, Progress* progress) {
  if (work->check->live_position != nullptr) {
    if (!work->to) ReadLivePosition(work, inputs);
  } else {
    ReplayLive(work, inputs);
    work->to = work->live->ok() ? Result<uint64_t>((*work->live)->position)
                                : Result<uint64_t>(work->live->status());
  }
  if (!work->to->ok()) return;
  work->rebuilt = TimedRebuild(work, inputs, **work->to, progress);
}

// Fills the row once both tasks are done. A running server may have moved
// the live projection on between the two reads: then the rebuild runs again
// to where the live read found it.
void FinishRow(ReplayWork* work, ReplayInputs& inputs, Progress* progress) {
  ReplayRow& row = work->row;
  auto fail = [&row](const Status& s) { row.status = "error: " + Describe(s); };
  if (!work->live->ok()) return fail(work->live->status());
  const LiveProjection& live = **work->live;
  row.position = std::to_string(live.position);
  row.live = ToHex(live.digest);
  if (!work->to->ok()) return fail(work->to->status());
  if (**work->to != live.position) {
    std::fprintf(stderr, "keyledger audit replay: %s moved on from %llu to %llu while being read; "
                 "rebuilding to %llu\n", work->check->name,
                 static_cast<unsigned long long>(**work->to),
                 static_cast<unsigned long long>(live.position),
                 static_cast<unsigned long long>(live.position));
    work->rebuilt = TimedRebuild(work, inputs, live.position, progress);
  }
  if (!work->rebuilt->ok()) return fail(work->rebuilt->status());
  if (live.check) {
    Status checked = live.check(inputs);
    if (!checked.ok()) return fail(checked);
  }
  row.rebuilt = ToHex(**work->rebuilt);
  row.ok = **work->rebuilt == live.digest;
  row.status = row.ok ? "ok" : "DIFFERENT";
}

// Runs `tasks` on up to `threads` threads, the calling one included; returns
// when all are done. Tasks start in the order given. If a thread cannot be
// started, fewer run.
void RunTasks(const std::vector<std::function<void()>>& tasks, size_t threads) {
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < tasks.size(); i = next++) tasks[i]();
  };
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < std::min(threads, tasks.size()); ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;
    }
  }
  work();
  for (std::thread& helper : helpers) helper.join();
}

// Compares every projection with its rebuild, `threads` tasks at a time.
// The rebuilds that need not wait for their live read start first: they are
// the long ones (call projections). The call projections' position is read
// before any task starts, and their SharedRebuild reserved at it: the key
// state's and the invoices' rebuilds at that same position (a stopped
// server's) then take theirs from it rather than scan the log again.
std::vector<ReplayRow> CompareAllWithLive(ReplayInputs& inputs, size_t threads) {
  Progress* progress = &inputs.progress();
  std::vector<ReplayWork> works(std::size(kChecks));
  std::vector<std::function<void()>> first, then;
  for (size_t i = 0; i < works.size(); ++i) {
    ReplayWork* work = &works[i];
    work->check = &kChecks[i];
    work->row = ReplayRow{kChecks[i].name, "-", "-", "-", "", false};
    if (work->check->live_position != nullptr) {
      ReadLivePosition(work, inputs);
      if (work->to->ok() && **work->to > 0) inputs.ShareRebuildAt(**work->to);
    }
    auto rebuild = [work, &inputs, progress] { ReplayRebuild(work, inputs, progress); };
    if (work->check->live_position != nullptr) {
      first.push_back(rebuild);
      first.push_back([work, &inputs] { ReplayLive(work, inputs); });
    } else {
      then.push_back(rebuild);
    }
  }
  first.insert(first.end(), then.begin(), then.end());
  RunTasks(first, threads);
  std::vector<ReplayRow> rows;
  for (ReplayWork& work : works) {
    FinishRow(&work, inputs, progress);
    rows.push_back(std::move(work.row));
  }
  progress->Finish();
  return rows;
}

// Rebuilds every projection up to `until` without comparing.
std::vector<ReplayRow> RebuildAll(ReplayInputs& inputs, uint64_t until, size_t threads) {
  Progress* progress = &inputs.progress();
  std::vector<ReplayWork> works(std::size(kChecks));
  std::vector<std::function<void()>> tasks;
  if (until > 0) inputs.ShareRebuildAt(until);  // one scan of the log for all three
  for (size_t i = 0; i < works.size(); ++i) {
    ReplayWork* work = &works[i];
    work->check = &kChecks[i];
    tasks.push_back([work, &inputs, until, progress] {
      work->rebuilt = TimedRebuild(work, inputs, until, progress);
    });
  }
  RunTasks(tasks, threads);
  progress->Finish();
  std::vector<ReplayRow> rows;
  for (ReplayWork& work : works) {
    ReplayRow row{work.check->name, std::to_string(until), "-", "-", "", false};
    row.rebuild_seconds = work.row.rebuild_seconds;
    if (work.rebuilt->ok()) {
      row.rebuilt = ToHex(**work.rebuilt);
      row.status = "rebuilt (not compared)";
      row.ok = true;
    } else {
      row.status = "error: " + Describe(work.rebuilt->status());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

void PrintReplayTable(const std::vector<ReplayRow>& rows) {
  const char* format = "%-16s  %-10s  %-64s  %-64s  %-9s  %-6s  %s\n";
  std::printf(format, "projection", "position", "live digest", "rebuilt digest", "status",
              "read s", "rebuild s");
  for (const ReplayRow& r : rows) {
    char live_seconds[32];
    char rebuild_seconds[32];
    std::snprintf(live_seconds, sizeof(live_seconds), "%.1f", r.live_seconds);
    std::snprintf(rebuild_seconds, sizeof(rebuild_seconds), "%.1f", r.rebuild_seconds);
    std::printf(format, r.name.c_str(), r.position.c_str(), r.live.c_str(), r.rebuilt.c_str(),
                r.status.c_str(), live_seconds, rebuild_seconds);
  }
}

}  // namespace

int RunEventsDump(const EventsDumpOptions& options) {
  const char* cmd = "events dump";
  if (options.to != 0 && options.from > options.to) {
    return Usage(cmd, "--from " + std::to_string(options.from) + " is after --to " +
                          std::to_string(options.to));
  }
  auto view = OpenLedgerView(options.data_dir);
  if (!view.ok()) return Fail(cmd, Describe(view.status()));
  const Ledger& ledger = *view->ledger;
  const uint64_t head = ledger.head().sequence;
  const uint64_t to = options.to == 0 ? head : std::min(options.to, head);
  Status s = options.stream.empty() ? DumpRange(ledger, options.from, to)
                                    : DumpStream(ledger, options.stream, options.from, to);
  if (s.ok()) return FinishOutput(cmd, 0);
  if (s.code() == Code::kUnavailable) return kExitReaderGone;
  return Fail(cmd, Describe(s));
}

int RunAuditVerify(const AuditVerifyOptions& options) {
  const char* cmd = "audit verify";
  std::optional<HeadPin> pin;
  if (!options.expect_head.empty()) {
    auto parsed = ParseHeadPin(options.expect_head);
    if (!parsed.ok()) return Usage(cmd, parsed.status().message());
    pin = *parsed;
  }
  auto view = OpenLedgerView(options.data_dir, HeadMismatch::kOpenAnyway);
  if (!view.ok()) {
    if (view.status().code() == Code::kCorruption) return ReportCorruption(view.status());
    return Fail(cmd, Describe(view.status()));
  }
  const Ledger& ledger = *view->ledger;
  Progress progress(cmd, "verifying");
  VerifyOptions verify_options;
  verify_options.check_indexes = !options.skip_index_check;
  auto verified = ledger.Verify(progress.Part(ledger.head().sequence), verify_options);
  progress.Finish();
  if (!verified.ok()) return ReportCorruption(verified.status());
  if (Status s = CheckHeadRecord(ledger, *verified); !s.ok()) return ReportCorruption(s);

  nlohmann::json out = {{"events_verified", verified->events_verified},
                        {"head_sequence", verified->head.sequence},
                        {"head_hash", ToHex(verified->head.hash)}};
  Status pinned;
  if (pin) {
    pinned = CheckPin(ledger, *pin);
    out["expect_head"] = pinned.ok() ? "match" : "mismatch";
  }
  std::printf("%s\n", DumpJsonLine(out).c_str());
  if (!pinned.ok()) return FinishOutput(cmd, Fail(cmd, pinned.message()));
  return FinishOutput(cmd, 0);
}

int RunAuditReplay(const AuditReplayOptions& options) {
  const char* cmd = "audit replay";
  auto view = OpenLedgerView(options.data_dir);
  if (!view.ok()) return Fail(cmd, Describe(view.status()));
  Ledger& ledger = *view->ledger;
  Progress progress("audit replay", "rebuilding");
  ReplayInputs inputs(options.data_dir, ledger, *view->scratch, &progress,
                      /*compare_with_live=*/options.until.empty());
  std::vector<ReplayRow> rows;
  if (!options.until.empty()) {
    auto until = ParseUntil(ledger, options.until);
    if (!until.ok() && until.status().code() == Code::kInvalidArgument) {
      return Usage(cmd, until.status().message());
    }
    if (!until.ok()) return Fail(cmd, Describe(until.status()));
    rows = RebuildAll(inputs, *until, options.threads);
  } else {
    rows = CompareAllWithLive(inputs, options.threads);
  }
  PrintReplayTable(rows);
  size_t bad = 0;
  for (const ReplayRow& r : rows) bad += r.ok ? 0 : 1;
  if (bad == 0) return FinishOutput(cmd, 0);
  return FinishOutput(cmd, Fail(cmd, std::to_string(bad) + " of " + std::to_string(rows.size()) +
                                         " projections do not match their rebuild from the log"));
}

}  // namespace keyledger::tools
