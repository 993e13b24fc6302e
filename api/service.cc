#include "api/service.h"

#include <cassert>
#include <charconv>
#include <chrono>

#include "api/json_input.h"
#include "api/prometheus.h"
#include "billing/calendar.h"
#include "projections/key_history.h"
#include "ledger/hash.h"

namespace keyledger {
namespace {

constexpr size_t kIdRandomBytes = 10;  // 80 bits: ids are not secrets, just unique
constexpr size_t kOperatorTokenBytesMin = 16;
constexpr size_t kSecurityGroupEntriesMax = 100;

struct Principal {
  bool is_operator = false;
  std::string workspace_id;  // for a workspace token
  std::string token_id;
  std::string Actor() const { return is_operator ? "operator" : "token/" + token_id; }
};

HttpResponse JsonResponse(int status, const Json& body) {
  HttpResponse r;
  r.status = status;
  r.headers.emplace_back("content-type", "application/json");
  r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  return r;
}

HttpResponse NoContent() {
  HttpResponse r;
  r.status = 204;
  return r;
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
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
std::string_view QueryParam(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
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

// Durations are measured on the monotonic clock, never the injected one.
uint64_t ElapsedUs(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now() - start)
                                   .count());
}

}  // namespace

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
      return JsonError(429, "rate_limited", s.message(), s.field());
    case Code::kUnavailable:
      return JsonError(503, "unavailable", s.message());
    case Code::kOk:
    case Code::kCorruption:
    case Code::kIOError:
    case Code::kInternal:
      break;
  }
  return JsonError(500, "internal", s.message());
}

struct Service::Impl {
  ServiceDeps d;
  ServiceOptions o;
  std::unique_ptr<DataPlane> data_plane;
  std::mutex command_mu;  // one command at a time: validate, append, fold
  RequestCounters requests;
  LatencyHistogramUs authorize_latency;
  LatencyHistogramUs command_append_latency;

  HttpResponse Metrics() const;

  const KeyState& state() const { return d.key_state->state(); }

  std::string NewId(std::string_view prefix) {
    return std::string(prefix) + RandomBase32(*d.random, kIdRandomBytes);
  }
  std::string NewSecret(std::string_view prefix) {
    return std::string(prefix) + RandomBase32(*d.random, kSecretBytes);
  }

  NewEvent MakeEvent(std::string stream, std::optional<uint64_t> expected, const Principal& who,
                     EventBody body) {
    NewEvent e;
    d.random->Fill(e.event_id.data(), e.event_id.size());
    e.stream_id = std::move(stream);
    e.expected_version = expected;
    e.actor = who.Actor();
    e.body = std::move(body);
    return e;
  }

  // REQUIRES: command_mu held.
  Status Commit(const std::vector<NewEvent>& events) {
    AppendOptions options;
    options.durability = Durability::kSync;  // a command is acknowledged only when durable
    const auto start = std::chrono::steady_clock::now();
    KL_ASSIGN_OR_RETURN(AppendResult appended, d.ledger->Append(events, options));
    command_append_latency.Observe(ElapsedUs(start));
    return d.key_state->ApplyAppended(appended.sequences);
  }

