#include "api/json_body_simd.h"

#include <cassert>

namespace keyledger {

Result<simdjson::dom::object> ParseBodyObject(simdjson::dom::parser* parser, std::string_view body,
                                              size_t depth_max) {
  assert(parser != nullptr && !body.empty());
  // A leading UTF-8 byte order mark is skipped, as nlohmann's parser (the
  // other bodies') skips it; simdjson 3.0 does not.
  constexpr std::string_view kByteOrderMark = "\xEF\xBB\xBF";
  if (body.starts_with(kByteOrderMark)) body.remove_prefix(kByteOrderMark.size());
  if (parser->allocate(body.size(), depth_max) != simdjson::SUCCESS) {
    return Status::Unavailable("cannot allocate the JSON parser");
  }
  simdjson::dom::element root;
  // parse() copies `body` into a padded buffer (simdjson reads past the end).
  if (parser->parse(body.data(), body.size(), /*realloc_if_needed=*/true).get(root) !=
      simdjson::SUCCESS) {
    return Status::InvalidArgument("request body is not valid JSON");
  }
  simdjson::dom::object object;
  if (root.get(object) != simdjson::SUCCESS) {
    return Status::InvalidArgument("request body must be a JSON object");
  }
  return object;
}

}  // namespace keyledger
