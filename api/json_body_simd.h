// The top-level object of a request body, parsed with simdjson: shared by
// the hot-path body readers (api/call_batch_json.cc, api/authorize_json.cc).
// Private to api/: it names simdjson's types.
//
// Thread safety: stateless function; `parser` needs external synchronization.
#pragma once

#include <simdjson.h>

#include <cstddef>
#include <string_view>

#include "ledger/status.h"

namespace keyledger {

// Parses `body` with `*parser` and returns its top-level object, valid until
// `*parser` parses again or is destroyed. A leading UTF-8 byte order mark is
// skipped. Counted as malformed, where nlohmann's parser (api/json_input.h)
// accepts them: nesting deeper than `depth_max`, and numbers beyond 64-bit
// integers or doubles (e.g. 1e400).
// Returns InvalidArgument (no field) "request body is not valid JSON" or
// "request body must be a JSON object"; Unavailable if the parser cannot
// allocate its buffers.
// REQUIRES: parser != nullptr; !body.empty().
Result<simdjson::dom::object> ParseBodyObject(simdjson::dom::parser* parser, std::string_view body,
                                              size_t depth_max);

}  // namespace keyledger
