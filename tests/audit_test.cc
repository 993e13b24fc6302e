// The audit tools: EventToJson, `keyledger events dump`, `keyledger audit
// verify` (with tampering written straight into RocksDB), `keyledger audit
// replay`, KeyHistory and KeyAsOf. The CLI runs as a subprocess on a data
// directory whose ledger stays open in this process, as a running server's would.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <utility>

#include "billing/calendar.h"
#include "billing/invoicing.h"
#include "ledger/hash.h"
#include "ledger/codec.h"
#include "ledger/ledger.h"
#include "ledger/verify_chain.h"
#include "projections/call_projections.h"
#include "projections/key_history.h"
#include "projections/key_state_store.h"
#include "tests/test_util.h"
#include "tools/event_json.h"

namespace keyledger {
namespace {

using json = nlohmann::json;
using testing::MakeCallEvent;
using testing::MakeEventId;
using testing::ScratchDir;

constexpr int64_t kStartUs = 1'700'000'000'000'000;  // 2023-11-14T22:13:20Z
constexpr int64_t kStepUs = 1'000'000;               // the clock moves 1 s per append

Hash FilledHash(uint8_t b) {
  Hash h;
  h.fill(b);
  return h;
}

// ---- Running the CLI --------------------------------------------------------------

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  std::vector<json> Lines() const {
    std::vector<json> lines;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
    return lines;
  }
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `keyledger args...` with stdout and stderr captured in files (stdout
// into `stdout_path` instead, when given: the output is then not read back).
CliResult RunCli(const std::vector<std::string>& args, const std::string& stdout_path = "") {
  ScratchDir io;
  const std::string out_path = stdout_path.empty() ? io.sub("out") : stdout_path;
  const std::string err_path = io.sub("err");
  std::vector<std::string> all = {KEYLEDGER_BINARY};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | (stdout_path.empty() ? O_TRUNC : 0),
                     0600);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(126);
    ::execv(KEYLEDGER_BINARY, argv.data());
    ::_exit(127);
  }
  CliResult r;
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (stdout_path.empty()) r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  return r;
}

// ---- Tampering, as an attacker with disk access would ----------------------------

void EditStore(const std::string& path, const std::vector<ColumnFamilySpec>& families,
               const std::function<void(KvStore&, KvBatch&)>& edit) {
  KvStoreOptions options;
  options.column_families = families;
  auto store = KvStore::Open(path, options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  KvBatch batch(**store);
  edit(**store, batch);
  ASSERT_TRUE((*store)->Write(batch, Durability::kSync).ok());
}

void TamperLedger(const std::string& path, const std::function<void(KvStore&, KvBatch&)>& edit) {
  EditStore(path, {{"events"}, {"streams"}, {"event_ids"}, {"meta"}}, edit);
}

std::string StoredValue(KvStore& store, uint64_t seq) {
  auto v = store.Get(kCfEvents, EventKey(seq));
  EXPECT_TRUE(v.ok() && v->has_value());
  return v.ok() && v->has_value() ? **v : std::string();
}

// The header of event `seq` as stored, for edits of its index entries.
EnvelopeHeader StoredHeader(KvStore& store, uint64_t seq) {
  const std::string value = StoredValue(store, seq);
  Hash hash;
  std::string_view body;
  EXPECT_TRUE(SplitStoredValue(value, &hash, &body).ok());
  auto header = DecodeEnvelopeHeader(body);
  EXPECT_TRUE(header.ok());
  return header.ok() ? *header : EnvelopeHeader{};
}

std::string EventIdEntryKey(const EnvelopeHeader& h) {
  return std::string(reinterpret_cast<const char*>(h.event_id.data()), h.event_id.size());
}

void SwapEvents(KvStore& store, KvBatch& batch, uint64_t a, uint64_t b) {
  const std::string value_a = StoredValue(store, a);
  batch.Put(kCfEvents, EventKey(a), StoredValue(store, b));
  batch.Put(kCfEvents, EventKey(b), value_a);
}

std::string SequenceValue(uint64_t seq) {
  std::string v;
  AppendBigEndian64(&v, seq);
  return v;
}

// ---- A data directory with a real key lifecycle ------------------------------------

// One expected history entry of key_a.
struct Expected {
  std::string type;
  std::string actor;
  std::vector<std::string> changes;
};

class AuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(data_);
    OpenLedger();
    ASSERT_NE(ledger_, nullptr);
    BuildLifecycle();
  }

  void OpenLedger() {
    LedgerOptions options;
    options.clock = &clock_;
    auto ledger = Ledger::Open(ledger_path(), options);
    ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    ledger_ = std::move(ledger).value();
  }

  // Closes everything this process holds on the data directory.
  void CloseAll() {
    calls_.reset();
    key_state_.reset();
    ledger_.reset();
  }

  std::string ledger_path() const { return data_ + "/ledger"; }
  std::string projections_path() const { return data_ + "/projections"; }
  std::string calls_path() const { return data_ + "/calls"; }

  // Appends one event, folds it into the reference KeyState and records
  // key_a as a GET would have shown it right after.
  uint64_t Append(NewEvent e) {
    clock_.AdvanceUs(kStepUs);
    auto r = ledger_->Append({e});
    EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
    if (!r.ok()) return 0;
    uint64_t seq = r->sequences.front();
    auto stored = ledger_->Read(seq);
    EXPECT_TRUE(stored.ok());
    Status applied = reference_.Apply(*stored);
    EXPECT_TRUE(applied.ok()) << applied.ToString();
    seen_[seq] = reference_.FindKey("key_a");
    return seq;
  }

  uint64_t Lifecycle(const std::string& stream, const std::string& actor, EventBody body) {
    NewEvent e;
    e.event_id = MakeEventId(++next_id_);
    e.stream_id = stream;
    e.actor = actor;
    e.body = std::move(body);
    return Append(std::move(e));
  }

  uint64_t Call() { return Append(MakeCallEvent(++next_id_, "key_a")); }

  // A call of key_b made while its logging was on; returns its sequence.
  uint64_t LoggedCall() {
    NewEvent e = MakeCallEvent(++next_id_, "key_b", "body excerpt");
    std::get<ApiCallRecorded>(e.body).logged = true;
    return Append(std::move(e));
  }

