// The Service's routing, authentication, management endpoints and /metrics.
#include "api/service.h"

#include <cassert>
#include <charconv>
#include <chrono>

#include "api/service_internal.h"
#include "billing/calendar.h"

namespace keyledger {

HttpResponse JsonResponse(int status, const Json& body) {
  HttpResponse r;
  r.status = status;
  r.headers.emplace_back("content-type", "application/json");
  r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return r;
}

// Segments of the longest API path (/v1/workspaces/{ws}/keys/{key}/...): one
// allocation for every route.
constexpr size_t kPathSegmentsTypical = 8;

HttpResponse NoContent() {
  HttpResponse r;
  r.status = 204;
  return r;
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  out.reserve(kPathSegmentsTypical);
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return out;
}

std::string_view QueryOf(const HttpRequest& req) {
  size_t q = req.target.find('?');
  return q == std::string::npos ? std::string_view() : std::string_view(req.target).substr(q + 1);
}

// Returns the raw value of query parameter `name` ("" if absent).
std::optional<std::string_view> FindQueryParam(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) {
      return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::string_view QueryParam(std::string_view query, std::string_view name) {
  return FindQueryParam(query, name).value_or(std::string_view());
}

// One page of a listing in id order: list(after, limit) with the request's
// `cursor` and `limit`, each item rendered by to_json, answered as
// {"<name>": [...], "next_cursor": the last id, or null on the last page}.
template <typename List, typename View>
Result<HttpResponse> ListPage(const HttpRequest& req, const ServiceOptions& o, const char* name,
                              List&& list, Json (*to_json)(const View&)) {
  const std::string_view query = QueryOf(req);
  KL_ASSIGN_OR_RETURN(size_t limit, PageSize(query, o));
  const std::vector<View> page = list(QueryParam(query, "cursor"), limit);
  Json items = Json::array();
  for (const View& v : page) items.push_back(to_json(v));
  Json next = page.size() == limit ? Json(page.back().id) : Json(nullptr);
  return JsonResponse(200, {{name, items}, {"next_cursor", next}});
}

Result<size_t> PageSize(std::string_view query, const ServiceOptions& o) {
  std::string_view text = QueryParam(query, "limit");
  if (text.empty()) return o.page_size_default;
  size_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < 1 || v > o.page_size_max) {
    return Status::InvalidArgument("limit must be an integer from 1 to " +
                                       std::to_string(o.page_size_max),
                                   "limit");
  }
  return v;
}

Result<HistoryPageRequest> HistoryPage(std::string_view query, const ServiceOptions& o) {
  HistoryPageRequest page;
  KL_ASSIGN_OR_RETURN(page.limit, PageSize(query, o));
  page.limit = std::min(page.limit, kHistoryPageMax);
  std::string_view cursor = QueryParam(query, "cursor");
  if (cursor.empty()) return page;
  auto [end, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), page.from_version);
  if (ec != std::errc() || end != cursor.data() + cursor.size() || page.from_version == 0) {
    return Status::InvalidArgument("cursor must be a positive integer", "cursor");
  }
  return page;
}

Json WorkspaceJson(const WorkspaceView& w) {
  return {{"id", w.id}, {"name", w.name}, {"tps_limit", w.tps_limit},
          {"billing_timezone", w.billing_timezone},
          {"price_plan", w.price_plan_id.empty() ? Json(nullptr) : Json(w.price_plan_id)},
          {"created_at", FormatRfc3339(w.created_at_us)},
          {"updated_at", FormatRfc3339(w.updated_at_us)}};
}

Json GroupJson(const SecurityGroupView& g) {
  return {{"id", g.id}, {"workspace_id", g.workspace_id}, {"name", g.name},
          {"ip_allow", g.ip_allow}, {"origin_allow", g.origin_allow},
          {"created_at", FormatRfc3339(g.created_at_us)},
          {"updated_at", FormatRfc3339(g.updated_at_us)}};
}

Json KeyJson(const KeyView& k) {
  Json j = {{"id", k.id}, {"workspace_id", k.workspace_id}, {"name", k.name},
            {"description", k.description}, {"security_group", k.security_group_id},
            {"logging", k.logging}, {"created_at", FormatRfc3339(k.created_at_us)},
            {"updated_at", FormatRfc3339(k.updated_at_us)},
            {"rotated_at", k.rotated_at_us ? Json(FormatRfc3339(k.rotated_at_us)) : Json(nullptr)}};
  if (k.old_secret_hash) {
    j["old_secret_valid_until"] = FormatRfc3339(k.old_secret_valid_until_us);
  }
  return j;
}

Hash HashSecret(std::string_view secret) { return HashBytes(secret); }

std::string PercentDecode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); i++) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 &&
        hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);  // '+' stays '+': times carry offsets like +09:00
    }
  }
  return out;
}

// Durations are measured on the monotonic clock, never the injected one.
uint64_t ElapsedUs(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now() - start)
                                   .count());
}


