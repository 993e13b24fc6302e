// Handler-level tests of the management API: every endpoint and error,
// without sockets.
#include <gtest/gtest.h>

#include "billing/calendar.h"
#include "ledger/hash.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

class ServiceTest : public ::testing::Test {
 protected:
  void ExpectError(const ServiceHarness::Reply& r, int status, const std::string& code,
                   const std::string& field = "") {
    EXPECT_EQ(r.status, status) << r.raw;
    ASSERT_TRUE(r.body.is_object()) << r.raw;
    EXPECT_EQ(r.body["error"]["code"], code) << r.raw;
    EXPECT_FALSE(r.body["error"]["message"].get<std::string>().empty());
    if (!field.empty()) {
      EXPECT_EQ(r.body["error"].value("field", ""), field) << r.raw;
    } else {
      EXPECT_FALSE(r.body["error"].contains("field")) << r.raw;
    }
  }
  // Asserts a refused request appended nothing.
  template <typename F>
  void ExpectNoEvent(F&& f) {
    uint64_t before = h.ledger().head().sequence;
    f();
    EXPECT_EQ(h.ledger().head().sequence, before);
  }
  ServiceHarness h;
};

TEST_F(ServiceTest, Healthz) {
  auto r = h.Call("GET", "/healthz", "", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body["status"], "ok");
}

TEST_F(ServiceTest, AuthenticationIsRequired) {
  ExpectNoEvent([&] {
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x"})", ""), 401, "unauthenticated");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x"})", "wrong-token"), 401,
                "unauthenticated");
  });
  HttpRequest basic;
  basic.method = "GET";
  basic.target = "/v1/workspaces/ws_x";
  basic.headers.emplace_back("authorization", "Basic abc");
  ExpectError(h.Send(basic), 401, "unauthenticated");
  HttpRequest lower_case_scheme = basic;
  lower_case_scheme.headers = {{"authorization", std::string("bearer ") + testing::kOperatorToken}};
  EXPECT_EQ(h.Send(lower_case_scheme).status, 404);  // authenticated; the workspace is unknown
}

TEST_F(ServiceTest, CreateWorkspaceDefaultsAndValidation) {
  auto r = h.Call("POST", "/v1/workspaces", R"({"name":"  Acme  "})");
  ASSERT_EQ(r.status, 201) << r.raw;
  EXPECT_EQ(r.body["name"], "Acme");
  EXPECT_EQ(r.body["tps_limit"], 10);
  EXPECT_EQ(r.body["billing_timezone"], "UTC");
  EXPECT_TRUE(r.body["id"].get<std::string>().starts_with("ws_"));
  auto got = h.Call("GET", "/v1/workspaces/" + r.body["id"].get<std::string>());
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.body, r.body);

  ExpectNoEvent([&] {
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x","billing_timezone":"Mars/Base"})"),
                400, "invalid_argument", "billing_timezone");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x","tps_limit":0})"), 400,
                "invalid_argument", "tps_limit");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x","tps_limit":"5"})"), 400,
                "invalid_argument", "tps_limit");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"tps_limit":5})"), 400, "invalid_argument",
                "name");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x","color":"red"})"), 400,
                "invalid_argument", "color");
    ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":)"), 400, "invalid_argument");
    ExpectError(h.Call("POST", "/v1/workspaces", R"(["name"])"), 400, "invalid_argument");
    ExpectError(h.Call("POST", "/v1/workspaces", "{\"name\":\"a\\u0007b\"}"), 400,
                "invalid_argument", "name");
  });
  auto seoul = h.Call("POST", "/v1/workspaces",
                      R"({"name":"Seoul","tps_limit":3,"billing_timezone":"Asia/Seoul"})");
  EXPECT_EQ(seoul.status, 201);
  EXPECT_EQ(seoul.body["tps_limit"], 3);
  EXPECT_EQ(seoul.body["billing_timezone"], "Asia/Seoul");
}

