// Handler-level tests of the data plane: authorize and call recording.
#include <gtest/gtest.h>

#include <algorithm>

#include "billing/calendar.h"
#include "projections/latency_histogram.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ws_ = h.CreateWorkspace();
    ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"tps_limit":3})").status, 200);
    group_ = h.CreateGroup(ws_, {{"name", "g"},
                                 {"ip_allow", {"203.0.113.0/24", "2001:db8::/32"}},
                                 {"origin_allow", {"https://*.example.com"}}});
    open_group_ = h.CreateGroup(ws_, {{"name", "open"}});
    std::tie(key_, secret_) = h.CreateKey(ws_, group_);
  }

  ServiceHarness::Reply Authorize(const std::string& secret, const std::string& ip,
                                  const std::string& origin = "https://app.example.com") {
    HttpRequest req;
    req.method = "POST";
    req.target = "/v1/authorize";
    if (!secret.empty()) req.headers.emplace_back("authorization", "Bearer " + secret);
    json body = {{"client_ip", ip}};
    if (!origin.empty()) body["origin"] = origin;
    req.body = body.dump();
    return h.Send(req);
  }

  json Call(const std::string& request_id, int status = 200, const std::string& key = "") {
    return {{"request_id", request_id}, {"key_id", key.empty() ? key_ : key},
            {"occurred_at", FormatRfc3339(h.clock().NowUs() - 1'000'000)},
            {"method", "POST"}, {"path", "/v1/render"}, {"status", status},
            {"latency_ms", 12.5}};
  }

  ServiceHarness h;
  std::string ws_, group_, open_group_, key_, secret_;
};

TEST_F(DataPlaneTest, AllowsAKeyInsideItsGroup) {
  auto r = Authorize(secret_, "203.0.113.9");
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["allowed"], true);
  EXPECT_EQ(r.body["key_id"], key_);
  EXPECT_EQ(r.body["workspace_id"], ws_);
  EXPECT_FALSE(r.body["request_id"].get<std::string>().empty());
  // IPv6 client and a deeper subdomain.
  EXPECT_EQ(Authorize(secret_, "2001:db8::7", "https://a.b.example.com").status, 200);
}

TEST_F(DataPlaneTest, RefusesBadCredentials) {
  EXPECT_EQ(Authorize("", "203.0.113.9").status, 401);
  EXPECT_EQ(Authorize("klk_unknownunknownunknown", "203.0.113.9").status, 401);
  auto bad_ip = Authorize(secret_, "not-an-ip");
  EXPECT_EQ(bad_ip.status, 400);
  EXPECT_EQ(bad_ip.body["error"]["field"], "client_ip");
}

TEST_F(DataPlaneTest, RefusesOutsideTheSecurityGroup) {
  auto ip = Authorize(secret_, "198.51.100.1");
  EXPECT_EQ(ip.status, 403);
  EXPECT_EQ(ip.body["error"]["code"], "permission_denied");
  EXPECT_EQ(ip.body["error"]["field"], "client_ip");
  auto origin = Authorize(secret_, "203.0.113.9", "https://example.com");
  EXPECT_EQ(origin.status, 403);
  EXPECT_EQ(origin.body["error"]["field"], "origin");
  EXPECT_EQ(Authorize(secret_, "203.0.113.9", "").status, 403);  // origins named: browsers only
  EXPECT_EQ(Authorize(secret_, "2001:db9::1").status, 403);
}

TEST_F(DataPlaneTest, GroupChangesTakeEffectOnTheNextRequest) {
  EXPECT_EQ(Authorize(secret_, "198.51.100.1").status, 403);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_ + "/keys/" + key_,
                   json{{"security_group", open_group_}}.dump()).status, 200);
  EXPECT_EQ(Authorize(secret_, "198.51.100.1", "").status, 200);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_ + "/security-groups/" + open_group_,
                   R"({"ip_allow":["10.0.0.0/8"]})").status, 200);
  EXPECT_EQ(Authorize(secret_, "198.51.100.1", "").status, 403);
}

TEST_F(DataPlaneTest, RotationWithoutGraceStopsTheOldSecretAtOnce) {
  auto rotated = h.Call("POST", "/v1/workspaces/" + ws_ + "/keys/" + key_ + "/rotate", "{}");
  ASSERT_EQ(rotated.status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 401);
  EXPECT_EQ(Authorize(rotated.body["secret"], "203.0.113.9").status, 200);
}

TEST_F(DataPlaneTest, RotationWithGraceKeepsTheOldSecretUntilItEnds) {
  auto rotated = h.Call("POST", "/v1/workspaces/" + ws_ + "/keys/" + key_ + "/rotate",
                        R"({"grace_seconds":30})");
  ASSERT_EQ(rotated.status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  h.clock().AdvanceUs(29'000'000);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  h.clock().AdvanceUs(1'000'000);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 401);
  EXPECT_EQ(Authorize(rotated.body["secret"], "203.0.113.9").status, 200);
}

