// Private to the api/ library: the Service's implementation struct and the
// helpers its endpoint files share (service.cc: management; service_data_plane.cc;
// service_audit.cc; service_billing.cc). Not part of any public interface.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/data_plane.h"
#include "api/json_input.h"
#include "api/notify.h"
#include "api/prometheus.h"
#include "api/service.h"
#include "projections/alarm_eval.h"
#include "projections/security_rules.h"
#include "ledger/hash.h"

namespace keyledger {

constexpr size_t kIdRandomBytes = 10;  // 80 bits: ids are not secrets, just unique
constexpr size_t kSecurityGroupEntriesMax = 100;

struct Principal {
  bool is_operator = false;
  std::string workspace_id;  // for a workspace token
  std::string token_id;
  std::string Actor() const { return is_operator ? "operator" : "token/" + token_id; }
};

// Response and request helpers shared by the endpoint files.
HttpResponse JsonResponse(int status, const Json& body);
HttpResponse NoContent();
std::vector<std::string_view> SplitPath(std::string_view path);
// The query string of the request target ("" if none).
std::string_view QueryOf(const HttpRequest& req);
// Returns the raw value of query parameter `name` ("" if absent).
std::string_view QueryParam(std::string_view query, std::string_view name);
// Returns the raw value of query parameter `name` ("" when given empty, as
// in "as_of=" or "as_of"), or nullopt when the query does not name it.
std::optional<std::string_view> FindQueryParam(std::string_view query, std::string_view name);
// The "limit" query parameter, within 1..o.page_size_max (InvalidArgument otherwise).
Result<size_t> PageSize(std::string_view query, const ServiceOptions& o);
// Most events one page of a stream's history (a key's, an alarm's) returns.
constexpr size_t kHistoryPageMax = 500;
// One page of a stream's history: the "limit" (PageSize, at most
// kHistoryPageMax) and the stream version the "cursor" names (default 1).
struct HistoryPageRequest {
  uint64_t from_version = 1;
  size_t limit = 0;
};
// Returns InvalidArgument (field "limit" or "cursor") for a bad value.
Result<HistoryPageRequest> HistoryPage(std::string_view query, const ServiceOptions& o);
Json WorkspaceJson(const WorkspaceView& w);
Json GroupJson(const SecurityGroupView& g);
Json KeyJson(const KeyView& k);
Hash HashSecret(std::string_view secret);
// Decodes %XX escapes in a query parameter value ('+' is kept as is).
std::string PercentDecode(std::string_view text);
// Durations are measured on the monotonic clock, never the injected one.
uint64_t ElapsedUs(std::chrono::steady_clock::time_point start);

// The route of a request target (path and query), for the request counters.
// kOther: not one of keyledger's own paths (in gateway mode: relayed).
RequestCounters::Route RouteOf(std::string_view target);

// Adds RateLimit-* (and Retry-After when refused) headers when the decision
// checked the rate.
void AddRateLimitHeaders(const AuthorizeDecision& d, HttpResponse* r);
// The 400/401/403/429 answer for a refused authorization, with its headers.
// REQUIRES: d.outcome != kAllowed.
HttpResponse AuthorizeRefusal(const AuthorizeDecision& d);

struct Service::Impl {
  ServiceDeps d;
  ServiceOptions o;
  std::unique_ptr<DataPlane> data_plane;
  std::mutex command_mu;  // one command at a time: validate, append, fold
  RequestCounters requests;
  LatencyHistogramUs authorize_latency;
  LatencyHistogramUs command_append_latency;
  std::atomic<const HttpServer*> http_server{nullptr};

  HttpResponse Metrics() const;
  // Gateway mode (service_gateway.cc).
  ProxyAdmission AdmitProxied(const HttpRequest& head);
  HttpResponse AnswerPreflight(const HttpRequest& head, std::string_view origin) const;

  const KeyState& state() const { return d.key_state->state(); }

  // Request ids for callers that sent none: a random per-process prefix and
  // a counter, unique without a syscall per request.
  std::string request_id_prefix;
  std::atomic<uint64_t> request_counter{0};
  std::string NextRequestId() {
    return request_id_prefix + std::to_string(request_counter.fetch_add(1, std::memory_order_relaxed));
  }

  int64_t RateNowUs() const { return (d.rate_clock != nullptr ? d.rate_clock : d.clock)->NowUs(); }

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
    if (AsciiLower(auth.substr(0, kBearer.size())) != kBearer) return Status::Unauthenticated("Authorization must use the Bearer scheme");
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

