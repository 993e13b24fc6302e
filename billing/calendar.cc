#include "billing/calendar.h"

#include <date/date.h>
#include <date/tz.h>

#include <cassert>
#include <chrono>
#include <exception>

namespace keyledger {

Status ValidateTimeZone(std::string_view name, std::string_view field) {
  if (name.empty() || name.size() > 64) {
    return Status::InvalidArgument("time zone must be an IANA name such as \"Asia/Seoul\"",
                                   std::string(field));
  }
  try {
    (void)date::locate_zone(name);
  } catch (const std::exception&) {
    return Status::InvalidArgument("unknown time zone \"" + std::string(name) +
                                       "\"; use an IANA name such as \"Asia/Seoul\"",
                                   std::string(field));
  }
  return Status::Ok();
}

std::string FormatRfc3339(int64_t utc_us) {
  date::sys_time<std::chrono::microseconds> t{std::chrono::microseconds(utc_us)};
  return date::format("%FT%TZ", t);
}

namespace {

// Reads `n` decimal digits at text[*pos]. Returns false if any is not a digit.
bool ReadDigits(std::string_view text, size_t* pos, int n, int* out) {
  if (*pos + n > text.size()) return false;
  int v = 0;
  for (int i = 0; i < n; i++) {
    char c = text[*pos + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *pos += n;
  *out = v;
  return true;
}

bool Expect(std::string_view text, size_t* pos, char c) {
  if (*pos >= text.size() || (text[*pos] != c && text[*pos] != (c | 0x20))) return false;
  ++*pos;
  return true;
}

}  // namespace

// A hand-rolled scanner (this is on the call-recording hot path); the
// calendar arithmetic and validation are date's.
Result<int64_t> ParseRfc3339(std::string_view text, std::string_view field) {
  auto fail = [&] {
    return Status::InvalidArgument(
        "expected an RFC 3339 time such as \"2026-11-01T00:00:00Z\"", std::string(field));
  };
  size_t pos = 0;
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  if (!ReadDigits(text, &pos, 4, &y) || !Expect(text, &pos, '-') ||
      !ReadDigits(text, &pos, 2, &mo) || !Expect(text, &pos, '-') ||
      !ReadDigits(text, &pos, 2, &d) || !Expect(text, &pos, 'T') ||
      !ReadDigits(text, &pos, 2, &h) || !Expect(text, &pos, ':') ||
      !ReadDigits(text, &pos, 2, &mi) || !Expect(text, &pos, ':') ||
      !ReadDigits(text, &pos, 2, &s)) {
    return fail();
  }
  int64_t micros = 0;
  if (pos < text.size() && text[pos] == '.') {
    pos++;
    int digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits < 6) micros = micros * 10 + (text[pos] - '0');
      digits++;
      pos++;
    }
    if (digits == 0 || digits > 9) return fail();
    for (int i = digits; i < 6; i++) micros *= 10;
  }
  int64_t offset_s = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    pos++;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    int sign = text[pos] == '-' ? -1 : 1;
    pos++;
    int oh, om;
    if (!ReadDigits(text, &pos, 2, &oh) || !Expect(text, &pos, ':') ||
        !ReadDigits(text, &pos, 2, &om) || oh > 23 || om > 59) {
      return fail();
    }
    offset_s = sign * (oh * 3600 + om * 60);
  } else {
    return fail();
  }
  if (pos != text.size() || h > 23 || mi > 59 || s > 60) return fail();
  date::year_month_day ymd{date::year(y), date::month(static_cast<unsigned>(mo)),
                           date::day(static_cast<unsigned>(d))};
  if (!ymd.ok()) return fail();
  // A leap second (":60") is read as the first instant of the next minute.
  auto t = date::sys_days(ymd) + std::chrono::hours(h) + std::chrono::minutes(mi) +
           std::chrono::seconds(s) - std::chrono::seconds(offset_s);
  return static_cast<int64_t>(
             std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count()) +
         micros;
}

// ---- Billing months -------------------------------------------------------------

