// Tests for ledger/codec.h: round trips of every event type, header decoding,
// determinism, and hostile input (garbage, truncation, odd lengths, unaligned
// buffers, wrong-size fixed fields, unknown union members and enum values),
// and the wire reader (ledger/wire_reader.h) against Cap'n Proto: it reads
// every event the encoder writes, and never accepts, nor reads differently,
// what Cap'n Proto would refuse or read otherwise.
//
// Some tests patch encoded bytes directly. They rely only on the Cap'n Proto
// wire format (little-endian words, documented pointer encoding) and on the
// struct layouts `capnp compile -ocapnp ledger/events.capnp` prints; each patch
// first checks that it found what it expected.

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <set>
#include <string>
#include <utility>
#include <variant>

#include "ledger/codec.h"
#include "ledger/event.h"
#include "ledger/wire_reader.h"

using namespace keyledger;  // NOLINT: test file

// ---- Generators -------------------------------------------------------------

namespace rc {

// Byte strings (Data fields) may hold any byte, including NUL; rapidcheck's
// default std::string generator never produces NUL, which suits Text fields.
inline Gen<std::string> Bytes() { return gen::container<std::string>(gen::arbitrary<char>()); }

template <typename E>
Gen<E> EnumUpTo(E last) {
  return gen::map(gen::inRange<int>(0, static_cast<int>(last) + 1),
                  [](int v) { return static_cast<E>(v); });
}

template <>
struct Arbitrary<AlarmMetric> {
  static Gen<AlarmMetric> arbitrary() { return EnumUpTo(AlarmMetric::kSpendMinor); }
};
template <>
struct Arbitrary<Comparator> {
  static Gen<Comparator> arbitrary() { return EnumUpTo(Comparator::kLessOrEqual); }
};
template <>
struct Arbitrary<MissingData> {
  static Gen<MissingData> arbitrary() { return EnumUpTo(MissingData::kNotBreaching); }
};
template <>
struct Arbitrary<AlarmState> {
  static Gen<AlarmState> arbitrary() { return EnumUpTo(AlarmState::kAlarm); }
};
template <>
struct Arbitrary<DenialReason> {
  static Gen<DenialReason> arbitrary() { return EnumUpTo(DenialReason::kMalformedCredentials); }
};
template <>
struct Arbitrary<PricingMode> {
  static Gen<PricingMode> arbitrary() { return EnumUpTo(PricingMode::kVolume); }
};

template <>
struct Arbitrary<WorkspaceState> {
  static Gen<WorkspaceState> arbitrary() {
    return gen::build<WorkspaceState>(
        gen::set(&WorkspaceState::workspace_id), gen::set(&WorkspaceState::name),
        gen::set(&WorkspaceState::tps_limit), gen::set(&WorkspaceState::billing_timezone),
        gen::set(&WorkspaceState::price_plan_id));
  }
};

template <>
struct Arbitrary<SecurityGroupState> {
  static Gen<SecurityGroupState> arbitrary() {
    return gen::build<SecurityGroupState>(
        gen::set(&SecurityGroupState::workspace_id), gen::set(&SecurityGroupState::group_id),
        gen::set(&SecurityGroupState::name), gen::set(&SecurityGroupState::ip_allow),
        gen::set(&SecurityGroupState::origin_allow));
  }
};

template <>
struct Arbitrary<SecurityGroupDeleted> {
  static Gen<SecurityGroupDeleted> arbitrary() {
    return gen::build<SecurityGroupDeleted>(gen::set(&SecurityGroupDeleted::workspace_id),
                                            gen::set(&SecurityGroupDeleted::group_id));
  }
};

template <>
struct Arbitrary<KeyCreated> {
  static Gen<KeyCreated> arbitrary() {
    return gen::build<KeyCreated>(
        gen::set(&KeyCreated::workspace_id), gen::set(&KeyCreated::key_id),
        gen::set(&KeyCreated::name), gen::set(&KeyCreated::description),
        gen::set(&KeyCreated::security_group_id), gen::set(&KeyCreated::secret_hash));
  }
};

template <>
struct Arbitrary<KeyRenamed> {
  static Gen<KeyRenamed> arbitrary() {
    return gen::build<KeyRenamed>(gen::set(&KeyRenamed::workspace_id),
                                  gen::set(&KeyRenamed::key_id), gen::set(&KeyRenamed::name));
  }
};

template <>
struct Arbitrary<KeyDescriptionChanged> {
  static Gen<KeyDescriptionChanged> arbitrary() {
    return gen::build<KeyDescriptionChanged>(gen::set(&KeyDescriptionChanged::workspace_id),
                                             gen::set(&KeyDescriptionChanged::key_id),
                                             gen::set(&KeyDescriptionChanged::description));
  }
};

template <>
struct Arbitrary<KeySecurityGroupChanged> {
  static Gen<KeySecurityGroupChanged> arbitrary() {
    return gen::build<KeySecurityGroupChanged>(
        gen::set(&KeySecurityGroupChanged::workspace_id),
        gen::set(&KeySecurityGroupChanged::key_id),
        gen::set(&KeySecurityGroupChanged::security_group_id));
  }
};

template <>
struct Arbitrary<KeyLoggingSwitched> {
  static Gen<KeyLoggingSwitched> arbitrary() {
    return gen::build<KeyLoggingSwitched>(gen::set(&KeyLoggingSwitched::workspace_id),
                                          gen::set(&KeyLoggingSwitched::key_id),
                                          gen::set(&KeyLoggingSwitched::enabled));
  }
};

template <>
struct Arbitrary<KeyRotated> {
  static Gen<KeyRotated> arbitrary() {
    return gen::build<KeyRotated>(
        gen::set(&KeyRotated::workspace_id), gen::set(&KeyRotated::key_id),
        gen::set(&KeyRotated::new_secret_hash), gen::set(&KeyRotated::old_secret_valid_until_us));
  }
};

template <>
struct Arbitrary<KeyDeleted> {
  static Gen<KeyDeleted> arbitrary() {
    return gen::build<KeyDeleted>(gen::set(&KeyDeleted::workspace_id),
                                  gen::set(&KeyDeleted::key_id));
  }
};

template <>
struct Arbitrary<WorkspaceTokenCreated> {
  static Gen<WorkspaceTokenCreated> arbitrary() {
    return gen::build<WorkspaceTokenCreated>(gen::set(&WorkspaceTokenCreated::workspace_id),
                                             gen::set(&WorkspaceTokenCreated::token_id),
                                             gen::set(&WorkspaceTokenCreated::token_hash));
  }
};

template <>
struct Arbitrary<WorkspaceTokenRevoked> {
  static Gen<WorkspaceTokenRevoked> arbitrary() {
    return gen::build<WorkspaceTokenRevoked>(gen::set(&WorkspaceTokenRevoked::workspace_id),
                                             gen::set(&WorkspaceTokenRevoked::token_id));
  }
};

template <>
struct Arbitrary<OperatorTokenSet> {
  static Gen<OperatorTokenSet> arbitrary() {
    return gen::build<OperatorTokenSet>(gen::set(&OperatorTokenSet::token_hash));
  }
};

template <>
struct Arbitrary<EmailChannel> {
  static Gen<EmailChannel> arbitrary() {
    return gen::build<EmailChannel>(gen::set(&EmailChannel::to));
  }
};

template <>
struct Arbitrary<WebhookChannel> {
  static Gen<WebhookChannel> arbitrary() {
    return gen::build<WebhookChannel>(gen::set(&WebhookChannel::url),
                                      gen::set(&WebhookChannel::secret));
  }
};

template <>
struct Arbitrary<AlarmChannel> {
  static Gen<AlarmChannel> arbitrary() {
    return gen::oneOf(gen::cast<AlarmChannel>(gen::arbitrary<EmailChannel>()),
                      gen::cast<AlarmChannel>(gen::arbitrary<WebhookChannel>()));
  }
};

template <>
struct Arbitrary<AlarmSpec> {
  static Gen<AlarmSpec> arbitrary() {
    return gen::build<AlarmSpec>(
        gen::set(&AlarmSpec::workspace_id), gen::set(&AlarmSpec::key_id),
        gen::set(&AlarmSpec::alarm_id), gen::set(&AlarmSpec::name), gen::set(&AlarmSpec::metric),
        gen::set(&AlarmSpec::comparator), gen::set(&AlarmSpec::threshold_micros),
        gen::set(&AlarmSpec::period_seconds), gen::set(&AlarmSpec::evaluation_periods),
        gen::set(&AlarmSpec::datapoints_to_alarm), gen::set(&AlarmSpec::missing_data),
        gen::set(&AlarmSpec::channels));
  }
};

template <>
struct Arbitrary<AlarmDeleted> {
  static Gen<AlarmDeleted> arbitrary() {
    return gen::build<AlarmDeleted>(gen::set(&AlarmDeleted::workspace_id),
                                    gen::set(&AlarmDeleted::key_id),
                                    gen::set(&AlarmDeleted::alarm_id));
  }
};

template <>
struct Arbitrary<AlarmStateChanged> {
  static Gen<AlarmStateChanged> arbitrary() {
    return gen::build<AlarmStateChanged>(
        gen::set(&AlarmStateChanged::workspace_id), gen::set(&AlarmStateChanged::key_id),
        gen::set(&AlarmStateChanged::alarm_id), gen::set(&AlarmStateChanged::from),
        gen::set(&AlarmStateChanged::to), gen::set(&AlarmStateChanged::value_micros),
        gen::set(&AlarmStateChanged::evaluated_at_us), gen::set(&AlarmStateChanged::reason));
  }
};

template <>
struct Arbitrary<NotificationAttempt> {
  static Gen<NotificationAttempt> arbitrary() {
    return gen::build<NotificationAttempt>(
        gen::set(&NotificationAttempt::workspace_id), gen::set(&NotificationAttempt::alarm_id),
        gen::set(&NotificationAttempt::notification_id),
        gen::set(&NotificationAttempt::channel_index), gen::set(&NotificationAttempt::attempt),
        gen::set(&NotificationAttempt::http_status), gen::set(&NotificationAttempt::error),
        gen::set(&NotificationAttempt::next_attempt_at_us));
  }
};

template <>
struct Arbitrary<HttpHeader> {
  static Gen<HttpHeader> arbitrary() {
    return gen::build<HttpHeader>(gen::set(&HttpHeader::name), gen::set(&HttpHeader::value));
  }
};

template <>
struct Arbitrary<HttpExcerpt> {
  static Gen<HttpExcerpt> arbitrary() {
    return gen::build<HttpExcerpt>(gen::set(&HttpExcerpt::headers),
                                   gen::set(&HttpExcerpt::body_excerpt, Bytes()));
  }
};

template <>
struct Arbitrary<ApiCallRecorded> {
  static Gen<ApiCallRecorded> arbitrary() {
    return gen::build<ApiCallRecorded>(
        gen::set(&ApiCallRecorded::request_id), gen::set(&ApiCallRecorded::workspace_id),
        gen::set(&ApiCallRecorded::key_id), gen::set(&ApiCallRecorded::occurred_at_us),
        gen::set(&ApiCallRecorded::method), gen::set(&ApiCallRecorded::path),
        gen::set(&ApiCallRecorded::status), gen::set(&ApiCallRecorded::latency_us),
        gen::set(&ApiCallRecorded::units), gen::set(&ApiCallRecorded::request_bytes),
        gen::set(&ApiCallRecorded::response_bytes), gen::set(&ApiCallRecorded::client_ip),
        gen::set(&ApiCallRecorded::origin), gen::set(&ApiCallRecorded::logged),
        gen::set(&ApiCallRecorded::request), gen::set(&ApiCallRecorded::response));
  }
};

template <>
struct Arbitrary<AuthorizationDenied> {
  static Gen<AuthorizationDenied> arbitrary() {
    return gen::build<AuthorizationDenied>(
        gen::set(&AuthorizationDenied::request_id), gen::set(&AuthorizationDenied::workspace_id),
        gen::set(&AuthorizationDenied::key_id), gen::set(&AuthorizationDenied::occurred_at_us),
        gen::set(&AuthorizationDenied::reason), gen::set(&AuthorizationDenied::client_ip),
        gen::set(&AuthorizationDenied::origin), gen::set(&AuthorizationDenied::count));
  }
};

template <>
struct Arbitrary<PriceTier> {
  static Gen<PriceTier> arbitrary() {
    Gen<std::optional<uint64_t>> up_to =
        gen::oneOf(gen::just(std::optional<uint64_t>()),
                   gen::cast<std::optional<uint64_t>>(gen::arbitrary<uint64_t>()));
    return gen::build<PriceTier>(gen::set(&PriceTier::up_to, up_to),
                                 gen::set(&PriceTier::unit_price_micros));
  }
};

template <>
struct Arbitrary<PricePlanPublished> {
  static Gen<PricePlanPublished> arbitrary() {
    return gen::build<PricePlanPublished>(
        gen::set(&PricePlanPublished::plan_id), gen::set(&PricePlanPublished::version),
        gen::set(&PricePlanPublished::currency), gen::set(&PricePlanPublished::currency_exponent),
        gen::set(&PricePlanPublished::metric), gen::set(&PricePlanPublished::mode),
        gen::set(&PricePlanPublished::tiers), gen::set(&PricePlanPublished::monthly_fee_minor));
  }
};

template <>
struct Arbitrary<InvoiceLine> {
  static Gen<InvoiceLine> arbitrary() {
    return gen::build<InvoiceLine>(
        gen::set(&InvoiceLine::kind), gen::set(&InvoiceLine::description),
        gen::set(&InvoiceLine::quantity), gen::set(&InvoiceLine::unit_price_micros),
        gen::set(&InvoiceLine::amount_minor), gen::set(&InvoiceLine::month));
  }
};

template <>
struct Arbitrary<KeyUsage> {
  static Gen<KeyUsage> arbitrary() {
    return gen::build<KeyUsage>(gen::set(&KeyUsage::key_id), gen::set(&KeyUsage::quantity));
  }
};

template <>
struct Arbitrary<InvoiceIssued> {
  static Gen<InvoiceIssued> arbitrary() {
    return gen::build<InvoiceIssued>(
        gen::set(&InvoiceIssued::workspace_id), gen::set(&InvoiceIssued::month),
        gen::set(&InvoiceIssued::invoice_number), gen::set(&InvoiceIssued::currency),
        gen::set(&InvoiceIssued::lines), gen::set(&InvoiceIssued::key_usage),
        gen::set(&InvoiceIssued::subtotal_minor), gen::set(&InvoiceIssued::total_minor),
        gen::set(&InvoiceIssued::covers_sequence), gen::set(&InvoiceIssued::digest),
        gen::set(&InvoiceIssued::plan_id), gen::set(&InvoiceIssued::plan_version));
  }
};

// Alternatives that only wrap a shared state struct.
#define KL_DERIVED_ARBITRARY(Derived, Base)                                         \
  template <>                                                                       \
  struct Arbitrary<Derived> {                                                       \
    static Gen<Derived> arbitrary() {                                               \
      return gen::map(gen::arbitrary<Base>(), [](Base b) { return Derived{std::move(b)}; }); \
    }                                                                               \
  };
KL_DERIVED_ARBITRARY(WorkspaceCreated, WorkspaceState)
KL_DERIVED_ARBITRARY(WorkspaceChanged, WorkspaceState)
KL_DERIVED_ARBITRARY(SecurityGroupCreated, SecurityGroupState)
KL_DERIVED_ARBITRARY(SecurityGroupChanged, SecurityGroupState)
KL_DERIVED_ARBITRARY(AlarmCreated, AlarmSpec)
KL_DERIVED_ARBITRARY(AlarmChanged, AlarmSpec)
KL_DERIVED_ARBITRARY(NotificationDelivered, NotificationAttempt)
KL_DERIVED_ARBITRARY(NotificationFailed, NotificationAttempt)
#undef KL_DERIVED_ARBITRARY

template <size_t... I>
Gen<EventBody> AnyBody(std::index_sequence<I...>) {
  return gen::oneOf(gen::map(gen::arbitrary<std::variant_alternative_t<I, EventBody>>(),
                             [](std::variant_alternative_t<I, EventBody> v) {
                               return EventBody(std::in_place_index<I>, std::move(v));
                             })...);
}

template <>
struct Arbitrary<EventBody> {
  static Gen<EventBody> arbitrary() {
    return AnyBody(std::make_index_sequence<std::variant_size_v<EventBody>>{});
  }
};

// An Event with the given body generator; `hash` stays zero (it is not encoded).
inline Gen<Event> EventWith(Gen<EventBody> body) {
  return gen::build<Event>(
      gen::set(&Event::sequence), gen::set(&Event::recorded_at_us),
      gen::set(&Event::stream_id, gen::resize(kStreamIdBytesMax, gen::string<std::string>())),
      gen::set(&Event::stream_version), gen::set(&Event::event_id),
      gen::set(&Event::actor, gen::resize(kActorBytesMax, gen::string<std::string>())),
      gen::set(&Event::prev_hash), gen::set(&Event::body, std::move(body)));
}

template <>
struct Arbitrary<Event> {
  static Gen<Event> arbitrary() { return EventWith(gen::arbitrary<EventBody>()); }
};

}  // namespace rc