TEST_F(ServiceTest, OnlyTheOperatorChangesTpsLimit) {
  std::string ws = h.CreateWorkspace();
  auto token = h.Call("POST", "/v1/workspaces/" + ws + "/tokens");
  ASSERT_EQ(token.status, 201) << token.raw;
  std::string t = token.body["token"];
  EXPECT_TRUE(t.starts_with("klw_"));
  ExpectNoEvent([&] {
    ExpectError(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"tps_limit":100})", t), 403,
                "permission_denied", "tps_limit");
  });
  auto renamed = h.Call("PATCH", "/v1/workspaces/" + ws, R"({"name":"New name"})", t);
  EXPECT_EQ(renamed.status, 200);
  EXPECT_EQ(renamed.body["name"], "New name");
  auto raised = h.Call("PATCH", "/v1/workspaces/" + ws, R"({"tps_limit":100})");
  EXPECT_EQ(raised.status, 200);
  EXPECT_EQ(raised.body["tps_limit"], 100);
  // A workspace token cannot create workspaces or tokens.
  ExpectError(h.Call("POST", "/v1/workspaces", R"({"name":"x"})", t), 403, "permission_denied");
  ExpectError(h.Call("POST", "/v1/workspaces/" + ws + "/tokens", "", t), 403, "permission_denied");
}

TEST_F(ServiceTest, WorkspaceTokenSeesOnlyItsWorkspace) {
  std::string a = h.CreateWorkspace("A");
  std::string b = h.CreateWorkspace("B");
  std::string group_b = h.CreateGroup(b);
  auto [key_b, secret_b] = h.CreateKey(b, group_b);
  std::string t = h.Call("POST", "/v1/workspaces/" + a + "/tokens").body["token"];
  // Another workspace looks exactly like a missing one.
  auto foreign = h.Call("GET", "/v1/workspaces/" + b, "", t);
  auto missing = h.Call("GET", "/v1/workspaces/ws_doesnotexist", "", t);
  EXPECT_EQ(foreign.status, 404);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(foreign.body["error"]["code"], missing.body["error"]["code"]);
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + b + "/keys/" + key_b, "", t).status, 404);
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + b + "/keys/" + key_b, "", t).status, 404);
  // Key ids are global, but a key is only found under its own workspace.
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + a + "/keys/" + key_b).status, 404);
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + b + "/keys/" + key_b).status, 200);
}

TEST_F(ServiceTest, RevokedTokenStopsWorking) {
  std::string ws = h.CreateWorkspace();
  auto token = h.Call("POST", "/v1/workspaces/" + ws + "/tokens");
  std::string t = token.body["token"];
  std::string id = token.body["id"];
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws, "", t).status, 200);
  // The operator lists the active tokens (never their secrets); a token does not.
  std::string other_ws = h.CreateWorkspace("Other");
  ASSERT_EQ(h.Call("POST", "/v1/workspaces/" + other_ws + "/tokens").status, 201);
  auto listed = h.Call("GET", "/v1/workspaces/" + ws + "/tokens");
  ASSERT_EQ(listed.status, 200) << listed.raw;
  ASSERT_EQ(listed.body["tokens"].size(), 1u) << listed.raw;
  EXPECT_EQ(listed.body["tokens"][0]["id"], id);
  EXPECT_EQ(listed.raw.find(t), std::string::npos) << "a token's secret is shown once";
  ExpectError(h.Call("GET", "/v1/workspaces/" + ws + "/tokens", "", t), 403, "permission_denied");
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws + "/tokens/" + id).status, 204);
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/tokens").body["tokens"].size(), 0u);
  ExpectError(h.Call("GET", "/v1/workspaces/" + ws, "", t), 401, "unauthenticated");
  ExpectError(h.Call("DELETE", "/v1/workspaces/" + ws + "/tokens/" + id), 404, "not_found",
              "token");
}