HttpResponse ErrorResponse(const Status& s) {
  assert(!s.ok());
  switch (s.code()) {
    case Code::kInvalidArgument:
      return JsonError(400, "invalid_argument", s.message(), s.field());
    case Code::kUnauthenticated:
      return JsonError(401, "unauthenticated", s.message(), s.field());
    case Code::kPermissionDenied:
      return JsonError(403, "permission_denied", s.message(), s.field());
    case Code::kNotFound:
      return JsonError(404, "not_found", s.message(), s.field());
    case Code::kFailedPrecondition:
    case Code::kConflict:
      return JsonError(409, "failed_precondition", s.message(), s.field());
    case Code::kResourceExhausted:
      // A size or amount limit of the stored state (rate limits answer 429
      // from the data plane directly, never through a Status).
      return JsonError(409, "failed_precondition", s.message(), s.field());
    case Code::kUnavailable:
      return JsonError(503, "unavailable", s.message());
    case Code::kIOError:
      // Storage paths and RocksDB's words are for the operator's log (see
      // Service::Handle), not for clients, who may retry: every write is
      // idempotent.
      return JsonError(503, "unavailable", "a storage operation failed; retry later");
    case Code::kOk:
    case Code::kCorruption:
    case Code::kInternal:
      break;
  }
  // Damaged stored data or a bug: the details (RocksDB's words, file names)
  // are for the operator's log.
  return JsonError(500, "internal", "an internal error occurred; the server's log has the details");
}


// GET /healthz: 200 while writes are accepted and the call projections
// follow the log; 503 naming what stopped (a supervisor should restart the
// server: both recover at start) otherwise.
HttpResponse Service::Impl::Health() const {
  Json failing = Json::array();
  if (!d.ledger->write_health().ok()) failing.push_back("ledger_writes");
  if (!d.calls->health().ok()) failing.push_back("call_projections");
  if (failing.empty()) {
    return JsonResponse(200, {{"status", "ok"}, {"ledger_head", d.ledger->head().sequence}});
  }
  return JsonResponse(503, {{"status", "failing"}, {"failing", failing},
                            {"ledger_head", d.ledger->head().sequence}});
}

Result<HttpResponse> Service::Impl::Route(const HttpRequest& req, bool trusted_operator) {
  std::string_view target = req.target;
  size_t q = target.find('?');
  std::vector<std::string_view> seg = SplitPath(target.substr(0, q));
  if (seg.size() == 1 && seg[0] == "healthz") return Health();
  if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "authorize") {
    if (req.method != "POST") return Status::InvalidArgument("use POST", "method");
    return Authorize(req);
  }
  if (req.method != "GET" && req.method != "HEAD" && !d.ledger->write_health().ok()) {
    return Status::Unavailable(
        "the server stopped accepting writes after a storage failure and needs a restart");
  }
  static constexpr std::string_view kTopLevel[] = {"workspaces", "calls", "ledger", "price-plans",
                                                   "invoice-runs"};
  if (seg.size() < 2 || seg[0] != "v1" ||
      std::find(std::begin(kTopLevel), std::end(kTopLevel), seg[1]) == std::end(kTopLevel)) {
    return Status::NotFound("no such endpoint: " + std::string(target.substr(0, q)));
  }
  Principal who{true, "", ""};
  if (!trusted_operator) {
    KL_ASSIGN_OR_RETURN(who, Authenticate(req));
  }
  if (seg.size() == 2 && seg[1] == "calls") {
    KL_RETURN_IF_ERROR(RequireOperator(who, "record calls"));
    if (req.method != "POST") return Status::InvalidArgument("use POST", "method");
    return RecordCalls(req);
  }
  // Commands hold the lock from validation to fold, so what they validated
  // is still true when their events land (and invoice numbers stay gap-free).
  std::unique_lock<std::mutex> command_lock(command_mu, std::defer_lock);
  if (req.method != "GET" && req.method != "HEAD") command_lock.lock();
  if (seg[1] == "calls" || seg[1] == "invoice-runs" || seg[1] == "ledger") {
    if (seg.size() != (seg[1] == "ledger" ? 3u : 2u)) return Status::NotFound("no such endpoint");
  }
  if (seg.size() == 3 && seg[1] == "ledger" && seg[2] == "head") {
    if (req.method != "GET") return Status::InvalidArgument("use GET", "method");
    KL_RETURN_IF_ERROR(RequireOperator(who, "read the ledger head"));
    LedgerHead head = d.ledger->head();
    return JsonResponse(200, {{"sequence", head.sequence}, {"hash", ToHex(head.hash)}});
  }
  if (seg[1] == "ledger") return Status::NotFound("no such endpoint");
  if (seg[1] == "price-plans") return PricePlans(req, who, seg);
  if (seg[1] == "invoice-runs" && seg.size() == 2) {
    if (req.method != "POST") return Status::InvalidArgument("use POST", "method");
    return InvoiceRun(req, who);
  }
  return Workspaces(req, who, seg);
}

