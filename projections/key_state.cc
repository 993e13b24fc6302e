#include "projections/key_state.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cassert>
#include <mutex>
#include <type_traits>

#include "ledger/hash.h"
#include "projections/key_history.h"

namespace keyledger {
namespace {

using json = nlohmann::json;

constexpr char kPositionRecord[] = "position";
constexpr char kOperatorRecord[] = "operator";

std::string WorkspaceRecord(std::string_view id) { return "ws/" + std::string(id); }
std::string GroupRecord(std::string_view id) { return "sg/" + std::string(id); }
std::string KeyRecord(std::string_view id) { return "key/" + std::string(id); }
std::string TokenRecord(std::string_view id) { return "tok/" + std::string(id); }
std::string PlanRecord(std::string_view id) { return "plan/" + std::string(id); }
std::string InvoiceRecord(std::string_view key) { return "inv/" + std::string(key); }
std::string AlarmRecord(std::string_view id) { return "alarm/" + std::string(id); }

std::string HashHex(const Hash& h) { return ToHex(h); }
Hash HashFromHex(const std::string& hex) {
  Hash h{};
  bool ok = ParseHashHex(hex, &h);
  (void)ok;
  return h;
}

// Reads a stored position record. Returns Corruption unless it is 8 bytes.
Status ParsePositionRecord(std::string_view value, uint64_t* position) {
  if (value.size() != 8) return Status::Corruption("bad key-state position record");
  *position = DecodeBigEndian64(value.data());
  return Status::Ok();
}

// Hashes stored records (key, value), as KvStore::Scan returns them: in
// strictly increasing key order, the position record left out.
//
// Thread safety: not thread-safe.
class StoredRecordHasher {
 public:
  void Add(std::string_view key, std::string_view value) {
    assert(key != kPositionRecord && (records_ == 0 || key > last_key_));
    last_key_.assign(key);
    ++records_;
    hasher_.AddKeyValue(key, value);
  }
  Hash Finish() { return hasher_.Finish(); }

 private:
  RecordHasher hasher_;
  std::string last_key_;
  uint64_t records_ = 0;
};

}  // namespace

std::string WorkspaceStream(std::string_view id) { return "ws/" + std::string(id); }
std::string SecurityGroupStream(std::string_view id) { return "sg/" + std::string(id); }
std::string KeyStream(std::string_view id) { return "key/" + std::string(id); }
std::string TokenStream(std::string_view id) { return "tok/" + std::string(id); }
std::string CallStream(std::string_view key_id) { return "calls/" + std::string(key_id); }
std::string PlanStream(std::string_view id) { return "plan/" + std::string(id); }
std::string InvoiceStream(std::string_view workspace_id) { return "inv/" + std::string(workspace_id); }
std::string AlarmStream(std::string_view id) { return "alarm/" + std::string(id); }

bool TransitionNotifies(AlarmState from, AlarmState to) {
  return from != to && (from == AlarmState::kAlarm || to == AlarmState::kAlarm);
}

std::string NotificationId(uint64_t sequence, uint32_t channel_index) {
  return "msg_" + std::to_string(sequence) + "_" + std::to_string(channel_index);
}

namespace {

// The alarm an event changes, or nullptr for any other event.
const std::string* AlarmIdOf(const EventBody& body) {
  return std::visit(
      Overloaded{
          [](const AlarmCreated& b) -> const std::string* { return &b.alarm_id; },
          [](const AlarmChanged& b) -> const std::string* { return &b.alarm_id; },
          [](const AlarmDeleted& b) -> const std::string* { return &b.alarm_id; },
          [](const AlarmStateChanged& b) -> const std::string* { return &b.alarm_id; },
          [](const NotificationDelivered& b) -> const std::string* { return &b.alarm_id; },
          [](const NotificationFailed& b) -> const std::string* { return &b.alarm_id; },
          [](const auto&) -> const std::string* { return nullptr; },
      },
      body);
}

}  // namespace

Status KeyState::Apply(const Event& event) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  if (event.sequence <= position_) {
    return Status::Corruption("event " + std::to_string(event.sequence) +
                                  " is not after the projection position " +
                                  std::to_string(position_),
                              event.sequence);
  }
  KL_RETURN_IF_ERROR(ApplyLocked(event));
  if (const std::string* alarm_id = AlarmIdOf(event.body)) IndexOutbox(*alarm_id);
  position_ = event.sequence;
  return Status::Ok();
}

void KeyState::IndexOutbox(const std::string& alarm_id) {
  auto alarm = alarms_.find(alarm_id);
  if (alarm != alarms_.end() && !alarm->second.outbox.empty()) {
    alarms_with_outbox_.insert(alarm_id);
  } else {
    alarms_with_outbox_.erase(alarm_id);
  }
}

void KeyState::MarkDirty(std::string record_key) { dirty_.push_back(std::move(record_key)); }

namespace {

// Removes `id` from index[owner], and the owner's entry once it is empty.
void EraseId(std::map<std::string, std::set<std::string, std::less<>>, std::less<>>* index,
             std::string_view owner, std::string_view id) {
  auto ids = index->find(owner);
  assert(ids != index->end());
  auto it = ids->second.find(id);
  assert(it != ids->second.end());
  ids->second.erase(it);
  if (ids->second.empty()) index->erase(ids);
}

}  // namespace