namespace {

// ---- Helpers ------------------------------------------------------------------

// Asserts (inside a property) that `a` and `b` hold the same event.
void AssertSameEvent(const Event& a, const Event& b) {
  RC_ASSERT(a.sequence == b.sequence);
  RC_ASSERT(a.recorded_at_us == b.recorded_at_us);
  RC_ASSERT(a.stream_id == b.stream_id);
  RC_ASSERT(a.stream_version == b.stream_version);
  RC_ASSERT(a.event_id == b.event_id);
  RC_ASSERT(a.actor == b.actor);
  RC_ASSERT(a.prev_hash == b.prev_hash);
  RC_ASSERT(a.hash == b.hash);
  RC_ASSERT(a.body.index() == b.body.index());
  RC_ASSERT(a.body == b.body);
}

template <typename T>
void AssertRoundTrips() {
  const Event event = *rc::EventWith(rc::gen::cast<EventBody>(rc::gen::arbitrary<T>()));
  RC_ASSERT(std::holds_alternative<T>(event.body));
  Result<Event> decoded = DecodeEventBody(EncodeEventBody(event));
  RC_ASSERT(decoded.ok());
  AssertSameEvent(*decoded, event);
}

bool IsCorruption(const Status& status) { return status.code() == Code::kCorruption; }

// Any result other than a value or Corruption is a bug.
template <typename T>
bool OkOrCorruption(const Result<T>& result) {
  return result.ok() || IsCorruption(result.status());
}

Event SampleEvent(EventBody body) {
  Event event;
  event.sequence = 7;
  event.recorded_at_us = 1'700'000'000'000'000;
  event.stream_id = "key/key_0123";  // not 15 bytes, see EventIdPointerWord
  event.stream_version = 3;
  event.event_id.fill(0xAB);
  event.actor = "operator";
  event.prev_hash.fill(0xCD);
  event.body = std::move(body);
  return event;
}

// ---- Wire-format patching ------------------------------------------------------
//
// Encoded bodies are single-segment messages: word 0 is the segment table, word
// 1 the root struct pointer. Word indices below count from the start of `bytes`.

constexpr size_t kWord = 8;

uint64_t WordAt(const std::string& bytes, size_t index) {
  uint64_t word;
  std::memcpy(&word, bytes.data() + index * kWord, kWord);
  return word;
}

void SetWordAt(std::string* bytes, size_t index, uint64_t word) {
  std::memcpy(bytes->data() + index * kWord, &word, kWord);
}

// Returns the word index of the struct that the struct pointer at `pointer` targets.
size_t StructTarget(const std::string& bytes, size_t pointer) {
  const uint64_t word = WordAt(bytes, pointer);
  EXPECT_EQ(word & 3, 0u) << "not a struct pointer";
  const auto offset = static_cast<int32_t>(static_cast<uint32_t>(word)) >> 2;
  return pointer + 1 + offset;
}

// Returns the word index of pointer `i` of the struct the pointer at `pointer` targets.
size_t PointerSlot(const std::string& bytes, size_t pointer, size_t i) {
  const uint64_t word = WordAt(bytes, pointer);
  const size_t data_words = (word >> 32) & 0xFFFF;
  EXPECT_LT(i, (word >> 48) & 0xFFFF) << "struct has no pointer " << i;
  return StructTarget(bytes, pointer) + data_words + i;
}

constexpr size_t kRootPointer = 1;
constexpr size_t kEnvelopeEventIdPointer = 1;   // Envelope.eventId: ptr[1]
constexpr size_t kEnvelopePrevHashPointer = 3;  // Envelope.prevHash: ptr[3]
constexpr size_t kEnvelopeBodyPointer = 4;      // every body member: ptr[4]
constexpr size_t kEnvelopeTagByte = 24;         // body union tag: bits [192, 208)

// Makes the byte list at `pointer` one element shorter (still a valid message).
void ShortenByteList(std::string* bytes, size_t pointer, uint32_t expected_count) {
  const uint64_t word = WordAt(*bytes, pointer);
  ASSERT_EQ(word & 3, 1u) << "not a list pointer";
  ASSERT_EQ((word >> 32) & 7, 2u) << "not a byte list";
  ASSERT_EQ(word >> 35, expected_count);
  const uint64_t shorter = (word & 0x7FFFFFFFFull) | (uint64_t{expected_count - 1} << 35);
  SetWordAt(bytes, pointer, shorter);
}

void SetUint16(std::string* bytes, size_t byte_offset, uint16_t value) {
  std::memcpy(bytes->data() + byte_offset, &value, sizeof(value));
}

uint16_t GetUint16(const std::string& bytes, size_t byte_offset) {
  uint16_t value;
  std::memcpy(&value, bytes.data() + byte_offset, sizeof(value));
  return value;
}

}  // namespace

