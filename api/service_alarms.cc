// The alarm-rule endpoints of the Service: rules on a key's usage, and the
// rule that a key with alarms cannot be deleted. Evaluation and delivery
// (e-mail, webhooks) are not built yet; see docs/api.md.
#include <cmath>

#include "api/service_internal.h"
#include "billing/calendar.h"

namespace keyledger {
namespace {

constexpr size_t kAlarmsPerKeyMax = 20;
constexpr size_t kChannelsMax = 10;
constexpr size_t kEmailBytesMax = 254;
constexpr size_t kUrlBytesMax = 2048;
constexpr int64_t kPeriodSecondsMax = 86'400;
constexpr int64_t kEvaluationPeriodsMax = 100;
constexpr double kThresholdMax = 1e12;

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

// Schema order; the index is the enum value.
constexpr const char* kMetricNames[] = {"calls", "errors", "error_rate", "latency_p95_ms", "units",
                                        "spend_minor"};
constexpr const char* kComparatorNames[] = {">", ">=", "<", "<="};
constexpr const char* kMissingDataNames[] = {"missing", "ignore", "breaching", "not_breaching"};

Status ValidateWebhookUrl(const std::string& url, bool allow_private, const std::string& field) {
  if (url.size() > kUrlBytesMax || !(url.starts_with("https://") || url.starts_with("http://"))) {
    return Status::InvalidArgument("webhook url must be http:// or https://", field);
  }
  size_t host_start = url.find("://") + 3;
  size_t host_end = url.find_first_of(":/?#", host_start);
  std::string host = url.substr(host_start, host_end - host_start);
  if (host.empty()) return Status::InvalidArgument("webhook url has no host", field);
  if (allow_private) return Status::Ok();
  // SSRF guard: no loopback or private addresses, by name or literal.
  auto ip = ParseIpAddress(host.front() == '[' ? host.substr(1, host.size() - 2) : host);
  bool is_private = host == "localhost" || host.ends_with(".localhost");
  if (ip.ok()) {
    static const char* kPrivate[] = {"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
                                     "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
                                     "::1/128", "fc00::/7", "fe80::/10", "::/128"};
    for (const char* cidr : kPrivate) is_private |= ParseCidr(cidr)->Contains(*ip);
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
          {"name", s.name}, {"metric", kMetricNames[static_cast<int>(s.metric)]},
          {"comparator", kComparatorNames[static_cast<int>(s.comparator)]},
          {"threshold", Json::parse(std::to_string(s.threshold_micros / 1'000'000) + "." +
                                    std::to_string(1'000'000 + std::llabs(s.threshold_micros % 1'000'000)).substr(1))},
          {"period_seconds", s.period_seconds}, {"evaluation_periods", s.evaluation_periods},
          {"datapoints_to_alarm", s.datapoints_to_alarm},
          {"missing_data", kMissingDataNames[static_cast<int>(s.missing_data)]},
          {"channels", channels}, {"state", "INSUFFICIENT_DATA"},
          {"created_at", FormatRfc3339(a.created_at_us)},
          {"updated_at", FormatRfc3339(a.updated_at_us)}};
}

}  // namespace

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
                      ParseEnum<AlarmMetric>(body, "metric", kMetricNames, current(spec->metric)));
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
  if (period && *period % 60 != 0) {
    return Status::InvalidArgument("must be a multiple of 60", "period_seconds");
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
  spec->channels.clear();
  for (size_t i = 0; i < channels->size(); i++) {
    const Json& c = (*channels)[i];
    const std::string field = "channels[" + std::to_string(i) + "]";
    if (!c.is_object()) return Status::InvalidArgument("must be an object", field);
    KL_ASSIGN_OR_RETURN(auto type, OptionalString(c, "type"));
    if (type == "email") {
      KL_ASSIGN_OR_RETURN(auto to, OptionalString(c, "to"));
      if (!to || to->size() > kEmailBytesMax || to->find('@') == std::string::npos ||
          to->find_first_of(" \t\r\n<>,") != std::string::npos) {
        return Status::InvalidArgument("an e-mail address is required", field + ".to");
      }
      spec->channels.push_back(EmailChannel{*to});
    } else if (type == "webhook") {
      KL_ASSIGN_OR_RETURN(auto url, OptionalString(c, "url"));
      KL_RETURN_IF_ERROR(ValidateWebhookUrl(url.value_or(""), o.allow_private_webhooks,
                                            field + ".url"));
      KL_ASSIGN_OR_RETURN(auto secret, OptionalString(c, "secret"));
      std::string s = secret.value_or("whsec_" + RandomBase32(*d.random, kSecretBytes));
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
  if (seg.size() != 7) return Status::NotFound("no such endpoint under alarms");
  auto alarm = state().FindAlarm(seg[6]);
  if (!alarm || alarm->deleted || alarm->spec.key_id != key.id) {
    return Status::NotFound("no alarm " + std::string(seg[6]) + " on this key", "alarm");
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
