// Maps the plain event structs of ledger/event.h to and from the Cap'n Proto
// schema in ledger/events.capnp. This file is the only place that sees Cap'n
// Proto or KJ types; exceptions they throw are caught here and returned as
// Status::Corruption.
//
// Layout of this file: enum checks, encoding (Fill* per schema struct, then
// BodyEncoder dispatching on the EventBody alternative), decoding (Read* per
// schema struct, then DecodeBody dispatching on the union tag), the public
// functions at the end.

#include "ledger/codec.h"

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <bit>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "events.capnp.h"
#include "ledger/wire_reader.h"

namespace keyledger {
namespace {

// ---- Enum ordinals ------------------------------------------------------------
//
// Domain enums are numbered like the schema's, so they convert by value.

template <typename S, typename D>
constexpr bool SameOrdinal(S schema_value, D domain_value) {
  return static_cast<uint16_t>(schema_value) == static_cast<uint16_t>(domain_value);
}

static_assert(SameOrdinal(schema::AlarmMetric::CALLS, AlarmMetric::kCalls));
static_assert(SameOrdinal(schema::AlarmMetric::ERRORS, AlarmMetric::kErrors));
static_assert(SameOrdinal(schema::AlarmMetric::ERROR_RATE, AlarmMetric::kErrorRate));
static_assert(SameOrdinal(schema::AlarmMetric::LATENCY_P95_MS, AlarmMetric::kLatencyP95Ms));
static_assert(SameOrdinal(schema::AlarmMetric::UNITS, AlarmMetric::kUnits));
static_assert(SameOrdinal(schema::AlarmMetric::SPEND_MINOR, AlarmMetric::kSpendMinor));
static_assert(SameOrdinal(schema::Comparator::GREATER, Comparator::kGreater));
static_assert(SameOrdinal(schema::Comparator::GREATER_OR_EQUAL, Comparator::kGreaterOrEqual));
static_assert(SameOrdinal(schema::Comparator::LESS, Comparator::kLess));
static_assert(SameOrdinal(schema::Comparator::LESS_OR_EQUAL, Comparator::kLessOrEqual));
static_assert(SameOrdinal(schema::MissingData::MISSING, MissingData::kMissing));
static_assert(SameOrdinal(schema::MissingData::IGNORE, MissingData::kIgnore));
static_assert(SameOrdinal(schema::MissingData::BREACHING, MissingData::kBreaching));
static_assert(SameOrdinal(schema::MissingData::NOT_BREACHING, MissingData::kNotBreaching));
static_assert(SameOrdinal(schema::AlarmState::INSUFFICIENT_DATA, AlarmState::kInsufficientData));
static_assert(SameOrdinal(schema::AlarmState::OK, AlarmState::kOk));
static_assert(SameOrdinal(schema::AlarmState::ALARM, AlarmState::kAlarm));
static_assert(SameOrdinal(schema::DenialReason::UNKNOWN_KEY, DenialReason::kUnknownKey));
static_assert(SameOrdinal(schema::DenialReason::REVOKED_SECRET, DenialReason::kRevokedSecret));
static_assert(SameOrdinal(schema::DenialReason::IP_NOT_ALLOWED, DenialReason::kIpNotAllowed));
static_assert(SameOrdinal(schema::DenialReason::ORIGIN_NOT_ALLOWED,
                          DenialReason::kOriginNotAllowed));
static_assert(SameOrdinal(schema::DenialReason::RATE_LIMITED, DenialReason::kRateLimited));
static_assert(SameOrdinal(schema::DenialReason::MALFORMED_CREDENTIALS,
                          DenialReason::kMalformedCredentials));
static_assert(SameOrdinal(schema::PricingMode::GRADUATED, PricingMode::kGraduated));
static_assert(SameOrdinal(schema::PricingMode::VOLUME, PricingMode::kVolume));

// The last enumerator of each domain enum; a decoded ordinal above it is unknown.
constexpr AlarmMetric kAlarmMetricLast = AlarmMetric::kSpendMinor;
constexpr Comparator kComparatorLast = Comparator::kLessOrEqual;
constexpr MissingData kMissingDataLast = MissingData::kNotBreaching;
constexpr AlarmState kAlarmStateLast = AlarmState::kAlarm;
constexpr DenialReason kDenialReasonLast = DenialReason::kMalformedCredentials;
constexpr PricingMode kPricingModeLast = PricingMode::kVolume;

// ---- Encoding -----------------------------------------------------------------

// Cap'n Proto lists and blobs hold fewer than 2^29 elements.
constexpr size_t kCapnpElementsMax = (size_t{1} << 29) - 1;

capnp::uint ListSize(size_t size) {
  assert(size <= kCapnpElementsMax);
  return static_cast<capnp::uint>(size);
}

capnp::Text::Reader AsText(const std::string& s) {
  assert(s.size() <= kCapnpElementsMax);
  return capnp::Text::Reader(s.data(), s.size());  // std::string is NUL-terminated
}

capnp::Data::Reader AsData(const std::string& s) {
  assert(s.size() <= kCapnpElementsMax);
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

template <size_t N>
capnp::Data::Reader AsData(const std::array<uint8_t, N>& bytes) {
  return capnp::Data::Reader(bytes.data(), bytes.size());
}

template <typename S, typename D>
S ToSchema(D domain_value) {
  return static_cast<S>(static_cast<uint16_t>(domain_value));
}

void FillTexts(capnp::List<capnp::Text>::Builder list, const std::vector<std::string>& values) {
  for (capnp::uint i = 0; i < list.size(); i++) list.set(i, AsText(values[i]));
}

void Fill(schema::WorkspaceState::Builder b, const WorkspaceState& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setName(AsText(v.name));
  b.setTpsLimit(v.tps_limit);
  b.setBillingTimezone(AsText(v.billing_timezone));
  b.setPricePlanId(AsText(v.price_plan_id));
}

void Fill(schema::SecurityGroupState::Builder b, const SecurityGroupState& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setGroupId(AsText(v.group_id));
  b.setName(AsText(v.name));
  FillTexts(b.initIpAllow(ListSize(v.ip_allow.size())), v.ip_allow);
  FillTexts(b.initOriginAllow(ListSize(v.origin_allow.size())), v.origin_allow);
}

void Fill(schema::SecurityGroupDeleted::Builder b, const SecurityGroupDeleted& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setGroupId(AsText(v.group_id));
}

void Fill(schema::KeyCreated::Builder b, const KeyCreated& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setName(AsText(v.name));
  b.setDescription(AsText(v.description));
  b.setSecurityGroupId(AsText(v.security_group_id));
  b.setSecretHash(AsData(v.secret_hash));
}

void Fill(schema::KeyRenamed::Builder b, const KeyRenamed& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setName(AsText(v.name));
}

void Fill(schema::KeyDescriptionChanged::Builder b, const KeyDescriptionChanged& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setDescription(AsText(v.description));
}

void Fill(schema::KeySecurityGroupChanged::Builder b, const KeySecurityGroupChanged& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setSecurityGroupId(AsText(v.security_group_id));
}

void Fill(schema::KeyLoggingSwitched::Builder b, const KeyLoggingSwitched& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setEnabled(v.enabled);
}

void Fill(schema::KeyRotated::Builder b, const KeyRotated& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setNewSecretHash(AsData(v.new_secret_hash));
  b.setOldSecretValidUntilUs(v.old_secret_valid_until_us);
}

void Fill(schema::KeyDeleted::Builder b, const KeyDeleted& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
}

void Fill(schema::WorkspaceTokenCreated::Builder b, const WorkspaceTokenCreated& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setTokenId(AsText(v.token_id));
  b.setTokenHash(AsData(v.token_hash));
}

void Fill(schema::WorkspaceTokenRevoked::Builder b, const WorkspaceTokenRevoked& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setTokenId(AsText(v.token_id));
}

void Fill(schema::OperatorTokenSet::Builder b, const OperatorTokenSet& v) {
  b.setTokenHash(AsData(v.token_hash));
}

void Fill(schema::AlarmChannel::Builder b, const AlarmChannel& v) {
  auto type = b.getType();
  if (const auto* email = std::get_if<EmailChannel>(&v)) {
    type.setEmail(AsText(email->to));
    return;
  }
  const auto& webhook = std::get<WebhookChannel>(v);
  auto w = type.initWebhook();
  w.setUrl(AsText(webhook.url));
  w.setSecret(AsText(webhook.secret));
}

void Fill(schema::AlarmSpec::Builder b, const AlarmSpec& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setAlarmId(AsText(v.alarm_id));
  b.setName(AsText(v.name));
  b.setMetric(ToSchema<schema::AlarmMetric>(v.metric));
  b.setComparator(ToSchema<schema::Comparator>(v.comparator));
  b.setThresholdMicros(v.threshold_micros);
  b.setPeriodSeconds(v.period_seconds);
  b.setEvaluationPeriods(v.evaluation_periods);
  b.setDatapointsToAlarm(v.datapoints_to_alarm);
  b.setMissingData(ToSchema<schema::MissingData>(v.missing_data));
  auto channels = b.initChannels(ListSize(v.channels.size()));
  for (capnp::uint i = 0; i < channels.size(); i++) Fill(channels[i], v.channels[i]);
}

void Fill(schema::AlarmDeleted::Builder b, const AlarmDeleted& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setAlarmId(AsText(v.alarm_id));
}

void Fill(schema::AlarmStateChanged::Builder b, const AlarmStateChanged& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setAlarmId(AsText(v.alarm_id));
  b.setFrom(ToSchema<schema::AlarmState>(v.from));
  b.setTo(ToSchema<schema::AlarmState>(v.to));
  b.setValueMicros(v.value_micros);
  b.setEvaluatedAtUs(v.evaluated_at_us);
  b.setReason(AsText(v.reason));
}

void Fill(schema::NotificationAttempt::Builder b, const NotificationAttempt& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setAlarmId(AsText(v.alarm_id));
  b.setNotificationId(AsText(v.notification_id));
  b.setChannelIndex(v.channel_index);
  b.setAttempt(v.attempt);
  b.setHttpStatus(v.http_status);
  b.setError(AsText(v.error));
  b.setNextAttemptAtUs(v.next_attempt_at_us);
}

// The call is the event the log is mostly made of, so its empty optional
// fields are left as null pointers, which every reader takes as empty: an
// empty excerpt costs no words and no Fill (~300 instructions per call).
void Fill(schema::HttpExcerpt::Builder b, const HttpExcerpt& v) {
  if (!v.headers.empty()) {
    auto headers = b.initHeaders(ListSize(v.headers.size()));
    for (capnp::uint i = 0; i < headers.size(); i++) {
      headers[i].setName(AsText(v.headers[i].name));
      headers[i].setValue(AsText(v.headers[i].value));
    }
  }
  if (!v.body_excerpt.empty()) b.setBodyExcerpt(AsData(v.body_excerpt));
}

void Fill(schema::ApiCallRecorded::Builder b, const ApiCallRecorded& v) {
  b.setRequestId(AsText(v.request_id));
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setOccurredAtUs(v.occurred_at_us);
  if (!v.method.empty()) b.setMethod(AsText(v.method));
  if (!v.path.empty()) b.setPath(AsText(v.path));
  b.setStatus(v.status);
  b.setLatencyUs(v.latency_us);
  b.setUnits(v.units);
  b.setRequestBytes(v.request_bytes);
  b.setResponseBytes(v.response_bytes);
  if (!v.client_ip.empty()) b.setClientIp(AsText(v.client_ip));
  if (!v.origin.empty()) b.setOrigin(AsText(v.origin));
  b.setLogged(v.logged);
  if (!v.request.headers.empty() || !v.request.body_excerpt.empty()) {
    Fill(b.initRequest(), v.request);
  }
  if (!v.response.headers.empty() || !v.response.body_excerpt.empty()) {
    Fill(b.initResponse(), v.response);
  }
}

void Fill(schema::AuthorizationDenied::Builder b, const AuthorizationDenied& v) {
  b.setRequestId(AsText(v.request_id));
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setKeyId(AsText(v.key_id));
  b.setOccurredAtUs(v.occurred_at_us);
  b.setReason(ToSchema<schema::DenialReason>(v.reason));
  b.setClientIp(AsText(v.client_ip));
  b.setOrigin(AsText(v.origin));
  b.setCount(v.count);
}

void Fill(schema::PriceTier::Builder b, const PriceTier& v) {
  b.setUpTo(v.up_to.value_or(0));
  b.setUnbounded(!v.up_to.has_value());
  b.setUnitPriceMicros(v.unit_price_micros);
}

void Fill(schema::PricePlanPublished::Builder b, const PricePlanPublished& v) {
  b.setPlanId(AsText(v.plan_id));
  b.setVersion(v.version);
  b.setCurrency(AsText(v.currency));
  b.setCurrencyExponent(v.currency_exponent);
  b.setMetric(AsText(v.metric));
  b.setMode(ToSchema<schema::PricingMode>(v.mode));
  auto tiers = b.initTiers(ListSize(v.tiers.size()));
  for (capnp::uint i = 0; i < tiers.size(); i++) Fill(tiers[i], v.tiers[i]);
  b.setMonthlyFeeMinor(v.monthly_fee_minor);
}

void Fill(schema::InvoiceLine::Builder b, const InvoiceLine& v) {
  b.setKind(AsText(v.kind));
  b.setDescription(AsText(v.description));
  b.setQuantity(v.quantity);
  b.setUnitPriceMicros(v.unit_price_micros);
  b.setAmountMinor(v.amount_minor);
  b.setMonth(AsText(v.month));
}

void Fill(schema::InvoiceIssued::Builder b, const InvoiceIssued& v) {
  b.setWorkspaceId(AsText(v.workspace_id));
  b.setMonth(AsText(v.month));
  b.setInvoiceNumber(v.invoice_number);
  b.setCurrency(AsText(v.currency));
  auto lines = b.initLines(ListSize(v.lines.size()));
  for (capnp::uint i = 0; i < lines.size(); i++) Fill(lines[i], v.lines[i]);
  auto usage = b.initKeyUsage(ListSize(v.key_usage.size()));
  for (capnp::uint i = 0; i < usage.size(); i++) {
    usage[i].setKeyId(AsText(v.key_usage[i].key_id));
    usage[i].setQuantity(v.key_usage[i].quantity);
  }
  b.setSubtotalMinor(v.subtotal_minor);
  b.setTotalMinor(v.total_minor);
  b.setCoversSequence(v.covers_sequence);
  b.setDigest(AsData(v.digest));
  b.setPlanId(AsText(v.plan_id));
  b.setPlanVersion(v.plan_version);
}

// Sets the Envelope.body union member named like the visited alternative.
class BodyEncoder {
 public:
  explicit BodyEncoder(schema::Envelope::Body::Builder body) : body_(body) {}

  void operator()(const WorkspaceCreated& v) { Fill(body_.initWorkspaceCreated(), v); }
  void operator()(const WorkspaceChanged& v) { Fill(body_.initWorkspaceChanged(), v); }
  void operator()(const SecurityGroupCreated& v) { Fill(body_.initSecurityGroupCreated(), v); }
  void operator()(const SecurityGroupChanged& v) { Fill(body_.initSecurityGroupChanged(), v); }
  void operator()(const SecurityGroupDeleted& v) { Fill(body_.initSecurityGroupDeleted(), v); }
  void operator()(const KeyCreated& v) { Fill(body_.initKeyCreated(), v); }
  void operator()(const KeyRenamed& v) { Fill(body_.initKeyRenamed(), v); }
  void operator()(const KeyDescriptionChanged& v) { Fill(body_.initKeyDescriptionChanged(), v); }
  void operator()(const KeySecurityGroupChanged& v) {
    Fill(body_.initKeySecurityGroupChanged(), v);
  }
  void operator()(const KeyLoggingSwitched& v) { Fill(body_.initKeyLoggingSwitched(), v); }
  void operator()(const KeyRotated& v) { Fill(body_.initKeyRotated(), v); }
  void operator()(const KeyDeleted& v) { Fill(body_.initKeyDeleted(), v); }
  void operator()(const WorkspaceTokenCreated& v) { Fill(body_.initWorkspaceTokenCreated(), v); }
  void operator()(const WorkspaceTokenRevoked& v) { Fill(body_.initWorkspaceTokenRevoked(), v); }
  void operator()(const AlarmCreated& v) { Fill(body_.initAlarmCreated(), v); }
  void operator()(const AlarmChanged& v) { Fill(body_.initAlarmChanged(), v); }
  void operator()(const AlarmDeleted& v) { Fill(body_.initAlarmDeleted(), v); }
  void operator()(const AlarmStateChanged& v) { Fill(body_.initAlarmStateChanged(), v); }
  void operator()(const NotificationDelivered& v) { Fill(body_.initNotificationDelivered(), v); }
  void operator()(const NotificationFailed& v) { Fill(body_.initNotificationFailed(), v); }
  void operator()(const ApiCallRecorded& v) { Fill(body_.initApiCallRecorded(), v); }
  void operator()(const AuthorizationDenied& v) { Fill(body_.initAuthorizationDenied(), v); }
  void operator()(const PricePlanPublished& v) { Fill(body_.initPricePlanPublished(), v); }
  void operator()(const InvoiceIssued& v) { Fill(body_.initInvoiceIssued(), v); }
  void operator()(const OperatorTokenSet& v) { Fill(body_.initOperatorTokenSet(), v); }

 private:
  schema::Envelope::Body::Builder body_;
};

void FillEnvelope(schema::Envelope::Builder b, const EnvelopeFields& e, const EventBody& body) {
  b.setSequence(e.sequence);
  b.setRecordedAtUs(e.recorded_at_us);
  b.setStreamId(AsText(*e.stream_id));
  b.setStreamVersion(e.stream_version);
  b.setEventId(AsData(*e.event_id));
  b.setActor(AsText(*e.actor));
  b.setPrevHash(AsData(*e.prev_hash));
  BodyEncoder encoder(b.getBody());
  std::visit(encoder, body);
}

// ---- Decoding -----------------------------------------------------------------
//
// Read* functions fill a domain struct from a schema reader. They may throw
// kj::Exception on malformed pointers; the caller (WithEnvelope) catches it.

std::string ToString(capnp::Text::Reader text) { return std::string(text.cStr(), text.size()); }

std::string ToString(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

std::vector<std::string> ToStrings(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  out.reserve(list.size());
  for (capnp::Text::Reader text : list) out.push_back(ToString(text));
  return out;
}

// Returns Corruption unless `data` is exactly N bytes.
template <size_t N>
Status ReadFixed(capnp::Data::Reader data, const char* field, std::array<uint8_t, N>* out) {
  if (data.size() != N) {
    return Status::Corruption(std::string(field) + " has " + std::to_string(data.size()) +
                              " bytes, want " + std::to_string(N));
  }
  std::memcpy(out->data(), data.begin(), N);
  return Status::Ok();
}

// Returns Corruption if `value` is beyond `last`, the highest ordinal this build knows.
template <typename D, typename S>
Status ReadEnum(S value, D last, const char* field, D* out) {
  const auto ordinal = static_cast<uint16_t>(value);
  if (ordinal > static_cast<uint16_t>(last)) {
    return Status::Corruption(std::string(field) + " has unknown value " +
                              std::to_string(ordinal));
  }
  *out = static_cast<D>(ordinal);
  return Status::Ok();
}

Status Read(schema::WorkspaceState::Reader r, WorkspaceState* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->name = ToString(r.getName());
  out->tps_limit = r.getTpsLimit();
  out->billing_timezone = ToString(r.getBillingTimezone());
  out->price_plan_id = ToString(r.getPricePlanId());
  return Status::Ok();
}

Status Read(schema::SecurityGroupState::Reader r, SecurityGroupState* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->group_id = ToString(r.getGroupId());
  out->name = ToString(r.getName());
  out->ip_allow = ToStrings(r.getIpAllow());
  out->origin_allow = ToStrings(r.getOriginAllow());
  return Status::Ok();
}

Status Read(schema::SecurityGroupDeleted::Reader r, SecurityGroupDeleted* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->group_id = ToString(r.getGroupId());
  return Status::Ok();
}

Status Read(schema::KeyCreated::Reader r, KeyCreated* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->name = ToString(r.getName());
  out->description = ToString(r.getDescription());
  out->security_group_id = ToString(r.getSecurityGroupId());
  return ReadFixed(r.getSecretHash(), "keyCreated.secretHash", &out->secret_hash);
}

Status Read(schema::KeyRenamed::Reader r, KeyRenamed* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->name = ToString(r.getName());
  return Status::Ok();
}

Status Read(schema::KeyDescriptionChanged::Reader r, KeyDescriptionChanged* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->description = ToString(r.getDescription());
  return Status::Ok();
}

Status Read(schema::KeySecurityGroupChanged::Reader r, KeySecurityGroupChanged* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->security_group_id = ToString(r.getSecurityGroupId());
  return Status::Ok();
}

Status Read(schema::KeyLoggingSwitched::Reader r, KeyLoggingSwitched* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->enabled = r.getEnabled();
  return Status::Ok();
}

Status Read(schema::KeyRotated::Reader r, KeyRotated* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->old_secret_valid_until_us = r.getOldSecretValidUntilUs();
  return ReadFixed(r.getNewSecretHash(), "keyRotated.newSecretHash", &out->new_secret_hash);
}

Status Read(schema::KeyDeleted::Reader r, KeyDeleted* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  return Status::Ok();
}

Status Read(schema::WorkspaceTokenCreated::Reader r, WorkspaceTokenCreated* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->token_id = ToString(r.getTokenId());
  return ReadFixed(r.getTokenHash(), "workspaceTokenCreated.tokenHash", &out->token_hash);
}

Status Read(schema::WorkspaceTokenRevoked::Reader r, WorkspaceTokenRevoked* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->token_id = ToString(r.getTokenId());
  return Status::Ok();
}

Status Read(schema::OperatorTokenSet::Reader r, OperatorTokenSet* out) {
  return ReadFixed(r.getTokenHash(), "operatorTokenSet.tokenHash", &out->token_hash);
}

Status Read(schema::AlarmChannel::Reader r, AlarmChannel* out) {
  const auto type = r.getType();
  switch (type.which()) {
    case schema::AlarmChannel::Type::EMAIL:
      *out = EmailChannel{ToString(type.getEmail())};
      return Status::Ok();
    case schema::AlarmChannel::Type::WEBHOOK:
      *out = WebhookChannel{ToString(type.getWebhook().getUrl()),
                            ToString(type.getWebhook().getSecret())};
      return Status::Ok();
  }
  return Status::Corruption("unknown alarm channel type " +
                            std::to_string(static_cast<uint16_t>(type.which())));
}

Status ReadChannels(capnp::List<schema::AlarmChannel>::Reader list,
                    std::vector<AlarmChannel>* out) {
  out->resize(list.size());
  for (capnp::uint i = 0; i < list.size(); i++) KL_RETURN_IF_ERROR(Read(list[i], &(*out)[i]));
  return Status::Ok();
}

Status Read(schema::AlarmSpec::Reader r, AlarmSpec* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->alarm_id = ToString(r.getAlarmId());
  out->name = ToString(r.getName());
  KL_RETURN_IF_ERROR(ReadEnum(r.getMetric(), kAlarmMetricLast, "alarm.metric", &out->metric));
  KL_RETURN_IF_ERROR(
      ReadEnum(r.getComparator(), kComparatorLast, "alarm.comparator", &out->comparator));
  out->threshold_micros = r.getThresholdMicros();
  out->period_seconds = r.getPeriodSeconds();
  out->evaluation_periods = r.getEvaluationPeriods();
  out->datapoints_to_alarm = r.getDatapointsToAlarm();
  KL_RETURN_IF_ERROR(
      ReadEnum(r.getMissingData(), kMissingDataLast, "alarm.missingData", &out->missing_data));
  return ReadChannels(r.getChannels(), &out->channels);
}

Status Read(schema::AlarmDeleted::Reader r, AlarmDeleted* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->alarm_id = ToString(r.getAlarmId());
  return Status::Ok();
}

Status Read(schema::AlarmStateChanged::Reader r, AlarmStateChanged* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->alarm_id = ToString(r.getAlarmId());
  KL_RETURN_IF_ERROR(ReadEnum(r.getFrom(), kAlarmStateLast, "alarmStateChanged.from", &out->from));
  KL_RETURN_IF_ERROR(ReadEnum(r.getTo(), kAlarmStateLast, "alarmStateChanged.to", &out->to));
  out->value_micros = r.getValueMicros();
  out->evaluated_at_us = r.getEvaluatedAtUs();
  out->reason = ToString(r.getReason());
  return Status::Ok();
}

Status Read(schema::NotificationAttempt::Reader r, NotificationAttempt* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->alarm_id = ToString(r.getAlarmId());
  out->notification_id = ToString(r.getNotificationId());
  out->channel_index = r.getChannelIndex();
  out->attempt = r.getAttempt();
  out->http_status = r.getHttpStatus();
  out->error = ToString(r.getError());
  out->next_attempt_at_us = r.getNextAttemptAtUs();
  return Status::Ok();
}

HttpExcerpt ReadExcerpt(schema::HttpExcerpt::Reader r) {
  HttpExcerpt out;
  out.headers.reserve(r.getHeaders().size());
  for (schema::Header::Reader header : r.getHeaders()) {
    out.headers.push_back(HttpHeader{ToString(header.getName()), ToString(header.getValue())});
  }
  out.body_excerpt = ToString(r.getBodyExcerpt());
  return out;
}

Status Read(schema::ApiCallRecorded::Reader r, ApiCallRecorded* out) {
  out->request_id = ToString(r.getRequestId());
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->occurred_at_us = r.getOccurredAtUs();
  out->method = ToString(r.getMethod());
  out->path = ToString(r.getPath());
  out->status = r.getStatus();
  out->latency_us = r.getLatencyUs();
  out->units = r.getUnits();
  out->request_bytes = r.getRequestBytes();
  out->response_bytes = r.getResponseBytes();
  out->client_ip = ToString(r.getClientIp());
  out->origin = ToString(r.getOrigin());
  out->logged = r.getLogged();
  out->request = ReadExcerpt(r.getRequest());
  out->response = ReadExcerpt(r.getResponse());
  return Status::Ok();
}

Status Read(schema::AuthorizationDenied::Reader r, AuthorizationDenied* out) {
  out->request_id = ToString(r.getRequestId());
  out->workspace_id = ToString(r.getWorkspaceId());
  out->key_id = ToString(r.getKeyId());
  out->occurred_at_us = r.getOccurredAtUs();
  KL_RETURN_IF_ERROR(
      ReadEnum(r.getReason(), kDenialReasonLast, "authorizationDenied.reason", &out->reason));
  out->client_ip = ToString(r.getClientIp());
  out->origin = ToString(r.getOrigin());
  out->count = r.getCount();
  return Status::Ok();
}

PriceTier ReadTier(schema::PriceTier::Reader r) {
  PriceTier out;
  if (!r.getUnbounded()) out.up_to = r.getUpTo();
  out.unit_price_micros = r.getUnitPriceMicros();
  return out;
}

Status Read(schema::PricePlanPublished::Reader r, PricePlanPublished* out) {
  out->plan_id = ToString(r.getPlanId());
  out->version = r.getVersion();
  out->currency = ToString(r.getCurrency());
  out->currency_exponent = r.getCurrencyExponent();
  out->metric = ToString(r.getMetric());
  KL_RETURN_IF_ERROR(ReadEnum(r.getMode(), kPricingModeLast, "pricePlan.mode", &out->mode));
  out->tiers.reserve(r.getTiers().size());
  for (schema::PriceTier::Reader tier : r.getTiers()) out->tiers.push_back(ReadTier(tier));
  out->monthly_fee_minor = r.getMonthlyFeeMinor();
  return Status::Ok();
}

InvoiceLine ReadLine(schema::InvoiceLine::Reader r) {
  return InvoiceLine{ToString(r.getKind()),   ToString(r.getDescription()),
                     r.getQuantity(),         r.getUnitPriceMicros(),
                     r.getAmountMinor(),      ToString(r.getMonth())};
}

Status Read(schema::InvoiceIssued::Reader r, InvoiceIssued* out) {
  out->workspace_id = ToString(r.getWorkspaceId());
  out->month = ToString(r.getMonth());
  out->invoice_number = r.getInvoiceNumber();
  out->currency = ToString(r.getCurrency());
  out->lines.reserve(r.getLines().size());
  for (schema::InvoiceLine::Reader line : r.getLines()) out->lines.push_back(ReadLine(line));
  out->key_usage.reserve(r.getKeyUsage().size());
  for (schema::KeyUsage::Reader usage : r.getKeyUsage()) {
    out->key_usage.push_back(KeyUsage{ToString(usage.getKeyId()), usage.getQuantity()});
  }
  out->subtotal_minor = r.getSubtotalMinor();
  out->total_minor = r.getTotalMinor();
  out->covers_sequence = r.getCoversSequence();
  out->plan_id = ToString(r.getPlanId());
  out->plan_version = r.getPlanVersion();
  return ReadFixed(r.getDigest(), "invoiceIssued.digest", &out->digest);
}

// Reads the union member as domain alternative T (T may derive from the struct
// the Read overload fills, e.g. WorkspaceCreated from WorkspaceState).
template <typename T, typename Reader>
Result<EventBody> ReadAs(Reader reader) {
  T value;
  KL_RETURN_IF_ERROR(Read(reader, &value));
  return EventBody(std::move(value));
}

Result<EventBody> DecodeBody(schema::Envelope::Body::Reader body) {
  using Body = schema::Envelope::Body;
  switch (body.which()) {
    case Body::WORKSPACE_CREATED: return ReadAs<WorkspaceCreated>(body.getWorkspaceCreated());
    case Body::WORKSPACE_CHANGED: return ReadAs<WorkspaceChanged>(body.getWorkspaceChanged());
    case Body::SECURITY_GROUP_CREATED:
      return ReadAs<SecurityGroupCreated>(body.getSecurityGroupCreated());
    case Body::SECURITY_GROUP_CHANGED:
      return ReadAs<SecurityGroupChanged>(body.getSecurityGroupChanged());
    case Body::SECURITY_GROUP_DELETED:
      return ReadAs<SecurityGroupDeleted>(body.getSecurityGroupDeleted());
    case Body::KEY_CREATED: return ReadAs<KeyCreated>(body.getKeyCreated());
    case Body::KEY_RENAMED: return ReadAs<KeyRenamed>(body.getKeyRenamed());
    case Body::KEY_DESCRIPTION_CHANGED:
      return ReadAs<KeyDescriptionChanged>(body.getKeyDescriptionChanged());
    case Body::KEY_SECURITY_GROUP_CHANGED:
      return ReadAs<KeySecurityGroupChanged>(body.getKeySecurityGroupChanged());
    case Body::KEY_LOGGING_SWITCHED:
      return ReadAs<KeyLoggingSwitched>(body.getKeyLoggingSwitched());
    case Body::KEY_ROTATED: return ReadAs<KeyRotated>(body.getKeyRotated());
    case Body::KEY_DELETED: return ReadAs<KeyDeleted>(body.getKeyDeleted());
    case Body::WORKSPACE_TOKEN_CREATED:
      return ReadAs<WorkspaceTokenCreated>(body.getWorkspaceTokenCreated());
    case Body::WORKSPACE_TOKEN_REVOKED:
      return ReadAs<WorkspaceTokenRevoked>(body.getWorkspaceTokenRevoked());
    case Body::ALARM_CREATED: return ReadAs<AlarmCreated>(body.getAlarmCreated());
    case Body::ALARM_CHANGED: return ReadAs<AlarmChanged>(body.getAlarmChanged());
    case Body::ALARM_DELETED: return ReadAs<AlarmDeleted>(body.getAlarmDeleted());
    case Body::ALARM_STATE_CHANGED:
      return ReadAs<AlarmStateChanged>(body.getAlarmStateChanged());
    case Body::NOTIFICATION_DELIVERED:
      return ReadAs<NotificationDelivered>(body.getNotificationDelivered());
    case Body::NOTIFICATION_FAILED:
      return ReadAs<NotificationFailed>(body.getNotificationFailed());
    case Body::API_CALL_RECORDED: return ReadAs<ApiCallRecorded>(body.getApiCallRecorded());
    case Body::AUTHORIZATION_DENIED:
      return ReadAs<AuthorizationDenied>(body.getAuthorizationDenied());
    case Body::PRICE_PLAN_PUBLISHED:
      return ReadAs<PricePlanPublished>(body.getPricePlanPublished());
    case Body::INVOICE_ISSUED: return ReadAs<InvoiceIssued>(body.getInvoiceIssued());
    case Body::OPERATOR_TOKEN_SET: return ReadAs<OperatorTokenSet>(body.getOperatorTokenSet());
  }
  // A newer writer's event type: this build cannot fold it.
  return Status::Corruption("unknown event type " +
                            std::to_string(static_cast<uint16_t>(body.which())));
}

Status ReadHeader(schema::Envelope::Reader r, EnvelopeHeader* out) {
  out->sequence = r.getSequence();
  out->recorded_at_us = r.getRecordedAtUs();
  out->stream_id = ToString(r.getStreamId());
  out->stream_version = r.getStreamVersion();
  KL_RETURN_IF_ERROR(ReadFixed(r.getEventId(), "eventId", &out->event_id));
  KL_RETURN_IF_ERROR(ReadFixed(r.getPrevHash(), "prevHash", &out->prev_hash));
  out->body_kind = static_cast<uint16_t>(r.getBody().which());
  return Status::Ok();
}

Result<Event> ReadEvent(schema::Envelope::Reader r) {
  EnvelopeHeader header;
  KL_RETURN_IF_ERROR(ReadHeader(r, &header));
  KL_ASSIGN_OR_RETURN(EventBody body, DecodeBody(r.getBody()));
  Event event;
  event.sequence = header.sequence;
  event.recorded_at_us = header.recorded_at_us;
  event.stream_id = std::move(header.stream_id);
  event.stream_version = header.stream_version;
  event.event_id = header.event_id;
  event.actor = ToString(r.getActor());
  event.prev_hash = header.prev_hash;
  event.body = std::move(body);
  return event;
}

capnp::ReaderOptions ToReaderOptions(const DecodeLimits& limits) {
  assert(limits.traversal_words_max > 0);
  assert(limits.nesting_depth_max > 0);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits.traversal_words_max;
  options.nestingLimit = limits.nesting_depth_max;
  return options;
}

// Parses `bytes` as one flat-array message and returns `read(root)`. Every
// exception Cap'n Proto throws on malformed input becomes Corruption here.
template <typename T, typename ReadFn>
Result<T> WithEnvelope(std::string_view bytes, const DecodeLimits& limits, ReadFn read) {
  constexpr size_t kWordBytes = sizeof(capnp::word);
  if (bytes.empty()) return Status::Corruption("empty event body");
  if (bytes.size() % kWordBytes != 0) {
    return Status::Corruption("event body of " + std::to_string(bytes.size()) +
                              " bytes is not a whole number of words");
  }
  try {
    kj::Array<capnp::word> aligned_copy;
    kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                          bytes.size() / kWordBytes);
    if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) != 0) {
      aligned_copy = kj::heapArray<capnp::word>(words.size());
      std::memcpy(aligned_copy.begin(), bytes.data(), bytes.size());
      words = aligned_copy;
    }
    capnp::FlatArrayMessageReader message(words, ToReaderOptions(limits));
    if (message.getEnd() != words.end()) {
      return Status::Corruption("event body has bytes after the message");
    }
    return read(message.getRoot<schema::Envelope>());
  } catch (const kj::Exception& e) {
    return Status::Corruption(std::string("malformed event body: ") + e.getDescription().cStr());
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("malformed event body: ") + e.what());
  }
}