TEST_F(DataPlaneTest, DeletedKeyIsRefusedAtOnce) {
  ASSERT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws_ + "/keys/" + key_).status, 204);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 401);
}

TEST_F(DataPlaneTest, OneKeyAtItsLimitDoesNotAffectAnother) {
  auto [other, other_secret] = h.CreateKey(ws_, group_, "other");
  int allowed = 0;
  for (int i = 0; i < 10; i++) {
    auto r = Authorize(secret_, "203.0.113.9");
    if (r.status == 200) allowed++;
    if (r.status != 200) {
      EXPECT_EQ(r.body["error"]["code"], "rate_limited") << r.raw;
    }
  }
  EXPECT_EQ(allowed, 3);  // the burst is the tps_limit; the clock did not move
  // The second key of the same workspace still has its whole burst.
  for (int i = 0; i < 3; i++) EXPECT_EQ(Authorize(other_secret, "203.0.113.9").status, 200);
  EXPECT_EQ(Authorize(other_secret, "203.0.113.9").status, 429);
}

TEST_F(DataPlaneTest, RateLimitHeadersAndRetryAfter) {
  auto first = Authorize(secret_, "203.0.113.9");
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.Header("ratelimit-limit"), "3");
  EXPECT_EQ(first.Header("ratelimit-remaining"), "2");
  EXPECT_EQ(first.Header("retry-after"), "");
  Authorize(secret_, "203.0.113.9");
  Authorize(secret_, "203.0.113.9");
  auto limited = Authorize(secret_, "203.0.113.9");
  ASSERT_EQ(limited.status, 429);
  EXPECT_EQ(limited.Header("ratelimit-remaining"), "0");
  EXPECT_EQ(limited.Header("retry-after"), "1");  // 333,334 µs rounded up to whole seconds
  h.clock().AdvanceUs(333'334);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  h.clock().AdvanceUs(1'000'000);  // a full second refills the whole burst
  for (int i = 0; i < 3; i++) EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
}

// Rate decisions follow the limiter's own clock (steady in `serve`): the
// time of day set back an hour neither holds a key's refill back for that
// hour nor gives it a new burst.
TEST_F(DataPlaneTest, SettingTheTimeOfDayBackDoesNotMoveRateDecisions) {
  h.SeparateRateClock();
  h.Open();
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"tps_limit":1})").status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 429);
  h.clock().AdvanceUs(-3600LL * 1'000'000);  // the wall clock is set back
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 429);  // no new burst
  h.rate_clock().AdvanceUs(1'000'000);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);  // refilled on time
}

TEST_F(DataPlaneTest, OperatorChangesTpsLimitEffectiveNextRequest) {
  for (int i = 0; i < 3; i++) ASSERT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 429);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"tps_limit":1000})").status, 200);
  // The very next request is decided under the new limit. The share of the
  // burst already used carries over (docs/rate-limits.md), so at 1000 TPS the
  // exhausted bucket has room again one emission interval (1 ms) later.
  auto next = Authorize(secret_, "203.0.113.9");
  EXPECT_EQ(next.Header("ratelimit-limit"), "1000");
  h.clock().AdvanceUs(1000);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 200);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"tps_limit":1})").status, 200);
  EXPECT_EQ(Authorize(secret_, "203.0.113.9").status, 429);
}

TEST_F(DataPlaneTest, RecordsCallsDurablyAndIdempotently) {
  json body = {{"calls", {Call("r1"), Call("r2", 500), Call("r1")}}};
  auto r = h.Call("POST", "/v1/calls", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["recorded"], 2);
  EXPECT_EQ(r.body["duplicates"], 1);
  uint64_t head = h.ledger().head().sequence;
  auto retry = h.Call("POST", "/v1/calls", body.dump());
  EXPECT_EQ(retry.body["recorded"], 0);
  EXPECT_EQ(retry.body["duplicates"], 3);
  EXPECT_EQ(h.ledger().head().sequence, head);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  const auto& first = std::get<ApiCallRecorded>(events->at(0).body);
  EXPECT_EQ(first.units, 1u);
  EXPECT_EQ(first.latency_us, 12'500u);
  EXPECT_EQ(first.workspace_id, ws_);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(1).body).units, 0u);  // a 500 is not billable
}

