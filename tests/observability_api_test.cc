// Handler-level tests of the per-key logs and the metrics endpoints.
#include <gtest/gtest.h>

#include "billing/calendar.h"
#include "tests/service_fixture.h"

namespace keyledger {
namespace {

using nlohmann::json;
using testing::ServiceHarness;

class ObservabilityApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    h.clock().SetUs(ParseRfc3339("2026-11-20T10:00:00Z", "t").value());
    ws_ = h.CreateWorkspace();
    std::tie(key_, secret_) = h.CreateKey(ws_, h.CreateGroup(ws_));
    base_ = "/v1/workspaces/" + ws_ + "/keys/" + key_;
  }

  void Record(const std::string& id, int status, int latency_ms, int seconds_ago) {
    json call = {{"request_id", id}, {"key_id", key_},
                 {"occurred_at", FormatRfc3339(h.clock().NowUs() - seconds_ago * 1'000'000LL)},
                 {"method", "POST"}, {"path", "/v1/render"}, {"status", status},
                 {"latency_ms", latency_ms},
                 {"request", {{"headers", {{"Authorization", "Bearer " + secret_}}},
                              {"body_excerpt", "{\"key\":\"" + secret_ + "\"}"}}}};
    ASSERT_EQ(h.Call("POST", "/v1/calls", json{{"calls", {call}}}.dump()).status, 200);
  }

  ServiceHarness h;
  std::string ws_, key_, secret_, base_;
};

// A header the call carried twice (as the gateway records them; a JSON
// object cannot) keeps both values in its log entry.
TEST_F(ObservabilityApiTest, ARepeatedHeaderKeepsEveryValue) {
  ASSERT_EQ(h.Call("PATCH", base_, R"({"logging":true})").status, 200);
  h.clock().AdvanceUs(60'000'000);
  CallReport report;
  report.call.request_id = "vary";
  report.call.key_id = key_;
  report.call.occurred_at_us = h.clock().NowUs();
  report.call.status = 200;
  report.call.response.headers = {{"Vary", "Origin"}, {"vary", "Accept"}};  // one name, any case
  std::vector<CallReport> reports{report};
  ASSERT_TRUE(h.service().data_plane().RecordCalls(std::move(reports)).ok());
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto logs = h.Call("GET", base_ + "/logs");
  ASSERT_EQ(logs.status, 200) << logs.raw;
  ASSERT_EQ(logs.body["entries"].size(), 1u) << logs.raw;
  EXPECT_EQ(logs.body["entries"][0]["response"]["headers"]["Vary"], "Origin, Accept") << logs.raw;
}

