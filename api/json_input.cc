#include "api/json_input.h"

namespace keyledger {
namespace {

std::string Field(std::string_view f) { return std::string(f); }

// Returns the number of code points, or -1 when `s` is not valid UTF-8 or
// holds a control character.
int64_t CountCleanCodePoints(std::string_view s) {
  int64_t count = 0;
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<uint8_t>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return -1;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
      auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return -1;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
    if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0) || cp == 0x2028 || cp == 0x2029) {
      return -1;
    }
    count++;
    i += len;
  }
  return count;
}

}  // namespace

Result<Json> ParseObject(std::string_view body, std::initializer_list<std::string_view> allowed) {
  if (body.empty()) return Json::object();
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidArgument("request body is not valid JSON");
  if (!j.is_object()) return Status::InvalidArgument("request body must be a JSON object");
  for (const auto& [name, value] : j.items()) {
    bool known = false;
    for (auto a : allowed) known |= (a == name);
    if (!known) return Status::InvalidArgument("unknown field \"" + name + "\"", name);
  }
  return j;
}

Result<std::optional<std::string>> OptionalString(const Json& object, std::string_view field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return Status::InvalidArgument("must be a string", Field(field));
  return std::optional<std::string>(it->get<std::string>());
}

Result<std::optional<int64_t>> OptionalInt(const Json& object, std::string_view field,
                                           int64_t min, int64_t max) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) return Status::InvalidArgument("must be an integer", Field(field));
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return Status::InvalidArgument("must be at most " + std::to_string(max), Field(field));
  }
  int64_t v = it->get<int64_t>();
  if (v < min || v > max) {
    return Status::InvalidArgument(
        "must be between " + std::to_string(min) + " and " + std::to_string(max), Field(field));
  }
  return std::optional<int64_t>(v);
}

Result<std::optional<bool>> OptionalBool(const Json& object, std::string_view field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::optional<bool>();
  if (!it->is_boolean()) return Status::InvalidArgument("must be true or false", Field(field));
  return std::optional<bool>(it->get<bool>());
}

Result<std::optional<std::vector<std::string>>> OptionalStringList(const Json& object,
                                                                   std::string_view field,
                                                                   size_t entries_max) {
  using Out = std::optional<std::vector<std::string>>;
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return Out();
  if (!it->is_array()) return Status::InvalidArgument("must be an array of strings", Field(field));
  if (it->size() > entries_max) {
    return Status::InvalidArgument("at most " + std::to_string(entries_max) + " entries",
                                   Field(field));
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < it->size(); i++) {
    const Json& v = (*it)[i];
    if (!v.is_string()) {
      return Status::InvalidArgument("must be a string",
                                     Field(field) + "[" + std::to_string(i) + "]");
    }
    out.push_back(v.get<std::string>());
  }
  return Out(std::move(out));
}

Result<std::string> CleanText(std::string_view text, std::string_view field, size_t chars_max,
                              bool required) {
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  int64_t chars = CountCleanCodePoints(text);
  if (chars < 0) {
    return Status::InvalidArgument("must be valid UTF-8 without control characters",
                                   Field(field));
  }
  if (required && chars == 0) return Status::InvalidArgument("must not be blank", Field(field));
  if (static_cast<size_t>(chars) > chars_max) {
    return Status::InvalidArgument("must be at most " + std::to_string(chars_max) + " characters",
                                   Field(field));
  }
  return std::string(text);
}

}  // namespace keyledger
