// The audit commands: `keyledger events dump`, `keyledger audit verify`,
// `keyledger audit replay`. All read the data directory of a (possibly
// running) server through RocksDB secondary instances and never write to it.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
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

// Opens DIR/ledger as a RocksDB secondary instance.
// Returns NotFound if DIR or DIR/ledger does not exist, IOError/Corruption from Ledger::Open.
Result<LedgerView> OpenLedgerView(const std::string& data_dir) {
  static const SystemClock clock;  // recorded_at is never assigned by a secondary
  std::error_code ec;
  if (!fs::is_directory(data_dir, ec)) {
    return Status::NotFound("data directory " + data_dir + " does not exist", "data");
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

Status WriteEventLine(const Event& event) {
  std::string line = DumpJsonLine(EventToJson(event));
  line.push_back('\n');
  if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size()) return StdoutError();
  return Status::Ok();
}

// Writes the events in [from, to] in sequence order. REQUIRES: to <= the head.
Status DumpRange(const Ledger& ledger, uint64_t from, uint64_t to) {
  uint64_t next = from;
  while (next <= to) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(kDumpPageEvents, to - next + 1));
    KL_ASSIGN_OR_RETURN(std::vector<Event> page, ledger.ReadRange(next, want));
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

// Reports the progress of a walk over the log on stderr: one line refreshed
// in place with \r on a terminal (events/s and ETA), a plain line every
// kPlainProgressIntervalUs otherwise.
class Progress {
 public:
  // `command` as in messages ("audit verify"); `action` names the walk ("verifying").
  Progress(const char* command, std::string action, uint64_t total)
      : tty_(::isatty(STDERR_FILENO) == 1),
        command_(command),
        action_(std::move(action)),
        total_(total),
        start_us_(SteadyNowUs()) {}

  // `done`: events walked so far (the last sequence walked).
  void Update(uint64_t done) {
    const int64_t now = SteadyNowUs();
    const int64_t interval = tty_ ? kTtyProgressIntervalUs : kPlainProgressIntervalUs;
    if (now - last_us_ < interval) return;
    last_us_ = now;
    const double seconds = std::max<double>(1e-6, static_cast<double>(now - start_us_) / 1e6);
    const double rate = static_cast<double>(done) / seconds;
    const double eta = rate > 0 && total_ > done ? static_cast<double>(total_ - done) / rate : 0;
    if (tty_) {
      std::fprintf(stderr, "\r%s: %llu / %llu events (%.0f%%), %.0f events/s, ETA %.0fs   ",
                   action_.c_str(), static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(total_),
                   total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0,
                   rate, eta);
      printed_ = true;
    } else {
      std::fprintf(stderr, "keyledger %s: %s: %llu of %llu events (%.0f events/s)\n", command_,
                   action_.c_str(), static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(total_), rate);
    }
    std::fflush(stderr);
  }

  // Clears the in-place line so that what follows starts on a clean line.
  void Finish() {
    if (tty_ && printed_) std::fputs("\r\033[K", stderr);
    printed_ = false;
  }

  // A callback for the ledger and projection walks.
  ProgressFn Callback() {
    return [this](uint64_t done) { Update(done); };
  }

 private:
  const bool tty_;
  const char* const command_;
  const std::string action_;
  const uint64_t total_;
  const int64_t start_us_;
  int64_t last_us_ = 0;
  bool printed_ = false;
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
Status CheckHeadRecord(const Ledger& ledger, const VerifyResult& verified) {
  const LedgerHead stored = ledger.head();
  if (stored.sequence != verified.head.sequence ||
      !ConstantTimeEqual(stored.hash, verified.head.hash)) {
    return Status::Corruption("the head record does not match the last event",
                              verified.head.sequence);
  }
  return Status::Ok();
}

int ReportCorruption(const Status& s) {
  nlohmann::json out = {{"error", CodeName(s.code())}, {"message", s.message()}};
  if (s.code() == Code::kCorruption) out["first_bad_sequence"] = s.sequence();
  std::printf("%s\n", DumpJsonLine(out).c_str());
  return Fail("audit verify", Describe(s));
}

// ---- audit replay ----------------------------------------------------------------

// A live projection as the server last persisted it.
struct LiveProjection {
  Hash digest{};
  uint64_t position = 0;  // the last sequence it has folded
};

// What the rebuilds of one replay share: the ledger, and the key state
// rebuilt once per position (key_state and call_projections both need it).
//
// Thread safety: not thread-safe.
class ReplayInputs {
 public:
  explicit ReplayInputs(const Ledger& ledger) : ledger_(ledger) {}

  const Ledger& ledger() const { return ledger_; }

  // The key state rebuilt to `to`, rebuilt on the first request for `to`.
  // Valid until the next call with another `to`, or the ReplayInputs' end.
  Result<const KeyState*> KeyStateAt(uint64_t to, const ProgressFn& progress) {
    if (!key_state_ || key_state_to_ != to) {
      KL_ASSIGN_OR_RETURN(key_state_, RebuildKeyState(ledger_, to, progress));
      key_state_to_ = to;
    }
    return static_cast<const KeyState*>(key_state_.get());
  }

 private:
  const Ledger& ledger_;
  std::unique_ptr<KeyState> key_state_;
  uint64_t key_state_to_ = 0;
};

// One row of the replay table. To add a projection, add a reader of its
// persisted state and a rebuild to kChecks.
struct ProjectionCheck {
  const char* name;
  // Reads the live projection under data_dir without writing to it; scratch
  // is an empty directory for a RocksDB secondary instance.
  Result<LiveProjection> (*live)(const std::string& data_dir, const std::string& scratch);
  // Folds events 1..to (to == 0: none) into a fresh projection; returns its
  // digest. Reports the last sequence walked to `progress` now and then.
  Result<Hash> (*rebuild)(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress);
};

Result<LiveProjection> LiveKeyState(const std::string& data_dir, const std::string& scratch) {
  const std::string path = data_dir + "/projections";
  std::error_code ec;
  if (!fs::exists(path + "/CURRENT", ec)) {
    return Status::NotFound("no projection store at " + path);
  }
  KL_ASSIGN_OR_RETURN(auto state, LoadKeyStateSnapshot(path, scratch));
  return LiveProjection{state->Digest(), state->position()};
}

Result<Hash> RebuiltKeyState(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return KeyState().Digest();  // RebuildKeyState reads 0 as "the head"
  KL_ASSIGN_OR_RETURN(const KeyState* state, inputs.KeyStateAt(to, progress));
  return state->Digest();
}

// Call projections (logs, metrics, usage): the store the server persisted,
// and a fresh in-memory fold with the time zones of the key state rebuilt to
// the same position (the live fold reads the zones current when it folds:
// see the usage rule in projections/call_projections.h).
Result<LiveProjection> LiveCallProjections(const std::string& data_dir, const std::string& scratch) {
  const std::string path = data_dir + "/calls";
  std::error_code ec;
  if (!fs::exists(path + "/CURRENT", ec)) return Status::NotFound("no call projections at " + path);
  KL_ASSIGN_OR_RETURN(CallProjectionsSnapshot live, LoadCallProjectionsSnapshot(path, scratch));
  return LiveProjection{live.digest, live.position};
}

Result<Hash> RebuiltCallProjections(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return EmptyCallProjectionsDigest();
  KL_ASSIGN_OR_RETURN(const KeyState* key_state, inputs.KeyStateAt(to, {}));
  return RebuildCallProjectionsDigest(inputs.ledger(), *key_state, to, progress);
}

// Every InvoiceIssued event in 1..to with its sequence. Only the envelope
// header of the other events is decoded.
Result<std::vector<std::pair<uint64_t, InvoiceIssued>>> IssuedInvoices(const Ledger& ledger,
                                                                       uint64_t to,
                                                                       const ProgressFn& progress) {
  constexpr uint64_t kProgressEvents = 65'536;
  const uint16_t invoice_kind = InvoiceIssuedBodyKind();
  std::vector<std::pair<uint64_t, InvoiceIssued>> invoices;
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

// Invoices: every issued invoice event, and the same invoices recomputed from
// the log alone (ReproduceInvoice). The digest is over their digests in order.
Result<Hash> InvoiceDigests(const Ledger& ledger, uint64_t to, bool reproduce,
                            const ProgressFn& progress) {
  KL_ASSIGN_OR_RETURN(auto invoices, IssuedInvoices(ledger, to, reproduce ? ProgressFn() : progress));
  SystemClock clock;
  std::string digests;
  std::unique_ptr<ScratchDir> scratch;
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
      if (!scratch) {
        KL_ASSIGN_OR_RETURN(scratch, ScratchDir::Create());
      }
      KL_ASSIGN_OR_RETURN(std::string dir,
                          scratch->Sub("run-" + std::to_string(invoices[run_begin].first)));
      std::vector<InvoiceRef> refs;
      for (size_t i = run_begin; i < run_end; i++) {
        const auto& [seq, invoice] = invoices[i];
        refs.push_back(InvoiceRef{invoice.workspace_id, invoice.month, invoice.invoice_number, seq});
      }
      KL_ASSIGN_OR_RETURN(auto again, ReproduceInvoiceRun(ledger, refs, dir, &clock));
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

Result<LiveProjection> LiveInvoices(const std::string& data_dir, const std::string& scratch) {
  KL_ASSIGN_OR_RETURN(LedgerView view, OpenLedgerView(data_dir));
  const uint64_t head = view.ledger->head().sequence;
  KL_ASSIGN_OR_RETURN(Hash digest, InvoiceDigests(*view.ledger, head, /*reproduce=*/false, {}));
  return LiveProjection{digest, head};
}

Result<Hash> RebuiltInvoices(ReplayInputs& inputs, uint64_t to, const ProgressFn& progress) {
  if (to == 0) return HashBytes("");
  return InvoiceDigests(inputs.ledger(), to, /*reproduce=*/true, progress);
}

constexpr ProjectionCheck kChecks[] = {
    {"key_state", LiveKeyState, RebuiltKeyState},
    {"call_projections", LiveCallProjections, RebuiltCallProjections},
    {"invoices", LiveInvoices, RebuiltInvoices},
};

struct ReplayRow {
  std::string name;
  std::string position;
  std::string live;
  std::string rebuilt;
  std::string status;
  bool ok = false;
  double rebuild_seconds = 0;  // of the rebuild alone
};

// Rebuilds `check` to `to` with a progress line; times it into `row`.
Result<Hash> TimedRebuild(const ProjectionCheck& check, ReplayInputs& inputs, uint64_t to,
                          ReplayRow* row) {
  Progress progress("audit replay", std::string("rebuilding ") + check.name, to);
  const int64_t start_us = SteadyNowUs();
  auto rebuilt = check.rebuild(inputs, to, progress.Callback());
  progress.Finish();
  row->rebuild_seconds = static_cast<double>(SteadyNowUs() - start_us) / 1e6;
  return rebuilt;
}

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

// Compares one live projection with a rebuild up to the live position.
ReplayRow CompareWithLive(const ProjectionCheck& check, Ledger& ledger, ReplayInputs& inputs,
                          const std::string& data_dir, const ScratchDir& scratch) {
  ReplayRow row{check.name, "-", "-", "-", "", false};
  auto fail = [&row](const Status& s) {
    row.status = "error: " + Describe(s);
    return row;
  };
  auto dir = scratch.Sub(check.name);
  if (!dir.ok()) return fail(dir.status());
  auto live = check.live(data_dir, *dir);
  if (!live.ok()) return fail(live.status());
  row.position = std::to_string(live->position);
  row.live = ToHex(live->digest);
  // The projection was read after the ledger view opened: let the view catch up.
  if (live->position > ledger.head().sequence) {
    if (Status s = ledger.CatchUp(); !s.ok()) return fail(s);
  }
  if (live->position > ledger.head().sequence) {
    return fail(Status::Corruption("the live projection is at " + row.position +
                                   ", beyond the ledger head " +
                                   std::to_string(ledger.head().sequence)));
  }
  auto rebuilt = TimedRebuild(check, inputs, live->position, &row);
  if (!rebuilt.ok()) return fail(rebuilt.status());
  row.rebuilt = ToHex(*rebuilt);
  row.ok = *rebuilt == live->digest;
  row.status = row.ok ? "ok" : "DIFFERENT";
  return row;
}

// Rebuilds one projection up to `until` without comparing.
ReplayRow RebuildOnly(const ProjectionCheck& check, ReplayInputs& inputs, uint64_t until) {
  ReplayRow row{check.name, std::to_string(until), "-", "-", "", false};
  auto rebuilt = TimedRebuild(check, inputs, until, &row);
  if (!rebuilt.ok()) {
    row.status = "error: " + Describe(rebuilt.status());
    return row;
  }
  row.rebuilt = ToHex(*rebuilt);
  row.status = "rebuilt (not compared)";
  row.ok = true;
  return row;
}

void PrintReplayTable(const std::vector<ReplayRow>& rows) {
  const char* format = "%-16s  %-10s  %-64s  %-64s  %-9s  %s\n";
  std::printf(format, "projection", "position", "live digest", "rebuilt digest", "status",
              "rebuild s");
  for (const ReplayRow& r : rows) {
    char seconds[32];
    std::snprintf(seconds, sizeof(seconds), "%.1f", r.rebuild_seconds);
    std::printf(format, r.name.c_str(), r.position.c_str(), r.live.c_str(), r.rebuilt.c_str(),
                r.status.c_str(), seconds);
  }
}

}  // namespace

int RunEventsDump(const EventsDumpOptions& options) {
  const char* cmd = "events dump";
  if (options.to != 0 && options.from > options.to) {
    return Usage(cmd, "--from " + std::to_string(options.from) + " is after --to " +
                          std::to_string(options.to));
  }
  // A closed pipe ends the dump through EPIPE, so the scratch directory is
  // still removed (SIGPIPE would kill the process first).
  std::signal(SIGPIPE, SIG_IGN);
  auto view = OpenLedgerView(options.data_dir);
  if (!view.ok()) return Fail(cmd, Describe(view.status()));
  const Ledger& ledger = *view->ledger;
  const uint64_t head = ledger.head().sequence;
  const uint64_t to = options.to == 0 ? head : std::min(options.to, head);
  Status s = options.stream.empty() ? DumpRange(ledger, options.from, to)
                                    : DumpStream(ledger, options.stream, options.from, to);
  if (s.ok() && std::fflush(stdout) != 0) s = StdoutError();
  if (s.code() == Code::kUnavailable) return kExitReaderGone;
  return s.ok() ? 0 : Fail(cmd, Describe(s));
}

int RunAuditVerify(const AuditVerifyOptions& options) {
  const char* cmd = "audit verify";
  std::optional<HeadPin> pin;
  if (!options.expect_head.empty()) {
    auto parsed = ParseHeadPin(options.expect_head);
    if (!parsed.ok()) return Usage(cmd, parsed.status().message());
    pin = *parsed;
  }
  auto view = OpenLedgerView(options.data_dir);
  if (!view.ok()) {
    if (view.status().code() == Code::kCorruption) return ReportCorruption(view.status());
    return Fail(cmd, Describe(view.status()));
  }
  const Ledger& ledger = *view->ledger;
  Progress progress(cmd, "verifying", ledger.head().sequence);
  auto verified = ledger.Verify(progress.Callback());
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
  std::fflush(stdout);
  if (!pinned.ok()) return Fail(cmd, pinned.message());
  return 0;
}

int RunAuditReplay(const AuditReplayOptions& options) {
  const char* cmd = "audit replay";
  auto view = OpenLedgerView(options.data_dir);
  if (!view.ok()) return Fail(cmd, Describe(view.status()));
  Ledger& ledger = *view->ledger;
  ReplayInputs inputs(ledger);
  std::vector<ReplayRow> rows;
  if (!options.until.empty()) {
    auto until = ParseUntil(ledger, options.until);
    if (!until.ok() && until.status().code() == Code::kInvalidArgument) {
      return Usage(cmd, until.status().message());
    }
    if (!until.ok()) return Fail(cmd, Describe(until.status()));
    for (const ProjectionCheck& check : kChecks) rows.push_back(RebuildOnly(check, inputs, *until));
  } else {
    for (const ProjectionCheck& check : kChecks) {
      rows.push_back(CompareWithLive(check, ledger, inputs, options.data_dir, *view->scratch));
    }
  }
  PrintReplayTable(rows);
  std::fflush(stdout);
  size_t bad = 0;
  for (const ReplayRow& r : rows) bad += r.ok ? 0 : 1;
  if (bad == 0) return 0;
  return Fail(cmd, std::to_string(bad) + " of " + std::to_string(rows.size()) +
                       " projections do not match their rebuild from the log");
}

}  // namespace keyledger::tools
