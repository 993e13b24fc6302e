// Alarm evaluation (the pure M-of-N decision and the Service's evaluation
// round over the metrics projection) and notification delivery (outbox,
// retries, restarts), with a scripted in-process notifier and a manual clock.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <deque>
#include <set>
#include <functional>
#include <mutex>

#include "billing/calendar.h"
#include "projections/alarm_eval.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

constexpr int64_t kMinuteUs = 60'000'000;

// ---- EvaluateAlarm -------------------------------------------------------------

AlarmSpec Spec(uint32_t n, uint32_t m, MissingData missing, Comparator c = Comparator::kGreater,
               int64_t threshold = 10'000'000) {
  AlarmSpec s;
  s.comparator = c;
  s.threshold_micros = threshold;
  s.evaluation_periods = n;
  s.datapoints_to_alarm = m;
  s.missing_data = missing;
  return s;
}

constexpr int64_t kHigh = 20'000'000;  // breaches "> 10"
constexpr int64_t kLow = 5'000'000;
const std::optional<int64_t> kNone;

TEST(EvaluateAlarm, MOutOfN) {
  auto s = Spec(3, 2, MissingData::kMissing);
  EXPECT_EQ(EvaluateAlarm(s, AlarmState::kOk, {kHigh, kLow, kHigh}).state, AlarmState::kAlarm);
  EXPECT_EQ(EvaluateAlarm(s, AlarmState::kAlarm, {kHigh, kLow, kLow}).state, AlarmState::kOk);
  auto d = EvaluateAlarm(s, AlarmState::kOk, {kLow, kHigh, kHigh});
  EXPECT_EQ(d.value_micros, kHigh);  // the newest datapoint
  EXPECT_EQ(d.reason, "2 of the last 3 datapoints breached (> 10, 2 needed)");
}

TEST(EvaluateAlarm, MissingDataTreatments) {
  const std::vector<std::optional<int64_t>> one_low = {kNone, kNone, kLow};
  const std::vector<std::optional<int64_t>> none = {kNone, kNone, kNone};
  // missing: fewer than M datapoints present -> INSUFFICIENT_DATA.
  EXPECT_EQ(EvaluateAlarm(Spec(3, 2, MissingData::kMissing), AlarmState::kAlarm, one_low).state,
            AlarmState::kInsufficientData);
  EXPECT_EQ(EvaluateAlarm(Spec(3, 1, MissingData::kMissing), AlarmState::kAlarm, one_low).state,
            AlarmState::kOk);
  // ignore: the state is kept.
  EXPECT_EQ(EvaluateAlarm(Spec(3, 2, MissingData::kIgnore), AlarmState::kAlarm, none).state,
            AlarmState::kAlarm);
  EXPECT_EQ(EvaluateAlarm(Spec(3, 2, MissingData::kIgnore), AlarmState::kOk, one_low).state,
            AlarmState::kOk);
  // breaching: missing counts against; not_breaching: for.
  EXPECT_EQ(EvaluateAlarm(Spec(3, 2, MissingData::kBreaching), AlarmState::kOk, one_low).state,
            AlarmState::kAlarm);
  EXPECT_EQ(EvaluateAlarm(Spec(3, 2, MissingData::kNotBreaching), AlarmState::kAlarm, none).state,
            AlarmState::kOk);
}

TEST(EvaluateAlarm, Comparators) {
  EXPECT_TRUE(Breaches(Comparator::kGreater, 11, 10));
  EXPECT_FALSE(Breaches(Comparator::kGreater, 10, 10));
  EXPECT_TRUE(Breaches(Comparator::kGreaterOrEqual, 10, 10));
  EXPECT_TRUE(Breaches(Comparator::kLess, 9, 10));
  EXPECT_FALSE(Breaches(Comparator::kLess, 10, 10));
  EXPECT_TRUE(Breaches(Comparator::kLessOrEqual, 10, 10));
}

TEST(EvaluateAlarm, DatapointsFromBuckets) {
  MetricsBucket b;
  EXPECT_FALSE(AlarmDatapoint(AlarmMetric::kCalls, b).has_value());  // no request: missing
  b.calls = 4;
  b.errors_5xx = 1;
  b.auth_denied = 1;
  b.units = 3;
  for (uint64_t us : {1000, 2000, 3000, 250'000}) b.latency.Record(us);
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kCalls, b), 4'000'000);
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kErrors, b), 2'000'000);
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kErrorRate, b), 400'000);  // 2 of 5 requests
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kUnits, b), 3'000'000);
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kLatencyP95Ms, b), 250'000'000);  // 250 ms
  MetricsBucket refused_only;
  refused_only.auth_denied = 2;
  EXPECT_FALSE(AlarmDatapoint(AlarmMetric::kLatencyP95Ms, refused_only).has_value());
  EXPECT_EQ(AlarmDatapoint(AlarmMetric::kErrorRate, refused_only), 1'000'000);
}

