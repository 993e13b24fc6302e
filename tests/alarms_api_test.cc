// Handler-level tests of alarm rules and the deletion guard.
#include <gtest/gtest.h>

#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

class AlarmsApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ws_ = h.CreateWorkspace();
    key_ = h.CreateKey(ws_, h.CreateGroup(ws_)).first;
    base_ = "/v1/workspaces/" + ws_ + "/keys/" + key_;
  }
  json Rule() {
    return {{"name", "too many calls"}, {"metric", "calls"}, {"comparator", ">"},
            {"threshold", 1000}, {"period_seconds", 300}, {"evaluation_periods", 3},
            {"datapoints_to_alarm", 2},
            {"channels", {{{"type", "email"}, {"to", "ops@example.com"}},
                          {{"type", "webhook"}, {"url", "https://hooks.example.com/kl"}}}}};
  }
  ServiceHarness h;
  std::string ws_, key_, base_;
};

TEST_F(AlarmsApiTest, CreateReadChangeDelete) {
  auto created = h.Call("POST", base_ + "/alarms", Rule().dump());
  ASSERT_EQ(created.status, 201) << created.raw;
  std::string id = created.body["id"];
  EXPECT_EQ(created.body["metric"], "calls");
  EXPECT_EQ(created.body["threshold"], 1000);
  EXPECT_EQ(created.body["state"], "INSUFFICIENT_DATA");
  ASSERT_EQ(created.body["webhook_secrets"].size(), 1u);  // shown once
  auto got = h.Call("GET", base_ + "/alarms/" + id);
  EXPECT_EQ(got.status, 200);
  EXPECT_FALSE(got.body.contains("webhook_secrets"));
  EXPECT_EQ(got.raw.find(created.body["webhook_secrets"][0].get<std::string>()), std::string::npos);
  auto patched = h.Call("PATCH", base_ + "/alarms/" + id,
                        R"({"metric":"error_rate","threshold":0.05,"comparator":">="})");
  ASSERT_EQ(patched.status, 200) << patched.raw;
  EXPECT_EQ(patched.body["metric"], "error_rate");
  EXPECT_EQ(patched.body["threshold"], 0.05);
  EXPECT_EQ(patched.body["channels"].size(), 2u);
  // Fewer periods than the datapoints the rule needs: the field the PATCH set
  // is named, not the one it left alone.
  auto fewer = h.Call("PATCH", base_ + "/alarms/" + id, R"({"evaluation_periods":1})");
  EXPECT_EQ(fewer.status, 400);
  EXPECT_EQ(fewer.body["error"]["field"], "evaluation_periods") << fewer.raw;
  EXPECT_EQ(h.Call("GET", base_ + "/alarms").body["alarms"].size(), 1u);
  EXPECT_EQ(h.Call("DELETE", base_ + "/alarms/" + id).status, 204);
  EXPECT_EQ(h.Call("GET", base_ + "/alarms/" + id).status, 404);
}

// Secrets are shown once, so a PATCH that lists a webhook again without one
// keeps its secret; a new URL gets a new secret.
TEST_F(AlarmsApiTest, AChannelsPatchKeepsTheSecretOfAWebhookItKeeps) {
  auto created = h.Call("POST", base_ + "/alarms", Rule().dump());
  ASSERT_EQ(created.status, 201) << created.raw;
  const std::string id = created.body["id"];
  auto secret_of = [&](const std::string& url) {
    const std::optional<AlarmView> alarm = h.key_state().state().FindAlarm(id);
    for (const auto& channel : alarm->spec.channels) {
      const auto* webhook = std::get_if<WebhookChannel>(&channel);
      if (webhook != nullptr && webhook->url == url) return webhook->secret;
    }
    return std::string();
  };
  const std::string kept_url = "https://hooks.example.com/kl";
  EXPECT_EQ(secret_of(kept_url), created.body["webhook_secrets"][0]);
  json channels = {{{"type", "webhook"}, {"url", kept_url}},
                   {{"type", "webhook"}, {"url", "https://hooks.example.com/new"}}};
  auto patched = h.Call("PATCH", base_ + "/alarms/" + id, json{{"channels", channels}}.dump());
  ASSERT_EQ(patched.status, 200) << patched.raw;
  ASSERT_EQ(patched.body["webhook_secrets"].size(), 1u) << patched.raw;  // the new URL's only
  EXPECT_EQ(secret_of(kept_url), created.body["webhook_secrets"][0]);
  EXPECT_EQ(secret_of("https://hooks.example.com/new"), patched.body["webhook_secrets"][0]);
}