// Redaction lengthens text ("klk_a" -> "klk_[REDACTED]"): a call that fits the
// body limit may not fit one event once recorded. It is refused by its place
// in the batch, and nothing is recorded.
TEST_F(DataPlaneTest, ACallTooLargeOnceRedactedIsNamed) {
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_ + "/keys/" + key_, R"({"logging":true})").status,
            200);
  h.clock().AdvanceUs(60'000'000);
  std::string value;
  while (value.size() < 3300) value += "klk_a ";
  json headers = json::object();
  for (int i = 0; i < 64; i++) headers[std::string(1, 'h').append(std::to_string(i))] = value;
  json big = Call("too-big");
  big["request"] = {{"headers", headers}};
  big["response"] = {{"headers", headers}};
  const uint64_t head = h.ledger().head().sequence;
  auto r = h.Call("POST", "/v1/calls", json{{"calls", {Call("fits"), big}}}.dump());
  EXPECT_EQ(r.status, 400) << r.raw.substr(0, 300);
  EXPECT_EQ(r.body["error"]["field"], "calls[1]") << r.raw.substr(0, 300);
  EXPECT_EQ(h.ledger().head().sequence, head);
}

TEST_F(DataPlaneTest, UnitsAndLatenciesUpToTheirMaximumAreRecorded) {
  json call = Call("most-units");
  call["units"] = kCallUnitsMax;
  call["latency_ms"] = 4'294'967.295;
  auto r = h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(0).body).units, kCallUnitsMax);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(0).body).latency_us, kLatencyTrackedUsMax);
}

// Request ids past the short-string buffer are stored on the heap: the
// in-batch duplicate check must find those too.
TEST_F(DataPlaneTest, LongRequestIdsRepeatedInOneBatchAreDuplicates) {
  const std::string long_id(100, 'q');
  json body = {{"calls", {Call(long_id), Call("short"), Call(long_id), Call(long_id + "2")}}};
  auto r = h.Call("POST", "/v1/calls", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["recorded"], 3);
  EXPECT_EQ(r.body["duplicates"], 1);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(0).body).request_id, long_id);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(2).body).request_id, long_id + "2");
}

TEST_F(DataPlaneTest, ARefusedBatchAppendsNothing) {
  uint64_t head = h.ledger().head().sequence;
  auto expect_field = [&](json call, const std::string& field) {
    json body = {{"calls", {Call("ok-1"), call}}};
    auto r = h.Call("POST", "/v1/calls", body.dump());
    EXPECT_EQ(r.status, 400) << r.raw;
    EXPECT_EQ(r.body["error"]["field"], field) << r.raw;
    EXPECT_EQ(h.ledger().head().sequence, head);
  };
  json c = Call("x");
  c.erase("request_id");
  expect_field(c, "calls[1].request_id");
  c = Call("x");
  c["occurred_at"] = "yesterday";
  expect_field(c, "calls[1].occurred_at");
  c = Call("x");
  c["occurred_at"] = FormatRfc3339(h.clock().NowUs() - 36LL * 24 * 3600 * 1'000'000);
  expect_field(c, "calls[1].occurred_at");
  c = Call("x");
  c["occurred_at"] = FormatRfc3339(h.clock().NowUs() + 6LL * 60 * 1'000'000);
  expect_field(c, "calls[1].occurred_at");
  c = Call("x");
  c["status"] = "200";
  expect_field(c, "calls[1].status");
  c = Call("x");
  c["units"] = kCallUnitsMax + 1;  // would let a month's usage pass 2^64 - 1
  expect_field(c, "calls[1].units");
  c = Call("x");
  c["latency_ms"] = 4'294'967.296;  // beyond the latency histograms' error bound
  expect_field(c, "calls[1].latency_ms");
  c = Call("x", 200, "key_unknown");
  expect_field(c, "calls[1].key_id");
  c = Call("x");
  c["colour"] = "red";
  expect_field(c, "calls[1].colour");
  json too_many = {{"calls", json::array()}};
  for (int i = 0; i < 1001; i++) too_many["calls"].push_back(Call("many-" + std::to_string(i)));
  auto r = h.Call("POST", "/v1/calls", too_many.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["field"], "calls");
  // The batch's size is its first fault, whatever its items hold.
  too_many["calls"][1000]["colour"] = "red";
  r = h.Call("POST", "/v1/calls", too_many.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["field"], "calls") << r.raw;
  // Each excerpt's headers are counted and named on their own.
  for (const char* side : {"request", "response"}) {
    c = Call("x");
    c[side]["headers"] = json::object();
    for (int i = 0; i <= 64; i++) c[side]["headers"]["x-h" + std::to_string(i)] = "v";
    expect_field(c, std::string("calls[1].") + side + ".headers");
  }
  EXPECT_EQ(h.ledger().head().sequence, head);
}

TEST_F(DataPlaneTest, OnlyTheOperatorRecordsCalls) {
  std::string t = h.Call("POST", "/v1/workspaces/" + ws_ + "/tokens").body["token"];
  auto r = h.Call("POST", "/v1/calls", json{{"calls", {Call("r1")}}}.dump(), t);
  EXPECT_EQ(r.status, 403);
}