  // Returns FailedPrecondition when a workspace already has `count` of
  // `what` and may have at most `count_max`.
  static Status CheckWorkspaceCount(size_t count, size_t count_max, std::string_view what) {
    if (count < count_max) return Status::Ok();
    return Status::FailedPrecondition("a workspace may have at most " +
                                      std::to_string(count_max) + " " + std::string(what) +
                                      "; delete one first");
  }

  static Status RequireOperator(const Principal& who, std::string_view what,
                                std::string field = {}) {
    if (who.is_operator) return Status::Ok();
    return Status::PermissionDenied("only the operator may " + std::string(what),
                                    std::move(field));
  }

  // `trusted_operator`: skip authentication and act as the operator (local
  // tools that already hold the data directory).
  Result<HttpResponse> Route(const HttpRequest& req, bool trusted_operator);
  HttpResponse Health() const;
  // The routed response, or the error's (ErrorResponse), logged first when
  // it is the server's own failure (LogServerError).
  HttpResponse Answer(Result<HttpResponse> routed);
  // Writes a server-side failure (IOError, Corruption, Internal) to stderr,
  // at most one per second; ignores the others. Thread-safe.
  void LogServerError(const Status& s);
  std::atomic<int64_t> last_server_error_log_us{0};  // steady clock; 0: never
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
  Result<HttpResponse> KeyHistoryResponse(const HttpRequest& req, const Principal& who,
                                          const WorkspaceView& ws, std::string_view key_id);
  Result<HttpResponse> KeyAsOfResponse(const HttpRequest& req, const Principal& who,
                                       const WorkspaceView& ws, std::string_view key_id);
  // A key of `ws` that exists or existed: deleted keys are visible to the
  // operator only (auditors); a workspace token sees live keys only.
  // Observability (service_observability.cc).
  Result<HttpResponse> KeyLogs(const HttpRequest& req, const KeyView& key);
  Result<HttpResponse> MetricsResponse(const HttpRequest& req, MetricsScope scope,
                                       const std::string& id);
  // Billing (service_billing.cc).
  Result<HttpResponse> PricePlans(const HttpRequest& req, const Principal& who,
                                  const std::vector<std::string_view>& seg);
  Result<HttpResponse> InvoiceRun(const HttpRequest& req, const Principal& who);
  Result<HttpResponse> Usage(const HttpRequest& req, const WorkspaceView& ws);
  Result<HttpResponse> Invoices(const HttpRequest& req, const WorkspaceView& ws,
                                const std::vector<std::string_view>& seg);
  // Alarm evaluation and delivery (service_alarm_engine.cc).
  std::atomic<uint64_t> alarm_evaluation_errors{0};
  std::atomic<uint64_t> alarm_transitions{0};
  std::atomic<uint64_t> notifications_delivered{0};
  std::atomic<uint64_t> notification_failures{0};
  std::mutex loops_mu;
  std::condition_variable loops_cv;
  bool loops_stopping = false;  // guarded by loops_mu
  std::vector<std::thread> loops;
  Result<size_t> EvaluateAlarms();
  Result<size_t> DeliverNotifications();
  struct AttemptOutcome {
    bool sent = false;       // false: given up unsent (its retry window was over)
    bool delivered = false;
  };
  Result<AttemptOutcome> Attempt(const OutboxEntry& entry);
  Result<AlarmDecision> DecideAlarm(const AlarmView& alarm, int64_t now_us, int64_t* period_end_us);
  Result<std::vector<std::optional<int64_t>>> SpendDatapoints(const AlarmSpec& spec, int64_t from_us,
                                                              int64_t period_us);
  int64_t NextAttemptUs(const PendingNotification& n, uint32_t attempt, int64_t now_us);
  DeliveryResult Send(const OutboxEntry& entry, int64_t now_us);
  // Returns true while the entry's alarm exists and still holds it.
  bool StillPending(const OutboxEntry& entry) const;
  // An event recorded by keyledger itself (actor "system/alarms").
  NewEvent SystemEvent(std::string stream, std::optional<uint64_t> expected, EventBody body);
  void StartAlarmLoops();
  void StopAlarmLoops();
  ~Impl() { StopAlarmLoops(); }

  // Alarm rules (service_alarms.cc).
  Result<HttpResponse> Alarms(const HttpRequest& req, const Principal& who, const KeyView& key,
                              const std::vector<std::string_view>& seg);
  Result<HttpResponse> AlarmHistory(const HttpRequest& req, const AlarmView& alarm);
  Status ParseAlarmSpec(const Json& body, bool creating, AlarmSpec* spec,
                        std::vector<std::string>* new_secrets);
  Result<KeyView> KeyForAudit(const Principal& who, const WorkspaceView& ws,
                              std::string_view key_id) const;
};

}  // namespace keyledger
