#include "api/json_body_simd.h"

#include <cassert>

namespace keyledger {

Result<simdjson::dom::object> ParseBodyObject(simdjson::dom::parser* parser, std::string_view body,
                                              size_t depth_max) {
  assert(parser != nullptr && !body.empty());
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
