#include "projections/key_state_store.h"

#include <cassert>

#include "ledger/codec.h"
#include "ledger/hash.h"

namespace keyledger {
namespace {

constexpr int kCfKeyStateRecords = 0;
constexpr int kCfProjectionMeta = 1;
constexpr char kFormatKey[] = "key_state_format";
// Bump when the record layout changes: the store is then rebuilt from the log.
// 5: a pending notification keeps its rule and key name as at the transition.
// 6: a key keeps when its logging was last switched.
// 7: a notifying transition, or a rule's changed channels, drop the outbox
//    entries they supersede.
constexpr char kFormatVersion[] = "key-state-7";
// The ledger hash of the event at the persisted position, written with it,
// so that Open can tell the ledger it folded from one that lost its tail and
// was appended to again. Absent in stores written before it: trusted once.
constexpr char kPositionHashKey[] = "key_state_position_hash";

// A rebuild reports its progress every this many events.
constexpr uint64_t kRebuildProgressEvents = 65'536;

// Folds lifecycle events in (after, to] into `state`, skipping call events by
// their header alone, then advances the position to `to` (the last event
// walked), so that a later catch-up does not walk the skipped events again.
Status FoldRange(const Ledger& ledger, uint64_t after, uint64_t to, KeyState* state,
                 const std::function<void(uint64_t)>& progress = {}) {
  Status fold;
  uint64_t walked = after;  // the last sequence walked
  KL_RETURN_IF_ERROR(ledger.ScanRaw(after + 1, to, [&](uint64_t seq, std::string_view value) {
    walked = seq;
    if (progress && seq % kRebuildProgressEvents == 0) progress(seq);
    fold = FoldStoredEvent(seq, value, state);
    return fold.ok();
  }));
  KL_RETURN_IF_ERROR(fold);
  state->AdvancePosition(walked);
  return Status::Ok();
}

}  // namespace

Status FoldStoredEvent(uint64_t sequence, std::string_view stored, KeyState* state,
                       Event* decoded) {
  Hash hash;
  std::string_view body;
  Status split = SplitStoredValue(stored, &hash, &body);
  if (!split.ok()) return Status::Corruption(split.message(), sequence);
  auto header = DecodeEnvelopeHeader(body);
  if (!header.ok()) return Status::Corruption(header.status().message(), sequence);
  if (header->body_kind == ApiCallRecordedBodyKind()) return Status::Ok();
  auto event = DecodeEventBody(body);
  if (!event.ok()) return Status::Corruption(event.status().message(), sequence);
  event->hash = hash;
  KL_RETURN_IF_ERROR(state->Apply(*event));
  if (decoded != nullptr) *decoded = std::move(*event);
  return Status::Ok();
}

Result<std::unique_ptr<KeyStateStore>> KeyStateStore::Open(const std::string& path,
                                                           const Ledger* ledger) {
  assert(ledger != nullptr);
  std::unique_ptr<KeyStateStore> self(new KeyStateStore());
  self->ledger_ = ledger;
  KvStoreOptions options;
  options.column_families = {{"key_state", false}, {"projection_meta", false}};
  options.block_cache_bytes = 16u << 20;
  KL_ASSIGN_OR_RETURN(self->store_, KvStore::Open(path, options));
  KL_ASSIGN_OR_RETURN(auto format, self->store_->Get(kCfProjectionMeta, kFormatKey));
  self->state_ = std::make_unique<KeyState>();
  bool rebuild = !format || *format != kFormatVersion;  // unknown or absent format
  if (!rebuild) {
    KL_RETURN_IF_ERROR(self->state_->Load(*self->store_, kCfKeyStateRecords));
    KL_ASSIGN_OR_RETURN(rebuild, self->FoldedAnotherLog());
  }
  if (rebuild) {
    KL_RETURN_IF_ERROR(self->Wipe());
    self->state_ = std::make_unique<KeyState>();
  }
  KL_RETURN_IF_ERROR(self->CatchUp());
  return self;
}

Result<bool> KeyStateStore::FoldedAnotherLog() const {
  const uint64_t position = state_->position();
  if (position > ledger_->head().sequence) return true;  // the ledger lost its tail
  if (position == 0) return false;
  KL_ASSIGN_OR_RETURN(auto stored, store_->Get(kCfProjectionMeta, kPositionHashKey));
  if (!stored) return false;
  KL_ASSIGN_OR_RETURN(Event event, ledger_->Read(position));
  return std::string_view(reinterpret_cast<const char*>(event.hash.data()), event.hash.size()) !=
         *stored;
}

Status KeyStateStore::Wipe() {
  KvBatch wipe(*store_);
  KL_RETURN_IF_ERROR(store_->Scan(kCfKeyStateRecords, "", "", [&](std::string_view key,
                                                                  std::string_view) {
    wipe.Delete(kCfKeyStateRecords, key);
    return true;
  }));
  wipe.Delete(kCfProjectionMeta, kPositionHashKey);
  wipe.Put(kCfProjectionMeta, kFormatKey, kFormatVersion);
  return store_->Write(wipe, Durability::kSync);
}

Status KeyStateStore::Persist() {
  KvBatch batch(*store_);
  const size_t changes = state_->Persist(batch, kCfKeyStateRecords);
  if (state_->position() > 0) {
    KL_ASSIGN_OR_RETURN(Event at_position, ledger_->Read(state_->position()));
    batch.Put(kCfProjectionMeta, kPositionHashKey,
              std::string_view(reinterpret_cast<const char*>(at_position.hash.data()),
                               at_position.hash.size()));
  }
  // Async is enough: the ledger is the durable truth, and the position travels
  // in the same batch as the state, so a lost tail is simply folded again.
  KL_RETURN_IF_ERROR(store_->Write(batch, Durability::kAsync));
  state_->MarkPersisted(changes);
  return Status::Ok();
}

Status KeyStateStore::ApplyAppended(const std::vector<uint64_t>& sequences) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sequences.empty() && refold_) {
    // A fold failed before: events between the position and these may never
    // have been folded, so the invariant above does not hold. Walk them.
    KL_RETURN_IF_ERROR(FoldTo(sequences.front() - 1));
  }
  for (uint64_t seq : sequences) {
    if (seq <= state_->position()) continue;  // an idempotent retry, folded before
    auto event = ledger_->Read(seq);
    Status applied = event.ok() ? state_->Apply(*event) : event.status();
    if (!applied.ok()) {
      refold_ = true;
      return applied;
    }
  }
  return Persist();
}