// ---- Properties ------------------------------------------------------------------

RC_GTEST_PROP(CodecProperty, EveryBodyTypeRoundTrips, ()) {
  [&]<size_t... I>(std::index_sequence<I...>) {
    (AssertRoundTrips<std::variant_alternative_t<I, EventBody>>(), ...);
  }(std::make_index_sequence<std::variant_size_v<EventBody>>{});
}

RC_GTEST_PROP(CodecProperty, HeaderAgreesWithFullDecode, (const Event& event)) {
  const std::string bytes = EncodeEventBody(event);
  Result<Event> full = DecodeEventBody(bytes);
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(bytes);
  RC_ASSERT(full.ok());
  RC_ASSERT(header.ok());
  RC_ASSERT(header->sequence == full->sequence);
  RC_ASSERT(header->recorded_at_us == full->recorded_at_us);
  RC_ASSERT(header->stream_id == full->stream_id);
  RC_ASSERT(header->stream_version == full->stream_version);
  RC_ASSERT(header->event_id == full->event_id);
  RC_ASSERT(header->prev_hash == full->prev_hash);
  RC_ASSERT((header->body_kind == ApiCallRecordedBodyKind()) ==
            std::holds_alternative<ApiCallRecorded>(full->body));
}

RC_GTEST_PROP(CodecProperty, EncodeIsDeterministic, (const Event& event)) {
  Event copy = event;
  copy.hash.fill(0x5A);  // not part of the body
  RC_ASSERT(EncodeEventBody(event) == EncodeEventBody(event));
  RC_ASSERT(EncodeEventBody(event) == EncodeEventBody(copy));
}

