#include "api/http_types.h"

#include <cassert>
#include <nlohmann/json.hpp>

namespace keyledger {

std::string_view HttpRequest::Header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return {};
}

HttpResponse JsonError(int status, std::string_view code, std::string_view message,
                       std::string_view field) {
  assert(!code.empty());
  nlohmann::ordered_json error;
  error["code"] = std::string(code);
  error["message"] = std::string(message);
  if (!field.empty()) error["field"] = std::string(field);
  nlohmann::ordered_json root;
  root["error"] = std::move(error);

  HttpResponse response;
  response.status = status;
  response.headers.emplace_back("content-type", "application/json");
  // `replace` instead of the default `strict`: a message quoting client input
  // with invalid UTF-8 must not throw.
  response.body = root.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  return response;
}

}  // namespace keyledger
