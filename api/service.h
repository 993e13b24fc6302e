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

#include "api/http_types.h"
#include "ledger/clock.h"
#include "ledger/ledger.h"
#include "ledger/random.h"
#include "ledger/status.h"
#include "api/data_plane.h"
#include "projections/call_projections.h"
#include "projections/key_state_store.h"
#include "projections/rate_limiter.h"  // kTpsLimitMax

namespace keyledger {

struct ServiceOptions {
  // tps_limit of a new workspace when the request names none. Default 10.
  uint32_t default_tps_limit = 10;
  // Most keys or groups one list page returns; default page size 50.
  size_t page_size_max = 1000;
  size_t page_size_default = 50;
  // Longest grace period a rotation may give the old secret. Default 7 days.
  int64_t rotation_grace_seconds_max = 7 * 24 * 3600;
  // Allow alarm webhooks to loopback and private addresses (tests only; an
  // SSRF guard refuses them by default).
  bool allow_private_webhooks = false;
  DataPlaneOptions data_plane;
};

struct ServiceDeps {
  Ledger* ledger = nullptr;               // REQUIRES: non-null, outlives the Service
  KeyStateStore* key_state = nullptr;     // REQUIRES: non-null, outlives the Service
  const Clock* clock = nullptr;           // REQUIRES: non-null, outlives the Service
  RandomSource* random = nullptr;         // REQUIRES: non-null, outlives the Service
  CallProjections* calls = nullptr;       // REQUIRES: non-null, outlives the Service
};

// Limits on inputs, by name.
constexpr size_t kNameCharsMax = 100;
constexpr size_t kDescriptionCharsMax = 500;
constexpr size_t kSecretBytes = 20;  // 160 bits from the CSPRNG

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

  // Handles one request as the operator, without authentication: for local
  // command-line tools that open the data directory themselves (and so
  // already have every power the operator has). Never reachable over HTTP.
  HttpResponse HandleAsOperator(const HttpRequest& request);

  // The hot path, for in-process use and benchmarks.
  DataPlane& data_plane();

  // Flushes pending denials and stops background work. Idempotent.
  void Stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Maps a Status to its HTTP status and JSON error body.
HttpResponse ErrorResponse(const Status& status);

}  // namespace keyledger
