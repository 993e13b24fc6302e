// The wire format (capnproto.org/encoding.html), as much of it as the
// readers below need: a flat array of 64-bit little-endian words; word 0 is
// the segment table (segment count - 1, then segment sizes in words); the
// segment follows; its word 0 is the root struct pointer. A pointer word's
// low two bits are its kind (0 struct, 1 list, 2 far, 3 other); a struct or
// list pointer's next 30 bits are the signed offset, in words, from the word
// after the pointer to the target. A struct pointer's upper half holds the
// data section's size in words (16 bits), then the pointer count (16 bits).
// A list pointer's upper half holds the element size (3 bits: 2 = byte,
// 7 = inline composite) and the element count (29 bits; for inline
// composite, the words after the tag word). An inline composite list starts
// with a tag word shaped like a struct pointer whose offset is the element
// count. An all-zero pointer is null: the field's default.
#include "ledger/wire_reader.h"

#include <bit>
#include <cassert>
#include <cstring>

namespace keyledger {
namespace {

// Deeper than any path these readers follow (envelope, call, excerpt,
// header list, header: 5), with room; below it Cap'n Proto decides.
constexpr int kWireNestingDepthMin = 8;

constexpr uint64_t kWordBytes = 8;
// Pointer kinds (the low 2 bits) and list element sizes (3 bits at bit 32).
constexpr uint64_t kKindStruct = 0;
constexpr uint64_t kKindList = 1;
constexpr uint64_t kElementBytes = 2;
constexpr uint64_t kElementInlineComposite = 7;
// A list pointer's element count (or inline composite word count) starts here.
constexpr int kListCountShift = 35;
// Cap'n Proto refuses segments of this many words or more.
constexpr uint64_t kSegmentWordsLimit = uint64_t{1} << 29;
// Cap'n Proto charges the root pointer's location twice (getRoot) before the
// root struct itself.
constexpr uint64_t kRootChargeWords = 2;
// The smallest message: the segment table and a root pointer.
constexpr size_t kMessageBytesMin = 2 * kWordBytes;

uint64_t StructDataWords(uint64_t pointer) { return (pointer >> 32) & 0xffff; }
uint64_t StructPointerCount(uint64_t pointer) { return pointer >> 48; }
uint64_t ListElementSize(uint64_t pointer) { return (pointer >> 32) & 7; }

// One segment, checked as Cap'n Proto's reader checks it. Every Read*
// returns false (and leaves its output unspecified) where that reader would
// throw or where this one does not follow (see wire_reader.h).
class Segment {
 public:
  // Where a struct's sections lie, in words from the segment's start.
  struct Struct {
    uint64_t data = 0;
    uint64_t data_words = 0;
    uint64_t pointers = 0;
    uint64_t pointer_count = 0;
  };
  // An inline composite list of structs.
  struct StructList {
    uint64_t first = 0;  // the first element's data section
    uint64_t count = 0;
    uint64_t data_words = 0;
    uint64_t pointer_count = 0;
    Struct At(uint64_t i) const {
      assert(i < count);
      const uint64_t data = first + i * (data_words + pointer_count);
      return Struct{data, data_words, data + data_words, pointer_count};
    }
  };
  // A pointer word and where it lies (position 0 with a null word stands for
  // a pointer beyond a struct's pointer section: the default).
  struct Pointer {
    uint64_t word = 0;
    uint64_t position = 0;
  };

  // `traversal_words_max`: DecodeLimits::traversal_words_max.
  Segment(const char* bytes, uint64_t words, uint64_t traversal_words_max)
      : bytes_(bytes), words_(words), traversal_words_max_(traversal_words_max) {}

  uint64_t Word(uint64_t index) const {
    assert(index < words_);
    uint64_t word;
    std::memcpy(&word, bytes_ + index * kWordBytes, sizeof(word));
    return word;
  }
  Pointer PointerAt(const Struct& s, uint16_t index) const {
    if (index >= s.pointer_count) return Pointer{};
    return Pointer{Word(s.pointers + index), s.pointers + index};
  }
  Pointer Root() const { return Pointer{Word(0), 0}; }