// Per-workspace limits on live keys, live groups and active tokens: one more
// is a 409 that appends nothing; deleting one makes room; other workspaces
// are not affected.
TEST(ServiceLimitsTest, AWorkspaceHoldsAtMostItsLimitOfKeysGroupsAndTokens) {
  ServiceOptions options;
  options.keys_per_workspace_max = 2;
  options.security_groups_per_workspace_max = 2;
  options.tokens_per_workspace_max = 1;
  ServiceHarness h(3, options);
  const std::string ws = h.CreateWorkspace();
  const std::string other = h.CreateWorkspace();
  const std::string group = h.CreateGroup(ws);
  const std::string spare = h.CreateGroup(ws);
  auto refused = [&](const std::string& path, const std::string& body) {
    const uint64_t head = h.ledger().head().sequence;
    auto r = h.Call("POST", path, body);
    EXPECT_EQ(r.status, 409) << r.raw;
    EXPECT_EQ(r.body["error"]["code"], "failed_precondition") << r.raw;
    EXPECT_EQ(h.ledger().head().sequence, head);
  };
  const std::string keys = "/v1/workspaces/" + ws + "/keys";
  const std::string key_body = json{{"name", "k"}, {"security_group", group}}.dump();
  auto [first, first_secret] = h.CreateKey(ws, group);
  h.CreateKey(ws, group);
  refused(keys, key_body);
  refused("/v1/workspaces/" + ws + "/security-groups", R"({"name":"third"})");
  const std::string token = h.Call("POST", "/v1/workspaces/" + ws + "/tokens").body["id"];
  refused("/v1/workspaces/" + ws + "/tokens", "");
  // Other workspaces have their own room.
  h.CreateKey(other, h.CreateGroup(other));
  EXPECT_EQ(h.Call("POST", "/v1/workspaces/" + other + "/tokens").status, 201);
  // Deleting (or revoking) one makes room for one.
  EXPECT_EQ(h.Call("DELETE", keys + "/" + first).status, 204);
  EXPECT_EQ(h.Call("POST", keys, key_body).status, 201);
  refused(keys, key_body);
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws + "/security-groups/" + spare).status, 204);
  EXPECT_EQ(h.Call("POST", "/v1/workspaces/" + ws + "/security-groups", R"({"name":"third"})")
                .status,
            201);
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws + "/tokens/" + token).status, 204);
  EXPECT_EQ(h.Call("POST", "/v1/workspaces/" + ws + "/tokens").status, 201);
  // The counts survive a restart (rebuilt from the stored records).
  h.Open();
  refused(keys, key_body);
  refused("/v1/workspaces/" + ws + "/tokens", "");
}

TEST_F(ServiceTest, SecurityGroupsLifecycle) {
  std::string ws = h.CreateWorkspace();
  auto created = h.Call("POST", "/v1/workspaces/" + ws + "/security-groups",
                        R"({"name":"office","ip_allow":["10.0.0.0/8","2001:DB8::/32"],
                            "origin_allow":["HTTPS://*.Example.com"]})");
  ASSERT_EQ(created.status, 201) << created.raw;
  EXPECT_EQ(created.body["ip_allow"], json({"10.0.0.0/8", "2001:db8::/32"}));
  EXPECT_EQ(created.body["origin_allow"], json({"https://*.example.com"}));
  std::string id = created.body["id"];
  ExpectNoEvent([&] {
    ExpectError(h.Call("POST", "/v1/workspaces/" + ws + "/security-groups",
                       R"({"name":"bad","ip_allow":["10.0.0.0/8","300.1.1.1/8"]})"),
                400, "invalid_argument", "ip_allow[1]");
    ExpectError(h.Call("POST", "/v1/workspaces/" + ws + "/security-groups",
                       R"({"name":"bad","origin_allow":["ftp://x.com"]})"),
                400, "invalid_argument", "origin_allow[0]");
    ExpectError(h.Call("POST", "/v1/workspaces/" + ws + "/security-groups",
                       R"({"name":"bad","ip_allow":"10.0.0.0/8"})"),
                400, "invalid_argument", "ip_allow");
    ExpectError(h.Call("PATCH", "/v1/workspaces/" + ws + "/security-groups/" + id,
                       R"({"ip_allow":["10.0.0.1/8"]})"),
                400, "invalid_argument", "ip_allow[0]");
  });
  auto patched = h.Call("PATCH", "/v1/workspaces/" + ws + "/security-groups/" + id,
                        R"({"ip_allow":[]})");
  EXPECT_EQ(patched.status, 200);
  EXPECT_EQ(patched.body["ip_allow"], json::array());
  EXPECT_EQ(patched.body["origin_allow"], json({"https://*.example.com"}));
  auto list = h.Call("GET", "/v1/workspaces/" + ws + "/security-groups");
  EXPECT_EQ(list.body["security_groups"].size(), 1u);

  auto [key, secret] = h.CreateKey(ws, id);
  ExpectNoEvent([&] {
    ExpectError(h.Call("DELETE", "/v1/workspaces/" + ws + "/security-groups/" + id), 409,
                "failed_precondition", "security_group");
  });
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws + "/keys/" + key).status, 204);
  EXPECT_EQ(h.Call("DELETE", "/v1/workspaces/" + ws + "/security-groups/" + id).status, 204);
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/security-groups/" + id).status, 404);
}