  void BuildLifecycle() {
    Lifecycle(kOperatorStream, "system", OperatorTokenSet{FilledHash(0x01)});
    Lifecycle("ws/ws_a", "operator",
              WorkspaceCreated{{"ws_a", "Acme", 100, "Europe/Berlin", ""}});
    Lifecycle("sg/sg_a", "operator", SecurityGroupCreated{{"ws_a", "sg_a", "office", {"10.0.0.0/8"}, {}}});
    Lifecycle("sg/sg_b", "operator", SecurityGroupCreated{{"ws_a", "sg_b", "anywhere", {"0.0.0.0/0"}, {}}});
    created_ = Lifecycle("key/key_a", "token:alice",
                         KeyCreated{"ws_a", "key_a", "a", "first key", "sg_a", FilledHash(0xa1)});
    expected_.push_back({"key_created", "token:alice",
                         {"created", "name \"a\"", "security_group sg_a", "description \"first key\""}});
    Call();
    Lifecycle("key/key_b", "token:alice",
              KeyCreated{"ws_a", "key_b", "other", "", "sg_a", FilledHash(0xb1)});
    Lifecycle("key/key_a", "token:bob", KeyRenamed{"ws_a", "key_a", "b"});
    expected_.push_back({"key_renamed", "token:bob", {"name \"a\" -> \"b\""}});
    Call();
    Lifecycle("key/key_a", "token:bob", KeyDescriptionChanged{"ws_a", "key_a", "renamed key"});
    expected_.push_back(
        {"key_description_changed", "token:bob", {"description \"first key\" -> \"renamed key\""}});
    Lifecycle("key/key_a", "operator", KeySecurityGroupChanged{"ws_a", "key_a", "sg_b"});
    expected_.push_back({"key_security_group_changed", "operator", {"security_group sg_a -> sg_b"}});
    Lifecycle("key/key_a", "token:alice", KeyLoggingSwitched{"ws_a", "key_a", true});
    expected_.push_back({"key_logging_switched", "token:alice", {"logging false -> true"}});
    Call();
    const int64_t grace_until = clock_.NowUs() + kStepUs + 3'600'000'000;  // an hour after it
    Lifecycle("key/key_a", "token:alice",
              KeyRotated{"ws_a", "key_a", FilledHash(0xa2), grace_until});
    expected_.push_back({"key_rotated", "token:alice",
                         {"secret rotated (old secret valid until " + FormatRfc3339(grace_until) + ")"}});
    Lifecycle("key/key_a", "operator", KeyRotated{"ws_a", "key_a", FilledHash(0xa3), 0});
    expected_.push_back({"key_rotated", "operator", {"secret rotated (old secret revoked at once)"}});
    Lifecycle("key/key_a", "token:bob", KeyRenamed{"ws_a", "key_a", "c \"quoted\""});
    expected_.push_back({"key_renamed", "token:bob", {"name \"b\" -> \"c \\\"quoted\\\"\""}});
    Call();
    deleted_ = Lifecycle("key/key_a", "operator", KeyDeleted{"ws_a", "key_a"});
    expected_.push_back({"key_deleted", "operator", {"deleted"}});
    Call();
  }

  // Opens the live key-state projection and the call projections as `serve` does.
  void OpenProjections() {
    auto store = KeyStateStore::Open(projections_path(), ledger_.get());
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    key_state_ = std::move(store).value();
    auto calls = CallProjections::Open(calls_path(), ledger_.get(), &clock_,
                                       CallProjectionsOptions{});
    ASSERT_TRUE(calls.ok()) << calls.ToStatus().ToString();
    calls_ = std::move(calls).value();
  }

  ScratchDir dir_;
  const std::string data_ = dir_.sub("data");
  ManualClock clock_{kStartUs};
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<KeyStateStore> key_state_;
  std::unique_ptr<CallProjections> calls_;
  KeyState reference_;
  std::map<uint64_t, std::optional<KeyView>> seen_;  // key_a right after each sequence
  std::vector<Expected> expected_;
  uint64_t next_id_ = 0;
  uint64_t created_ = 0;
  uint64_t deleted_ = 0;
};

// ---- EventToJson --------------------------------------------------------------------

template <size_t... I>
void ExpectEveryAlternative(std::index_sequence<I...>) {
  auto check = [](EventBody body) {
    Event e;
    e.body = std::move(body);
    json j = EventToJson(e);
    EXPECT_EQ(j.at("type"), EventTypeName(e.body));
    EXPECT_TRUE(j.at("data").is_object()) << j.dump();
    EXPECT_FALSE(j.at("data").empty()) << j.at("type");
    EXPECT_NO_THROW(DumpJsonLine(j));
  };
  (check(EventBody(std::in_place_index<I>)), ...);
}

TEST(EventJson, CoversEveryAlternative) {
  ExpectEveryAlternative(std::make_index_sequence<std::variant_size_v<EventBody>>{});
}