TEST_F(DataPlaneTest, LoggedExcerptsAreRedactedAndUnloggedDropped) {
  json call = Call("unlogged");
  call["request"] = {{"headers", {{"Authorization", "Bearer " + secret_}}}, {"body_excerpt", "x"}};
  ASSERT_EQ(h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump()).status, 200);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_ + "/keys/" + key_, R"({"logging":true})")
                .status, 200);
  h.clock().AdvanceUs(10'000'000);  // calls made after the switch are logged
  call = Call("logged");
  call["path"] = "/v1/render?api_key=" + secret_;
  call["request"] = {{"headers", {{"Authorization", "Bearer " + secret_}, {"X-Note", secret_}}},
                     {"body_excerpt", "key=" + secret_ + " " + std::string(5000, 'b')}};
  ASSERT_EQ(h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump()).status, 200);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  const auto& unlogged = std::get<ApiCallRecorded>(events->at(0).body);
  EXPECT_FALSE(unlogged.logged);
  EXPECT_TRUE(unlogged.request.headers.empty());
  const auto& logged = std::get<ApiCallRecorded>(events->at(1).body);
  EXPECT_TRUE(logged.logged);
  ASSERT_EQ(logged.request.headers.size(), 2u);
  EXPECT_EQ(logged.request.headers[0].value, "[REDACTED]");
  // The secret inside replaced by a shorter marker, then cut to 4 KiB.
  EXPECT_LE(logged.request.body_excerpt.size(), kBodyExcerptBytesMax);
  EXPECT_GT(logged.request.body_excerpt.size(), kBodyExcerptBytesMax - 64);
  EXPECT_TRUE(logged.request.body_excerpt.starts_with("key=klk_[REDACTED] bbb"));
  EXPECT_EQ(logged.path, "/v1/render?api_key=klk_[REDACTED]");
  for (const auto& e : *events) {
    const auto& c = std::get<ApiCallRecorded>(e.body);
    for (const auto& hd : c.request.headers) EXPECT_EQ(hd.value.find(secret_.substr(4)), std::string::npos);
    EXPECT_EQ(c.request.body_excerpt.find(secret_.substr(4)), std::string::npos);
  }
}

TEST_F(DataPlaneTest, SecretsBackToBackOrInUpperCaseAreRedactedAndExcerptsStayWithinTheLimit) {
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_ + "/keys/" + key_, R"({"logging":true})")
                .status, 200);
  h.clock().AdvanceUs(10'000'000);  // calls made after the switch are logged
  const std::string random = secret_.substr(4);
  std::string upper = secret_;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  json call = Call("back-to-back");
  call["path"] = "/r?a=" + secret_ + secret_ + "&b=klw_" + random + "&c=" + upper;
  std::string many;
  while (many.size() < 4200) many += "klk_a ";
  call["request"] = {{"headers", {{"X-Other", secret_ + secret_}}},
                     {"body_excerpt", std::string(4090, 'x') + secret_}};
  call["response"] = {{"body_excerpt", many}};
  ASSERT_EQ(h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump()).status, 200);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  const auto& c = std::get<ApiCallRecorded>(events->at(0).body);
  EXPECT_EQ(c.path, "/r?a=klk_[REDACTED]klk_[REDACTED]&b=klw_[REDACTED]&c=KLK_[REDACTED]");
  EXPECT_EQ(c.request.headers[0].value, "klk_[REDACTED]klk_[REDACTED]");
  // Redacted before the cut: the secret the cut would have split is gone.
  EXPECT_EQ(c.request.body_excerpt, std::string(4090, 'x') + "klk_[R");
  EXPECT_EQ(c.response.body_excerpt.size(), kBodyExcerptBytesMax);
  EXPECT_TRUE(c.response.body_excerpt.starts_with("klk_[REDACTED] klk_[REDACTED] "));
}

TEST_F(DataPlaneTest, AHeaderNameThatIsNoHttpTokenIsRefused) {
  for (const char* name : {"Authorization ", "", "x:y", "a b"}) {
    json call = Call("bad-name");
    call["request"] = {{"headers", {{name, "Bearer " + secret_}}}};
    auto r = h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump());
    EXPECT_EQ(r.status, 400) << name;
    EXPECT_EQ(r.body["error"]["field"], "calls[0].request.headers") << r.raw;
  }
}