  Result<Principal> Authenticate(const HttpRequest& req) const {
    std::string_view auth = req.Header("authorization");
    constexpr std::string_view kBearer = "bearer ";
    if (auth.size() <= kBearer.size()) {
      return Status::Unauthenticated("missing Authorization: Bearer <token> header");
    }
    std::string scheme(auth.substr(0, kBearer.size()));
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != kBearer) return Status::Unauthenticated("Authorization must use the Bearer scheme");
    Hash h = HashSecret(auth.substr(kBearer.size()));
    auto op = state().operator_token_hash();
    if (op && ConstantTimeEqual(*op, h)) return Principal{true, "", ""};
    auto token = state().FindTokenByHash(h);
    if (token && !token->revoked) return Principal{false, token->workspace_id, token->id};
    return Status::Unauthenticated("unknown or revoked token");
  }

  // Returns the workspace if `who` may see it; NotFound otherwise, so a
  // workspace token learns nothing about other workspaces.
  Result<WorkspaceView> Workspace(const Principal& who, std::string_view ws) const {
    auto w = state().FindWorkspace(ws);
    if (!w || (!who.is_operator && who.workspace_id != ws)) {
      return Status::NotFound("no workspace " + std::string(ws), "workspace");
    }
    return *w;
  }

  Result<SecurityGroupView> Group(std::string_view ws, std::string_view id,
                                  std::string_view field) const {
    auto g = state().FindGroup(id);
    if (!g || g->deleted || g->workspace_id != ws) {
      return Status::NotFound("no security group " + std::string(id) + " in this workspace",
                              std::string(field));
    }
    return *g;
  }

  Result<KeyView> Key(std::string_view ws, std::string_view id) const {
    auto k = state().FindKey(id);
    if (!k || k->deleted || k->workspace_id != ws) {
      return Status::NotFound("no key " + std::string(id) + " in this workspace", "key");
    }
    return *k;
  }

  static Status RequireOperator(const Principal& who, std::string_view what,
                                std::string field = {}) {
    if (who.is_operator) return Status::Ok();
    return Status::PermissionDenied("only the operator may " + std::string(what),
                                    std::move(field));
  }

  Result<HttpResponse> Route(const HttpRequest& req);
  Result<HttpResponse> Authorize(const HttpRequest& req);
  Result<HttpResponse> RecordCalls(const HttpRequest& req);
  Result<HttpResponse> Workspaces(const HttpRequest& req, const Principal& who,
                                  const std::vector<std::string_view>& seg);
  Result<HttpResponse> Tokens(const HttpRequest& req, const Principal& who,
                              const WorkspaceView& ws, const std::vector<std::string_view>& seg);
  Result<HttpResponse> Groups(const HttpRequest& req, const Principal& who,
                              const WorkspaceView& ws, const std::vector<std::string_view>& seg);
  Result<HttpResponse> Keys(const HttpRequest& req, const Principal& who,
                            const WorkspaceView& ws, const std::vector<std::string_view>& seg);

  Result<HttpResponse> CreateWorkspace(const HttpRequest& req, const Principal& who);
  Result<HttpResponse> PatchWorkspace(const HttpRequest& req, const Principal& who,
                                      const WorkspaceView& ws);
  Result<HttpResponse> CreateGroup(const HttpRequest& req, const Principal& who,
                                   const WorkspaceView& ws);
  Result<HttpResponse> PatchGroup(const HttpRequest& req, const Principal& who,
                                  const SecurityGroupView& g);
  Result<HttpResponse> DeleteGroup(const Principal& who, const SecurityGroupView& g);
  Result<HttpResponse> CreateKey(const HttpRequest& req, const Principal& who,
                                 const WorkspaceView& ws);
  Result<HttpResponse> PatchKey(const HttpRequest& req, const Principal& who, const KeyView& k);
  Result<HttpResponse> RotateKey(const HttpRequest& req, const Principal& who, const KeyView& k);
  Result<HttpResponse> DeleteKey(const Principal& who, const KeyView& k);
  Result<HttpResponse> KeyHistoryResponse(const Principal& who, const WorkspaceView& ws,
                                          std::string_view key_id);
  Result<HttpResponse> KeyAsOfResponse(const HttpRequest& req, const Principal& who,
                                       const WorkspaceView& ws, std::string_view key_id);
  // A key of `ws` that exists or existed: deleted keys are visible to the
  // operator only (auditors); a workspace token sees live keys only.
  Result<KeyView> KeyForAudit(const Principal& who, const WorkspaceView& ws,
                              std::string_view key_id) const;
};