TEST(EventJson, EnvelopeHexTimesAndInvalidUtf8) {
  ApiCallRecorded call;
  call.key_id = "key_a";
  call.status = 201;
  call.request.headers.push_back({"content-type", "image/png"});
  call.request.body_excerpt = std::string("\xff\xfe ok", 5);
  Event e;
  e.sequence = 3;
  e.recorded_at_us = kStartUs + 123'456;
  e.stream_id = "calls/key_a";
  e.stream_version = 2;
  e.event_id = MakeEventId(9);
  e.actor = "gateway";
  e.prev_hash = FilledHash(0xab);
  e.hash = FilledHash(0xcd);
  e.body = call;
  json j = json::parse(DumpJsonLine(EventToJson(e)));
  EXPECT_EQ(j["sequence"], 3);
  EXPECT_EQ(j["recorded_at"], "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(j["recorded_at_us"], kStartUs + 123'456);
  EXPECT_EQ(j["stream_id"], "calls/key_a");
  EXPECT_EQ(j["stream_version"], 2);
  EXPECT_EQ(j["event_id"], ToHex(e.event_id.data(), e.event_id.size()));
  EXPECT_EQ(j["actor"], "gateway");
  EXPECT_EQ(j["prev_hash"], ToHex(FilledHash(0xab)));
  EXPECT_EQ(j["hash"], ToHex(FilledHash(0xcd)));
  EXPECT_EQ(j["type"], "api_call_recorded");
  EXPECT_EQ(j["data"]["status"], 201);
  EXPECT_EQ(j["data"]["request"]["headers"][0]["value"], "image/png");
  EXPECT_EQ(j["data"]["request"]["body_excerpt"], "\xEF\xBF\xBD\xEF\xBF\xBD ok");
}

TEST(EventJson, EnumsByNameAndWebhookSecretRedacted) {
  AlarmCreated alarm;
  alarm.metric = AlarmMetric::kLatencyP95Ms;
  alarm.comparator = Comparator::kGreaterOrEqual;
  alarm.channels = {EmailChannel{"ops@example.com"}, WebhookChannel{"https://h.example", "s3cret"}};
  Event e;
  e.body = alarm;
  std::string line = DumpJsonLine(EventToJson(e));
  json j = json::parse(line);
  EXPECT_EQ(j["data"]["metric"], "latency_p95_ms");
  EXPECT_EQ(j["data"]["comparator"], "greater_or_equal");
  EXPECT_EQ(j["data"]["channels"][0]["to"], "ops@example.com");
  EXPECT_EQ(j["data"]["channels"][1]["url"], "https://h.example");
  EXPECT_EQ(line.find("s3cret"), std::string::npos);

  PricePlanPublished plan;
  plan.tiers = {{1000, 5}, {std::nullopt, 2}};
  e.body = plan;
  j = EventToJson(e);
  EXPECT_EQ(j["data"]["tiers"][0]["up_to"], 1000);
  EXPECT_TRUE(j["data"]["tiers"][1]["up_to"].is_null());
  EXPECT_EQ(j["data"]["mode"], "graduated");

  OperatorTokenSet op;  // a token the operator may have chosen: no hash out
  op.token_hash = HashBytes("a-human-chosen-token");
  e.body = op;
  line = DumpJsonLine(EventToJson(e));
  EXPECT_EQ(line.find(ToHex(op.token_hash)), std::string::npos) << line;
  EXPECT_EQ(json::parse(line)["data"]["token_hash"], "<redacted>");
}

// ---- events dump ----------------------------------------------------------------------

TEST_F(AuditTest, DumpPrintsEveryEventWhileTheLedgerIsOpen) {
  const uint64_t head = ledger_->head().sequence;
  CliResult r = RunCli({"events", "dump", "--data", data_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto lines = r.Lines();
  ASSERT_EQ(lines.size(), head);
  for (uint64_t i = 0; i < head; i++) {
    auto stored = ledger_->Read(i + 1);
    ASSERT_TRUE(stored.ok());
    EXPECT_EQ(lines[i]["sequence"], i + 1);
    EXPECT_EQ(lines[i]["hash"], ToHex(stored->hash));
    EXPECT_EQ(lines[i]["type"], EventTypeName(stored->body));
  }
  EXPECT_EQ(lines[created_ - 1]["data"]["name"], "a");
  EXPECT_EQ(lines[created_ - 1]["actor"], "token:alice");
  // Events appended after a dump are seen by the next one: no restart needed.
  Call();
  EXPECT_EQ(RunCli({"events", "dump", "--data", data_}).Lines().size(), head + 1);
}

TEST_F(AuditTest, DumpFiltersBySequenceAndStream) {
  CliResult range = RunCli({"events", "dump", "--data", data_, "--from", "3", "--to", "6"});
  ASSERT_EQ(range.exit_code, 0) << range.err;
  auto lines = range.Lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines.front()["sequence"], 3);
  EXPECT_EQ(lines.back()["sequence"], 6);

  CliResult stream = RunCli({"events", "dump", "--data", data_, "--stream", "key/key_a"});
  ASSERT_EQ(stream.exit_code, 0) << stream.err;
  lines = stream.Lines();
  ASSERT_EQ(lines.size(), expected_.size());
  for (size_t i = 0; i < lines.size(); i++) {
    EXPECT_EQ(lines[i]["stream_id"], "key/key_a");
    EXPECT_EQ(lines[i]["stream_version"], i + 1);
    EXPECT_EQ(lines[i]["type"], expected_[i].type);
  }
  CliResult tail = RunCli({"events", "dump", "--data", data_, "--stream", "key/key_a", "--from",
                           std::to_string(deleted_)});
  ASSERT_EQ(tail.Lines().size(), 1u);
  EXPECT_EQ(tail.Lines()[0]["type"], "key_deleted");

  CliResult beyond = RunCli({"events", "dump", "--data", data_, "--from", "1000"});
  EXPECT_EQ(beyond.exit_code, 0) << beyond.err;
  EXPECT_TRUE(beyond.out.empty());
  CliResult backwards = RunCli({"events", "dump", "--data", data_, "--from", "5", "--to", "4"});
  EXPECT_EQ(backwards.exit_code, 2);
  for (const char* flag : {"--from", "--to"}) {  // not read as 2^64 - 1
    CliResult negative = RunCli({"events", "dump", "--data", data_, flag, "-1"});
    EXPECT_EQ(negative.exit_code, 2) << flag;
    EXPECT_TRUE(negative.out.empty()) << flag;
  }
}

// A benchmark writes synthetic data into its --data directory: it refuses a
// directory it did not make (such as a server's), and a bad path is an
// error, not a crash.
TEST_F(AuditTest, BenchmarksRefuseADirectoryTheyDidNotMake) {
  const std::string head_before = RunCli({"audit", "verify", "--data", data_}).out;
  ASSERT_FALSE(head_before.empty());
  CliResult refused = RunCli({"bench", "authorize", "--data", data_, "--keys", "1",
                              "--iterations", "1"});
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("was not made by `keyledger bench`"), std::string::npos)
      << refused.err;
  CliResult append = RunCli({"bench", "append", "--data", data_ + "/ledger", "--events", "10"});
  EXPECT_EQ(append.exit_code, 2) << append.err;
  EXPECT_EQ(RunCli({"audit", "verify", "--data", data_}).out, head_before);  // untouched
  const std::string file = dir_.sub("a-file");
  { std::ofstream(file) << "x"; }
  CliResult under_file = RunCli({"bench", "authorize", "--data", file + "/sub", "--keys", "1",
                                 "--iterations", "1"});
  EXPECT_EQ(under_file.exit_code, 1) << under_file.err;
  EXPECT_NE(under_file.err.find("Not a directory"), std::string::npos) << under_file.err;
  // A directory the benchmark made may be used again.
  const std::string scratch = dir_.sub("bench");
  for (int run = 0; run < 2; run++) {
    CliResult ok = RunCli({"bench", "authorize", "--data", scratch, "--keys", "1",
                           "--iterations", "10"});
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
  }
}

TEST(CliTest, AnUnknownCommandIsNamed) {
  CliResult r = RunCli({"bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown command 'bogus'"), std::string::npos) << r.err;
  EXPECT_EQ(RunCli({"--help"}).exit_code, 0);
}

// A start that cannot serve fails before it creates or changes the data
// directory (a generated operator token would be shown by a failed start).
TEST(ServeCliTest, ABadOrTakenListenAddressFailsBeforeTheDataDirectory) {
  ScratchDir dir;
  CliResult name = RunCli({"serve", "--data", dir.sub("a"), "--listen", "localhost:0"});
  EXPECT_EQ(name.exit_code, 2) << name.err;
  EXPECT_NE(name.err.find("IP address"), std::string::npos) << name.err;
  EXPECT_FALSE(std::filesystem::exists(dir.sub("a")));

  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(taken, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  socklen_t size = sizeof(address);
  ASSERT_EQ(::getsockname(taken, reinterpret_cast<sockaddr*>(&address), &size), 0);
  const std::string listen = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  CliResult busy = RunCli({"serve", "--data", dir.sub("b"), "--listen", listen});
  ::close(taken);
  EXPECT_EQ(busy.exit_code, 1) << busy.err;
  EXPECT_NE(busy.err.find("in use"), std::string::npos) << busy.err;
  EXPECT_FALSE(std::filesystem::exists(dir.sub("b")));
}

TEST(ServeCliTest, AShortOperatorTokenIsAUsageErrorBeforeTheDataDirectory) {
  ScratchDir dir;
  ::setenv("KEYLEDGER_ADMIN_TOKEN", "short", 1);
  CliResult r = RunCli({"serve", "--data", dir.sub("d"), "--listen", "127.0.0.1:0"});
  ::unsetenv("KEYLEDGER_ADMIN_TOKEN");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("KEYLEDGER_ADMIN_TOKEN"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.sub("d")));
}

TEST(ServeCliTest, MailSettingsAreCheckedAtStart) {
  ScratchDir dir;
  for (const std::vector<std::string>& flags : std::vector<std::vector<std::string>>{
           {"--smtp", "mail.example.com"},
           {"--smtp", "user@mail.example.com:25"},
           {"--smtp", "mail.example.com:smtp"},
           {"--smtp", "mail.example.com:0"},
           {"--smtp-from", "not an address"},
           {"--smtp", "mail.example.com:587", "--smtp-user", "alarms"}}) {
    std::vector<std::string> args = {"serve", "--data", dir.sub("d"), "--listen", "127.0.0.1:0"};
    args.insert(args.end(), flags.begin(), flags.end());
    CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << flags.back() << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.sub("d")));
  }
}

