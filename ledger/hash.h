// Hashing for the hash chain, secrets and digests: BLAKE2b-256 via libsodium.
//
// Thread safety: stateless functions; Hasher objects need external synchronization.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "ledger/event.h"

namespace keyledger {

// Returns BLAKE2b-256 of `data`.
Hash HashBytes(std::string_view data);

// Returns BLAKE2b-256 of prev || data, the chain link for one stored event.
Hash ChainHash(const Hash& prev, std::string_view data);

// Hashes a sequence of records into one BLAKE2b-256, each record prefixed
// with its length as a varint (ledger/varint.h), so that no two sequences of
// records give the same input. For digests of millions of small records (a
// projection's metrics cells): BLAKE2b compresses a 128-byte block at a time
// instead of finishing a hash per record (docs/performance.md, "The call
// projections' digest"). Small records are gathered into a buffer of
// kRecordHasherBufferBytes and hashed a buffer at a time: the hash is the
// same, without two library calls per record.
//
// Thread safety: not thread-safe.
class RecordHasher {
 public:
  RecordHasher();
  // Adds one record. REQUIRES: Finish not called yet.
  void Add(std::string_view record) { Add({record}); }
  // Adds one record made of `parts` end to end (no copy to join them).
  // REQUIRES: Finish not called yet.
  void Add(std::initializer_list<std::string_view> parts);
  // Adds the record varint(key size) ‖ key ‖ value: a stored key-value pair,
  // whose key and value no other pair's bytes can run together into.
  // REQUIRES: Finish not called yet.
  void AddKeyValue(std::string_view key, std::string_view value);
  // Returns the hash of the records added so far, in order.
  // REQUIRES: called at most once; no Add after it.
  Hash Finish();

 private:
  static constexpr size_t kRecordHasherBufferBytes = 4096;
  // Hashes the buffered bytes and empties the buffer.
  void Flush();

  // libsodium's crypto_generichash_state, kept opaque so that this header
  // does not include sodium.h (base.cc checks the size and alignment).
  alignas(64) unsigned char state_[384];
  unsigned char buffer_[kRecordHasherBufferBytes];
  size_t buffered_ = 0;
  bool finished_ = false;
};

// Returns lower-case hex of `bytes`.
std::string ToHex(const uint8_t* bytes, size_t size);
inline std::string ToHex(const Hash& h) { return ToHex(h.data(), h.size()); }

// Parses 64 hex digits. Returns false on any other input.
bool ParseHashHex(std::string_view hex, Hash* out);

// Compares in time independent of where the first difference is.
bool ConstantTimeEqual(const Hash& a, const Hash& b);

}  // namespace keyledger
