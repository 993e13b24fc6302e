// Reading the body of POST /v1/calls: {"calls":[{...}, ...]}.
//
// This is the recording hot path (a gateway posts every call it served), so
// it is parsed with simdjson (a flat tape, no allocation per value) instead of
// nlohmann's DOM, which cost about 4 µs per call. The rules are those of the
// other request bodies (api/json_input.h): wrong types, unknown fields and
// malformed text are InvalidArgument naming the field, with null read as
// absent; a key given twice counts with its last value.
//
// Thread safety: stateless function.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "api/data_plane.h"
#include "ledger/status.h"

namespace keyledger {

// JSON nesting the body may have: {"calls":[{"request":{"headers":{}}}]} is
// 5 levels; deeper bodies are refused as malformed.
inline constexpr size_t kCallBatchDepthMax = 8;

// Parses the whole batch. Checked here: the shape, every field's type and
// range, occurred_at (required, RFC 3339) and status (required, 0..999); the
// rest (request_id and key_id present, known keys, lateness, batch size) is
// DataPlane::RecordCalls's.
// Returns the reports in order, or InvalidArgument naming the first bad
// field: an unknown top-level field (the smallest name) first, then "calls"
// when it is missing or not an array, then the first call with an error, as
// "calls[i]" or "calls[i].<field>", checked in this order: unknown field (the
// smallest name), request_id, key_id, occurred_at, method, path, client_ip,
// origin, status, units, request_bytes, response_bytes, latency_ms, request,
// Before any call is read, a batch of more than `calls_max` calls is refused
// with CallBatchTooLarge (field "calls"), whatever its items hold.
Result<std::vector<CallReport>> ParseCallBatch(std::string_view body, size_t calls_max);

// Returns the InvalidArgument (field "calls") for a batch of more than
// `calls_max` calls.
Status CallBatchTooLarge(size_t calls_max);

}  // namespace keyledger
