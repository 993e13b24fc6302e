// Reading the body of POST /v1/authorize: {"client_ip", "origin"?, "request_id"?}.
//
// The gateway sends one for every request it serves, so it is parsed with
// simdjson, as the call batch is (api/call_batch_json.h): nlohmann's DOM
// cost about 9,000 instructions and a dozen allocations per body, nearly
// half of the server's own user-space work per authorization. The rules are
// those of the other request bodies (api/json_input.h): wrong types and
// unknown fields are InvalidArgument naming the field, malformed text is
// InvalidArgument naming none, null reads as absent, and a key given twice
// counts with its last value. One difference: nesting deeper than 8 and
// numbers beyond 64-bit integers or doubles (e.g. 1e400) are malformed here
// (api/json_body_simd.h), where the other bodies would get past the parse.
//
// Thread safety: stateless function.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "ledger/status.h"

namespace keyledger {

struct AuthorizeBody {
  std::string client_ip;
  std::optional<std::string> origin;
  std::optional<std::string> request_id;
};

// Parses the body. An empty body reads as {}.
// Returns InvalidArgument, the first that applies, in this order:
//   "request body is not valid JSON" or "request body must be a JSON object"
//     (no field);
//   an unknown field (the smallest name), naming it;
//   "must be a string" (field client_ip);
//   "client_ip is required" (field client_ip) when it is absent or null;
//   "must be a string" (field origin, then request_id).
Result<AuthorizeBody> ParseAuthorizeBody(std::string_view body);

}  // namespace keyledger
