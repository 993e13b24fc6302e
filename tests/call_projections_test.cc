// Tests of CallProjections (projections/call_projections.h): request logs,
// metrics and usage folded from API-call events, persisted in their own store.
// Calls are recorded through the real Service (POST /v1/calls), so the events
// are exactly what the data plane writes.
#include "projections/call_projections.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "billing/calendar.h"
#include "ledger/hash.h"
#include "projections/latency_histogram.h"
#include "projections/metrics_fold.h"
#include "tests/service_fixture.h"
#include "tests/test_util.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ScratchDir;
using testing::ServiceHarness;

constexpr int64_t kSecondUs = 1'000'000;
constexpr int64_t kDayUs = 86'400 * kSecondUs;

// A workspace with an open security group and one key, on an in-process
// Service, plus a directory for the call projections.
struct World {
  ServiceHarness h;
  ScratchDir dir;
  std::string ws, group, key, secret;
  int next_request = 0;

  World() {
    ws = h.CreateWorkspace();
    group = h.CreateGroup(ws);
    std::tie(key, secret) = h.CreateKey(ws, group);
  }

  json CallJson(const std::string& key_id, int status, int64_t occurred_at_us, uint64_t units) {
    return {{"request_id", "req-" + std::to_string(next_request++)},
            {"key_id", key_id},
            {"occurred_at", FormatRfc3339(occurred_at_us)},
            {"method", "POST"},
            {"path", "/v1/render"},
            {"status", status},
            {"latency_ms", 10 + next_request % 50},
            {"units", units},
            {"client_ip", "203.0.113.9"}};
  }

  // Posts `calls` in one POST /v1/calls; returns their request ids.
  std::vector<std::string> Post(const std::vector<json>& calls) {
    json body = {{"calls", calls}};
    auto r = h.Call("POST", "/v1/calls", body.dump());
    EXPECT_EQ(r.status, 200) << r.raw;
    std::vector<std::string> ids;
    for (const auto& c : calls) ids.push_back(c["request_id"]);
    return ids;
  }

  // Records n calls of `key_id` that occurred `age_us` before the clock.
  std::vector<std::string> Record(const std::string& key_id, size_t n, int status = 200,
                                  int64_t age_us = kSecondUs, uint64_t units = 1) {
    std::vector<json> calls;
    for (size_t i = 0; i < n; i++) {
      calls.push_back(CallJson(key_id, status, h.clock().NowUs() - age_us, units));
    }
    return n == 0 ? std::vector<std::string>{} : Post(calls);
  }

  // Switches logging; then, unless `settle` is false, lets an hour pass, so
  // that calls Record()ed afterwards (made up to minutes before the clock)
  // were made after the switch: only those are logged.
  void SetLogging(const std::string& key_id, bool on, bool settle = true) {
    auto r =
        h.Call("PATCH", "/v1/workspaces/" + ws + "/keys/" + key_id, json{{"logging", on}}.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    if (settle) h.clock().AdvanceUs(3600 * kSecondUs);
  }

  int Authorize(const std::string& secret_value, const std::string& ip) {
    HttpRequest req;
    req.method = "POST";
    req.target = "/v1/authorize";
    req.headers.emplace_back("authorization", "Bearer " + secret_value);
    req.body = json{{"client_ip", ip}}.dump();
    return h.Send(req).status;
  }

  std::unique_ptr<CallProjections> Open(CallProjectionsOptions options = {}) {
    auto p = CallProjections::Open(dir.sub("calls"), &h.ledger(), &h.clock(), options);
    EXPECT_TRUE(p.ok()) << p.ToStatus().ToString();
    return p.ok() ? std::move(p).value() : nullptr;
  }

  Hash Rebuild(uint64_t until) {
    auto digest = RebuildCallProjectionsDigest(h.ledger(), until);
    EXPECT_TRUE(digest.ok()) << digest.ToStatus().ToString();
    return digest.ok() ? *digest : Hash{};
  }

  // A day-aligned range around the clock, for Totals.
  std::pair<int64_t, int64_t> Range() {
    const int64_t now = h.clock().NowUs();
    const int64_t from = now - now % kDayUs - 40 * kDayUs;
    return {from, from + 42 * kDayUs};
  }
};

MetricsBucket KeyTotals(const CallProjections& p, World& w, const std::string& key_id) {
  auto [from, to] = w.Range();
  auto t = p.Totals(MetricsScope::kKey, key_id, from, to);
  EXPECT_TRUE(t.ok()) << t.ToStatus().ToString();
  return t.ok() ? *t : MetricsBucket{};
}

// Every page of `query` (limit as given), following next_cursor.
std::vector<LogEntry> AllLogs(const CallProjections& p, LogQuery query, int64_t now_us) {
  std::vector<LogEntry> out;
  for (int pages = 0; pages < 10'000; pages++) {
    auto page = p.Logs(query, now_us);
    EXPECT_TRUE(page.ok()) << page.ToStatus().ToString();
    if (!page.ok()) break;
    out.insert(out.end(), page->entries.begin(), page->entries.end());
    if (page->next_cursor.empty()) break;
    query.cursor = page->next_cursor;
  }
  return out;
}

std::vector<std::string> RequestIds(const std::vector<LogEntry>& entries) {
  std::vector<std::string> ids;
  for (const auto& e : entries) ids.push_back(e.call.request_id);
  return ids;
}

LogQuery QueryFor(const std::string& key_id, size_t limit = 100) {
  LogQuery q;
  q.key_id = key_id;
  q.limit = limit;
  return q;
}

TEST(CallProjectionsTest, TotalsEqualTheRecordedCallsAndDenials) {
  World w;
  w.Record(w.key, 7, 200);
  w.Record(w.key, 3, 500);
  w.Record(w.key, 2, 429);
  auto [key2, secret2] = w.h.CreateKey(w.ws, w.group, "second");
  w.Record(key2, 4, 201);
  // Denials: a key in a group that allows one network only.
  std::string closed =
      w.h.CreateGroup(w.ws, {{"name", "closed"}, {"ip_allow", {"203.0.113.0/24"}}});
  auto [key3, secret3] = w.h.CreateKey(w.ws, closed, "closed");
  for (int i = 0; i < 3; i++) EXPECT_EQ(w.Authorize(secret3, "198.51.100.1"), 403);
  ASSERT_TRUE(w.h.service().data_plane().FlushDenials().ok());

  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->position(), w.h.ledger().head().sequence);
  EXPECT_EQ(p->events_folded(), 16u + 1u);  // 16 calls, 1 aggregated denial event
  MetricsBucket k1 = KeyTotals(*p, w, w.key);
  EXPECT_EQ(k1.calls, 12u);
  EXPECT_EQ(k1.errors_5xx, 3u);
  EXPECT_EQ(k1.errors_4xx, 2u);
  EXPECT_EQ(k1.rate_limited, 2u);
  EXPECT_EQ(k1.units, 12u);  // units given explicitly for every call
  EXPECT_EQ(k1.latency.count(), 12u);
  EXPECT_EQ(KeyTotals(*p, w, key2).calls, 4u);
  EXPECT_EQ(KeyTotals(*p, w, key3).auth_denied, 3u);
  auto [from, to] = w.Range();
  auto ws = p->Totals(MetricsScope::kWorkspace, w.ws, from, to);
  ASSERT_TRUE(ws.ok());
  EXPECT_EQ(ws->calls, 16u);
  EXPECT_EQ(ws->auth_denied, 3u);
  EXPECT_EQ(ws->requests(), 19u);
  // Metrics delegates to MetricsFold::Query, errors included.
  auto buckets = p->Metrics(MetricsScope::kKey, w.key, from, to, kDayUs);
  ASSERT_TRUE(buckets.ok());
  uint64_t calls = 0;
  for (const auto& b : *buckets) calls += b.calls;
  EXPECT_EQ(calls, 12u);
  auto bad = p->Metrics(MetricsScope::kKey, w.key, from, to, 7 * kSecondUs);
  EXPECT_EQ(bad.ToStatus().field(), "step");
}