RC_GTEST_PROP(CodecProperty, UnalignedCopyDecodesTheSame, (const Event& event)) {
  const std::string bytes = EncodeEventBody(event);
  const size_t shift = *rc::gen::inRange<size_t>(1, kWord);
  std::string buffer(shift, '\0');
  buffer += bytes;
  const std::string_view unaligned(buffer.data() + shift, bytes.size());
  RC_PRE(reinterpret_cast<uintptr_t>(unaligned.data()) % kWord != 0);
  Result<Event> decoded = DecodeEventBody(unaligned);
  RC_ASSERT(decoded.ok());
  AssertSameEvent(*decoded, event);
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(unaligned);
  RC_ASSERT(header.ok());
  RC_ASSERT(header->sequence == event.sequence);
}

RC_GTEST_PROP(CodecProperty, TruncationIsCorruption, (const Event& event)) {
  const std::string bytes = EncodeEventBody(event);
  const size_t keep = *rc::gen::inRange<size_t>(0, bytes.size());
  const std::string_view prefix(bytes.data(), keep);
  Result<Event> decoded = DecodeEventBody(prefix);
  RC_ASSERT(!decoded.ok());
  RC_ASSERT(IsCorruption(decoded.status()));
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(prefix);
  RC_ASSERT(!header.ok());
  RC_ASSERT(IsCorruption(header.status()));
}

RC_GTEST_PROP(CodecProperty, TrailingBytesAreCorruption, (const Event& event)) {
  std::string bytes = EncodeEventBody(event);
  bytes += std::string(kWord * *rc::gen::inRange<size_t>(1, 4), '\0');
  Result<Event> decoded = DecodeEventBody(bytes);
  RC_ASSERT(!decoded.ok());
  RC_ASSERT(IsCorruption(decoded.status()));
}

RC_GTEST_PROP(CodecProperty, CorruptedBytesNeverCrash, (const Event& event)) {
  std::string bytes = EncodeEventBody(event);
  const auto flips = *rc::gen::inRange<int>(1, 8);
  for (int i = 0; i < flips; i++) {
    const size_t at = *rc::gen::inRange<size_t>(0, bytes.size());
    bytes[at] = static_cast<char>(bytes[at] ^ *rc::gen::inRange<int>(1, 256));
  }
  RC_ASSERT(OkOrCorruption(DecodeEventBody(bytes)));
  RC_ASSERT(OkOrCorruption(DecodeEnvelopeHeader(bytes)));
}

RC_GTEST_PROP(CodecProperty, GarbageNeverCrashes, ()) {
  std::string bytes = *rc::Bytes();
  RC_ASSERT(OkOrCorruption(DecodeEventBody(bytes)));
  RC_ASSERT(OkOrCorruption(DecodeEnvelopeHeader(bytes)));
  if (bytes.size() % kWord != 0) {
    RC_ASSERT(!DecodeEventBody(bytes).ok());
  }
}

