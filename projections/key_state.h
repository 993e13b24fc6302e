// KeyState: the current state of workspaces, security groups, API keys and
// tokens, folded from lifecycle events, with a secret-hash index for
// authentication. The fold (Apply) is a plain function of the events: it never
// reads a clock or any other input.
//
// Thread safety: KeyState is thread-safe. Apply and the Find*/List* readers may
// run concurrently; readers see each event entirely or not at all.
#pragma once

#include <cassert>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ledger/event.h"
#include "ledger/kv_store.h"
#include "ledger/status.h"
#include "projections/security_rules.h"

namespace keyledger {

// From `at_us` on, the workspace is billed with plan `plan_id` ("" = none).
struct PlanAssignment {
  int64_t at_us = 0;
  std::string plan_id;
  bool operator==(const PlanAssignment&) const = default;
};

struct WorkspaceView {
  std::string id;
  std::string name;
  uint32_t tps_limit = 0;
  std::string billing_timezone;
  std::string price_plan_id;
  int64_t created_at_us = 0;
  int64_t updated_at_us = 0;
  uint64_t version = 0;  // stream version of "ws/<id>"
  std::vector<PlanAssignment> plan_history;  // oldest first
  bool operator==(const WorkspaceView&) const = default;
};

// One notification of one alarm transition on one channel that is neither
// delivered nor given up: an entry of the delivery outbox. The outbox is part
// of the alarm's folded state, so it survives restarts with the ledger.
struct PendingNotification {
  // "msg_<transition sequence>_<channel index>": the webhook-id, stable
  // across retries, so receivers can drop a repeat.
  std::string id;
  uint32_t channel_index = 0;
  AlarmChannel channel;  // as it was at the transition
  AlarmStateChanged transition;
  uint64_t transition_sequence = 0;
  int64_t created_at_us = 0;      // recorded_at of the transition
  uint32_t attempts = 0;          // failed attempts so far
  int64_t next_attempt_at_us = 0; // due from then on
  // The rule and its key as they were at the transition: every attempt's
  // message says these, whatever changed since.
  std::string alarm_name;
  AlarmMetric metric = AlarmMetric::kCalls;
  Comparator comparator = Comparator::kGreater;
  int64_t threshold_micros = 0;
  uint32_t period_seconds = 0;
  std::string key_name;
  bool operator==(const PendingNotification&) const = default;
};

// Returns true when a transition from `from` to `to` notifies: entering
// ALARM, and leaving it (to OK: "resolved"; to INSUFFICIENT_DATA).
bool TransitionNotifies(AlarmState from, AlarmState to);

// Returns the outbox id of the notification of the transition at `sequence`
// on channel `channel_index`.
std::string NotificationId(uint64_t sequence, uint32_t channel_index);

// An alarm rule on one key's usage, its state and its delivery outbox.
struct AlarmView {
  AlarmSpec spec;
  int64_t created_at_us = 0;
  int64_t updated_at_us = 0;
  uint64_t version = 0;  // stream version of "alarm/<id>"
  bool deleted = false;
  AlarmState state = AlarmState::kInsufficientData;
  int64_t state_changed_at_us = 0;  // 0: never evaluated
  std::string state_reason;
  int64_t value_micros = 0;         // the datapoint of the last transition
  std::vector<PendingNotification> outbox;  // oldest first; cleared on deletion
  bool operator==(const AlarmView&) const = default;
};

// A due notification with the rule it belongs to.
struct OutboxEntry {
  AlarmSpec alarm;
  PendingNotification notification;
};

// Where a published price-plan version is in the ledger.
struct PlanVersionRef {
  uint32_t version = 0;
  uint64_t sequence = 0;  // of its PricePlanPublished event
  int64_t published_at_us = 0;
  bool operator==(const PlanVersionRef&) const = default;
};

// Where an issued invoice is in the ledger.
struct InvoiceRef {
  std::string workspace_id;
  std::string month;  // YYYY-MM
  uint64_t number = 0;
  uint64_t sequence = 0;  // of its InvoiceIssued event
  bool operator==(const InvoiceRef&) const = default;
};

struct SecurityGroupView {
  std::string workspace_id;
  std::string id;
  std::string name;
  std::vector<std::string> ip_allow;
  std::vector<std::string> origin_allow;
  int64_t created_at_us = 0;
  int64_t updated_at_us = 0;
  uint64_t version = 0;  // stream version of "sg/<id>"
  bool deleted = false;
  bool operator==(const SecurityGroupView& o) const {
    return workspace_id == o.workspace_id && id == o.id && name == o.name &&
           ip_allow == o.ip_allow && origin_allow == o.origin_allow &&
           created_at_us == o.created_at_us && updated_at_us == o.updated_at_us &&
           version == o.version && deleted == o.deleted;
  }
  // Compiled from ip_allow/origin_allow; shared with in-flight readers.
  std::shared_ptr<const SecurityRules> rules;
};

struct KeyView {
  std::string workspace_id;
  std::string id;
  std::string name;
  std::string description;
  std::string security_group_id;
  bool logging = false;
  // recorded_at_us of the last KeyLoggingSwitched (0: never switched): a call
  // is logged only if it occurred at or after it, with logging on.
  int64_t logging_switched_at_us = 0;
  Hash secret_hash{};
  std::optional<Hash> old_secret_hash;  // the secret before the last rotation
  int64_t old_secret_valid_until_us = 0;
  int64_t created_at_us = 0;
  int64_t updated_at_us = 0;
  int64_t rotated_at_us = 0;  // 0: never rotated
  uint64_t version = 0;       // stream version of "key/<id>"
  bool deleted = false;
  bool operator==(const KeyView&) const = default;
};

struct TokenView {
  std::string workspace_id;
  std::string id;
  Hash token_hash{};
  int64_t created_at_us = 0;
  bool revoked = false;
  bool operator==(const TokenView&) const = default;
};

// What a secret hash identifies.
struct SecretMatch {
  std::string workspace_id;
  std::string key_id;
  bool is_old_secret = false;  // matched the pre-rotation secret
};

// The facts authorization needs about one key, gathered without copying.
// Valid only during the VisitSecret callback that receives it.
struct AuthView {
  const KeyView& key;
  const WorkspaceView& workspace;
  const SecurityRules* rules;  // null when the group's stored rules do not compile
  bool is_old_secret;
};

// Secret and token hashes are uniformly random, so any 8 bytes hash them.
struct HashOfHash {
  size_t operator()(const Hash& h) const {
    size_t v;
    std::memcpy(&v, h.data(), sizeof(v));
    return v;
  }
};

// Stream ids, one per aggregate.
std::string WorkspaceStream(std::string_view workspace_id);
std::string SecurityGroupStream(std::string_view group_id);
std::string KeyStream(std::string_view key_id);
std::string TokenStream(std::string_view token_id);
std::string CallStream(std::string_view key_id);
std::string PlanStream(std::string_view plan_id);
std::string InvoiceStream(std::string_view workspace_id);
std::string AlarmStream(std::string_view alarm_id);
constexpr char kOperatorStream[] = "operator";
constexpr char kUnattributedDenialStream[] = "denials/unattributed";

class KeyState {
 public:
  KeyState() = default;
  KeyState(const KeyState&) = delete;
  KeyState& operator=(const KeyState&) = delete;