TEST_F(AuditTest, ServeRefusesADataDirectoryThatIsItselfAStore) {
  CloseAll();
  CliResult r = RunCli({"serve", "--data", ledger_path(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("is itself a RocksDB store"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(ledger_path() + "/ledger"));
}

TEST_F(AuditTest, MissingDirectoriesAreNamed) {
  CliResult none = RunCli({"events", "dump", "--data", dir_.sub("nope")});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.err.find("does not exist"), std::string::npos) << none.err;
  CliResult empty = RunCli({"audit", "verify", "--data", dir_.path()});
  EXPECT_NE(empty.exit_code, 0);
  EXPECT_NE(empty.err.find("no ledger at"), std::string::npos) << empty.err;
}

// ---- audit verify ----------------------------------------------------------------------

TEST_F(AuditTest, VerifyPrintsTheVerifiedHead) {
  CliResult r = RunCli({"audit", "verify", "--data", data_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(r.Lines().size(), 1u);
  json j = r.Lines()[0];
  EXPECT_EQ(j["events_verified"], ledger_->head().sequence);
  EXPECT_EQ(j["head_sequence"], ledger_->head().sequence);
  EXPECT_EQ(j["head_hash"], ToHex(ledger_->head().hash));
  EXPECT_FALSE(j.contains("expect_head"));
}

TEST_F(AuditTest, VerifyChecksAPinnedHead) {
  auto pinned = ledger_->Read(5);
  ASSERT_TRUE(pinned.ok());
  const std::string pin = "5:" + ToHex(pinned->hash);
  CliResult match = RunCli({"audit", "verify", "--data", data_, "--expect-head", pin});
  EXPECT_EQ(match.exit_code, 0) << match.err;
  EXPECT_EQ(match.Lines().at(0)["expect_head"], "match");

  const std::string wrong = "5:" + ToHex(FilledHash(0x77));
  CliResult mismatch = RunCli({"audit", "verify", "--data", data_, "--expect-head", wrong});
  EXPECT_EQ(mismatch.exit_code, 1);
  EXPECT_EQ(mismatch.Lines().at(0)["expect_head"], "mismatch");
  EXPECT_NE(mismatch.err.find("--expect-head mismatch: event 5 has hash"), std::string::npos)
      << mismatch.err;

  const std::string beyond = "999:" + ToHex(pinned->hash);
  CliResult gone = RunCli({"audit", "verify", "--data", data_, "--expect-head", beyond});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.err.find("beyond the ledger head"), std::string::npos) << gone.err;

  CliResult malformed = RunCli({"audit", "verify", "--data", data_, "--expect-head", "5-abc"});
  EXPECT_EQ(malformed.exit_code, 2);
  EXPECT_NE(malformed.err.find("SEQ:HASH"), std::string::npos) << malformed.err;
}

// A rewrite that re-chains every hash passes verify on its own; the pin an
// outside party took earlier is what catches it.
TEST_F(AuditTest, ARechainedLogFailsOnlyThePin) {
  const std::string pin = std::to_string(deleted_) + ":" + ToHex(ledger_->Read(deleted_)->hash);
  CloseAll();
  // The attacker rebuilds the same history with one rename changed.
  ScratchDir forged_dir;
  {
    ManualClock clock(kStartUs);
    LedgerOptions options;
    options.clock = &clock;
    auto forged = Ledger::Open(forged_dir.sub("ledger"), options);
    ASSERT_TRUE(forged.ok());
    LedgerOptions original_options;
    original_options.clock = &clock;
    auto original = Ledger::Open(ledger_path(), original_options);
    ASSERT_TRUE(original.ok());
    auto events = (*original)->ReadRange(1, 1000);
    ASSERT_TRUE(events.ok());
    for (const Event& e : *events) {
      clock.SetUs(e.recorded_at_us);
      NewEvent copy{e.event_id, e.stream_id, std::nullopt, e.actor, e.body};
      if (auto* rename = std::get_if<KeyRenamed>(&copy.body); rename && rename->name == "b") {
        rename->name = "innocent";
      }
      ASSERT_TRUE((*forged)->Append({copy}).ok());
    }
  }
  CliResult plain = RunCli({"audit", "verify", "--data", forged_dir.path()});
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  CliResult pinned = RunCli({"audit", "verify", "--data", forged_dir.path(), "--expect-head", pin});
  EXPECT_EQ(pinned.exit_code, 1);
  EXPECT_NE(pinned.err.find("mismatch"), std::string::npos) << pinned.err;
}

struct TamperCase {
  const char* name;
  uint64_t bad_sequence;
  std::function<void(KvStore&, KvBatch&)> edit;
};

class AuditTamperTest : public AuditTest, public ::testing::WithParamInterface<TamperCase> {};

TEST_P(AuditTamperTest, VerifyNamesTheFirstBadSequence) {
  CloseAll();
  TamperLedger(ledger_path(), GetParam().edit);
  CliResult r = RunCli({"audit", "verify", "--data", data_});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  const std::string where = "corruption at sequence " + std::to_string(GetParam().bad_sequence);
  EXPECT_NE(r.err.find(where), std::string::npos) << r.err;
  ASSERT_EQ(r.Lines().size(), 1u) << r.out;
  EXPECT_EQ(r.Lines()[0]["first_bad_sequence"], GetParam().bad_sequence);
}

INSTANTIATE_TEST_SUITE_P(
    Tampering, AuditTamperTest,
    ::testing::Values(
        TamperCase{"FlippedByte", 7,
                   [](KvStore& store, KvBatch& batch) {
                     std::string v = StoredValue(store, 7);
                     v[v.size() - 20] ^= 0x01;
                     batch.Put(kCfEvents, EventKey(7), v);
                   }},
        TamperCase{"DeletedEvent", 12,
                   [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(12)); }},
        TamperCase{"DeletedLastEvent", 19,
                   [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(19)); }},
        TamperCase{"SwappedEvents", 4,
                   [](KvStore& store, KvBatch& batch) { SwapEvents(store, batch, 4, 5); }},
        // The last event damaged too: still the first bad one is named.
        TamperCase{"SwappedLastEvents", 18,
                   [](KvStore& store, KvBatch& batch) { SwapEvents(store, batch, 18, 19); }},
        TamperCase{"FlippedByteAndDamagedLastEvent", 7,
                   [](KvStore& store, KvBatch& batch) {
                     std::string v = StoredValue(store, 7);
                     v[v.size() - 20] ^= 0x01;
                     batch.Put(kCfEvents, EventKey(7), v);
                     std::string last = StoredValue(store, 19);
                     last[last.size() - 1] ^= 0x01;
                     batch.Put(kCfEvents, EventKey(19), last);
                   }},
        // The tail disagrees with the head record too: still the first bad one.
        TamperCase{"FlippedByteAndDeletedLastEvent", 7,
                   [](KvStore& store, KvBatch& batch) {
                     std::string v = StoredValue(store, 7);
                     v[v.size() - 20] ^= 0x01;
                     batch.Put(kCfEvents, EventKey(7), v);
                     batch.Delete(kCfEvents, EventKey(19));
                   }},
        TamperCase{"FlippedByteAndDeletedHeadRecord", 7,
                   [](KvStore& store, KvBatch& batch) {
                     std::string v = StoredValue(store, 7);
                     v[v.size() - 20] ^= 0x01;
                     batch.Put(kCfEvents, EventKey(7), v);
                     batch.Delete(kCfMeta, "head");
                   }},
        // Without a head record no event is covered by one: the first.
        TamperCase{"DeletedHeadRecord", 1,
                   [](KvStore&, KvBatch& batch) { batch.Delete(kCfMeta, "head"); }},
        // A one-byte key sorts after every sequence: the log breaks after 19.
        TamperCase{"ShortKeyAfterTheLastEvent", 20,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Put(kCfEvents, std::string(1, '\xff'), StoredValue(store, 19));
                   }},
        TamperCase{"ShortKeyBeforeTheFirstEvent", 1,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Put(kCfEvents, std::string(1, '\0'), StoredValue(store, 1));
                   }},
        TamperCase{"EventAtSequenceZero", 1,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Put(kCfEvents, EventKey(0), StoredValue(store, 1));
                   }},
        TamperCase{"EventUnderAKeyThatIsNoSequence", 20,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Put(kCfEvents, EventKey(19) + "x", StoredValue(store, 19));
                   }},
        // The indexes idempotency and stream reads trust.
        TamperCase{"DeletedStreamIndexEntry", 18,
                   [](KvStore& store, KvBatch& batch) {
                     const EnvelopeHeader h = StoredHeader(store, 18);
                     batch.Delete(kCfStreams,
                                  ledger_internal::StreamKey(h.stream_id, h.stream_version));
                   }},
        // The same bytes, split between key and value elsewhere: the event
        // id no longer finds its event, so a retry of it would be stored again.
        TamperCase{"EventIdEntryWithItsBoundaryMoved", 12,
                   [](KvStore& store, KvBatch& batch) {
                     const std::string key = EventIdEntryKey(StoredHeader(store, 12));
                     batch.Delete(kCfEventIds, key);
                     batch.Put(kCfEventIds, key.substr(0, key.size() - 1),
                               key.substr(key.size() - 1) + SequenceValue(12));
                   }},
        TamperCase{"DeletedEventIdEntry", 12,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Delete(kCfEventIds, EventIdEntryKey(StoredHeader(store, 12)));
                   }},
        TamperCase{"RedirectedEventIdEntry", 3,
                   [](KvStore& store, KvBatch& batch) {
                     batch.Put(kCfEventIds, EventIdEntryKey(StoredHeader(store, 3)),
                               SequenceValue(5));
                   }},
        // An entry whose value is no sequence names no event: past the head.
        TamperCase{"IndexEntryWhoseValueIsNoSequence", 20,
                   [](KvStore&, KvBatch& batch) {
                     batch.Put(kCfStreams, ledger_internal::StreamKey("key/forged", 1), "\x01");
                   }},
        TamperCase{"ExtraStreamIndexEntry", 6,
                   [](KvStore&, KvBatch& batch) {
                     batch.Put(kCfStreams, ledger_internal::StreamKey("key/forged", 1),
                               SequenceValue(6));
                   }},
        TamperCase{"ForgedHeadHash", 19,
                   [](KvStore& store, KvBatch& batch) {
                     auto head = store.Get(kCfMeta, "head");
                     ASSERT_TRUE(head.ok() && head->has_value());
                     std::string v = **head;
                     v[v.size() - 1] ^= 0x01;
                     batch.Put(kCfMeta, "head", v);
                   }}),
    [](const auto& info) { return std::string(info.param.name); });