Status KeyStateStore::FoldTo(uint64_t to) {
  if (to > state_->position()) {
    Status folded = FoldRange(*ledger_, state_->position(), to, state_.get());
    refold_ = !folded.ok();
    KL_RETURN_IF_ERROR(folded);
  }
  refold_ = false;
  return Status::Ok();
}

Status KeyStateStore::CatchUp() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t head = ledger_->head().sequence;
  if (head <= state_->position()) return Status::Ok();
  KL_RETURN_IF_ERROR(FoldTo(head));
  return Persist();
}

Result<std::unique_ptr<KeyState>> RebuildKeyState(const Ledger& ledger, uint64_t until,
                                                  const std::function<void(uint64_t)>& progress) {
  auto state = std::make_unique<KeyState>();
  uint64_t to = until == 0 ? ledger.head().sequence : until;
  KL_RETURN_IF_ERROR(FoldRange(ledger, 0, to, state.get(), progress));
  return state;
}

Result<KeyState::StoredDigest> ReadKeyStateSnapshotDigest(const std::string& path,
                                                          const std::string& secondary_path) {
  KvStoreOptions options;
  options.mode = OpenMode::kSecondary;
  options.secondary_path = secondary_path;
  options.column_families = {{"key_state", false}, {"projection_meta", false}};  // as in Open
  options.block_cache_bytes = 16u << 20;
  KL_ASSIGN_OR_RETURN(auto store, KvStore::Open(path, options));
  KL_ASSIGN_OR_RETURN(auto format, store->Get(kCfProjectionMeta, kFormatKey));
  if (!format || *format != kFormatVersion) {
    return Status::FailedPrecondition(
        "the key-state store at " + path + " has format '" + format.value_or("") +
        "', not '" + kFormatVersion + "' (the server rebuilds it at its next start)");
  }
  return KeyState::DigestOfStore(*store, kCfKeyStateRecords);
}

}  // namespace keyledger