  // Folds one event. Events that are not lifecycle events are skipped.
  // Returns Corruption when the event contradicts the state (an event for an
  // unknown key, a sequence not after the position): the log and the fold
  // disagree, so the projection must not go on.
  // REQUIRES: event.sequence > position().
  Status Apply(const Event& event);

  // The last sequence folded (0: none). Events skipped by a caller that
  // walked them (see AdvancePosition) count as folded.
  uint64_t position() const;

  // Moves the position forward to `sequence` without folding anything, for a
  // caller that walked every event in (position(), sequence] and applied
  // each lifecycle event among them (the others never change the state):
  // the persisted position then tells the next catch-up to start after them
  // instead of re-reading every API call since the last lifecycle event.
  // No-op when sequence <= position().
  void AdvancePosition(uint64_t sequence);

  // Each returns a copy, std::nullopt if unknown. Deleted keys and groups are
  // returned with deleted = true; callers decide what a tombstone means.
  std::optional<WorkspaceView> FindWorkspace(std::string_view id) const;
  std::optional<SecurityGroupView> FindGroup(std::string_view id) const;
  std::optional<KeyView> FindKey(std::string_view id) const;
  std::optional<TokenView> FindTokenByHash(const Hash& token_hash) const;
  std::optional<TokenView> FindToken(std::string_view id) const;
  std::optional<SecretMatch> FindSecret(const Hash& secret_hash) const;
  std::optional<Hash> operator_token_hash() const;