// Without the index check, a log missing its last event is named where it
// ends, as with it.
TEST_F(AuditTest, VerifyWithoutTheIndexCheckNamesAMissingLastEvent) {
  CloseAll();
  TamperLedger(ledger_path(), [](KvStore&, KvBatch& batch) { batch.Delete(kCfEvents, EventKey(19)); });
  CliResult r = RunCli({"audit", "verify", "--data", data_, "--skip-index-check"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  ASSERT_EQ(r.Lines().size(), 1u) << r.out;
  EXPECT_EQ(r.Lines()[0]["first_bad_sequence"], 19) << r.out;
}

// The events before a damaged one still print; the damage is named.
TEST_F(AuditTest, DumpPrintsTheEventsBeforeADamagedOne) {
  CloseAll();
  TamperLedger(ledger_path(), [](KvStore& store, KvBatch& batch) {
    std::string v = StoredValue(store, 7);
    v[v.size() - 20] ^= 0x01;
    batch.Put(kCfEvents, EventKey(7), v);
  });
  CliResult r = RunCli({"events", "dump", "--data", data_});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  ASSERT_EQ(r.Lines().size(), 6u) << r.out;
  EXPECT_EQ(r.Lines()[5]["sequence"], 6);
  EXPECT_NE(r.err.find("corruption at sequence 7"), std::string::npos) << r.err;
}

TEST_F(AuditTest, EmptyOrMalformedFlagValuesAreUsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"audit", "verify", "--data", data_, "--expect-head", ""},
           {"audit", "replay", "--data", data_, "--until", ""},
           {"audit", "replay", "--data", dir_.sub("nope"), "--until", "yesterday"},
           {"events", "dump", "--data", data_, "--stream", ""},
           {"events", "dump", "--data", data_, "--stream", "bad id"}}) {
    CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << args.back() << ": " << r.out << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

// Output that did not arrive is no success.
TEST_F(AuditTest, AFullStdoutFailsTheCommand) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"audit", "verify", "--data", data_},
           {"audit", "replay", "--data", data_, "--until", "5"},
           {"events", "dump", "--data", data_}}) {
    CliResult r = RunCli(args, "/dev/full");
    EXPECT_EQ(r.exit_code, 1) << args[1] << ": " << r.err;
    EXPECT_NE(r.err.find("No space left"), std::string::npos) << r.err;
  }
}

TEST_F(AuditTest, TheLifecycleHasTheSequencesTheTamperCasesExpect) {
  EXPECT_EQ(ledger_->head().sequence, 19u);  // DeletedLastEvent and ForgedHeadHash use it
}

// ---- the live key-state projection after a failure ----------------------------------------

// An event the fold refuses is not stepped over: the events after it fail
// too, as a rebuild from the log would, rather than being folded without it.
TEST_F(AuditTest, AKeyStateFoldThatFailedSkipsNothingAfterIt) {
  OpenProjections();
  auto append = [&](const std::string& stream, EventBody body) -> uint64_t {
    NewEvent e;  // not through Append(): the reference state would refuse it too
    e.event_id = MakeEventId(++next_id_);
    e.stream_id = stream;
    e.actor = "operator";
    e.body = std::move(body);
    auto r = ledger_->Append({e});
    EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
    return r.ok() ? r->sequences.front() : 0;
  };
  const uint64_t refused = append("key/key_zz", KeyRenamed{"ws_a", "key_zz", "no such key"});
  EXPECT_EQ(key_state_->ApplyAppended({refused}).code(), Code::kCorruption);
  const uint64_t later = append("key/key_b", KeyRenamed{"ws_a", "key_b", "later"});
  EXPECT_FALSE(key_state_->ApplyAppended({later}).ok());
  EXPECT_EQ(key_state_->state().FindKey("key_b")->name, "other");
}

// A store folded from a log this ledger is not (a lost tail appended to
// again: shorter, or as long with other events) is rebuilt from this one.
TEST_F(AuditTest, AKeyStateStoreFoldedFromAnotherLogIsRebuilt) {
  OpenProjections();
  const uint64_t folded = key_state_->state().position();
  ASSERT_GT(folded, 3u);
  CloseAll();
  for (uint64_t events : {folded - 3, folded}) {  // shorter, then another log of the same length
    ScratchDir other;
    LedgerOptions options;
    options.clock = &clock_;
    auto ledger = Ledger::Open(other.sub("ledger"), options);
    ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    NewEvent token;  // a lifecycle event: the state differs from the first log's
    token.event_id = MakeEventId(1'000'000 + events);
    token.stream_id = kOperatorStream;
    token.actor = "system";
    token.body = OperatorTokenSet{FilledHash(static_cast<uint8_t>(events))};
    ASSERT_TRUE((*ledger)->Append({token}).ok());
    for (uint64_t i = 2; i <= events; i++) {
      ASSERT_TRUE((*ledger)->Append({MakeCallEvent(1000 * events + i, "key_x")}).ok());
    }
    auto store = KeyStateStore::Open(projections_path(), ledger->get());
    ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
    EXPECT_EQ((*store)->state().position(), events);
    auto rebuilt = RebuildKeyState(**ledger, 0);
    ASSERT_TRUE(rebuilt.ok());
    EXPECT_EQ((*store)->state().Digest(), (*rebuilt)->Digest()) << events;
  }
}

