// CLI11 validators shared by the subcommands' flag definitions (main.cc and
// the benchmarks that register their own flags).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "billing/calendar.h"

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

}  // namespace keyledger::tools