Status KeyState::ApplyLocked(const Event& e) {
  const int64_t at = e.recorded_at_us;
  auto missing = [&](std::string_view what, std::string_view id) {
    return Status::Corruption("event refers to unknown " + std::string(what) + " " +
                                  std::string(id),
                              e.sequence);
  };
  auto compile_rules = [](SecurityGroupView& g) {
    auto rules = SecurityRules::Compile(g.ip_allow, g.origin_allow);
    // Groups are validated before their events are appended; a stored group
    // that no longer compiles gets rules that refuse everything.
    g.rules = rules.ok() ? std::make_shared<const SecurityRules>(std::move(rules).value())
                         : nullptr;
  };
  return std::visit(
      Overloaded{
          [&](const WorkspaceCreated& c) -> Status {
            WorkspaceView& w = workspaces_[c.workspace_id];
            w = WorkspaceView{c.workspace_id, c.name, c.tps_limit, c.billing_timezone,
                              c.price_plan_id, at, at, e.stream_version, {}};
            if (!c.price_plan_id.empty()) w.plan_history.push_back({at, c.price_plan_id});
            MarkDirty(WorkspaceRecord(c.workspace_id));
            return Status::Ok();
          },
          [&](const WorkspaceChanged& c) -> Status {
            auto it = workspaces_.find(c.workspace_id);
            if (it == workspaces_.end()) return missing("workspace", c.workspace_id);
            WorkspaceView& w = it->second;
            w.name = c.name;
            w.tps_limit = c.tps_limit;
            w.billing_timezone = c.billing_timezone;
            if (c.price_plan_id != w.price_plan_id) w.plan_history.push_back({at, c.price_plan_id});
            w.price_plan_id = c.price_plan_id;
            w.updated_at_us = at;
            w.version = e.stream_version;
            MarkDirty(WorkspaceRecord(c.workspace_id));
            return Status::Ok();
          },
          [&](const SecurityGroupCreated& c) -> Status {
            if (!workspaces_.count(c.workspace_id)) return missing("workspace", c.workspace_id);
            SecurityGroupView& g = groups_[c.group_id];
            UnindexGroup(g);  // no-op unless the id was live already
            g = SecurityGroupView{c.workspace_id, c.group_id, c.name, c.ip_allow,
                                  c.origin_allow, at, at, e.stream_version, false, nullptr};
            compile_rules(g);
            IndexGroup(g);
            MarkDirty(GroupRecord(c.group_id));
            return Status::Ok();
          },
          [&](const SecurityGroupChanged& c) -> Status {
            auto it = groups_.find(c.group_id);
            if (it == groups_.end() || it->second.deleted) return missing("group", c.group_id);
            SecurityGroupView& g = it->second;
            UnindexGroup(g);
            g.name = c.name;
            g.ip_allow = c.ip_allow;
            g.origin_allow = c.origin_allow;
            g.updated_at_us = at;
            g.version = e.stream_version;
            compile_rules(g);
            IndexGroup(g);
            MarkDirty(GroupRecord(c.group_id));
            return Status::Ok();
          },
          [&](const SecurityGroupDeleted& c) -> Status {
            auto it = groups_.find(c.group_id);
            if (it == groups_.end() || it->second.deleted) return missing("group", c.group_id);
            UnindexGroup(it->second);
            it->second.deleted = true;
            it->second.updated_at_us = at;
            it->second.version = e.stream_version;
            MarkDirty(GroupRecord(c.group_id));
            return Status::Ok();
          },
          [&](const KeyCreated& c) -> Status {
            if (!groups_.count(c.security_group_id)) return missing("group", c.security_group_id);
            return ApplyKeyEvent(e, c.key_id);
          },
          [&](const KeySecurityGroupChanged& c) -> Status {
            if (!groups_.count(c.security_group_id)) return missing("group", c.security_group_id);
            return ApplyKeyEvent(e, c.key_id);
          },
          [&](const KeyRenamed& c) -> Status { return ApplyKeyEvent(e, c.key_id); },
          [&](const KeyDescriptionChanged& c) -> Status { return ApplyKeyEvent(e, c.key_id); },
          [&](const KeyLoggingSwitched& c) -> Status { return ApplyKeyEvent(e, c.key_id); },
          [&](const KeyRotated& c) -> Status { return ApplyKeyEvent(e, c.key_id); },
          [&](const KeyDeleted& c) -> Status { return ApplyKeyEvent(e, c.key_id); },
          [&](const WorkspaceTokenCreated& c) -> Status {
            if (!workspaces_.count(c.workspace_id)) return missing("workspace", c.workspace_id);
            TokenView& token = tokens_[c.token_id];
            if (!token.id.empty() && !token.revoked) active_tokens_per_workspace_[token.workspace_id]--;
            token = TokenView{c.workspace_id, c.token_id, c.token_hash, at, false};
            token_ids_by_hash_[c.token_hash] = c.token_id;
            active_tokens_per_workspace_[c.workspace_id]++;
            MarkDirty(TokenRecord(c.token_id));
            return Status::Ok();
          },
          [&](const WorkspaceTokenRevoked& c) -> Status {
            auto it = tokens_.find(c.token_id);
            if (it == tokens_.end()) return missing("token", c.token_id);
            if (!it->second.revoked) active_tokens_per_workspace_[it->second.workspace_id]--;
            it->second.revoked = true;
            token_ids_by_hash_.erase(it->second.token_hash);
            MarkDirty(TokenRecord(c.token_id));
            return Status::Ok();
          },
          [&](const OperatorTokenSet& c) -> Status {
            operator_token_hash_ = c.token_hash;
            MarkDirty(kOperatorRecord);
            return Status::Ok();
          },
          [&](const PricePlanPublished& c) -> Status {
            auto& versions = plans_[c.plan_id];
            if (c.version != versions.size() + 1) {
              return Status::Corruption("plan " + c.plan_id + " version " +
                                            std::to_string(c.version) + " out of order",
                                        e.sequence);
            }
            versions.push_back(PlanVersionRef{c.version, e.sequence, at});
            MarkDirty(PlanRecord(c.plan_id));
            return Status::Ok();
          },
          [&](const InvoiceIssued& c) -> Status {
            if (c.invoice_number != invoices_.size() + 1) {
              return Status::Corruption("invoice number " + std::to_string(c.invoice_number) +
                                            " leaves a gap after " +
                                            std::to_string(invoices_.size()),
                                        e.sequence);
            }
            std::string key = c.workspace_id + "/" + c.month;
            if (invoices_.count(key)) {
              return Status::Corruption("a second invoice for " + key, e.sequence);
            }
            invoices_[key] = InvoiceRef{c.workspace_id, c.month, c.invoice_number, e.sequence};
            MarkDirty(InvoiceRecord(key));
            return Status::Ok();
          },
          [&](const AlarmCreated& c) -> Status {
            auto key = keys_.find(c.key_id);
            if (key == keys_.end() || key->second.deleted) return missing("key", c.key_id);
            if (alarms_.count(c.alarm_id)) {
              return Status::Corruption("a second create of alarm " + c.alarm_id, e.sequence);
            }
            AlarmView alarm;
            alarm.spec = c;
            alarm.created_at_us = alarm.updated_at_us = at;
            alarm.version = e.stream_version;
            alarms_[c.alarm_id] = std::move(alarm);
            live_alarms_by_key_[c.key_id].insert(c.alarm_id);
            MarkDirty(AlarmRecord(c.alarm_id));
            return Status::Ok();
          },
          [&](const AlarmChanged& c) -> Status {
            auto it = alarms_.find(c.alarm_id);
            if (it == alarms_.end() || it->second.deleted) return missing("alarm", c.alarm_id);
            if (c.key_id != it->second.spec.key_id) {  // the service never moves an alarm
              return Status::Corruption("alarm " + c.alarm_id + " changes its key", e.sequence);
            }
            // Queued notifications to a channel the rule no longer has (a
            // changed URL, secret or address) are not sent.
            std::erase_if(it->second.outbox, [&](const PendingNotification& n) {
              return std::find(c.channels.begin(), c.channels.end(), n.channel) == c.channels.end();
            });
            it->second.spec = c;
            it->second.updated_at_us = at;
            it->second.version = e.stream_version;
            MarkDirty(AlarmRecord(c.alarm_id));
            return Status::Ok();
          },
          [&](const AlarmDeleted& c) -> Status {
            auto it = alarms_.find(c.alarm_id);
            if (it == alarms_.end() || it->second.deleted) return missing("alarm", c.alarm_id);
            EraseId(&live_alarms_by_key_, it->second.spec.key_id, c.alarm_id);
            it->second.deleted = true;
            it->second.updated_at_us = at;
            it->second.version = e.stream_version;
            it->second.outbox.clear();  // a deleted rule notifies no one
            MarkDirty(AlarmRecord(c.alarm_id));
            return Status::Ok();
          },
          [&](const AlarmStateChanged& c) -> Status { return ApplyAlarmTransition(e, c); },
          [&](const NotificationDelivered& c) -> Status {
            return ApplyNotificationAttempt(e, c, /*delivered=*/true);
          },
          [&](const NotificationFailed& c) -> Status {
            return ApplyNotificationAttempt(e, c, /*delivered=*/false);
          },
          [&](const auto&) -> Status { return Status::Ok(); },  // not a lifecycle event
      },
      e.body);
}