TEST_F(ServiceTest, CreateKeyValidation) {
  std::string ws = h.CreateWorkspace();
  std::string group = h.CreateGroup(ws);
  std::string other_ws = h.CreateWorkspace("other");
  std::string other_group = h.CreateGroup(other_ws);
  std::string keys = "/v1/workspaces/" + ws + "/keys";
  ExpectNoEvent([&] {
    ExpectError(h.Call("POST", keys, json{{"security_group", group}}.dump()), 400,
                "invalid_argument", "name");
    ExpectError(h.Call("POST", keys, json{{"name", "   "}, {"security_group", group}}.dump()), 400,
                "invalid_argument", "name");
    ExpectError(h.Call("POST", keys, json{{"name", std::string(101, 'a')},
                                          {"security_group", group}}.dump()),
                400, "invalid_argument", "name");
    ExpectError(h.Call("POST", keys, json{{"name", "ok"}, {"description", std::string(501, 'd')},
                                          {"security_group", group}}.dump()),
                400, "invalid_argument", "description");
    ExpectError(h.Call("POST", keys, json{{"name", "ok"}}.dump()), 400, "invalid_argument",
                "security_group");
    ExpectError(h.Call("POST", keys, json{{"name", "ok"}, {"security_group", "sg_none"}}.dump()),
                404, "not_found", "security_group");
    ExpectError(h.Call("POST", keys, json{{"name", "ok"}, {"security_group", other_group}}.dump()),
                404, "not_found", "security_group");
    ExpectError(h.Call("POST", keys, json{{"name", 5}, {"security_group", group}}.dump()), 400,
                "invalid_argument", "name");
  });
  // 100 characters of multi-byte text is fine.
  std::string hangul;
  for (int i = 0; i < 100; i++) hangul += "\xea\xb0\x80";  // U+AC00
  auto ok = h.Call("POST", keys, json{{"name", hangul}, {"security_group", group}}.dump());
  EXPECT_EQ(ok.status, 201) << ok.raw;
}

TEST_F(ServiceTest, KeyLifecycle) {
  std::string ws = h.CreateWorkspace();
  std::string group = h.CreateGroup(ws);
  std::string group2 = h.CreateGroup(ws, {{"name", "second"}});
  auto created = h.Call("POST", "/v1/workspaces/" + ws + "/keys",
                        json{{"name", "render"}, {"description", "made by ana"},
                             {"security_group", group}}.dump());
  ASSERT_EQ(created.status, 201) << created.raw;
  std::string id = created.body["id"];
  std::string secret = created.body["secret"];
  EXPECT_TRUE(secret.starts_with("klk_"));
  EXPECT_GE(secret.size(), 4u + 32u);  // 160 bits in base32
  EXPECT_EQ(created.body["logging"], false);
  EXPECT_EQ(created.body["description"], "made by ana");
  std::string path = "/v1/workspaces/" + ws + "/keys/" + id;

  auto got = h.Call("GET", path);
  EXPECT_EQ(got.status, 200);
  EXPECT_FALSE(got.body.contains("secret"));
  EXPECT_EQ(got.raw.find(secret), std::string::npos);

  auto patched = h.Call("PATCH", path,
                        json{{"name", "renamed"}, {"logging", true}, {"security_group", group2},
                             {"description", ""}}.dump());
  ASSERT_EQ(patched.status, 200) << patched.raw;
  EXPECT_EQ(patched.body["name"], "renamed");
  EXPECT_EQ(patched.body["logging"], true);
  EXPECT_EQ(patched.body["security_group"], group2);
  EXPECT_EQ(patched.body["description"], "");

  ExpectNoEvent([&] {
    EXPECT_EQ(h.Call("PATCH", path, R"({"name":"renamed"})").status, 200);  // no change, no event
    ExpectError(h.Call("PATCH", path, R"({"logging":"yes"})"), 400, "invalid_argument", "logging");
    ExpectError(h.Call("PATCH", path, R"({"name":"ok","security_group":"sg_x"})"), 404,
                "not_found", "security_group");
    ExpectError(h.Call("POST", path + "/rotate", R"({"grace_seconds":-1})"), 400,
                "invalid_argument", "grace_seconds");
  });

  auto rotated = h.Call("POST", path + "/rotate", R"({"grace_seconds":60})");
  ASSERT_EQ(rotated.status, 200) << rotated.raw;
  EXPECT_NE(rotated.body["secret"], secret);
  EXPECT_TRUE(rotated.body.contains("old_secret_valid_until"));

  auto list = h.Call("GET", "/v1/workspaces/" + ws + "/keys");
  ASSERT_EQ(list.body["keys"].size(), 1u);
  EXPECT_EQ(list.raw.find("secret\""), std::string::npos);

  EXPECT_EQ(h.Call("DELETE", path).status, 204);
  ExpectError(h.Call("GET", path), 404, "not_found", "key");
  ExpectError(h.Call("PATCH", path, R"({"name":"x"})"), 404, "not_found", "key");
  ExpectError(h.Call("DELETE", path), 404, "not_found", "key");
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/keys").body["keys"].size(), 0u);
}