// Returns the snake_case name of each EventBody alternative.
struct TypeNamer {
  const char* operator()(const WorkspaceCreated&) const { return "workspace_created"; }
  const char* operator()(const WorkspaceChanged&) const { return "workspace_changed"; }
  const char* operator()(const SecurityGroupCreated&) const { return "security_group_created"; }
  const char* operator()(const SecurityGroupChanged&) const { return "security_group_changed"; }
  const char* operator()(const SecurityGroupDeleted&) const { return "security_group_deleted"; }
  const char* operator()(const KeyCreated&) const { return "key_created"; }
  const char* operator()(const KeyRenamed&) const { return "key_renamed"; }
  const char* operator()(const KeyDescriptionChanged&) const { return "key_description_changed"; }
  const char* operator()(const KeySecurityGroupChanged&) const {
    return "key_security_group_changed";
  }
  const char* operator()(const KeyLoggingSwitched&) const { return "key_logging_switched"; }
  const char* operator()(const KeyRotated&) const { return "key_rotated"; }
  const char* operator()(const KeyDeleted&) const { return "key_deleted"; }
  const char* operator()(const WorkspaceTokenCreated&) const { return "workspace_token_created"; }
  const char* operator()(const WorkspaceTokenRevoked&) const { return "workspace_token_revoked"; }
  const char* operator()(const AlarmCreated&) const { return "alarm_created"; }
  const char* operator()(const AlarmChanged&) const { return "alarm_changed"; }
  const char* operator()(const AlarmDeleted&) const { return "alarm_deleted"; }
  const char* operator()(const AlarmStateChanged&) const { return "alarm_state_changed"; }
  const char* operator()(const NotificationDelivered&) const { return "notification_delivered"; }
  const char* operator()(const NotificationFailed&) const { return "notification_failed"; }
  const char* operator()(const ApiCallRecorded&) const { return "api_call_recorded"; }
  const char* operator()(const AuthorizationDenied&) const { return "authorization_denied"; }
  const char* operator()(const PricePlanPublished&) const { return "price_plan_published"; }
  const char* operator()(const InvoiceIssued&) const { return "invoice_issued"; }
  const char* operator()(const OperatorTokenSet&) const { return "operator_token_set"; }
};

}  // namespace