// Random words behind a valid segment table, so the pointer checks are exercised
// rather than only the framing.
RC_GTEST_PROP(CodecProperty, GarbageSegmentNeverCrashes, ()) {
  const auto words = *rc::gen::container<std::vector<uint64_t>>(rc::gen::arbitrary<uint64_t>());
  std::string bytes((words.size() + 1) * kWord, '\0');
  SetWordAt(&bytes, 0, uint64_t{static_cast<uint32_t>(words.size())} << 32);  // 1 segment
  for (size_t i = 0; i < words.size(); i++) SetWordAt(&bytes, i + 1, words[i]);
  RC_ASSERT(OkOrCorruption(DecodeEventBody(bytes)));
  RC_ASSERT(OkOrCorruption(DecodeEnvelopeHeader(bytes)));
}

// ---- Examples ----------------------------------------------------------------------

TEST(CodecTest, EmptyAndOddLengthAreCorruption) {
  const std::string bytes = EncodeEventBody(SampleEvent(KeyDeleted{"ws_1", "key_1"}));
  for (size_t size : {size_t{0}, size_t{1}, size_t{7}, bytes.size() - 1, bytes.size() - 3}) {
    Result<Event> decoded = DecodeEventBody(std::string_view(bytes.data(), size));
    ASSERT_FALSE(decoded.ok()) << size;
    EXPECT_EQ(decoded.status().code(), Code::kCorruption) << size;
  }
  std::string longer = bytes + "x";
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(longer);
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().code(), Code::kCorruption);
}

TEST(CodecTest, HashIsNotEncodedAndDecodesAsZero) {
  Event event = SampleEvent(OperatorTokenSet{});
  event.hash.fill(0x11);
  Result<Event> decoded = DecodeEventBody(EncodeEventBody(event));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->hash, Hash{});
}

TEST(CodecTest, PriceTierBoundsRoundTrip) {
  PricePlanPublished plan;
  plan.tiers = {PriceTier{0, 5}, PriceTier{1000, 4}, PriceTier{std::nullopt, 3}};
  Result<Event> decoded = DecodeEventBody(EncodeEventBody(SampleEvent(plan)));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(std::get<PricePlanPublished>(decoded->body), plan);
}

TEST(CodecTest, WrongSizeEventIdIsCorruption) {
  std::string bytes = EncodeEventBody(SampleEvent(KeyDeleted{"ws_1", "key_1"}));
  ShortenByteList(&bytes, PointerSlot(bytes, kRootPointer, kEnvelopeEventIdPointer), 16);
  Result<Event> decoded = DecodeEventBody(bytes);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Code::kCorruption);
  EXPECT_NE(decoded.status().message().find("eventId"), std::string::npos)
      << decoded.status().message();
  EXPECT_FALSE(DecodeEnvelopeHeader(bytes).ok());
}

TEST(CodecTest, WrongSizePrevHashIsCorruption) {
  std::string bytes = EncodeEventBody(SampleEvent(KeyDeleted{"ws_1", "key_1"}));
  ShortenByteList(&bytes, PointerSlot(bytes, kRootPointer, kEnvelopePrevHashPointer), 32);
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(bytes);
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().code(), Code::kCorruption);
  EXPECT_NE(header.status().message().find("prevHash"), std::string::npos);
}

TEST(CodecTest, WrongSizeBodyHashIsCorruption) {
  std::string bytes = EncodeEventBody(SampleEvent(OperatorTokenSet{}));
  const size_t body = PointerSlot(bytes, kRootPointer, kEnvelopeBodyPointer);
  ShortenByteList(&bytes, PointerSlot(bytes, body, 0), 32);  // OperatorTokenSet.tokenHash
  ASSERT_TRUE(DecodeEnvelopeHeader(bytes).ok());  // the header does not read the body
  Result<Event> decoded = DecodeEventBody(bytes);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Code::kCorruption);
  EXPECT_NE(decoded.status().message().find("tokenHash"), std::string::npos);
}

TEST(CodecTest, UnknownEventTypeIsCorruptionButHeaderDecodes) {
  std::string bytes = EncodeEventBody(SampleEvent(ApiCallRecorded{}));
  const size_t tag = StructTarget(bytes, kRootPointer) * kWord + kEnvelopeTagByte;
  ASSERT_EQ(GetUint16(bytes, tag), ApiCallRecordedBodyKind());
  SetUint16(&bytes, tag, 99);
  Result<Event> decoded = DecodeEventBody(bytes);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Code::kCorruption);
  EXPECT_EQ(decoded.status().message(), "unknown event type 99");
  Result<EnvelopeHeader> header = DecodeEnvelopeHeader(bytes);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->body_kind, 99);
  EXPECT_EQ(header->sequence, 7u);
}

TEST(CodecTest, UnknownEnumValueIsCorruption) {
  AlarmStateChanged changed;
  changed.from = AlarmState::kOk;
  std::string bytes = EncodeEventBody(SampleEvent(changed));
  const size_t body = PointerSlot(bytes, kRootPointer, kEnvelopeBodyPointer);
  const size_t from = StructTarget(bytes, body) * kWord;  // AlarmStateChanged.from: bits [0, 16)
  ASSERT_EQ(GetUint16(bytes, from), 1);
  SetUint16(&bytes, from, 3);
  Result<Event> decoded = DecodeEventBody(bytes);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Code::kCorruption);
}

TEST(CodecTest, LimitsAreApplied) {
  SecurityGroupCreated group;
  group.ip_allow.assign(100, "203.0.113.0/24");
  const std::string bytes = EncodeEventBody(SampleEvent(group));
  ASSERT_TRUE(DecodeEventBody(bytes).ok());

  Result<Event> small_traversal = DecodeEventBody(bytes, DecodeLimits{.traversal_words_max = 16});
  ASSERT_FALSE(small_traversal.ok());
  EXPECT_EQ(small_traversal.status().code(), Code::kCorruption);

  // Envelope -> SecurityGroupState -> List(Text) -> Text is three levels deep.
  Result<Event> shallow = DecodeEventBody(bytes, DecodeLimits{.nesting_depth_max = 2});
  ASSERT_FALSE(shallow.ok());
  EXPECT_EQ(shallow.status().code(), Code::kCorruption);
}

TEST(CodecTest, BodyKindsAndTypeNamesAreDistinct) {
  std::set<uint16_t> kinds;
  std::set<std::string> names;
  [&]<size_t... I>(std::index_sequence<I...>) {
    (([&] {
       const EventBody body(std::in_place_index<I>);
       Result<EnvelopeHeader> header = DecodeEnvelopeHeader(EncodeEventBody(SampleEvent(body)));
       ASSERT_TRUE(header.ok()) << header.status().ToString();
       kinds.insert(header->body_kind);
       names.insert(EventTypeName(body));
     }()),
     ...);
  }(std::make_index_sequence<std::variant_size_v<EventBody>>{});
  EXPECT_EQ(kinds.size(), std::variant_size_v<EventBody>);
  EXPECT_EQ(names.size(), std::variant_size_v<EventBody>);
  for (const std::string& name : names) {
    EXPECT_EQ(name.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string::npos) << name;
  }
}