TEST_F(ServiceTest, SecretsAreStoredOnlyAsHashes) {
  std::string ws = h.CreateWorkspace();
  std::string group = h.CreateGroup(ws);
  auto [id, secret] = h.CreateKey(ws, group);
  auto events = h.ledger().ReadRange(1, 1000);
  ASSERT_TRUE(events.ok());
  bool found_hash = false;
  for (const auto& e : *events) {
    if (auto* k = std::get_if<KeyCreated>(&e.body)) {
      EXPECT_EQ(k->secret_hash, HashBytes(secret));
      found_hash = true;
    }
  }
  EXPECT_TRUE(found_hash);
  auto match = h.key_state().state().FindSecret(HashBytes(secret));
  ASSERT_TRUE(match.has_value());
  EXPECT_EQ(match->key_id, id);
}

TEST_F(ServiceTest, KeyListPaginates) {
  std::string ws = h.CreateWorkspace();
  std::string group = h.CreateGroup(ws);
  std::set<std::string> ids;
  for (int i = 0; i < 7; i++) ids.insert(h.CreateKey(ws, group, testing::Numbered("k", i)).first);
  std::set<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 10; page++) {
    auto r = h.Call("GET", "/v1/workspaces/" + ws + "/keys?limit=3" +
                               (cursor.empty() ? "" : "&cursor=" + cursor));
    ASSERT_EQ(r.status, 200);
    for (const auto& k : r.body["keys"]) seen.insert(k["id"].get<std::string>());
    if (r.body["next_cursor"].is_null()) break;
    cursor = r.body["next_cursor"];
  }
  EXPECT_EQ(seen, ids);
  ExpectError(h.Call("GET", "/v1/workspaces/" + ws + "/keys?limit=0"), 400, "invalid_argument",
              "limit");
  ExpectError(h.Call("GET", "/v1/workspaces/" + ws + "/keys?limit=100000"), 400,
              "invalid_argument", "limit");
}

TEST_F(ServiceTest, WorkspaceAndGroupListsPaginate) {
  std::set<std::string> workspaces;
  for (int i = 0; i < 5; i++) workspaces.insert(h.CreateWorkspace());
  const std::string ws = *workspaces.begin();
  std::set<std::string> groups;
  for (int i = 0; i < 4; i++) groups.insert(h.CreateGroup(ws));
  // Pages of 2 until next_cursor is null; returns every id seen, in order.
  auto page_through = [&](const std::string& path, const std::string& items) {
    std::vector<std::string> seen;
    std::string cursor;
    for (int page = 0; page < 10; page++) {
      auto r = h.Call("GET", path + "?limit=2" + (cursor.empty() ? "" : "&cursor=" + cursor));
      EXPECT_EQ(r.status, 200) << r.raw;
      EXPECT_LE(r.body[items].size(), 2u);
      for (const auto& item : r.body[items]) seen.push_back(item["id"]);
      if (r.body["next_cursor"].is_null()) break;
      cursor = r.body["next_cursor"];
    }
    return seen;
  };
  EXPECT_EQ(page_through("/v1/workspaces", "workspaces"),
            std::vector<std::string>(workspaces.begin(), workspaces.end()));
  EXPECT_EQ(page_through("/v1/workspaces/" + ws + "/security-groups", "security_groups"),
            std::vector<std::string>(groups.begin(), groups.end()));
  ExpectError(h.Call("GET", "/v1/workspaces?limit=0"), 400, "invalid_argument", "limit");
}

