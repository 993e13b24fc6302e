// Plain domain structs for every ledger event. These mirror ledger/events.capnp
// one to one; the codec (ledger/codec.h) is the only code that knows Cap'n Proto.
//
// Thread safety: plain values.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace keyledger {

using Hash = std::array<uint8_t, 32>;
using EventId = std::array<uint8_t, 16>;

// ---- Workspaces, security groups, keys, tokens -------------------------------

struct WorkspaceState {
  std::string workspace_id;
  std::string name;
  uint32_t tps_limit = 0;
  std::string billing_timezone;
  std::string price_plan_id;  // empty: no plan
  bool operator==(const WorkspaceState&) const = default;
};
struct WorkspaceCreated : WorkspaceState {};
struct WorkspaceChanged : WorkspaceState {};

struct SecurityGroupState {
  std::string workspace_id;
  std::string group_id;
  std::string name;
  std::vector<std::string> ip_allow;      // canonical CIDRs
  std::vector<std::string> origin_allow;  // origin patterns
  bool operator==(const SecurityGroupState&) const = default;
};
struct SecurityGroupCreated : SecurityGroupState {};
struct SecurityGroupChanged : SecurityGroupState {};
struct SecurityGroupDeleted {
  std::string workspace_id;
  std::string group_id;
  bool operator==(const SecurityGroupDeleted&) const = default;
};

struct KeyCreated {
  std::string workspace_id;
  std::string key_id;
  std::string name;
  std::string description;
  std::string security_group_id;
  Hash secret_hash{};
  bool operator==(const KeyCreated&) const = default;
};
struct KeyRenamed {
  std::string workspace_id;
  std::string key_id;
  std::string name;
  bool operator==(const KeyRenamed&) const = default;
};
struct KeyDescriptionChanged {
  std::string workspace_id;
  std::string key_id;
  std::string description;
  bool operator==(const KeyDescriptionChanged&) const = default;
};
struct KeySecurityGroupChanged {
  std::string workspace_id;
  std::string key_id;
  std::string security_group_id;
  bool operator==(const KeySecurityGroupChanged&) const = default;
};
struct KeyLoggingSwitched {
  std::string workspace_id;
  std::string key_id;
  bool enabled = false;
  bool operator==(const KeyLoggingSwitched&) const = default;
};
struct KeyRotated {
  std::string workspace_id;
  std::string key_id;
  Hash new_secret_hash{};
  int64_t old_secret_valid_until_us = 0;
  bool operator==(const KeyRotated&) const = default;
};
struct KeyDeleted {
  std::string workspace_id;
  std::string key_id;
  bool operator==(const KeyDeleted&) const = default;
};
struct WorkspaceTokenCreated {
  std::string workspace_id;
  std::string token_id;
  Hash token_hash{};
  bool operator==(const WorkspaceTokenCreated&) const = default;
};
struct WorkspaceTokenRevoked {
  std::string workspace_id;
  std::string token_id;
  bool operator==(const WorkspaceTokenRevoked&) const = default;
};
struct OperatorTokenSet {
  Hash token_hash{};
  bool operator==(const OperatorTokenSet&) const = default;
};

// ---- Alarms and notifications -------------------------------------------------

// Enum values equal the schema's ordinals; never renumber.
enum class AlarmMetric : uint8_t { kCalls = 0, kErrors, kErrorRate, kLatencyP95Ms, kUnits, kSpendMinor };
enum class Comparator : uint8_t { kGreater = 0, kGreaterOrEqual, kLess, kLessOrEqual };
enum class MissingData : uint8_t { kMissing = 0, kIgnore, kBreaching, kNotBreaching };
enum class AlarmState : uint8_t { kInsufficientData = 0, kOk, kAlarm };

struct EmailChannel {
  std::string to;
  bool operator==(const EmailChannel&) const = default;
};
struct WebhookChannel {
  std::string url;
  std::string secret;
  bool operator==(const WebhookChannel&) const = default;
};
using AlarmChannel = std::variant<EmailChannel, WebhookChannel>;

struct AlarmSpec {
  std::string workspace_id;
  std::string key_id;
  std::string alarm_id;
  std::string name;
  AlarmMetric metric = AlarmMetric::kCalls;
  Comparator comparator = Comparator::kGreater;
  int64_t threshold_micros = 0;
  uint32_t period_seconds = 0;
  uint32_t evaluation_periods = 0;
  uint32_t datapoints_to_alarm = 0;
  MissingData missing_data = MissingData::kMissing;
  std::vector<AlarmChannel> channels;
  bool operator==(const AlarmSpec&) const = default;
};
struct AlarmCreated : AlarmSpec {};
struct AlarmChanged : AlarmSpec {};
struct AlarmDeleted {
  std::string workspace_id;
  std::string key_id;
  std::string alarm_id;
  bool operator==(const AlarmDeleted&) const = default;
};
struct AlarmStateChanged {
  std::string workspace_id;
  std::string key_id;
  std::string alarm_id;
  AlarmState from = AlarmState::kInsufficientData;
  AlarmState to = AlarmState::kInsufficientData;
  int64_t value_micros = 0;
  int64_t evaluated_at_us = 0;
  std::string reason;
  bool operator==(const AlarmStateChanged&) const = default;
};
struct NotificationAttempt {
  std::string workspace_id;
  std::string alarm_id;
  std::string notification_id;
  uint32_t channel_index = 0;
  uint32_t attempt = 0;
  uint32_t http_status = 0;
  std::string error;
  int64_t next_attempt_at_us = 0;
  bool operator==(const NotificationAttempt&) const = default;
};
struct NotificationDelivered : NotificationAttempt {};
struct NotificationFailed : NotificationAttempt {};