// Logs hold exactly the calls made while the key's logging switch was on,
// newest first, whatever the page size.
RC_GTEST_PROP(CallProjectionsProp, LogsHoldExactlyTheCallsMadeWhileLoggingWasOn, ()) {
  // One Service and projection for all cases: each case uses a fresh key.
  struct Shared {
    World world;
    std::unique_ptr<CallProjections> projections = world.Open();
  };
  static Shared shared;
  World& w = shared.world;
  const std::string key = w.h.CreateKey(w.ws, w.group, "prop").first;
  const size_t steps = *rc::gen::inRange<size_t>(0, 10);
  // -2: let 1 s pass; -1: flip the logging switch; n >= 0: record n calls
  // in one POST, made 0-2 s before the clock (so some before a switch).
  const auto ops = *rc::gen::container<std::vector<int>>(steps, rc::gen::inRange(-2, 5));
  std::vector<std::pair<int64_t, bool>> switches = {{0, false}};  // (at, on), oldest first
  std::vector<std::string> expected;
  for (int op : ops) {
    if (op == -2) {
      w.h.clock().AdvanceUs(kSecondUs);
      continue;
    }
    if (op == -1) {
      w.SetLogging(key, !switches.back().second, /*settle=*/false);
      switches.emplace_back(w.h.key_state().state().FindKey(key)->logging_switched_at_us,
                            !switches.back().second);
      continue;
    }
    const int64_t age_us = *rc::gen::inRange<int64_t>(0, 2 * kSecondUs + 1);
    auto ids = w.Record(key, static_cast<size_t>(op), 200, age_us);
    // Made while logging was on: on now, and not switched since.
    const bool logged = switches.back().second &&
                        w.h.clock().NowUs() - age_us >= switches.back().first;
    if (logged) expected.insert(expected.end(), ids.begin(), ids.end());
  }
  RC_ASSERT(shared.projections->CatchUp().ok());
  std::reverse(expected.begin(), expected.end());  // newest first
  const size_t limit = *rc::gen::inRange<size_t>(1, 8);
  auto entries = AllLogs(*shared.projections, QueryFor(key, limit), w.h.clock().NowUs());
  RC_ASSERT(RequestIds(entries) == expected);
  for (size_t i = 0; i < entries.size(); i++) {
    RC_ASSERT(entries[i].call.key_id == key);
    RC_ASSERT(entries[i].call.workspace_id == w.ws);
    RC_ASSERT(i == 0 || entries[i].sequence < entries[i - 1].sequence);
  }
}

std::string Flatten(const LogEntry& e) {
  std::string all = e.call.request_id + e.call.workspace_id + e.call.key_id + e.call.method + e.call.path + e.call.client_ip +
                    e.call.origin + e.call.request.body_excerpt + e.call.response.body_excerpt;
  for (const auto& h : e.call.request.headers) all += h.name + h.value;
  for (const auto& h : e.call.response.headers) all += h.name + h.value;
  return all;
}

TEST(CallProjectionsTest, NoKeySecretAppearsInALogEntry) {
  World w;
  w.SetLogging(w.key, true);
  auto [other_key, other_secret] = w.h.CreateKey(w.ws, w.group, "other");
  std::vector<json> calls;
  for (const std::string& s : {w.secret, other_secret}) {
    json c = w.CallJson(w.key, 200, w.h.clock().NowUs() - kSecondUs, 1);
    c["request"] = {{"headers",
                     {{"Authorization", "Bearer " + s},
                      {"X-Api-Key", s},
                      {"X-Note", "k=" + s},
                      {"Cookie", "session=" + s}}},
                    {"body_excerpt", "{\"key\":\"" + s + "\"}"}};
    c["response"] = {{"headers", {{"Set-Cookie", "k=" + s}, {"X-Echo", s}}},
                     {"body_excerpt", "echo " + s + " and " + s}};
    calls.push_back(c);
  }
  w.Post(calls);
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  auto entries = AllLogs(*p, QueryFor(w.key), w.h.clock().NowUs());
  ASSERT_EQ(entries.size(), 2u);
  for (const auto& e : entries) {
    const std::string all = Flatten(e);
    EXPECT_EQ(all.find(w.secret.substr(4)), std::string::npos) << all;
    EXPECT_EQ(all.find(other_secret.substr(4)), std::string::npos) << all;
    EXPECT_NE(e.call.request.body_excerpt.find("[REDACTED]"), std::string::npos);
    ASSERT_EQ(e.call.request.headers.size(), 4u);
  }
}