// The first segment is a buffer the encoder keeps; the message builder of
// the last body stays alive until the next Encode (the returned bytes are in
// its segment) and its destructor re-zeroes what it used, so a warm encoder
// allocates nothing. A body that does not fit is encoded again into a larger
// buffer: every body is one segment, so its bytes never depend on the
// encoder's history.
struct EventEncoder::Rep {
  // Most events fit in 4 KiB (a logged call carries up to two 4 KiB excerpts).
  static constexpr size_t kInitialSegmentWords = 512;
  // A buffer grown past this (512 KiB) is released before the next body.
  static constexpr size_t kRetainedSegmentWords = 64 * 1024;

  size_t prefix_words = 0;
  kj::Array<capnp::word> buffer;  // prefix || segment table (1 word) || segment 0
  std::optional<capnp::MallocMessageBuilder> message;  // holds the last body

  size_t head_words() const { return prefix_words + 1; }
  kj::ArrayPtr<capnp::word> first_segment() {
    return buffer.slice(head_words(), buffer.size());
  }
  void Allocate(size_t segment_words) {
    message.reset();
    buffer = kj::heapArray<capnp::word>(head_words() + segment_words);
    std::memset(buffer.begin(), 0, buffer.size() * sizeof(capnp::word));
  }
};

EventEncoder::EventEncoder(size_t prefix_bytes) : rep_(std::make_unique<Rep>()) {
  assert(prefix_bytes % sizeof(capnp::word) == 0);
  rep_->prefix_words = prefix_bytes / sizeof(capnp::word);
  rep_->Allocate(Rep::kInitialSegmentWords);
}

