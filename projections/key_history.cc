#include "projections/key_history.h"

#include <nlohmann/json.hpp>

#include <cassert>
#include <functional>
#include <variant>

#include "billing/calendar.h"

namespace keyledger {
namespace {

// `s` as a JSON string literal: quoted, escaped, invalid UTF-8 replaced.
std::string Quote(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Bool(bool b) { return b ? "true" : "false"; }

// The key's id named by a key lifecycle body; nullptr for any other body.
const std::string* BodyKeyId(const EventBody& body) {
  return std::visit(
      Overloaded{
          [](const KeyCreated& b) -> const std::string* { return &b.key_id; },
          [](const KeyRenamed& b) -> const std::string* { return &b.key_id; },
          [](const KeyDescriptionChanged& b) -> const std::string* { return &b.key_id; },
          [](const KeySecurityGroupChanged& b) -> const std::string* { return &b.key_id; },
          [](const KeyLoggingSwitched& b) -> const std::string* { return &b.key_id; },
          [](const KeyRotated& b) -> const std::string* { return &b.key_id; },
          [](const KeyDeleted& b) -> const std::string* { return &b.key_id; },
          [](const auto&) -> const std::string* { return nullptr; },
      },
      body);
}

// Applies a change to an existing, live key. Mirrors KeyState::ApplyLocked.
void ApplyToLiveKey(const Event& e, KeyView* k) {
  const int64_t at = e.recorded_at_us;
  std::visit(Overloaded{
                 [&](const KeyRenamed& c) { k->name = c.name; },
                 [&](const KeyDescriptionChanged& c) { k->description = c.description; },
                 [&](const KeySecurityGroupChanged& c) {
                   k->security_group_id = c.security_group_id;
                 },
                 [&](const KeyLoggingSwitched& c) {
                   k->logging = c.enabled;
                   k->logging_switched_at_us = at;
                 },
                 [&](const KeyRotated& c) {
                   // Only the secret just replaced survives, and only until its grace ends.
                   if (c.old_secret_valid_until_us > at) {
                     k->old_secret_hash = k->secret_hash;
                     k->old_secret_valid_until_us = c.old_secret_valid_until_us;
                   } else {
                     k->old_secret_hash.reset();
                     k->old_secret_valid_until_us = 0;
                   }
                   k->secret_hash = c.new_secret_hash;
                   k->rotated_at_us = at;
                 },
                 [&](const KeyDeleted&) { k->deleted = true; },
                 [&](const auto&) { assert(false && "not a change of an existing key"); },
             },
             e.body);
  k->updated_at_us = at;
  k->version = e.stream_version;
}

KeyView CreatedKey(const Event& e, const KeyCreated& c) {
  KeyView k;
  k.workspace_id = c.workspace_id;
  k.id = c.key_id;
  k.name = c.name;
  k.description = c.description;
  k.security_group_id = c.security_group_id;
  k.secret_hash = c.secret_hash;
  k.created_at_us = k.updated_at_us = e.recorded_at_us;
  k.version = e.stream_version;
  return k;
}

// The human description of event `e`, given the key just before it.
// REQUIRES: FoldKeyEvent accepted `e` with `before`.
std::vector<std::string> Describe(const std::optional<KeyView>& before, const Event& e) {
  return std::visit(
      Overloaded{
          [&](const KeyCreated& c) -> std::vector<std::string> {
            std::vector<std::string> out = {"created", "name " + Quote(c.name),
                                            "security_group " + c.security_group_id};
            if (!c.description.empty()) out.push_back("description " + Quote(c.description));
            return out;
          },
          [&](const KeyRenamed& c) -> std::vector<std::string> {
            return {"name " + Quote(before->name) + " -> " + Quote(c.name)};
          },
          [&](const KeyDescriptionChanged& c) -> std::vector<std::string> {
            return {"description " + Quote(before->description) + " -> " + Quote(c.description)};
          },
          [&](const KeySecurityGroupChanged& c) -> std::vector<std::string> {
            return {"security_group " + before->security_group_id + " -> " + c.security_group_id};
          },
          [&](const KeyLoggingSwitched& c) -> std::vector<std::string> {
            return {"logging " + Bool(before->logging) + " -> " + Bool(c.enabled)};
          },
          [&](const KeyRotated& c) -> std::vector<std::string> {
            if (c.old_secret_valid_until_us > e.recorded_at_us) {
              return {"secret rotated (old secret valid until " +
                      FormatRfc3339(c.old_secret_valid_until_us) + ")"};
            }
            return {"secret rotated (old secret revoked at once)"};
          },
          [&](const KeyDeleted&) -> std::vector<std::string> { return {"deleted"}; },
          [&](const auto&) -> std::vector<std::string> { return {}; },
      },
      e.body);
}

// Calls fn(event) for each event of the key's stream in order until fn
// returns false. Returns NotFound if the stream is empty.
Status ForEachKeyEvent(const Ledger& ledger, std::string_view key_id,
                       const std::function<bool(const Event&)>& fn) {
  const std::string stream = KeyStream(key_id);
  uint64_t next_version = 1;
  for (;;) {
    KL_ASSIGN_OR_RETURN(std::vector<Event> page,
                        ledger.ReadStream(stream, next_version, kKeyStreamPageEvents));
    if (page.empty() && next_version == 1) {
      return Status::NotFound("key " + std::string(key_id) + " has no events", "key_id");
    }
    for (const Event& e : page) {
      if (!fn(e)) return Status::Ok();
    }
    if (page.size() < kKeyStreamPageEvents) return Status::Ok();
    next_version = page.back().stream_version + 1;
  }
}

}  // namespace

Status FoldKeyEvent(const Event& e, std::optional<KeyView>* key) {
  assert(key != nullptr);
  const std::string* id = BodyKeyId(e.body);
  auto refuse = [&](const std::string& why) {
    return Status::Corruption("event " + std::to_string(e.sequence) + " in stream " +
                                  e.stream_id + ": " + why,
                              e.sequence);
  };
  if (id == nullptr) return refuse(std::string(EventTypeName(e.body)) + " is not a key event");
  if (key->has_value() && (*key)->id != *id) return refuse("names key " + *id);
  if (const auto* created = std::get_if<KeyCreated>(&e.body)) {
    if (key->has_value()) return refuse("creates a key that exists");
    *key = CreatedKey(e, *created);
    return Status::Ok();
  }
  if (!key->has_value()) return refuse("changes a key that was never created");
  if ((*key)->deleted) return refuse("changes a deleted key");
  ApplyToLiveKey(e, &key->value());
  return Status::Ok();
}

Result<KeyHistoryPage> KeyHistory(const Ledger& ledger, std::string_view key_id,
                                  uint64_t from_version, size_t limit) {
  assert(from_version >= 1 && limit >= 1);
  KeyHistoryPage page;
  std::optional<KeyView> key;
  Status fold;
  KL_RETURN_IF_ERROR(ForEachKeyEvent(ledger, key_id, [&](const Event& e) {
    if (e.stream_version >= from_version && page.changes.size() == limit) {
      page.next_version = e.stream_version;
      return false;
    }
    std::optional<KeyView> before = e.stream_version >= from_version ? key : std::nullopt;
    fold = FoldKeyEvent(e, &key);
    if (!fold.ok()) return false;
    if (e.stream_version >= from_version) {
      page.changes.push_back(KeyChange{e.sequence, e.recorded_at_us, e.actor,
                                       EventTypeName(e.body), Describe(before, e)});
    }
    return true;
  }));
  KL_RETURN_IF_ERROR(fold);
  return page;
}

Result<KeyAsOfView> KeyAsOf(const Ledger& ledger, std::string_view key_id, LogPoint at) {
  KeyAsOfView view;
  Status fold;
  KL_RETURN_IF_ERROR(ForEachKeyEvent(ledger, key_id, [&](const Event& e) {
    if (e.sequence > at.sequence_max || e.recorded_at_us > at.recorded_at_us_max) return false;
    fold = FoldKeyEvent(e, &view.key);
    view.sequence = e.sequence;
    return fold.ok();
  }));
  KL_RETURN_IF_ERROR(fold);
  return view;
}

}  // namespace keyledger