TEST(CallProjectionsTest, PaginationIsStableWhileNewCallsArrive) {
  World w;
  w.SetLogging(w.key, true);
  auto first_batch = w.Record(w.key, 25);
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  const int64_t now = w.h.clock().NowUs();
  auto page1 = p->Logs(QueryFor(w.key, 10), now);
  ASSERT_TRUE(page1.ok());
  ASSERT_EQ(page1->entries.size(), 10u);
  ASSERT_FALSE(page1->next_cursor.empty());
  // New calls arrive between pages.
  auto second_batch = w.Record(w.key, 10);
  ASSERT_TRUE(p->CatchUp().ok());
  LogQuery rest = QueryFor(w.key, 10);
  rest.cursor = page1->next_cursor;
  std::vector<LogEntry> seen = page1->entries;
  auto more = AllLogs(*p, rest, now);
  seen.insert(seen.end(), more.begin(), more.end());
  std::vector<std::string> expected(first_batch.rbegin(), first_batch.rend());
  EXPECT_EQ(RequestIds(seen), expected);
  // A fresh first page starts with the new calls.
  auto fresh = AllLogs(*p, QueryFor(w.key, 7), now);
  ASSERT_EQ(fresh.size(), 35u);
  EXPECT_EQ(fresh.front().call.request_id, second_batch.back());
  // The last page of an exact multiple ends with an empty cursor, not an empty page.
  auto all = p->Logs(QueryFor(w.key, 35), now);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->entries.size(), 35u);
  EXPECT_TRUE(all->next_cursor.empty());
}

TEST(CallProjectionsTest, LogQueriesFilterAndCheckTheirArguments) {
  World w;
  auto [other, other_secret] = w.h.CreateKey(w.ws, w.group, "other");
  w.SetLogging(other, true);
  w.SetLogging(w.key, true);
  auto ok = w.Record(w.key, 3, 200);
  auto created = w.Record(w.key, 2, 201);
  auto missing = w.Record(w.key, 4, 404);
  auto failed = w.Record(w.key, 1, 503);
  w.Record(other, 2);
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  const int64_t now = w.h.clock().NowUs();
  LogQuery q = QueryFor(w.key);
  q.status = 404;
  EXPECT_EQ(AllLogs(*p, q, now).size(), 4u);
  q.status.reset();
  q.status_class = '2';
  EXPECT_EQ(AllLogs(*p, q, now).size(), 5u);
  q.status_class = '5';
  auto fives = AllLogs(*p, q, now);
  ASSERT_EQ(fives.size(), 1u);
  EXPECT_EQ(fives[0].call.request_id, failed[0]);
  EXPECT_EQ(fives[0].call.status, 503);
  EXPECT_EQ(fives[0].call.method, "POST");
  EXPECT_EQ(fives[0].call.path, "/v1/render");
  EXPECT_EQ(fives[0].call.client_ip, "203.0.113.9");
  EXPECT_EQ(fives[0].call.occurred_at_us, now - kSecondUs);
  // Time window: occurred_at in [from, to).
  q = QueryFor(w.key);
  q.from_us = now - kSecondUs + 1;
  EXPECT_TRUE(AllLogs(*p, q, now).empty());
  q.from_us = now - kSecondUs;
  q.to_us = now - kSecondUs + 1;
  EXPECT_EQ(AllLogs(*p, q, now).size(), 10u);

  auto field_of = [&](const LogQuery& bad) { return p->Logs(bad, now).ToStatus().field(); };
  q = QueryFor(w.key, 0);
  EXPECT_EQ(field_of(q), "limit");
  q.limit = kLogPageMax + 1;
  EXPECT_EQ(field_of(q), "limit");
  q.limit = kLogPageMax;
  EXPECT_TRUE(p->Logs(q, now).ok());
  q.cursor = "zz";
  EXPECT_EQ(field_of(q), "cursor");
  q.cursor = "00";
  EXPECT_EQ(field_of(q), "cursor");
  auto other_page = p->Logs(QueryFor(other, 1), now);
  ASSERT_TRUE(other_page.ok());
  ASSERT_FALSE(other_page->next_cursor.empty());
  q.cursor = other_page->next_cursor;  // another key's cursor
  EXPECT_EQ(field_of(q), "cursor");
  q = QueryFor("");
  EXPECT_EQ(field_of(q), "key_id");
  q = QueryFor(w.key);
  q.to_us = q.from_us;
  EXPECT_EQ(field_of(q), "to");
  q = QueryFor(w.key);
  q.status_class = '6';
  EXPECT_EQ(field_of(q), "status_class");
  EXPECT_EQ(p->Logs(QueryFor(w.key), now).ToStatus().code(), Code::kOk);
  EXPECT_EQ(ok.size() + created.size() + missing.size(), 9u);
}

TEST(CallProjectionsTest, RetentionHidesAndTheSweepDeletesOldEntries) {
  World w;
  w.SetLogging(w.key, true);
  w.h.clock().AdvanceUs(31 * kDayUs);  // logging was on for the calls below
  auto old_calls = w.Record(w.key, 3, 200, 20 * kDayUs);  // within the 35-day lateness
  auto new_calls = w.Record(w.key, 2, 200, kSecondUs);
  CallProjectionsOptions o;
  o.log_retention_us = 15 * kDayUs;
  auto p = w.Open(o);
  ASSERT_NE(p, nullptr);
  const int64_t now = w.h.clock().NowUs();
  auto visible = AllLogs(*p, QueryFor(w.key), now);
  EXPECT_EQ(RequestIds(visible), (std::vector<std::string>{new_calls[1], new_calls[0]}));
  // Asking as of an earlier time shows the older entries: they are hidden, not gone.
  EXPECT_EQ(AllLogs(*p, QueryFor(w.key), now - 10 * kDayUs).size(), 5u);
  auto swept = p->SweepExpiredLogs();
  ASSERT_TRUE(swept.ok());
  EXPECT_EQ(*swept, 3u);
  EXPECT_EQ(AllLogs(*p, QueryFor(w.key), now - 10 * kDayUs).size(), 2u);
  EXPECT_EQ(*p->SweepExpiredLogs(), 0u);
  // Metrics and the digest are untouched by retention.
  EXPECT_EQ(KeyTotals(*p, w, w.key).calls, 5u);
  EXPECT_EQ(p->Digest(), w.Rebuild(p->position()));
  // The sweep follows the injected clock.
  w.h.clock().AdvanceUs(15 * kDayUs);
  EXPECT_EQ(*p->SweepExpiredLogs(), 2u);
  EXPECT_TRUE(AllLogs(*p, QueryFor(w.key), 0).empty());
}

