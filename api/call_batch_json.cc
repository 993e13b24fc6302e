#include "api/call_batch_json.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "api/json_body_simd.h"
#include "billing/calendar.h"

// simdjson reports errors as codes (exceptions are not used here: every call
// goes through .get(), which returns an error_code).

namespace keyledger {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

// The fields of one call, in the order their errors are reported (their
// names, below, are the API's: never rename).
enum class CallField : uint8_t {
  kRequestId,
  kKeyId,
  kOccurredAt,
  kMethod,
  kPath,
  kClientIp,
  kOrigin,
  kStatus,
  kUnits,
  kRequestBytes,
  kResponseBytes,
  kLatencyMs,
  kRequest,
  kResponse,
  kCount,
};

constexpr std::array<std::string_view, static_cast<size_t>(CallField::kCount)> kCallFieldNames = {
    "request_id", "key_id",        "occurred_at", "method",  "path",
    "client_ip",  "origin",        "status",      "units",   "request_bytes",
    "response_bytes", "latency_ms", "request",    "response"};
static_assert(kCallFieldNames.back() == "response", "one name per CallField, in order");

// The longest latency the metrics' histograms bucket within their error
// bound (kLatencyTrackedUsMax, ~71.6 minutes). Only reported latencies are
// held to it: the gateway records what it measured, however long, and the
// histograms count a longer one in their last bucket (max stays exact).
constexpr double kLatencyMsMax = 4'294'967.295;

std::optional<CallField> FindCallField(std::string_view name) {
  for (size_t i = 0; i < kCallFieldNames.size(); i++) {
    if (kCallFieldNames[i] == name) return static_cast<CallField>(i);
  }
  return std::nullopt;
}

// The members of an object, last value per key (as a std::map-backed DOM
// keeps them), in key order.
std::vector<std::pair<std::string_view, element>> LastValuesInKeyOrder(object obj) {
  std::vector<std::pair<std::string_view, element>> members;
  for (auto [key, value] : obj) members.emplace_back(key, value);
  std::stable_sort(members.begin(), members.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  // Of equal keys, stable_sort kept document order: keep the last of each run.
  std::vector<std::pair<std::string_view, element>> out;
  for (size_t i = 0; i < members.size(); i++) {
    if (i + 1 < members.size() && members[i + 1].first == members[i].first) continue;
    out.push_back(members[i]);
  }
  return out;
}

// One call object's known members (last value each) and its smallest unknown name.
struct CallMembers {
  std::array<std::optional<element>, static_cast<size_t>(CallField::kCount)> values;
  std::optional<std::string_view> first_unknown;

  // Returns the value of `field`, or nullopt when absent or null.
  std::optional<element> Get(CallField field) const {
    const auto& v = values[static_cast<size_t>(field)];
    if (!v || v->type() == element_type::NULL_VALUE) return std::nullopt;
    return v;
  }
};

CallMembers ReadMembers(object obj) {
  CallMembers m;
  for (auto [key, value] : obj) {
    if (auto field = FindCallField(key)) {
      m.values[static_cast<size_t>(*field)] = value;
    } else if (!m.first_unknown || key < *m.first_unknown) {
      m.first_unknown = key;
    }
  }
  return m;
}

bool IsInteger(element v) {
  return v.type() == element_type::INT64 || v.type() == element_type::UINT64;
}

bool IsNumber(element v) { return IsInteger(v) || v.type() == element_type::DOUBLE; }

// The value as a double (any number type). REQUIRES: IsNumber(v).
double NumberValue(element v) {
  switch (v.type()) {
    case element_type::INT64:
      return static_cast<double>(v.get_int64().value_unsafe());
    case element_type::UINT64:
      return static_cast<double>(v.get_uint64().value_unsafe());
    default:
      return v.get_double().value_unsafe();
  }
}

// Reads and checks one call; errors name `prefix` + the field.
class CallReader {
 public:
  CallReader(const CallMembers& members, std::string prefix)
      : m_(members), prefix_(std::move(prefix)) {}

  // Fills *report, which is left partly filled on error. (Read in place: a
  // call moved through a Result and into the vector cost three moves of its
  // nine strings per call.)
  Status Read(CallReport* report) {
    if (m_.first_unknown) {
      return Status::InvalidArgument("unknown field \"" + std::string(*m_.first_unknown) + "\"",
                                     prefix_ + std::string(*m_.first_unknown));
    }
    ApiCallRecorded& c = report->call;
    KL_RETURN_IF_ERROR(String(CallField::kRequestId, &c.request_id));
    KL_RETURN_IF_ERROR(String(CallField::kKeyId, &c.key_id));
    std::string occurred_at;
    KL_RETURN_IF_ERROR(String(CallField::kOccurredAt, &occurred_at));
    if (occurred_at.empty()) return Invalid("occurred_at is required", CallField::kOccurredAt);
    auto occurred_at_us = ParseRfc3339(occurred_at, "occurred_at");
    if (!occurred_at_us.ok()) {
      return Invalid(occurred_at_us.status().message(), CallField::kOccurredAt);
    }
    c.occurred_at_us = *occurred_at_us;
    KL_RETURN_IF_ERROR(String(CallField::kMethod, &c.method));
    KL_RETURN_IF_ERROR(String(CallField::kPath, &c.path));
    KL_RETURN_IF_ERROR(String(CallField::kClientIp, &c.client_ip));
    KL_RETURN_IF_ERROR(String(CallField::kOrigin, &c.origin));
    std::optional<int64_t> status, units, request_bytes, response_bytes;
    KL_RETURN_IF_ERROR(Int(CallField::kStatus, 999, &status));
    if (!status) return Invalid("status is required", CallField::kStatus);
    c.status = static_cast<uint16_t>(*status);
    KL_RETURN_IF_ERROR(Int(CallField::kUnits, static_cast<int64_t>(kCallUnitsMax), &units));
    if (units) report->units = static_cast<uint64_t>(*units);
    KL_RETURN_IF_ERROR(Int(CallField::kRequestBytes, INT64_MAX, &request_bytes));
    KL_RETURN_IF_ERROR(Int(CallField::kResponseBytes, INT64_MAX, &response_bytes));
    c.request_bytes = static_cast<uint64_t>(request_bytes.value_or(0));
    c.response_bytes = static_cast<uint64_t>(response_bytes.value_or(0));
    KL_RETURN_IF_ERROR(LatencyUs(&c.latency_us));
    KL_RETURN_IF_ERROR(Excerpt(CallField::kRequest, &c.request));
    KL_RETURN_IF_ERROR(Excerpt(CallField::kResponse, &c.response));
    return Status::Ok();
  }

 private:
  std::string Name(CallField field) const {
    return prefix_ + std::string(kCallFieldNames[static_cast<size_t>(field)]);
  }
  Status Invalid(std::string message, CallField field) const {
    return Status::InvalidArgument(std::move(message), Name(field));
  }

  // Absent or null leaves `out` as it is.
  Status String(CallField field, std::string* out) const {
    auto v = m_.Get(field);
    if (!v) return Status::Ok();
    std::string_view text;
    if (v->get(text) != simdjson::SUCCESS) return Invalid("must be a string", field);
    out->assign(text);
    return Status::Ok();
  }

  // An integer in [0, max]; absent or null gives nullopt.
  Status Int(CallField field, int64_t max, std::optional<int64_t>* out) const {
    auto v = m_.Get(field);
    if (!v) return Status::Ok();
    if (!IsInteger(*v)) return Invalid("must be an integer", field);
    if (v->type() == element_type::UINT64) {  // simdjson: only above INT64_MAX
      return Invalid("must be at most " + std::to_string(max), field);
    }
    const int64_t value = v->get_int64().value_unsafe();
    if (value < 0 || value > max) {
      return Invalid("must be between 0 and " + std::to_string(max), field);
    }
    *out = value;
    return Status::Ok();
  }

  // Milliseconds may be fractional on the wire; stored as integer µs.
  Status LatencyUs(uint64_t* out) const {
    auto v = m_.Get(CallField::kLatencyMs);
    if (!v) return Status::Ok();
    if (!IsNumber(*v) || NumberValue(*v) < 0 || NumberValue(*v) > kLatencyMsMax) {
      return Invalid("must be a number of milliseconds, 0..4294967.295", CallField::kLatencyMs);
    }
    *out = IsInteger(*v) ? static_cast<uint64_t>(NumberValue(*v)) * 1000
                         : static_cast<uint64_t>(NumberValue(*v) * 1000.0 + 0.5);
    return Status::Ok();
  }

  Status Excerpt(CallField field, HttpExcerpt* out) const {
    auto v = m_.Get(field);
    if (!v) return Status::Ok();
    object obj;
    if (v->get(obj) != simdjson::SUCCESS) return Invalid("must be an object", field);
    std::optional<element> headers, body;
    for (auto [key, value] : obj) {  // other members are ignored; the last of each counts
      if (key == "headers") headers = value;
      if (key == "body_excerpt") body = value;
    }
    if (headers && headers->type() != element_type::NULL_VALUE) {
      object header_obj;
      if (headers->get(header_obj) != simdjson::SUCCESS) {
        return Status::InvalidArgument("must be an object of header: value",
                                       Name(field) + ".headers");
      }
      for (const auto& [header, value] : LastValuesInKeyOrder(header_obj)) {
        std::string_view text;
        if (value.get(text) != simdjson::SUCCESS) {
          return Status::InvalidArgument("must be a string",
                                         Name(field) + ".headers." + std::string(header));
        }
        out->headers.push_back(HttpHeader{std::string(header), std::string(text)});
      }
    }
    if (body && body->type() != element_type::NULL_VALUE) {
      std::string_view text;
      if (body->get(text) != simdjson::SUCCESS) {
        return Status::InvalidArgument("must be a string", Name(field) + ".body_excerpt");
      }
      out->body_excerpt.assign(text);
    }
    return Status::Ok();
  }

  const CallMembers& m_;
  const std::string prefix_;
};

}  // namespace

Status CallBatchTooLarge(size_t calls_max) {
  return Status::InvalidArgument("at most " + std::to_string(calls_max) + " calls per request",
                                 "calls");
}

Result<std::vector<CallReport>> ParseCallBatch(std::string_view body, size_t calls_max) {
  std::vector<CallReport> reports;
  if (body.empty()) return Status::InvalidArgument("calls must be an array", "calls");
  simdjson::dom::parser parser;
  KL_ASSIGN_OR_RETURN(object top, ParseBodyObject(&parser, body, kCallBatchDepthMax));
  std::optional<element> calls;
  std::optional<std::string_view> first_unknown;
  for (auto [key, value] : top) {
    if (key == "calls") {
      calls = value;
    } else if (!first_unknown || key < *first_unknown) {
      first_unknown = key;
    }
  }
  if (first_unknown) {
    return Status::InvalidArgument("unknown field \"" + std::string(*first_unknown) + "\"",
                                   std::string(*first_unknown));
  }
  simdjson::dom::array items;
  if (!calls || calls->get(items) != simdjson::SUCCESS) {
    return Status::InvalidArgument("calls must be an array", "calls");
  }
  if (items.size() > calls_max) return CallBatchTooLarge(calls_max);
  reports.reserve(items.size());
  size_t i = 0;
  for (element item : items) {
    const std::string index = "calls[" + std::to_string(i) + "]";
    object call;
    if (item.get(call) != simdjson::SUCCESS) return Status::InvalidArgument("must be an object", index);
    KL_RETURN_IF_ERROR(CallReader(ReadMembers(call), index + ".").Read(&reports.emplace_back()));
    i++;
  }
  return reports;
}

}  // namespace keyledger