TEST_F(ObservabilityApiTest, LogsHoldOnlyCallsMadeWhileLoggingWasOn) {
  Record("off-1", 200, 10, 50);
  ASSERT_EQ(h.Call("PATCH", base_, R"({"logging":true})").status, 200);
  h.clock().AdvanceUs(60'000'000);  // the "on" calls below were made after the switch
  Record("on-1", 200, 10, 40);
  Record("on-2", 500, 30, 30);
  Record("on-3", 404, 20, 20);
  ASSERT_EQ(h.Call("PATCH", base_, R"({"logging":false})").status, 200);
  Record("off-2", 200, 10, 10);
  ASSERT_TRUE(h.calls().CatchUp().ok());

  auto logs = h.Call("GET", base_ + "/logs");
  ASSERT_EQ(logs.status, 200) << logs.raw;
  ASSERT_EQ(logs.body["entries"].size(), 3u);
  EXPECT_EQ(logs.body["entries"][0]["request_id"], "on-3");  // newest first
  EXPECT_EQ(logs.body["entries"][2]["request_id"], "on-1");
  EXPECT_EQ(logs.raw.find(secret_.substr(4)), std::string::npos);  // no secret anywhere
  EXPECT_EQ(logs.body["entries"][0]["request"]["headers"]["Authorization"], "[REDACTED]");

  auto errors = h.Call("GET", base_ + "/logs?status=5xx");
  ASSERT_EQ(errors.body["entries"].size(), 1u);
  EXPECT_EQ(errors.body["entries"][0]["status"], 500);

  // Pagination: two pages of 2 and 1, stable while a new call arrives.
  auto first = h.Call("GET", base_ + "/logs?limit=2");
  ASSERT_EQ(first.body["entries"].size(), 2u);
  ASSERT_TRUE(first.body["next_cursor"].is_string());
  ASSERT_EQ(h.Call("PATCH", base_, R"({"logging":true})").status, 200);
  h.clock().AdvanceUs(2'000'000);
  Record("on-4", 200, 5, 1);
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto second = h.Call("GET", base_ + "/logs?limit=2&cursor=" +
                                  first.body["next_cursor"].get<std::string>());
  ASSERT_EQ(second.body["entries"].size(), 1u) << second.raw;
  EXPECT_EQ(second.body["entries"][0]["request_id"], "on-1");

  EXPECT_EQ(h.Call("GET", base_ + "/logs?limit=0").body["error"]["field"], "limit");
  EXPECT_EQ(h.Call("GET", base_ + "/logs?cursor=zz").body["error"]["field"], "cursor");
  EXPECT_EQ(h.Call("GET", base_ + "/logs?from=yesterday").body["error"]["field"], "from");
  // Times before the epoch, and a range that ends before it starts, each
  // name the parameter at fault.
  EXPECT_EQ(h.Call("GET", base_ + "/logs?to=1969-12-31T00:00:00Z").body["error"]["field"], "to");
  EXPECT_EQ(h.Call("GET", base_ + "/metrics?from=1969-12-31T00:00:00Z").body["error"]["field"],
            "from");
  auto backwards =
      h.Call("GET", base_ + "/metrics?from=2026-11-20T10:00:00Z&to=2026-11-20T09:00:00Z");
  EXPECT_EQ(backwards.status, 400);
  EXPECT_EQ(backwards.body["error"]["field"], "to");
  EXPECT_EQ(h.Call("GET", base_ + "/metrics?to=1970-01-01T12:00:00Z").status, 200);
}

TEST_F(ObservabilityApiTest, MetricsShowCallsErrorsAndLatency) {
  Record("a", 200, 10, 300);
  Record("b", 200, 20, 200);
  Record("c", 500, 40, 100);
  Record("d", 404, 80, 50);
  ASSERT_TRUE(h.calls().CatchUp().ok());
  auto m = h.Call("GET", base_ + "/metrics?step=60&from=2026-11-20T09:00:00Z&to=2026-11-20T10:00:00Z");
  ASSERT_EQ(m.status, 200) << m.raw;
  EXPECT_EQ(m.body["series"].size(), 60u);
  const json& totals = m.body["totals"];
  EXPECT_EQ(totals["calls"], 4);
  EXPECT_EQ(totals["errors"], 2);
  EXPECT_EQ(totals["error_rate"], 0.5);
  EXPECT_EQ(totals["units"], 2);
  EXPECT_EQ(totals["latency_ms"]["max"], 80);
  EXPECT_EQ(totals["errors_by_class"]["5xx"], 1);
  auto ws = h.Call("GET", "/v1/workspaces/" + ws_ + "/metrics?step=3600&from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z");
  ASSERT_EQ(ws.status, 200) << ws.raw;
  EXPECT_EQ(ws.body["series"].size(), 24u);
  EXPECT_EQ(ws.body["totals"]["calls"], 4);
  EXPECT_EQ(h.Call("GET", base_ + "/metrics?step=7").body["error"]["field"], "step");
  // A deleted key's logs and metrics answer 404.
  ASSERT_EQ(h.Call("DELETE", base_).status, 204);
  EXPECT_EQ(h.Call("GET", base_ + "/logs").status, 404);
  EXPECT_EQ(h.Call("GET", base_ + "/metrics").status, 404);
}

}  // namespace
}  // namespace keyledger
