// Tests for api/authorize_json.h: the body of POST /v1/authorize.
#include "api/authorize_json.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "api/json_input.h"

namespace keyledger {
namespace {

TEST(AuthorizeBodyTest, ReadsTheThreeFields) {
  auto body = ParseAuthorizeBody(
      R"({"client_ip":"2001:db8::7","origin":"https://a.example.com","request_id":"r\u00e9-1"})");
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(body->client_ip, "2001:db8::7");
  EXPECT_EQ(body->origin, "https://a.example.com");
  EXPECT_EQ(body->request_id, "r\xc3\xa9-1");
}

TEST(AuthorizeBodyTest, SkipsAByteOrderMark) {
  auto body = ParseAuthorizeBody("\xEF\xBB\xBF{\"client_ip\":\"10.0.0.1\"}");
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(body->client_ip, "10.0.0.1");
}

TEST(AuthorizeBodyTest, NullIsAbsentAndTheLastDuplicateCounts) {
  auto body = ParseAuthorizeBody(
      R"({"client_ip":"10.0.0.1","origin":null,"client_ip":"10.0.0.2","request_id":null})");
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(body->client_ip, "10.0.0.2");
  EXPECT_FALSE(body->origin);
  EXPECT_FALSE(body->request_id);
}

struct ErrorCase {
  std::string name;
  std::string body;
  std::string field;  // "" when the error names none
  std::string message;
};

class AuthorizeBodyErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(AuthorizeBodyErrorTest, IsRefusedNamingTheField) {
  auto parsed = ParseAuthorizeBody(GetParam().body);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(parsed.status().field(), GetParam().field) << parsed.status().ToString();
  EXPECT_EQ(parsed.status().message(), GetParam().message) << parsed.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Bodies, AuthorizeBodyErrorTest,
    ::testing::Values(
        ErrorCase{"Empty", "", "client_ip", "client_ip is required"},
        ErrorCase{"EmptyObject", "{}", "client_ip", "client_ip is required"},
        ErrorCase{"NullClientIp", R"({"client_ip":null})", "client_ip", "client_ip is required"},
        ErrorCase{"Malformed", R"({"client_ip":"1.2.3.4")", "", "request body is not valid JSON"},
        ErrorCase{"Trailing", R"({"client_ip":"1.2.3.4"} x)", "", "request body is not valid JSON"},
        ErrorCase{"Array", R"(["client_ip"])", "", "request body must be a JSON object"},
        ErrorCase{"UnknownSmallestFirst", R"({"zz":1,"client_ip":5,"b":2})", "b",
                  "unknown field \"b\""},
        ErrorCase{"ClientIpNumber", R"({"client_ip":5,"origin":7})", "client_ip",
                  "must be a string"},
        ErrorCase{"OriginBool", R"({"client_ip":"1.2.3.4","origin":true,"request_id":1})",
                  "origin", "must be a string"},
        ErrorCase{"RequestIdObject", R"({"client_ip":"1.2.3.4","request_id":{}})", "request_id",
                  "must be a string"},
        ErrorCase{"TooDeep", R"({"x":[[[[[[[[[[1]]]]]]]]]]})", "",
                  "request body is not valid JSON"},
        // Here, unlike the other bodies, such a number is malformed text.
        ErrorCase{"NumberOutOfRange", R"({"client_ip":"1.2.3.4","origin":1e400})", "",
                  "request body is not valid JSON"}),
    [](const auto& info) { return info.param.name; });

// The rules of the other request bodies (api/json_input.h), which this
// parser replaced for POST /v1/authorize.
Result<AuthorizeBody> ParseWithJsonInput(std::string_view text) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(text, {"client_ip", "origin", "request_id"}));
  KL_ASSIGN_OR_RETURN(auto client_ip, OptionalString(body, "client_ip"));
  if (!client_ip) return Status::InvalidArgument("client_ip is required", "client_ip");
  AuthorizeBody out;
  out.client_ip = *client_ip;
  KL_ASSIGN_OR_RETURN(out.origin, OptionalString(body, "origin"));
  KL_ASSIGN_OR_RETURN(out.request_id, OptionalString(body, "request_id"));
  return out;
}

// Objects of known and unknown fields, any of them repeated, with values of
// every JSON type, sometimes spoiled by a cut.
std::string ArbitraryBody() {
  const auto members = *rc::gen::container<std::vector<std::pair<std::string, std::string>>>(
      rc::gen::pair(rc::gen::element<std::string>("client_ip", "origin", "request_id", "a",
                                                  "zeta", "client"),
                    rc::gen::element<std::string>(
                        R"("10.0.0.1")", R"("https://x.example")", R"("r\"1")", R"("\udc00")",
                        R"("\ud83d\ude00")", "null", "7", "-1.5", "true", "[]",
                        R"({"k":[1,2]})", R"("")")));
  std::string body = "{";
  for (size_t i = 0; i < members.size(); i++) {
    if (i > 0) body += ",";
    body += "\"" + members[i].first + "\":" + members[i].second;
  }
  body += "}";
  if (*rc::gen::inRange(0, 8) == 0) body.resize(*rc::gen::inRange<size_t>(0, body.size()));
  if (*rc::gen::inRange(0, 8) == 0) body.insert(0, "\xEF\xBB\xBF");  // a byte order mark
  return body;
}

RC_GTEST_PROP(AuthorizeBodyProperty, AgreesWithTheRulesOfTheOtherBodies, ()) {
  const std::string body = ArbitraryBody();
  auto fast = ParseAuthorizeBody(body);
  auto reference = ParseWithJsonInput(body);
  RC_ASSERT(fast.ok() == reference.ok());
  if (!fast.ok()) {
    RC_ASSERT(fast.status().message() == reference.status().message());
    RC_ASSERT(fast.status().field() == reference.status().field());
    return;
  }
  RC_ASSERT(fast->client_ip == reference->client_ip);
  RC_ASSERT(fast->origin == reference->origin);
  RC_ASSERT(fast->request_id == reference->request_id);
}

}  // namespace
}  // namespace keyledger