TEST_F(DataPlaneTest, DenialsAreRecordedAndAggregated) {
  for (int i = 0; i < 50; i++) Authorize("klk_nobody" + std::to_string(i), "203.0.113.9");
  for (int i = 0; i < 5; i++) Authorize(secret_, "198.51.100.1");
  for (int i = 0; i < 10; i++) Authorize(secret_, "203.0.113.9");  // 3 allowed, 7 rate limited
  uint64_t head = h.ledger().head().sequence;
  ASSERT_TRUE(h.service().data_plane().FlushDenials().ok());
  auto events = h.ledger().ReadRange(head + 1, 100);
  ASSERT_TRUE(events.ok());
  std::map<DenialReason, uint64_t> by_reason;
  for (const auto& e : *events) {
    const auto* d = std::get_if<AuthorizationDenied>(&e.body);
    ASSERT_NE(d, nullptr);
    by_reason[d->reason] += d->count;
    if (d->reason == DenialReason::kUnknownKey) {
      EXPECT_TRUE(d->key_id.empty());
      EXPECT_TRUE(d->client_ip.empty());  // floods of unknown keys keep no per-request data
    } else {
      EXPECT_EQ(d->key_id, key_);
      EXPECT_EQ(d->workspace_id, ws_);
    }
  }
  // 50 unknown-key refusals became one event; each key/reason pair one event.
  EXPECT_EQ(events->size(), 3u);
  EXPECT_EQ(by_reason[DenialReason::kUnknownKey], 50u);
  EXPECT_EQ(by_reason[DenialReason::kIpNotAllowed], 5u);
  EXPECT_EQ(by_reason[DenialReason::kRateLimited], 7u);
  // Nothing pending: a second flush appends nothing.
  head = h.ledger().head().sequence;
  ASSERT_TRUE(h.service().data_plane().FlushDenials().ok());
  EXPECT_EQ(h.ledger().head().sequence, head);
}