TEST_F(ServiceTest, EveryEventRecordsItsActor) {
  std::string ws = h.CreateWorkspace();
  std::string t = h.Call("POST", "/v1/workspaces/" + ws + "/tokens").body["token"];
  auto g = h.Call("POST", "/v1/workspaces/" + ws + "/security-groups", R"({"name":"g"})", t);
  ASSERT_EQ(g.status, 201);
  auto events = h.ledger().ReadRange(1, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_GE(events->size(), 4u);
  EXPECT_EQ(events->at(0).actor, "system");  // operator token set at bootstrap
  EXPECT_EQ(events->at(1).actor, "operator");
  EXPECT_TRUE(events->back().actor.starts_with("token/tok_")) << events->back().actor;
}

TEST_F(ServiceTest, StateSurvivesRestart) {
  ASSERT_EQ(h.Call("POST", "/v1/price-plans", R"({"id":"p","currency":"EUR","mode":"volume",
      "tiers":[{"up_to":null,"unit_price_micros":7}]})").status, 201);
  std::string ws = h.CreateWorkspace();
  ASSERT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"price_plan":"p"})").status, 200);
  std::string group = h.CreateGroup(ws);
  auto [id, secret] = h.CreateKey(ws, group);
  Hash before = h.key_state().state().Digest();
  h.Open();
  EXPECT_EQ(h.key_state().state().Digest(), before);
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws + "/keys/" + id).status, 200);
}

TEST_F(ServiceTest, ReopenAfterCallsStartsTheKeyStateAtTheHead) {
  std::string ws = h.CreateWorkspace();
  auto [id, secret] = h.CreateKey(ws, h.CreateGroup(ws));
  nlohmann::json calls = nlohmann::json::array();
  for (int i = 0; i < 5; i++) {
    calls.push_back({{"request_id", testing::Numbered("r", i)}, {"key_id", id},
                     {"occurred_at", FormatRfc3339(h.clock().NowUs())}, {"status", 200}});
  }
  ASSERT_EQ(h.Call("POST", "/v1/calls", nlohmann::json{{"calls", calls}}.dump()).status, 200);
  // Commands alone do not move the position over calls; the reopen's catch-up does,
  // and persists it, so the next open reads no event.
  EXPECT_LT(h.key_state().state().position(), h.ledger().head().sequence);
  const Hash before = h.key_state().state().Digest();
  h.Open();
  EXPECT_EQ(h.key_state().state().position(), h.ledger().head().sequence);
  EXPECT_EQ(h.key_state().state().Digest(), before);
}

TEST_F(ServiceTest, MetricsInPrometheusFormat) {
  std::string ws = h.CreateWorkspace();
  h.Call("GET", "/v1/workspaces/" + ws);
  h.Call("GET", "/v1/workspaces/nope");
  auto r = h.Call("GET", "/metrics", "", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.raw.find("keyledger_http_requests_total{route=\"management\",status=\"201\"} 1"),
            std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("keyledger_http_requests_total{route=\"management\",status=\"404\"} 1"),
            std::string::npos);
  EXPECT_NE(r.raw.find("keyledger_append_latency_seconds_count{kind=\"command\"} 2"),
            std::string::npos) << r.raw;  // the operator token, then the workspace
  EXPECT_NE(r.raw.find("keyledger_ledger_head_sequence 2"), std::string::npos);
  EXPECT_NE(r.raw.find("\nkeyledger_projection_position{projection=\"key_state\"} 2\n"),
            std::string::npos) << r.raw;
  // Every "# HELP" and "# TYPE" line names a metric without labels.
  for (size_t at = r.raw.find("# "); at != std::string::npos; at = r.raw.find("\n# ", at + 1)) {
    std::string line = r.raw.substr(at, r.raw.find('\n', at + 1) - at);
    EXPECT_EQ(line.find('{'), std::string::npos) << line;
  }
  EXPECT_NE(r.raw.find("keyledger_authorize_latency_seconds_bucket{le=\"+Inf\"} 0"),
            std::string::npos);
}