Result<HttpResponse> Service::Impl::Workspaces(const HttpRequest& req, const Principal& who,
                                               const std::vector<std::string_view>& seg) {
  const std::string& m = req.method;
  if (seg.size() == 2) {
    if (m == "GET") {
      KL_RETURN_IF_ERROR(RequireOperator(who, "list workspaces"));
      return ListPage(req, o, "workspaces", [&](std::string_view after, size_t limit) {
        return state().ListWorkspaces(after, limit);
      }, WorkspaceJson);
    }
    if (m != "POST") return Status::InvalidArgument("use POST to create a workspace", "method");
    return CreateWorkspace(req, who);
  }
  KL_ASSIGN_OR_RETURN(WorkspaceView ws, Workspace(who, seg[2]));
  if (seg.size() == 3) {
    if (m == "GET") return JsonResponse(200, WorkspaceJson(ws));
    if (m == "PATCH") return PatchWorkspace(req, who, ws);
    return Status::InvalidArgument("use GET or PATCH on a workspace", "method");
  }
  std::string_view collection = seg[3];
  if (collection == "tokens") return Tokens(req, who, ws, seg);
  if (collection == "security-groups") return Groups(req, who, ws, seg);
  if (collection == "keys") return Keys(req, who, ws, seg);
  if (collection == "metrics" && seg.size() == 4 && req.method == "GET") {
    return MetricsResponse(req, MetricsScope::kWorkspace, ws.id);
  }
  if (collection == "usage" && seg.size() == 4 && req.method == "GET") return Usage(req, ws);
  if (collection == "invoices" && req.method == "GET") return Invoices(req, ws, seg);
  return Status::NotFound("no such endpoint under a workspace: " + std::string(collection));
}

Result<HttpResponse> Service::Impl::CreateWorkspace(const HttpRequest& req, const Principal& who) {
  KL_RETURN_IF_ERROR(RequireOperator(who, "create workspaces"));
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "tps_limit", "billing_timezone"}));
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (!name) return Status::InvalidArgument("name is required", "name");
  KL_ASSIGN_OR_RETURN(std::string clean_name, CleanText(*name, "name", kNameCharsMax, true));
  KL_ASSIGN_OR_RETURN(auto tps, OptionalInt(body, "tps_limit", 1, kTpsLimitMax));
  KL_ASSIGN_OR_RETURN(auto tz, OptionalString(body, "billing_timezone"));
  std::string timezone = tz.value_or("UTC");
  KL_RETURN_IF_ERROR(ValidateTimeZone(timezone, "billing_timezone"));

  WorkspaceCreated created;
  created.workspace_id = NewId("ws_");
  created.name = clean_name;
  created.tps_limit = static_cast<uint32_t>(tps.value_or(o.default_tps_limit));
  created.billing_timezone = timezone;
  std::string id = created.workspace_id;
  KL_RETURN_IF_ERROR(Commit({MakeEvent(WorkspaceStream(id), 0, who, created)}));
  return JsonResponse(201, WorkspaceJson(*state().FindWorkspace(id)));
}

Result<HttpResponse> Service::Impl::PatchWorkspace(const HttpRequest& req, const Principal& who,
                                                   const WorkspaceView& ws) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "tps_limit", "billing_timezone",
                                                        "price_plan"}));
  WorkspaceChanged changed;
  static_cast<WorkspaceState&>(changed) =
      WorkspaceState{ws.id, ws.name, ws.tps_limit, ws.billing_timezone, ws.price_plan_id};
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (name) {
    KL_ASSIGN_OR_RETURN(changed.name, CleanText(*name, "name", kNameCharsMax, true));
  }
  KL_ASSIGN_OR_RETURN(auto tps, OptionalInt(body, "tps_limit", 1, kTpsLimitMax));
  if (tps) {
    KL_RETURN_IF_ERROR(RequireOperator(who, "change the TPS limit", "tps_limit"));
    changed.tps_limit = static_cast<uint32_t>(*tps);
  }
  KL_ASSIGN_OR_RETURN(auto tz, OptionalString(body, "billing_timezone"));
  if (tz) {
    KL_RETURN_IF_ERROR(RequireOperator(who, "change the billing time zone", "billing_timezone"));
    KL_RETURN_IF_ERROR(ValidateTimeZone(*tz, "billing_timezone"));
    // Months are cut in this zone; once invoices exist, moving the cut would
    // put calls of invoiced months into other months.
    if (*tz != ws.billing_timezone && !state().ListInvoices(ws.id).empty()) {
      return Status::FailedPrecondition(
          "the workspace has invoices; its billing time zone can no longer change",
          "billing_timezone");
    }
    changed.billing_timezone = *tz;
  }
  if (body.contains("price_plan")) {
    KL_RETURN_IF_ERROR(RequireOperator(who, "set the price plan", "price_plan"));
    KL_ASSIGN_OR_RETURN(auto plan, OptionalString(body, "price_plan"));
    if (plan && state().PlanVersions(*plan).empty()) {
      return Status::NotFound("no price plan " + *plan, "price_plan");
    }
    changed.price_plan_id = plan.value_or("");  // null clears the plan
  }
  if (static_cast<const WorkspaceState&>(changed) !=
      WorkspaceState{ws.id, ws.name, ws.tps_limit, ws.billing_timezone, ws.price_plan_id}) {
    KL_RETURN_IF_ERROR(Commit({MakeEvent(WorkspaceStream(ws.id), ws.version, who, changed)}));
  }
  return JsonResponse(200, WorkspaceJson(*state().FindWorkspace(ws.id)));
}