EventEncoder::~EventEncoder() = default;

std::span<char> EventEncoder::Encode(const EnvelopeFields& envelope, const EventBody& body) {
  assert(envelope.stream_id != nullptr && envelope.stream_id->size() <= kStreamIdBytesMax);
  assert(envelope.actor != nullptr && envelope.actor->size() <= kActorBytesMax);
  assert(envelope.event_id != nullptr && envelope.prev_hash != nullptr);
  Rep& r = *rep_;
  r.message.reset();  // zeroes what the previous body used
  if (r.buffer.size() - r.head_words() > Rep::kRetainedSegmentWords) {
    r.Allocate(Rep::kInitialSegmentWords);
  }
  for (;;) {
    r.message.emplace(r.first_segment(), capnp::AllocationStrategy::GROW_HEURISTICALLY);
    FillEnvelope(r.message->initRoot<schema::Envelope>(), envelope, body);
    auto segments = r.message->getSegmentsForOutput();
    if (segments.size() == 1) {
      assert(segments[0].begin() == r.first_segment().begin());
      // The flat-array segment table of one segment: count - 1 (= 0), then its size.
      static_assert(std::endian::native == std::endian::little, "Cap'n Proto is little-endian");
      const uint32_t table[2] = {0, static_cast<uint32_t>(segments[0].size())};
      std::memcpy(r.buffer.begin() + r.prefix_words, table, sizeof(table));
      return std::span<char>(reinterpret_cast<char*>(r.buffer.begin()),
                             (r.head_words() + segments[0].size()) * sizeof(capnp::word));
    }
    // Did not fit in one segment: grow, with room for far pointers, and retry.
    size_t total_words = 0;
    for (auto segment : segments) total_words += segment.size();
    r.Allocate(total_words + total_words / 4 + 64);
  }
}

