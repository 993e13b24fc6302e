// A reader of the Cap'n Proto wire format for the events that folds and
// verify read millions of: the envelope header of any event, and the bodies
// of ApiCallRecorded and AuthorizationDenied. Internal to the codec
// (ledger/codec.cc), which tries it first and decodes through Cap'n Proto
// whenever it declines; tests include it to compare the two.
//
// Why: Cap'n Proto's checked reader costs ~0.25 µs per call event (each
// getter re-checks its pointer), a third of the call projections' fold
// thread (docs/performance.md, "Call events read from the wire").
//
// The contract that makes it safe: it reads a message only if Cap'n Proto's
// checked reader, reading the same fields through the generated getters with
// the same DecodeLimits, would accept it, and it then returns exactly the
// values the getters return. It declines (returns false) everything else and
// everything unusual, so that Cap'n Proto decides: more than one segment,
// far or capability pointers, a pointer out of bounds or of another kind
// than the field's, list encodings other than INLINE_COMPOSITE for struct
// lists, text without its NUL terminator, fixed-size data of another size, a
// denial reason this build does not know, limits it cannot prove are kept.
// Declining is never wrong, only slower; accepting what Cap'n Proto refuses
// would be, and tests/codec_test.cc ("The wire reader against Cap'n Proto")
// checks both directions on mutated messages.
//
// Field positions come from the compiled-in schema (codec.cc,
// CallEventWireLayoutOfSchema), never from numbers written here.
//
// Thread safety: stateless functions, safe to call concurrently.
#pragma once

#include <cstdint>
#include <string_view>

#include "ledger/codec.h"

namespace keyledger {

// A data field: its offset and width in bits within its struct's data
// section. Every field read this way has the default value zero.
struct WireDataField {
  uint32_t bit = 0;
  uint32_t bits = 0;  // 1, 16 or 64
};

// Pointer fields are named by their index in the struct's pointer section.
struct CallEventWireLayout {
  struct Envelope {
    WireDataField sequence, recorded_at_us, stream_version;
    WireDataField body_kind;  // the body union's discriminant (16 bits)
    uint16_t stream_id = 0, event_id = 0, actor = 0, prev_hash = 0;
    uint16_t call_kind = 0, denial_kind = 0;  // discriminant values
    uint16_t call = 0, denial = 0;            // their pointers
  } envelope;
  struct Call {
    WireDataField occurred_at_us, status, latency_us, units, request_bytes, response_bytes, logged;
    uint16_t request_id = 0, workspace_id = 0, key_id = 0, method = 0, path = 0, client_ip = 0,
             origin = 0, request = 0, response = 0;
  } call;
  struct Excerpt {
    uint16_t headers = 0, body_excerpt = 0;
  } excerpt;
  struct Header {
    uint16_t name = 0, value = 0;
  } header;
  struct Denial {
    WireDataField occurred_at_us, reason, count;
    uint16_t request_id = 0, workspace_id = 0, key_id = 0, client_ip = 0, origin = 0;
    uint16_t reason_last = 0;  // the highest DenialReason ordinal this build knows
  } denial;
};

// Returns the layout of the compiled-in schema (ledger/events.capnp), built
// on first use; the reference stays valid for the life of the process.
const CallEventWireLayout& CallEventWireLayoutOfSchema();

// Reads what DecodeCallEvent(body, out, limits) reads. Returns true with
// *out filled exactly as DecodeCallEvent would fill it (views into `body`,
// valid while it is), or false when the caller must decode with Cap'n Proto
// (*out is then partly written; Cap'n Proto's decode overwrites what it
// reads). REQUIRES: body is word-aligned; the limits are positive.
bool ReadCallEventWire(const CallEventWireLayout& layout, std::string_view body,
                       const DecodeLimits& limits, CallEventView* out);

// The same for DecodeEnvelopeHeader(body, limits), *out as for
// ReadCallEventWire. Any alignment.
bool ReadEnvelopeHeaderWire(const CallEventWireLayout& layout, std::string_view body,
                            const DecodeLimits& limits, EnvelopeHeader* out);

// DecodeEnvelopeHeader and DecodeCallEvent through Cap'n Proto alone,
// without the reader above: what they fall back to, and what tests compare
// it with. Same contracts as theirs.
namespace codec_internal {
Result<EnvelopeHeader> DecodeEnvelopeHeaderWithCapnp(std::string_view body,
                                                     const DecodeLimits& limits = {});
Status DecodeCallEventWithCapnp(std::string_view body, CallEventView* out,
                                const DecodeLimits& limits = {});
}  // namespace codec_internal

}  // namespace keyledger
