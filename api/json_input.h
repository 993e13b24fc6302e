// Strict reading of JSON request bodies: wrong types, unknown fields and
// malformed text become InvalidArgument with the offending field named.
//
// Thread safety: stateless functions.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ledger/status.h"

namespace keyledger {

using Json = nlohmann::json;

// Parses `body` as a JSON object whose keys are all in `allowed`.
// An empty body is an empty object. Unknown fields are refused (a typo such as
// "descripton" must not be silently ignored).
Result<Json> ParseObject(std::string_view body, std::initializer_list<std::string_view> allowed);

// Each returns std::nullopt when the field is absent (or null, where noted),
// InvalidArgument naming `field` when it has the wrong type or range.
Result<std::optional<std::string>> OptionalString(const Json& object, std::string_view field);
Result<std::optional<int64_t>> OptionalInt(const Json& object, std::string_view field,
                                           int64_t min, int64_t max);
Result<std::optional<bool>> OptionalBool(const Json& object, std::string_view field);
Result<std::optional<std::vector<std::string>>> OptionalStringList(const Json& object,
                                                                   std::string_view field,
                                                                   size_t entries_max);

// Checks a human-readable text: valid UTF-8, no control characters, at most
// `chars_max` code points after trimming ASCII white space at both ends, and
// at least one when `required`. Returns the trimmed text.
Result<std::string> CleanText(std::string_view text, std::string_view field, size_t chars_max,
                              bool required);

}  // namespace keyledger
