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

// One page of a key's history.
struct KeyHistoryPage {
  std::vector<KeyChange> changes;  // oldest first
  // The stream version the next page starts at; 0 when this page ends the stream.
  uint64_t next_version = 0;
};

// Returns the lifecycle events of key `key_id` from stream version
// `from_version` on, at most `limit` of them, oldest first, each with its
// changes derived by folding the stream in order from its start (the events
// before the page are folded, not described).
// Returns NotFound if the key has no events, Corruption from the ledger's
// checks or from FoldKeyEvent, IOError on storage failure.
// REQUIRES: from_version >= 1, limit >= 1.
Result<KeyHistoryPage> KeyHistory(const Ledger& ledger, std::string_view key_id,
                                  uint64_t from_version, size_t limit);

// A point of the log: every event with sequence <= sequence_max and
// recorded_at <= recorded_at_us_max is before it (recorded_at never goes
// backwards along the log, so both bounds cut it once).
struct LogPoint {
  uint64_t sequence_max = UINT64_MAX;
  int64_t recorded_at_us_max = INT64_MAX;
  static LogPoint AtSequence(uint64_t s) { return {s, INT64_MAX}; }
  static LogPoint AtTime(int64_t us) { return {UINT64_MAX, us}; }
};

// A key as of a point of the log.
struct KeyAsOfView {
  std::optional<KeyView> key;  // std::nullopt: the key was created after the point
  uint64_t sequence = 0;       // the last of its events folded; 0 if none
};

// Returns the key as it was right after the last of its events before `at`
// (deleted = true if that was its deletion). A sequence inside one write
// that appended several of the key's events (a PATCH of several fields)
// shows that write partly applied, as the log holds it; a time never does,
// since one write's events share their recorded_at.
// Returns NotFound if the key has no events at all, Corruption/IOError as KeyHistory.
Result<KeyAsOfView> KeyAsOf(const Ledger& ledger, std::string_view key_id, LogPoint at);

}  // namespace keyledger