std::string EncodeEventBody(const Event& event) { return EncodeEventBody(event, event.body); }

std::string EncodeEventBody(const Event& envelope, const EventBody& body) {
  EventEncoder encoder;
  EnvelopeFields fields;
  fields.sequence = envelope.sequence;
  fields.recorded_at_us = envelope.recorded_at_us;
  fields.stream_id = &envelope.stream_id;
  fields.stream_version = envelope.stream_version;
  fields.event_id = &envelope.event_id;
  fields.actor = &envelope.actor;
  fields.prev_hash = &envelope.prev_hash;
  const std::span<char> bytes = encoder.Encode(fields, body);
  return std::string(bytes.data(), bytes.size());
}

Result<Event> DecodeEventBody(std::string_view body, const DecodeLimits& limits) {
  return WithEnvelope<Event>(body, limits, ReadEvent);
}

Result<EnvelopeHeader> DecodeEnvelopeHeader(std::string_view body, const DecodeLimits& limits) {
  EnvelopeHeader header;
  if (ReadEnvelopeHeaderWire(CallEventWireLayoutOfSchema(), body, limits, &header)) return header;
  return codec_internal::DecodeEnvelopeHeaderWithCapnp(body, limits);
}

Result<EnvelopeHeader> codec_internal::DecodeEnvelopeHeaderWithCapnp(std::string_view body,
                                                                     const DecodeLimits& limits) {
  return WithEnvelope<EnvelopeHeader>(
      body, limits, [](schema::Envelope::Reader r) -> Result<EnvelopeHeader> {
        EnvelopeHeader header;
        KL_RETURN_IF_ERROR(ReadHeader(r, &header));
        return header;
      });
}