// A transition is recorded only by the evaluator, with the alarm's stream
// version as expected version, so its `from` is the folded state.
Status KeyState::ApplyAlarmTransition(const Event& e, const AlarmStateChanged& c) {
  auto it = alarms_.find(c.alarm_id);
  if (it == alarms_.end() || it->second.deleted) {
    return Status::Corruption("transition of unknown alarm " + c.alarm_id, e.sequence);
  }
  AlarmView& alarm = it->second;
  if (c.from != alarm.state || c.to == c.from) {
    return Status::Corruption("alarm " + c.alarm_id + " transition does not start from its state",
                              e.sequence);
  }
  alarm.state = c.to;
  alarm.state_changed_at_us = e.recorded_at_us;
  alarm.state_reason = c.reason;
  alarm.value_micros = c.value_micros;
  alarm.version = e.stream_version;
  if (TransitionNotifies(c.from, c.to)) {
    // The newest transition supersedes any undelivered older one: a channel
    // must not get "triggered" (retried) after "resolved".
    alarm.outbox.clear();
    auto key = keys_.find(alarm.spec.key_id);
    for (uint32_t i = 0; i < alarm.spec.channels.size(); i++) {
      PendingNotification& n = alarm.outbox.emplace_back();
      n.id = NotificationId(e.sequence, i);
      n.channel_index = i;
      n.channel = alarm.spec.channels[i];
      n.transition = c;
      n.transition_sequence = e.sequence;
      n.created_at_us = e.recorded_at_us;
      n.next_attempt_at_us = e.recorded_at_us;
      n.alarm_name = alarm.spec.name;
      n.metric = alarm.spec.metric;
      n.comparator = alarm.spec.comparator;
      n.threshold_micros = alarm.spec.threshold_micros;
      n.period_seconds = alarm.spec.period_seconds;
      n.key_name = key != keys_.end() ? key->second.name : alarm.spec.key_id;
    }
  }
  MarkDirty(AlarmRecord(c.alarm_id));
  return Status::Ok();
}