Result<HttpResponse> Service::Impl::Route(const HttpRequest& req) {
  std::string_view target = req.target;
  size_t q = target.find('?');
  std::vector<std::string_view> seg = SplitPath(target.substr(0, q));
  if (seg.size() == 1 && seg[0] == "healthz") {
    return JsonResponse(200, {{"status", "ok"}, {"ledger_head", d.ledger->head().sequence}});
  }
  if (seg.size() == 2 && seg[0] == "v1" && seg[1] == "authorize") {
    if (req.method != "POST") return Status::InvalidArgument("use POST", "method");
    return Authorize(req);
  }
  static constexpr std::string_view kTopLevel[] = {"workspaces", "calls", "ledger"};
  if (seg.size() < 2 || seg[0] != "v1" ||
      std::find(std::begin(kTopLevel), std::end(kTopLevel), seg[1]) == std::end(kTopLevel)) {
    return Status::NotFound("no such endpoint: " + std::string(target.substr(0, q)));
  }
  KL_ASSIGN_OR_RETURN(Principal who, Authenticate(req));
  if (seg.size() == 3 && seg[1] == "ledger" && seg[2] == "head") {
    KL_RETURN_IF_ERROR(RequireOperator(who, "read the ledger head"));
    LedgerHead head = d.ledger->head();
    return JsonResponse(200, {{"sequence", head.sequence}, {"hash", ToHex(head.hash)}});
  }
  if (seg[1] == "ledger") return Status::NotFound("no such endpoint");
  if (seg.size() == 2 && seg[1] == "calls") {
    KL_RETURN_IF_ERROR(RequireOperator(who, "record calls"));
    if (req.method != "POST") return Status::InvalidArgument("use POST", "method");
    return RecordCalls(req);
  }
  // Commands hold the lock from validation to fold, so what they validated
  // is still true when their events land.
  std::unique_lock<std::mutex> command_lock(command_mu, std::defer_lock);
  if (req.method != "GET" && req.method != "HEAD") command_lock.lock();
  return Workspaces(req, who, seg);
}

Result<HttpResponse> Service::Impl::Workspaces(const HttpRequest& req, const Principal& who,
                                               const std::vector<std::string_view>& seg) {
  const std::string& m = req.method;
  if (seg.size() == 2) {
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
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"name", "tps_limit", "billing_timezone"}));
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
    changed.billing_timezone = *tz;
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
  if (seg.size() == 4 && req.method == "POST") {
    KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {}));
    (void)body;
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
  return Status::InvalidArgument("use POST …/tokens or DELETE …/tokens/{id}", "method");
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
    std::string_view query = req.target.find('?') == std::string::npos
                                 ? std::string_view()
                                 : std::string_view(req.target).substr(req.target.find('?') + 1);
    KL_ASSIGN_OR_RETURN(size_t limit, PageSize(query, o));
    auto groups = state().ListGroups(ws.id, QueryParam(query, "cursor"), limit);
    Json items = Json::array();
    for (const auto& g : groups) items.push_back(GroupJson(g));
    Json next = groups.size() == limit ? Json(groups.back().id) : Json(nullptr);
    return JsonResponse(200, {{"security_groups", items}, {"next_cursor", next}});
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
    size_t q = req.target.find('?');
    std::string_view query =
        q == std::string::npos ? std::string_view() : std::string_view(req.target).substr(q + 1);
    KL_ASSIGN_OR_RETURN(size_t limit, PageSize(query, o));
    auto keys = state().ListKeys(ws.id, QueryParam(query, "cursor"), limit);
    Json items = Json::array();
    for (const auto& k : keys) items.push_back(KeyJson(k));
    Json next = keys.size() == limit ? Json(keys.back().id) : Json(nullptr);
    return JsonResponse(200, {{"keys", items}, {"next_cursor", next}});
  }
  if (m == "GET" && (seg.size() == 6 && seg[5] == "history")) return KeyHistoryResponse(who, ws, seg[4]);
  if (m == "GET" && seg.size() == 5 && !QueryParam(QueryOf(req), "as_of").empty()) {
    return KeyAsOfResponse(req, who, ws, seg[4]);
  }
  KL_ASSIGN_OR_RETURN(KeyView k, Key(ws.id, seg[4]));
  if (seg.size() == 5) {
    if (m == "GET") return JsonResponse(200, KeyJson(k));
    if (m == "PATCH") return PatchKey(req, who, k);
    if (m == "DELETE") return DeleteKey(who, k);
    return Status::InvalidArgument("use GET, PATCH or DELETE", "method");
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
  KeyDeleted deleted{k.workspace_id, k.id};
  KL_RETURN_IF_ERROR(Commit({MakeEvent(KeyStream(k.id), k.version, who, deleted)}));
  return NoContent();
}

