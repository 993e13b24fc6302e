// Cap'n Proto codec for stored events: the only code in keyledger that sees
// Cap'n Proto types. Everything it returns is a plain domain struct.
//
// Stored value layout (see docs/architecture.md):
//   value = hash (32 bytes) || body
//   body  = Cap'n Proto flat-array message of schema::Envelope (unpacked)
//   hash  = BLAKE2b-256(prev_hash || body)
//
// Thread safety: stateless functions, safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/event.h"
#include "ledger/status.h"

namespace keyledger {

// Limits applied to every decode (Cap'n Proto ReaderOptions).
struct DecodeLimits {
  // Maximum words traversed while reading one event (guards against amplification).
  uint64_t traversal_words_max = 8 * 1024 * 1024 / 8;  // 8 MiB
  // Maximum pointer nesting depth.
  int nesting_depth_max = 16;
};

// Returns the body bytes for `event`: every envelope field except `hash`,
// plus the body: a single-segment Cap'n Proto flat message.
// REQUIRES: event.stream_id and event.actor are within their byte limits.
std::string EncodeEventBody(const Event& event);
// The same, with the body given apart: `envelope.body` is ignored. Saves a
// copy of the body on the append path.
std::string EncodeEventBody(const Event& envelope, const EventBody& body);

// The envelope fields of one event, by reference (no copies): what
// EventEncoder writes besides the body. The pointees must outlive the call.
struct EnvelopeFields {
  uint64_t sequence = 0;
  int64_t recorded_at_us = 0;
  const std::string* stream_id = nullptr;  // REQUIRES: within kStreamIdBytesMax
  uint64_t stream_version = 0;
  const EventId* event_id = nullptr;
  const std::string* actor = nullptr;  // REQUIRES: within kActorBytesMax
  const Hash* prev_hash = nullptr;
};

// Encodes bodies into a buffer it keeps between calls: the append path's
// encoder, which allocates nothing per event once warm. Produces exactly the
// bytes EncodeEventBody produces for the same event (a single-segment
// message, so the same event always has the same bytes).
//
// Thread safety: one thread at a time.
class EventEncoder {
 public:
  // `prefix_bytes` (a multiple of 8) of room are left in front of each body,
  // so a caller can complete the stored value (hash || body) in place.
  explicit EventEncoder(size_t prefix_bytes = 0);
  ~EventEncoder();
  EventEncoder(const EventEncoder&) = delete;
  EventEncoder& operator=(const EventEncoder&) = delete;

  // Returns prefix room (contents unspecified, writable) followed by the body.
  // Valid until the next Encode call or the encoder's destruction.
  std::span<char> Encode(const EnvelopeFields& envelope, const EventBody& body);

 private:
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

// Decodes a body produced by EncodeEventBody. `hash` of the result is left zero.
// Returns Corruption if the bytes are not a valid message or the union member is
// unknown to this build (a newer writer), InvalidArgument never.
// The input need not be word-aligned; the decoder copies when it is not.
Result<Event> DecodeEventBody(std::string_view body, const DecodeLimits& limits = {});

// The envelope fields alone, without decoding the body: for verification and
// for projections that skip event types they do not fold.
struct EnvelopeHeader {
  uint64_t sequence = 0;
  int64_t recorded_at_us = 0;
  std::string stream_id;
  uint64_t stream_version = 0;
  EventId event_id{};
  Hash prev_hash{};
  // The schema's union ordinal of the body (Envelope.body which()).
  uint16_t body_kind = 0;
};

// Returns Corruption on malformed bytes.
Result<EnvelopeHeader> DecodeEnvelopeHeader(std::string_view body,
                                            const DecodeLimits& limits = {});

// The body_kind of an ApiCallRecorded event, for cheap filtering.
uint16_t ApiCallRecordedBodyKind();
// The body_kind of an AuthorizationDenied event, for cheap filtering.
uint16_t AuthorizationDeniedBodyKind();
// The body_kind of an InvoiceIssued event, for cheap filtering.
uint16_t InvoiceIssuedBodyKind();
// The body_kinds of WorkspaceCreated and WorkspaceChanged events.
uint16_t WorkspaceCreatedBodyKind();
uint16_t WorkspaceChangedBodyKind();

// ---- Views of call events, for folds that read millions of them ---------------
//
// The fields of ApiCallRecorded / AuthorizationDenied as views into the body
// bytes they were decoded from: no std::string, no allocation once the
// header vectors have grown. Valid while those bytes are, and until the view
// is decoded into again.

struct HttpHeaderView {
  std::string_view name;
  std::string_view value;
};
struct HttpExcerptView {
  std::vector<HttpHeaderView> headers;
  std::string_view body_excerpt;
};
struct ApiCallView {
  std::string_view request_id;
  std::string_view workspace_id;
  std::string_view key_id;
  int64_t occurred_at_us = 0;
  std::string_view method;
  std::string_view path;
  uint16_t status = 0;
  uint64_t latency_us = 0;
  uint64_t units = 0;
  uint64_t request_bytes = 0;
  uint64_t response_bytes = 0;
  std::string_view client_ip;
  std::string_view origin;
  bool logged = false;
  HttpExcerptView request;
  HttpExcerptView response;
};
struct AuthorizationDeniedView {
  std::string_view request_id;
  std::string_view workspace_id;
  std::string_view key_id;
  int64_t occurred_at_us = 0;
  DenialReason reason = DenialReason::kUnknownKey;
  std::string_view client_ip;
  std::string_view origin;
  uint64_t count = 1;
};
struct CallEventView {
  uint16_t body_kind = 0;        // as EnvelopeHeader::body_kind, for every event
  ApiCallView call;              // filled when body_kind == ApiCallRecordedBodyKind()
  AuthorizationDeniedView denial;  // filled when body_kind == AuthorizationDeniedBodyKind()
};

// Decodes the body kind of any event, and the fields of an ApiCallRecorded or
// AuthorizationDenied body into `*out`, in one pass over the message.
// Accepts and refuses exactly the bytes DecodeEventBody does for those two
// kinds (every field is read and checked the same way), and for other kinds
// exactly those DecodeEnvelopeHeader does (their bodies are not read).
// Returns Corruption as they do; InvalidArgument if `body` is not word-aligned
// (views cannot point into a copy).
Status DecodeCallEvent(std::string_view body, CallEventView* out,
                       const DecodeLimits& limits = {});

}  // namespace keyledger
