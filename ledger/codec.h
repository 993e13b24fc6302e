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
#include <string>
#include <string_view>

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

// Returns the body bytes for `event`: every envelope field except `hash`, plus the body.
// REQUIRES: event.stream_id and event.actor are within their byte limits.
std::string EncodeEventBody(const Event& event);
// The same, with the body given apart: `envelope.body` is ignored. Saves a
// copy of the body on the append path.
std::string EncodeEventBody(const Event& envelope, const EventBody& body);

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

}  // namespace keyledger