Service::Service(ServiceDeps deps, ServiceOptions options) : impl_(std::make_shared<Impl>()) {
  assert(deps.ledger && deps.key_state && deps.clock && deps.random);
  impl_->d = deps;
  impl_->o = options;
  impl_->data_plane = std::make_unique<DataPlane>(deps.ledger, &deps.key_state->state(),
                                                  deps.clock, deps.random, options.data_plane);
}

DataPlane& Service::data_plane() { return *impl_->data_plane; }

void Service::Stop() { impl_->data_plane->Stop(); }

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

namespace {

RequestCounters::Route RouteOf(std::string_view target) {
  if (target.starts_with("/v1/authorize")) return RequestCounters::kAuthorize;
  if (target.starts_with("/v1/calls")) return RequestCounters::kCalls;
  if (target.starts_with("/v1/")) return RequestCounters::kManagement;
  if (target.starts_with("/healthz")) return RequestCounters::kHealthz;
  if (target.starts_with("/metrics")) return RequestCounters::kMetrics;
  return RequestCounters::kOther;
}

}  // namespace

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
              "Time in RocksDB writes including fsync.", stats.write_us_total, "counter");
  RenderGauge(&out, "keyledger_projection_position{projection=\"key_state\"}",
              "Last sequence folded by the projection.", state().position());
  RenderGauge(&out, "keyledger_denial_events_appended_total",
              "Aggregated authorization-denial events appended.",
              data_plane->denial_events_appended(), "counter");
  HttpResponse r;
  r.status = 200;
  r.headers.emplace_back("content-type", "text/plain; version=0.0.4");
  r.body = std::move(out);
  return r;
}

HttpResponse Service::Handle(const HttpRequest& request) {
  const auto start = std::chrono::steady_clock::now();
  const RequestCounters::Route route = RouteOf(request.target);
  HttpResponse response;
  if (route == RequestCounters::kMetrics && request.method == "GET") {
    response = impl_->Metrics();
  } else {
    auto routed = impl_->Route(request);
    response = routed.ok() ? std::move(routed).value() : ErrorResponse(routed.status());
  }
  if (route == RequestCounters::kAuthorize) {
    impl_->authorize_latency.Observe(ElapsedUs(start));
  }
  impl_->requests.Count(route, response.status);
  return response;
}

}  // namespace keyledger

// ---- Data plane ------------------------------------------------------------

