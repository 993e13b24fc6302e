// Injected random source for identifiers and secrets.
//
// Thread safety: implementations are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>

namespace keyledger {

class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Fills out[0, size) with random bytes.
  virtual void Fill(uint8_t* out, size_t size) = 0;
};

// Cryptographically secure bytes from libsodium's randombytes_buf (the OS CSPRNG).
class SecureRandom final : public RandomSource {
 public:
  SecureRandom();
  void Fill(uint8_t* out, size_t size) override;
};

// Deterministic bytes from a seed; for tests and benchmarks only, never for secrets.
class SeededRandom final : public RandomSource {
 public:
  explicit SeededRandom(uint64_t seed) : engine_(seed) {}
  void Fill(uint8_t* out, size_t size) override;

 private:
  std::mutex mu_;
  std::mt19937_64 engine_;
};

// Returns `bytes` random bytes encoded in lower-case Crockford base32 (no padding).
std::string RandomBase32(RandomSource& random, size_t bytes);

}  // namespace keyledger