Result<HttpResponse> Service::Impl::Tokens(const HttpRequest& req, const Principal& who,
                                           const WorkspaceView& ws,
                                           const std::vector<std::string_view>& seg) {
  KL_RETURN_IF_ERROR(RequireOperator(who, "manage workspace tokens"));
  if (seg.size() == 4 && req.method == "GET") {
    // At most tokens_per_workspace_max: one page. Ids and times only; a
    // token's secret is shown once, at creation.
    Json list = Json::array();
    for (const TokenView& t : state().ListActiveTokens(ws.id)) {
      list.push_back({{"id", t.id}, {"workspace_id", t.workspace_id},
                      {"created_at", FormatRfc3339(t.created_at_us)}});
    }
    return JsonResponse(200, {{"tokens", list}});
  }
  if (seg.size() == 4 && req.method == "POST") {
    KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {}));
    (void)body;
    KL_RETURN_IF_ERROR(CheckWorkspaceCount(state().ActiveTokenCount(ws.id),
                                           o.tokens_per_workspace_max, "active tokens"));
    std::string token = NewSecret(kWorkspaceTokenPrefix);
    WorkspaceTokenCreated created{ws.id, NewId("tok_"), HashSecret(token)};
    KL_RETURN_IF_ERROR(Commit({MakeEvent(TokenStream(created.token_id), 0, who, created)}));
    auto view = state().FindToken(created.token_id);
    return JsonResponse(201, {{"id", created.token_id}, {"workspace_id", ws.id},
                              {"token", token},
                              {"created_at", FormatRfc3339(view->created_at_us)}});
  }
  if (seg.size() == 5 && req.method == "DELETE") {
    auto token = state().FindToken(seg[4]);
    if (!token || token->revoked || token->workspace_id != ws.id) {
      return Status::NotFound("no active token " + std::string(seg[4]), "token");
    }
    WorkspaceTokenRevoked revoked{ws.id, token->id};
    KL_RETURN_IF_ERROR(Commit({MakeEvent(TokenStream(token->id), 1, who, revoked)}));
    return NoContent();
  }
  return Status::InvalidArgument("use GET or POST …/tokens, or DELETE …/tokens/{id}", "method");
}

namespace {

// Validates ip_allow/origin_allow and returns their canonical forms.
Status CompileGroupRules(const std::vector<std::string>& ip_allow,
                         const std::vector<std::string>& origin_allow,
                         std::vector<std::string>* canonical_ips,
                         std::vector<std::string>* canonical_origins) {
  KL_ASSIGN_OR_RETURN(SecurityRules rules, SecurityRules::Compile(ip_allow, origin_allow));
  *canonical_ips = rules.canonical_ip_allow();
  *canonical_origins = rules.canonical_origin_allow();
  return Status::Ok();
}

}  // namespace

Result<HttpResponse> Service::Impl::Groups(const HttpRequest& req, const Principal& who,
                                           const WorkspaceView& ws,
                                           const std::vector<std::string_view>& seg) {
  const std::string& m = req.method;
  if (seg.size() == 4) {
    if (m == "POST") return CreateGroup(req, who, ws);
    if (m != "GET") return Status::InvalidArgument("use GET or POST", "method");
    return ListPage(req, o, "security_groups", [&](std::string_view after, size_t limit) {
      return state().ListGroups(ws.id, after, limit);
    }, GroupJson);
  }
  if (seg.size() != 5) return Status::NotFound("no such endpoint");
  KL_ASSIGN_OR_RETURN(SecurityGroupView g, Group(ws.id, seg[4], "security_group"));
  if (m == "GET") return JsonResponse(200, GroupJson(g));
  if (m == "PATCH") return PatchGroup(req, who, g);
  if (m == "DELETE") return DeleteGroup(who, g);
  return Status::InvalidArgument("use GET, PATCH or DELETE", "method");
}

Result<HttpResponse> Service::Impl::CreateGroup(const HttpRequest& req, const Principal& who,
                                                const WorkspaceView& ws) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "ip_allow", "origin_allow"}));
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (!name) return Status::InvalidArgument("name is required", "name");
  SecurityGroupCreated created;
  KL_ASSIGN_OR_RETURN(created.name, CleanText(*name, "name", kNameCharsMax, true));
  KL_ASSIGN_OR_RETURN(auto ips, OptionalStringList(body, "ip_allow", kSecurityGroupEntriesMax));
  KL_ASSIGN_OR_RETURN(auto origins,
                      OptionalStringList(body, "origin_allow", kSecurityGroupEntriesMax));
  KL_RETURN_IF_ERROR(CompileGroupRules(ips.value_or(std::vector<std::string>{}),
                                       origins.value_or(std::vector<std::string>{}),
                                       &created.ip_allow, &created.origin_allow));
  KL_RETURN_IF_ERROR(CheckWorkspaceCount(state().LiveGroupCount(ws.id),
                                         o.security_groups_per_workspace_max, "security groups"));
  created.workspace_id = ws.id;
  created.group_id = NewId("sg_");
  std::string id = created.group_id;
  KL_RETURN_IF_ERROR(Commit({MakeEvent(SecurityGroupStream(id), 0, who, created)}));
  return JsonResponse(201, GroupJson(*state().FindGroup(id)));
}