uint16_t ApiCallRecordedBodyKind() {
  return static_cast<uint16_t>(schema::Envelope::Body::API_CALL_RECORDED);
}

uint16_t AuthorizationDeniedBodyKind() {
  return static_cast<uint16_t>(schema::Envelope::Body::AUTHORIZATION_DENIED);
}

uint16_t InvoiceIssuedBodyKind() {
  return static_cast<uint16_t>(schema::Envelope::Body::INVOICE_ISSUED);
}

uint16_t WorkspaceCreatedBodyKind() {
  return static_cast<uint16_t>(schema::Envelope::Body::WORKSPACE_CREATED);
}

uint16_t WorkspaceChangedBodyKind() {
  return static_cast<uint16_t>(schema::Envelope::Body::WORKSPACE_CHANGED);
}

const char* EventTypeName(const EventBody& body) { return std::visit(TypeNamer{}, body); }

// ---- Views of call events ------------------------------------------------------
//
// Each Read*View reads the same fields, in the same order and through the same
// getters (so with the same checks) as the Read overload of its struct above,
// keeping views instead of copies.

namespace {

std::string_view View(capnp::Text::Reader text) { return {text.cStr(), text.size()}; }

std::string_view View(capnp::Data::Reader data) {
  return {reinterpret_cast<const char*>(data.begin()), data.size()};
}

void ReadExcerptView(schema::HttpExcerpt::Reader r, HttpExcerptView* out) {
  out->headers.clear();
  for (schema::Header::Reader header : r.getHeaders()) {
    out->headers.push_back(HttpHeaderView{View(header.getName()), View(header.getValue())});
  }
  out->body_excerpt = View(r.getBodyExcerpt());
}

void ReadCallView(schema::ApiCallRecorded::Reader r, ApiCallView* out) {
  out->request_id = View(r.getRequestId());
  out->workspace_id = View(r.getWorkspaceId());
  out->key_id = View(r.getKeyId());
  out->occurred_at_us = r.getOccurredAtUs();
  out->method = View(r.getMethod());
  out->path = View(r.getPath());
  out->status = r.getStatus();
  out->latency_us = r.getLatencyUs();
  out->units = r.getUnits();
  out->request_bytes = r.getRequestBytes();
  out->response_bytes = r.getResponseBytes();
  out->client_ip = View(r.getClientIp());
  out->origin = View(r.getOrigin());
  out->logged = r.getLogged();
  ReadExcerptView(r.getRequest(), &out->request);
  ReadExcerptView(r.getResponse(), &out->response);
}

Status ReadDenialView(schema::AuthorizationDenied::Reader r, AuthorizationDeniedView* out) {
  out->request_id = View(r.getRequestId());
  out->workspace_id = View(r.getWorkspaceId());
  out->key_id = View(r.getKeyId());
  out->occurred_at_us = r.getOccurredAtUs();
  KL_RETURN_IF_ERROR(
      ReadEnum(r.getReason(), kDenialReasonLast, "authorizationDenied.reason", &out->reason));
  out->client_ip = View(r.getClientIp());
  out->origin = View(r.getOrigin());
  out->count = r.getCount();
  return Status::Ok();
}

// ReadHeader's checks, without copying the stream id.
Status CheckHeaderView(schema::Envelope::Reader r) {
  (void)r.getSequence();
  (void)r.getRecordedAtUs();
  (void)r.getStreamId();  // validates the pointer, as ToString(getStreamId()) does
  (void)r.getStreamVersion();
  EventId event_id;
  KL_RETURN_IF_ERROR(ReadFixed(r.getEventId(), "eventId", &event_id));
  Hash prev_hash;
  return ReadFixed(r.getPrevHash(), "prevHash", &prev_hash);
}

Status ReadCallEvent(schema::Envelope::Reader r, CallEventView* out) {
  KL_RETURN_IF_ERROR(CheckHeaderView(r));
  const schema::Envelope::Body::Reader body = r.getBody();
  const schema::Envelope::Body::Which which = body.which();
  out->body_kind = static_cast<uint16_t>(which);
  if (which == schema::Envelope::Body::API_CALL_RECORDED) {
    ReadCallView(body.getApiCallRecorded(), &out->call);
  } else if (which == schema::Envelope::Body::AUTHORIZATION_DENIED) {
    KL_RETURN_IF_ERROR(ReadDenialView(body.getAuthorizationDenied(), &out->denial));
  } else {
    return Status::Ok();  // as DecodeEnvelopeHeader: the body is not read
  }
  (void)r.getActor();  // as ReadEvent
  return Status::Ok();
}

}  // namespace