TEST(CodecTest, TypeNames) {
  EXPECT_STREQ(EventTypeName(WorkspaceCreated{}), "workspace_created");
  EXPECT_STREQ(EventTypeName(KeyCreated{}), "key_created");
  EXPECT_STREQ(EventTypeName(NotificationFailed{}), "notification_failed");
  EXPECT_STREQ(EventTypeName(ApiCallRecorded{}), "api_call_recorded");
  EXPECT_STREQ(EventTypeName(OperatorTokenSet{}), "operator_token_set");
}

// ---- The wire reader against Cap'n Proto ----------------------------------------

namespace {

// A word-aligned copy of `bytes` (DecodeCallEvent's views need alignment).
struct Aligned {
  explicit Aligned(std::string_view bytes) : words((bytes.size() + kWord - 1) / kWord) {
    if (!bytes.empty()) std::memcpy(words.data(), bytes.data(), bytes.size());
    size = bytes.size();
  }
  std::string_view view() const { return {reinterpret_cast<const char*>(words.data()), size}; }
  std::vector<uint64_t> words;
  size_t size = 0;
};

bool SameExcerpt(const HttpExcerptView& a, const HttpExcerptView& b) {
  if (a.body_excerpt != b.body_excerpt || a.headers.size() != b.headers.size()) return false;
  for (size_t i = 0; i < a.headers.size(); ++i) {
    if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value) {
      return false;
    }
  }
  return true;
}

// Whether two decodes of one body read the same: the kind, and the fields of
// the view that kind fills.
bool SameView(const CallEventView& a, const CallEventView& b) {
  if (a.body_kind != b.body_kind) return false;
  if (a.body_kind == ApiCallRecordedBodyKind()) {
    const ApiCallView& x = a.call;
    const ApiCallView& y = b.call;
    return x.request_id == y.request_id && x.workspace_id == y.workspace_id &&
           x.key_id == y.key_id && x.occurred_at_us == y.occurred_at_us && x.method == y.method &&
           x.path == y.path && x.status == y.status && x.latency_us == y.latency_us &&
           x.units == y.units && x.request_bytes == y.request_bytes &&
           x.response_bytes == y.response_bytes && x.client_ip == y.client_ip &&
           x.origin == y.origin && x.logged == y.logged && SameExcerpt(x.request, y.request) &&
           SameExcerpt(x.response, y.response);
  }
  if (a.body_kind == AuthorizationDeniedBodyKind()) {
    const AuthorizationDeniedView& x = a.denial;
    const AuthorizationDeniedView& y = b.denial;
    return x.request_id == y.request_id && x.workspace_id == y.workspace_id &&
           x.key_id == y.key_id && x.occurred_at_us == y.occurred_at_us && x.reason == y.reason &&
           x.client_ip == y.client_ip && x.origin == y.origin && x.count == y.count;
  }
  return true;
}

bool SameHeader(const EnvelopeHeader& a, const EnvelopeHeader& b) {
  return a.sequence == b.sequence && a.recorded_at_us == b.recorded_at_us &&
         a.stream_id == b.stream_id && a.stream_version == b.stream_version &&
         a.event_id == b.event_id && a.prev_hash == b.prev_hash && a.body_kind == b.body_kind;
}

// Checks one body (any bytes, any limits) both ways, inside a property:
// whatever the wire reader accepts, Cap'n Proto accepts and reads the same;
// and the public decoders return exactly what Cap'n Proto alone returns.
// Returns whether the wire reader read the call event.
bool CheckAgainstCapnp(std::string_view bytes, const DecodeLimits& limits) {
  const Aligned aligned(bytes);
  const CallEventWireLayout& layout = CallEventWireLayoutOfSchema();
  CallEventView capnp_view;
  const Status capnp =
      codec_internal::DecodeCallEventWithCapnp(aligned.view(), &capnp_view, limits);
  CallEventView wire_view;
  const bool wire = ReadCallEventWire(layout, aligned.view(), limits, &wire_view);
  if (wire) {
    RC_ASSERT(capnp.ok());
    RC_ASSERT(SameView(wire_view, capnp_view));
  }
  CallEventView view;
  const Status decoded = DecodeCallEvent(aligned.view(), &view, limits);
  RC_ASSERT(decoded.code() == capnp.code());
  RC_ASSERT(decoded.message() == capnp.message());
  if (decoded.ok()) RC_ASSERT(SameView(view, capnp_view));

  const Result<EnvelopeHeader> capnp_header =
      codec_internal::DecodeEnvelopeHeaderWithCapnp(bytes, limits);
  EnvelopeHeader wire_header;
  if (ReadEnvelopeHeaderWire(layout, bytes, limits, &wire_header)) {
    RC_ASSERT(capnp_header.ok());
    RC_ASSERT(SameHeader(wire_header, *capnp_header));
  }
  RC_TAG(wire ? "read by the wire reader" : capnp.ok() ? "declined, read by Cap'n Proto"
                                                       : "refused by both");
  const Result<EnvelopeHeader> header = DecodeEnvelopeHeader(bytes, limits);
  RC_ASSERT(header.ToStatus().code() == capnp_header.ToStatus().code());
  RC_ASSERT(header.ToStatus().message() == capnp_header.ToStatus().message());
  if (header.ok()) RC_ASSERT(SameHeader(*header, *capnp_header));
  return wire;
}

// Call and denial events (the bodies the wire reader reads) more often than
// the others.
rc::Gen<Event> CallEvents() {
  return rc::gen::oneOf(
      rc::EventWith(rc::gen::cast<EventBody>(rc::gen::arbitrary<ApiCallRecorded>())),
      rc::EventWith(rc::gen::cast<EventBody>(rc::gen::arbitrary<AuthorizationDenied>())),
      rc::gen::arbitrary<Event>());
}

// A pointer-shaped word: any kind, an offset near its position, sizes
// mostly small (so that the target often fits the message), so that
// mutations reach the pointer checks rather than only garbage. With kind 0
// it is also a struct list's tag (offset: the element count).
rc::Gen<uint64_t> PointerWord(size_t words) {
  const int range = static_cast<int>(words) + 2;
  return rc::gen::apply(
      [](int kind, int offset, int upper_low, int upper_high) {
        const uint64_t lower =
            (static_cast<uint64_t>(static_cast<uint32_t>(offset)) << 2 & 0xFFFFFFFFull) |
            static_cast<uint64_t>(kind);
        const uint64_t upper =
            static_cast<uint64_t>(upper_low) | (static_cast<uint64_t>(upper_high) << 16);
        return lower | upper << 32;
      },
      rc::gen::inRange(0, 4), rc::gen::inRange(-range, range),
      rc::gen::weightedOneOf<int>({{4, rc::gen::inRange(0, 64)}, {1, rc::gen::inRange(0, 1 << 16)}}),
      rc::gen::inRange(0, 8));
}

}  // namespace