  // Returns the field's value; zero beyond the data section (an older
  // writer's smaller struct), as Cap'n Proto's getDataField does.
  uint64_t Data(const Struct& s, WireDataField field) const {
    assert(s.data + s.data_words <= words_);  // ReadStruct checked it
    assert(field.bits == 1 || field.bits == 16 || field.bits == 64);
    if (field.bit + field.bits > s.data_words * 64) return 0;
    const char* at = bytes_ + s.data * kWordBytes + field.bit / 8;
    if (field.bits == 64) return Load<uint64_t>(at);
    if (field.bits == 16) return Load<uint16_t>(at);
    assert(field.bits == 1);
    return (static_cast<uint8_t>(*at) >> (field.bit % 8)) & 1;
  }

  bool ReadStruct(Pointer p, Struct* out) {
    if (p.word == 0) {
      *out = Struct{};
      return true;
    }
    if ((p.word & 3) != kKindStruct) return false;
    uint64_t target;
    const uint64_t data_words = StructDataWords(p.word);
    const uint64_t pointer_count = StructPointerCount(p.word);
    if (!Target(p, data_words + pointer_count, &target)) return false;
    *out = Struct{target, data_words, target + data_words, pointer_count};
    return true;
  }

  bool ReadText(Pointer p, std::string_view* out) {
    std::string_view bytes;
    if (p.word == 0) {
      *out = std::string_view("", 0);  // as Cap'n Proto: a default text, not null
      return true;
    }
    if (!ReadBytes(p, &bytes) || bytes.empty() || bytes.back() != '\0') return false;
    *out = bytes.substr(0, bytes.size() - 1);
    return true;
  }

  bool ReadData(Pointer p, std::string_view* out) {
    if (p.word == 0) {
      *out = {};
      return true;
    }
    return ReadBytes(p, out);
  }

  bool ReadStructList(Pointer p, StructList* out) {
    if (p.word == 0) {
      *out = StructList{};
      return true;
    }
    if ((p.word & 3) != kKindList || ListElementSize(p.word) != kElementInlineComposite) {
      return false;
    }
    const uint64_t words = p.word >> kListCountShift;
    uint64_t tag_at;
    if (!Target(p, words + 1, &tag_at)) return false;
    const uint64_t tag = Word(tag_at);
    // Cap'n Proto ignores the offset's top bit in a tag; decline rather than follow.
    if ((tag & 3) != kKindStruct || (tag >> 31) & 1) return false;
    const uint64_t count = static_cast<uint32_t>(tag) >> 2;
    const uint64_t data_words = StructDataWords(tag);
    const uint64_t pointer_count = StructPointerCount(tag);
    // Zero-sized elements are charged per element by Cap'n Proto: decline.
    if (data_words + pointer_count == 0 && count > 0) return false;
    if (count * (data_words + pointer_count) > words) return false;
    *out = StructList{tag_at + 1, count, data_words, pointer_count};
    return true;
  }

 private:
  template <typename T>
  T Load(const char* at) const {
    T value;
    std::memcpy(&value, at, sizeof(value));
    return value;
  }

  // Resolves a struct or list pointer to its target, which must hold
  // `words` words within the segment, and charges them.
  bool Target(Pointer p, uint64_t words, uint64_t* target) {
    const int64_t offset = static_cast<int32_t>(static_cast<uint32_t>(p.word)) >> 2;
    const int64_t at = static_cast<int64_t>(p.position) + 1 + offset;
    if (at < 0 || static_cast<uint64_t>(at) > words_ || words > words_ - static_cast<uint64_t>(at)) {
      return false;
    }
    // One word more per object than it holds: never less than Cap'n Proto
    // charges for it, so a total within the limit is one it keeps too.
    charged_words_ += words + 1;
    if (charged_words_ > traversal_words_max_) return false;
    *target = static_cast<uint64_t>(at);
    return true;
  }

