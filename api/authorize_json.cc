#include "api/authorize_json.h"

#include <array>
#include <cstddef>
#include <utility>

#include "api/json_body_simd.h"

// simdjson reports errors as codes (exceptions are not used here: every call
// goes through .get(), which returns an error_code).

namespace keyledger {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// JSON nesting the body may have: it is one flat object, but a value of an
// unknown field may nest; deeper bodies are refused as malformed.
constexpr size_t kAuthorizeBodyDepthMax = 8;

// The fields, in the order their type errors are reported (names are the
// API's: never rename).
constexpr std::array<std::string_view, 3> kFieldNames = {"client_ip", "origin", "request_id"};

// Reads field `index` of `values` into *out (nullopt when absent or null).
Status ReadString(const std::array<std::optional<element>, kFieldNames.size()>& values,
                  size_t index, std::optional<std::string>* out) {
  const std::optional<element>& value = values[index];
  if (!value || value->type() == element_type::NULL_VALUE) return Status::Ok();
  std::string_view text;
  if (value->get(text) != simdjson::SUCCESS) {
    return Status::InvalidArgument("must be a string", std::string(kFieldNames[index]));
  }
  out->emplace(text);
  return Status::Ok();
}

}  // namespace

Result<AuthorizeBody> ParseAuthorizeBody(std::string_view body) {
  std::array<std::optional<element>, kFieldNames.size()> values;
  simdjson::dom::parser parser;
  if (!body.empty()) {
    KL_ASSIGN_OR_RETURN(simdjson::dom::object object,
                        ParseBodyObject(&parser, body, kAuthorizeBodyDepthMax));
    std::optional<std::string_view> first_unknown;
    for (auto [key, value] : object) {
      size_t i = 0;
      while (i < kFieldNames.size() && kFieldNames[i] != key) i++;
      if (i < kFieldNames.size()) {
        values[i] = value;  // a later duplicate replaces an earlier one
      } else if (!first_unknown || key < *first_unknown) {
        first_unknown = key;
      }
    }
    if (first_unknown) {
      return Status::InvalidArgument("unknown field \"" + std::string(*first_unknown) + "\"",
                                     std::string(*first_unknown));
    }
  }
  std::optional<std::string> client_ip;
  KL_RETURN_IF_ERROR(ReadString(values, 0, &client_ip));
  if (!client_ip) return Status::InvalidArgument("client_ip is required", "client_ip");
  AuthorizeBody out;
  out.client_ip = std::move(*client_ip);
  KL_RETURN_IF_ERROR(ReadString(values, 1, &out.origin));
  KL_RETURN_IF_ERROR(ReadString(values, 2, &out.request_id));
  return out;
}

}  // namespace keyledger