TEST_F(AlarmsApiTest, BadRulesNameTheField) {
  uint64_t head = h.ledger().head().sequence;
  auto expect_field = [&](json rule, const std::string& field) {
    auto r = h.Call("POST", base_ + "/alarms", rule.dump());
    EXPECT_EQ(r.status, 400) << r.raw;
    EXPECT_EQ(r.body["error"]["field"], field) << r.raw;
  };
  json r = Rule();
  r["metric"] = "temperature";
  expect_field(r, "metric");
  r = Rule();
  r.erase("threshold");
  expect_field(r, "threshold");
  r = Rule();
  r["period_seconds"] = 30;
  expect_field(r, "period_seconds");
  r = Rule();
  r["datapoints_to_alarm"] = 4;
  expect_field(r, "datapoints_to_alarm");
  r = Rule();
  r["channels"] = json::array();
  expect_field(r, "channels");
  r = Rule();
  r["channels"][0]["to"] = "not an address";
  expect_field(r, "channels[0].to");
  r = Rule();
  r["channels"][1]["url"] = "http://127.0.0.1:9000/hook";  // SSRF guard
  expect_field(r, "channels[1].url");
  r = Rule();
  r["channels"][1]["url"] = "http://192.168.1.5/hook";
  expect_field(r, "channels[1].url");
  r = Rule();
  r["channels"][1]["url"] = "ftp://example.com/hook";
  expect_field(r, "channels[1].url");
  r = Rule();
  r["colour"] = "red";
  expect_field(r, "colour");
  // Private addresses hidden in IPv6 literals or behind a user name.
  for (const char* url : {"http://[::1]/x", "http://[::ffff:10.0.0.1]/x", "http://[fd00:ec2::254]/",
                          "http://[fe80::1]:8080/", "http://x@169.254.169.254/",
                          "https://user:pw@hooks.example.com/", "http://[::1/x"}) {
    r = Rule();
    r["channels"][1]["url"] = url;
    expect_field(r, "channels[1].url");
  }
  // Addresses the mail sender would refuse at every delivery.
  for (const char* to : {"@", "ops@", "a@b@c", "jos\u00e9@example.com", "a;b(c)@x"}) {
    r = Rule();
    r["channels"][0]["to"] = to;
    expect_field(r, "channels[0].to");
  }
  // A channel's unknown fields (the smallest named) and wrong types.
  r = Rule();
  r["channels"][1]["secert"] = "my-own-secret-0123456789";
  r["channels"][1]["zz"] = 1;
  expect_field(r, "channels[1].secert");
  r = Rule();
  r["channels"][0]["url"] = "https://hooks.example.com/x";
  expect_field(r, "channels[0].url");
  r = Rule();
  r["channels"][0]["to"] = 7;
  expect_field(r, "channels[0].to");
  r = Rule();
  r["channels"][1]["secret"] = true;
  expect_field(r, "channels[1].secret");
  // One destination twice (an address differing only in case included).
  r = Rule();
  r["channels"].push_back(r["channels"][1]);
  expect_field(r, "channels[2]");
  r = Rule();
  r["channels"].push_back({{"type", "email"}, {"to", "OPS@example.com"}});
  r["channels"][0]["to"] = "ops@example.com";
  expect_field(r, "channels[2]");
  EXPECT_EQ(h.ledger().head().sequence, head);
  // A bracketed public IPv6 literal, with a port, is a host like any other.
  r = Rule();
  r["channels"][1]["url"] = "https://[2001:4860:4860::8888]:8443/hook";
  EXPECT_EQ(h.Call("POST", base_ + "/alarms", r.dump()).status, 201);
  // Loopback and private hosts in other spellings are refused as well.
  for (const char* url : {"http://127.1/x", "http://2130706433/x", "http://0x7f.0.0.1/x",
                          "http://0177.0.0.1/x", "http://10.1/x", "http://LOCALHOST/x",
                          "http://localhost./x", "http://Api.LocalHost/x"}) {
    r = Rule();
    r["channels"][1]["url"] = url;
    expect_field(r, "channels[1].url");
  }
  // Names that look a little like numbers are names.
  for (const char* url : {"https://cafe.de/hook", "https://1e100.net/hook",
                          "https://0x.example/hook"}) {
    r = Rule();
    r["channels"][1]["url"] = url;
    EXPECT_EQ(h.Call("POST", base_ + "/alarms", r.dump()).status, 201) << url;
  }
}