// ---- The wire reader's layout -----------------------------------------------------
//
// ledger/wire_reader.cc reads fields where the compiled-in schema puts them:
// each position is asked of Cap'n Proto's schema here, once, and checked to
// be of a kind that reader handles (a slot of zero default, a pointer).

namespace {

WireDataField DataFieldOf(capnp::StructSchema parent, const char* name) {
  const capnp::schema::Field::Reader field = parent.getFieldByName(name).getProto();
  assert(field.isSlot());
  const capnp::schema::Field::Slot::Reader slot = field.getSlot();
  assert(!slot.getHadExplicitDefault());  // wire_reader.h: every default is zero
  uint32_t bits = 0;
  switch (slot.getType().which()) {
    case capnp::schema::Type::BOOL: bits = 1; break;
    case capnp::schema::Type::UINT16:
    case capnp::schema::Type::ENUM: bits = 16; break;
    case capnp::schema::Type::UINT64:
    case capnp::schema::Type::INT64: bits = 64; break;
    default: assert(false && "a data field type the wire reader does not read");
  }
  return WireDataField{slot.getOffset() * bits, bits};
}

uint16_t PointerFieldOf(capnp::StructSchema parent, const char* name) {
  const capnp::schema::Field::Reader field = parent.getFieldByName(name).getProto();
  assert(field.isSlot());
  const capnp::schema::Type::Which type = field.getSlot().getType().which();
  assert(type == capnp::schema::Type::TEXT || type == capnp::schema::Type::DATA ||
         type == capnp::schema::Type::STRUCT || type == capnp::schema::Type::LIST);
  (void)type;
  assert(!field.getSlot().getHadExplicitDefault());
  return static_cast<uint16_t>(field.getSlot().getOffset());
}

CallEventWireLayout MakeCallEventWireLayout() {
  CallEventWireLayout l;
  const auto envelope = capnp::Schema::from<schema::Envelope>();
  const capnp::StructSchema body = envelope.getFieldByName("body").getType().asStruct();
  CallEventWireLayout::Envelope& e = l.envelope;
  e.sequence = DataFieldOf(envelope, "sequence");
  e.recorded_at_us = DataFieldOf(envelope, "recordedAtUs");
  e.stream_version = DataFieldOf(envelope, "streamVersion");
  e.body_kind = WireDataField{body.getProto().getStruct().getDiscriminantOffset() * 16, 16};
  e.stream_id = PointerFieldOf(envelope, "streamId");
  e.event_id = PointerFieldOf(envelope, "eventId");
  e.actor = PointerFieldOf(envelope, "actor");
  e.prev_hash = PointerFieldOf(envelope, "prevHash");
  e.call_kind = body.getFieldByName("apiCallRecorded").getProto().getDiscriminantValue();
  e.denial_kind = body.getFieldByName("authorizationDenied").getProto().getDiscriminantValue();
  assert(e.call_kind == ApiCallRecordedBodyKind());
  assert(e.denial_kind == AuthorizationDeniedBodyKind());
  e.call = PointerFieldOf(body, "apiCallRecorded");
  e.denial = PointerFieldOf(body, "authorizationDenied");

  const auto call = capnp::Schema::from<schema::ApiCallRecorded>();
  CallEventWireLayout::Call& c = l.call;
  c.occurred_at_us = DataFieldOf(call, "occurredAtUs");
  c.status = DataFieldOf(call, "status");
  c.latency_us = DataFieldOf(call, "latencyUs");
  c.units = DataFieldOf(call, "units");
  c.request_bytes = DataFieldOf(call, "requestBytes");
  c.response_bytes = DataFieldOf(call, "responseBytes");
  c.logged = DataFieldOf(call, "logged");
  c.request_id = PointerFieldOf(call, "requestId");
  c.workspace_id = PointerFieldOf(call, "workspaceId");
  c.key_id = PointerFieldOf(call, "keyId");
  c.method = PointerFieldOf(call, "method");
  c.path = PointerFieldOf(call, "path");
  c.client_ip = PointerFieldOf(call, "clientIp");
  c.origin = PointerFieldOf(call, "origin");
  c.request = PointerFieldOf(call, "request");
  c.response = PointerFieldOf(call, "response");

  const auto excerpt = capnp::Schema::from<schema::HttpExcerpt>();
  l.excerpt.headers = PointerFieldOf(excerpt, "headers");
  l.excerpt.body_excerpt = PointerFieldOf(excerpt, "bodyExcerpt");
  const auto header = capnp::Schema::from<schema::Header>();
  l.header.name = PointerFieldOf(header, "name");
  l.header.value = PointerFieldOf(header, "value");

  const auto denial = capnp::Schema::from<schema::AuthorizationDenied>();
  CallEventWireLayout::Denial& d = l.denial;
  d.occurred_at_us = DataFieldOf(denial, "occurredAtUs");
  d.reason = DataFieldOf(denial, "reason");
  d.count = DataFieldOf(denial, "count");
  d.request_id = PointerFieldOf(denial, "requestId");
  d.workspace_id = PointerFieldOf(denial, "workspaceId");
  d.key_id = PointerFieldOf(denial, "keyId");
  d.client_ip = PointerFieldOf(denial, "clientIp");
  d.origin = PointerFieldOf(denial, "origin");
  d.reason_last = static_cast<uint16_t>(kDenialReasonLast);
  return l;
}

}  // namespace