// One denial event counts all its refusals at its first refusal's time, so
// refusals of one key on either side of a minute's end are two events.
TEST_F(DataPlaneTest, DenialsOfTwoMinutesAreTwoEvents) {
  const int64_t minute_end = h.clock().NowUs() - h.clock().NowUs() % 60'000'000 + 60'000'000;
  // Read first: the background flusher may append some of them before the flush below.
  const uint64_t head = h.ledger().head().sequence;
  h.clock().SetUs(minute_end - 400'000);
  Authorize(secret_, "198.51.100.1");
  Authorize(secret_, "198.51.100.1");
  h.clock().SetUs(minute_end + 300'000);
  Authorize(secret_, "198.51.100.1");
  ASSERT_TRUE(h.service().data_plane().FlushDenials().ok());
  auto events = h.ledger().ReadRange(head + 1, 100);
  ASSERT_TRUE(events.ok());
  std::map<int64_t, uint64_t> count_at;
  for (const auto& e : *events) {
    const auto* d = std::get_if<AuthorizationDenied>(&e.body);
    ASSERT_NE(d, nullptr);
    count_at[d->occurred_at_us] += d->count;
  }
  EXPECT_EQ(count_at, (std::map<int64_t, uint64_t>{{minute_end - 400'000, 2},
                                                   {minute_end + 300'000, 1}}));
}

// Gateway mode at the handler level: what the hooks decide and record,
// without sockets (the relay itself is covered by the black-box tests).
HttpRequest GatewayHead(const std::string& secret, const std::string& origin) {
  HttpRequest head;
  head.method = "POST";
  head.target = "/render?w=64";
  head.remote_ip = "203.0.113.9";
  if (!secret.empty()) head.headers.emplace_back("authorization", "Bearer " + secret);
  if (!origin.empty()) head.headers.emplace_back("origin", origin);
  head.headers.emplace_back("content-type", "application/json");
  return head;
}

std::string FieldOf(const std::vector<std::pair<std::string, std::string>>& fields,
                    const std::string& name) {
  for (const auto& [k, v] : fields) {
    if (k == name) return v;
  }
  return "";
}

TEST_F(DataPlaneTest, GatewayHooksRelayAuthorizedRequestsAndRecordEachOnce) {
  ProxyHooks hooks = h.service().GatewayHooks();
  EXPECT_TRUE(hooks.is_own_target("/v1/authorize"));
  EXPECT_TRUE(hooks.is_own_target("/healthz?x"));
  EXPECT_FALSE(hooks.is_own_target("/v1render"));
  EXPECT_FALSE(hooks.is_own_target("/render"));

  ProxyAdmission admitted = hooks.admit(GatewayHead(secret_, "https://app.example.com"));
  ASSERT_TRUE(admitted.relay) << admitted.answer.body;
  EXPECT_EQ(admitted.remove_request_headers, std::vector<std::string>{"authorization"});
  EXPECT_EQ(FieldOf(admitted.set_request_headers, "x-keyledger-key-id"), key_);
  EXPECT_EQ(FieldOf(admitted.set_response_headers, "ratelimit-limit"), "3");
  EXPECT_EQ(FieldOf(admitted.set_response_headers, "access-control-allow-origin"),
            "https://app.example.com");
  EXPECT_EQ(admitted.capture_bytes_max, 0u);  // logging is off
  const std::string request_id = FieldOf(admitted.set_request_headers, "x-request-id");
  EXPECT_EQ(h.service().data_plane().calls_pending(), 1u);  // reserved before the relay

  ProxyExchange exchange;
  exchange.status = 201;
  exchange.latency_us = 12'000;
  exchange.request_body_bytes = 10;
  exchange.response_body_bytes = 2048;
  admitted.on_done(exchange);
  const uint64_t head_before = h.ledger().head().sequence;
  ASSERT_TRUE(h.service().data_plane().FlushCalls().ok());
  EXPECT_EQ(h.service().data_plane().calls_pending(), 0u);
  EXPECT_EQ(h.ledger().head().sequence, head_before + 1);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  const auto& call = std::get<ApiCallRecorded>(events->at(0).body);
  EXPECT_EQ(call.request_id, request_id);
  EXPECT_EQ(call.status, 201);
  EXPECT_EQ(call.units, 1u);
  EXPECT_EQ(call.latency_us, 12'000u);
  EXPECT_EQ(call.path, "/render?w=64");
  EXPECT_EQ(call.client_ip, "203.0.113.9");
  EXPECT_EQ(call.response_bytes, 2048u);
  EXPECT_FALSE(call.logged);
}

TEST_F(DataPlaneTest, GatewayHooksAnswerRefusalsAndPreflightsThemselves) {
  ProxyHooks hooks = h.service().GatewayHooks();
  ProxyAdmission no_key = hooks.admit(GatewayHead("", "https://app.example.com"));
  EXPECT_FALSE(no_key.relay);
  EXPECT_EQ(no_key.answer.status, 401);
  ProxyAdmission wrong_origin = hooks.admit(GatewayHead(secret_, "https://evil.test"));
  EXPECT_FALSE(wrong_origin.relay);
  EXPECT_EQ(wrong_origin.answer.status, 403);
  EXPECT_EQ(FieldOf(wrong_origin.answer.headers, "access-control-allow-origin"), "");
  EXPECT_EQ(h.service().data_plane().calls_pending(), 0u);

  HttpRequest preflight = GatewayHead("", "https://app.example.com");
  preflight.method = "OPTIONS";
  preflight.headers.emplace_back("access-control-request-method", "POST");
  ProxyAdmission answered = hooks.admit(preflight);
  EXPECT_FALSE(answered.relay);
  EXPECT_EQ(answered.answer.status, 204);
  EXPECT_EQ(FieldOf(answered.answer.headers, "access-control-allow-origin"),
            "https://app.example.com");
  // The open group admits every origin, so a preflight from anywhere passes;
  // the request that follows is checked against its key's own group.
  preflight.headers[1].second = "https://elsewhere.test";
  EXPECT_EQ(hooks.admit(preflight).answer.status, 204);
  preflight.headers.back().second = "TRACE";
  EXPECT_EQ(hooks.admit(preflight).answer.status, 403);
}

std::shared_ptr<const SecurityRules> Trusted(const std::vector<std::string>& cidrs) {
  auto rules = SecurityRules::Compile(cidrs, {});
  EXPECT_TRUE(rules.ok()) << rules.status().ToString();
  return std::make_shared<const SecurityRules>(std::move(rules).value());
}

HttpRequest FromPeer(const std::string& peer, const std::vector<std::string>& forwarded_for) {
  HttpRequest head;
  head.remote_ip = peer;
  for (const auto& value : forwarded_for) head.headers.emplace_back("x-forwarded-for", value);
  return head;
}

TEST(GatewayClientIpTest, BelievesForwardedForOnlyFromTrustedProxies) {
  const auto lb = Trusted({"10.0.0.0/8", "fd00::/8"});
  // No trusted proxies, or an untrusted peer: the peer, whatever the header says.
  EXPECT_EQ(GatewayClientIp(FromPeer("203.0.113.9", {"198.51.100.1"}), nullptr), "203.0.113.9");
  EXPECT_EQ(GatewayClientIp(FromPeer("203.0.113.9", {"198.51.100.1"}), lb.get()), "203.0.113.9");
  // A trusted peer: the rightmost untrusted address; what the client wrote
  // further left (a spoofing attempt) does not count.
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"1.1.1.1, 198.51.100.7, 10.9.9.9"}), lb.get()),
            "198.51.100.7");
  // Several headers count as one list, in order; spaces and tabs are trimmed.
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"1.1.1.1", "\t2001:DB8::7 ,10.0.0.1"}), lb.get()),
            "2001:db8::7");
  // IPv6 proxies; an IPv4-mapped peer is the IPv4 address.
  EXPECT_EQ(GatewayClientIp(FromPeer("fd00::1", {"203.0.113.5"}), lb.get()), "203.0.113.5");
  EXPECT_EQ(GatewayClientIp(FromPeer("::ffff:10.0.0.7", {"203.0.113.6"}), lb.get()), "203.0.113.6");
  // No header, or only proxies: the last trusted hop.
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {}), lb.get()), "10.1.2.3");
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"10.0.0.4, 10.0.0.2"}), lb.get()), "10.0.0.4");
  // An entry that names no address: the client is unknown, never the proxy
  // (whose range a security group may allow).
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"198.51.100.7, unknown, 10.0.0.2"}), lb.get()),
            kUnknownClientIp);
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"[2001:db8::1"}), lb.get()), kUnknownClientIp);
  // Ports some proxies add are dropped.
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"203.0.113.9:51234"}), lb.get()), "203.0.113.9");
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"[2001:DB8::1]:443"}), lb.get()), "2001:db8::1");
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {"[2001:db8::2]"}), lb.get()), "2001:db8::2");
  // Only the last kForwardedForHopsMax entries are looked at.
  std::string hops = "198.51.100.99";
  for (size_t i = 0; i < kForwardedForHopsMax; i++) hops += ", 10.0.0." + std::to_string(i + 1);
  EXPECT_EQ(GatewayClientIp(FromPeer("10.1.2.3", {hops}), lb.get()), "10.0.0.1");
}