// Attempts are recorded without an expected version (delivery runs beside
// rule changes), so one may follow the alarm's deletion, which emptied the
// outbox: such an attempt changes nothing but the stream version.
Status KeyState::ApplyNotificationAttempt(const Event& e, const NotificationAttempt& c,
                                          bool delivered) {
  auto it = alarms_.find(c.alarm_id);
  if (it == alarms_.end()) {
    return Status::Corruption("notification of unknown alarm " + c.alarm_id, e.sequence);
  }
  AlarmView& alarm = it->second;
  alarm.version = e.stream_version;
  auto entry = std::find_if(alarm.outbox.begin(), alarm.outbox.end(),
                            [&](const PendingNotification& n) { return n.id == c.notification_id; });
  if (entry != alarm.outbox.end()) {
    if (delivered || c.next_attempt_at_us == 0) {
      alarm.outbox.erase(entry);
    } else {
      entry->attempts = c.attempt;
      entry->next_attempt_at_us = c.next_attempt_at_us;
    }
  }
  MarkDirty(AlarmRecord(c.alarm_id));
  return Status::Ok();
}

// The key fold itself is FoldKeyEvent (shared with KeyHistory/KeyAsOf); here
// only the derived indexes follow the key from its old state to its new one.
Status KeyState::ApplyKeyEvent(const Event& e, const std::string& key_id) {
  auto it = keys_.find(key_id);
  std::optional<KeyView> key;
  if (it != keys_.end()) key = it->second;
  KL_RETURN_IF_ERROR(FoldKeyEvent(e, &key));
  assert(key.has_value());
  KeyView& stored = keys_[key_id];
  if (it != keys_.end()) UnindexKey(stored);
  stored = std::move(*key);
  IndexKey(stored);
  MarkDirty(KeyRecord(key_id));
  return Status::Ok();
}

void KeyState::IndexKey(const KeyView& k) {
  if (k.deleted) return;
  secrets_[k.secret_hash] = SecretEntry{&k, false};
  if (k.old_secret_hash) secrets_[*k.old_secret_hash] = SecretEntry{&k, true};
  keys_per_group_[k.security_group_id]++;
  live_keys_by_workspace_[k.workspace_id].insert(k.id);
}

void KeyState::UnindexKey(const KeyView& k) {
  if (k.deleted) return;
  secrets_.erase(k.secret_hash);
  if (k.old_secret_hash) secrets_.erase(*k.old_secret_hash);
  size_t& users = keys_per_group_[k.security_group_id];
  assert(users > 0);
  users--;
  EraseId(&live_keys_by_workspace_, k.workspace_id, k.id);
}

void KeyState::IndexGroup(const SecurityGroupView& g) {
  if (g.deleted || g.id.empty()) return;
  live_groups_by_workspace_[g.workspace_id].insert(g.id);
  if (!g.rules) return;  // rules that do not compile refuse every origin
  if (!g.rules->origin_restricted()) {
    origin_unrestricted_groups_++;
    return;
  }
  for (const std::string& pattern : g.rules->canonical_origin_allow()) {
    origin_pattern_listings_[pattern]++;
  }
}

void KeyState::UnindexGroup(const SecurityGroupView& g) {
  if (g.deleted || g.id.empty()) return;
  EraseId(&live_groups_by_workspace_, g.workspace_id, g.id);
  if (!g.rules) return;
  if (!g.rules->origin_restricted()) {
    assert(origin_unrestricted_groups_ > 0);
    origin_unrestricted_groups_--;
    return;
  }
  for (const std::string& pattern : g.rules->canonical_origin_allow()) {
    auto it = origin_pattern_listings_.find(pattern);
    assert(it != origin_pattern_listings_.end() && it->second > 0);
    if (--it->second == 0) origin_pattern_listings_.erase(it);
  }
}

uint64_t KeyState::position() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return position_;
}

void KeyState::AdvancePosition(uint64_t sequence) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  position_ = std::max(position_, sequence);
}

std::optional<WorkspaceView> KeyState::FindWorkspace(std::string_view id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = workspaces_.find(id);
  if (it == workspaces_.end()) return std::nullopt;
  return it->second;
}

std::optional<SecurityGroupView> KeyState::FindGroup(std::string_view id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return std::nullopt;
  return it->second;
}

std::optional<KeyView> KeyState::FindKey(std::string_view id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = keys_.find(id);
  if (it == keys_.end()) return std::nullopt;
  return it->second;
}

std::optional<TokenView> KeyState::FindTokenByHash(const Hash& token_hash) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto id = token_ids_by_hash_.find(token_hash);
  if (id == token_ids_by_hash_.end()) return std::nullopt;
  auto it = tokens_.find(id->second);
  assert(it != tokens_.end());
  return it->second;
}

std::optional<TokenView> KeyState::FindToken(std::string_view id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = tokens_.find(id);
  if (it == tokens_.end()) return std::nullopt;
  return it->second;
}

std::optional<SecretMatch> KeyState::FindSecret(const Hash& secret_hash) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = secrets_.find(secret_hash);
  if (it == secrets_.end()) return std::nullopt;
  return SecretMatch{it->second.key->workspace_id, it->second.key->id, it->second.is_old_secret};
}

std::optional<Hash> KeyState::operator_token_hash() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return operator_token_hash_;
}

