// DataPlane: the hot path. Authorizes every request of the rendering API
// (Bearer key -> security group -> TPS limit) and records every call durably.
//
// Thread safety: thread-safe. Authorize takes only a shared lock on the key
// state and one shard lock in the rate limiter.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "api/prometheus.h"
#include "ledger/clock.h"
#include "ledger/ledger.h"
#include "ledger/random.h"
#include "ledger/status.h"
#include "projections/key_state.h"
#include "projections/rate_limiter.h"

namespace keyledger {

struct DataPlaneOptions {
  // Also cap each workspace as a whole at its tps_limit (a second bucket,
  // checked after the key's). Default off: one key never affects another.
  bool workspace_cap = false;
  // Calls older than this (by occurred_at) are refused. Default 35 days.
  int64_t max_lateness_us = 35LL * 24 * 3600 * 1'000'000;
  // Calls this far in the future are refused. Default 5 minutes.
  int64_t max_lead_us = 5LL * 60 * 1'000'000;
  // Most calls in one POST /v1/calls. Default 1000.
  size_t calls_per_batch_max = 1000;
  // Denials are aggregated per (key, reason) and appended this often. Default 1 s.
  int64_t denial_flush_interval_us = 1'000'000;
  // Distinct (key, reason) pairs held between flushes; more are counted as
  // unattributable. Default 100,000.
  size_t denial_entries_max = 100'000;
  // Gateway mode: calls queued for recording (QueueReservedCall) are appended
  // this often, or sooner once calls_per_batch_max are waiting. Default 100 ms.
  int64_t call_flush_interval_us = 100'000;
  // Gateway mode: most calls reserved or queued at once; beyond it,
  // ReserveCall() refuses (the gateway answers 503). Default 100,000.
  size_t queued_calls_max = 100'000;
  RateLimiterOptions rate_limiter;
};

enum class AuthorizeOutcome : uint8_t {
  kAllowed = 0,
  kUnauthenticated,  // 401: no/malformed header, unknown key, expired old secret
  kForbidden,        // 403: IP or origin outside the security group
  kRateLimited,      // 429
  kInvalidArgument,  // 400: client_ip is not an IP address
};

struct AuthorizeRequest {
  std::string_view authorization;  // the client's Authorization header value
  std::string_view client_ip;
  std::string_view origin;  // "" when the client sent none
  int64_t now_us = 0;       // UTC: decides a rotated secret's grace, dates refusals
  int64_t rate_now_us = 0;  // the rate limiter's time (ServiceDeps::rate_clock)
};

struct AuthorizeDecision {
  AuthorizeOutcome outcome = AuthorizeOutcome::kUnauthenticated;
  DenialReason reason = DenialReason::kUnknownKey;  // when not allowed
  std::string key_id;        // empty when the key is not identifiable
  std::string workspace_id;  // empty when the key is not identifiable
  bool logging = false;      // the key's logging switch, for the gateway
  bool rate_checked = false; // `rate` is meaningful
  RateDecision rate{};
  std::string message;       // for error bodies
};

// One call as reported by the gateway, already parsed. RecordCalls fills in
// call.workspace_id, call.logged and call.units itself.
struct CallReport {
  ApiCallRecorded call;
  std::optional<uint64_t> units;  // default: 1 for a 2xx, 0 otherwise
  // Whether the key's logging was on when the call was made, where the
  // reporter saw it (gateway mode: at authorization). Unset (POST /v1/calls):
  // RecordCalls takes a call made before the key's last logging switch as
  // made while logging was in the other state.
  std::optional<bool> logging_when_made;
};

struct RecordResult {
  size_t recorded = 0;
  size_t duplicates = 0;
};

// Returns `text` with its ASCII letters in lower case: header names, URL
// schemes and hosts compare without case.
inline std::string AsciiLower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// Whether `c` may stand in an HTTP token, such as a header name (RFC 9110
// "tchar").
inline bool IsHttpTokenChar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// Limits on a recorded call's text fields (RecordCalls refuses longer ones;
// the gateway cuts what it records to them).
constexpr size_t kCallMethodBytesMax = 16;
constexpr size_t kCallPathBytesMax = 2048;
constexpr size_t kCallOriginBytesMax = 2048;
constexpr size_t kCallClientIpBytesMax = 64;  // the longest IPv6 text is 45 bytes
// Most billable units one recorded call may carry. Far above any real call;
// without a cap, one call could push a month's usage (billing) or a metrics
// sum past 2^64 - 1, where it can no longer be counted. At the cap that takes
// 18 billion calls of one workspace in one month.
constexpr uint64_t kCallUnitsMax = 1'000'000'000;

// Limits on logged excerpts.
constexpr size_t kBodyExcerptBytesMax = 4096;
constexpr size_t kExcerptHeadersMax = 64;

class DataPlane {
 public:
  // REQUIRES: every pointer non-null and outliving the DataPlane.
  DataPlane(Ledger* ledger, const KeyState* key_state, const Clock* clock, RandomSource* random,
            DataPlaneOptions options);
  ~DataPlane();  // flushes pending denials

