// Property: for random sequences of lifecycle commands sent through the
// handler, the key-state projection equals a simple in-memory model, equals a
// rebuild from the log, and equals itself after a restart.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <map>

#include "ledger/hash.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

struct ModelKey {
  std::string workspace;
  std::string name;
  std::string description;
  std::string group;
  bool logging = false;
  std::string secret;
};

struct Model {
  std::vector<std::string> workspaces;
  std::map<std::string, std::string> groups;  // id -> workspace
  std::map<std::string, std::vector<std::string>> group_origins;  // id -> origin_allow
  std::map<std::string, ModelKey> keys;       // live keys
  std::map<std::string, uint32_t> tps;        // workspace -> limit
};

enum class Op { kWorkspace, kGroup, kKey, kRename, kDescribe, kLogging, kMove, kRotate, kDelete,
                kDeleteGroup, kTps, kGroupOrigins };

// origin_allow lists drawn from a few patterns, so that groups overlap.
std::vector<std::string> OriginList(size_t choice) {
  static const std::vector<std::string> kPatterns = {
      "https://*.example.com", "https://app.test", "http://[::1]:8080", "https://a.example.com"};
  std::vector<std::string> out;
  for (size_t i = 0; i < kPatterns.size(); ++i) {
    if (choice & (1u << i)) out.push_back(kPatterns[i]);
  }
  return out;
}

// Origins a preflight may name.
const std::vector<std::string> kProbeOrigins = {
    "https://a.example.com", "https://b.example.com", "https://example.com", "https://app.test",
    "http://[::1]:8080", "https://evil.test", "null", ""};

// Whether some live group of the model admits `origin`: the walk over every
// group that KeyState's index replaces.
bool ModelAllowsOrigin(const Model& m, const std::string& origin) {
  for (const auto& [id, origins] : m.group_origins) {
    auto rules = SecurityRules::Compile({}, origins);
    if (rules.ok() && rules->AllowsOrigin(origin)) return true;
  }
  return false;
}

void AssertListingsAndOriginsMatch(const KeyState& state, const Model& m) {
  for (const auto& ws : m.workspaces) {
    std::vector<std::string> keys, groups;
    for (const auto& [id, k] : m.keys) {
      if (k.workspace == ws) keys.push_back(id);
    }
    for (const auto& [id, group_ws] : m.groups) {
      if (group_ws == ws) groups.push_back(id);
    }
    std::vector<std::string> listed_keys, listed_groups;
    for (const KeyView& k : state.ListKeys(ws, "", 1000)) listed_keys.push_back(k.id);
    for (const SecurityGroupView& g : state.ListGroups(ws, "", 1000)) listed_groups.push_back(g.id);
    RC_ASSERT(listed_keys == keys);
    RC_ASSERT(listed_groups == groups);
    RC_ASSERT(state.LiveKeyCount(ws) == keys.size());
    RC_ASSERT(state.LiveGroupCount(ws) == groups.size());
    if (keys.size() > 1) {  // a page after the first key holds the rest
      auto rest = state.ListKeys(ws, keys[0], 1000);
      RC_ASSERT(rest.size() == keys.size() - 1);
      RC_ASSERT(rest[0].id == keys[1]);
    }
  }
  for (const std::string& origin : kProbeOrigins) {
    RC_ASSERT(state.AnyGroupAllowsOrigin(origin) == ModelAllowsOrigin(m, origin));
  }
}

template <typename T>
const T& Pick(const std::vector<T>& v, size_t choice) { return v[choice % v.size()]; }