namespace {

// The views named by the ids in `index[owner]` that sort after `after`, in id
// order, at most `limit`, looked up in `all`.
template <typename View>
std::vector<View> ListIndexed(
    const std::map<std::string, std::set<std::string, std::less<>>, std::less<>>& index,
    std::string_view owner, std::string_view after, size_t limit,
    const std::map<std::string, View, std::less<>>& all) {
  std::vector<View> out;
  auto ids = index.find(owner);
  if (ids == index.end()) return out;
  for (auto it = ids->second.upper_bound(after); it != ids->second.end() && out.size() < limit;
       ++it) {
    auto view = all.find(*it);
    assert(view != all.end());
    out.push_back(view->second);
  }
  return out;
}

template <typename Index>
size_t CountIndexed(const Index& index, std::string_view owner) {
  auto it = index.find(owner);
  return it == index.end() ? 0 : it->second.size();
}

}  // namespace

std::vector<KeyView> KeyState::ListKeys(std::string_view workspace_id, std::string_view after,
                                        size_t limit) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return ListIndexed(live_keys_by_workspace_, workspace_id, after, limit, keys_);
}

std::vector<SecurityGroupView> KeyState::ListGroups(std::string_view workspace_id,
                                                    std::string_view after, size_t limit) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return ListIndexed(live_groups_by_workspace_, workspace_id, after, limit, groups_);
}

size_t KeyState::LiveKeyCount(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return CountIndexed(live_keys_by_workspace_, workspace_id);
}

size_t KeyState::LiveGroupCount(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return CountIndexed(live_groups_by_workspace_, workspace_id);
}

std::vector<TokenView> KeyState::ListActiveTokens(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<TokenView> out;
  for (const auto& [id, token] : tokens_) {
    if (token.workspace_id == workspace_id && !token.revoked) out.push_back(token);
  }
  return out;
}

size_t KeyState::ActiveTokenCount(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = active_tokens_per_workspace_.find(std::string(workspace_id));
  return it == active_tokens_per_workspace_.end() ? 0 : it->second;
}

std::optional<AlarmView> KeyState::FindAlarm(std::string_view alarm_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = alarms_.find(alarm_id);
  if (it == alarms_.end()) return std::nullopt;
  return it->second;
}

std::vector<AlarmView> KeyState::ListAlarms(std::string_view key_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return ListIndexed(live_alarms_by_key_, key_id, "", alarms_.size(), alarms_);
}

std::vector<AlarmView> KeyState::ListAllAlarms() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<AlarmView> out;
  for (const auto& [id, a] : alarms_) {
    if (!a.deleted) out.push_back(a);
  }
  return out;
}

std::vector<OutboxEntry> KeyState::DueNotifications(
    int64_t now_us, size_t max,
    const std::function<bool(const PendingNotification&)>& wanted) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<OutboxEntry> out;
  for (const std::string& id : alarms_with_outbox_) {
    const AlarmView& a = alarms_.at(id);
    assert(!a.outbox.empty());
    for (const auto& n : a.outbox) {
      if (out.size() == max) return out;
      if (n.next_attempt_at_us <= now_us && (!wanted || wanted(n))) {
        out.push_back(OutboxEntry{a.spec, n});
      }
    }
  }
  return out;
}

std::vector<WorkspaceView> KeyState::ListWorkspaces() const {
  return ListWorkspaces("", workspaces_.max_size());
}

std::vector<WorkspaceView> KeyState::ListWorkspaces(std::string_view after, size_t limit) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<WorkspaceView> out;
  for (auto it = workspaces_.upper_bound(after); it != workspaces_.end() && out.size() < limit;
       ++it) {
    out.push_back(it->second);
  }
  return out;
}

std::vector<PlanVersionRef> KeyState::PlanVersions(std::string_view plan_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = plans_.find(plan_id);
  return it == plans_.end() ? std::vector<PlanVersionRef>{} : it->second;
}

std::optional<std::pair<std::string, PlanVersionRef>> KeyState::PlanInForce(
    std::string_view workspace_id, int64_t at_us) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto ws = workspaces_.find(workspace_id);
  if (ws == workspaces_.end()) return std::nullopt;
  std::string plan_id;
  for (const auto& a : ws->second.plan_history) {
    if (a.at_us < at_us) plan_id = a.plan_id;
  }
  if (plan_id.empty()) return std::nullopt;
  auto plan = plans_.find(plan_id);
  if (plan == plans_.end()) return std::nullopt;
  std::optional<PlanVersionRef> in_force;
  for (const auto& v : plan->second) {
    if (v.published_at_us < at_us) in_force = v;
  }
  if (!in_force) return std::nullopt;
  return std::make_pair(plan_id, *in_force);
}

std::optional<InvoiceRef> KeyState::FindInvoice(std::string_view workspace_id,
                                                std::string_view month) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = invoices_.find(std::string(workspace_id) + "/" + std::string(month));
  if (it == invoices_.end()) return std::nullopt;
  return it->second;
}

std::vector<InvoiceRef> KeyState::ListInvoices(std::string_view workspace_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<InvoiceRef> out;
  const std::string prefix = std::string(workspace_id) + "/";
  for (auto it = invoices_.lower_bound(prefix); it != invoices_.end() && it->first.starts_with(prefix);
       ++it) {
    out.push_back(it->second);
  }
  return out;
}

uint64_t KeyState::invoice_count() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return invoices_.size();
}

size_t KeyState::KeysUsingGroup(std::string_view group_id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = keys_per_group_.find(std::string(group_id));
  return it == keys_per_group_.end() ? 0 : it->second;
}

bool KeyState::AnyGroupAllowsOrigin(std::string_view origin) const {
  const std::vector<std::string> candidates = CandidateOriginPatterns(origin);
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (origin_unrestricted_groups_ > 0) return true;
  for (const std::string& pattern : candidates) {
    if (origin_pattern_listings_.count(pattern) > 0) return true;
  }
  return false;
}