  // When `secret_hash` belongs to a live key, calls visit(const AuthView&)
  // under the read lock and returns true; returns false otherwise. The hot
  // authorization path: no allocation, no copy.
  // REQUIRES: `visit` does not call back into this KeyState.
  template <typename Visitor>
  bool VisitSecret(const Hash& secret_hash, Visitor&& visit) const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    auto it = secrets_.find(secret_hash);
    if (it == secrets_.end()) return false;
    const KeyView& key = *it->second.key;
    auto ws = workspaces_.find(key.workspace_id);
    auto group = groups_.find(key.security_group_id);
    assert(ws != workspaces_.end() && group != groups_.end());
    visit(AuthView{key, ws->second, group->second.rules.get(), it->second.is_old_secret});
    return true;
  }

  // Live (not deleted) keys of a workspace with id > after, in id order, at
  // most `limit`. Walks only that workspace's keys.
  std::vector<KeyView> ListKeys(std::string_view workspace_id, std::string_view after,
                                size_t limit) const;
  // Live security groups of a workspace in id order, id > after, at most `limit`.
  std::vector<SecurityGroupView> ListGroups(std::string_view workspace_id,
                                            std::string_view after, size_t limit) const;
  // Numbers of live keys, live security groups and active (not revoked)
  // tokens of a workspace, for the per-workspace limits. Constant time.
  size_t LiveKeyCount(std::string_view workspace_id) const;
  size_t LiveGroupCount(std::string_view workspace_id) const;
  size_t ActiveTokenCount(std::string_view workspace_id) const;
  // The workspace's tokens not revoked, in id order. Walks every token of
  // every workspace: for the operator's occasional listing, not a hot path.
  std::vector<TokenView> ListActiveTokens(std::string_view workspace_id) const;
  // Number of live keys using the group.
  size_t KeysUsingGroup(std::string_view group_id) const;
  // Whether some live security group admits browser `origin` (an empty
  // origin_allow admits every origin). For CORS preflights, which carry no
  // key: the request that follows is checked against its key's own group.
  // At most 128 hash lookups (see CandidateOriginPatterns), whatever the
  // number of groups.
  bool AnyGroupAllowsOrigin(std::string_view origin) const;

  // The alarm, deleted ones included; std::nullopt if unknown.
  std::optional<AlarmView> FindAlarm(std::string_view alarm_id) const;
  // The live alarms of a key, in id order.
  std::vector<AlarmView> ListAlarms(std::string_view key_id) const;
  // Every live alarm, in id order.
  std::vector<AlarmView> ListAllAlarms() const;
  // Outbox entries with next_attempt_at_us <= now_us that `wanted` (when
  // set) accepts, at most `max`, by alarm id then transition order.
  // `wanted` runs under the state's shared lock: it must not call back.
  std::vector<OutboxEntry> DueNotifications(
      int64_t now_us, size_t max,
      const std::function<bool(const PendingNotification&)>& wanted = nullptr) const;

  // Every workspace, in id order.
  std::vector<WorkspaceView> ListWorkspaces() const;
  // Workspaces with id > after, in id order, at most `limit`.
  std::vector<WorkspaceView> ListWorkspaces(std::string_view after, size_t limit) const;

  // The published versions of a plan, oldest first (empty if unknown).
  std::vector<PlanVersionRef> PlanVersions(std::string_view plan_id) const;
  // The workspace's plan at `at_us` and that plan's newest version published
  // before `at_us`: the billing rule "the version in force at the month's
  // end". std::nullopt when the workspace had no plan then.
  std::optional<std::pair<std::string, PlanVersionRef>> PlanInForce(std::string_view workspace_id,
                                                                    int64_t at_us) const;
  // The invoice of a workspace for a month (YYYY-MM), if issued.
  std::optional<InvoiceRef> FindInvoice(std::string_view workspace_id,
                                        std::string_view month) const;
  // The workspace's invoices, oldest month first.
  std::vector<InvoiceRef> ListInvoices(std::string_view workspace_id) const;
  // Invoices issued so far; the next invoice number is this plus one.
  uint64_t invoice_count() const;