TEST_F(AlarmsApiTest, HistoryComesInPages) {
  auto created = h.Call("POST", base_ + "/alarms", Rule().dump());
  ASSERT_EQ(created.status, 201) << created.raw;
  const std::string path = base_ + "/alarms/" + created.body["id"].get<std::string>();
  for (const char* name : {"b", "c"}) {
    ASSERT_EQ(h.Call("PATCH", path, json{{"name", name}}.dump()).status, 200);
  }
  auto whole = h.Call("GET", path + "/history?limit=3");  // exactly full: the last page
  ASSERT_EQ(whole.status, 200) << whole.raw;
  EXPECT_EQ(whole.body["events"].size(), 3u);
  EXPECT_TRUE(whole.body["next_cursor"].is_null()) << whole.raw;
  auto first = h.Call("GET", path + "/history?limit=2");
  ASSERT_EQ(first.body["events"].size(), 2u);
  ASSERT_EQ(first.body["next_cursor"], "3") << first.raw;
  auto rest = h.Call("GET", path + "/history?limit=2&cursor=3");
  ASSERT_EQ(rest.body["events"].size(), 1u);
  EXPECT_EQ(rest.body["events"][0], whole.body["events"][2]);
  EXPECT_TRUE(rest.body["next_cursor"].is_null());
}

TEST_F(AlarmsApiTest, AKeyWithAlarmsCannotBeDeleted) {
  std::string id = h.Call("POST", base_ + "/alarms", Rule().dump()).body["id"];
  auto refused = h.Call("DELETE", base_);
  EXPECT_EQ(refused.status, 409);
  EXPECT_EQ(refused.body["error"]["code"], "failed_precondition");
  EXPECT_NE(refused.raw.find(id), std::string::npos);  // names the alarm
  EXPECT_EQ(h.Call("GET", base_).status, 200);
  ASSERT_EQ(h.Call("DELETE", base_ + "/alarms/" + id).status, 204);
  EXPECT_EQ(h.Call("DELETE", base_).status, 204);
  EXPECT_EQ(h.Call("GET", base_ + "/alarms").status, 404);
  EXPECT_EQ(h.Call("GET", base_ + "/alarms/" + id).status, 404);
}

TEST_F(AlarmsApiTest, RulesSurviveRestartAndRebuild) {
  ASSERT_EQ(h.Call("POST", base_ + "/alarms", Rule().dump()).status, 201);
  Hash live = h.key_state().state().Digest();
  auto rebuilt = RebuildKeyState(h.ledger(), 0);
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_EQ((*rebuilt)->Digest(), live);
  h.Open();
  EXPECT_EQ(h.key_state().state().Digest(), live);
  EXPECT_EQ(h.Call("GET", base_ + "/alarms").body["alarms"].size(), 1u);
}

}  // namespace
}  // namespace keyledger