TEST_F(ServiceTest, LedgerHeadIsForTheOperator) {
  std::string ws = h.CreateWorkspace();
  auto head = h.Call("GET", "/v1/ledger/head");
  ASSERT_EQ(head.status, 200);
  EXPECT_EQ(head.body["sequence"], h.ledger().head().sequence);
  EXPECT_EQ(head.body["hash"], ToHex(h.ledger().head().hash));
  std::string t = h.Call("POST", "/v1/workspaces/" + ws + "/tokens").body["token"];
  ExpectError(h.Call("GET", "/v1/ledger/head", "", t), 403, "permission_denied");
  ExpectError(h.Call("POST", "/v1/ledger/head", "{}"), 400, "invalid_argument", "method");
}

TEST_F(ServiceTest, KeyHistoryAndPointInTimeState) {
  std::string ws = h.CreateWorkspace();
  std::string group = h.CreateGroup(ws);
  std::string t = h.Call("POST", "/v1/workspaces/" + ws + "/tokens").body["token"];
  auto [id, secret] = h.CreateKey(ws, group, "first");
  std::string path = "/v1/workspaces/" + ws + "/keys/" + id;
  uint64_t created_at = h.ledger().head().sequence;
  h.clock().AdvanceUs(1'000'000);
  ASSERT_EQ(h.Call("PATCH", path, R"({"name":"second","logging":true})", t).status, 200);
  std::string between = FormatRfc3339(h.clock().NowUs() + 500'000);
  h.clock().AdvanceUs(1'000'000);
  ASSERT_EQ(h.Call("POST", path + "/rotate", "{}").status, 200);
  ASSERT_EQ(h.Call("DELETE", path).status, 204);

  auto history = h.Call("GET", path + "/history");
  ASSERT_EQ(history.status, 200) << history.raw;
  const auto& events = history.body["events"];
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0]["type"], "key_created");
  EXPECT_EQ(events[0]["actor"], "operator");
  EXPECT_EQ(events[1]["type"], "key_renamed");
  EXPECT_TRUE(events[1]["actor"].get<std::string>().starts_with("token/"));
  EXPECT_NE(events[1]["changes"].dump().find("first"), std::string::npos);
  EXPECT_EQ(events[2]["type"], "key_logging_switched");
  EXPECT_EQ(events[3]["type"], "key_rotated");
  EXPECT_EQ(events[4]["type"], "key_deleted");

  // Page by page: the same events, and a cursor to the next page.
  auto first_page = h.Call("GET", path + "/history?limit=2");
  ASSERT_EQ(first_page.status, 200) << first_page.raw;
  ASSERT_EQ(first_page.body["events"].size(), 2u);
  EXPECT_EQ(first_page.body["events"][1], events[1]);
  ASSERT_EQ(first_page.body["next_cursor"], "3");
  auto last_page = h.Call("GET", path + "/history?limit=3&cursor=3");
  ASSERT_EQ(last_page.status, 200) << last_page.raw;
  ASSERT_EQ(last_page.body["events"].size(), 3u);
  EXPECT_EQ(last_page.body["events"][2], events[4]);
  EXPECT_TRUE(last_page.body["next_cursor"].is_null());
  EXPECT_TRUE(history.body["next_cursor"].is_null());
  ExpectError(h.Call("GET", path + "/history?cursor=0"), 400, "invalid_argument", "cursor");
  ExpectError(h.Call("GET", path + "/history?limit=0"), 400, "invalid_argument", "limit");
  ExpectError(h.Call("POST", path + "/history", "{}"), 400, "invalid_argument", "method");

  auto then = h.Call("GET", path + "?as_of=" + std::to_string(created_at));
  ASSERT_EQ(then.status, 200) << then.raw;
  EXPECT_EQ(then.body["name"], "first");
  EXPECT_EQ(then.body["logging"], false);
  EXPECT_EQ(then.body["as_of_sequence"], created_at);
  // The rename is the first of the PATCH's two events: a sequence shows the
  // log's state there, the PATCH's time shows the PATCH whole.
  auto mid_patch = h.Call("GET", path + "?as_of=" + std::to_string(created_at + 1));
  ASSERT_EQ(mid_patch.status, 200) << mid_patch.raw;
  EXPECT_EQ(mid_patch.body["name"], "second");
  EXPECT_EQ(mid_patch.body["logging"], false);
  EXPECT_EQ(mid_patch.body["as_of_sequence"], created_at + 1);
  auto patch_time = h.Call("GET", path + "?as_of=" + events[1]["recorded_at"].get<std::string>());
  ASSERT_EQ(patch_time.status, 200) << patch_time.raw;
  EXPECT_EQ(patch_time.body["logging"], true);
  EXPECT_EQ(patch_time.body["as_of_sequence"], created_at + 2);
  // The value given is echoed decoded.
  auto encoded = h.Call("GET", path + "?as_of=" + std::string(between).replace(13, 1, "%3A"));
  ASSERT_EQ(encoded.status, 200) << encoded.raw;
  EXPECT_EQ(encoded.body["as_of"], between);
  auto by_time = h.Call("GET", path + "?as_of=" + between);
  ASSERT_EQ(by_time.status, 200) << by_time.raw;
  EXPECT_EQ(by_time.body["name"], "second");
  EXPECT_EQ(by_time.body["deleted"], false);
  auto now = h.Call("GET", path + "?as_of=" + std::to_string(h.ledger().head().sequence));
  EXPECT_EQ(now.body["deleted"], true);
  ExpectError(h.Call("GET", path + "?as_of=1"), 404, "not_found", "as_of");
  // A time before the key existed: not found, whatever its year's digits
  // would be as a sequence (from_chars reads "2026" of "2026-…").
  for (const char* before :
       {"1970-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "0007-06-01T00:00:00Z"}) {
    ExpectError(h.Call("GET", path + "?as_of=" + before), 404, "not_found", "as_of");
  }
  ExpectError(h.Call("GET", path + "?as_of=yesterday"), 400, "invalid_argument", "as_of");
  ExpectError(h.Call("GET", path + "?as_of="), 400, "invalid_argument", "as_of");  // not "now"
  // A deleted key's past is for the operator (auditors) only.
  ExpectError(h.Call("GET", path + "/history", "", t), 404, "not_found", "key");
}