// The store records the highest cutoff a sweep deleted below. A later sweep
// with a lower one (a longer retention) must not lower it: what the earlier
// sweep deleted would then look deleted by hand to an audit.
TEST(CallProjectionsTest, TheSweepRecordOnlyRises) {
  World w;
  w.SetLogging(w.key, true);
  w.h.clock().AdvanceUs(31 * kDayUs);  // logging was on for the calls below
  w.Record(w.key, 2, 200, 20 * kDayUs);
  w.Record(w.key, 1, 200, kSecondUs);
  CallProjectionsOptions fifteen_days;
  fifteen_days.log_retention_us = 15 * kDayUs;
  auto p = w.Open(fifteen_days);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(*p->SweepExpiredLogs(), 2u);
  p.reset();
  w.Record(w.key, 1, 200, 30 * kDayUs);  // late: before both cutoffs
  CallProjectionsOptions twenty_five_days;
  twenty_five_days.log_retention_us = 25 * kDayUs;
  p = w.Open(twenty_five_days);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(*p->SweepExpiredLogs(), 1u);
  const Hash digest = p->Digest();
  p.reset();

  ScratchDir secondary;
  auto snapshot = LoadCallProjectionsSnapshot(w.dir.sub("calls"), secondary.path());
  ASSERT_TRUE(snapshot.ok()) << snapshot.ToStatus().ToString();
  EXPECT_EQ(snapshot->digest, digest);
  CallProjectionsRebuildOptions options;
  options.keep_log_entries = true;
  auto rebuilt = RebuildCallProjections(w.h.ledger(), snapshot->position, options);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.ToStatus().ToString();
  EXPECT_EQ(rebuilt->digest, digest);
  EXPECT_EQ(rebuilt->log_entries.size(), 4u);  // every logged call, swept or not
  EXPECT_EQ(snapshot->log_entries.size(), 1u);  // the late call's
  Status checked = CheckLogEntries(snapshot->log_entries, rebuilt->log_entries,
                                   snapshot->log_swept_before_us);
  EXPECT_TRUE(checked.ok()) << checked.ToString();
}

// CheckLogEntries on hand-made lists: each way a stored entry can disagree
// with the entries a rebuild made is named with its sequence.
TEST(CallProjectionsTest, CheckLogEntriesNamesTheFirstDisagreement) {
  auto entry = [](uint64_t sequence, int64_t occurred_at_us, uint8_t hash_byte) {
    LogEntryHash e;
    e.sequence = sequence;
    e.occurred_at_us = occurred_at_us;
    e.record_hash.fill(hash_byte);
    return e;
  };
  const std::vector<LogEntryHash> made = {entry(3, 100, 1), entry(5, 200, 2), entry(9, 300, 3)};
  auto stored_of = [&](std::initializer_list<size_t> indexes) {
    std::vector<LogEntryHash> stored;
    for (size_t i : indexes) stored.push_back(LogEntryHash{made[i].sequence, 0, made[i].record_hash});
    return stored;
  };
  auto expect_corruption = [&](const std::vector<LogEntryHash>& stored, int64_t swept_before_us,
                               uint64_t sequence, const std::string& message) {
    Status s = CheckLogEntries(stored, made, swept_before_us);
    EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
    EXPECT_EQ(s.sequence(), sequence) << s.ToString();
    EXPECT_EQ(s.message(), message) << s.ToString();
  };
  const int64_t never_swept = std::numeric_limits<int64_t>::min();
  EXPECT_TRUE(CheckLogEntries(stored_of({0, 1, 2}), made, never_swept).ok());
  EXPECT_TRUE(CheckLogEntries({}, {}, never_swept).ok());
  // Entries of calls before the cutoff may be gone, or still there.
  EXPECT_TRUE(CheckLogEntries(stored_of({2}), made, 201).ok());
  EXPECT_TRUE(CheckLogEntries(stored_of({0, 2}), made, 201).ok());

  expect_corruption(stored_of({0, 2}), never_swept, 5, "the log entry of a logged call is missing");
  expect_corruption(stored_of({2}), 200, 5, "the log entry of a logged call is missing");
  std::vector<LogEntryHash> changed = stored_of({0, 1, 2});
  changed[1].record_hash[7] ^= 0x01;
  expect_corruption(changed, never_swept, 5, "a log entry differs from the call it was made from");
  std::vector<LogEntryHash> added = stored_of({0, 1, 2});
  added.insert(added.begin() + 1, entry(4, 0, 2));
  expect_corruption(added, never_swept, 4, "a log entry of an event that is not a logged call");
  std::vector<LogEntryHash> after_last = stored_of({0, 1, 2});
  after_last.push_back(entry(10, 0, 3));
  expect_corruption(after_last, never_swept, 10,
                    "a log entry of an event that is not a logged call");
  std::vector<LogEntryHash> twice = stored_of({0, 1, 1, 2});
  expect_corruption(twice, never_swept, 5, "more than one log entry names this event");
}

TEST(CallProjectionsTest, RestartResumesFromThePersistedPosition) {
  World w;
  w.SetLogging(w.key, true);
  w.Record(w.key, 20, 200);
  w.Record(w.key, 5, 500);
  Hash before;
  uint64_t position = 0;
  MetricsBucket totals;
  std::vector<MetricsBucket> minutes;
  const int64_t now = w.h.clock().NowUs();
  const int64_t hour = now - now % (3600 * kSecondUs);
  {
    CallProjectionsOptions o;
    o.fold_batch_events_max = 3;  // many batches, each persisted
    auto p = w.Open(o);
    ASSERT_NE(p, nullptr);
    before = p->Digest();
    position = p->position();
    EXPECT_EQ(before, w.Rebuild(position));
    totals = KeyTotals(*p, w, w.key);
    minutes = *p->Metrics(MetricsScope::kKey, w.key, hour, hour + 3600 * kSecondUs, 60 * kSecondUs);
  }
  {
    auto p = w.Open();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->events_folded(), 0u);
    EXPECT_EQ(p->events_scanned(), 0u);
    EXPECT_EQ(p->position(), position);
    EXPECT_EQ(p->Digest(), before);
    EXPECT_EQ(KeyTotals(*p, w, w.key), totals);
    EXPECT_EQ(*p->Metrics(MetricsScope::kKey, w.key, hour, hour + 3600 * kSecondUs, 60 * kSecondUs),
              minutes);
  }
  // New events while closed: a lifecycle event and 7 calls, one in a later minute.
  w.SetLogging(w.key, false);
  w.Record(w.key, 6, 200);
  w.h.clock().AdvanceUs(90 * kSecondUs);
  w.Record(w.key, 1, 200);
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->events_folded(), 7u);
  EXPECT_EQ(p->events_scanned(), 8u);
  EXPECT_EQ(p->position(), w.h.ledger().head().sequence);
  EXPECT_EQ(KeyTotals(*p, w, w.key).calls, 32u);
  EXPECT_EQ(KeyTotals(*p, w, w.key).latency.count(), 32u);
  const Hash live = p->Digest();
  EXPECT_NE(live, before);
  EXPECT_EQ(live, w.Rebuild(p->position()));
  EXPECT_EQ(live, w.Rebuild(0));
  EXPECT_EQ(AllLogs(*p, QueryFor(w.key), w.h.clock().NowUs()).size(), 25u);
  // Reopening once more gives the same digest without folding anything.
  p.reset();
  p = w.Open();
  EXPECT_EQ(p->Digest(), live);
  EXPECT_EQ(p->events_folded(), 0u);
}