namespace keyledger {
namespace {

void AddRateLimitHeaders(const AuthorizeDecision& d, HttpResponse* r) {
  if (!d.rate_checked) return;
  auto ceil_seconds = [](int64_t us) { return std::to_string((us + 999'999) / 1'000'000); };
  r->headers.emplace_back("ratelimit-limit", std::to_string(d.rate.limit));
  r->headers.emplace_back("ratelimit-remaining", std::to_string(d.rate.remaining));
  r->headers.emplace_back("ratelimit-reset", ceil_seconds(d.rate.reset_us));
  if (!d.rate.allowed) {
    r->headers.emplace_back("retry-after", ceil_seconds(std::max<int64_t>(d.rate.retry_after_us, 1)));
  }
}

Result<HttpExcerpt> ParseExcerpt(const Json& call, std::string_view name, const std::string& field) {
  HttpExcerpt out;
  auto it = call.find(name);
  if (it == call.end() || it->is_null()) return out;
  if (!it->is_object()) return Status::InvalidArgument("must be an object", field);
  auto headers = it->find("headers");
  if (headers != it->end() && !headers->is_null()) {
    if (!headers->is_object()) {
      return Status::InvalidArgument("must be an object of header: value", field + ".headers");
    }
    for (const auto& [k, v] : headers->items()) {
      if (!v.is_string()) return Status::InvalidArgument("must be a string", field + ".headers." + k);
      out.headers.push_back(HttpHeader{k, v.get<std::string>()});
    }
  }
  auto body = it->find("body_excerpt");
  if (body != it->end() && !body->is_null()) {
    if (!body->is_string()) return Status::InvalidArgument("must be a string", field + ".body_excerpt");
    out.body_excerpt = body->get<std::string>();
  }
  return out;
}

// Reads one element of "calls" into a CallReport; errors name calls[i].field.
Result<CallReport> ParseCall(const Json& call, size_t i) {
  const std::string prefix = "calls[" + std::to_string(i) + "].";
  if (!call.is_object()) {
    return Status::InvalidArgument("must be an object", "calls[" + std::to_string(i) + "]");
  }
  static constexpr std::string_view kFields[] = {
      "request_id", "key_id", "occurred_at", "method", "path", "status", "latency_ms", "units",
      "request_bytes", "response_bytes", "client_ip", "origin", "request", "response"};
  for (const auto& [name, value] : call.items()) {
    if (std::find(std::begin(kFields), std::end(kFields), name) == std::end(kFields)) {
      return Status::InvalidArgument("unknown field \"" + name + "\"", prefix + name);
    }
  }
  auto prefixed = [&](Status s) {
    return s.field().empty() || s.field().starts_with("calls[")
               ? s
               : Status::InvalidArgument(s.message(), prefix + s.field());
  };
  CallReport c;
  auto str = [&](std::string_view name, std::string* out) -> Status {
    auto v = OptionalString(call, name);
    if (!v.ok()) return prefixed(v.status());
    if (*v) *out = **v;
    return Status::Ok();
  };
  auto num = [&](std::string_view name, int64_t max, std::optional<int64_t>* out) -> Status {
    auto v = OptionalInt(call, name, 0, max);
    if (!v.ok()) return prefixed(v.status());
    *out = *v;
    return Status::Ok();
  };
  KL_RETURN_IF_ERROR(str("request_id", &c.request_id));
  KL_RETURN_IF_ERROR(str("key_id", &c.key_id));
  std::string occurred_at;
  KL_RETURN_IF_ERROR(str("occurred_at", &occurred_at));
  if (occurred_at.empty()) {
    return Status::InvalidArgument("occurred_at is required", prefix + "occurred_at");
  }
  KL_ASSIGN_OR_RETURN(c.occurred_at_us, ParseRfc3339(occurred_at, prefix + "occurred_at"));
  KL_RETURN_IF_ERROR(str("method", &c.method));
  KL_RETURN_IF_ERROR(str("path", &c.path));
  KL_RETURN_IF_ERROR(str("client_ip", &c.client_ip));
  KL_RETURN_IF_ERROR(str("origin", &c.origin));
  std::optional<int64_t> status, units, request_bytes, response_bytes;
  KL_RETURN_IF_ERROR(num("status", 999, &status));
  if (!status) return Status::InvalidArgument("status is required", prefix + "status");
  c.status = static_cast<uint16_t>(*status);
  KL_RETURN_IF_ERROR(num("units", INT64_MAX, &units));
  if (units) c.units = static_cast<uint64_t>(*units);
  KL_RETURN_IF_ERROR(num("request_bytes", INT64_MAX, &request_bytes));
  KL_RETURN_IF_ERROR(num("response_bytes", INT64_MAX, &response_bytes));
  c.request_bytes = static_cast<uint64_t>(request_bytes.value_or(0));
  c.response_bytes = static_cast<uint64_t>(response_bytes.value_or(0));
  auto latency = call.find("latency_ms");
  if (latency != call.end() && !latency->is_null()) {
    // Milliseconds may be fractional on the wire; stored as integer µs.
    if (!latency->is_number() || latency->get<double>() < 0 || latency->get<double>() > 86'400'000) {
      return Status::InvalidArgument("must be a number of milliseconds, 0..86400000",
                                     prefix + "latency_ms");
    }
    c.latency_us = latency->is_number_integer()
                       ? static_cast<uint64_t>(latency->get<int64_t>()) * 1000
                       : static_cast<uint64_t>(latency->get<double>() * 1000.0 + 0.5);
  }
  KL_ASSIGN_OR_RETURN(c.request, ParseExcerpt(call, "request", prefix + "request"));
  KL_ASSIGN_OR_RETURN(c.response, ParseExcerpt(call, "response", prefix + "response"));
  return c;
}

}  // namespace

Result<HttpResponse> Service::Impl::Authorize(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"client_ip", "origin", "request_id"}));
  KL_ASSIGN_OR_RETURN(auto client_ip, OptionalString(body, "client_ip"));
  if (!client_ip) return Status::InvalidArgument("client_ip is required", "client_ip");
  KL_ASSIGN_OR_RETURN(auto origin, OptionalString(body, "origin"));
  KL_ASSIGN_OR_RETURN(auto request_id, OptionalString(body, "request_id"));
  AuthorizeRequest ar;
  ar.authorization = req.Header("authorization");
  ar.client_ip = *client_ip;
  ar.origin = origin ? std::string_view(*origin) : req.Header("origin");
  ar.now_us = d.clock->NowUs();
  AuthorizeDecision decision = data_plane->Authorize(ar);
  HttpResponse r;
  switch (decision.outcome) {
    case AuthorizeOutcome::kAllowed: {
      Json j = {{"allowed", true}, {"key_id", decision.key_id},
                {"workspace_id", decision.workspace_id}, {"logging", decision.logging},
                {"request_id", request_id ? *request_id : NewId("req_")}};
      r = JsonResponse(200, j);
      break;
    }
    case AuthorizeOutcome::kUnauthenticated:
      r = JsonError(401, "unauthenticated", decision.message);
      r.headers.emplace_back("www-authenticate", "Bearer");
      break;
    case AuthorizeOutcome::kForbidden:
      r = JsonError(403, "permission_denied", decision.message,
                    decision.reason == DenialReason::kIpNotAllowed ? "client_ip" : "origin");
      break;
    case AuthorizeOutcome::kRateLimited:
      r = JsonError(429, "rate_limited", decision.message);
      break;
    case AuthorizeOutcome::kInvalidArgument:
      r = JsonError(400, "invalid_argument", decision.message, "client_ip");
      break;
  }
  AddRateLimitHeaders(decision, &r);
  return r;
}

Result<HttpResponse> Service::Impl::RecordCalls(const HttpRequest& req) {
  KL_ASSIGN_OR_RETURN(Json body, ParseObject(req.body, {"calls"}));
  auto calls_json = body.find("calls");
  if (calls_json == body.end() || !calls_json->is_array()) {
    return Status::InvalidArgument("calls must be an array", "calls");
  }
  std::vector<CallReport> calls;
  calls.reserve(calls_json->size());
  for (size_t i = 0; i < calls_json->size(); i++) {
    KL_ASSIGN_OR_RETURN(CallReport c, ParseCall((*calls_json)[i], i));
    calls.push_back(std::move(c));
  }
  KL_ASSIGN_OR_RETURN(RecordResult recorded, data_plane->RecordCalls(std::move(calls)));
  return JsonResponse(200, {{"recorded", recorded.recorded}, {"duplicates", recorded.duplicates}});
}

}  // namespace keyledger

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
    // Not a sequence: an RFC 3339 time, resolved to the last event recorded by then.
    std::string decoded(as_of);
    for (size_t i = 0; (i = decoded.find("%3A", i)) != std::string::npos;) decoded.replace(i, 3, ":");
    for (size_t i = 0; (i = decoded.find("%2B", i)) != std::string::npos;) decoded.replace(i, 3, "+");
    KL_ASSIGN_OR_RETURN(int64_t at_us, ParseRfc3339(decoded, "as_of"));
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