  // Decides one request. Refusals of identifiable keys (and an aggregate of
  // unidentifiable ones) are queued for recording.
  AuthorizeDecision Authorize(const AuthorizeRequest& request);

  // Validates every call, then appends them all durably (kSync), idempotent
  // by request_id forever. Returns InvalidArgument naming "calls[i].field"
  // and appends nothing if any call is invalid.
  Result<RecordResult> RecordCalls(std::vector<CallReport> calls);
  // Returns DataPlaneOptions::calls_per_batch_max.
  size_t calls_per_batch_max() const { return options_.calls_per_batch_max; }

  // Appends the aggregated denials now. Called by the background flusher and
  // at shutdown; tests call it directly.
  Status FlushDenials();

  // Gateway mode. Recording a relayed call cannot hold up its response, so
  // calls are queued and the background flusher appends them durably in
  // batches. A slot is reserved before the request is relayed, so a call
  // whose request went upstream is never dropped for lack of room:
  // ReserveCall() returns false (reserving nothing) when queued_calls_max
  // calls are already reserved or queued.
  [[nodiscard]] bool ReserveCall();
  // Queues a call into a slot taken by ReserveCall().
  // REQUIRES: a ReserveCall() returned true that no other call has used.
  void QueueReservedCall(CallReport report);
  // Gives back a slot taken by ReserveCall() that no call will use (the
  // request was refused after all).
  // REQUIRES: a ReserveCall() returned true that no other call has used.
  void CancelReservedCall();
  // Appends queued calls now, in batches of calls_per_batch_max. Called by
  // the background flusher and at Stop(). A batch that fails to append is
  // kept for the next flush and its error returned; a call that can never be
  // appended (invalid, e.g. its key's workspace vanished) is dropped,
  // reported on stderr and counted in calls_dropped().
  Status FlushCalls();
  // Calls reserved or queued and not yet appended.
  size_t calls_pending() const;
  uint64_t calls_dropped() const { return calls_dropped_.load(std::memory_order_relaxed); }

  // Latency of the durable append in RecordCalls.
  const LatencyHistogramUs& append_latency() const { return append_latency_; }

  // Number of denials appended so far (events, not requests).
  uint64_t denial_events_appended() const { return denial_events_appended_.load(); }

  // Stops the background flusher after a last flush of denials and queued
  // calls. Idempotent. REQUIRES: no QueueReservedCall() after it.
  void Stop();

 private:
  void QueueDenial(const AuthorizeDecision& d, const AuthorizeRequest& r);
  // Appends `batch` (one RecordCalls, or one call at a time when one of them
  // is invalid, dropping those). Sets *done to how many calls from the front
  // were appended or dropped; returns the error that stopped it, if any.
  Status AppendQueuedCalls(const std::vector<CallReport>& batch, size_t* done);
  void FlushLoop();

  Ledger* ledger_;
  const KeyState* key_state_;
  const Clock* clock_;
  RandomSource* random_;
  DataPlaneOptions options_;
  RateLimiter limiter_;

  struct Pending {
    uint64_t count = 0;
    std::string client_ip;  // a sample
    std::string origin;     // a sample
    int64_t first_at_us = 0;
  };
  std::mutex denial_mu_;
  // (workspace, key, reason, UTC minute) -> pending; an empty key means
  // unidentifiable. The minute keeps one event's refusals in one metrics
  // minute: the event counts them all at its first refusal's time.
  using DenialGroup = std::tuple<std::string, std::string, DenialReason, int64_t>;
  std::map<DenialGroup, Pending> denials_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread flusher_;
  std::atomic<uint64_t> denial_events_appended_{0};

  // Gateway mode's queue. Lock order: calls_mu_ is never held with denial_mu_.
  mutable std::mutex calls_mu_;
  std::deque<CallReport> queued_calls_;  // GUARDED_BY(calls_mu_)
  size_t reserved_calls_ = 0;            // GUARDED_BY(calls_mu_); includes the queued
  std::mutex flush_calls_mu_;            // one FlushCalls at a time, so order is kept
  std::atomic<uint64_t> calls_dropped_{0};
  LatencyHistogramUs append_latency_;
};

// Removes secrets from logged headers: Authorization, Cookie and
// Proxy-Authorization values, and anything that looks like a keyledger secret
// (klk_/klw_/klo_ prefixes) in any header or body excerpt.
void RedactExcerpt(HttpExcerpt* excerpt);

}  // namespace keyledger