// A long fold reads the ledger on a second thread that also decodes the
// events (ScanAhead::OfLedgerDecodingCalls); it must fold exactly what the
// inline read folds, across batch boundaries, logs included. More than
// 16,384 events, so RebuildCallProjectionsDigest reads ahead too.
TEST(CallProjectionsTest, ReadingAheadFoldsWhatReadingInlineFolds) {
  World w;
  w.SetLogging(w.key, true);
  auto [key2, secret2] = w.h.CreateKey(w.ws, w.group, "second");
  std::string closed =
      w.h.CreateGroup(w.ws, {{"name", "closed"}, {"ip_allow", {"203.0.113.0/24"}}});
  auto [key3, secret3] = w.h.CreateKey(w.ws, closed, "closed");
  for (int batch = 0; batch < 17; batch++) {
    const int64_t now = w.h.clock().NowUs();
    std::vector<json> calls;
    for (int i = 0; i < 1000; i++) {
      const std::string& key_id = i % 3 == 0 ? key2 : w.key;
      const int status = i % 17 == 0 ? 500 : i % 13 == 0 ? 429 : 200;
      calls.push_back(w.CallJson(key_id, status, now - (i % 7) * 61 * kSecondUs, i % 4));
    }
    w.Post(calls);
    EXPECT_EQ(w.Authorize(secret3, "198.51.100.1"), 403);
    ASSERT_TRUE(w.h.service().data_plane().FlushDenials().ok());
    w.h.clock().AdvanceUs(37 * kSecondUs);
  }
  ASSERT_GT(w.h.ledger().head().sequence, 17'000u);

  CallProjectionsOptions ahead_options;
  ahead_options.read_ahead_events_min = 1;
  ahead_options.fold_batch_events_max = 777;  // batches end inside the reader's chunks
  auto ahead = w.Open(ahead_options);
  ASSERT_NE(ahead, nullptr);
  CallProjectionsOptions inline_options;
  inline_options.read_ahead_events_min = 0;
  auto read_inline = CallProjections::Open(w.dir.sub("calls-inline"), &w.h.ledger(),
                                           &w.h.clock(), inline_options);
  ASSERT_TRUE(read_inline.ok()) << read_inline.ToStatus().ToString();
  const CallProjections& inline_p = **read_inline;

  EXPECT_EQ(ahead->position(), w.h.ledger().head().sequence);
  EXPECT_EQ(ahead->events_folded(), inline_p.events_folded());
  EXPECT_EQ(ahead->Digest(), inline_p.Digest());
  EXPECT_EQ(ahead->Digest(), w.Rebuild(0));
  EXPECT_EQ(KeyTotals(*ahead, w, w.key), KeyTotals(inline_p, w, w.key));
  EXPECT_EQ(KeyTotals(*ahead, w, key3).auth_denied, 17u);
  const auto logs = AllLogs(*ahead, QueryFor(w.key, 1000), w.h.clock().NowUs());
  EXPECT_EQ(logs.size(), 17u * 666u);  // w.key's calls: i % 3 != 0
  EXPECT_EQ(logs, AllLogs(inline_p, QueryFor(w.key, 1000), w.h.clock().NowUs()));
}

// While the tailing thread folds new calls, every MetricsWithTotals answer
// is one state: its series sum to its totals, at the position it reports.
TEST(CallProjectionsTest, MetricsWithTotalsIsOneStateWhileCallsArrive) {
  World w;
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  p->Start();
  std::atomic<bool> writing{true};
  std::thread writer([&] {
    for (int i = 0; i < 60; i++) w.Record(w.key, 20, 200, kSecondUs * (i % 5));
    writing = false;
  });
  const auto [from, to] = w.Range();
  int answers = 0;
  uint64_t last_position = 0;
  while (writing || answers == 0) {
    auto view = p->MetricsWithTotals(MetricsScope::kKey, w.key, from, to, kDayUs);
    ASSERT_TRUE(view.ok()) << view.ToStatus().ToString();
    uint64_t calls = 0;
    for (const MetricsBucket& b : view->series) calls += b.calls;
    ASSERT_EQ(calls, view->totals.calls);
    ASSERT_GE(view->position, last_position);
    last_position = view->position;
    answers++;
  }
  writer.join();
  ASSERT_TRUE(p->CatchUp().ok());
  auto last = p->MetricsWithTotals(MetricsScope::kKey, w.key, from, to, kDayUs);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->totals.calls, 1200u);
  EXPECT_EQ(last->position, p->position());
  p->Stop();
}

