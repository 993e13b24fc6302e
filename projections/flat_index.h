// FlatIndex: an open-addressing hash index of pointers to values that live
// elsewhere and never move (nodes of a std::unordered_map, elements of a
// std::deque). A lookup reads one slot of 16 bytes, mostly in one cache line,
// and follows a pointer only when the stored hash matches: for folds that
// look up millions of ids in tables too big for the cache, where a
// std::unordered_map walks a bucket, a node and the key's heap string.
//
// Nothing is ever erased. The slots are a power of two in number and at most
// half full (linear probing).
//
// Thread safety: not thread-safe; const methods may run concurrently.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <utility>
#include <vector>

#include "ledger/prefetch.h"

namespace keyledger {

template <typename T>
class FlatIndex {
 public:
  // Returns the value with this hash for which eq(value) is true, or nullptr.
  template <typename Eq>
  T* Find(size_t hash, const Eq& eq) const {
    if (slots_.empty()) return nullptr;
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots_[i];
      if (slot.value == nullptr) return nullptr;
      if (slot.hash == hash && eq(*slot.value)) return slot.value;
    }
  }

  // Adds `value` under `hash`. REQUIRES: value is non-null, outlives the
  // index and never moves; no equal value is indexed yet.
  void Insert(size_t hash, T* value) {
    assert(value != nullptr);
    if (2 * (used_ + 1) > slots_.size()) Grow();
    Place(hash, value);
  }

  size_t size() const { return used_; }

  // For prefetching (hints: nothing changes). Fetches the slot of `hash`
  // into the cache.
  void PrefetchSlot(size_t hash) const {
    const size_t slots = slots_.size();
    const char* base = reinterpret_cast<const char*>(slots_.data());
    if (slots > 0) PrefetchRead(base + (hash & (slots - 1)) * sizeof(Slot));
  }
  // Returns the first value indexed under `hash`, not compared with anything
  // (a guess, for prefetching), or nullptr.
  T* Guess(size_t hash) const {
    if (slots_.empty()) return nullptr;
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots_[i];
      if (slot.value == nullptr || slot.hash == hash) return slot.value;
    }
  }

 private:
  struct Slot {
    size_t hash = 0;
    T* value = nullptr;  // nullptr: empty
  };
  static constexpr size_t kSlotsMin = 16;

  void Grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(std::max(kSlotsMin, old.size() * 2), Slot{});
    used_ = 0;
    for (const Slot& slot : old) {
      if (slot.value != nullptr) Place(slot.hash, slot.value);
    }
  }

  void Place(size_t hash, T* value) {
    const size_t mask = slots_.size() - 1;
    size_t i = hash & mask;
    while (slots_[i].value != nullptr) i = (i + 1) & mask;
    slots_[i] = Slot{hash, value};
    ++used_;
  }

  std::vector<Slot> slots_;
  size_t used_ = 0;
};

}  // namespace keyledger
