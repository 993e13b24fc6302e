// Alarm evaluation and notification delivery: the two background loops of
// the Service. Evaluation reads the metrics projection and records each state
// change as an AlarmStateChanged event; the fold turns a notifying change into
// outbox entries (projections/key_state.h); delivery sends the due ones and
// records every attempt. Both loops are plain functions of (state, clock,
// random), callable from tests without threads.
#include <algorithm>
#include <cassert>
#include <string>
#include <unordered_set>

#include "api/notify.h"
#include "api/invoice_compute.h"
#include "api/service_internal.h"
#include "billing/calendar.h"
#include "billing/pricing.h"
#include "ledger/thread_name.h"
#include "projections/alarm_eval.h"

namespace keyledger {
namespace {

constexpr int64_t kMicros = 1'000'000;
constexpr char kAlarmActor[] = "system/alarms";
// Longest error text recorded per attempt (the rest is cut).
constexpr size_t kAttemptErrorBytesMax = 300;

const char* MetricName(AlarmMetric m) { return kAlarmMetricNames[static_cast<int>(m)]; }
const char* ComparatorName(Comparator c) { return kComparatorNames[static_cast<int>(c)]; }

// "alarm.triggered", "alarm.resolved" or "alarm.insufficient_data".
std::string NotificationType(const AlarmStateChanged& t) {
  if (t.to == AlarmState::kAlarm) return "alarm.triggered";
  return t.to == AlarmState::kOk ? "alarm.resolved" : "alarm.insufficient_data";
}

// The notification's content; the same on every attempt: the rule and key
// name as they were at the transition (PendingNotification), not as now.
Json NotificationJson(const OutboxEntry& e) {
  const PendingNotification& n = e.notification;
  const AlarmStateChanged& t = n.transition;
  return {{"type", NotificationType(t)},
          {"timestamp", FormatRfc3339(n.created_at_us)},
          {"data",
           {{"workspace_id", e.alarm.workspace_id}, {"key_id", e.alarm.key_id},
            {"key_name", n.key_name}, {"alarm_id", e.alarm.alarm_id}, {"alarm_name", n.alarm_name},
            {"metric", MetricName(n.metric)}, {"comparator", ComparatorName(n.comparator)},
            {"threshold", Json::parse(FormatMicros(n.threshold_micros))},
            {"value", Json::parse(FormatMicros(t.value_micros))},
            {"previous_state", AlarmStateName(t.from)}, {"state", AlarmStateName(t.to)},
            {"reason", t.reason}, {"period_end", FormatRfc3339(t.evaluated_at_us)},
            {"transition_sequence", n.transition_sequence}}}};
}

EmailMessage NotificationEmail(const OutboxEntry& e, int64_t now_us) {
  const PendingNotification& n = e.notification;
  const AlarmStateChanged& t = n.transition;
  const char* headline = t.to == AlarmState::kOk ? "RESOLVED" : AlarmStateName(t.to);
  EmailMessage m;
  m.to = std::get<EmailChannel>(n.channel).to;
  m.subject = std::string("[keyledger] ") + headline + ": " + n.alarm_name + " (key " + n.key_name + ")";
  m.message_id = n.id + "." + e.alarm.alarm_id + "@keyledger";
  m.date_us = now_us;
  m.text_body =
      std::string("Alarm \"") + n.alarm_name + "\" is now " + AlarmStateName(t.to) + " (was " +
      AlarmStateName(t.from) + ").\n\n" +
      "Workspace:  " + e.alarm.workspace_id + "\n" +
      "Key:        " + n.key_name + " (" + e.alarm.key_id + ")\n" +
      "Alarm:      " + e.alarm.alarm_id + "\n" +
      "Metric:     " + MetricName(n.metric) + " over " + std::to_string(n.period_seconds) +
      " s periods\n" +
      "Value:      " + FormatMicros(t.value_micros) + "\n" +
      "Threshold:  " + ComparatorName(n.comparator) + " " + FormatMicros(n.threshold_micros) + "\n" +
      "State:      " + AlarmStateName(t.to) + "\n" +
      "Reason:     " + t.reason + "\n" +
      "Period end: " + FormatRfc3339(t.evaluated_at_us) + "\n\n" +
      "Notification " + n.id + " from keyledger.\n";
  return m;
}

// The end of the newest period that is complete and settled at now_us.
int64_t LastPeriodEndUs(int64_t now_us, int64_t settle_us, int64_t period_us) {
  const int64_t t = now_us - settle_us;
  return t < 0 ? 0 : t / period_us * period_us;
}

}  // namespace

// The workspace's month-to-date usage charge at each period end (without the
// monthly fee), in millionths of a minor unit; missing without a plan.
Result<std::vector<std::optional<int64_t>>> Service::Impl::SpendDatapoints(const AlarmSpec& spec,
                                                                          int64_t from_us,
                                                                          int64_t period_us) {
  auto ws = state().FindWorkspace(spec.workspace_id);
  if (!ws) return Status::NotFound("no workspace " + spec.workspace_id, "workspace");
  std::vector<std::optional<int64_t>> points;
  for (uint32_t i = 0; i < spec.evaluation_periods; i++) {
    const int64_t end_us = from_us + (i + 1) * period_us;
    KL_ASSIGN_OR_RETURN(BillingMonth month, MonthOf(end_us - 1, ws->billing_timezone));
    KL_ASSIGN_OR_RETURN(auto bounds, MonthBoundsUs(month, ws->billing_timezone));
    // The plan the month will be invoiced with as things stand: the one in
    // force at the month's end (the rule of docs/billing.md; GET usage agrees).
    auto in_force = state().PlanInForce(ws->id, bounds.second);
    if (!in_force) {
      points.push_back(std::nullopt);
      continue;
    }
    KL_ASSIGN_OR_RETURN(MetricsBucket total,
                        d.calls->Totals(MetricsScope::kWorkspace, ws->id, bounds.first, end_us));
    KL_ASSIGN_OR_RETURN(PricePlanPublished plan, ReadPlan(state(), *d.ledger, in_force->first,
                                                          in_force->second.version));
    KL_ASSIGN_OR_RETURN(auto lines, PriceUsage(plan, total.units));
    int64_t amount = 0;
    for (const auto& l : lines) amount += l.amount_minor;
    points.push_back(amount > INT64_MAX / kMicros ? INT64_MAX : amount * kMicros);
  }
  return points;
}

Result<AlarmDecision> Service::Impl::DecideAlarm(const AlarmView& alarm, int64_t now_us,
                                                 int64_t* period_end_us) {
  const AlarmSpec& spec = alarm.spec;
  const int64_t period_us = int64_t{spec.period_seconds} * kMicros;
  const int64_t end_us = LastPeriodEndUs(now_us, o.alarms.settle_us, period_us);
  const int64_t from_us = end_us - int64_t{spec.evaluation_periods} * period_us;
  *period_end_us = end_us;
  if (from_us < 0) return Status::FailedPrecondition("the clock is before the first period");
  std::vector<std::optional<int64_t>> points;
  if (spec.metric == AlarmMetric::kSpendMinor) {
    KL_ASSIGN_OR_RETURN(points, SpendDatapoints(spec, from_us, period_us));
  } else {
    KL_ASSIGN_OR_RETURN(auto buckets,
                        d.calls->Metrics(MetricsScope::kKey, spec.key_id, from_us, end_us, period_us));
    for (const auto& b : buckets) points.push_back(AlarmDatapoint(spec.metric, b));
  }
  assert(points.size() == spec.evaluation_periods);
  return EvaluateAlarm(spec, alarm.state, points);
}

Result<size_t> Service::Impl::EvaluateAlarms() {
  const int64_t now_us = d.clock->NowUs();
  // Judge on the calls recorded so far, not on a projection that lags or has
  // failed (which would resolve "above" rules and fire "below" ones falsely).
  if (Status caught_up = d.calls->CatchUpTo(d.ledger->head().sequence); !caught_up.ok()) {
    alarm_evaluation_errors.fetch_add(1, std::memory_order_relaxed);
    return caught_up;
  }
  size_t transitions = 0;
  for (const AlarmView& alarm : state().ListAllAlarms()) {
    int64_t period_end_us = 0;
    auto decision = DecideAlarm(alarm, now_us, &period_end_us);
    if (!decision.ok()) {
      // A rule whose data cannot be read this round (e.g. a spend alarm whose
      // plan vanished) keeps its state; the next round tries again.
      alarm_evaluation_errors.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (decision->state == alarm.state) continue;
    const AlarmSpec& s = alarm.spec;
    AlarmStateChanged changed{s.workspace_id, s.key_id,         s.alarm_id,      alarm.state,
                              decision->state, decision->value_micros, period_end_us,
                              decision->reason};
    std::lock_guard<std::mutex> lock(command_mu);
    // Delivery attempts recorded since the round listed the alarm move its
    // version but not what was decided from; a changed rule or state, or a
    // deletion, leaves the decision to the next round. (Commands hold
    // command_mu, so nothing changes between this look and the commit.)
    const std::optional<AlarmView> now = state().FindAlarm(s.alarm_id);
    if (!now || now->deleted || now->state != alarm.state || !(now->spec == s)) continue;
    Status committed = Commit({SystemEvent(AlarmStream(s.alarm_id), now->version, changed)});
    if (committed.code() == Code::kConflict) continue;  // an append without command_mu
    KL_RETURN_IF_ERROR(committed);
    alarm_transitions.fetch_add(1, std::memory_order_relaxed);
    transitions++;
  }
  return transitions;
}

// Waits about retry_base_us * 2^(attempt-1), capped, with 50–100 % jitter so
// that receivers that failed together are not retried together. Returns 0
// once the retry window of the notification is over: it is given up.
int64_t Service::Impl::NextAttemptUs(const PendingNotification& n, uint32_t attempt,
                                     int64_t now_us) {
  const AlarmOptions& a = o.alarms;
  int64_t wait_us = a.retry_base_us;
  for (uint32_t i = 1; i < attempt && wait_us < a.retry_wait_us_max; i++) wait_us *= 2;
  wait_us = std::min(wait_us, a.retry_wait_us_max);
  uint64_t r = 0;
  d.random->Fill(reinterpret_cast<uint8_t*>(&r), sizeof(r));
  const int64_t half = wait_us / 2;
  const int64_t jittered = half + (half > 0 ? static_cast<int64_t>(r % static_cast<uint64_t>(half + 1)) : 0);
  const int64_t next_us = now_us + std::max<int64_t>(jittered, 1);
  return next_us > n.created_at_us + a.retry_window_us ? 0 : next_us;
}

DeliveryResult Service::Impl::Send(const OutboxEntry& e, int64_t now_us) {
  if (const auto* hook = std::get_if<WebhookChannel>(&e.notification.channel)) {
    return d.notifier->SendWebhook(WebhookMessage{hook->url, hook->secret, e.notification.id,
                                                  now_us / kMicros, NotificationJson(e).dump()});
  }
  return d.notifier->SendEmail(NotificationEmail(e, now_us));
}

constexpr char kRetryWindowOver[] = "the retry window ended before this attempt";
// The HTTP status by which a webhook receiver says it wants no more.
constexpr uint32_t kHttpGone = 410;

namespace {

// Where a notification goes, as far as one slow receiver can hold up
// others: the scheme, host and port of a webhook URL (receivers often use
// one URL per alarm), or the SMTP relay every e-mail shares.
std::string DestinationOf(const AlarmChannel& channel) {
  const auto* hook = std::get_if<WebhookChannel>(&channel);
  if (hook == nullptr) return "smtp";
  std::string_view url = hook->url;
  const size_t scheme_end = url.find("://");
  const size_t host_start = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  std::string destination = "webhook ";
  destination.append(url.substr(0, url.find_first_of("/?#", host_start)));
  return destination;
}

}  // namespace

// One round: up to deliveries_per_round_max due entries sent. A destination
// whose attempt failed slowly this round (no answer, a timeout, a slow
// error) gets no more attempts until the next round, and the round goes on
// to entries for other destinations, so that no slow receiver (nor the many
// entries queued for it) holds up notifications to the others.
Result<size_t> Service::Impl::DeliverNotifications() {
  if (d.notifier == nullptr) return size_t{0};
  const size_t sends_max = o.alarms.deliveries_per_round_max;
  size_t attempted = 0;  // sends, and entries given up unsent
  size_t sent = 0;
  std::unordered_set<std::string> slow_destinations;
  std::unordered_set<std::string> seen;  // entries taken up this round
  auto wanted = [&](const PendingNotification& n) {
    return !seen.contains(n.id) && !slow_destinations.contains(DestinationOf(n.channel));
  };
  for (;;) {
    const auto due = state().DueNotifications(d.clock->NowUs(), sends_max - sent, wanted);
    if (due.empty() || sent == sends_max) return attempted;
    for (const OutboxEntry& e : due) {
      {
        // A round may hold many slow sends: shutdown does not wait for them all.
        std::lock_guard<std::mutex> lock(loops_mu);
        if (loops_stopping) return attempted;
      }
      seen.insert(e.notification.id);
      const std::string destination = DestinationOf(e.notification.channel);
      if (slow_destinations.contains(destination)) continue;
      // A round may last minutes: an alarm deleted meanwhile (which drops its
      // outbox) notifies no one from then on.
      if (!StillPending(e)) continue;
      attempted++;
      const auto start = std::chrono::steady_clock::now();
      KL_ASSIGN_OR_RETURN(AttemptOutcome outcome, Attempt(e));
      if (!outcome.sent) continue;
      sent++;
      if (!outcome.delivered && static_cast<int64_t>(ElapsedUs(start)) >= o.alarms.slow_attempt_us) {
        slow_destinations.insert(destination);
      }
    }
  }
}

// Makes one attempt at `e`, or gives it up unsent when its retry window is
// over, and records that. Returns what happened, or the error of recording it.
Result<Service::Impl::AttemptOutcome> Service::Impl::Attempt(const OutboxEntry& e) {
  const int64_t now_us = d.clock->NowUs();
  // After downtime longer than the retry window, an entry still queued is
  // given up without a send: a day-old alert is noise, and the docs promise
  // no attempt after the window.
  const bool window_over = now_us > e.notification.created_at_us + o.alarms.retry_window_us;
  DeliveryResult result = window_over ? DeliveryResult{false, 0, kRetryWindowOver}
                                      : Send(e, now_us);
  NotificationAttempt attempt{e.alarm.workspace_id, e.alarm.alarm_id, e.notification.id,
                              e.notification.channel_index, e.notification.attempts + 1,
                              result.http_status, result.error.substr(0, kAttemptErrorBytesMax),
                              0};
  EventBody body;
  if (result.delivered) {
    notifications_delivered.fetch_add(1, std::memory_order_relaxed);
    body = NotificationDelivered{attempt};
  } else {
    notification_failures.fetch_add(1, std::memory_order_relaxed);
    // Backoff counts from the end of the attempt, which may have timed out.
    // A receiver answering 410 Gone asks for no more (Standard Webhooks): the
    // failure is final, as at the window's end.
    const bool gone = result.http_status == kHttpGone;
    attempt.next_attempt_at_us = window_over || gone ? 0
                                     : NextAttemptUs(e.notification, attempt.attempt,
                                                     d.clock->NowUs());
    body = NotificationFailed{attempt};
  }
  // No expected version: rule changes may interleave; the fold tolerates an
  // attempt recorded after the rule's deletion.
  std::lock_guard<std::mutex> lock(command_mu);
  KL_RETURN_IF_ERROR(Commit({SystemEvent(AlarmStream(e.alarm.alarm_id), std::nullopt, body)}));
  return AttemptOutcome{.sent = !window_over, .delivered = result.delivered};
}

bool Service::Impl::StillPending(const OutboxEntry& e) const {
  const std::optional<AlarmView> alarm = state().FindAlarm(e.alarm.alarm_id);
  if (!alarm || alarm->deleted) return false;
  return std::any_of(alarm->outbox.begin(), alarm->outbox.end(),
                     [&](const PendingNotification& n) { return n.id == e.notification.id; });
}

NewEvent Service::Impl::SystemEvent(std::string stream, std::optional<uint64_t> expected,
                                    EventBody body) {
  NewEvent e = MakeEvent(std::move(stream), expected, Principal{}, std::move(body));
  e.actor = kAlarmActor;
  return e;
}

void Service::Impl::StartAlarmLoops() {
  auto loop = [this](int64_t interval_us, auto round, const char* what, const char* thread_name) {
    NameThisThread(thread_name);
    std::unique_lock<std::mutex> lock(loops_mu);
    while (!loops_stopping) {
      lock.unlock();
      auto done = round();
      if (!done.ok()) {
        std::fprintf(stderr, "keyledger: %s: %s\n", what, done.status().ToString().c_str());
      }
      lock.lock();
      loops_cv.wait_for(lock, std::chrono::microseconds(interval_us),
                        [this] { return loops_stopping; });
    }
  };
  loops.emplace_back(loop, o.alarms.evaluation_interval_us, [this] { return EvaluateAlarms(); },
                     "alarm evaluation", "kl-alarm-eval");
  loops.emplace_back(loop, o.alarms.delivery_poll_us, [this] { return DeliverNotifications(); },
                     "notification delivery", "kl-alarm-notify");
}

void Service::Impl::StopAlarmLoops() {
  {
    std::lock_guard<std::mutex> lock(loops_mu);
    loops_stopping = true;
  }
  loops_cv.notify_all();
  for (auto& t : loops) t.join();
  loops.clear();
}

}  // namespace keyledger
