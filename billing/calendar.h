// Calendar and time-zone helpers: the only code that touches Howard Hinnant's
// date/tz. Events carry UTC microseconds; calendars appear only here.
//
// Thread safety: stateless functions, safe to call concurrently (the tz
// database is loaded once, thread-safely, by the date library).
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

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

// ---- Billing months -------------------------------------------------------------
//
// A billing month is a calendar month in a workspace's IANA billing time zone.
// Month m covers the UTC instants [MonthBoundsUs(m).first, MonthBoundsUs(m).second):
// it starts at the first instant whose local wall clock reads 00:00 on the 1st
// (or, where a clock change skips local midnight, the instant of that change)
// and ends where month m+1 starts. So the months of one zone are contiguous and
// disjoint, and MonthOf(t) == m exactly when t lies in m's bounds.
//
// NOTE: date reads the system's compiled zoneinfo (USE_OS_TZDB) and ignores the
// POSIX rule at the end of each file, so instants after a zone's last listed
// transition (2037 in Debian's files) keep that transition's offset: no DST
// from 2038 on. Both functions agree with each other there; they are only off
// by the DST hour against the real civil calendar.

// The years a billing month may have: the four-digit years of "YYYY-MM".
constexpr int kBillingYearMin = 1;
constexpr int kBillingYearMax = 9999;

struct BillingMonth {
  int year = 1970;      // kBillingYearMin..kBillingYearMax
  unsigned month = 1;   // 1..12

  // Returns "YYYY-MM", e.g. "2026-04" (the year zero-padded to at least four
  // digits). REQUIRES: year >= 0, 1 <= month <= 12.
  std::string ToString() const;

  auto operator<=>(const BillingMonth&) const = default;
};

// Parses exactly "YYYY-MM" (month 01..12, year kBillingYearMin..kBillingYearMax).
// Returns InvalidArgument (field `field`) on anything else.
Result<BillingMonth> ParseBillingMonth(std::string_view text, std::string_view field);

// Returns the billing month that the UTC instant `utc_us` falls in, in
// `timezone`. Errors: InvalidArgument field "billing_timezone" if `timezone`
// is not a known IANA zone; InvalidArgument field "occurred_at" if that month's
// year is outside kBillingYearMin..kBillingYearMax; Internal if the tz
// database fails while loading the zone's rules.
Result<BillingMonth> MonthOf(int64_t utc_us, std::string_view timezone);

// Returns [start, end) in UTC microseconds of `month` in `timezone` (see the
// rules above; DST makes a month's length differ from its days x 24 h).
// Errors: InvalidArgument field "billing_timezone" if `timezone` is unknown;
// InvalidArgument field "month" if `month` is not a valid billing month (month
// outside 1..12 or year outside kBillingYearMin..kBillingYearMax); Internal if
// the tz database fails while loading the zone's rules.
Result<std::pair<int64_t, int64_t>> MonthBoundsUs(const BillingMonth& month,
                                                  std::string_view timezone);

// Returns the month after `month` (December -> January of the next year). The
// result's year may be kBillingYearMax + 1, which MonthBoundsUs rejects.
// REQUIRES: 1 <= month.month <= 12.
BillingMonth NextMonth(BillingMonth month);

}  // namespace keyledger
