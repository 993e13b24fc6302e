// Little-endian base-128 varints for compact derived records (projection
// stores, serialized histograms). Not used by the ledger's event format.
//
// Thread safety: stateless functions.
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