// After a failed fsync the ledger takes no more writes until a restart:
// clients get 503 (their writes are idempotent: retry later), without the
// storage's own words; reads go on; /healthz fails so a supervisor restarts.
TEST_F(ServiceTest, AStorageFailureStopsWritesWith503AndFailsHealthz) {
  ASSERT_EQ(h.Call("GET", "/healthz", "", "").status, 200);
  std::string ws = h.CreateWorkspace();
  h.SetWalSyncResult(Status::IOError("injected: /data/ledger/000004.log"));
  auto failed = h.Call("POST", "/v1/workspaces", R"({"name":"b"})");
  ExpectError(failed, 503, "unavailable");
  EXPECT_EQ(failed.raw.find("000004.log"), std::string::npos) << failed.raw;
  h.SetWalSyncResult(Status::Ok());  // the disk is back: the ledger still refuses
  auto refused = h.Call("PATCH", "/v1/workspaces/" + ws, R"({"name":"c"})");
  ExpectError(refused, 503, "unavailable");
  EXPECT_NE(refused.raw.find("restart"), std::string::npos) << refused.raw;
  EXPECT_EQ(h.Call("GET", "/v1/workspaces/" + ws).status, 200);
  auto health = h.Call("GET", "/healthz", "", "");
  EXPECT_EQ(health.status, 503) << health.raw;
  EXPECT_EQ(health.body["failing"], nlohmann::json::array({"ledger_writes"})) << health.raw;
  h.Open();  // a restart recovers
  EXPECT_EQ(h.Call("GET", "/healthz", "", "").status, 200);
  EXPECT_EQ(h.Call("PATCH", "/v1/workspaces/" + ws, R"({"name":"c"})").status, 200);
}

TEST_F(ServiceTest, UnknownRoutesAndMethods) {
  ExpectError(h.Call("GET", "/v2/anything"), 404, "not_found");
  std::string ws = h.CreateWorkspace();
  ExpectError(h.Call("DELETE", "/v1/workspaces/" + ws), 400, "invalid_argument", "method");
  ExpectError(h.Call("GET", "/v1/workspaces/" + ws + "/nothing"), 404, "not_found");
}

}  // namespace
}  // namespace keyledger
