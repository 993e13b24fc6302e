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

// GET .../keys/{key}/history?cursor=V&limit=N: the key's lifecycle events
// from stream version V (default 1), oldest first.
Result<HttpResponse> Service::Impl::KeyHistoryResponse(const HttpRequest& req,
                                                       const Principal& who,
                                                       const WorkspaceView& ws,
                                                       std::string_view key_id) {
  KL_ASSIGN_OR_RETURN(KeyView key, KeyForAudit(who, ws, key_id));
  KL_ASSIGN_OR_RETURN(HistoryPageRequest request, HistoryPage(QueryOf(req), o));
  KL_ASSIGN_OR_RETURN(KeyHistoryPage page,
                      KeyHistory(*d.ledger, key.id, request.from_version, request.limit));
  Json events = Json::array();
  for (const auto& c : page.changes) {
    events.push_back({{"sequence", c.sequence}, {"recorded_at", FormatRfc3339(c.recorded_at_us)},
                      {"actor", c.actor}, {"type", c.type}, {"changes", c.changes}});
  }
  Json next = page.next_version == 0 ? Json(nullptr) : Json(std::to_string(page.next_version));
  return JsonResponse(200, {{"key_id", key.id}, {"events", events}, {"next_cursor", next}});
}

Result<HttpResponse> Service::Impl::KeyAsOfResponse(const HttpRequest& req, const Principal& who,
                                                    const WorkspaceView& ws,
                                                    std::string_view key_id) {
  KL_ASSIGN_OR_RETURN(KeyView key, KeyForAudit(who, ws, key_id));
  const std::string as_of = PercentDecode(QueryParam(QueryOf(req), "as_of"));
  LogPoint at;
  uint64_t sequence = 0;
  auto [end, ec] = std::from_chars(as_of.data(), as_of.data() + as_of.size(), sequence);
  if (ec == std::errc() && end == as_of.data() + as_of.size()) {
    at = LogPoint::AtSequence(sequence);
  } else {
    // Not a sequence: an RFC 3339 time (from_chars may have read its year).
    KL_ASSIGN_OR_RETURN(int64_t at_us, ParseRfc3339(as_of, "as_of"));
    at = LogPoint::AtTime(at_us);
  }
  KL_ASSIGN_OR_RETURN(KeyAsOfView then, KeyAsOf(*d.ledger, key.id, at));
  if (!then.key) return Status::NotFound("the key did not exist yet at " + as_of, "as_of");
  Json j = KeyJson(*then.key);
  j["deleted"] = then.key->deleted;
  j["as_of"] = as_of;
  j["as_of_sequence"] = then.sequence;
  return JsonResponse(200, j);
}

}  // namespace keyledger