TEST(CallProjectionsTest, UsageMonthsFollowTheWorkspaceBillingTimeZone) {
  World w;
  // 2026-06-01 00:00 in Seoul is 2026-05-31T15:00:00Z.
  w.h.clock().SetUs(*ParseRfc3339("2026-06-01T06:00:00Z", "t"));
  auto r = w.h.Call("POST", "/v1/workspaces",
                    json{{"name", "Seoul"}, {"billing_timezone", "Asia/Seoul"}}.dump());
  ASSERT_EQ(r.status, 201) << r.raw;
  const std::string seoul = r.body["id"];
  const std::string seoul_key = w.h.CreateKey(seoul, w.h.CreateGroup(seoul), "s").first;
  const std::string seoul_key2 = w.h.CreateKey(seoul, w.h.CreateGroup(seoul), "s2").first;
  const int64_t before_midnight = *ParseRfc3339("2026-05-31T14:59:59.999999Z", "t");
  const int64_t at_midnight = *ParseRfc3339("2026-05-31T15:00:00Z", "t");
  w.Post({w.CallJson(w.key, 200, before_midnight, 3), w.CallJson(w.key, 200, at_midnight, 4),
          w.CallJson(seoul_key, 200, before_midnight, 5),
          w.CallJson(seoul_key, 200, at_midnight, 6), w.CallJson(seoul_key2, 200, at_midnight, 7),
          w.CallJson(seoul_key, 500, at_midnight, 0)});
  auto p = w.Open();
  ASSERT_NE(p, nullptr);
  const BillingMonth may{2026, 5}, june{2026, 6};
  // UTC: both calls in May.
  WorkspaceUsage utc_may = p->UsageFor(w.ws, may);
  EXPECT_EQ(utc_may.total, 7u);
  EXPECT_EQ(utc_may.keys, (std::vector<KeyUsage>{{w.key, 7}}));
  EXPECT_EQ(utc_may.position, p->position());
  EXPECT_EQ(p->UsageFor(w.ws, june).total, 0u);
  EXPECT_EQ(p->UsageMonths(w.ws), std::vector<BillingMonth>{may});
  // Seoul: the second call is already June.
  EXPECT_EQ(p->UsageFor(seoul, may).total, 5u);
  WorkspaceUsage seoul_june = p->UsageFor(seoul, june);
  EXPECT_EQ(seoul_june.total, 13u);
  std::vector<KeyUsage> expected = {{seoul_key, 6}, {seoul_key2, 7}};
  std::sort(expected.begin(), expected.end(),
            [](const KeyUsage& a, const KeyUsage& b) { return a.key_id < b.key_id; });
  EXPECT_EQ(seoul_june.keys, expected);
  EXPECT_EQ(p->UsageMonths(seoul), (std::vector<BillingMonth>{may, june}));
  EXPECT_TRUE(p->UsageMonths("ws_unknown").empty());
  EXPECT_EQ(p->usage_rejected(), 0u);
  // Usage survives a restart.
  const Hash live = p->Digest();
  p.reset();
  p = w.Open();
  EXPECT_EQ(p->UsageFor(seoul, june).total, 13u);
  EXPECT_EQ(p->Digest(), live);
  EXPECT_EQ(live, w.Rebuild(0));
}

// The data plane refuses more than kCallUnitsMax units per call, but a log
// written before that limit (or by another writer) may hold such calls: the
// fold must still be total and the same for every fold.
TEST(CallProjectionsTest, UsageOverflowIsRejectedTheSameWayByEveryFold) {
  World w;
  const uint64_t big = static_cast<uint64_t>(INT64_MAX);
  const int64_t at = w.h.clock().NowUs() - kSecondUs;
  std::vector<NewEvent> events;
  for (uint64_t units : {big, big, uint64_t{1}, uint64_t{1}, uint64_t{1}, uint64_t{1}}) {
    ApiCallRecorded call;
    call.request_id = "req-" + std::to_string(events.size());
    call.workspace_id = w.ws;
    call.key_id = w.key;
    call.occurred_at_us = at;
    call.status = 200;
    call.units = units;
    NewEvent e;
    const Hash id = HashBytes("overflow-" + call.request_id);
    std::copy_n(id.begin(), e.event_id.size(), e.event_id.begin());
    e.stream_id = "calls/" + w.key;
    e.actor = "gateway";
    e.body = call;
    events.push_back(std::move(e));
  }
  ASSERT_TRUE(w.h.ledger().Append(events).ok());
  CallProjectionsOptions o;
  o.fold_batch_events_max = 1;
  auto p = w.Open(o);
  ASSERT_NE(p, nullptr);
  const auto months = p->UsageMonths(w.ws);
  ASSERT_EQ(months.size(), 1u);
  // 2 * (2^63 - 1) + 1 = 2^64 - 1 fits; the other three ones do not.
  EXPECT_EQ(p->UsageFor(w.ws, months[0]).total, UINT64_MAX);
  EXPECT_EQ(p->usage_rejected(), 3u);
  EXPECT_EQ(p->Digest(), w.Rebuild(0));
}