Result<HttpResponse> Service::Impl::PatchGroup(const HttpRequest& req, const Principal& who,
                                               const SecurityGroupView& g) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "ip_allow", "origin_allow"}));
  SecurityGroupChanged changed;
  static_cast<SecurityGroupState&>(changed) =
      SecurityGroupState{g.workspace_id, g.id, g.name, g.ip_allow, g.origin_allow};
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (name) {
    KL_ASSIGN_OR_RETURN(changed.name, CleanText(*name, "name", kNameCharsMax, true));
  }
  KL_ASSIGN_OR_RETURN(auto ips, OptionalStringList(body, "ip_allow", kSecurityGroupEntriesMax));
  KL_ASSIGN_OR_RETURN(auto origins,
                      OptionalStringList(body, "origin_allow", kSecurityGroupEntriesMax));
  KL_RETURN_IF_ERROR(CompileGroupRules(ips.value_or(g.ip_allow), origins.value_or(g.origin_allow),
                                       &changed.ip_allow, &changed.origin_allow));
  if (changed.name != g.name || changed.ip_allow != g.ip_allow ||
      changed.origin_allow != g.origin_allow) {
    KL_RETURN_IF_ERROR(Commit({MakeEvent(SecurityGroupStream(g.id), g.version, who, changed)}));
  }
  return JsonResponse(200, GroupJson(*state().FindGroup(g.id)));
}

Result<HttpResponse> Service::Impl::DeleteGroup(const Principal& who, const SecurityGroupView& g) {
  size_t users = state().KeysUsingGroup(g.id);
  if (users > 0) {
    return Status::FailedPrecondition("security group is used by " + std::to_string(users) +
                                          " key(s); move them to another group first",
                                      "security_group");
  }
  SecurityGroupDeleted deleted{g.workspace_id, g.id};
  KL_RETURN_IF_ERROR(Commit({MakeEvent(SecurityGroupStream(g.id), g.version, who, deleted)}));
  return NoContent();
}

Result<HttpResponse> Service::Impl::Keys(const HttpRequest& req, const Principal& who,
                                         const WorkspaceView& ws,
                                         const std::vector<std::string_view>& seg) {
  const std::string& m = req.method;
  if (seg.size() == 4) {
    if (m == "POST") return CreateKey(req, who, ws);
    if (m != "GET") return Status::InvalidArgument("use GET or POST", "method");
    return ListPage(req, o, "keys", [&](std::string_view after, size_t limit) {
      return state().ListKeys(ws.id, after, limit);
    }, KeyJson);
  }
  const bool read_only = seg.size() == 6 && (seg[5] == "history" || seg[5] == "logs" ||
                                             seg[5] == "metrics");
  if (read_only && m != "GET") return Status::InvalidArgument("use GET", "method");
  if (seg.size() == 6 && seg[5] == "history") return KeyHistoryResponse(req, who, ws, seg[4]);
  if (m == "GET" && seg.size() == 5 && FindQueryParam(QueryOf(req), "as_of")) {
    return KeyAsOfResponse(req, who, ws, seg[4]);
  }
  KL_ASSIGN_OR_RETURN(KeyView k, Key(ws.id, seg[4]));
  if (seg.size() == 5) {
    if (m == "GET") return JsonResponse(200, KeyJson(k));
    if (m == "PATCH") return PatchKey(req, who, k);
    if (m == "DELETE") return DeleteKey(who, k);
    return Status::InvalidArgument("use GET, PATCH or DELETE", "method");
  }
  if (seg.size() >= 6 && seg[5] == "alarms") return Alarms(req, who, k, seg);
  if (seg.size() == 6 && seg[5] == "logs") return KeyLogs(req, k);
  if (seg.size() == 6 && seg[5] == "metrics") {
    return MetricsResponse(req, MetricsScope::kKey, k.id);
  }
  if (seg.size() == 6 && seg[5] == "rotate") {
    if (m != "POST") return Status::InvalidArgument("use POST to rotate", "method");
    return RotateKey(req, who, k);
  }
  return Status::NotFound("no such endpoint under a key");
}

