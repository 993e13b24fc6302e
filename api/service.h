// Service: keyledger's request handling, independent of sockets. Every
// endpoint is a pure function of (request, ledger, projections, clock, random):
// the HTTP server calls Handle(), and tests call it directly.
//
// Commands (POST/PATCH/DELETE) validate against the key-state projection,
// append their events to the ledger durably, fold them, and answer from the
// folded state, so a change is visible to the very next request. A refused
// request appends nothing.
//
// Thread safety: thread-safe. Commands run one at a time (they are rare and
// must validate against the state they change); reads run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "api/http_server.h"
#include "api/http_types.h"
#include "ledger/clock.h"
#include "ledger/ledger.h"
#include "ledger/random.h"
#include "ledger/status.h"
#include "api/data_plane.h"
#include "api/notify.h"
#include "projections/call_projections.h"
#include "projections/key_state_store.h"
#include "projections/rate_limiter.h"  // kTpsLimitMax
#include "projections/security_rules.h"

namespace keyledger {

// Alarm evaluation and notification delivery (docs/api.md, "Alarms").
struct AlarmOptions {
  // How often the evaluation loop evaluates every alarm. Default 10 s.
  int64_t evaluation_interval_us = 10'000'000;
  // A period is evaluated once it ended this long ago, so that calls the
  // gateway still holds in a batch are counted. Default 30 s.
  int64_t settle_us = 30'000'000;
  // How often the delivery loop looks for due notifications. Default 1 s.
  int64_t delivery_poll_us = 1'000'000;
  // The first retry waits 50-100 % of this; each further retry doubles it,
  // up to retry_wait_us_max. Default 5 s.
  int64_t retry_base_us = 5'000'000;
  // Longest wait between two attempts. Default 1 h.
  int64_t retry_wait_us_max = 3'600'000'000;
  // No attempt is made later than this after the transition; the last
  // failure is then recorded as final. Default 24 h.
  int64_t retry_window_us = 24 * 3'600'000'000LL;
  // Most notifications one delivery round attempts. Default 100.
  size_t deliveries_per_round_max = 100;
  // A failed attempt that took at least this long (no answer, a timeout, a
  // slow error) makes its destination wait for the next round, so that one
  // slow receiver does not hold up the others. Default 2 s.
  int64_t slow_attempt_us = 2'000'000;
};

struct ServiceOptions {
  // tps_limit of a new workspace when the request names none. Default 10.
  uint32_t default_tps_limit = 10;
  // Most keys or groups one list page returns; default page size 50.
  size_t page_size_max = 1000;
  size_t page_size_default = 50;
  // Most live keys, live security groups and active tokens one workspace may
  // have; one more is refused with 409 failed_precondition. The key limit
  // keeps a month's invoice within kInvoiceKeyUsagesMax keys with usage
  // unless a workspace deletes and replaces thousands of keys in one month.
  size_t keys_per_workspace_max = 10'000;
  size_t security_groups_per_workspace_max = 1'000;
  size_t tokens_per_workspace_max = 100;
  // Longest grace period a rotation may give the old secret. Default 7 days.
  int64_t rotation_grace_seconds_max = 7 * 24 * 3600;
  // Allow alarm webhooks to loopback and private addresses (tests only; an
  // SSRF guard refuses them by default).
  bool allow_private_webhooks = false;
  // Most invoices one append of an invoice run holds; a run with more issues
  // them in several appends (see docs/billing.md). Default and most:
  // kAppendEventsMax (10,000). REQUIRES: 1..kAppendEventsMax.
  size_t invoice_run_append_events_max = kAppendEventsMax;
  DataPlaneOptions data_plane;
  AlarmOptions alarms;
  // Gateway mode: the proxies in front of keyledger (load balancers). A
  // request whose peer address lies in one of these ranges is attributed to
  // the client X-Forwarded-For names (see GatewayClientIp); from any other
  // peer X-Forwarded-For is ignored, so a client cannot choose the address
  // its security group checks. Null (default): the peer is always the client.
  // REQUIRES: null, or compiled by SecurityRules::Compile(cidrs, {}) with at
  // least one CIDR.
  std::shared_ptr<const SecurityRules> trusted_proxies;
};

// Most X-Forwarded-For addresses GatewayClientIp looks at, from the right.
inline constexpr size_t kForwardedForHopsMax = 16;
// The client GatewayClientIp answers when a trusted proxy names it by no
// readable address: the unspecified address, which only a rule admitting
// every IPv4 address (0.0.0.0/0) allows, so restricted keys are refused.
inline constexpr char kUnknownClientIp[] = "0.0.0.0";

// Returns the address gateway mode authorizes and records for `head`: the
// peer (head.remote_ip), unless the peer lies in `trusted_proxies`; then,
// walking the X-Forwarded-For addresses (all such headers, in order) from the
// right, the first one outside `trusted_proxies` (an entry may carry a port:
// "203.0.113.9:51234", "[2001:db8::1]:443"). An entry that is not an address
// answers kUnknownClientIp: the proxy does not know the client, and its own
// address must not stand for it. After kForwardedForHopsMax entries, or
// without the header, the last trusted address passed is the client.
// Addresses are returned in canonical text (IpAddress::ToString). Never fails.
std::string GatewayClientIp(const HttpRequest& head, const SecurityRules* trusted_proxies);

struct ServiceDeps {
  Ledger* ledger = nullptr;               // REQUIRES: non-null, outlives the Service
  KeyStateStore* key_state = nullptr;     // REQUIRES: non-null, outlives the Service
  const Clock* clock = nullptr;           // REQUIRES: non-null, outlives the Service
  RandomSource* random = nullptr;         // REQUIRES: non-null, outlives the Service
  CallProjections* calls = nullptr;       // REQUIRES: non-null, outlives the Service
  // Sends alarm notifications; null: notifications wait in the outbox.
  // REQUIRES: outlives the Service (or its Stop()).
  Notifier* notifier = nullptr;
  // The rate limiter's time: a clock that never goes back nor jumps
  // (SteadyClock), so that setting the time of day neither refuses keys nor
  // lets bursts through. Null: `clock` (tests drive both with one clock).
  // REQUIRES: outlives the Service.
  const Clock* rate_clock = nullptr;
};

// Limits on inputs, by name.
constexpr size_t kNameCharsMax = 100;
constexpr size_t kDescriptionCharsMax = 500;
constexpr size_t kSecretBytes = 20;  // 160 bits from the CSPRNG
constexpr size_t kOperatorTokenBytesMin = 16;  // KEYLEDGER_ADMIN_TOKEN

// The prefixes that make keyledger's secrets recognisable (and greppable by
// secret scanners).
constexpr char kApiKeyPrefix[] = "klk_";
constexpr char kWorkspaceTokenPrefix[] = "klw_";
constexpr char kOperatorTokenPrefix[] = "klo_";

class Service {
 public:
  Service(ServiceDeps deps, ServiceOptions options);

