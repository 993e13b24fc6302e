// KeyHistory and KeyAsOf: one API key's lifecycle, read straight from its
// stream "key/<id>" in the ledger, for auditors and support ("who renamed this
// key, and what was its security group last Tuesday?").
//
// Both fold the key's own stream into a KeyView with FoldKeyEvent, a plain
// function that mirrors the key branches of KeyState::Apply (the workspace
// and group need not be folded: a key's stream holds every fact about the key).
// tests/audit_test.cc checks that the two folds agree after every event.
//
// Thread safety: stateless functions; the Ledger is thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/event.h"
#include "ledger/ledger.h"
#include "ledger/status.h"
#include "projections/key_state.h"

namespace keyledger {

// One lifecycle event of a key, explained.
struct KeyChange {
  uint64_t sequence = 0;
  int64_t recorded_at_us = 0;
  std::string actor;
  std::string type;  // EventTypeName, e.g. "key_renamed"
  // What changed, old value to new, e.g. `name "a" -> "b"`,
  // `security_group sg_1 -> sg_2`, `logging false -> true`,
  // `secret rotated (old secret valid until 2026-11-26T09:36:54.000000Z)`, `deleted`.
  std::vector<std::string> changes;
  bool operator==(const KeyChange&) const = default;
};

// Events of a key stream read per ledger call.
constexpr size_t kKeyStreamPageEvents = 1024;

// Folds one event of the stream "key/<id>" into `key` (std::nullopt before the
// key is created), exactly as KeyState::Apply changes that key: a deleted key
// stays, with deleted = true.
// Returns Corruption (with the event's sequence) when the event is not a key
// lifecycle event, names another key, creates an existing key, or changes a
// key that does not exist or is deleted. `key` is unchanged then.
// REQUIRES: key != nullptr.
Status FoldKeyEvent(const Event& event, std::optional<KeyView>* key);

// Returns every lifecycle event of key `key_id`, oldest first, each with its
// changes derived by folding the stream in order.
// Returns NotFound if the key has no events, Corruption from the ledger's
// checks or from FoldKeyEvent, IOError on storage failure.
Result<std::vector<KeyChange>> KeyHistory(const Ledger& ledger, std::string_view key_id);

// Returns the key as it was right after the last of its events with sequence
// <= `sequence` (deleted = true if that was its deletion), std::nullopt if it
// was created after `sequence`.
// Returns NotFound if the key has no events at all, Corruption/IOError as KeyHistory.
Result<std::optional<KeyView>> KeyAsOf(const Ledger& ledger, std::string_view key_id,
                                       uint64_t sequence);

}  // namespace keyledger
