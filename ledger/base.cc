#include <pthread.h>
#include <sodium.h>

#include <cassert>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ledger/clock.h"
#include "ledger/hash.h"
#include "ledger/random.h"
#include "ledger/thread_name.h"
#include "ledger/varint.h"

namespace keyledger {

int64_t SystemClock::NowUs() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyClock::NowUs() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

SecureRandom::SecureRandom() {
  // sodium_init is idempotent and thread-safe; -1 means no entropy source, which
  // leaves no safe way to make secrets.
  if (sodium_init() < 0) std::abort();
}

void NameThisThread(const char* name) {
  constexpr size_t kThreadNameBytesMax = 15;  // Linux's limit, without the NUL
  char cut[kThreadNameBytesMax + 1] = {};
  std::strncpy(cut, name, kThreadNameBytesMax);
  (void)pthread_setname_np(pthread_self(), cut);
}

void SecureRandom::Fill(uint8_t* out, size_t size) { randombytes_buf(out, size); }

void SeededRandom::Fill(uint8_t* out, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < size; i++) out[i] = static_cast<uint8_t>(engine_() >> 56);
}

std::string RandomBase32(RandomSource& random, size_t bytes) {
  static constexpr char kAlphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
  constexpr size_t kBytesMax = 64;
  assert(bytes > 0 && bytes <= kBytesMax);
  uint8_t buf[kBytesMax];
  random.Fill(buf, bytes);
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < bytes; i++) {
    acc = (acc << 8) | buf[i];
    bits += 8;
    while (bits >= 5) {
      out.push_back(kAlphabet[(acc >> (bits - 5)) & 31]);
      bits -= 5;
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (5 - bits)) & 31]);
  return out;
}

namespace {

// libsodium picks its fastest BLAKE2b (AVX2, SSE4.1, SSSE3) in sodium_init;
// without it every hash runs the portable code, about half as fast. Tools that
// never make a secret (audit verify) would otherwise never call it.
void EnsureSodiumInit() {
  static const bool kReady = sodium_init() >= 0;
  assert(kReady);
  (void)kReady;
}

}  // namespace

Hash HashBytes(std::string_view data) {
  EnsureSodiumInit();
  Hash out;
  crypto_generichash(out.data(), out.size(), reinterpret_cast<const unsigned char*>(data.data()),
                     data.size(), nullptr, 0);
  return out;
}

Hash ChainHash(const Hash& prev, std::string_view data) {
  EnsureSodiumInit();
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, 32);
  crypto_generichash_update(&state, prev.data(), prev.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(data.data()),
                            data.size());
  Hash out;
  crypto_generichash_final(&state, out.data(), out.size());
  return out;
}

RecordHasher::RecordHasher() {
  static_assert(sizeof(crypto_generichash_state) == sizeof(state_));
  static_assert(alignof(crypto_generichash_state) <= alignof(RecordHasher));
  EnsureSodiumInit();
  crypto_generichash_init(new (state_) crypto_generichash_state, nullptr, 0, sizeof(Hash));
}

void RecordHasher::Add(std::initializer_list<std::string_view> parts) {
  assert(!finished_);
  size_t size = 0;
  for (std::string_view part : parts) size += part.size();
  if (buffered_ + kVarintBytesMax + size > sizeof(buffer_)) Flush();
  buffered_ += EncodeVarint(size, buffer_ + buffered_);
  for (std::string_view part : parts) {
    if (part.size() <= sizeof(buffer_) - buffered_) {
      if (!part.empty()) std::memcpy(buffer_ + buffered_, part.data(), part.size());
      buffered_ += part.size();
    } else {  // a part larger than the buffer's room is hashed where it is
      Flush();
      crypto_generichash_update(std::launder(reinterpret_cast<crypto_generichash_state*>(state_)),
                                reinterpret_cast<const unsigned char*>(part.data()), part.size());
    }
  }
}

void RecordHasher::AddKeyValue(std::string_view key, std::string_view value) {
  uint8_t size[kVarintBytesMax];
  const size_t n = EncodeVarint(key.size(), size);
  Add({std::string_view(reinterpret_cast<const char*>(size), n), key, value});
}

void RecordHasher::Flush() {
  crypto_generichash_update(std::launder(reinterpret_cast<crypto_generichash_state*>(state_)),
                            buffer_, buffered_);
  buffered_ = 0;
}

Hash RecordHasher::Finish() {
  assert(!finished_);
  Flush();
  finished_ = true;
  Hash out;
  crypto_generichash_final(std::launder(reinterpret_cast<crypto_generichash_state*>(state_)),
                           out.data(), out.size());
  return out;
}

std::string ToHex(const uint8_t* bytes, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(size * 2, '0');
  for (size_t i = 0; i < size; i++) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

bool ParseHashHex(std::string_view hex, Hash* out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; i++) {
    int hi = nibble(hex[2 * i]);
    int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool ConstantTimeEqual(const Hash& a, const Hash& b) {
  return sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace keyledger