TEST(GatewayClientIpTest, TheGatewayAuthorizesAndRecordsTheForwardedClient) {
  ServiceOptions options;
  options.trusted_proxies = Trusted({"10.0.0.0/8"});
  ServiceHarness h(42, options);
  const std::string ws = h.CreateWorkspace();
  const std::string group = h.CreateGroup(ws, {{"name", "g"}, {"ip_allow", {"203.0.113.0/24"}}});
  auto [key, secret] = h.CreateKey(ws, group);
  ProxyHooks hooks = h.service().GatewayHooks();
  HttpRequest via_lb = GatewayHead(secret, "");
  via_lb.remote_ip = "10.0.0.2";  // the load balancer, outside the group
  via_lb.headers.emplace_back("x-forwarded-for", "203.0.113.40");
  ProxyAdmission admitted = hooks.admit(via_lb);
  ASSERT_TRUE(admitted.relay) << admitted.answer.body;
  ProxyExchange exchange;
  exchange.status = 200;
  admitted.on_done(exchange);
  ASSERT_TRUE(h.service().data_plane().FlushCalls().ok());
  auto events = h.ledger().ReadStream("calls/" + key, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(0).body).client_ip, "203.0.113.40");
  // The same header from a client that is not a trusted proxy changes nothing.
  HttpRequest direct = via_lb;
  direct.remote_ip = "198.51.100.3";
  ProxyAdmission refused = hooks.admit(direct);
  EXPECT_FALSE(refused.relay);
  EXPECT_EQ(refused.answer.status, 403);
}

TEST_F(DataPlaneTest, QueuedCallThatCanNeverBeRecordedIsDroppedWithoutHoldingUpTheRest) {
  DataPlane& dp = h.service().data_plane();
  CallReport good;
  good.call.request_id = "q-good";
  good.call.key_id = key_;
  good.call.occurred_at_us = h.clock().NowUs();
  good.call.status = 200;
  CallReport bad = good;
  bad.call.request_id = "q-bad";
  bad.call.key_id = "key_unknown";  // refused by RecordCalls, now and on every retry
  ASSERT_TRUE(dp.ReserveCall());
  ASSERT_TRUE(dp.ReserveCall());
  dp.QueueReservedCall(bad);
  dp.QueueReservedCall(good);
  ASSERT_TRUE(dp.FlushCalls().ok());
  EXPECT_EQ(dp.calls_pending(), 0u);
  EXPECT_EQ(dp.calls_dropped(), 1u);
  auto events = h.ledger().ReadStream("calls/" + key_, 1, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(std::get<ApiCallRecorded>(events->at(0).body).request_id, "q-good");
}

// A workspace with `tps_limit`, an open group and one key, and the gateway's
// hooks, on a Service whose recording queue holds `queued_calls_max` calls.
struct GatewayWorld {
  GatewayWorld(size_t queued_calls_max, uint32_t tps_limit) : h(7, Options(queued_calls_max)) {
    ws = h.CreateWorkspace();
    EXPECT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, json{{"tps_limit", tps_limit}}.dump()).status,
              200);
    group = h.CreateGroup(ws, {{"name", "open"}});
    std::tie(key, secret) = h.CreateKey(ws, group);
    hooks = h.service().GatewayHooks();
  }
  static ServiceOptions Options(size_t queued_calls_max) {
    ServiceOptions options;
    options.data_plane.queued_calls_max = queued_calls_max;
    return options;
  }
  // The gateway's admission of a request with the key, from a fixed address.
  ProxyAdmission Admit() { return hooks.admit(GatewayHead(secret, "")); }
  // The calls recorded for the key, oldest first.
  std::vector<ApiCallRecorded> Recorded() {
    auto events = h.ledger().ReadStream("calls/" + key, 1, 100);
    EXPECT_TRUE(events.ok());
    std::vector<ApiCallRecorded> out;
    for (const auto& e : events.ok() ? *events : std::vector<Event>{}) {
      out.push_back(std::get<ApiCallRecorded>(e.body));
    }
    return out;
  }

  ServiceHarness h;
  std::string ws, group, key, secret;
  ProxyHooks hooks;
};

