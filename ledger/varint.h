// Little-endian base-128 varints for compact derived records (projection
// stores, serialized histograms). Not used by the ledger's event format.
//
// Thread safety: stateless functions; a VarintAppender needs external
// synchronization.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace keyledger {

constexpr size_t kVarintBytesMax = 10;  // a uint64_t needs at most 10 groups of 7 bits

// Writes the canonical (shortest) encoding of `v` to out[0, n) and returns n.
// REQUIRES: `out` has room for kVarintBytesMax bytes.
inline size_t EncodeVarint(uint64_t v, uint8_t* out) {
  size_t n = 0;
  for (; v >= 0x80; v >>= 7) out[n++] = static_cast<uint8_t>(v | 0x80);
  out[n++] = static_cast<uint8_t>(v);
  return n;
}

// Appends the canonical (shortest) encoding of `v` to `out`.
inline void PutVarint(uint64_t v, std::string* out) {
  uint8_t bytes[kVarintBytesMax];
  out->append(reinterpret_cast<const char*>(bytes), EncodeVarint(v, bytes));
}

// Appends bytes and varints to a std::string through a small buffer: one
// append per buffer, where PutVarint makes one per value (the digests of
// millions of small records encode a few bytes at a time).
class VarintAppender {
 public:
  // REQUIRES: `out` outlives this object and is not changed by others while
  // it lives; what was put reaches it at Flush or at destruction.
  explicit VarintAppender(std::string* out) : out_(out) {}
  ~VarintAppender() { Flush(); }
  VarintAppender(const VarintAppender&) = delete;
  VarintAppender& operator=(const VarintAppender&) = delete;

  void PutByte(uint8_t byte) {
    if (size_ == sizeof(buffer_)) Flush();
    buffer_[size_++] = byte;
  }
  // The canonical encoding, as PutVarint.
  void PutVarint(uint64_t v) {
    if (size_ > sizeof(buffer_) - kVarintBytesMax) Flush();
    size_ += EncodeVarint(v, buffer_ + size_);
  }
  void Flush() {
    out_->append(reinterpret_cast<const char*>(buffer_), size_);
    size_ = 0;
  }

 private:
  static constexpr size_t kBufferBytes = 256;
  std::string* const out_;
  uint8_t buffer_[kBufferBytes];
  size_t size_ = 0;
};

// Reads a canonical varint from the front of *in and consumes it. Returns
// false (leaving *in unchanged) when truncated, longer than 64 bits, or not
// minimal (a trailing zero group), so every value has exactly one encoding.
inline bool GetVarint(std::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  for (size_t i = 0; i < kVarintBytesMax && i < in->size(); ++i) {
    const auto byte = static_cast<uint8_t>((*in)[i]);
    if (i == kVarintBytesMax - 1 && byte > 1) return false;  // beyond 64 bits
    result |= uint64_t{byte & 0x7fu} << (7 * i);
    if ((byte & 0x80) == 0) {
      if (byte == 0 && i > 0) return false;  // non-minimal
      in->remove_prefix(i + 1);
      *v = result;
      return true;
    }
  }
  return false;
}

}  // namespace keyledger