Result<HttpResponse> Service::Impl::CreateKey(const HttpRequest& req, const Principal& who,
                                              const WorkspaceView& ws) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "description", "security_group"}));
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (!name) return Status::InvalidArgument("name is required", "name");
  KeyCreated created;
  KL_ASSIGN_OR_RETURN(created.name, CleanText(*name, "name", kNameCharsMax, true));
  KL_ASSIGN_OR_RETURN(auto description, OptionalString(body, "description"));
  KL_ASSIGN_OR_RETURN(created.description,
                      CleanText(description.value_or(""), "description", kDescriptionCharsMax,
                                false));
  KL_ASSIGN_OR_RETURN(auto group_id, OptionalString(body, "security_group"));
  if (!group_id || group_id->empty()) {
    return Status::InvalidArgument("security_group is required", "security_group");
  }
  KL_ASSIGN_OR_RETURN(SecurityGroupView group, Group(ws.id, *group_id, "security_group"));
  KL_RETURN_IF_ERROR(
      CheckWorkspaceCount(state().LiveKeyCount(ws.id), o.keys_per_workspace_max, "keys"));
  std::string secret = NewSecret(kApiKeyPrefix);
  created.workspace_id = ws.id;
  created.key_id = NewId("key_");
  created.security_group_id = group.id;
  created.secret_hash = HashSecret(secret);
  std::string id = created.key_id;
  KL_RETURN_IF_ERROR(Commit({MakeEvent(KeyStream(id), 0, who, created)}));
  Json j = KeyJson(*state().FindKey(id));
  j["secret"] = secret;
  return JsonResponse(201, j);
}

Result<HttpResponse> Service::Impl::PatchKey(const HttpRequest& req, const Principal& who,
                                             const KeyView& k) {
  KL_ASSIGN_OR_RETURN(Json body,
                      ParseObject(req.body, {"name", "description", "security_group", "logging"}));
  // Validate everything first; then one atomic append of one event per change.
  std::vector<EventBody> changes;
  KL_ASSIGN_OR_RETURN(auto name, OptionalString(body, "name"));
  if (name) {
    KL_ASSIGN_OR_RETURN(std::string clean, CleanText(*name, "name", kNameCharsMax, true));
    if (clean != k.name) changes.push_back(KeyRenamed{k.workspace_id, k.id, clean});
  }
  KL_ASSIGN_OR_RETURN(auto description, OptionalString(body, "description"));
  if (description) {
    KL_ASSIGN_OR_RETURN(std::string clean,
                        CleanText(*description, "description", kDescriptionCharsMax, false));
    if (clean != k.description) {
      changes.push_back(KeyDescriptionChanged{k.workspace_id, k.id, clean});
    }
  }
  KL_ASSIGN_OR_RETURN(auto group_id, OptionalString(body, "security_group"));
  if (group_id) {
    KL_ASSIGN_OR_RETURN(SecurityGroupView group, Group(k.workspace_id, *group_id, "security_group"));
    if (group.id != k.security_group_id) {
      changes.push_back(KeySecurityGroupChanged{k.workspace_id, k.id, group.id});
    }
  }
  KL_ASSIGN_OR_RETURN(auto logging, OptionalBool(body, "logging"));
  if (logging && *logging != k.logging) {
    changes.push_back(KeyLoggingSwitched{k.workspace_id, k.id, *logging});
  }
  if (!changes.empty()) {
    std::vector<NewEvent> events;
    uint64_t version = k.version;
    for (auto& change : changes) events.push_back(MakeEvent(KeyStream(k.id), version++, who, change));
    KL_RETURN_IF_ERROR(Commit(events));
  }
  return JsonResponse(200, KeyJson(*state().FindKey(k.id)));
}

Result<HttpResponse> Service::Impl::RotateKey(const HttpRequest& req, const Principal& who,
                                              const KeyView& k) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"grace_seconds"}));
  KL_ASSIGN_OR_RETURN(auto grace, OptionalInt(body, "grace_seconds", 0, o.rotation_grace_seconds_max));
  std::string secret = NewSecret(kApiKeyPrefix);
  KeyRotated rotated{k.workspace_id, k.id, HashSecret(secret), 0};
  // The deadline is fixed now and stored in the event, so the fold never
  // needs a clock. Zero grace: the old secret stops at once.
  if (grace.value_or(0) > 0) rotated.old_secret_valid_until_us = d.clock->NowUs() + *grace * 1'000'000;
  KL_RETURN_IF_ERROR(Commit({MakeEvent(KeyStream(k.id), k.version, who, rotated)}));
  Json j = KeyJson(*state().FindKey(k.id));
  j["secret"] = secret;
  return JsonResponse(200, j);
}

Result<HttpResponse> Service::Impl::DeleteKey(const Principal& who, const KeyView& k) {
  auto alarms = state().ListAlarms(k.id);
  if (!alarms.empty()) {
    std::string names;
    for (const auto& a : alarms) names += (names.empty() ? "" : ", ") + a.spec.alarm_id + " (" + a.spec.name + ")";
    return Status::FailedPrecondition("delete the key's alarms first: " + names, "alarms");
  }
  KeyDeleted deleted{k.workspace_id, k.id};
  KL_RETURN_IF_ERROR(Commit({MakeEvent(KeyStream(k.id), k.version, who, deleted)}));
  return NoContent();
}