TEST(CallProjectionsTest, TheTailingThreadFoldsNewCalls) {
  World w;
  CallProjectionsOptions o;
  o.tail_wait_us = 5'000;
  auto p = w.Open(o);
  ASSERT_NE(p, nullptr);
  p->Start();
  p->Start();  // no-op
  w.Record(w.key, 5);
  const uint64_t head = w.h.ledger().head().sequence;
  for (int i = 0; i < 2000 && p->position() < head; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(p->position(), head);
  EXPECT_EQ(KeyTotals(*p, w, w.key).calls, 5u);
  EXPECT_TRUE(p->tail_status().ok()) << p->tail_status().ToString();
  p->Stop();
  p->Stop();  // idempotent
  w.Record(w.key, 1);
  EXPECT_EQ(p->position(), head);  // stopped: nothing more is folded by itself
  ASSERT_TRUE(p->CatchUpTo(head + 1).ok());
  EXPECT_EQ(p->position(), head + 1);
  ASSERT_TRUE(p->CatchUpTo(head).ok());  // already there
  EXPECT_EQ(p->position(), head + 1);
}

TEST(CallProjectionsTest, TheTailingThreadSweepsByTheInjectedClock) {
  World w;
  w.SetLogging(w.key, true);
  w.Record(w.key, 2);
  CallProjectionsOptions o;
  o.tail_wait_us = 2'000;
  o.log_retention_us = kDayUs;
  o.log_sweep_interval_us = 60 * kSecondUs;
  auto p = w.Open(o);
  ASSERT_NE(p, nullptr);
  p->Start();
  w.h.clock().AdvanceUs(2 * kDayUs);
  size_t left = 2;
  for (int i = 0; i < 2000 && left > 0; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    left = AllLogs(*p, QueryFor(w.key), /*now_us=*/0).size();  // deleted, not just hidden
  }
  EXPECT_EQ(left, 0u);
}

TEST(CallProjectionsTest, AStoreAheadOfOrForeignToTheLedgerIsRebuilt) {
  ScratchDir calls;
  const std::string path = calls.sub("calls");
  auto open = [&](World& w) {
    auto p = CallProjections::Open(path, &w.h.ledger(), &w.h.clock(), {});
    EXPECT_TRUE(p.ok()) << p.ToStatus().ToString();
    return std::move(p).value();
  };
  uint64_t long_position = 0;
  {
    World a;
    a.Record(a.key, 10);
    auto p = open(a);
    long_position = p->position();
    EXPECT_EQ(KeyTotals(*p, a, a.key).calls, 10u);
  }
  {
    World b;  // a shorter ledger: the store is ahead of it
    b.Record(b.key, 2);
    ASSERT_LT(b.h.ledger().head().sequence, long_position);
    auto p = open(b);
    EXPECT_EQ(KeyTotals(*p, b, b.key).calls, 2u);
    EXPECT_EQ(p->Digest(), b.Rebuild(0));
  }
  {
    World c;  // a longer ledger whose event at the stored position differs
    c.Record(c.key, 30);
    auto p = open(c);
    EXPECT_EQ(KeyTotals(*p, c, c.key).calls, 30u);
    EXPECT_EQ(p->Digest(), c.Rebuild(0));
  }
}

// `folded` comes once, after every event went to other_events, and never
// when the fold fails.
TEST(CallProjectionsTest, RebuildTellsWhenTheFoldIsDone) {
  World w;
  w.Record(w.key, 5);
  const uint64_t head = w.h.ledger().head().sequence;
  size_t others = 0;
  std::vector<size_t> others_when_folded;
  CallProjectionsRebuildOptions options;
  options.other_events = [&](uint64_t, std::string_view) {
    ++others;
    return Status::Ok();
  };
  options.folded = [&] { others_when_folded.push_back(others); };
  auto rebuilt = RebuildCallProjections(w.h.ledger(), head, options);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.ToStatus().ToString();
  EXPECT_EQ(others, head - 5);  // all but the 5 calls
  EXPECT_EQ(others_when_folded, std::vector<size_t>{head - 5});

  others_when_folded.clear();
  options.other_events = [](uint64_t sequence, std::string_view) {
    return Status::Corruption("refused", sequence);
  };
  auto failed = RebuildCallProjections(w.h.ledger(), head, options);
  EXPECT_EQ(failed.ToStatus().code(), Code::kCorruption);
  EXPECT_TRUE(others_when_folded.empty());
}

TEST(CallProjectionsTest, RebuildRefusesAPositionBeyondTheHead) {
  World w;
  auto r = RebuildCallProjectionsDigest(w.h.ledger(), w.h.ledger().head().sequence + 1);
  EXPECT_EQ(r.ToStatus().field(), "until");
}

// ---- The persistence additions to MetricsFold and CompactLatencyHistogram ----------------

struct Op {
  bool denial = false;
  int key = 0;
  int64_t minute = 0;  // offset in minutes (may go back: late events)
  uint64_t latency_us = 0;
  uint16_t status = 200;
  bool cut = false;  // persist after this event
};

void ApplyOp(const Op& op, MetricsFold* fold) {
  constexpr int64_t kT0 = 1'780'000'000'000'000;
  const int64_t at = kT0 + op.minute * kMetricsMinuteUs + 7;
  if (op.denial) {
    AuthorizationDenied d;
    d.workspace_id = "ws";
    d.key_id = "k" + std::to_string(op.key);
    d.occurred_at_us = at;
    d.count = 2;
    fold->ApplyDenial(d);
    return;
  }
  ApiCallRecorded c;
  c.workspace_id = "ws";
  c.key_id = "k" + std::to_string(op.key);
  c.occurred_at_us = at;
  c.latency_us = op.latency_us;
  c.status = op.status;
  c.units = 1;
  fold->ApplyCall(c);
}

std::vector<std::string> CellsOf(const MetricsFold& fold) {
  std::vector<std::string> out;
  fold.ForEachCell([&](const MetricsFold::CellRef& c, std::string_view encoded) {
    out.push_back(std::to_string(static_cast<int>(c.scope)) + "/" + std::string(c.id) + "/" +
                  std::to_string(c.width_us) + "/" + std::to_string(c.start_us) + "/" +
                  std::string(encoded));
  });
  return out;
}

// A fold restored from the cells it reported at random cut points equals the
// original, and goes on equal when both fold more events.
RC_GTEST_PROP(MetricsFoldPersistenceProp, RestoredFoldEqualsTheOriginal, ()) {
  const auto ops = *rc::gen::container<std::vector<Op>>(rc::gen::build<Op>(
      rc::gen::set(&Op::denial, rc::gen::weightedElement<bool>({{1, true}, {5, false}})),
      rc::gen::set(&Op::key, rc::gen::inRange(0, 3)),
      rc::gen::set(&Op::minute, rc::gen::inRange<int64_t>(-90, 3000)),
      rc::gen::set(&Op::latency_us, rc::gen::inRange<uint64_t>(0, 5'000'000)),
      rc::gen::set(&Op::status, rc::gen::element<uint16_t>(200, 429, 500)),
      rc::gen::set(&Op::cut, rc::gen::weightedElement<bool>({{1, true}, {3, false}}))));
  const auto more = *rc::gen::container<std::vector<Op>>(
      rc::gen::build<Op>(rc::gen::set(&Op::key, rc::gen::inRange(0, 3)),
                         rc::gen::set(&Op::minute, rc::gen::inRange<int64_t>(-90, 3100)),
                         rc::gen::set(&Op::latency_us, rc::gen::inRange<uint64_t>(0, 5'000'000))));
  MetricsFold live;
  live.TrackChanges();
  struct Stored {
    MetricsFold::CellRef ref;  // ref.id is set from `id` when loading
    std::string id;
    std::string encoded;
  };
  std::map<std::string, Stored> store;  // as a KV store would hold them: last write wins
  auto persist = [&] {
    live.TakeChangedCells([&](const MetricsFold::CellRef& c, std::string_view encoded) {
      std::string k = std::to_string(static_cast<int>(c.scope)) + "/" + std::string(c.id) + "/" +
                      std::to_string(c.width_us) + "/" + std::to_string(c.start_us);
      store[k] = Stored{c, std::string(c.id), std::string(encoded)};
    });
  };
  for (const Op& op : ops) {
    ApplyOp(op, &live);
    if (op.cut) persist();
  }
  persist();
  MetricsFold restored;
  for (auto& [k, v] : store) {
    MetricsFold::CellRef ref = v.ref;
    ref.id = v.id;
    RC_ASSERT(restored.LoadCell(ref, v.encoded).ok());
  }
  RC_ASSERT(restored.FinishLoad().ok());
  RC_ASSERT(CellsOf(restored) == CellsOf(live));
  RC_ASSERT(restored.cell_count() == live.cell_count());
  for (const Op& op : more) {
    ApplyOp(op, &live);
    ApplyOp(op, &restored);
  }
  RC_ASSERT(CellsOf(restored) == CellsOf(live));
  constexpr int64_t kFrom =
      1'780'000'000'000'000 - 1'780'000'000'000'000 % kMetricsDayUs - kMetricsDayUs;
  for (const char* key : {"k0", "k1", "k2"}) {
    auto a = live.Query(MetricsScope::kKey, key, kFrom, kFrom + 5 * kMetricsDayUs, kMetricsHourUs);
    auto b =
        restored.Query(MetricsScope::kKey, key, kFrom, kFrom + 5 * kMetricsDayUs, kMetricsHourUs);
    RC_ASSERT(a.ok() && b.ok());
    RC_ASSERT(*a == *b);
  }
}

// A late call into an earlier minute of the open hour goes to its minute and
// hour but not yet its day; the hour reaches the day when a later hour opens.
// Here that hour is the next day's: only the closing marks the old day
// changed. Cells stored before and after restore the same fold, and queries
// add what is still open.
TEST(MetricsFoldPersistenceTest, LateCallInTheOpenHourThenTheHourCloses) {
  // kT0 (ApplyOp) is 20:26:40 UTC: offsets 0..33 share its hour, 214 is the
  // next day's first minute.
  const std::vector<Op> ops = {
      {false, 0, 0, 1'000, 200, false},   // opens minute 0
      {false, 0, 2, 2'000, 200, false},   // closes minute 0 into the hour
      {false, 0, 1, 3'000, 500, true},    // late: minute 1 of the open hour; persist
      {false, 0, 214, 4'000, 200, true},  // next day: minute 2, then the hour, close; persist
  };
  MetricsFold live;
  live.TrackChanges();
  std::map<std::string, std::pair<MetricsFold::CellRef, std::string>> store;
  std::map<std::string, std::string> ids;
  for (const Op& op : ops) {
    ApplyOp(op, &live);
    if (!op.cut) continue;
    live.TakeChangedCells([&](const MetricsFold::CellRef& c, std::string_view encoded) {
      const std::string k = std::to_string(static_cast<int>(c.scope)) + "/" + std::string(c.id) +
                            "/" + std::to_string(c.width_us) + "/" + std::to_string(c.start_us);
      ids[k] = std::string(c.id);
      store[k] = {c, std::string(encoded)};
    });
  }
  MetricsFold restored;
  for (auto& [k, v] : store) {
    MetricsFold::CellRef ref = v.first;
    ref.id = ids[k];
    ASSERT_TRUE(restored.LoadCell(ref, v.second).ok()) << k;
  }
  ASSERT_TRUE(restored.FinishLoad().ok());
  EXPECT_EQ(CellsOf(restored), CellsOf(live));
  constexpr int64_t kT0 = 1'780'000'000'000'000;
  const int64_t day = kT0 - kT0 % kMetricsDayUs;
  for (const MetricsFold* fold : {&live, &restored}) {
    for (int64_t step : {kMetricsHourUs, kMetricsDayUs}) {  // minutes: over the points limit
      auto buckets = fold->Query(MetricsScope::kKey, "k0", day, day + 2 * kMetricsDayUs, step);
      ASSERT_TRUE(buckets.ok());
      MetricsBucket total;
      for (const MetricsBucket& b : *buckets) total.Merge(b);
      EXPECT_EQ(total.calls, 4u) << step;
      EXPECT_EQ(total.latency.count(), 4u) << step;
      EXPECT_EQ(total.latency.max(), 4'000u) << step;
      EXPECT_EQ(total.errors_5xx, 1u) << step;
    }
    auto first_day = fold->Totals(MetricsScope::kKey, "k0", day, day + kMetricsDayUs);
    ASSERT_TRUE(first_day.ok());
    EXPECT_EQ(first_day->latency.count(), 3u);
  }
}

TEST(MetricsFoldPersistenceTest, LoadRefusesMalformedCells) {
  MetricsFold fold;
  MetricsFold::CellRef ref;
  ref.id = "k";
  EXPECT_EQ(fold.LoadCell(ref, "").code(), Code::kCorruption);
  EXPECT_EQ(fold.LoadCell(ref, std::string("\x01\x01\x02\x00\x00\x00\x00\x01\x00", 9)).code(),
            Code::kCorruption);  // more errors than calls
  ref.width_us = 7;
  EXPECT_EQ(fold.LoadCell(ref, std::string("\x01\x00\x00\x00\x00\x00\x00\x01\x00", 9)).code(),
            Code::kCorruption);
  ref.width_us = kMetricsMinuteUs;
  ref.start_us = 5;  // unaligned
  EXPECT_EQ(fold.LoadCell(ref, std::string("\x01\x00\x00\x00\x00\x00\x00\x01\x00", 9)).code(),
            Code::kCorruption);
  // A minute without its hour and day.
  ref.start_us = 0;
  ASSERT_TRUE(fold.LoadCell(ref, std::string("\x01\x00\x00\x00\x00\x00\x00\x01\x00", 9)).ok());
  EXPECT_EQ(fold.LoadCell(ref, std::string("\x01\x00\x00\x00\x00\x00\x00\x01\x00", 9)).code(),
            Code::kCorruption);  // twice
  EXPECT_EQ(fold.FinishLoad().code(), Code::kCorruption);
}

RC_GTEST_PROP(CompactLatencyHistogramProp, SerializeMatchesTheDenseEncoding, ()) {
  const auto values = *rc::gen::container<std::vector<uint64_t>>(
      rc::gen::oneOf(rc::gen::inRange<uint64_t>(0, 300), rc::gen::arbitrary<uint64_t>()));
  CompactLatencyHistogram compact;
  LatencyHistogram dense;
  for (uint64_t v : values) {
    compact.Record(v);
    dense.Record(v);
  }
  const std::string bytes = compact.Serialize();
  RC_ASSERT(bytes == dense.Serialize());
  auto back = CompactLatencyHistogram::Deserialize(bytes);
  RC_ASSERT(back.ok());
  RC_ASSERT(back->Serialize() == bytes);
  RC_ASSERT(back->count() == values.size());
  RC_ASSERT(!CompactLatencyHistogram::Deserialize(bytes + "x").ok());
}

}  // namespace
}  // namespace keyledger