const CallEventWireLayout& CallEventWireLayoutOfSchema() {
  // A constant of the compiled-in schema, computed once. The names above are
  // the schema's own, so Cap'n Proto cannot throw here unless they drift
  // from it (a programming error, caught by every test).
  static const CallEventWireLayout layout = MakeCallEventWireLayout();
  return layout;
}

namespace {

// DecodeCallEvent's views point into `body`, never into a copy.
Status CheckWordAligned(std::string_view body) {
  if (!body.empty() && reinterpret_cast<uintptr_t>(body.data()) % alignof(capnp::word) != 0) {
    return Status::InvalidArgument("event body is not word-aligned", "body");
  }
  return Status::Ok();
}

}  // namespace

Status DecodeCallEvent(std::string_view body, CallEventView* out, const DecodeLimits& limits) {
  assert(out != nullptr);
  KL_RETURN_IF_ERROR(CheckWordAligned(body));
  if (ReadCallEventWire(CallEventWireLayoutOfSchema(), body, limits, out)) return Status::Ok();
  return codec_internal::DecodeCallEventWithCapnp(body, out, limits);
}

Status codec_internal::DecodeCallEventWithCapnp(std::string_view body, CallEventView* out,
                                                const DecodeLimits& limits) {
  assert(out != nullptr);
  KL_RETURN_IF_ERROR(CheckWordAligned(body));
  return WithEnvelope<bool>(body, limits,
                            [out](schema::Envelope::Reader r) -> Result<bool> {
                              KL_RETURN_IF_ERROR(ReadCallEvent(r, out));
                              return true;
                            })
      .ToStatus();
}

}  // namespace keyledger