Service::Service(ServiceDeps deps, ServiceOptions options) : impl_(std::make_shared<Impl>()) {
  assert(deps.ledger && deps.key_state && deps.clock && deps.random);
  impl_->d = deps;
  impl_->o = options;
  impl_->request_id_prefix = impl_->NewId("req_") + "-";
  impl_->data_plane = std::make_unique<DataPlane>(deps.ledger, &deps.key_state->state(),
                                                  deps.clock, deps.random, options.data_plane);
}

DataPlane& Service::data_plane() { return *impl_->data_plane; }

void Service::AttachHttpServer(const HttpServer* server) {
  impl_->http_server.store(server, std::memory_order_release);
}

Result<size_t> Service::EvaluateAlarms() { return impl_->EvaluateAlarms(); }

Result<size_t> Service::DeliverNotifications() { return impl_->DeliverNotifications(); }

void Service::StartAlarmLoops() { impl_->StartAlarmLoops(); }

void Service::Stop() {
  impl_->StopAlarmLoops();
  impl_->data_plane->Stop();
}

Result<std::string> Service::BootstrapOperatorToken(const std::optional<std::string>& configured) {
  std::lock_guard<std::mutex> lock(impl_->command_mu);
  auto stored = impl_->state().operator_token_hash();
  std::string generated;
  Hash wanted;
  if (configured) {
    if (configured->size() < kOperatorTokenBytesMin) {
      return Status::InvalidArgument("KEYLEDGER_ADMIN_TOKEN must be at least " +
                                         std::to_string(kOperatorTokenBytesMin) + " bytes",
                                     "KEYLEDGER_ADMIN_TOKEN");
    }
    wanted = HashSecret(*configured);
  } else if (stored) {
    return std::string();
  } else {
    generated = impl_->NewSecret(kOperatorTokenPrefix);
    wanted = HashSecret(generated);
  }
  if (stored && ConstantTimeEqual(*stored, wanted)) return std::string();
  Principal system{true, "", ""};
  NewEvent e = impl_->MakeEvent(kOperatorStream, std::nullopt, system, OperatorTokenSet{wanted});
  e.actor = "system";
  KL_RETURN_IF_ERROR(impl_->Commit({e}));
  return generated;
}

RequestCounters::Route RouteOf(std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  if (path == "/v1/authorize") return RequestCounters::kAuthorize;
  if (path == "/v1/calls") return RequestCounters::kCalls;
  if (path == "/v1" || path.starts_with("/v1/")) return RequestCounters::kManagement;
  if (path == "/healthz") return RequestCounters::kHealthz;
  if (path == "/metrics") return RequestCounters::kMetrics;
  return RequestCounters::kOther;
}