  // Makes sure an operator token exists. With `configured` (from
  // KEYLEDGER_ADMIN_TOKEN), its hash becomes the operator's (recorded as an
  // event when it changes). Without it, on the first start a token is
  // generated and returned so the caller can print it once; later starts
  // return "" and keep the stored hash. Only hashes are ever stored.
  // Returns InvalidArgument for a configured token under 16 bytes, or a
  // ledger/projection error.
  Result<std::string> BootstrapOperatorToken(const std::optional<std::string>& configured);

  // Handles one request. Never throws.
  HttpResponse Handle(const HttpRequest& request);

  // Returns whether Handle(request) is quick and never waits on a disk or
  // another thread's work: POST /v1/authorize, GET /healthz and GET /metrics.
  // Such requests may be handled on an HTTP I/O thread
  // (HttpServerOptions::runs_inline); the others write synced events or read
  // projections at length and belong on a worker. Thread-safe.
  static bool IsQuickRequest(const HttpRequest& request);

  // Handles one request as the operator, without authentication: for local
  // command-line tools that open the data directory themselves (and so
  // already have every power the operator has). Never reachable over HTTP.
  HttpResponse HandleAsOperator(const HttpRequest& request);

  // The hot path, for in-process use and benchmarks.
  DataPlane& data_plane();

  // Gateway mode (`serve --upstream`): hooks for HttpServer::Start that relay
  // every request outside keyledger's own paths (/v1/..., /healthz,
  // /metrics) to the rendering API, authorized as POST /v1/authorize decides
  // and recorded as POST /v1/calls would (docs/api.md, "Gateway mode").
  // REQUIRES: the server using them is stopped before Stop().
  ProxyHooks GatewayHooks();

  // Adds the server's connection and request counters to GET /metrics.
  // REQUIRES: `server` outlives every later Handle() call (or is detached
  // with nullptr first).
  void AttachHttpServer(const HttpServer* server);

  // Evaluates every live alarm at the clock's now (docs/api.md, "Alarms")
  // and records each state change as an AlarmStateChanged event. A rule whose
  // data cannot be read keeps its state (counted in /metrics). Returns the
  // number of transitions recorded, or the first ledger error.
  Result<size_t> EvaluateAlarms();

  // Attempts the notifications due at the clock's now (at most
  // options.alarms.deliveries_per_round_max sends; entries past their retry
  // window are given up unsent besides), one after the other, and records
  // each (NotificationDelivered, or NotificationFailed with the next
  // attempt's time). A destination whose attempt failed slowly
  // (options.alarms.slow_attempt_us) gets no more this round. Returns the
  // number of entries attempted or given up (0 without a notifier), or the
  // first ledger error.
  Result<size_t> DeliverNotifications();

  // Starts two background threads: EvaluateAlarms every
  // evaluation_interval_us and DeliverNotifications every delivery_poll_us.
  // Stop() ends them. REQUIRES: called at most once.
  void StartAlarmLoops();

  // Stops the alarm loops, flushes pending denials and stops background
  // work. Idempotent.
  void Stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Maps a Status to its HTTP status and JSON error body.
HttpResponse ErrorResponse(const Status& status);

}  // namespace keyledger
