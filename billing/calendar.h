// Calendar and time-zone helpers: the only code that touches Howard Hinnant's
// date/tz. Events carry UTC microseconds; calendars appear only here.
//
// Thread safety: stateless functions, safe to call concurrently (the tz
// database is loaded once, thread-safely, by the date library).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ledger/status.h"

namespace keyledger {

// Returns OK if `name` is an IANA time zone known to the system tz database,
// InvalidArgument (field `field`) otherwise.
Status ValidateTimeZone(std::string_view name, std::string_view field);

// Formats UTC microseconds as RFC 3339 with microseconds, e.g.
// "2026-11-26T09:36:54.123456Z".
std::string FormatRfc3339(int64_t utc_us);

// Parses RFC 3339 ("2026-11-26T09:36:54Z", fractional seconds and numeric
// offsets allowed). Returns InvalidArgument (field `field`) on anything else.
Result<int64_t> ParseRfc3339(std::string_view text, std::string_view field);

}  // namespace keyledger