RC_GTEST_PROP(WireReaderProperty, ReadsEveryEncodedEventAsCapnpDoes, ()) {
  const Event event = *CallEvents();
  const std::string bytes = EncodeEventBody(event);
  // The fold's fast path is taken for everything the encoder writes.
  RC_ASSERT(CheckAgainstCapnp(bytes, DecodeLimits{}));
  EnvelopeHeader header;
  RC_ASSERT(ReadEnvelopeHeaderWire(CallEventWireLayoutOfSchema(), bytes, DecodeLimits{}, &header));
}

RC_GTEST_PROP(WireReaderProperty, NeverAcceptsWhatCapnpRefuses, ()) {
  std::string bytes = EncodeEventBody(*CallEvents());
  const int mutations = *rc::gen::inRange(1, 4);
  for (int i = 0; i < mutations && !bytes.empty(); ++i) {
    const size_t words = bytes.size() / kWord;
    const size_t at = *rc::gen::inRange<size_t>(0, words);
    switch (*rc::gen::inRange(0, 4)) {
      case 0: bytes[at * kWord + *rc::gen::inRange<size_t>(0, kWord)] ^=
                  static_cast<char>(*rc::gen::inRange(1, 256));
              break;
      case 1: SetWordAt(&bytes, at, *PointerWord(words)); break;
      case 2: SetWordAt(&bytes, at, 0); break;
      default: bytes.resize(at * kWord); break;  // truncated, or empty
    }
  }
  DecodeLimits limits;
  if (*rc::gen::arbitrary<bool>()) {
    limits.traversal_words_max = *rc::gen::inRange<uint64_t>(1, bytes.size() / 4 + 8);
    // Mostly depths the wire reader reads at (below 8 it always declines).
    limits.nesting_depth_max = *rc::gen::weightedOneOf<int>(
        {{3, rc::gen::inRange(8, 17)}, {1, rc::gen::inRange(1, 8)}});
  }
  CheckAgainstCapnp(bytes, limits);
}

// Cap'n Proto counts the words it reads against traversal_words_max. The
// wire reader must decline below the least limit Cap'n Proto accepts, and
// read once the limit leaves room for its own (coarser) count.
TEST(WireReaderTest, DeclinesBelowTheTraversalLimitCapnpNeeds) {
  ApiCallRecorded call;
  call.workspace_id = "ws_1";
  call.key_id = "key_1";
  call.logged = true;
  call.request.headers = {{"content-type", "application/json"}, {"user-agent", "t/1"}};
  call.request.body_excerpt = "{\"a\":1}";
  call.response.headers = {{"content-type", "image/png"}};
  const Aligned bytes(EncodeEventBody(SampleEvent(call)));
  const CallEventWireLayout& layout = CallEventWireLayoutOfSchema();
  uint64_t capnp_least = 1;  // DecodeLimits: a limit is positive
  CallEventView view;
  while (!codec_internal::DecodeCallEventWithCapnp(bytes.view(), &view,
                                                   DecodeLimits{.traversal_words_max = capnp_least})
              .ok()) {
    ++capnp_least;
    ASSERT_LT(capnp_least, bytes.size) << "no limit suffices";
  }
  ASSERT_GT(capnp_least, 8u);  // the limit binds on this message
  for (uint64_t limit = 1; limit < capnp_least; ++limit) {
    EXPECT_FALSE(ReadCallEventWire(layout, bytes.view(), DecodeLimits{.traversal_words_max = limit},
                                   &view))
        << limit;
    const Status decoded =
        DecodeCallEvent(bytes.view(), &view, DecodeLimits{.traversal_words_max = limit});
    EXPECT_EQ(decoded.code(), Code::kCorruption) << limit;
  }
  // The wire reader counts one word more per object it follows (a struct,
  // list, text or data that is not null); a message holds fewer objects than
  // words, so it reads from fewer than that many words above Cap'n Proto's
  // least limit.
  uint64_t wire_least = capnp_least;
  while (!ReadCallEventWire(layout, bytes.view(), DecodeLimits{.traversal_words_max = wire_least},
                            &view)) {
    ++wire_least;
    ASSERT_LT(wire_least, capnp_least + bytes.size / kWord) << "the wire reader's count is too coarse";
  }
  EXPECT_TRUE(SameView(view, [&] {
    CallEventView capnp_view;
    EXPECT_TRUE(codec_internal::DecodeCallEventWithCapnp(bytes.view(), &capnp_view).ok());
    return capnp_view;
  }()));
}

TEST(WireReaderTest, DeclinesFarPointersSegmentsAndUnterminatedText) {
  ApiCallRecorded call;
  call.workspace_id = "ws_1";
  call.key_id = "key_1";
  const std::string good = EncodeEventBody(SampleEvent(call));
  const CallEventWireLayout& layout = CallEventWireLayoutOfSchema();
  CallEventView view;
  const Aligned good_words(good);  // the view's bytes, kept while it is read
  ASSERT_TRUE(ReadCallEventWire(layout, good_words.view(), DecodeLimits{}, &view));
  EXPECT_EQ(view.call.key_id, "key_1");

  std::string far = good;  // the root pointer made a far pointer
  SetWordAt(&far, kRootPointer, (WordAt(far, kRootPointer) & ~uint64_t{3}) | 2);
  EXPECT_FALSE(ReadCallEventWire(layout, Aligned(far).view(), DecodeLimits{}, &view));

  std::string two_segments = good;  // a second, empty segment in the table
  SetWordAt(&two_segments, 0, WordAt(good, 0) | 1);
  EXPECT_FALSE(ReadCallEventWire(layout, Aligned(two_segments).view(), DecodeLimits{}, &view));

  // key_id "key_1" without its NUL: Cap'n Proto refuses, the reader declines,
  // DecodeCallEvent says what Cap'n Proto says.
  std::string unterminated = good;
  const size_t call_pointer = PointerSlot(good, kRootPointer, kEnvelopeBodyPointer);
  const size_t key_pointer = PointerSlot(good, call_pointer, layout.call.key_id);
  ShortenByteList(&unterminated, key_pointer, 6);
  const Aligned bad(unterminated);
  EXPECT_FALSE(ReadCallEventWire(layout, bad.view(), DecodeLimits{}, &view));
  const Status decoded = DecodeCallEvent(bad.view(), &view);
  EXPECT_EQ(decoded.code(), Code::kCorruption);
  EXPECT_EQ(decoded.message(),
            codec_internal::DecodeCallEventWithCapnp(bad.view(), &view).message());

  // A denial reason this build does not know: declined, then Corruption.
  AuthorizationDenied denied;
  denied.reason = DenialReason::kRateLimited;
  std::string unknown_reason = EncodeEventBody(SampleEvent(denied));
  const size_t denial = StructTarget(unknown_reason,
                                     PointerSlot(unknown_reason, kRootPointer, kEnvelopeBodyPointer));
  const size_t reason_byte = denial * kWord + layout.denial.reason.bit / 8;
  ASSERT_EQ(GetUint16(unknown_reason, reason_byte), static_cast<uint16_t>(DenialReason::kRateLimited));
  SetUint16(&unknown_reason, reason_byte, 77);
  const Aligned unknown(unknown_reason);
  EXPECT_FALSE(ReadCallEventWire(layout, unknown.view(), DecodeLimits{}, &view));
  EXPECT_EQ(DecodeCallEvent(unknown.view(), &view).code(), Code::kCorruption);
}