namespace {

json PlanHistoryJson(const std::vector<PlanAssignment>& history) {
  json out = json::array();
  for (const auto& a : history) out.push_back({{"at_us", a.at_us}, {"plan_id", a.plan_id}});
  return out;
}

json ToJson(const WorkspaceView& w) {
  return {{"id", w.id}, {"name", w.name}, {"tps_limit", w.tps_limit},
          {"billing_timezone", w.billing_timezone}, {"price_plan_id", w.price_plan_id},
          {"created_at_us", w.created_at_us}, {"updated_at_us", w.updated_at_us},
          {"version", w.version}, {"plan_history", PlanHistoryJson(w.plan_history)}};
}
json ToJson(const std::vector<PlanVersionRef>& versions) {
  json out = json::array();
  for (const auto& v : versions) {
    out.push_back({{"version", v.version}, {"sequence", v.sequence},
                   {"published_at_us", v.published_at_us}});
  }
  return out;
}
json ToJson(const AlarmChannel& c) {
  if (const auto* email = std::get_if<EmailChannel>(&c)) return {{"type", "email"}, {"to", email->to}};
  const auto& hook = std::get<WebhookChannel>(c);
  return {{"type", "webhook"}, {"url", hook.url}, {"secret", hook.secret}};
}
AlarmChannel ChannelFromJson(const json& c) {
  if (c.at("type") == "email") return EmailChannel{c.at("to")};
  return WebhookChannel{c.at("url"), c.at("secret")};
}
json ToJson(const PendingNotification& n) {
  const AlarmStateChanged& t = n.transition;
  return {{"id", n.id}, {"channel_index", n.channel_index}, {"channel", ToJson(n.channel)},
          {"from", static_cast<int>(t.from)}, {"to", static_cast<int>(t.to)},
          {"value_micros", t.value_micros}, {"evaluated_at_us", t.evaluated_at_us},
          {"reason", t.reason}, {"transition_sequence", n.transition_sequence},
          {"created_at_us", n.created_at_us}, {"attempts", n.attempts},
          {"next_attempt_at_us", n.next_attempt_at_us}, {"alarm_name", n.alarm_name},
          {"metric", static_cast<int>(n.metric)}, {"comparator", static_cast<int>(n.comparator)},
          {"threshold_micros", n.threshold_micros}, {"period_seconds", n.period_seconds},
          {"key_name", n.key_name}};
}
PendingNotification PendingFromJson(const json& j, const AlarmSpec& s) {
  PendingNotification n;
  n.id = j.at("id");
  n.channel_index = j.at("channel_index");
  n.channel = ChannelFromJson(j.at("channel"));
  n.transition = AlarmStateChanged{s.workspace_id, s.key_id, s.alarm_id,
                                   static_cast<AlarmState>(j.at("from").get<int>()),
                                   static_cast<AlarmState>(j.at("to").get<int>()),
                                   j.at("value_micros"), j.at("evaluated_at_us"), j.at("reason")};
  n.transition_sequence = j.at("transition_sequence");
  n.created_at_us = j.at("created_at_us");
  n.attempts = j.at("attempts");
  n.next_attempt_at_us = j.at("next_attempt_at_us");
  n.alarm_name = j.at("alarm_name");
  n.metric = static_cast<AlarmMetric>(j.at("metric").get<int>());
  n.comparator = static_cast<Comparator>(j.at("comparator").get<int>());
  n.threshold_micros = j.at("threshold_micros");
  n.period_seconds = j.at("period_seconds");
  n.key_name = j.at("key_name");
  return n;
}
json ToJson(const AlarmView& a) {
  json channels = json::array();
  for (const auto& c : a.spec.channels) channels.push_back(ToJson(c));
  json outbox = json::array();
  for (const auto& n : a.outbox) outbox.push_back(ToJson(n));
  const AlarmSpec& s = a.spec;
  return {{"workspace_id", s.workspace_id}, {"key_id", s.key_id}, {"alarm_id", s.alarm_id},
          {"name", s.name}, {"metric", static_cast<int>(s.metric)},
          {"comparator", static_cast<int>(s.comparator)}, {"threshold_micros", s.threshold_micros},
          {"period_seconds", s.period_seconds}, {"evaluation_periods", s.evaluation_periods},
          {"datapoints_to_alarm", s.datapoints_to_alarm},
          {"missing_data", static_cast<int>(s.missing_data)}, {"channels", channels},
          {"created_at_us", a.created_at_us}, {"updated_at_us", a.updated_at_us},
          {"version", a.version}, {"deleted", a.deleted}, {"state", static_cast<int>(a.state)},
          {"state_changed_at_us", a.state_changed_at_us}, {"state_reason", a.state_reason},
          {"value_micros", a.value_micros}, {"outbox", outbox}};
}
json ToJson(const InvoiceRef& i) {
  return {{"workspace_id", i.workspace_id}, {"month", i.month}, {"number", i.number},
          {"sequence", i.sequence}};
}
json ToJson(const SecurityGroupView& g) {
  return {{"workspace_id", g.workspace_id}, {"id", g.id}, {"name", g.name},
          {"ip_allow", g.ip_allow}, {"origin_allow", g.origin_allow},
          {"created_at_us", g.created_at_us}, {"updated_at_us", g.updated_at_us},
          {"version", g.version}, {"deleted", g.deleted}};
}
json ToJson(const KeyView& k) {
  return {{"workspace_id", k.workspace_id}, {"id", k.id}, {"name", k.name},
          {"description", k.description}, {"security_group_id", k.security_group_id},
          {"logging", k.logging}, {"logging_switched_at_us", k.logging_switched_at_us},
          {"secret_hash", HashHex(k.secret_hash)},
          {"old_secret_hash", k.old_secret_hash ? HashHex(*k.old_secret_hash) : ""},
          {"old_secret_valid_until_us", k.old_secret_valid_until_us},
          {"created_at_us", k.created_at_us}, {"updated_at_us", k.updated_at_us},
          {"rotated_at_us", k.rotated_at_us}, {"version", k.version}, {"deleted", k.deleted}};
}
json ToJson(const TokenView& t) {
  return {{"workspace_id", t.workspace_id}, {"id", t.id}, {"token_hash", HashHex(t.token_hash)},
          {"created_at_us", t.created_at_us}, {"revoked", t.revoked}};
}

WorkspaceView WorkspaceFromJson(const json& j) {
  WorkspaceView w{j.at("id"), j.at("name"), j.at("tps_limit"), j.at("billing_timezone"),
                  j.at("price_plan_id"), j.at("created_at_us"), j.at("updated_at_us"),
                  j.at("version"), {}};
  for (const auto& a : j.at("plan_history")) w.plan_history.push_back({a.at("at_us"), a.at("plan_id")});
  return w;
}
std::vector<PlanVersionRef> PlanVersionsFromJson(const json& j) {
  std::vector<PlanVersionRef> out;
  for (const auto& v : j) out.push_back({v.at("version"), v.at("sequence"), v.at("published_at_us")});
  return out;
}
AlarmView AlarmFromJson(const json& j) {
  AlarmView a;
  AlarmSpec& s = a.spec;
  s.workspace_id = j.at("workspace_id");
  s.key_id = j.at("key_id");
  s.alarm_id = j.at("alarm_id");
  s.name = j.at("name");
  s.metric = static_cast<AlarmMetric>(j.at("metric").get<int>());
  s.comparator = static_cast<Comparator>(j.at("comparator").get<int>());
  s.threshold_micros = j.at("threshold_micros");
  s.period_seconds = j.at("period_seconds");
  s.evaluation_periods = j.at("evaluation_periods");
  s.datapoints_to_alarm = j.at("datapoints_to_alarm");
  s.missing_data = static_cast<MissingData>(j.at("missing_data").get<int>());
  for (const auto& c : j.at("channels")) s.channels.push_back(ChannelFromJson(c));
  a.created_at_us = j.at("created_at_us");
  a.updated_at_us = j.at("updated_at_us");
  a.version = j.at("version");
  a.deleted = j.at("deleted");
  a.state = static_cast<AlarmState>(j.at("state").get<int>());
  a.state_changed_at_us = j.at("state_changed_at_us");
  a.state_reason = j.at("state_reason");
  a.value_micros = j.at("value_micros");
  for (const auto& n : j.at("outbox")) a.outbox.push_back(PendingFromJson(n, s));
  return a;
}
InvoiceRef InvoiceFromJson(const json& j) {
  return InvoiceRef{j.at("workspace_id"), j.at("month"), j.at("number"), j.at("sequence")};
}
SecurityGroupView GroupFromJson(const json& j) {
  SecurityGroupView g{j.at("workspace_id"), j.at("id"), j.at("name"),
                      j.at("ip_allow").get<std::vector<std::string>>(),
                      j.at("origin_allow").get<std::vector<std::string>>(),
                      j.at("created_at_us"), j.at("updated_at_us"), j.at("version"),
                      j.at("deleted"), nullptr};
  return g;
}
KeyView KeyFromJson(const json& j) {
  KeyView k;
  k.workspace_id = j.at("workspace_id");
  k.id = j.at("id");
  k.name = j.at("name");
  k.description = j.at("description");
  k.security_group_id = j.at("security_group_id");
  k.logging = j.at("logging");
  k.logging_switched_at_us = j.at("logging_switched_at_us");
  k.secret_hash = HashFromHex(j.at("secret_hash"));
  std::string old = j.at("old_secret_hash");
  if (!old.empty()) k.old_secret_hash = HashFromHex(old);
  k.old_secret_valid_until_us = j.at("old_secret_valid_until_us");
  k.created_at_us = j.at("created_at_us");
  k.updated_at_us = j.at("updated_at_us");
  k.rotated_at_us = j.at("rotated_at_us");
  k.version = j.at("version");
  k.deleted = j.at("deleted");
  return k;
}
TokenView TokenFromJson(const json& j) {
  return TokenView{j.at("workspace_id"), j.at("id"), HashFromHex(j.at("token_hash")),
                   j.at("created_at_us"), j.at("revoked")};
}

json OperatorTokenJson(const Hash& token_hash) { return {{"token_hash", HashHex(token_hash)}}; }

}  // namespace