  // Puts every record changed since the last MarkPersisted, plus the
  // position, into `batch` (column family `cf`). The caller writes the batch,
  // then calls MarkPersisted with the count returned: until then (a failed
  // write) the records stay changed, and the next Persist puts them again.
  size_t Persist(KvBatch& batch, int cf);
  // Forgets the first `changes` changes (a Persist's count): written.
  void MarkPersisted(size_t changes);

  // Loads records written by Persist. REQUIRES: a fresh KeyState.
  // Returns Corruption on an unreadable record.
  Status Load(const KvStore& store, int cf);

  // A digest of the whole state, for comparing a live projection with a
  // rebuild: of the records Persist would write for it (all of them, as if
  // every one were changed), in key order, the position left out. So it
  // equals DigestOfStore of a store that Persist brought to an equal state,
  // which reads no record back into a KeyState.
  Hash Digest() const;

  // What DigestOfStore read.
  struct StoredDigest {
    Hash digest{};          // as Digest() of the state the store holds
    uint64_t position = 0;  // the stored position (0 if none)
  };
  // Returns the digest of the records Persist wrote into column family `cf`
  // of `store` (every record but the position, as stored: a changed byte
  // changes it) and the stored position. Returns IOError if the scan fails,
  // Corruption if the position record is not 8 bytes.
  static Result<StoredDigest> DigestOfStore(const KvStore& store, int cf);

 private:
  Status ApplyLocked(const Event& event);
  Status ApplyKeyEvent(const Event& event, const std::string& key_id);
  Status ApplyAlarmTransition(const Event& event, const AlarmStateChanged& changed);
  Status ApplyNotificationAttempt(const Event& event, const NotificationAttempt& attempt,
                                  bool delivered);
  void IndexKey(const KeyView& key);
  void UnindexKey(const KeyView& key);
  void IndexGroup(const SecurityGroupView& group);
  void UnindexGroup(const SecurityGroupView& group);
  void IndexOutbox(const std::string& alarm_id);
  void MarkDirty(std::string record_key);
  // Returns the stored value of `record` (a record name MarkDirty takes).
  // REQUIRES: mu_ held; the record's entity exists.
  std::string RecordValue(const std::string& record) const;

  mutable std::shared_mutex mu_;
  uint64_t position_ = 0;
  std::map<std::string, WorkspaceView, std::less<>> workspaces_;
  std::map<std::string, SecurityGroupView, std::less<>> groups_;
  std::map<std::string, KeyView, std::less<>> keys_;
  std::map<std::string, TokenView, std::less<>> tokens_;
  std::optional<Hash> operator_token_hash_;
  std::map<std::string, std::vector<PlanVersionRef>, std::less<>> plans_;
  std::map<std::string, InvoiceRef, std::less<>> invoices_;  // key: workspace "/" month
  std::map<std::string, AlarmView, std::less<>> alarms_;
  // Derived indexes, rebuilt by Load.
  struct SecretEntry {
    const KeyView* key;  // into keys_; std::map nodes are stable and keys are never erased
    bool is_old_secret;
  };
  std::unordered_map<Hash, SecretEntry, HashOfHash> secrets_;
  std::unordered_map<Hash, std::string, HashOfHash> token_ids_by_hash_;
  std::unordered_map<std::string, size_t> keys_per_group_;
  // Ids of the live keys and groups of each workspace, of the live alarms
  // of each key, and the active token count of each workspace: listings and
  // limits look at their own workspace only.
  using IdSet = std::set<std::string, std::less<>>;
  std::map<std::string, IdSet, std::less<>> live_keys_by_workspace_;
  std::map<std::string, IdSet, std::less<>> live_groups_by_workspace_;
  std::map<std::string, IdSet, std::less<>> live_alarms_by_key_;
  std::unordered_map<std::string, size_t> active_tokens_per_workspace_;
  // Live groups per canonical origin pattern (one count per listing), and
  // live groups that restrict no origin: AnyGroupAllowsOrigin's index.
  std::unordered_map<std::string, size_t> origin_pattern_listings_;
  size_t origin_unrestricted_groups_ = 0;
  // Alarms with pending notifications, in id order: the delivery loop's
  // once-a-second look walks these, not every alarm ever created.
  IdSet alarms_with_outbox_;
  std::vector<std::string> dirty_;
};

}  // namespace keyledger
