// UsageFold: a month's billable units per workspace and key, folded from
// ApiCallRecorded events. Pure in-memory state; nothing here reads a clock or
// touches storage (the caller persists and restores it by replaying events).
//
// A call counts toward the billing month that its occurred_at_us falls in, in
// the time zone the caller passes (the workspace's billing_timezone in effect
// when the call is applied).
//
// Thread safety: not thread-safe. A UsageFold needs external synchronization
// if it is used from more than one thread (const queries included, when
// another thread may Apply).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "billing/calendar.h"
#include "ledger/event.h"
#include "ledger/status.h"

namespace keyledger {

class UsageFold {
 public:
  UsageFold() = default;
  UsageFold(const UsageFold&) = default;
  UsageFold& operator=(const UsageFold&) = default;

  // Adds call.units to (call.workspace_id, MonthOf(call.occurred_at_us,
  // workspace_timezone), call.key_id). A call with 0 units changes nothing
  // (but its time and zone are still checked). On error nothing changes.
  // Errors: those of MonthOf (InvalidArgument "billing_timezone" or
  // "occurred_at"); ResourceExhausted field "units" if the month's total for
  // the workspace would exceed UINT64_MAX.
  Status Apply(const ApiCallRecorded& call, std::string_view workspace_timezone);

  // Returns the units of `workspace_id` in `month`, summed over its keys; 0 if
  // none were applied.
  uint64_t Quantity(std::string_view workspace_id, const BillingMonth& month) const;

  // Returns (key_id, units) of `workspace_id` in `month` for every key with
  // units > 0, sorted by key id; empty if none. The units sum to Quantity().
  std::vector<std::pair<std::string, uint64_t>> KeyQuantities(std::string_view workspace_id,
                                                              const BillingMonth& month) const;

  // Returns the months in which `workspace_id` has units, oldest first.
  std::vector<BillingMonth> Months(std::string_view workspace_id) const;

 private:
  struct MonthUsage {
    uint64_t total = 0;
    std::map<std::string, uint64_t, std::less<>> by_key;  // units > 0 only
  };
  using MonthMap = std::map<BillingMonth, MonthUsage>;

  // Returns the month of `utc_us` in `timezone`, from the cache when it covers
  // that zone and instant, else via MonthOf (refilling the cache).
  Result<BillingMonth> ResolveMonth(int64_t utc_us, std::string_view timezone);
  const MonthUsage* Find(std::string_view workspace_id, const BillingMonth& month) const;

  std::map<std::string, MonthMap, std::less<>> workspaces_;

  // One-entry cache of the last month resolved: calls arrive mostly in time
  // order, so this spares the time-zone lookups on replay.
  std::string cached_zone_;
  BillingMonth cached_month_;
  int64_t cached_start_us_ = 0;
  int64_t cached_end_us_ = 0;  // start == end: the cache is empty
};

}  // namespace keyledger
