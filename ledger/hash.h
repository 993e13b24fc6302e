// Hashing for the hash chain, secrets and digests: BLAKE2b-256 via libsodium.
//
// Thread safety: stateless functions; Hasher objects need external synchronization.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "ledger/event.h"

namespace keyledger {

// Returns BLAKE2b-256 of `data`.
Hash HashBytes(std::string_view data);

// Returns BLAKE2b-256 of prev || data, the chain link for one stored event.
Hash ChainHash(const Hash& prev, std::string_view data);

// Returns lower-case hex of `bytes`.
std::string ToHex(const uint8_t* bytes, size_t size);
inline std::string ToHex(const Hash& h) { return ToHex(h.data(), h.size()); }

// Parses 64 hex digits. Returns false on any other input.
bool ParseHashHex(std::string_view hex, Hash* out);

// Compares in time independent of where the first difference is.
bool ConstantTimeEqual(const Hash& a, const Hash& b);

}  // namespace keyledger
