// The audit endpoints of the Service: key history and point-in-time state.
#include <charconv>

#include "api/service_internal.h"
#include "billing/calendar.h"
#include "projections/key_history.h"

namespace keyledger {

Result<KeyView> Service::Impl::KeyForAudit(const Principal& who, const WorkspaceView& ws,
                                           std::string_view key_id) const {
  auto k = state().FindKey(key_id);
  if (!k || k->workspace_id != ws.id || (k->deleted && !who.is_operator)) {
    return Status::NotFound("no key " + std::string(key_id) + " in this workspace", "key");
  }
  return *k;
}

Result<HttpResponse> Service::Impl::KeyHistoryResponse(const Principal& who,
                                                       const WorkspaceView& ws,
                                                       std::string_view key_id) {
  KL_ASSIGN_OR_RETURN(KeyView key, KeyForAudit(who, ws, key_id));
  KL_ASSIGN_OR_RETURN(std::vector<KeyChange> history, KeyHistory(*d.ledger, key.id));
  Json events = Json::array();
  for (const auto& c : history) {
    events.push_back({{"sequence", c.sequence}, {"recorded_at", FormatRfc3339(c.recorded_at_us)},
                      {"actor", c.actor}, {"type", c.type}, {"changes", c.changes}});
  }
  return JsonResponse(200, {{"key_id", key.id}, {"events", events}});
}

Result<HttpResponse> Service::Impl::KeyAsOfResponse(const HttpRequest& req, const Principal& who,
                                                    const WorkspaceView& ws,
                                                    std::string_view key_id) {
  KL_ASSIGN_OR_RETURN(KeyView key, KeyForAudit(who, ws, key_id));
  std::string_view as_of = QueryParam(QueryOf(req), "as_of");
  uint64_t sequence = 0;
  auto [end, ec] = std::from_chars(as_of.data(), as_of.data() + as_of.size(), sequence);
  if (ec != std::errc() || end != as_of.data() + as_of.size()) {
    // Not a sequence: an RFC 3339 time, resolved to the last event recorded by
    // then (none: the key did not exist yet). from_chars may have read the
    // year's digits into `sequence`.
    sequence = 0;
    KL_ASSIGN_OR_RETURN(int64_t at_us, ParseRfc3339(PercentDecode(as_of), "as_of"));
    KL_ASSIGN_OR_RETURN(auto history, KeyHistory(*d.ledger, key.id));
    for (const auto& c : history) {
      if (c.recorded_at_us <= at_us) sequence = c.sequence;
    }
  }
  KL_ASSIGN_OR_RETURN(std::optional<KeyView> then, KeyAsOf(*d.ledger, key.id, sequence));
  if (!then) return Status::NotFound("the key did not exist yet at " + std::string(as_of), "as_of");
  Json j = KeyJson(*then);
  j["deleted"] = then->deleted;
  j["as_of"] = std::string(as_of);
  return JsonResponse(200, j);
}

}  // namespace keyledger