TEST(EvaluateAlarm, FormatsMicros) {
  EXPECT_EQ(FormatMicros(1'000'000), "1");
  EXPECT_EQ(FormatMicros(50'000), "0.05");
  EXPECT_EQ(FormatMicros(-2'500'000), "-2.5");
  EXPECT_EQ(FormatMicros(-500'000), "-0.5");
  EXPECT_EQ(FormatMicros(0), "0");
}

// The decision equals a direct count over the datapoints (a model written
// from the rules in docs/api.md, not from the implementation).
RC_GTEST_PROP(EvaluateAlarm, EqualsCountingModel, ()) {
  const auto n = *rc::gen::inRange<uint32_t>(1, 8);
  const auto m = *rc::gen::inRange<uint32_t>(1, n + 1);
  const auto missing = static_cast<MissingData>(*rc::gen::inRange(0, 4));
  const auto current = static_cast<AlarmState>(*rc::gen::inRange(0, 3));
  std::vector<std::optional<int64_t>> points;
  for (uint32_t i = 0; i < n; i++) {
    if (*rc::gen::arbitrary<bool>()) {
      points.push_back(*rc::gen::inRange<int64_t>(0, 20'000'001));
    } else {
      points.push_back(std::nullopt);
    }
  }
  auto spec = Spec(n, m, missing);
  uint32_t bad = 0, present = 0, none = 0;
  for (const auto& p : points) {
    if (!p) {
      none++;
    } else {
      present++;
      bad += *p > spec.threshold_micros;
    }
  }
  AlarmState expected;
  if (missing == MissingData::kBreaching) bad += none;
  if (missing == MissingData::kBreaching || missing == MissingData::kNotBreaching) present += none;
  if (bad >= m) {
    expected = AlarmState::kAlarm;
  } else if (present < m) {
    expected = missing == MissingData::kIgnore ? current : AlarmState::kInsufficientData;
  } else {
    expected = AlarmState::kOk;
  }
  RC_ASSERT(EvaluateAlarm(spec, current, points).state == expected);
}

// ---- The Service's evaluation and delivery ---------------------------------------

// Records every message; answers from a script (failures first, then success).
class ScriptedNotifier final : public Notifier {
 public:
  DeliveryResult SendWebhook(const WebhookMessage& m) override {
    if (on_webhook) on_webhook();  // outside mu_: it may call the Service
    std::lock_guard<std::mutex> lock(mu_);
    webhooks.push_back(m);
    if (dead_urls.contains(m.url)) return DeliveryResult{false, 0, "timed out"};
    return Next();
  }
  DeliveryResult SendEmail(const EmailMessage& m) override {
    std::lock_guard<std::mutex> lock(mu_);
    emails.push_back(m);
    if (relay_down) return DeliveryResult{false, 0, "smtp: could not connect"};
    return Next();
  }
  void FailNext(int count, uint32_t status) {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < count; i++) script_.push_back(status);
  }
  std::vector<WebhookMessage> webhooks;
  std::vector<EmailMessage> emails;
  std::function<void()> on_webhook;  // runs as each webhook is sent
  std::set<std::string> dead_urls;   // webhooks to these get no answer
  bool relay_down = false;           // e-mails fail

 private:
  DeliveryResult Next() {
    if (script_.empty()) return DeliveryResult{true, 200, ""};
    uint32_t status = script_.front();
    script_.pop_front();
    return DeliveryResult{false, status, std::string("HTTP ").append(std::to_string(status))};
  }
  std::mutex mu_;
  std::deque<uint32_t> script_;
};

ServiceOptions EngineOptions() {
  ServiceOptions o;
  o.alarms.settle_us = 0;
  o.alarms.retry_base_us = 10'000'000;  // 10 s, then 20 s, 40 s, ...
  o.alarms.retry_window_us = 3600'000'000;
  // The scripted notifier answers at once: count every failure as slow.
  o.alarms.slow_attempt_us = 0;
  return o;
}

class AlarmEngineTest : public ::testing::Test {
 protected:
  explicit AlarmEngineTest(ServiceOptions options = EngineOptions()) : h(42, options, &notifier) {
    // Start on a minute boundary so periods are easy to reason about (ahead,
    // never back: the ledger keeps recorded_at monotonic).
    h.clock().SetUs((h.clock().NowUs() / kMinuteUs + 1) * kMinuteUs);
    ws_ = h.CreateWorkspace();
    key_ = h.CreateKey(ws_, h.CreateGroup(ws_)).first;
    base_ = "/v1/workspaces/" + ws_ + "/keys/" + key_ + "/alarms";
  }
  // "more than 10 calls a minute, in 2 of the last 3 minutes", to a webhook
  // and an e-mail address.
  std::string CreateAlarm(json overrides = json::object()) {
    json rule = {{"name", "busy"}, {"metric", "calls"}, {"comparator", ">"}, {"threshold", 10},
                 {"period_seconds", 60}, {"evaluation_periods", 3}, {"datapoints_to_alarm", 2},
                 {"missing_data", "not_breaching"},
                 {"channels", {{{"type", "webhook"}, {"url", "https://hooks.example.com/kl"},
                                {"secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}},
                               {{"type", "email"}, {"to", "ops@example.com"}}}}};
    rule.update(overrides);
    auto r = h.Call("POST", base_, rule.dump());
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  // The same rule with one webhook channel alone.
  std::string CreateWebhookAlarm() {
    return CreateAlarm(
        {{"channels", {{{"type", "webhook"}, {"url", "https://hooks.example.com/kl"}}}}});
  }
  // Two alarms on the default webhook, both breached: two entries due.
  void TwoNotificationsToOneReceiver() {
    CreateWebhookAlarm();
    CreateWebhookAlarm();
    Breach();
    ASSERT_EQ(Evaluate(), 2u);
  }
  // 20 calls in each of the last two minutes: the default rule breaches.
  void Breach() {
    RecordCalls(1, 20);
    RecordCalls(2, 20);
  }
  // Records `count` calls (status `status`) in the minute that starts
  // `minutes_ago` minutes before the current minute, and folds them.
  void RecordCalls(int minutes_ago, int count, int status = 200) {
    const int64_t at_us = h.clock().NowUs() / kMinuteUs * kMinuteUs - minutes_ago * kMinuteUs + 1'000'000;
    json calls = json::array();
    for (int i = 0; i < count; i++) {
      calls.push_back({{"request_id", std::to_string(next_request_++)}, {"key_id", key_},
                       {"occurred_at", FormatRfc3339(at_us)}, {"status", status}});
    }
    auto r = h.Call("POST", "/v1/calls", json{{"calls", calls}}.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    ASSERT_TRUE(h.calls().CatchUp().ok());
  }
  size_t Evaluate() {
    auto n = h.service().EvaluateAlarms();
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    return n.ok() ? *n : 0;
  }
  size_t Deliver() {
    auto n = h.service().DeliverNotifications();
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    return n.ok() ? *n : 0;
  }
  json Alarm(const std::string& id) { return h.Call("GET", base_ + "/" + id).body; }
  json History(const std::string& id) {
    auto r = h.Call("GET", base_ + "/" + id + "/history");
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["events"];
  }
  static std::vector<std::string> Types(const json& events) {
    std::vector<std::string> out;
    for (const auto& e : events) out.push_back(e["type"]);
    return out;
  }

  ScriptedNotifier notifier;
  ServiceHarness h;
  std::string ws_, key_, base_;
  int next_request_ = 0;
};

TEST_F(AlarmEngineTest, BreachNotifiesOnceAndRecoveryOnceResolved) {
  std::string id = CreateAlarm();
  EXPECT_EQ(Evaluate(), 1u);  // INSUFFICIENT_DATA -> OK (not_breaching): no notification
  EXPECT_EQ(Alarm(id)["state"], "OK");
  EXPECT_EQ(Deliver(), 0u);

  Breach();
  EXPECT_EQ(Evaluate(), 1u);
  json a = Alarm(id);
  EXPECT_EQ(a["state"], "ALARM");
  EXPECT_EQ(a["pending_notifications"], 2);
  EXPECT_EQ(Deliver(), 2u);
  ASSERT_EQ(notifier.webhooks.size(), 1u);
  ASSERT_EQ(notifier.emails.size(), 1u);
  json body = json::parse(notifier.webhooks[0].body_json);
  EXPECT_EQ(body["type"], "alarm.triggered");
  EXPECT_EQ(body["data"]["state"], "ALARM");
  EXPECT_EQ(body["data"]["value"], 20);
  EXPECT_EQ(body["data"]["key_name"], "render");
  EXPECT_NE(notifier.emails[0].subject.find("ALARM: busy"), std::string::npos);
  EXPECT_NE(notifier.emails[0].text_body.find("Threshold:  > 10"), std::string::npos);

  // The breach holds for several periods: no further notification.
  for (int minute = 0; minute < 3; minute++) {
    h.clock().AdvanceUs(kMinuteUs);
    RecordCalls(1, 30);
    EXPECT_EQ(Evaluate(), 0u);
    EXPECT_EQ(Deliver(), 0u);
  }
  // Traffic stops: two quiet minutes make 2 of 3 not breaching.
  h.clock().AdvanceUs(2 * kMinuteUs);
  EXPECT_EQ(Evaluate(), 1u);
  EXPECT_EQ(Alarm(id)["state"], "OK");
  EXPECT_EQ(Deliver(), 2u);
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_EQ(json::parse(notifier.webhooks[1].body_json)["type"], "alarm.resolved");
  EXPECT_NE(notifier.emails[1].subject.find("RESOLVED: busy"), std::string::npos);
  EXPECT_EQ(Evaluate(), 0u);
  EXPECT_EQ(Deliver(), 0u);
  EXPECT_EQ(Types(History(id)),
            (std::vector<std::string>{"created", "state_changed", "state_changed",
                                      "notification_delivered", "notification_delivered",
                                      "state_changed", "notification_delivered",
                                      "notification_delivered"}));
}

TEST_F(AlarmEngineTest, FailedDeliveriesAreRetriedWithBackoffAndDeliveredOnce) {
  std::string id = CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);  // straight to ALARM
  notifier.FailNext(2, 503);
  EXPECT_EQ(Deliver(), 1u);   // attempt 1 fails
  EXPECT_EQ(Deliver(), 0u);   // not due yet
  h.clock().AdvanceUs(10'000'000);  // first wait: 5..10 s
  EXPECT_EQ(Deliver(), 1u);   // attempt 2 fails
  h.clock().AdvanceUs(10'000'000);  // second wait: 10..20 s
  size_t third = Deliver();
  if (third == 0) {
    h.clock().AdvanceUs(10'000'000);
    third = Deliver();
  }
  EXPECT_EQ(third, 1u);       // attempt 3 succeeds
  h.clock().AdvanceUs(3600'000'000);
  EXPECT_EQ(Deliver(), 0u);   // nothing left
  ASSERT_EQ(notifier.webhooks.size(), 3u);
  // The same webhook-id and body on every attempt.
  for (const auto& w : notifier.webhooks) {
    EXPECT_EQ(w.id, notifier.webhooks[0].id);
    EXPECT_EQ(w.body_json, notifier.webhooks[0].body_json);
  }
  json history = History(id);
  auto types = Types(history);
  EXPECT_EQ(types, (std::vector<std::string>{"created", "state_changed", "notification_failed",
                                             "notification_failed", "notification_delivered"}));
  EXPECT_EQ(history[2]["http_status"], 503);
  EXPECT_EQ(history[2]["attempt"], 1);
  EXPECT_FALSE(history[2]["next_attempt_at"].is_null());
  EXPECT_EQ(history[4]["attempt"], 3);
  EXPECT_EQ(history[4]["notification_id"], notifier.webhooks[0].id);
}

// A retry says what the first attempt said: the rule and key as they were
// at the transition, though both changed since (receivers deduplicate on the
// webhook-id, so one id must carry one body).
// 410 Gone: the receiver wants no more, so the failure is final at once.
TEST_F(AlarmEngineTest, AReceiverAnsweringGoneIsNotRetried) {
  std::string id = CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.FailNext(1, 410);
  EXPECT_EQ(Deliver(), 1u);
  EXPECT_EQ(Alarm(id)["pending_notifications"], 0);
  json last = History(id).back();
  EXPECT_EQ(last["type"], "notification_failed");
  EXPECT_EQ(last["http_status"], 410);
  EXPECT_TRUE(last["next_attempt_at"].is_null());
  h.clock().AdvanceUs(3600'000'000LL);
  EXPECT_EQ(Deliver(), 0u);
  EXPECT_EQ(notifier.webhooks.size(), 1u);
}

TEST_F(AlarmEngineTest, RetriesSendTheMessageOfTheTransitionUnchanged) {
  std::string id = CreateAlarm();  // a webhook, then an e-mail
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.FailNext(2, 500);
  EXPECT_EQ(Deliver(), 2u);
  auto patched = h.Call("PATCH", base_ + "/" + id,
                        R"({"name":"renamed","metric":"error_rate","threshold":0.05})");
  ASSERT_EQ(patched.status, 200) << patched.raw;
  const std::string key_path = "/v1/workspaces/" + ws_ + "/keys/" + key_;
  ASSERT_EQ(h.Call("PATCH", key_path, R"({"name":"another name"})").status, 200);
  h.Open();  // and a restart: the outbox is reloaded from the key-state store
  h.clock().AdvanceUs(60'000'000);
  EXPECT_EQ(Deliver(), 2u);
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_EQ(notifier.webhooks[1].id, notifier.webhooks[0].id);
  EXPECT_EQ(notifier.webhooks[1].body_json, notifier.webhooks[0].body_json);
  const json body = json::parse(notifier.webhooks[0].body_json);
  EXPECT_EQ(body["data"]["alarm_name"], "busy");
  EXPECT_EQ(body["data"]["metric"], "calls");
  ASSERT_EQ(notifier.emails.size(), 2u);
  EXPECT_EQ(notifier.emails[1].subject, notifier.emails[0].subject);
  EXPECT_EQ(notifier.emails[1].text_body, notifier.emails[0].text_body);
}

// A "triggered" still being retried when the alarm resolves is not sent
// after the "resolved": the newer transition supersedes it.
TEST_F(AlarmEngineTest, ANewerTransitionSupersedesAnUndeliveredOlderOne) {
  std::string id = CreateWebhookAlarm();
  ASSERT_EQ(Evaluate(), 1u);  // -> OK
  Breach();
  ASSERT_EQ(Evaluate(), 1u);  // -> ALARM
  notifier.FailNext(1, 500);
  EXPECT_EQ(Deliver(), 1u);  // "triggered" failed, waits for its retry
  h.clock().AdvanceUs(3 * kMinuteUs);
  ASSERT_EQ(Evaluate(), 1u);  // quiet minutes: -> OK
  EXPECT_EQ(Alarm(id)["pending_notifications"], 1);
  h.clock().AdvanceUs(kMinuteUs);  // the old retry would be due by now
  EXPECT_EQ(Deliver(), 1u);
  EXPECT_EQ(Deliver(), 0u);
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_EQ(json::parse(notifier.webhooks[0].body_json)["type"], "alarm.triggered");
  EXPECT_EQ(json::parse(notifier.webhooks[1].body_json)["type"], "alarm.resolved");
}

// Queued notifications go only to channels the rule still has.
TEST_F(AlarmEngineTest, AChangedChannelDropsWhatWasQueuedForTheOldOne) {
  std::string id = CreateAlarm();  // a webhook and an e-mail address
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.FailNext(2, 500);
  EXPECT_EQ(Deliver(), 2u);  // both failed, both queued for a retry
  auto patched = h.Call("PATCH", base_ + "/" + id,
                        R"({"channels":[{"type":"email","to":"ops@example.com"},
                                        {"type":"webhook","url":"https://new.example.com/kl"}]})");
  ASSERT_EQ(patched.status, 200) << patched.raw;
  EXPECT_EQ(Alarm(id)["pending_notifications"], 1);  // the e-mail stays; the old URL goes
  h.clock().AdvanceUs(kMinuteUs);
  EXPECT_EQ(Deliver(), 1u);
  ASSERT_EQ(notifier.webhooks.size(), 1u);  // the failed attempt only
  ASSERT_EQ(notifier.emails.size(), 2u);
}

// The evaluation folds the calls recorded so far itself: a projection that
// lags (here: never caught up) does not make a rule look quiet.
TEST_F(AlarmEngineTest, EvaluationSeesCallsTheProjectionHadNotFoldedYet) {
  std::string id = CreateAlarm();
  for (int minutes_ago : {1, 2}) {
    json calls = json::array();
    const int64_t at_us = h.clock().NowUs() / kMinuteUs * kMinuteUs - minutes_ago * kMinuteUs;
    for (int i = 0; i < 20; i++) {
      const std::string request_id =
          "lag-" + std::to_string(minutes_ago) + "-" + std::to_string(i);
      calls.push_back({{"request_id", request_id}, {"key_id", key_},
                       {"occurred_at", FormatRfc3339(at_us + 1'000'000)}, {"status", 200}});
    }
    ASSERT_EQ(h.Call("POST", "/v1/calls", json{{"calls", calls}}.dump()).status, 200);
  }
  ASSERT_LT(h.calls().position(), h.ledger().head().sequence);
  EXPECT_EQ(Evaluate(), 1u);
  EXPECT_EQ(Alarm(id)["state"], "ALARM");
}

TEST_F(AlarmEngineTest, AWebhookUrlWithSpacesOrControlCharactersIsRefused) {
  for (const char* url :
       {"https://exa mple.com/", "https://example.com/\nx", "https://example.com/\tx"}) {
    json rule = {{"name", "n"}, {"metric", "calls"}, {"comparator", ">"}, {"threshold", 1},
                 {"period_seconds", 60}, {"evaluation_periods", 1},
                 {"channels", {{{"type", "webhook"}, {"url", url}}}}};
    auto r = h.Call("POST", base_, rule.dump());
    EXPECT_EQ(r.status, 400) << url;
    EXPECT_EQ(r.body["error"]["field"], "channels[0].url") << r.raw;
  }
}

// A receiver that does not answer costs one attempt per round, not one per
// entry: its other entries wait for the next round, others' go now.
TEST_F(AlarmEngineTest, AnUnansweringReceiverDoesNotHoldUpTheRound) {
  const std::string dead = "https://dead.example.com/kl";
  const std::string alive = "https://alive.example.com/kl";
  notifier.dead_urls = {dead};
  for (const std::string& url : {dead, dead, alive}) {
    CreateAlarm({{"channels", {{{"type", "webhook"}, {"url", url}}}}});
  }
  Breach();
  ASSERT_EQ(Evaluate(), 3u);
  EXPECT_EQ(Deliver(), 2u);  // one to the dead URL, one to the live one
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  size_t to_dead = 0;
  for (const auto& m : notifier.webhooks) to_dead += m.url == dead;
  EXPECT_EQ(to_dead, 1u);
  EXPECT_EQ(Deliver(), 1u);  // next round: the skipped one is due and tried
  EXPECT_EQ(notifier.webhooks.back().url, dead);
}

// A receiver that answers, but slowly with an error, also waits for the
// next round (every failure is slow under EngineOptions).
TEST_F(AlarmEngineTest, AReceiverAnsweringASlowErrorGetsOneAttemptARound) {
  TwoNotificationsToOneReceiver();
  notifier.FailNext(1, 500);
  EXPECT_EQ(Deliver(), 1u);
  EXPECT_EQ(Deliver(), 1u);  // the other one, next round (the failed one backs off)
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_NE(notifier.webhooks[0].id, notifier.webhooks[1].id);
}

// E-mails share one relay: after a failed one the others wait for the next
// round, and webhooks go on.
TEST_F(AlarmEngineTest, AFailedEmailHoldsBackOnlyEmails) {
  for (const char* to : {"a@example.com", "b@example.com"}) {
    CreateAlarm({{"channels", {{{"type", "email"}, {"to", to}}}}});
  }
  CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 3u);
  notifier.relay_down = true;
  EXPECT_EQ(Deliver(), 2u);
  EXPECT_EQ(notifier.emails.size(), 1u);
  EXPECT_EQ(notifier.webhooks.size(), 1u);
  EXPECT_EQ(Deliver(), 1u);  // the other e-mail; the failed one backs off
  EXPECT_EQ(notifier.emails.size(), 2u);
  EXPECT_NE(notifier.emails[0].to, notifier.emails[1].to);
}

// Entries given up unsent (past their retry window) neither count as a
// failure of their destination nor take the round's sends.
TEST_F(AlarmEngineTest, EntriesGivenUpUnsentHoldNothingBack) {
  std::string last;  // the alarm that comes last: it breaches only later
  for (int i = 0; i < 5; i++) {
    const std::string to = std::string("a").append(std::to_string(i)).append("@example.com");
    last = std::max(last, CreateAlarm({{"channels", {{{"type", "email"}, {"to", to}}}}}));
  }
  ASSERT_EQ(h.Call("PATCH", base_ + "/" + last,
                   json{{"threshold", 100},
                        {"channels", {{{"type", "email"}, {"to", "b@example.com"}}}}}
                       .dump())
                .status,
            200);
  Breach();
  ASSERT_EQ(Evaluate(), 5u);  // four breach; `last` goes to OK, notifying no one
  h.clock().AdvanceUs(3 * 3600'000'000LL);  // their entries are past the one-hour window
  RecordCalls(1, 200);
  RecordCalls(2, 200);
  ASSERT_EQ(Evaluate(), 1u);  // `last` breaches; the others were in alarm already
  EXPECT_EQ(Deliver(), 5u);   // four given up unsent, one sent
  ASSERT_EQ(notifier.emails.size(), 1u);
  EXPECT_EQ(notifier.emails[0].to, "b@example.com");
}

// Receivers on one host are one destination: one slow URL there holds the
// host's other URLs back for the round, not other hosts.
TEST_F(AlarmEngineTest, OneHostIsOneDestination) {
  const std::string a = "https://dead.example.com/a?t=1";
  const std::string b = "https://dead.example.com/b";
  notifier.dead_urls = {a, b};
  for (const std::string& url : {a, b}) {
    CreateAlarm({{"channels", {{{"type", "webhook"}, {"url", url}}}}});
  }
  CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 3u);
  EXPECT_EQ(Deliver(), 2u);  // one of the dead host's, and hooks.example.com's
  EXPECT_EQ(Deliver(), 1u);  // the other dead one, next round
}

ServiceOptions FastFailures() {
  ServiceOptions o = EngineOptions();
  o.alarms.slow_attempt_us = 2'000'000;  // the default: scripted answers are all fast
  return o;
}

class AlarmEngineFastFailureTest : public AlarmEngineTest {
 protected:
  AlarmEngineFastFailureTest() : AlarmEngineTest(FastFailures()) {}
};

// A receiver that refuses at once costs the round nothing: its other
// entries are tried in the same round.
TEST_F(AlarmEngineFastFailureTest, AFastRefusalHoldsNothingBack) {
  TwoNotificationsToOneReceiver();
  notifier.FailNext(1, 404);
  EXPECT_EQ(Deliver(), 2u);
  EXPECT_EQ(notifier.webhooks.size(), 2u);
}

ServiceOptions SmallRounds() {
  ServiceOptions o = EngineOptions();
  o.alarms.deliveries_per_round_max = 4;
  return o;
}

class AlarmEngineSmallRoundTest : public AlarmEngineTest {
 protected:
  AlarmEngineSmallRoundTest() : AlarmEngineTest(SmallRounds()) {}
};

// More entries due for one dead receiver than a round takes, ahead of
// another receiver's entry (entries come by alarm id): the round still
// reaches the other receiver.
TEST_F(AlarmEngineSmallRoundTest, ManyEntriesForADeadReceiverDoNotCrowdOutOthers) {
  const std::string dead = "https://dead.example.com/kl";
  notifier.dead_urls = {dead};
  std::string alive;  // the alarm that comes last: it notifies the live receiver
  for (int i = 0; i < 5; i++) {
    alive = std::max(alive, CreateAlarm({{"channels", {{{"type", "webhook"}, {"url", dead}}}}}));
  }
  ASSERT_EQ(h.Call("PATCH", base_ + "/" + alive,
                   json{{"channels", {{{"type", "webhook"}, {"url", "https://hooks.example.com/kl"}}}}}
                       .dump())
                .status,
            200);
  Breach();
  ASSERT_GE(Evaluate(), 5u);
  EXPECT_EQ(Deliver(), 2u);  // one to the dead receiver, then the live one
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_EQ(notifier.webhooks.back().url, "https://hooks.example.com/kl");
  EXPECT_EQ(Alarm(alive)["pending_notifications"], 0) << Alarm(alive).dump();
}

// A server down for longer than the retry window sends nothing old when it
// comes back: the entry is given up, recorded as a failure without a send.
TEST_F(AlarmEngineTest, AnEntryOlderThanTheRetryWindowIsGivenUpUnsent) {
  std::string id = CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  h.clock().AdvanceUs(3 * 3600'000'000LL);  // the window is one hour
  EXPECT_EQ(Deliver(), 1u);
  EXPECT_TRUE(notifier.webhooks.empty());
  EXPECT_EQ(Alarm(id)["pending_notifications"], 0);
  json last = History(id).back();
  EXPECT_EQ(last["type"], "notification_failed");
  EXPECT_TRUE(last["next_attempt_at"].is_null());
}

TEST_F(AlarmEngineTest, OutboxSurvivesRestart) {
  CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.FailNext(1, 500);
  EXPECT_EQ(Deliver(), 1u);
  h.Open();  // a restart: ledger and projections reopened
  h.clock().AdvanceUs(10'000'000);
  EXPECT_EQ(Deliver(), 1u);
  EXPECT_EQ(Deliver(), 0u);
  ASSERT_EQ(notifier.webhooks.size(), 2u);
  EXPECT_EQ(notifier.webhooks[0].id, notifier.webhooks[1].id);
}

TEST_F(AlarmEngineTest, GivesUpAfterTheRetryWindow) {
  std::string id = CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.FailNext(1000, 500);
  size_t attempts = 0;
  for (int i = 0; i < 200 && Alarm(id)["pending_notifications"] != 0; i++) {
    attempts += Deliver();
    h.clock().AdvanceUs(600'000'000);
  }
  EXPECT_EQ(Alarm(id)["pending_notifications"], 0);
  EXPECT_GT(attempts, 3u);
  EXPECT_LT(attempts, 20u);  // bounded by the one-hour window
  json last = History(id).back();
  EXPECT_EQ(last["type"], "notification_failed");
  EXPECT_TRUE(last["next_attempt_at"].is_null());
}

TEST_F(AlarmEngineTest, DeletingTheAlarmDropsItsOutbox) {
  std::string id = CreateWebhookAlarm();
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  ASSERT_EQ(h.Call("DELETE", base_ + "/" + id).status, 204);
  EXPECT_EQ(Deliver(), 0u);
  EXPECT_TRUE(notifier.webhooks.empty());
  EXPECT_EQ(Evaluate(), 0u);
  EXPECT_EQ(h.Call("GET", base_ + "/" + id + "/history").status, 404);
}

// A delivery round works from the list it took at its start; an alarm
// deleted during the round sends nothing more.
TEST_F(AlarmEngineTest, AnAlarmDeletedDuringARoundSendsNothingMore) {
  std::string id = CreateAlarm();  // a webhook, then an e-mail
  Breach();
  ASSERT_EQ(Evaluate(), 1u);
  notifier.on_webhook = [&] {
    notifier.on_webhook = nullptr;
    EXPECT_EQ(h.Call("DELETE", base_ + "/" + id).status, 204);
  };
  EXPECT_EQ(Deliver(), 1u);  // the webhook only
  EXPECT_EQ(notifier.webhooks.size(), 1u);
  EXPECT_TRUE(notifier.emails.empty());
  EXPECT_EQ(Deliver(), 0u);
}

TEST_F(AlarmEngineTest, ErrorRateAndMissingData) {
  std::string rate = CreateAlarm({{"metric", "error_rate"}, {"comparator", ">="},
                                  {"threshold", 0.5}, {"evaluation_periods", 1},
                                  {"datapoints_to_alarm", 1}, {"missing_data", "missing"}});
  std::string quiet = CreateAlarm({{"name", "quiet"}, {"comparator", "<"}, {"threshold", 1},
                                   {"evaluation_periods", 2}, {"datapoints_to_alarm", 2},
                                   {"missing_data", "breaching"}});
  EXPECT_EQ(Evaluate(), 1u);  // quiet: no traffic at all breaches; rate: stays INSUFFICIENT_DATA
  EXPECT_EQ(Alarm(rate)["state"], "INSUFFICIENT_DATA");
  EXPECT_EQ(Alarm(quiet)["state"], "ALARM");
  RecordCalls(1, 3, 500);
  RecordCalls(1, 2, 200);
  RecordCalls(2, 1, 200);
  EXPECT_EQ(Evaluate(), 2u);
  EXPECT_EQ(Alarm(rate)["state"], "ALARM");  // 3 of 5 failed
  EXPECT_EQ(Alarm(quiet)["state"], "OK");
  EXPECT_EQ(Alarm(rate)["state_reason"], "1 of the last 1 datapoints breached (>= 0.5, 1 needed)");
}

TEST_F(AlarmEngineTest, SpendIsTheWorkspaceMonthToDateCharge) {
  ASSERT_EQ(h.Call("POST", "/v1/price-plans",
                   R"({"id":"std","currency":"USD","metric":"units","mode":"graduated",
                       "tiers":[{"up_to":null,"unit_price_micros":5000000}]})")
                .status,
            201);
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws_, R"({"price_plan":"std"})").status, 200);
  // Alarm when this month's charge reaches 1.00 USD = 100 minor units.
  std::string id = CreateAlarm({{"metric", "spend_minor"}, {"comparator", ">="},
                                {"threshold", 100}, {"evaluation_periods", 1},
                                {"datapoints_to_alarm", 1}});
  RecordCalls(1, 10);  // 10 units at 5 cents: 50
  EXPECT_EQ(Evaluate(), 1u);
  EXPECT_EQ(Alarm(id)["state"], "OK");
  RecordCalls(1, 10);  // 100
  EXPECT_EQ(Evaluate(), 1u);
  EXPECT_EQ(Alarm(id)["state"], "ALARM");
  EXPECT_EQ(Deliver(), 2u);
  EXPECT_EQ(json::parse(notifier.webhooks[0].body_json)["data"]["value"], 100);
}

TEST_F(AlarmEngineTest, RulesChangesKeepTheStateAndPeriodsMustTileTheDay) {
  std::string id = CreateAlarm();
  ASSERT_EQ(Evaluate(), 1u);
  auto r = h.Call("PATCH", base_ + "/" + id, R"({"threshold":5})");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["state"], "OK");
  r = h.Call("PATCH", base_ + "/" + id, R"({"period_seconds":420})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["field"], "period_seconds");
}

}  // namespace
}  // namespace keyledger