TEST(DataPlaneGatewayQueueTest, RefusesToRelayWhenRecordingIsFullAndLosesNothing) {
  GatewayWorld w(/*queued_calls_max=*/2, /*tps_limit=*/100);
  ProxyAdmission first = w.Admit();
  ProxyAdmission second = w.Admit();
  ASSERT_TRUE(first.relay && second.relay);
  ProxyAdmission third = w.Admit();
  EXPECT_FALSE(third.relay);
  EXPECT_EQ(third.answer.status, 503);
  EXPECT_EQ(FieldOf(third.answer.headers, "retry-after"), "1");
  ProxyExchange done;
  done.status = 200;
  first.on_done(done);
  second.on_done(done);
  ASSERT_TRUE(w.h.service().data_plane().FlushCalls().ok());
  EXPECT_TRUE(w.Admit().relay);  // room again
  EXPECT_EQ(w.Recorded().size(), 2u);
}

// A relayed call is logged only if logging was on when it was made (when it
// was authorized), whatever the switch says when its record is written.
TEST(DataPlaneGatewayQueueTest, ARelayedCallIsLoggedOnlyIfMadeWhileLoggingWasOn) {
  GatewayWorld w(/*queued_calls_max=*/100, /*tps_limit=*/10);
  const std::string path = "/v1/workspaces/" + w.ws + "/keys/" + w.key;
  ProxyExchange done;
  done.status = 200;
  ProxyAdmission made_while_off = w.Admit();
  ASSERT_TRUE(made_while_off.relay);
  // The switch in the same microsecond as the admission: only what the
  // gateway saw at authorization can tell that the call was made while off.
  ASSERT_EQ(w.h.Call("PATCH", path, R"({"logging":true})").status, 200);
  made_while_off.on_done(done);  // the upstream answers after the switch
  w.h.clock().AdvanceUs(1000);
  ProxyAdmission made_while_on = w.Admit();
  ASSERT_TRUE(made_while_on.relay);
  made_while_on.on_done(done);
  ASSERT_TRUE(w.h.service().data_plane().FlushCalls().ok());
  const std::vector<ApiCallRecorded> recorded = w.Recorded();
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_FALSE(recorded[0].logged);
  EXPECT_TRUE(recorded[1].logged);
}

// What the gateway records fits the limits RecordCalls checks: a request
// with an over-long Origin is recorded (cut), not dropped as unrecordable.
TEST(DataPlaneGatewayQueueTest, ARelayedCallWithALongOriginIsRecorded) {
  GatewayWorld w(/*queued_calls_max=*/100, /*tps_limit=*/10);
  ProxyAdmission admitted =
      w.hooks.admit(GatewayHead(w.secret, "https://" + std::string(3000, 'a') + ".example"));
  ASSERT_TRUE(admitted.relay);  // the open group restricts no origin
  ProxyExchange done;
  done.status = 200;
  admitted.on_done(done);
  ASSERT_TRUE(w.h.service().data_plane().FlushCalls().ok());
  EXPECT_EQ(w.h.service().data_plane().calls_dropped(), 0u);
  const std::vector<ApiCallRecorded> recorded = w.Recorded();
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_EQ(recorded[0].origin.size(), kCallOriginBytesMax);
}

TEST(DataPlaneGatewayQueueTest, ARequestRefusedForLackOfRecordingRoomKeepsItsRateAllowance) {
  GatewayWorld w(/*queued_calls_max=*/1, /*tps_limit=*/2);
  ProxyAdmission first = w.Admit();
  ASSERT_TRUE(first.relay);
  for (int i = 0; i < 3; i++) {  // the clock stands still: all in one second
    ProxyAdmission full = w.Admit();
    EXPECT_FALSE(full.relay);
    EXPECT_EQ(full.answer.status, 503);
  }
  ProxyExchange done;
  done.status = 200;
  first.on_done(done);
  ASSERT_TRUE(w.h.service().data_plane().FlushCalls().ok());
  // A refusal gives its slot back: an unknown key's 401 leaves room for the
  // next allowed call.
  ProxyAdmission unknown = w.hooks.admit(GatewayHead("kl_unknown", ""));
  EXPECT_EQ(unknown.answer.status, 401);
  EXPECT_EQ(w.h.service().data_plane().calls_pending(), 0u);
  // The three 503s used none of the burst of 2: the second call still passes,
  // and only the third is over the limit.
  ProxyAdmission second = w.Admit();
  ASSERT_TRUE(second.relay);
  second.on_done(done);
  ASSERT_TRUE(w.h.service().data_plane().FlushCalls().ok());
  EXPECT_EQ(w.Admit().answer.status, 429);
  EXPECT_EQ(w.Recorded().size(), 2u);
}

}  // namespace
}  // namespace keyledger