// Records a failed write left out are written by the next Persist.
TEST_F(AuditTest, KeyStateRecordsOfAFailedWriteAreWrittenNext) {
  auto state = RebuildKeyState(*ledger_, 0);
  ASSERT_TRUE(state.ok()) << state.ToStatus().ToString();
  KvStoreOptions options;
  options.column_families = {{"key_state"}};
  auto store = KvStore::Open(dir_.sub("records"), options);
  ASSERT_TRUE(store.ok()) << store.ToStatus().ToString();
  {
    KvBatch lost(**store);  // never written: a failed write
    EXPECT_GT((*state)->Persist(lost, 0), 0u);
  }
  KvBatch batch(**store);
  const size_t changes = (*state)->Persist(batch, 0);
  ASSERT_TRUE((*store)->Write(batch, Durability::kSync).ok());
  (*state)->MarkPersisted(changes);
  KeyState loaded;
  ASSERT_TRUE(loaded.Load(**store, 0).ok());
  EXPECT_EQ(loaded.Digest(), (*state)->Digest());
  KvBatch nothing_new(**store);
  EXPECT_EQ((*state)->Persist(nothing_new, 0), 0u);
}

// ---- audit replay ----------------------------------------------------------------------

TEST_F(AuditTest, ReplayMatchesTheLiveProjectionOfARunningServer) {
  OpenProjections();  // stays open, as in `serve`
  CliResult r = RunCli({"audit", "replay", "--data", data_});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string digest = ToHex(key_state_->state().Digest());
  EXPECT_NE(r.out.find("key_state"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(digest + "  " + digest + "  ok"), std::string::npos) << r.out;
  const std::string calls = ToHex(calls_->Digest());
  EXPECT_NE(r.out.find("call_projections"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(calls + "  " + calls + "  ok"), std::string::npos) << r.out;
}

// A server that keeps recording calls (logged and not) while replay reads
// it: the call projections move on between replay's reads, and every row
// still matches (a rebuild again at the position the live read found).
TEST_F(AuditTest, ReplayMatchesAServerThatKeepsRecording) {
  for (int i = 0; i < 200; ++i) (i % 3 == 0) ? LoggedCall() : Call();
  OpenProjections();
  calls_->Start();  // folds what is appended, as `serve` does
  std::atomic<bool> stop{false};
  std::thread recorder([&] {
    uint64_t n = 1'000'000;
    while (!stop.load()) {
      std::vector<NewEvent> batch;
      for (int i = 0; i < 50; ++i, ++n) {
        NewEvent e = MakeCallEvent(n, n % 2 ? "key_a" : "key_b", "body");
        std::get<ApiCallRecorded>(e.body).logged = n % 2 == 0;
        batch.push_back(std::move(e));
      }
      ASSERT_TRUE(ledger_->Append(batch).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  CliResult r = RunCli({"audit", "replay", "--data", data_});
  stop.store(true);
  recorder.join();
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* row : {"key_state", "call_projections", "invoices"}) {
    const size_t at = r.out.find(row);
    ASSERT_NE(at, std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  ok  ", at), std::string::npos) << r.out;
  }
}

// The key of the log entry of call `sequence` of `key_id` in DATA/calls.
std::string LogKeyOf(const std::string& key_id, uint64_t sequence) {
  std::string key = key_id;
  key.push_back('\0');
  AppendBigEndian64(&key, std::numeric_limits<uint64_t>::max() - sequence);
  return key;
}

constexpr int kLogsFamily = 0;  // DATA/calls' column families, in their order
const std::vector<ColumnFamilySpec> kCallFamilies = {
    {"logs"}, {"log_times"}, {"metrics"}, {"usage"}, {"meta"}};

// Expects `audit replay` of `data` to exit 1 naming `sequence` and `message`.
void ExpectReplayReportsCorruptionIn(const std::string& data, uint64_t sequence,
                                     const std::string& message) {
  CliResult r = RunCli({"audit", "replay", "--data", data});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("corruption at sequence " + std::to_string(sequence) + ": " + message),
            std::string::npos)
      << r.out;
}

// The rows of a replay table without the timing columns, which vary.
std::vector<std::string> TableWithoutSeconds(const std::string& out) {
  std::vector<std::string> rows;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string row;
    for (int i = 0; i < 5 && fields; ++i) {
      std::string field;
      fields >> field;
      row += field + " ";
    }
    rows.push_back(row);
  }
  return rows;
}

TEST_F(AuditTest, ReplayGivesTheSameTableOnOneThreadAndOnMany) {
  OpenProjections();
  CliResult one = RunCli({"audit", "replay", "--data", data_, "--threads", "1"});
  CliResult many = RunCli({"audit", "replay", "--data", data_, "--threads", "16"});
  ASSERT_EQ(one.exit_code, 0) << one.out << one.err;
  ASSERT_EQ(many.exit_code, 0) << many.out << many.err;
  const std::vector<std::string> rows = TableWithoutSeconds(one.out);
  ASSERT_EQ(rows.size(), 4u) << one.out;  // the header and three projections
  EXPECT_EQ(TableWithoutSeconds(many.out), rows);
  const std::string calls = ToHex(calls_->Digest());
  EXPECT_NE(many.out.find(calls + "  " + calls + "  ok"), std::string::npos) << many.out;

  CliResult until = RunCli({"audit", "replay", "--data", data_, "--until", std::to_string(created_),
                            "--threads", "3"});
  ASSERT_EQ(until.exit_code, 0) << until.err;
  EXPECT_EQ(TableWithoutSeconds(until.out),
            TableWithoutSeconds(RunCli({"audit", "replay", "--data", data_, "--until",
                                        std::to_string(created_), "--threads", "1"})
                                    .out));

  for (const char* bad : {"0", "17", "two"}) {
    CliResult r = RunCli({"audit", "replay", "--data", data_, "--threads", bad});
    EXPECT_EQ(r.exit_code, 2) << bad;
    EXPECT_NE(r.err.find("--threads"), std::string::npos) << r.err;
  }
}

// `bench append` stores what it reports, through the real append path: the
// events spread over --keys streams, in a ledger that verifies.
TEST(BenchAppendTest, StoresTheEventsItReportsOverItsKeys) {
  ScratchDir dir;
  const std::string data = dir.sub("bench");  // as `serve --data`: the ledger in DATA/ledger
  CliResult r = RunCli({"bench", "append", "--events", "500", "--batch", "50", "--keys", "7",
                        "--data", data + "/ledger"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const json report = json::parse(r.out);
  EXPECT_EQ(report["events"], 500);
  EXPECT_EQ(report["keys"], 7);
  EXPECT_GT(report["events_per_sec"].get<double>(), 0.0);
  {
    ManualClock clock{kStartUs};
    LedgerOptions options;
    options.clock = &clock;
    auto ledger = Ledger::Open(data + "/ledger", options);
    ASSERT_TRUE(ledger.ok()) << ledger.ToStatus().ToString();
    EXPECT_EQ((*ledger)->head().sequence, 500u);
    EXPECT_EQ((*ledger)->StreamVersion("calls/key_bench_0").value(), 72u);  // 500 = 4 * 72 + 3 * 71
    EXPECT_EQ((*ledger)->StreamVersion("calls/key_bench_6").value(), 71u);
    EXPECT_EQ((*ledger)->StreamVersion("calls/key_bench_7").value(), 0u);
  }
  CliResult verify = RunCli({"audit", "verify", "--data", data});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;

  CliResult bad = RunCli({"bench", "append", "--keys", "0", "--data", dir.sub("other")});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--keys"), std::string::npos) << bad.err;
}

// A data directory with issued invoices, written by `bench invoice-run`
// (entities, a month of calls, the month's invoice run, all through the
// server's code), replays with every invoice reproduced from the log.
TEST(AuditReplayInvoicesTest, ReproducesTheIssuedInvoicesOnOneThreadAndOnMany) {
  ScratchDir dir;
  const std::string data = dir.sub("data");
  CliResult setup = RunCli({"bench", "invoice-run", "--workspaces", "4", "--keys-per-workspace", "2",
                            "--calls", "400", "--recorded-calls", "300", "--data", data});
  ASSERT_EQ(setup.exit_code, 0) << setup.out << setup.err;
  ASSERT_EQ(json::parse(setup.out)["invoices_issued"], 4) << setup.out;
  for (const char* threads : {"1", "3"}) {
    CliResult r = RunCli({"audit", "replay", "--data", data, "--threads", threads});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    const std::vector<std::string> rows = TableWithoutSeconds(r.out);
    ASSERT_EQ(rows.size(), 4u) << r.out;
    EXPECT_EQ(rows[3].rfind("invoices ", 0), 0u) << r.out;
    EXPECT_NE(rows[3].find(" ok "), std::string::npos) << r.out;
    // Not the digest of no invoices.
    EXPECT_EQ(rows[3].find(ToHex(HashBytes(""))), std::string::npos) << r.out;
  }
}

// `invoice export` refuses what would otherwise print nothing and succeed:
// a malformed month, a workspace that does not exist.
TEST(InvoiceExportCliTest, RefusesAMalformedMonthAndAnUnknownWorkspace) {
  ScratchDir dir;
  const std::string data = dir.sub("data");
  CliResult setup = RunCli({"bench", "invoice-run", "--workspaces", "2", "--keys-per-workspace",
                            "1", "--calls", "20", "--recorded-calls", "10", "--data", data});
  ASSERT_EQ(setup.exit_code, 0) << setup.out << setup.err;
  const std::string month = json::parse(setup.out)["month"];
  CliResult all = RunCli({"invoice", "export", "--data", data, "--month", month});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  const json invoices = json::parse(all.out);
  ASSERT_EQ(invoices.size(), 2u) << all.out;
  const std::string ws = invoices[0]["workspace_id"];
  CliResult one = RunCli({"invoice", "export", "--data", data, "--month", month, "--workspace", ws});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(json::parse(one.out).size(), 1u) << one.out;

  // A month without invoices is still a CSV: its header row alone.
  CliResult none = RunCli({"invoice", "export", "--data", data, "--month", "2020-01", "--format",
                           "csv"});
  ASSERT_EQ(none.exit_code, 0) << none.err;
  EXPECT_EQ(none.out, InvoiceCsvHeader());
  EXPECT_TRUE(none.out.starts_with("invoice_number,workspace_id,month,")) << none.out;

  CliResult malformed = RunCli({"invoice", "export", "--data", data, "--month", "2026-1"});
  EXPECT_EQ(malformed.exit_code, 2) << malformed.out;
  EXPECT_NE(malformed.err.find("--month"), std::string::npos) << malformed.err;
  CliResult unknown =
      RunCli({"invoice", "export", "--data", data, "--month", month, "--workspace", "ws_nope"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_NE(unknown.err.find("no workspace ws_nope"), std::string::npos) << unknown.err;
}

TEST_F(AuditTest, ReplayFindsAChangedCallProjectionRecord) {
  OpenProjections();
  CloseAll();
  EditStore(calls_path(), kCallFamilies, [](KvStore&, KvBatch& batch) {
    batch.Put(4, "usage_rejected", std::string("\0\0\0\0\0\0\0\x07", 8));
  });
  OpenLedger();
  CliResult r = RunCli({"audit", "replay", "--data", data_});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("DIFFERENT"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("1 of 3 projections do not match"), std::string::npos) << r.err;
}

TEST_F(AuditTest, ReplayChecksEveryStoredLogEntryAgainstItsCall) {
  const uint64_t logged = LoggedCall();
  OpenProjections();
  CliResult untouched = RunCli({"audit", "replay", "--data", data_});
  ASSERT_EQ(untouched.exit_code, 0) << untouched.out << untouched.err;
  CloseAll();
  EditStore(calls_path(), kCallFamilies, [&](KvStore& store, KvBatch& batch) {
    auto value = store.Get(kLogsFamily, LogKeyOf("key_b", logged));
    ASSERT_TRUE(value.ok() && value->has_value()) << "no log entry of the logged call";
    std::string changed = **value;
    changed[changed.size() / 2] ^= 0x01;
    batch.Put(kLogsFamily, LogKeyOf("key_b", logged), changed);
  });
  OpenLedger();
  ExpectReplayReportsCorruptionIn(data_, logged,
                                  "a log entry differs from the call it was made from");
}

TEST_F(AuditTest, ReplayFindsALogEntryOfACallMadeWithoutLogging) {
  const uint64_t unlogged = Call();
  const uint64_t logged = LoggedCall();
  OpenProjections();
  CloseAll();
  EditStore(calls_path(), kCallFamilies, [&](KvStore& store, KvBatch& batch) {
    auto value = store.Get(kLogsFamily, LogKeyOf("key_b", logged));
    ASSERT_TRUE(value.ok() && value->has_value());
    batch.Put(kLogsFamily, LogKeyOf("key_a", unlogged), **value);  // an entry never made
  });
  OpenLedger();
  ExpectReplayReportsCorruptionIn(data_, unlogged,
                                  "a log entry of an event that is not a logged call");
}

// Deletes the log entry of call `sequence` of `key_id` from DATA/calls.
void DeleteLogEntry(const std::string& calls_path, const std::string& key_id, uint64_t sequence) {
  EditStore(calls_path, kCallFamilies, [&](KvStore& store, KvBatch& batch) {
    auto value = store.Get(kLogsFamily, LogKeyOf(key_id, sequence));
    ASSERT_TRUE(value.ok() && value->has_value()) << "no log entry of call " << sequence;
    batch.Delete(kLogsFamily, LogKeyOf(key_id, sequence));
  });
}

TEST_F(AuditTest, ReplayFindsADeletedLogEntry) {
  LoggedCall();
  const uint64_t logged = LoggedCall();
  OpenProjections();
  CloseAll();
  DeleteLogEntry(calls_path(), "key_b", logged);
  OpenLedger();
  ExpectReplayReportsCorruptionIn(data_, logged, "the log entry of a logged call is missing");
}

// Entries the retention sweep deleted are not missing; one it kept and that
// is gone anyway is.
TEST_F(AuditTest, ReplayTellsEntriesTheSweepDeletedFromDeletedOnes) {
  const uint64_t older = LoggedCall();
  const uint64_t newer = LoggedCall();
  auto occurred_at = [&](uint64_t sequence) {
    auto event = ledger_->Read(sequence);
    EXPECT_TRUE(event.ok());
    return event.ok() ? std::get<ApiCallRecorded>(event->body).occurred_at_us : 0;
  };
  ASSERT_LT(occurred_at(older), occurred_at(newer));
  OpenProjections();
  // Sweep at the newer call's occurred_at + retention: the older entry expires.
  clock_.AdvanceUs(occurred_at(newer) + CallProjectionsOptions{}.log_retention_us -
                   clock_.NowUs());
  auto swept = calls_->SweepExpiredLogs();
  ASSERT_TRUE(swept.ok()) << swept.ToStatus().ToString();
  ASSERT_EQ(*swept, 1u);
  CloseAll();
  CliResult after_sweep = RunCli({"audit", "replay", "--data", data_});
  EXPECT_EQ(after_sweep.exit_code, 0) << after_sweep.out << after_sweep.err;

  DeleteLogEntry(calls_path(), "key_b", newer);
  ExpectReplayReportsCorruptionIn(data_, newer, "the log entry of a logged call is missing");
}

TEST_F(AuditTest, ReplayFindsAChangedProjectionRecord) {
  OpenProjections();
  CloseAll();
  EditStore(projections_path(), {{"key_state"}, {"projection_meta"}},
            [](KvStore& store, KvBatch& batch) {
              auto record = store.Get(0, "key/key_a");
              ASSERT_TRUE(record.ok() && record->has_value());
              json j = json::parse(**record);
              j["security_group_id"] = "sg_a";  // no longer what the log says
              batch.Put(0, "key/key_a", j.dump());
            });
  OpenLedger();
  CliResult r = RunCli({"audit", "replay", "--data", data_});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("DIFFERENT"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("1 of 3 projections do not match"), std::string::npos) << r.err;
}

TEST_F(AuditTest, ReplayWithoutAProjectionStoreSaysSo) {
  CliResult r = RunCli({"audit", "replay", "--data", data_});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("no projection store at"), std::string::npos) << r.out;
}

TEST_F(AuditTest, ReplayUntilPrintsTheRebuiltDigestOnly) {
  auto expected = RebuildKeyState(*ledger_, created_);
  ASSERT_TRUE(expected.ok());
  const std::string digest = ToHex((*expected)->Digest());
  CliResult by_seq = RunCli({"audit", "replay", "--data", data_, "--until", std::to_string(created_)});
  ASSERT_EQ(by_seq.exit_code, 0) << by_seq.out << by_seq.err;
  EXPECT_NE(by_seq.out.find(digest), std::string::npos) << by_seq.out;
  EXPECT_NE(by_seq.out.find("rebuilt (not compared)"), std::string::npos);

  // A time between two events selects the earlier one.
  const std::string at = FormatRfc3339(ledger_->Read(created_)->recorded_at_us + kStepUs / 2);
  CliResult by_time = RunCli({"audit", "replay", "--data", data_, "--until", at});
  ASSERT_EQ(by_time.exit_code, 0) << by_time.out << by_time.err;
  EXPECT_NE(by_time.out.find(digest), std::string::npos) << by_time.out;

  CliResult before = RunCli({"audit", "replay", "--data", data_, "--until", "2000-01-01T00:00:00Z"});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  EXPECT_NE(before.out.find(ToHex(KeyState().Digest())), std::string::npos) << before.out;

  EXPECT_EQ(RunCli({"audit", "replay", "--data", data_, "--until", "999"}).exit_code, 2);
  EXPECT_EQ(RunCli({"audit", "replay", "--data", data_, "--until", "yesterday"}).exit_code, 2);
}

// ---- KeyAsOf and KeyHistory ------------------------------------------------------------

TEST_F(AuditTest, KeyAsOfEqualsWhatTheProjectionShowedAtEverySequence) {
  for (const auto& [seq, seen] : seen_) {
    auto as_of = KeyAsOf(*ledger_, "key_a", LogPoint::AtSequence(seq));
    ASSERT_TRUE(as_of.ok()) << as_of.ToStatus().ToString();
    EXPECT_EQ(as_of->key, seen) << "at sequence " << seq;
    // By time too: the event's own time includes it.
    auto stored = ledger_->Read(seq);
    ASSERT_TRUE(stored.ok());
    auto by_time = KeyAsOf(*ledger_, "key_a", LogPoint::AtTime(stored->recorded_at_us));
    ASSERT_TRUE(by_time.ok());
    EXPECT_EQ(by_time->key, seen) << "at the time of sequence " << seq;
  }
  EXPECT_EQ(KeyAsOf(*ledger_, "key_a", LogPoint::AtSequence(created_ - 1)).value().key,
            std::nullopt);
  auto after = KeyAsOf(*ledger_, "key_a", LogPoint::AtSequence(deleted_));
  ASSERT_TRUE(after.ok() && after->key.has_value());
  EXPECT_TRUE(after->key->deleted);
  EXPECT_EQ(after->sequence, deleted_);
  EXPECT_EQ(KeyAsOf(*ledger_, "key_zz", LogPoint::AtSequence(100)).status().code(),
            Code::kNotFound);
}

TEST_F(AuditTest, KeyHistoryListsEveryChangeWithItsActor) {
  auto history = KeyHistory(*ledger_, "key_a", 1, SIZE_MAX);
  ASSERT_TRUE(history.ok()) << history.ToStatus().ToString();
  EXPECT_EQ(history->next_version, 0u);
  const std::vector<KeyChange>& changes = history->changes;
  ASSERT_EQ(changes.size(), expected_.size());
  for (size_t i = 0; i < expected_.size(); i++) {
    const KeyChange& c = changes[i];
    EXPECT_EQ(c.type, expected_[i].type) << i;
    EXPECT_EQ(c.actor, expected_[i].actor) << i;
    EXPECT_EQ(c.changes, expected_[i].changes) << i;
    auto stored = ledger_->Read(c.sequence);
    ASSERT_TRUE(stored.ok());
    EXPECT_EQ(stored->stream_id, "key/key_a");
    EXPECT_EQ(c.recorded_at_us, stored->recorded_at_us);
  }
  EXPECT_EQ(changes.front().sequence, created_);
  EXPECT_EQ(changes.back().sequence, deleted_);
  EXPECT_EQ(KeyHistory(*ledger_, "key_zz", 1, 10).status().code(), Code::kNotFound);

  // Page by page, each change described as in the whole history.
  for (size_t limit : {size_t{1}, size_t{2}, size_t{3}}) {
    std::vector<KeyChange> paged;
    uint64_t from = 1;
    for (size_t pages = 0; from != 0; pages++) {
      ASSERT_LE(pages, changes.size());
      auto page = KeyHistory(*ledger_, "key_a", from, limit);
      ASSERT_TRUE(page.ok());
      ASSERT_LE(page->changes.size(), limit);
      paged.insert(paged.end(), page->changes.begin(), page->changes.end());
      from = page->next_version;
    }
    EXPECT_EQ(paged, changes) << "limit " << limit;
  }
  auto past_end = KeyHistory(*ledger_, "key_a", changes.size() + 1, 10);
  ASSERT_TRUE(past_end.ok());
  EXPECT_TRUE(past_end->changes.empty());
  EXPECT_EQ(past_end->next_version, 0u);
}

TEST(FoldKeyEvent, RefusesEventsThatContradictTheKey) {
  Event created;
  created.sequence = 1;
  created.stream_id = "key/key_a";
  created.body = KeyCreated{"ws_a", "key_a", "a", "", "sg_a", FilledHash(1)};
  Event renamed = created;
  renamed.sequence = 2;
  renamed.body = KeyRenamed{"ws_a", "key_a", "b"};
  Event deleted = created;
  deleted.sequence = 3;
  deleted.body = KeyDeleted{"ws_a", "key_a"};

  std::optional<KeyView> key;
  EXPECT_EQ(FoldKeyEvent(renamed, &key).code(), Code::kCorruption);  // not created yet
  ASSERT_TRUE(FoldKeyEvent(created, &key).ok());
  EXPECT_EQ(FoldKeyEvent(created, &key).sequence(), 1u);  // created twice
  Event other = renamed;
  other.body = KeyRenamed{"ws_a", "key_b", "x"};
  EXPECT_EQ(FoldKeyEvent(other, &key).code(), Code::kCorruption);
  Event call = renamed;
  call.body = ApiCallRecorded{};
  EXPECT_EQ(FoldKeyEvent(call, &key).code(), Code::kCorruption);
  ASSERT_TRUE(FoldKeyEvent(deleted, &key).ok());
  EXPECT_EQ(FoldKeyEvent(renamed, &key).code(), Code::kCorruption);  // after deletion
  EXPECT_EQ(key->name, "a");
  EXPECT_TRUE(key->deleted);
}

}  // namespace
}  // namespace keyledger
