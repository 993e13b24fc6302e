#include "tools/event_json.h"

#include <variant>

#include "billing/calendar.h"
#include "ledger/hash.h"

namespace keyledger {
namespace {

using json = nlohmann::json;

constexpr char kRedacted[] = "<redacted>";

std::string Hex(const Hash& h) { return ToHex(h); }
std::string Hex(const EventId& id) { return ToHex(id.data(), id.size()); }

// Enum names: the schema's enumerants in snake_case. Unknown values (a newer
// writer) are printed as their number rather than guessed.
json Name(AlarmMetric v) {
  switch (v) {
    case AlarmMetric::kCalls: return "calls";
    case AlarmMetric::kErrors: return "errors";
    case AlarmMetric::kErrorRate: return "error_rate";
    case AlarmMetric::kLatencyP95Ms: return "latency_p95_ms";
    case AlarmMetric::kUnits: return "units";
    case AlarmMetric::kSpendMinor: return "spend_minor";
  }
  return static_cast<int>(v);
}
json Name(Comparator v) {
  switch (v) {
    case Comparator::kGreater: return "greater";
    case Comparator::kGreaterOrEqual: return "greater_or_equal";
    case Comparator::kLess: return "less";
    case Comparator::kLessOrEqual: return "less_or_equal";
  }
  return static_cast<int>(v);
}
json Name(MissingData v) {
  switch (v) {
    case MissingData::kMissing: return "missing";
    case MissingData::kIgnore: return "ignore";
    case MissingData::kBreaching: return "breaching";
    case MissingData::kNotBreaching: return "not_breaching";
  }
  return static_cast<int>(v);
}
json Name(AlarmState v) {
  switch (v) {
    case AlarmState::kInsufficientData: return "insufficient_data";
    case AlarmState::kOk: return "ok";
    case AlarmState::kAlarm: return "alarm";
  }
  return static_cast<int>(v);
}
json Name(DenialReason v) {
  switch (v) {
    case DenialReason::kUnknownKey: return "unknown_key";
    case DenialReason::kRevokedSecret: return "revoked_secret";
    case DenialReason::kIpNotAllowed: return "ip_not_allowed";
    case DenialReason::kOriginNotAllowed: return "origin_not_allowed";
    case DenialReason::kRateLimited: return "rate_limited";
    case DenialReason::kMalformedCredentials: return "malformed_credentials";
  }
  return static_cast<int>(v);
}
json Name(PricingMode v) {
  switch (v) {
    case PricingMode::kGraduated: return "graduated";
    case PricingMode::kVolume: return "volume";
  }
  return static_cast<int>(v);
}

json WorkspaceJson(const WorkspaceState& w) {
  return {{"workspace_id", w.workspace_id}, {"name", w.name}, {"tps_limit", w.tps_limit},
          {"billing_timezone", w.billing_timezone}, {"price_plan_id", w.price_plan_id}};
}

json GroupJson(const SecurityGroupState& g) {
  return {{"workspace_id", g.workspace_id}, {"group_id", g.group_id}, {"name", g.name},
          {"ip_allow", g.ip_allow}, {"origin_allow", g.origin_allow}};
}

json ChannelJson(const AlarmChannel& channel) {
  if (const auto* email = std::get_if<EmailChannel>(&channel)) {
    return {{"type", "email"}, {"to", email->to}};
  }
  const auto& hook = std::get<WebhookChannel>(channel);
  return {{"type", "webhook"}, {"url", hook.url}, {"secret", kRedacted}};
}

json AlarmJson(const AlarmSpec& a) {
  json channels = json::array();
  for (const auto& c : a.channels) channels.push_back(ChannelJson(c));
  return {{"workspace_id", a.workspace_id},
          {"key_id", a.key_id},
          {"alarm_id", a.alarm_id},
          {"name", a.name},
          {"metric", Name(a.metric)},
          {"comparator", Name(a.comparator)},
          {"threshold_micros", a.threshold_micros},
          {"period_seconds", a.period_seconds},
          {"evaluation_periods", a.evaluation_periods},
          {"datapoints_to_alarm", a.datapoints_to_alarm},
          {"missing_data", Name(a.missing_data)},
          {"channels", std::move(channels)}};
}

json NotificationJson(const NotificationAttempt& n) {
  return {{"workspace_id", n.workspace_id},   {"alarm_id", n.alarm_id},
          {"notification_id", n.notification_id}, {"channel_index", n.channel_index},
          {"attempt", n.attempt},             {"http_status", n.http_status},
          {"error", n.error},                 {"next_attempt_at_us", n.next_attempt_at_us}};
}

json ExcerptJson(const HttpExcerpt& x) {
  json headers = json::array();
  for (const auto& h : x.headers) headers.push_back({{"name", h.name}, {"value", h.value}});
  return {{"headers", std::move(headers)}, {"body_excerpt", x.body_excerpt}};
}

json TierJson(const PriceTier& t) {
  return {{"up_to", t.up_to ? json(*t.up_to) : json(nullptr)},
          {"unit_price_micros", t.unit_price_micros}};
}

json InvoiceLineJson(const InvoiceLine& l) {
  return {{"kind", l.kind},
          {"description", l.description},
          {"quantity", l.quantity},
          {"unit_price_micros", l.unit_price_micros},
          {"amount_minor", l.amount_minor},
          {"month", l.month}};
}

// One overload per EventBody alternative: adding an alternative without one
// here fails to compile.
struct BodyJson {
  json operator()(const WorkspaceCreated& b) const { return WorkspaceJson(b); }
  json operator()(const WorkspaceChanged& b) const { return WorkspaceJson(b); }
  json operator()(const SecurityGroupCreated& b) const { return GroupJson(b); }
  json operator()(const SecurityGroupChanged& b) const { return GroupJson(b); }
  json operator()(const SecurityGroupDeleted& b) const {
    return {{"workspace_id", b.workspace_id}, {"group_id", b.group_id}};
  }
  json operator()(const KeyCreated& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id},
            {"name", b.name},                 {"description", b.description},
            {"security_group_id", b.security_group_id}, {"secret_hash", Hex(b.secret_hash)}};
  }
  json operator()(const KeyRenamed& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id}, {"name", b.name}};
  }
  json operator()(const KeyDescriptionChanged& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id},
            {"description", b.description}};
  }
  json operator()(const KeySecurityGroupChanged& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id},
            {"security_group_id", b.security_group_id}};
  }
  json operator()(const KeyLoggingSwitched& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id}, {"enabled", b.enabled}};
  }
  json operator()(const KeyRotated& b) const {
    return {{"workspace_id", b.workspace_id},
            {"key_id", b.key_id},
            {"new_secret_hash", Hex(b.new_secret_hash)},
            {"old_secret_valid_until_us", b.old_secret_valid_until_us}};
  }
  json operator()(const KeyDeleted& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id}};
  }
  json operator()(const WorkspaceTokenCreated& b) const {
    return {{"workspace_id", b.workspace_id}, {"token_id", b.token_id},
            {"token_hash", Hex(b.token_hash)}};
  }
  json operator()(const WorkspaceTokenRevoked& b) const {
    return {{"workspace_id", b.workspace_id}, {"token_id", b.token_id}};
  }
  json operator()(const AlarmCreated& b) const { return AlarmJson(b); }
  json operator()(const AlarmChanged& b) const { return AlarmJson(b); }
  json operator()(const AlarmDeleted& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id}, {"alarm_id", b.alarm_id}};
  }
  json operator()(const AlarmStateChanged& b) const {
    return {{"workspace_id", b.workspace_id}, {"key_id", b.key_id},
            {"alarm_id", b.alarm_id},         {"from", Name(b.from)},
            {"to", Name(b.to)},               {"value_micros", b.value_micros},
            {"evaluated_at_us", b.evaluated_at_us}, {"reason", b.reason}};
  }
  json operator()(const NotificationDelivered& b) const { return NotificationJson(b); }
  json operator()(const NotificationFailed& b) const { return NotificationJson(b); }
  json operator()(const ApiCallRecorded& b) const {
    return {{"request_id", b.request_id},
            {"workspace_id", b.workspace_id},
            {"key_id", b.key_id},
            {"occurred_at_us", b.occurred_at_us},
            {"method", b.method},
            {"path", b.path},
            {"status", b.status},
            {"latency_us", b.latency_us},
            {"units", b.units},
            {"request_bytes", b.request_bytes},
            {"response_bytes", b.response_bytes},
            {"client_ip", b.client_ip},
            {"origin", b.origin},
            {"logged", b.logged},
            {"request", ExcerptJson(b.request)},
            {"response", ExcerptJson(b.response)}};
  }
  json operator()(const AuthorizationDenied& b) const {
    return {{"request_id", b.request_id},   {"workspace_id", b.workspace_id},
            {"key_id", b.key_id},           {"occurred_at_us", b.occurred_at_us},
            {"reason", Name(b.reason)},     {"client_ip", b.client_ip},
            {"origin", b.origin},           {"count", b.count}};
  }
  json operator()(const PricePlanPublished& b) const {
    json tiers = json::array();
    for (const auto& t : b.tiers) tiers.push_back(TierJson(t));
    return {{"plan_id", b.plan_id},
            {"version", b.version},
            {"currency", b.currency},
            {"currency_exponent", b.currency_exponent},
            {"metric", b.metric},
            {"mode", Name(b.mode)},
            {"tiers", std::move(tiers)},
            {"monthly_fee_minor", b.monthly_fee_minor}};
  }
  json operator()(const InvoiceIssued& b) const {
    json lines = json::array();
    for (const auto& l : b.lines) lines.push_back(InvoiceLineJson(l));
    json usage = json::array();
    for (const auto& u : b.key_usage) usage.push_back({{"key_id", u.key_id}, {"quantity", u.quantity}});
    return {{"workspace_id", b.workspace_id},
            {"month", b.month},
            {"invoice_number", b.invoice_number},
            {"currency", b.currency},
            {"lines", std::move(lines)},
            {"key_usage", std::move(usage)},
            {"subtotal_minor", b.subtotal_minor},
            {"total_minor", b.total_minor},
            {"covers_sequence", b.covers_sequence},
            {"digest", Hex(b.digest)},
            {"plan_id", b.plan_id},
            {"plan_version", b.plan_version}};
  }
  // The operator may choose its token (KEYLEDGER_ADMIN_TOKEN, 16 bytes and
  // up): its unsalted hash in a dump that leaves the building could be
  // searched offline. Random secrets' hashes (keys, workspace tokens) stay.
  json operator()(const OperatorTokenSet&) const { return {{"token_hash", kRedacted}}; }
};

}  // namespace

nlohmann::json EventToJson(const Event& event) {
  return {{"sequence", event.sequence},
          {"recorded_at", FormatRfc3339(event.recorded_at_us)},
          {"recorded_at_us", event.recorded_at_us},
          {"stream_id", event.stream_id},
          {"stream_version", event.stream_version},
          {"event_id", Hex(event.event_id)},
          {"actor", event.actor},
          {"prev_hash", Hex(event.prev_hash)},
          {"hash", Hex(event.hash)},
          {"type", EventTypeName(event.body)},
          {"data", std::visit(BodyJson{}, event.body)}};
}

std::string DumpJsonLine(const nlohmann::json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

}  // namespace keyledger
