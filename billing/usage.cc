#include "billing/usage.h"

#include <cassert>
#include <limits>

namespace keyledger {

Result<BillingMonth> UsageFold::ResolveMonth(int64_t utc_us, std::string_view timezone) {
  if (cached_start_us_ <= utc_us && utc_us < cached_end_us_ && cached_zone_ == timezone) {
    return cached_month_;
  }
  KL_ASSIGN_OR_RETURN(BillingMonth month, MonthOf(utc_us, timezone));
  KL_ASSIGN_OR_RETURN(auto bounds, MonthBoundsUs(month, timezone));
  assert(bounds.first <= utc_us && utc_us < bounds.second);
  cached_zone_.assign(timezone);
  cached_month_ = month;
  cached_start_us_ = bounds.first;
  cached_end_us_ = bounds.second;
  return month;
}

Status UsageFold::Apply(const ApiCallRecorded& call, std::string_view workspace_timezone) {
  KL_ASSIGN_OR_RETURN(BillingMonth month, ResolveMonth(call.occurred_at_us, workspace_timezone));
  if (call.units == 0) return Status::Ok();
  const MonthUsage* existing = Find(call.workspace_id, month);
  if (existing != nullptr &&
      existing->total > std::numeric_limits<uint64_t>::max() - call.units) {
    return Status::ResourceExhausted("the month's units would exceed 2^64-1", "units");
  }
  auto ws = workspaces_.find(call.workspace_id);
  if (ws == workspaces_.end()) ws = workspaces_.emplace(call.workspace_id, MonthMap{}).first;
  MonthUsage& usage = ws->second[month];
  usage.total += call.units;
  auto key = usage.by_key.find(call.key_id);
  if (key == usage.by_key.end()) key = usage.by_key.emplace(call.key_id, 0).first;
  key->second += call.units;  // <= usage.total: no overflow
  return Status::Ok();
}

const UsageFold::MonthUsage* UsageFold::Find(std::string_view workspace_id,
                                             const BillingMonth& month) const {
  auto ws = workspaces_.find(workspace_id);
  if (ws == workspaces_.end()) return nullptr;
  auto it = ws->second.find(month);
  return it == ws->second.end() ? nullptr : &it->second;
}

uint64_t UsageFold::Quantity(std::string_view workspace_id, const BillingMonth& month) const {
  const MonthUsage* usage = Find(workspace_id, month);
  return usage == nullptr ? 0 : usage->total;
}

std::vector<std::pair<std::string, uint64_t>> UsageFold::KeyQuantities(
    std::string_view workspace_id, const BillingMonth& month) const {
  std::vector<std::pair<std::string, uint64_t>> out;
  const MonthUsage* usage = Find(workspace_id, month);
  if (usage == nullptr) return out;
  out.reserve(usage->by_key.size());
  for (const auto& [key_id, units] : usage->by_key) out.emplace_back(key_id, units);
  return out;
}

std::vector<BillingMonth> UsageFold::Months(std::string_view workspace_id) const {
  std::vector<BillingMonth> out;
  auto ws = workspaces_.find(workspace_id);
  if (ws == workspaces_.end()) return out;
  for (const auto& entry : ws->second) out.push_back(entry.first);
  return out;
}

}  // namespace keyledger