RC_GTEST_PROP(KeyStateProperty, ProjectionEqualsModelAndRebuild, ()) {
  const auto ops = *rc::gen::container<std::vector<std::pair<int, size_t>>>(
      *rc::gen::inRange<size_t>(1, 60),
      rc::gen::pair(rc::gen::inRange(0, 12), rc::gen::inRange<size_t>(0, 1000)));
  ServiceHarness h(*rc::gen::arbitrary<uint32_t>());
  Model m;
  for (const auto& [op_index, choice] : ops) {
    const Op op = static_cast<Op>(op_index);
    std::vector<std::string> key_ids;
    for (const auto& [id, k] : m.keys) key_ids.push_back(id);
    std::vector<std::string> group_ids;
    for (const auto& [id, ws] : m.groups) group_ids.push_back(id);
    if (op == Op::kWorkspace || m.workspaces.empty()) {
      std::string ws = h.CreateWorkspace("ws" + std::to_string(choice));
      m.workspaces.push_back(ws);
      m.tps[ws] = 10;
      continue;
    }
    const std::string& ws = Pick(m.workspaces, choice);
    if (op == Op::kGroup || group_ids.empty()) {
      std::vector<std::string> origins = OriginList(choice);
      std::string id = h.CreateGroup(ws, json{{"name", "g"}, {"origin_allow", origins}});
      m.groups[id] = ws;
      m.group_origins[id] = origins;
      continue;
    }
    const std::string& group = Pick(group_ids, choice);
    if (op == Op::kGroupOrigins) {
      std::vector<std::string> origins = OriginList(choice / 7);
      RC_ASSERT(h.Call("PATCH", "/v1/workspaces/" + m.groups[group] + "/security-groups/" + group,
                       json{{"origin_allow", origins}}.dump())
                    .status == 200);
      m.group_origins[group] = origins;
      continue;
    }
    if (op == Op::kKey || key_ids.empty()) {
      auto [id, secret] = h.CreateKey(m.groups[group], group, "k" + std::to_string(choice));
      m.keys[id] = ModelKey{m.groups[group], "k" + std::to_string(choice), "", group, false, secret};
      continue;
    }
    const std::string& key = Pick(key_ids, choice);
    ModelKey& mk = m.keys[key];
    std::string path = "/v1/workspaces/" + mk.workspace + "/keys/" + key;
    switch (op) {
      case Op::kRename: {
        std::string name = "n" + std::to_string(choice);
        RC_ASSERT(h.Call("PATCH", path, json{{"name", name}}.dump()).status == 200);
        mk.name = name;
        break;
      }
      case Op::kDescribe: {
        std::string d = choice % 2 ? "" : "d" + std::to_string(choice);
        RC_ASSERT(h.Call("PATCH", path, json{{"description", d}}.dump()).status == 200);
        mk.description = d;
        break;
      }
      case Op::kLogging:
        RC_ASSERT(h.Call("PATCH", path, json{{"logging", !mk.logging}}.dump()).status == 200);
        mk.logging = !mk.logging;
        break;
      case Op::kMove: {
        int status = h.Call("PATCH", path, json{{"security_group", group}}.dump()).status;
        bool same_ws = m.groups[group] == mk.workspace;
        RC_ASSERT(status == (same_ws ? 200 : 404));
        if (same_ws) mk.group = group;
        break;
      }
      case Op::kRotate: {
        auto r = h.Call("POST", path + "/rotate", "{}");
        RC_ASSERT(r.status == 200);
        mk.secret = r.body["secret"];
        break;
      }
      case Op::kDelete:
        RC_ASSERT(h.Call("DELETE", path).status == 204);
        m.keys.erase(key);
        break;
      case Op::kDeleteGroup: {
        bool used = false;
        for (const auto& [id, k] : m.keys) used |= k.group == group;
        int status =
            h.Call("DELETE", "/v1/workspaces/" + m.groups[group] + "/security-groups/" + group)
                .status;
        RC_ASSERT(status == (used ? 409 : 204));
        if (!used) {
          m.group_origins.erase(group);
          m.groups.erase(group);
        }
        break;
      }
      case Op::kTps: {
        uint32_t limit = 1 + choice % 100;
        RC_ASSERT(h.Call("PATCH", "/v1/workspaces/" + ws, json{{"tps_limit", limit}}.dump())
                      .status == 200);
        m.tps[ws] = limit;
        break;
      }
      default:
        break;
    }
  }

  // The projection, read through the API, equals the model.
  const KeyState& state = h.key_state().state();
  for (const auto& ws : m.workspaces) {
    RC_ASSERT(state.FindWorkspace(ws)->tps_limit == m.tps[ws]);
    auto listed = h.Call("GET", "/v1/workspaces/" + ws + "/keys?limit=1000");
    size_t expected = 0;
    for (const auto& [id, k] : m.keys) expected += k.workspace == ws;
    RC_ASSERT(listed.body["keys"].size() == expected);
  }
  for (const auto& [id, mk] : m.keys) {
    auto r = h.Call("GET", "/v1/workspaces/" + mk.workspace + "/keys/" + id);
    RC_ASSERT(r.status == 200);
    RC_ASSERT(r.body["name"] == mk.name);
    RC_ASSERT(r.body["description"] == mk.description);
    RC_ASSERT(r.body["security_group"] == mk.group);
    RC_ASSERT(r.body["logging"] == mk.logging);
    auto match = state.FindSecret(HashBytes(mk.secret));
    RC_ASSERT(match.has_value());
    RC_ASSERT(match->key_id == id);
    RC_ASSERT(!match->is_old_secret);
  }
  AssertListingsAndOriginsMatch(state, m);
  // It equals a rebuild from the log, and a restart (load + catch up); so do
  // the derived indexes, which the digest does not cover.
  auto rebuilt = RebuildKeyState(h.ledger(), 0);
  RC_ASSERT(rebuilt.ok());
  Hash live = state.Digest();
  RC_ASSERT((*rebuilt)->Digest() == live);
  AssertListingsAndOriginsMatch(**rebuilt, m);
  h.Open();
  RC_ASSERT(h.key_state().state().Digest() == live);
  AssertListingsAndOriginsMatch(h.key_state().state(), m);
}

}  // namespace
}  // namespace keyledger
