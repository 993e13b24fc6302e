#include "billing/calendar.h"

#include <date/date.h>
#include <date/tz.h>

#include <chrono>
#include <sstream>

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

Result<int64_t> ParseRfc3339(std::string_view text, std::string_view field) {
  auto fail = [&] {
    return Status::InvalidArgument(
        "expected an RFC 3339 time such as \"2026-11-01T00:00:00Z\"", std::string(field));
  };
  if (text.size() < 20 || text.size() > 40) return fail();
  std::string s(text);
  bool zulu = s.back() == 'Z' || s.back() == 'z';
  std::istringstream in(zulu ? s.substr(0, s.size() - 1) : s);
  date::sys_time<std::chrono::microseconds> t;
  if (zulu) {
    in >> date::parse("%FT%T", t);
  } else {
    in >> date::parse("%FT%T%Ez", t);
  }
  if (in.fail() || in.peek() != std::char_traits<char>::eof()) return fail();
  return static_cast<int64_t>(t.time_since_epoch().count());
}

}  // namespace keyledger
