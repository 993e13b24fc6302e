// Tests for api/call_batch_json.h: the body of POST /v1/calls.
#include "api/call_batch_json.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "billing/calendar.h"

namespace keyledger {
namespace {

using nlohmann::json;

constexpr char kWhen[] = "2026-11-26T21:00:00Z";
constexpr size_t kCallsMax = 1000;  // DataPlaneOptions::calls_per_batch_max

// A valid call with the required fields, for the error cases to spoil.
json ValidCall() {
  return {{"request_id", "r1"}, {"key_id", "key_a"}, {"occurred_at", kWhen}, {"status", 200}};
}

std::string Batch(const json& call) { return json{{"calls", {ValidCall(), call}}}.dump(); }

struct ErrorCase {
  std::string name;
  std::string body;
  std::string field;    // "" when the error names none
  std::string message;  // a part of the message
};

class CallBatchErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(CallBatchErrorTest, IsRefusedNamingTheField) {
  auto parsed = ParseCallBatch(GetParam().body, kCallsMax);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(parsed.status().field(), GetParam().field) << parsed.status().ToString();
  EXPECT_NE(parsed.status().message().find(GetParam().message), std::string::npos)
      << parsed.status().ToString();
}

ErrorCase Spoiled(std::string name, const std::string& key, json value, std::string field,
                  std::string message) {
  json call = ValidCall();
  call[key] = std::move(value);
  return {std::move(name), Batch(call), std::move(field), std::move(message)};
}

ErrorCase Without(std::string name, const std::string& key, std::string field,
                  std::string message) {
  json call = ValidCall();
  call.erase(key);
  return {std::move(name), Batch(call), std::move(field), std::move(message)};
}

INSTANTIATE_TEST_SUITE_P(
    Bodies, CallBatchErrorTest,
    ::testing::Values(
        ErrorCase{"Empty", "", "calls", "calls must be an array"},
        ErrorCase{"Malformed", "{\"calls\":[", "", "not valid JSON"},
        ErrorCase{"NotAnObject", "[]", "", "must be a JSON object"},
        ErrorCase{"UnknownTopLevelFieldsSmallestFirst", R"({"zeta":1,"calls":[],"alpha":2})",
                  "alpha", "unknown field \"alpha\""},
        ErrorCase{"CallsNotAnArray", R"({"calls":{}})", "calls", "calls must be an array"},
        ErrorCase{"CallNotAnObject", R"({"calls":[1]})", "calls[0]", "must be an object"},
        ErrorCase{"UnknownFieldBeforeAnyOther",
                  Batch({{"zz", 1}, {"colour", "red"}, {"status", "x"}}), "calls[1].colour",
                  "unknown field \"colour\""},
        Spoiled("StringAsNumber", "request_id", 5, "calls[1].request_id", "must be a string"),
        Spoiled("StatusAsString", "status", "200", "calls[1].status", "must be an integer"),
        Spoiled("StatusAsFloat", "status", 200.5, "calls[1].status", "must be an integer"),
        Spoiled("StatusTooLarge", "status", 1000, "calls[1].status", "between 0 and 999"),
        Spoiled("StatusNegative", "status", -1, "calls[1].status", "between 0 and 999"),
        Spoiled("StatusAboveInt64", "status", UINT64_MAX, "calls[1].status", "at most 999"),
        Without("StatusMissing", "status", "calls[1].status", "status is required"),
        Spoiled("StatusNull", "status", nullptr, "calls[1].status", "status is required"),
        Without("OccurredAtMissing", "occurred_at", "calls[1].occurred_at", "is required"),
        Spoiled("OccurredAtNotRfc3339", "occurred_at", "yesterday", "calls[1].occurred_at", ""),
        Spoiled("UnitsNegative", "units", -3, "calls[1].units", "between 0 and"),
        Spoiled("LatencyNegative", "latency_ms", -1, "calls[1].latency_ms", "0..4294967.295"),
        Spoiled("LatencyAsString", "latency_ms", "5", "calls[1].latency_ms", "0..4294967.295"),
        Spoiled("LatencyPastTheHistograms", "latency_ms", 4'294'968, "calls[1].latency_ms",
                "0..4294967.295"),
        Spoiled("RequestNotAnObject", "request", json::array(), "calls[1].request",
                "must be an object"),
        Spoiled("HeadersNotAnObject", "request", {{"headers", json::array()}},
                "calls[1].request.headers", "must be an object of header: value"),
        Spoiled("HeaderNotAString", "response", {{"headers", {{"b", 1}, {"a", "x"}}}},
                "calls[1].response.headers.b", "must be a string"),
        Spoiled("BodyExcerptNotAString", "response", {{"body_excerpt", 5}},
                "calls[1].response.body_excerpt", "must be a string"),
        ErrorCase{"TooDeep",
                  R"({"calls":[{"request":{"extra":{"a":{"b":{"c":{"d":{}}}}}}}]})", "",
                  "not valid JSON"}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.name; });

TEST(CallBatchTest, ReadsEveryFieldNullAsAbsentAndTheLastOfRepeatedKeys) {
  const std::string body = R"({"calls":[
    {"request_id":"r\"1\u00e9","key_id":"key_a","occurred_at":"2026-11-26T21:00:00Z",
     "method":"GET","method":"PUT","path":"/v1/render?w=64","status":503,"latency_ms":12.5,
     "units":7,"request_bytes":10,"response_bytes":20,"client_ip":"2001:db8::1",
     "origin":"https://app.example.com",
     "request":{"headers":{"b":"1","a":"2","b":"3"},"body_excerpt":"{}","other":[1,{}]},
     "response":null},
    {"request_id":"r2","key_id":"key_b","occurred_at":"2026-11-26T21:00:01Z","status":200,
     "method":null,"units":null,"latency_ms":3,"request":{"headers":null}}]})";
  auto parsed = ParseCallBatch(body, kCallsMax);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 2u);
  const CallReport& first = (*parsed)[0];
  EXPECT_EQ(first.call.request_id, "r\"1\xc3\xa9");
  EXPECT_EQ(first.call.key_id, "key_a");
  EXPECT_EQ(first.call.occurred_at_us, *ParseRfc3339("2026-11-26T21:00:00Z", "t"));
  EXPECT_EQ(first.call.method, "PUT");
  EXPECT_EQ(first.call.path, "/v1/render?w=64");
  EXPECT_EQ(first.call.status, 503);
  EXPECT_EQ(first.call.latency_us, 12'500u);
  EXPECT_EQ(first.units, std::optional<uint64_t>(7));
  EXPECT_EQ(first.call.request_bytes, 10u);
  EXPECT_EQ(first.call.response_bytes, 20u);
  EXPECT_EQ(first.call.client_ip, "2001:db8::1");
  EXPECT_EQ(first.call.origin, "https://app.example.com");
  ASSERT_EQ(first.call.request.headers.size(), 2u);  // in name order, the last "b"
  EXPECT_EQ(first.call.request.headers[0].name, "a");
  EXPECT_EQ(first.call.request.headers[0].value, "2");
  EXPECT_EQ(first.call.request.headers[1].name, "b");
  EXPECT_EQ(first.call.request.headers[1].value, "3");
  EXPECT_EQ(first.call.request.body_excerpt, "{}");
  EXPECT_TRUE(first.call.response.headers.empty());
  const CallReport& second = (*parsed)[1];
  EXPECT_EQ(second.call.method, "");
  EXPECT_FALSE(second.units.has_value());
  EXPECT_EQ(second.call.latency_us, 3'000u);
  EXPECT_TRUE(second.call.request.headers.empty());
}

// Whatever valid calls a client sends come back field for field.
RC_GTEST_PROP(CallBatchProperty, ValidCallsRoundTrip, ()) {
  const size_t count = *rc::gen::inRange<size_t>(0, 20);
  json calls = json::array();
  std::vector<json> sent;
  for (size_t i = 0; i < count; i++) {
    json call = {{"request_id", *rc::gen::arbitrary<std::string>()},
                 {"key_id", *rc::gen::arbitrary<std::string>()},
                 {"occurred_at", kWhen},
                 {"status", *rc::gen::inRange<int>(0, 1000)},
                 {"latency_ms", *rc::gen::inRange<int64_t>(0, 4'294'968)},
                 {"response_bytes", *rc::gen::inRange<int64_t>(0, INT64_MAX)}};
    if (*rc::gen::arbitrary<bool>()) call["method"] = *rc::gen::arbitrary<std::string>();
    if (*rc::gen::arbitrary<bool>()) call["units"] = *rc::gen::inRange<int64_t>(0, 1'000'000);
    if (*rc::gen::arbitrary<bool>()) {
      call["response"] = {{"body_excerpt", *rc::gen::arbitrary<std::string>()}};
    }
    calls.push_back(call);
    sent.push_back(call);
  }
  // Arbitrary strings are bytes, not always UTF-8: dump them with U+FFFD, as a client would
  // have to, and compare with what the dump says.
  const std::string body =
      json{{"calls", calls}}.dump(-1, ' ', false, json::error_handler_t::replace);
  const json echoed = json::parse(body);
  auto parsed = ParseCallBatch(body, kCallsMax);
  RC_ASSERT(parsed.ok());
  RC_ASSERT(parsed->size() == count);
  for (size_t i = 0; i < count; i++) {
    const json& want = echoed["calls"][i];
    const CallReport& got = (*parsed)[i];
    RC_ASSERT(got.call.request_id == want["request_id"].get<std::string>());
    RC_ASSERT(got.call.key_id == want["key_id"].get<std::string>());
    RC_ASSERT(got.call.status == want["status"].get<int>());
    RC_ASSERT(got.call.latency_us == want["latency_ms"].get<uint64_t>() * 1000);
    RC_ASSERT(got.call.response_bytes == want["response_bytes"].get<uint64_t>());
    RC_ASSERT(got.call.method == want.value("method", std::string()));
    RC_ASSERT(got.units == (want.contains("units")
                                ? std::optional<uint64_t>(want["units"].get<uint64_t>())
                                : std::nullopt));
    const std::string excerpt =
        want.contains("response") ? want["response"]["body_excerpt"].get<std::string>() : "";
    RC_ASSERT(got.call.response.body_excerpt == excerpt);
  }
}

}  // namespace
}  // namespace keyledger