size_t KeyState::Persist(KvBatch& batch, int cf) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  for (const std::string& record : dirty_) batch.Put(cf, record, RecordValue(record));
  std::string position;
  AppendBigEndian64(&position, position_);
  batch.Put(cf, kPositionRecord, position);
  return dirty_.size();
}

void KeyState::MarkPersisted(size_t changes) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  assert(changes <= dirty_.size());
  dirty_.erase(dirty_.begin(), dirty_.begin() + static_cast<std::ptrdiff_t>(changes));
}

Status KeyState::Load(const KvStore& store, int cf) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  assert(position_ == 0 && keys_.empty());
  Status bad;
  Status scan = store.Scan(cf, "", "", [&](std::string_view key, std::string_view value) {
    if (key == kPositionRecord) {
      bad = ParsePositionRecord(value, &position_);
      return bad.ok();
    }
    json j = json::parse(value, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !(j.is_object() || j.is_array())) {
      bad = Status::Corruption("unreadable key-state record " + std::string(key));
      return false;
    }
    // Records are written by Persist only, and another format is caught by
    // the store's format key before this: a missing field means a damaged
    // record. Load returns Corruption and the store does not open (it is
    // not rebuilt silently: that would hide the damage from an audit).
    try {
      if (key == kOperatorRecord) {
        operator_token_hash_ = HashFromHex(j.at("token_hash"));
      } else if (key.starts_with("ws/")) {
        auto w = WorkspaceFromJson(j);
        workspaces_[w.id] = w;
      } else if (key.starts_with("sg/")) {
        auto g = GroupFromJson(j);
        auto rules = SecurityRules::Compile(g.ip_allow, g.origin_allow);
        if (rules.ok()) g.rules = std::make_shared<const SecurityRules>(std::move(rules).value());
        groups_[g.id] = std::move(g);
      } else if (key.starts_with("key/")) {
        auto k = KeyFromJson(j);
        keys_[k.id] = std::move(k);
      } else if (key.starts_with("tok/")) {
        auto t = TokenFromJson(j);
        tokens_[t.id] = t;
      } else if (key.starts_with("plan/")) {
        plans_[std::string(key.substr(5))] = PlanVersionsFromJson(j);
      } else if (key.starts_with("inv/")) {
        invoices_[std::string(key.substr(4))] = InvoiceFromJson(j);
      } else if (key.starts_with("alarm/")) {
        alarms_[std::string(key.substr(6))] = AlarmFromJson(j);
      }
    } catch (const json::exception& e) {
      bad = Status::Corruption("key-state record " + std::string(key) + ": " + e.what());
      return false;
    }
    return true;
  }, ScanKind::kBulk);
  KL_RETURN_IF_ERROR(scan);
  KL_RETURN_IF_ERROR(bad);
  // Rebuild the derived indexes.
  for (const auto& [id, k] : keys_) IndexKey(k);
  for (const auto& [id, g] : groups_) IndexGroup(g);
  for (const auto& [id, t] : tokens_) {
    if (t.revoked) continue;
    token_ids_by_hash_[t.token_hash] = t.id;
    active_tokens_per_workspace_[t.workspace_id]++;
  }
  for (const auto& [id, a] : alarms_) {
    if (!a.deleted) live_alarms_by_key_[a.spec.key_id].insert(id);
    if (!a.outbox.empty()) alarms_with_outbox_.insert(id);
  }
  return Status::Ok();
}