// ---- Calls and authorization ----------------------------------------------------

struct HttpHeader {
  std::string name;
  std::string value;
  bool operator==(const HttpHeader&) const = default;
};
struct HttpExcerpt {
  std::vector<HttpHeader> headers;
  std::string body_excerpt;  // bytes, at most 4 KiB
  bool operator==(const HttpExcerpt&) const = default;
};

struct ApiCallRecorded {
  std::string request_id;
  std::string workspace_id;
  std::string key_id;
  int64_t occurred_at_us = 0;
  std::string method;
  std::string path;
  uint16_t status = 0;
  uint64_t latency_us = 0;
  uint64_t units = 0;
  uint64_t request_bytes = 0;
  uint64_t response_bytes = 0;
  std::string client_ip;
  std::string origin;
  bool logged = false;
  HttpExcerpt request;   // empty unless logged
  HttpExcerpt response;  // empty unless logged
  bool operator==(const ApiCallRecorded&) const = default;
};

enum class DenialReason : uint8_t {
  kUnknownKey = 0,
  kRevokedSecret,
  kIpNotAllowed,
  kOriginNotAllowed,
  kRateLimited,
  kMalformedCredentials,
};

struct AuthorizationDenied {
  std::string request_id;
  std::string workspace_id;
  std::string key_id;
  int64_t occurred_at_us = 0;
  DenialReason reason = DenialReason::kUnknownKey;
  std::string client_ip;
  std::string origin;
  uint64_t count = 1;
  bool operator==(const AuthorizationDenied&) const = default;
};

// ---- Billing ----------------------------------------------------------------------

enum class PricingMode : uint8_t { kGraduated = 0, kVolume };

struct PriceTier {
  std::optional<uint64_t> up_to;  // nullopt: no upper bound
  int64_t unit_price_micros = 0;
  bool operator==(const PriceTier&) const = default;
};
struct PricePlanPublished {
  std::string plan_id;
  uint32_t version = 0;
  std::string currency;
  uint8_t currency_exponent = 0;
  std::string metric;
  PricingMode mode = PricingMode::kGraduated;
  std::vector<PriceTier> tiers;
  int64_t monthly_fee_minor = 0;
  bool operator==(const PricePlanPublished&) const = default;
};
struct InvoiceLine {
  std::string kind;
  std::string description;
  uint64_t quantity = 0;
  int64_t unit_price_micros = 0;
  int64_t amount_minor = 0;
  std::string month;
  bool operator==(const InvoiceLine&) const = default;
};
struct KeyUsage {
  std::string key_id;
  uint64_t quantity = 0;
  bool operator==(const KeyUsage&) const = default;
};
struct InvoiceIssued {
  std::string workspace_id;
  std::string month;
  uint64_t invoice_number = 0;
  std::string currency;
  std::vector<InvoiceLine> lines;
  std::vector<KeyUsage> key_usage;
  int64_t subtotal_minor = 0;
  int64_t total_minor = 0;
  uint64_t covers_sequence = 0;
  Hash digest{};
  std::string plan_id;
  uint32_t plan_version = 0;
  bool operator==(const InvoiceIssued&) const = default;
};

// The order of alternatives is not persistent (the codec maps them to the
// schema's union by name), but keep it in schema order for readability.
using EventBody = std::variant<
    WorkspaceCreated, WorkspaceChanged, SecurityGroupCreated, SecurityGroupChanged,
    SecurityGroupDeleted, KeyCreated, KeyRenamed, KeyDescriptionChanged,
    KeySecurityGroupChanged, KeyLoggingSwitched, KeyRotated, KeyDeleted,
    WorkspaceTokenCreated, WorkspaceTokenRevoked, AlarmCreated, AlarmChanged, AlarmDeleted,
    AlarmStateChanged, NotificationDelivered, NotificationFailed, ApiCallRecorded,
    AuthorizationDenied, PricePlanPublished, InvoiceIssued, OperatorTokenSet>;

// Visits an EventBody with one lambda per type:
// std::visit(Overloaded{[](const KeyCreated&) {...}, [](const auto&) {...}}, body).
template <typename... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <typename... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

// Returns a stable snake_case name of the body's type, e.g. "key_created".
const char* EventTypeName(const EventBody& body);

// What a caller proposes to append.
struct NewEvent {
  EventId event_id{};            // unique forever; a retry reuses it
  std::string stream_id;         // REQUIRES: 1..kStreamIdBytesMax bytes
  // When set, the stream must be at exactly this version before this event
  // (0: the stream must not exist yet); otherwise the append fails with Conflict.
  std::optional<uint64_t> expected_version;
  std::string actor;
  EventBody body;
};

// A stored event, decoded.
struct Event {
  uint64_t sequence = 0;
  int64_t recorded_at_us = 0;
  std::string stream_id;
  uint64_t stream_version = 0;
  EventId event_id{};
  std::string actor;
  Hash prev_hash{};
  Hash hash{};
  EventBody body;
};

constexpr size_t kStreamIdBytesMax = 128;
constexpr size_t kActorBytesMax = 128;

}  // namespace keyledger
