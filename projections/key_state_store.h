// KeyStateStore: keeps the KeyState projection durable in its own RocksDB
// (data/projections) and in step with the ledger.
//
// Invariant that makes ApplyAppended cheap: lifecycle events (everything but
// API calls and authorization denials) are appended only by the command path,
// one command at a time, and applied right after their append. So when a
// command's events land at sequences S.., every lifecycle event before S is
// already folded, and the call events in between can be skipped.
//
// Position. The persisted position is the last event walked, not the last
// lifecycle event folded: a catch-up (Open, CatchUp) advances it over the
// call events it skipped, so reopening a caught-up store reads no event, and
// one reopened after N more events reads those N once (by their headers).
//
// Thread safety: thread-safe; ApplyAppended and CatchUp serialize internally.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/kv_store.h"
#include "ledger/ledger.h"
#include "ledger/status.h"
#include "projections/key_state.h"

namespace keyledger {

class KeyStateStore {
 public:
  // Opens the projection store under `path`, loads the state, and catches up
  // with `ledger` (REQUIRES: non-null, outlives the store). A store written
  // by another format version, or folded from another log (its position is
  // beyond the ledger's head, or the ledger's event there has another hash:
  // the ledger lost its tail and was appended to again), is rebuilt from the log.
  // Returns IOError/Corruption from storage or from the fold.
  static Result<std::unique_ptr<KeyStateStore>> Open(const std::string& path, const Ledger* ledger);

  // Folds the events just appended at `sequences` (ascending) and persists.
  // After a failed fold or write, nothing is skipped or lost: the next call
  // first folds whatever lies between the position and `sequences`, and
  // writes every record the failed write left out.
  // Returns Corruption if the fold refuses an event, IOError on storage failure.
  Status ApplyAppended(const std::vector<uint64_t>& sequences);

  // Folds every lifecycle event after the position up to the ledger head,
  // advances the position to that head (call events included) and persists.
  // Safe at any time: a command's events it folds before ApplyAppended sees
  // them are then skipped there as already folded.
  // Returns Corruption if the fold refuses an event, IOError on storage failure.
  Status CatchUp();

  const KeyState& state() const { return *state_; }

 private:
  KeyStateStore() = default;
  // Writes the changed records, the position and the hash of the ledger's
  // event there, in one batch.
  Status Persist();
  // Returns whether the loaded state was folded from another log than
  // ledger_ (see Open).
  Result<bool> FoldedAnotherLog() const;
  // Deletes every record and the position hash, and stamps the format.
  Status Wipe();
  // Folds every event after the position up to `to`, advancing the position
  // there. REQUIRES: mu_ held.
  Status FoldTo(uint64_t to);

  const Ledger* ledger_ = nullptr;
  std::unique_ptr<KvStore> store_;
  std::unique_ptr<KeyState> state_;
  std::mutex mu_;  // serializes folding and persisting
  // A fold failed part-way (an event unread or refused): the next
  // ApplyAppended walks the log from the position instead of trusting the
  // invariant above. GUARDED_BY(mu_)
  bool refold_ = false;
};

// Folds every lifecycle event of `ledger` up to `until` (0: the head) into a
// fresh KeyState: the reference a live projection must equal. `progress`, when
// set, is called now and then with the last sequence walked (for progress bars).
Result<std::unique_ptr<KeyState>> RebuildKeyState(
    const Ledger& ledger, uint64_t until, const std::function<void(uint64_t)>& progress = {});

// Folds one stored event (hash ‖ body, as Ledger::ScanRaw gives it) into
// `state` as RebuildKeyState does: an ApiCallRecorded is skipped by its
// header alone; any other event is decoded and applied. With `decoded`, an
// event applied is also moved there (untouched otherwise). The position is
// not advanced (KeyState::AdvancePosition). Returns Corruption (with the
// sequence) if the event does not decode, or what KeyState::Apply returns.
Status FoldStoredEvent(uint64_t sequence, std::string_view stored, KeyState* state,
                       Event* decoded = nullptr);

// Reads the key-state projection persisted under `path` (a store that
// KeyStateStore::Open wrote) without writing to it, and returns its
// KeyState::DigestOfStore: the digest and position of the state the server
// last wrote (not caught up with the ledger). The store is opened as a
// RocksDB secondary instance, so the directory of a running server can be
// read without stopping it. For audits: compare the digest with the Digest()
// of RebuildKeyState(ledger, position); no record is parsed, so a changed
// byte of a stored record changes the digest.
// REQUIRES: `secondary_path` is an existing scratch directory, not shared with
// another open store; the caller removes it after the call.
// Returns FailedPrecondition if the store was never initialized or holds
// another format version (the server rebuilds it at its next start),
// IOError if it cannot be opened (e.g. `path` does not exist) or read,
// Corruption on a malformed position record.
Result<KeyState::StoredDigest> ReadKeyStateSnapshotDigest(const std::string& path,
                                                          const std::string& secondary_path);

}  // namespace keyledger