namespace {

using Micros = std::chrono::microseconds;

// Instants further than this from 1970 (about 12,700 years) are rejected before
// any arithmetic, so adding a zone offset can never overflow.
constexpr int64_t kInstantAbsUsMax = int64_t{400'000'000} * 1'000'000'000;

bool ValidMonth(const BillingMonth& m) {
  return m.year >= kBillingYearMin && m.year <= kBillingYearMax && m.month >= 1 &&
         m.month <= 12;
}

Status UnknownZone(std::string_view name) {
  return Status::InvalidArgument("unknown time zone \"" + std::string(name) +
                                     "\"; use an IANA name such as \"Asia/Seoul\"",
                                 "billing_timezone");
}

// Turns an exception thrown by date while using an already located zone
// (its lazily loaded transitions) into a Status.
Status TzFailure(const std::exception& e) {
  return Status::Internal(std::string("time zone database: ") + e.what());
}

// Returns the zone named `name`, or InvalidArgument field "billing_timezone".
Result<const date::time_zone*> FindZone(std::string_view name) {
  if (name.empty() || name.size() > 64) return UnknownZone(name);
  try {
    return date::locate_zone(name);
  } catch (const std::exception&) {
    return UnknownZone(name);
  }
}

// Returns the first UTC microsecond of `month` in `zone`: local midnight of the
// 1st, its first occurrence if the clock repeats it, or the instant of the
// clock change if the clock skips it. May throw (date's lazy zone loading).
// REQUIRES: 1 <= month.month <= 12, |month.year| < 30000.
int64_t MonthStartUs(const date::time_zone* zone, const BillingMonth& month) {
  assert(month.month >= 1 && month.month <= 12);
  date::local_days first{date::year{month.year} / date::month{month.month} / 1};
  auto start = zone->to_sys(first, date::choose::earliest);
  return std::chrono::duration_cast<Micros>(start.time_since_epoch()).count();
}

// The body of MonthOf once the zone is found. May throw (see MonthStartUs).
Result<BillingMonth> MonthOfInZone(const date::time_zone* zone, int64_t utc_us) {
  auto range_error = [] {
    return Status::InvalidArgument("the time is outside the billing years 0001..9999",
                                   "occurred_at");
  };
  if (utc_us > kInstantAbsUsMax || utc_us < -kInstantAbsUsMax) return range_error();
  date::sys_time<Micros> t{Micros(utc_us)};
  date::year_month_day ymd{date::floor<date::days>(zone->to_local(t))};
  BillingMonth month{static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month())};
  // A clock turned back across midnight repeats the last local day of a month
  // after the next month has begun; such instants belong to the next month.
  if (ymd.day() == (ymd.year() / ymd.month() / date::last).day()) {
    BillingMonth next = NextMonth(month);
    if (utc_us >= MonthStartUs(zone, next)) month = next;
  }
  if (!ValidMonth(month)) return range_error();
  return month;
}

}  // namespace

std::string BillingMonth::ToString() const {
  assert(year >= 0 && month >= 1 && month <= 12);
  std::string out = std::to_string(year);
  if (out.size() < 4) out.insert(0, 4 - out.size(), '0');
  out.push_back('-');
  out.push_back(static_cast<char>('0' + month / 10));
  out.push_back(static_cast<char>('0' + month % 10));
  return out;
}

Result<BillingMonth> ParseBillingMonth(std::string_view text, std::string_view field) {
  size_t pos = 0;
  int year = 0, month = 0;
  if (!ReadDigits(text, &pos, 4, &year) || pos >= text.size() || text[pos++] != '-' ||
      !ReadDigits(text, &pos, 2, &month) || pos != text.size()) {
    return Status::InvalidArgument("expected a month such as \"2026-04\"", std::string(field));
  }
  BillingMonth result{year, static_cast<unsigned>(month)};
  if (!ValidMonth(result)) {
    return Status::InvalidArgument("month must be 01..12 and year 0001..9999",
                                   std::string(field));
  }
  return result;
}

Result<BillingMonth> MonthOf(int64_t utc_us, std::string_view timezone) {
  KL_ASSIGN_OR_RETURN(const date::time_zone* zone, FindZone(timezone));
  try {
    return MonthOfInZone(zone, utc_us);
  } catch (const std::exception& e) {
    return TzFailure(e);
  }
}

Result<std::pair<int64_t, int64_t>> MonthBoundsUs(const BillingMonth& month,
                                                  std::string_view timezone) {
  if (!ValidMonth(month)) {
    return Status::InvalidArgument("month must be 01..12 and year 0001..9999", "month");
  }
  KL_ASSIGN_OR_RETURN(const date::time_zone* zone, FindZone(timezone));
  try {
    int64_t start_us = MonthStartUs(zone, month);
    int64_t end_us = MonthStartUs(zone, NextMonth(month));
    assert(start_us < end_us);
    return std::make_pair(start_us, end_us);
  } catch (const std::exception& e) {
    return TzFailure(e);
  }
}

BillingMonth NextMonth(BillingMonth month) {
  assert(month.month >= 1 && month.month <= 12);
  if (month.month == 12) return BillingMonth{month.year + 1, 1};
  return BillingMonth{month.year, month.month + 1};
}

}  // namespace keyledger