std::string KeyState::RecordValue(const std::string& record) const {
  std::string_view id(record);
  json value;
  if (record == kOperatorRecord) {
    value = OperatorTokenJson(*operator_token_hash_);
  } else if (record.starts_with("ws/")) {
    value = ToJson(workspaces_.at(std::string(id.substr(3))));
  } else if (record.starts_with("sg/")) {
    value = ToJson(groups_.at(std::string(id.substr(3))));
  } else if (record.starts_with("key/")) {
    value = ToJson(keys_.at(std::string(id.substr(4))));
  } else if (record.starts_with("plan/")) {
    value = ToJson(plans_.at(std::string(id.substr(5))));
  } else if (record.starts_with("inv/")) {
    value = ToJson(invoices_.at(std::string(id.substr(4))));
  } else if (record.starts_with("alarm/")) {
    value = ToJson(alarms_.at(std::string(id.substr(6))));
  } else {
    assert(record.starts_with("tok/"));
    value = ToJson(tokens_.at(std::string(id.substr(4))));
  }
  return value.dump();
}

Hash KeyState::Digest() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  // Every record Persist would write for this state (the values RecordValue
  // gives, made from the entry in hand rather than found again by name), in
  // the store's key order: "alarm/" < "inv/" < "key/" < "operator" <
  // "plan/" < "sg/" < "tok/" < "ws/", each map in id order
  // (StoredRecordHasher asserts it).
  StoredRecordHasher h;
  auto add = [&h](std::string_view record, const json& value) { h.Add(record, value.dump()); };
  for (const auto& [id, alarm] : alarms_) add(AlarmRecord(id), ToJson(alarm));
  for (const auto& [id, invoice] : invoices_) add(InvoiceRecord(id), ToJson(invoice));
  for (const auto& [id, key] : keys_) add(KeyRecord(id), ToJson(key));
  if (operator_token_hash_) add(kOperatorRecord, OperatorTokenJson(*operator_token_hash_));
  for (const auto& [id, plan] : plans_) add(PlanRecord(id), ToJson(plan));
  for (const auto& [id, group] : groups_) add(GroupRecord(id), ToJson(group));
  for (const auto& [id, token] : tokens_) add(TokenRecord(id), ToJson(token));
  for (const auto& [id, workspace] : workspaces_) add(WorkspaceRecord(id), ToJson(workspace));
  return h.Finish();
}

Result<KeyState::StoredDigest> KeyState::DigestOfStore(const KvStore& store, int cf) {
  StoredDigest out;
  StoredRecordHasher h;
  Status bad;
  Status scan = store.Scan(cf, "", "", [&](std::string_view key, std::string_view value) {
    if (key != kPositionRecord) {
      h.Add(key, value);
      return true;
    }
    bad = ParsePositionRecord(value, &out.position);
    return bad.ok();
  }, ScanKind::kBulk);
  KL_RETURN_IF_ERROR(scan);
  KL_RETURN_IF_ERROR(bad);
  out.digest = h.Finish();
  return out;
}

}  // namespace keyledger
