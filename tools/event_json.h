// Events as JSON, for the audit commands (`keyledger events dump`) and anyone
// who reads the log outside keyledger. One object per event:
//
//   {"sequence":7, "recorded_at":"2026-11-26T09:36:54.123456Z",
//    "recorded_at_us":1795...,"stream_id":"key/k_1","stream_version":2,
//    "event_id":"<32 hex>","actor":"operator","prev_hash":"<64 hex>",
//    "hash":"<64 hex>","type":"key_renamed","data":{...every body field...}}
//
// Field names in "data" are the snake_case names of ledger/event.h. Hashes and
// other bytes are lower-case hex; enums are snake_case names (e.g. "ip_not_allowed");
// times stay UTC microseconds (`..._us`). A webhook channel's signing secret
// is the one field not copied: it appears as "<redacted>" so dumps can leave
// the building.
//
// Strings are copied byte for byte, so a JSON value may hold invalid UTF-8
// (request body excerpts are raw bytes). Serialize with DumpJsonLine, which
// replaces invalid bytes with U+FFFD instead of throwing.
//
// Thread safety: stateless functions, safe to call concurrently.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "ledger/event.h"

namespace keyledger {

// Returns the JSON object of `event` (envelope and "data"). Covers every
// EventBody alternative; never fails.
nlohmann::json EventToJson(const Event& event);

// Returns `value` as one compact line (no trailing newline), with invalid
// UTF-8 replaced by U+FFFD. Never throws.
std::string DumpJsonLine(const nlohmann::json& value);

}  // namespace keyledger