TEST(WireReaderTest, DeclinesNestingLimitsItCannotProve) {
  ApiCallRecorded call;
  call.logged = true;
  call.request.headers = {{"a", "b"}};
  const Aligned bytes(EncodeEventBody(SampleEvent(call)));
  CallEventView view;
  for (int depth = 1; depth <= 16; ++depth) {
    const DecodeLimits limits{.nesting_depth_max = depth};
    const bool wire = ReadCallEventWire(CallEventWireLayoutOfSchema(), bytes.view(), limits, &view);
    const Status capnp = codec_internal::DecodeCallEventWithCapnp(bytes.view(), &view, limits);
    if (wire) {
      EXPECT_TRUE(capnp.ok()) << depth;
    }
    EXPECT_EQ(DecodeCallEvent(bytes.view(), &view, limits).code(), capnp.code()) << depth;
  }
  EXPECT_TRUE(ReadCallEventWire(CallEventWireLayoutOfSchema(), bytes.view(), DecodeLimits{}, &view));
}

// The fold decodes into one view again and again: what an earlier event left
// in it (headers, a denial) must not show through.
TEST(WireReaderTest, ReadsIntoAReusedViewAsIntoAFreshOne) {
  ApiCallRecorded logged;
  logged.key_id = "key_1";
  logged.logged = true;
  logged.request.headers = {{"a", "1"}, {"b", "2"}, {"c", "3"}};
  logged.response.body_excerpt = "png";
  ApiCallRecorded plain;
  plain.key_id = "key_2";
  AuthorizationDenied denied;
  denied.key_id = "key_3";
  denied.count = 5;
  const CallEventWireLayout& layout = CallEventWireLayoutOfSchema();
  CallEventView reused;
  std::deque<Aligned> kept;  // every body the views point into, as the fold's chunks
  for (const EventBody& body : {EventBody(logged), EventBody(denied), EventBody(plain),
                                EventBody(KeyDeleted{"ws_1", "key_1"}), EventBody(logged)}) {
    const Aligned& bytes = kept.emplace_back(EncodeEventBody(SampleEvent(body)));
    CallEventView fresh;
    ASSERT_TRUE(codec_internal::DecodeCallEventWithCapnp(bytes.view(), &fresh).ok());
    ASSERT_TRUE(ReadCallEventWire(layout, bytes.view(), DecodeLimits{}, &reused));
    EXPECT_TRUE(SameView(reused, fresh)) << EventTypeName(body);
  }
  EXPECT_EQ(reused.call.request.headers.size(), 3u);
  EXPECT_EQ(reused.call.response.body_excerpt, "png");
}

// The header reader takes any alignment (verify hands it bodies as stored).
TEST(WireReaderTest, ReadsHeadersAtAnyAlignment) {
  const std::string bytes = EncodeEventBody(SampleEvent(KeyDeleted{"ws_1", "key_1"}));
  const Result<EnvelopeHeader> expected = codec_internal::DecodeEnvelopeHeaderWithCapnp(bytes);
  ASSERT_TRUE(expected.ok());
  for (size_t shift = 0; shift < kWord; ++shift) {
    std::string buffer(shift, '\0');
    buffer += bytes;
    EnvelopeHeader header;
    ASSERT_TRUE(ReadEnvelopeHeaderWire(CallEventWireLayoutOfSchema(),
                                       std::string_view(buffer).substr(shift), DecodeLimits{},
                                       &header))
        << shift;
    EXPECT_TRUE(SameHeader(header, *expected)) << shift;
  }
}

// An older writer's struct may end before a field this build reads: the
// field reads as its default. A data section cut short (and the pointers
// moved up to follow it) must read the same both ways, and be read.
TEST(WireReaderTest, ReadsAnOlderWritersSmallerStruct) {
  ApiCallRecorded call;
  call.workspace_id = "ws_1";
  call.key_id = "key_1";
  call.occurred_at_us = 123;
  call.status = 404;
  call.units = 7;
  std::string bytes = EncodeEventBody(SampleEvent(call));
  const size_t pointer = PointerSlot(bytes, kRootPointer, kEnvelopeBodyPointer);
  const uint64_t word = WordAt(bytes, pointer);
  const uint64_t data_words = (word >> 32) & 0xFFFF;
  const uint64_t pointers = word >> 48;
  ASSERT_GE(data_words, 2u);
  // Keep one data word: move the pointer section up by data_words - 1
  // words, adjusting each struct-relative offset by as much.
  const size_t target = StructTarget(bytes, pointer);
  const uint64_t cut = data_words - 1;
  for (uint64_t i = 0; i < pointers; ++i) {
    const size_t from = target + data_words + i;
    uint64_t p = WordAt(bytes, from);
    if (p != 0) {
      const auto offset = static_cast<int32_t>(static_cast<uint32_t>(p)) >> 2;
      const int64_t moved = offset + static_cast<int64_t>(cut);
      p = (p & ~uint64_t{0xFFFFFFFF}) | (static_cast<uint64_t>(static_cast<uint32_t>(moved << 2)) |
                                          (p & 3));
    }
    SetWordAt(&bytes, target + 1 + i, p);
  }
  SetWordAt(&bytes, pointer, (word & ~(uint64_t{0xFFFF} << 32)) | (uint64_t{1} << 32));
  const Aligned older(bytes);
  CallEventView capnp_view;
  ASSERT_TRUE(codec_internal::DecodeCallEventWithCapnp(older.view(), &capnp_view).ok());
  CallEventView wire_view;
  ASSERT_TRUE(ReadCallEventWire(CallEventWireLayoutOfSchema(), older.view(), DecodeLimits{},
                                &wire_view));
  EXPECT_TRUE(SameView(wire_view, capnp_view));
  EXPECT_EQ(wire_view.call.key_id, "key_1");
  // Fields in the data words cut off read as zero (which ones depends on
  // the layout; at least one of these three lies beyond the first word).
  const ApiCallView& v = wire_view.call;
  EXPECT_TRUE(v.occurred_at_us == 0 || v.status == 0 || v.units == 0);
}