  bool ReadBytes(Pointer p, std::string_view* out) {
    if ((p.word & 3) != kKindList || ListElementSize(p.word) != kElementBytes) return false;
    const uint64_t size = p.word >> kListCountShift;
    uint64_t target;
    if (!Target(p, (size + kWordBytes - 1) / kWordBytes, &target)) return false;
    *out = std::string_view(bytes_ + target * kWordBytes, size);
    return true;
  }

  const char* bytes_;
  uint64_t words_;
  uint64_t traversal_words_max_;
  uint64_t charged_words_ = kRootChargeWords;
};

// Returns the message's one segment, or false (several segments, a size
// that disagrees with the bytes, an empty segment, a limit too low to prove).
bool OpenSegment(std::string_view body, const DecodeLimits& limits, Segment* out) {
  assert(limits.traversal_words_max > 0 && limits.nesting_depth_max > 0);
  if constexpr (std::endian::native != std::endian::little) return false;
  if (limits.nesting_depth_max < kWireNestingDepthMin) return false;
  if (limits.traversal_words_max < kRootChargeWords) return false;
  if (body.size() < kMessageBytesMin || body.size() % kWordBytes != 0) return false;
  uint64_t table;
  std::memcpy(&table, body.data(), sizeof(table));
  const uint64_t segments_minus_one = static_cast<uint32_t>(table);
  const uint64_t words = table >> 32;
  // The codec refuses words after the segment.
  if (segments_minus_one != 0 || words == 0 || words >= kSegmentWordsLimit ||
      words != body.size() / kWordBytes - 1) {
    return false;
  }
  *out = Segment(body.data() + kWordBytes, words, limits.traversal_words_max);
  return true;
}

bool ReadFixedData(Segment& segment, Segment::Pointer p, size_t size, uint8_t* out) {
  std::string_view bytes;
  if (!segment.ReadData(p, &bytes) || bytes.size() != size) return false;
  std::memcpy(out, bytes.data(), size);
  return true;
}

// The envelope fields both readers check (ReadHeader, CheckHeaderView).
bool ReadHeaderFields(const CallEventWireLayout::Envelope& l, Segment& segment,
                      const Segment::Struct& envelope, EnvelopeHeader* header,
                      std::string_view* stream_id) {
  header->sequence = segment.Data(envelope, l.sequence);
  header->recorded_at_us = static_cast<int64_t>(segment.Data(envelope, l.recorded_at_us));
  header->stream_version = segment.Data(envelope, l.stream_version);
  header->body_kind = static_cast<uint16_t>(segment.Data(envelope, l.body_kind));
  return segment.ReadText(segment.PointerAt(envelope, l.stream_id), stream_id) &&
         ReadFixedData(segment, segment.PointerAt(envelope, l.event_id), header->event_id.size(),
                       header->event_id.data()) &&
         ReadFixedData(segment, segment.PointerAt(envelope, l.prev_hash),
                       header->prev_hash.size(), header->prev_hash.data());
}

bool ReadExcerpt(const CallEventWireLayout& l, Segment& segment, Segment::Pointer p,
                 HttpExcerptView* out) {
  Segment::Struct excerpt;
  Segment::StructList headers;
  out->headers.clear();
  if (!segment.ReadStruct(p, &excerpt) ||
      !segment.ReadStructList(segment.PointerAt(excerpt, l.excerpt.headers), &headers)) {
    return false;
  }
  for (uint64_t i = 0; i < headers.count; ++i) {
    const Segment::Struct header = headers.At(i);
    HttpHeaderView& view = out->headers.emplace_back();
    if (!segment.ReadText(segment.PointerAt(header, l.header.name), &view.name) ||
        !segment.ReadText(segment.PointerAt(header, l.header.value), &view.value)) {
      return false;
    }
  }
  return segment.ReadData(segment.PointerAt(excerpt, l.excerpt.body_excerpt), &out->body_excerpt);
}

bool ReadCall(const CallEventWireLayout& l, Segment& segment, const Segment::Struct& s,
              ApiCallView* out) {
  const CallEventWireLayout::Call& c = l.call;
  out->occurred_at_us = static_cast<int64_t>(segment.Data(s, c.occurred_at_us));
  out->status = static_cast<uint16_t>(segment.Data(s, c.status));
  out->latency_us = segment.Data(s, c.latency_us);
  out->units = segment.Data(s, c.units);
  out->request_bytes = segment.Data(s, c.request_bytes);
  out->response_bytes = segment.Data(s, c.response_bytes);
  out->logged = segment.Data(s, c.logged) != 0;
  return segment.ReadText(segment.PointerAt(s, c.request_id), &out->request_id) &&
         segment.ReadText(segment.PointerAt(s, c.workspace_id), &out->workspace_id) &&
         segment.ReadText(segment.PointerAt(s, c.key_id), &out->key_id) &&
         segment.ReadText(segment.PointerAt(s, c.method), &out->method) &&
         segment.ReadText(segment.PointerAt(s, c.path), &out->path) &&
         segment.ReadText(segment.PointerAt(s, c.client_ip), &out->client_ip) &&
         segment.ReadText(segment.PointerAt(s, c.origin), &out->origin) &&
         ReadExcerpt(l, segment, segment.PointerAt(s, c.request), &out->request) &&
         ReadExcerpt(l, segment, segment.PointerAt(s, c.response), &out->response);
}

bool ReadDenial(const CallEventWireLayout::Denial& d, Segment& segment, const Segment::Struct& s,
                AuthorizationDeniedView* out) {
  const uint64_t reason = segment.Data(s, d.reason);
  if (reason > d.reason_last) return false;  // Cap'n Proto's path names it
  out->reason = static_cast<DenialReason>(reason);
  out->occurred_at_us = static_cast<int64_t>(segment.Data(s, d.occurred_at_us));
  out->count = segment.Data(s, d.count);
  return segment.ReadText(segment.PointerAt(s, d.request_id), &out->request_id) &&
         segment.ReadText(segment.PointerAt(s, d.workspace_id), &out->workspace_id) &&
         segment.ReadText(segment.PointerAt(s, d.key_id), &out->key_id) &&
         segment.ReadText(segment.PointerAt(s, d.client_ip), &out->client_ip) &&
         segment.ReadText(segment.PointerAt(s, d.origin), &out->origin);
}

}  // namespace

bool ReadCallEventWire(const CallEventWireLayout& layout, std::string_view body,
                       const DecodeLimits& limits, CallEventView* out) {
  assert(reinterpret_cast<uintptr_t>(body.data()) % 8 == 0);
  Segment segment(nullptr, 0, 0);
  Segment::Struct envelope;
  EnvelopeHeader header;
  std::string_view stream_id;
  if (!OpenSegment(body, limits, &segment) || !segment.ReadStruct(segment.Root(), &envelope) ||
      !ReadHeaderFields(layout.envelope, segment, envelope, &header, &stream_id)) {
    return false;
  }
  out->body_kind = header.body_kind;
  const bool call = header.body_kind == layout.envelope.call_kind;
  if (!call && header.body_kind != layout.envelope.denial_kind) return true;  // body not read
  Segment::Struct body_struct;
  std::string_view actor;
  const Segment::Pointer p =
      segment.PointerAt(envelope, call ? layout.envelope.call : layout.envelope.denial);
  if (!segment.ReadStruct(p, &body_struct)) return false;
  const bool read = call ? ReadCall(layout, segment, body_struct, &out->call)
                         : ReadDenial(layout.denial, segment, body_struct, &out->denial);
  return read && segment.ReadText(segment.PointerAt(envelope, layout.envelope.actor), &actor);
}

bool ReadEnvelopeHeaderWire(const CallEventWireLayout& layout, std::string_view body,
                            const DecodeLimits& limits, EnvelopeHeader* out) {
  Segment segment(nullptr, 0, 0);
  Segment::Struct envelope;
  std::string_view stream_id;
  if (!OpenSegment(body, limits, &segment) || !segment.ReadStruct(segment.Root(), &envelope) ||
      !ReadHeaderFields(layout.envelope, segment, envelope, out, &stream_id)) {
    return false;
  }
  out->stream_id.assign(stream_id);
  return true;
}

}  // namespace keyledger