HttpResponse Service::Impl::Metrics() const {
  std::string out;
  requests.Render(&out);
  out += "# HELP keyledger_authorize_latency_seconds Time to decide one authorization.\n";
  out += "# TYPE keyledger_authorize_latency_seconds histogram\n";
  authorize_latency.Render(&out, "keyledger_authorize_latency_seconds", "");
  out += "# HELP keyledger_append_latency_seconds Durable append latency as callers see it.\n";
  out += "# TYPE keyledger_append_latency_seconds histogram\n";
  command_append_latency.Render(&out, "keyledger_append_latency_seconds", "kind=\"command\"");
  data_plane->append_latency().Render(&out, "keyledger_append_latency_seconds", "kind=\"calls\"");
  LedgerStats stats = d.ledger->stats();
  RenderGauge(&out, "keyledger_ledger_head_sequence", "Sequence of the newest event.",
              d.ledger->head().sequence);
  RenderGauge(&out, "keyledger_ledger_events_appended_total", "Events stored since start.",
              stats.events_appended, "counter");
  RenderGauge(&out, "keyledger_ledger_group_commits_total",
              "WriteBatches written; events_appended / group_commits is the mean group size.",
              stats.group_commits, "counter");
  RenderGauge(&out, "keyledger_ledger_group_commit_events_max", "Largest group commit so far.",
              stats.group_events_max);
  RenderGauge(&out, "keyledger_ledger_write_microseconds_total",
              "Per group commit, time from its write to its fsync's end, summed (groups overlap).",
              stats.write_us_total, "counter");
  RenderGauge(&out, "keyledger_projection_position", "Last sequence folded by the key-state projection.",
              state().position(), "gauge", "projection=\"key_state\"");
  RenderGauge(&out, "keyledger_projection_lag_events",
              "Ledger events not yet folded by the call projections (logs, metrics, usage).",
              d.ledger->head().sequence - std::min(d.ledger->head().sequence, d.calls->position()));
  RenderGauge(&out, "keyledger_denial_events_appended_total",
              "Aggregated authorization-denial events appended.",
              data_plane->denial_events_appended(), "counter");
  if (const HttpServer* server = http_server.load(std::memory_order_acquire)) {
    const HttpServerStats http = server->stats();
    RenderGauge(&out, "keyledger_http_connections_accepted_total", "Connections that got a session.",
                http.connections_accepted, "counter");
    RenderGauge(&out, "keyledger_http_connections_rejected_total",
                "Connections closed at accept (over the limit or stopping).",
                http.connections_rejected, "counter");
    RenderGauge(&out, "keyledger_http_connections_open", "Sessions alive now.", http.connections_open);
    RenderGauge(&out, "keyledger_http_connections_timed_out_total",
                "Connections closed by a read or write timeout.", http.connections_timed_out,
                "counter");
    RenderGauge(&out, "keyledger_http_requests_in_flight", "Requests being handled now.",
                http.requests_in_flight);
    RenderGauge(&out, "keyledger_http_requests_awaiting_worker",
                "Requests handed to the worker threads and not started yet.",
                http.requests_awaiting_worker);
    RenderGauge(&out, "keyledger_http_requests_rejected_total",
                "Requests answered 400/413/431 by the server before any handler.",
                http.requests_rejected, "counter");
    RenderGauge(&out, "keyledger_http_handler_errors_total",
                "Handler calls that threw or returned an invalid response.", http.handler_errors,
                "counter");
    RenderGauge(&out, "keyledger_gateway_relayed_total",
                "Gateway mode: exchanges relayed to the upstream.", http.proxy_relayed, "counter");
    RenderGauge(&out, "keyledger_gateway_answered_total",
                "Gateway mode: requests answered without the upstream (refusals, preflights).",
                http.proxy_answered, "counter");
    RenderGauge(&out, "keyledger_gateway_upstream_failures_total",
                "Gateway mode: 502/504 answered, or the upstream broke mid-response.",
                http.proxy_upstream_failures, "counter");
  }
  RenderGauge(&out, "keyledger_gateway_calls_pending",
              "Gateway mode: relayed calls reserved or queued, not yet durable.",
              data_plane->calls_pending());
  RenderGauge(&out, "keyledger_gateway_calls_dropped_total",
              "Gateway mode: relayed calls that could not be recorded (see stderr).",
              data_plane->calls_dropped(), "counter");
  RenderGauge(&out, "keyledger_alarm_evaluation_errors_total",
              "Alarm evaluations skipped because their data could not be read.",
              alarm_evaluation_errors.load(std::memory_order_relaxed), "counter");
  RenderGauge(&out, "keyledger_alarm_transitions_total", "Alarm state changes recorded since start.",
              alarm_transitions.load(std::memory_order_relaxed), "counter");
  RenderGauge(&out, "keyledger_notifications_delivered_total",
              "Alarm notifications delivered since start.",
              notifications_delivered.load(std::memory_order_relaxed), "counter");
  RenderGauge(&out, "keyledger_notification_failures_total",
              "Failed notification attempts since start (each retry counts).",
              notification_failures.load(std::memory_order_relaxed), "counter");
  HttpResponse r;
  r.status = 200;
  r.headers.emplace_back("content-type", "text/plain; version=0.0.4");
  r.body = std::move(out);
  return r;
}

bool Service::IsQuickRequest(const HttpRequest& request) {
  switch (RouteOf(request.target)) {
    case RequestCounters::kAuthorize:
      return request.method == "POST";
    case RequestCounters::kHealthz:
    case RequestCounters::kMetrics:
      return request.method == "GET";
    default:
      return false;
  }
}

HttpResponse Service::HandleAsOperator(const HttpRequest& request) {
  return impl_->Answer(impl_->Route(request, /*trusted_operator=*/true));
}

HttpResponse Service::Impl::Answer(Result<HttpResponse> routed) {
  if (routed.ok()) return std::move(routed).value();
  LogServerError(routed.status());
  return ErrorResponse(routed.status());
}

// At most one server-side failure is written to stderr per this interval.
constexpr int64_t kServerErrorLogIntervalUs = 1'000'000;

void Service::Impl::LogServerError(const Status& s) {
  const bool server_side = s.code() == Code::kIOError || s.code() == Code::kCorruption ||
                           s.code() == Code::kInternal;
  if (!server_side) return;
  // One line per kServerErrorLogIntervalUs at most: a broken disk fails every
  // request, and the log must not become the next thing to fill it.
  const int64_t now_us = SteadyClock().NowUs();
  int64_t last_us = last_server_error_log_us.load(std::memory_order_relaxed);
  if (last_us != 0 && now_us - last_us < kServerErrorLogIntervalUs) return;
  if (!last_server_error_log_us.compare_exchange_strong(last_us, std::max<int64_t>(now_us, 1))) {
    return;
  }
  std::fprintf(stderr, "keyledger: request failed: %s\n", s.ToString().c_str());
}

HttpResponse Service::Handle(const HttpRequest& request) {
  const auto start = std::chrono::steady_clock::now();
  const RequestCounters::Route route = RouteOf(request.target);
  HttpResponse response;
  if (route == RequestCounters::kMetrics && request.method == "GET") {
    response = impl_->Metrics();
  } else {
    response = impl_->Answer(impl_->Route(request, /*trusted_operator=*/false));
  }
  if (route == RequestCounters::kAuthorize) {
    impl_->authorize_latency.Observe(ElapsedUs(start));
  }
  impl_->requests.Count(route, response.status);
  return response;
}

}  // namespace keyledger
