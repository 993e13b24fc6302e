// The alarm-rule endpoints of the Service: rules on a key's usage, their
// history, and the rule that a key with alarms cannot be deleted. Evaluation
// and delivery run in service_alarm_engine.cc.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <set>

#include "api/service_internal.h"
#include "billing/calendar.h"

namespace keyledger {
namespace {

constexpr size_t kAlarmsPerKeyMax = 20;
constexpr size_t kChannelsMax = 10;
constexpr size_t kUrlBytesMax = 2048;
constexpr int64_t kPeriodSecondsMax = 86'400;
constexpr int64_t kEvaluationPeriodsMax = 100;
constexpr double kThresholdMax = 1e12;
constexpr size_t kWebhookSecretBytesMin = 16;
constexpr size_t kWebhookSecretBytesMax = 256;

template <typename E, size_t N>
Result<E> ParseEnum(const Json& body, std::string_view field, const char* const (&names)[N],
                    std::optional<E> current) {
  KL_ASSIGN_OR_RETURN(auto text, OptionalString(body, field));
  if (!text) {
    if (current) return *current;
    return Status::InvalidArgument(std::string(field) + " is required", std::string(field));
  }
  for (size_t i = 0; i < N; i++) {
    if (*text == names[i]) return static_cast<E>(i);
  }
  std::string allowed;
  for (size_t i = 0; i < N; i++) allowed += (i ? ", " : "") + std::string(names[i]);
  return Status::InvalidArgument("must be one of " + allowed, std::string(field));
}

constexpr const char* kMissingDataNames[] = {"missing", "ignore", "breaching", "not_breaching"};

Status ValidateWebhookUrl(const std::string& url, bool allow_private, const std::string& field) {
  if (url.size() > kUrlBytesMax || !(url.starts_with("https://") || url.starts_with("http://"))) {
    return Status::InvalidArgument("webhook url must be http:// or https://", field);
  }
  // The sender refuses these at every attempt (api/notify.cc): refuse them now.
  if (std::any_of(url.begin(), url.end(),
                  [](unsigned char c) { return c <= 0x20 || c == 0x7f; })) {
    return Status::InvalidArgument("webhook url must not contain spaces or control characters",
                                   field);
  }
  const size_t authority_start = url.find("://") + 3;
  const std::string authority =
      url.substr(authority_start, url.find_first_of("/?#", authority_start) - authority_start);
  if (authority.find('@') != std::string::npos) {
    return Status::InvalidArgument("webhook url must not carry a user name or password", field);
  }
  // The host: a bracketed IPv6 literal, or everything up to the port.
  std::string host;
  if (authority.starts_with("[")) {
    const size_t close = authority.find(']');
    if (close == std::string::npos) {
      return Status::InvalidArgument("webhook url has an unclosed [", field);
    }
    host = authority.substr(0, close + 1);
  } else {
    host = authority.substr(0, authority.find(':'));
  }
  if (host.empty() || host == "[]") return Status::InvalidArgument("webhook url has no host", field);
  if (allow_private) return Status::Ok();
  // SSRF guard: no loopback or private addresses, by name or literal.
  // Names are checked again at connect time (api/notify.h), against DNS rebinding.
  // Names compare without case and without the root's trailing dot.
  std::string name = AsciiLower(host);
  if (name.size() > 1 && name.back() == '.') name.pop_back();
  const std::string literal = host.front() == '[' ? host.substr(1, host.size() - 2) : name;
  bool is_private = name == "localhost" || name.ends_with(".localhost");
  if (ParseIpAddress(literal).ok()) {
    is_private |= !IsPublicAddress(literal);
  } else if (in_addr v4{}; host.front() != '[' && inet_aton(literal.c_str(), &v4) != 0) {
    // The resolver also reads IPv4 in the old numeric forms (127.1,
    // 2130706433, 0x7f.0.0.1, 0177.0.0.1): judge the address they name.
    char dotted[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &v4, dotted, sizeof(dotted));
    is_private |= !IsPublicAddress(dotted);
  }
  if (is_private) {
    return Status::InvalidArgument("webhook url points at a loopback or private address", field);
  }
  return Status::Ok();
}

Result<Json> ParseAlarmBody(std::string_view body) {
  return ParseObject(body, {"name", "metric", "comparator", "threshold", "period_seconds",
                            "evaluation_periods", "datapoints_to_alarm", "missing_data",
                            "channels"});
}

Json AlarmJson(const AlarmView& a) {
  const AlarmSpec& s = a.spec;
  Json channels = Json::array();
  for (const auto& c : s.channels) {
    if (const auto* email = std::get_if<EmailChannel>(&c)) {
      channels.push_back({{"type", "email"}, {"to", email->to}});
    } else {
      // The signing secret is shown only when the alarm is created.
      channels.push_back({{"type", "webhook"}, {"url", std::get<WebhookChannel>(c).url}});
    }
  }
  return {{"id", s.alarm_id}, {"key_id", s.key_id}, {"workspace_id", s.workspace_id},
          {"name", s.name}, {"metric", kAlarmMetricNames[static_cast<int>(s.metric)]},
          {"comparator", kComparatorNames[static_cast<int>(s.comparator)]},
          {"threshold", Json::parse(FormatMicros(s.threshold_micros))},
          {"period_seconds", s.period_seconds}, {"evaluation_periods", s.evaluation_periods},
          {"datapoints_to_alarm", s.datapoints_to_alarm},
          {"missing_data", kMissingDataNames[static_cast<int>(s.missing_data)]},
          {"channels", channels}, {"state", AlarmStateName(a.state)},
          {"state_changed_at", a.state_changed_at_us ? Json(FormatRfc3339(a.state_changed_at_us))
                                                     : Json(nullptr)},
          {"state_reason", a.state_reason},
          {"pending_notifications", a.outbox.size()},
          {"created_at", FormatRfc3339(a.created_at_us)},
          {"updated_at", FormatRfc3339(a.updated_at_us)}};
}

Json NotificationAttemptJson(const NotificationAttempt& a) {
  return {{"notification_id", a.notification_id}, {"channel_index", a.channel_index},
          {"attempt", a.attempt}, {"http_status", a.http_status}, {"error", a.error},
          {"next_attempt_at",
           a.next_attempt_at_us ? Json(FormatRfc3339(a.next_attempt_at_us)) : Json(nullptr)}};
}

// One event of an alarm's stream as its history shows it.
Json AlarmHistoryJson(const Event& e) {
  Json j = {{"sequence", e.sequence}, {"recorded_at", FormatRfc3339(e.recorded_at_us)},
            {"actor", e.actor}};
  std::visit(Overloaded{
                 [&](const AlarmCreated&) { j["type"] = "created"; },
                 [&](const AlarmChanged&) { j["type"] = "changed"; },
                 [&](const AlarmDeleted&) { j["type"] = "deleted"; },
                 [&](const AlarmStateChanged& c) {
                   j["type"] = "state_changed";
                   j["from"] = AlarmStateName(c.from);
                   j["to"] = AlarmStateName(c.to);
                   j["value"] = Json::parse(FormatMicros(c.value_micros));
                   j["period_end"] = FormatRfc3339(c.evaluated_at_us);
                   j["reason"] = c.reason;
                 },
                 [&](const NotificationDelivered& c) {
                   j["type"] = "notification_delivered";
                   j.update(NotificationAttemptJson(c));
                 },
                 [&](const NotificationFailed& c) {
                   j["type"] = "notification_failed";
                   j.update(NotificationAttemptJson(c));
                 },
                 [&](const auto&) { j["type"] = "other"; },
             },
             e.body);
  return j;
}

}  // namespace

// GET .../alarms/{id}/history?cursor=V&limit=N: the alarm's stream from
// version V (default 1), oldest first.
Result<HttpResponse> Service::Impl::AlarmHistory(const HttpRequest& req, const AlarmView& alarm) {
  KL_ASSIGN_OR_RETURN(HistoryPageRequest page, HistoryPage(QueryOf(req), o));
  // One event past the page tells whether another page follows, so that a
  // full last page ends with a null cursor, as a key's history does.
  KL_ASSIGN_OR_RETURN(auto events, d.ledger->ReadStream(AlarmStream(alarm.spec.alarm_id),
                                                        page.from_version, page.limit + 1));
  Json next = events.size() > page.limit ? Json(std::to_string(events[page.limit].stream_version))
                                         : Json(nullptr);
  if (events.size() > page.limit) events.resize(page.limit);
  Json items = Json::array();
  for (const auto& e : events) items.push_back(AlarmHistoryJson(e));
  return JsonResponse(200, {{"alarm_id", alarm.spec.alarm_id}, {"state", AlarmStateName(alarm.state)},
                            {"events", items}, {"next_cursor", next}});
}

// Fills `spec` from `body` over the values already in it (PATCH) or from
// scratch (create, `creating`). Webhook secrets generated here are returned
// in `new_secrets` so the create response can show them once.
Status Service::Impl::ParseAlarmSpec(const Json& body, bool creating, AlarmSpec* spec,
                                     std::vector<std::string>* new_secrets) {
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (name || creating) {
    KL_ASSIGN_OR_RETURN(spec->name, CleanText(name.value_or(""), "name", kNameCharsMax, true));
  }
  auto current = [&](auto v) { return creating ? std::nullopt : std::optional(v); };
  KL_ASSIGN_OR_RETURN(spec->metric,
                      ParseEnum<AlarmMetric>(body, "metric", kAlarmMetricNames, current(spec->metric)));
  KL_ASSIGN_OR_RETURN(spec->comparator, ParseEnum<Comparator>(body, "comparator", kComparatorNames,
                                                              current(spec->comparator)));
  KL_ASSIGN_OR_RETURN(spec->missing_data,
                      ParseEnum<MissingData>(body, "missing_data", kMissingDataNames,
                                             std::optional(creating ? MissingData::kMissing
                                                                    : spec->missing_data)));
  auto threshold = body.find("threshold");
  if (threshold != body.end()) {
    if (!threshold->is_number() || std::fabs(threshold->get<double>()) > kThresholdMax) {
      return Status::InvalidArgument("must be a number", "threshold");
    }
    // Thresholds are stored exactly as millionths; they are not money.
    spec->threshold_micros = std::llround(threshold->get<double>() * 1e6);
  } else if (creating) {
    return Status::InvalidArgument("threshold is required", "threshold");
  }
  KL_ASSIGN_OR_RETURN(auto period, OptionalInt(body, "period_seconds", 60, kPeriodSecondsMax));
  // Periods tile the UTC day so that they align with the metrics cells.
  if (period && (*period % 60 != 0 || 86'400 % *period != 0)) {
    return Status::InvalidArgument(
        "must be a multiple of 60 that divides 86400 (60, 120, 300, 600, 900, 3600, ...)",
        "period_seconds");
  }
  if (period || creating) spec->period_seconds = static_cast<uint32_t>(period.value_or(300));
  KL_ASSIGN_OR_RETURN(auto periods, OptionalInt(body, "evaluation_periods", 1, kEvaluationPeriodsMax));
  if (periods || creating) spec->evaluation_periods = static_cast<uint32_t>(periods.value_or(1));
  KL_ASSIGN_OR_RETURN(auto datapoints,
                      OptionalInt(body, "datapoints_to_alarm", 1, kEvaluationPeriodsMax));
  if (datapoints || creating) {
    spec->datapoints_to_alarm = static_cast<uint32_t>(datapoints.value_or(spec->evaluation_periods));
  }
  if (spec->datapoints_to_alarm > spec->evaluation_periods) {
    // Name the field the request set (a PATCH may change only one of them).
    if (!datapoints) {
      return Status::InvalidArgument("must be at least datapoints_to_alarm (" +
                                         std::to_string(spec->datapoints_to_alarm) + ")",
                                     "evaluation_periods");
    }
    return Status::InvalidArgument("must be at most evaluation_periods", "datapoints_to_alarm");
  }
  auto channels = body.find("channels");
  if (channels == body.end()) {
    return creating ? Status::InvalidArgument("at least one channel is required", "channels")
                    : Status::Ok();
  }
  if (!channels->is_array() || channels->empty() || channels->size() > kChannelsMax) {
    return Status::InvalidArgument("must be an array of 1.." + std::to_string(kChannelsMax) +
                                       " channels",
                                   "channels");
  }
  // A webhook given again without its secret (which is never shown twice)
  // keeps the secret its URL has now, rather than getting a new one.
  std::map<std::string, std::string> secret_of_url;
  for (const auto& channel : spec->channels) {
    if (const auto* webhook = std::get_if<WebhookChannel>(&channel)) {
      secret_of_url.emplace(webhook->url, webhook->secret);
    }
  }
  spec->channels.clear();
  // Each destination once: a receiver could not tell a second copy of every
  // notification (another webhook-id) from a second notification.
  std::set<std::string> destinations;
  for (size_t i = 0; i < channels->size(); i++) {
    const Json& c = (*channels)[i];
    const std::string field = "channels[" + std::to_string(i) + "]";
    auto once = [&](std::string destination) {
      if (destinations.insert(std::move(destination)).second) return Status::Ok();
      return Status::InvalidArgument("names the same destination as an earlier channel", field);
    };
    if (!c.is_object()) return Status::InvalidArgument("must be an object", field);
    // A channel's fields, named with their place in the body.
    auto text = [&](const char* name) -> Result<std::optional<std::string>> {
      auto value = OptionalString(c, name);
      if (!value.ok()) return Status::InvalidArgument(value.status().message(), field + "." + name);
      return value;
    };
    KL_ASSIGN_OR_RETURN(auto type, text("type"));
    const std::vector<std::string_view> allowed =
        type == "webhook" ? std::vector<std::string_view>{"type", "url", "secret"}
                          : std::vector<std::string_view>{"type", "to"};
    std::optional<std::string> unknown;  // the smallest, as for the body's own fields
    for (const auto& [name, value] : c.items()) {
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end() &&
          (!unknown || name < *unknown)) {
        unknown = name;
      }
    }
    if (unknown && (type == "email" || type == "webhook")) {
      return Status::InvalidArgument("unknown field \"" + *unknown + "\"", field + "." + *unknown);
    }
    if (type == "email") {
      KL_ASSIGN_OR_RETURN(auto to, text("to"));
      if (!to) return Status::InvalidArgument("an e-mail address is required", field + ".to");
      // What the sender will accept (api/notify.h), checked now rather than
      // failing every delivery.
      KL_RETURN_IF_ERROR(CheckEmailAddress(*to, field + ".to"));
      KL_RETURN_IF_ERROR(once("email " + AsciiLower(*to)));
      spec->channels.push_back(EmailChannel{*to});
    } else if (type == "webhook") {
      KL_ASSIGN_OR_RETURN(auto url, text("url"));
      KL_RETURN_IF_ERROR(ValidateWebhookUrl(url.value_or(""), o.allow_private_webhooks,
                                            field + ".url"));
      KL_RETURN_IF_ERROR(once("webhook " + *url));
      KL_ASSIGN_OR_RETURN(auto secret, text("secret"));
      if (secret && (secret->size() < kWebhookSecretBytesMin || secret->size() > kWebhookSecretBytesMax)) {
        return Status::InvalidArgument("a webhook secret has " +
                                           std::to_string(kWebhookSecretBytesMin) + ".." +
                                           std::to_string(kWebhookSecretBytesMax) + " bytes",
                                       field + ".secret");
      }
      auto kept = secret_of_url.find(*url);
      if (!secret && kept != secret_of_url.end()) secret = kept->second;
      std::string s = secret.value_or(NewWebhookSecret(*d.random));
      if (!secret) new_secrets->push_back(s);
      spec->channels.push_back(WebhookChannel{*url, s});
    } else {
      return Status::InvalidArgument("type must be \"email\" or \"webhook\"", field + ".type");
    }
  }
  return Status::Ok();
}

Result<HttpResponse> Service::Impl::Alarms(const HttpRequest& req, const Principal& who,
                                           const KeyView& key,
                                           const std::vector<std::string_view>& seg) {
  const std::string& m = req.method;
  if (seg.size() == 6 && m == "GET") {
    Json list = Json::array();
    for (const auto& a : state().ListAlarms(key.id)) list.push_back(AlarmJson(a));
    return JsonResponse(200, {{"alarms", list}});
  }
  if (seg.size() == 6 && m == "POST") {
    if (state().ListAlarms(key.id).size() >= kAlarmsPerKeyMax) {
      return Status::FailedPrecondition("a key has at most " + std::to_string(kAlarmsPerKeyMax) +
                                        " alarms");
    }
    KL_ASSIGN_OR_RETURN(Json body, ParseAlarmBody(req.body));
    AlarmCreated created;
    std::vector<std::string> secrets;
    KL_RETURN_IF_ERROR(ParseAlarmSpec(body, true, &created, &secrets));
    created.workspace_id = key.workspace_id;
    created.key_id = key.id;
    created.alarm_id = NewId("alm_");
    std::string id = created.alarm_id;
    KL_RETURN_IF_ERROR(Commit({MakeEvent(AlarmStream(id), 0, who, created)}));
    Json j = AlarmJson(*state().FindAlarm(id));
    if (!secrets.empty()) j["webhook_secrets"] = secrets;
    return JsonResponse(201, j);
  }
  const bool history = seg.size() == 8 && seg[7] == "history";
  if (seg.size() != 7 && !history) return Status::NotFound("no such endpoint under alarms");
  auto alarm = state().FindAlarm(seg[6]);
  if (!alarm || alarm->deleted || alarm->spec.key_id != key.id) {
    return Status::NotFound("no alarm " + std::string(seg[6]) + " on this key", "alarm");
  }
  if (history) {
    if (m != "GET") return Status::InvalidArgument("use GET", "method");
    return AlarmHistory(req, *alarm);
  }
  if (m == "GET") return JsonResponse(200, AlarmJson(*alarm));
  if (m == "DELETE") {
    AlarmDeleted deleted{key.workspace_id, key.id, alarm->spec.alarm_id};
    KL_RETURN_IF_ERROR(Commit({MakeEvent(AlarmStream(deleted.alarm_id), alarm->version, who, deleted)}));
    return NoContent();
  }
  if (m != "PATCH") return Status::InvalidArgument("use GET, PATCH or DELETE", "method");
  KL_ASSIGN_OR_RETURN(Json body, ParseAlarmBody(req.body));
  AlarmChanged changed;
  static_cast<AlarmSpec&>(changed) = alarm->spec;
  std::vector<std::string> secrets;
  KL_RETURN_IF_ERROR(ParseAlarmSpec(body, false, &changed, &secrets));
  if (static_cast<const AlarmSpec&>(changed) != alarm->spec) {
    KL_RETURN_IF_ERROR(Commit({MakeEvent(AlarmStream(changed.alarm_id), alarm->version, who, changed)}));
  }
  Json j = AlarmJson(*state().FindAlarm(alarm->spec.alarm_id));
  if (!secrets.empty()) j["webhook_secrets"] = secrets;
  return JsonResponse(200, j);
}

}  // namespace keyledger
