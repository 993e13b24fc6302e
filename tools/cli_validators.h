// CLI11 validators shared by the subcommands' flag definitions (main.cc and
// the benchmarks that register their own flags).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "billing/calendar.h"
#include "ledger/ledger.h"

namespace keyledger::tools {

// --month: what ParseBillingMonth accepts (YYYY-MM), checked before any work.
inline CLI::Validator BillingMonthValidator() {
  return CLI::Validator(
      [](std::string& text) {
        auto month = ParseBillingMonth(text, "month");
        return month.ok() ? std::string() : month.ToStatus().message();
      },
      "YYYY-MM");
}

// For unsigned flags: CLI11 reads "-1" into an unsigned integer as its
// largest value, which a range check then passes.
inline CLI::Validator NotNegative() {
  return CLI::Validator(
      [](std::string& text) {
        return text.find('-') == std::string::npos ? std::string() : "must not be negative";
      },
      "");
}

// For text flags whose empty value would silently mean "not given" (a pin
// from an unset shell variable must not skip the check it asks for).
inline CLI::Validator NotEmpty() {
  return CLI::Validator(
      [](std::string& text) { return text.empty() ? std::string("must not be empty") : ""; }, "");
}

// --stream: a stream id the ledger could hold (ValidateStreamId).
inline CLI::Validator StreamIdValidator() {
  return CLI::Validator(
      [](std::string& text) {
        Status valid = ValidateStreamId(text);
        return valid.ok() ? std::string() : valid.message();
      },
      "ID");
}

// --until: a sequence number (checked against the head later) or an RFC 3339 time.
inline CLI::Validator SequenceOrTimeValidator() {
  return CLI::Validator(
      [](std::string& text) {
        if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
          return std::string();
        }
        auto at = ParseRfc3339(text, "until");
        return at.ok() ? std::string()
                       : "must be a sequence number or an RFC 3339 time: " + at.status().message();
      },
      "SEQ|RFC3339");
}

}  // namespace keyledger::tools
