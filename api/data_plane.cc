#include "api/data_plane.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <unordered_set>

#include "api/call_batch_json.h"
#include "ledger/hash.h"
#include "ledger/thread_name.h"
#include "projections/metrics_fold.h"
#include "projections/security_rules.h"

namespace keyledger {
namespace {

constexpr size_t kRequestIdBytesMax = 128;
constexpr size_t kHeaderValueBytesMax = 8192;
constexpr char kRedacted[] = "[REDACTED]";
// The answer to a secret that names no live key, and to one rotated out:
// a leaked old secret must not tell its holder that it was ever real.
constexpr char kUnknownKeyMessage[] = "unknown API key";

// Returns the token of "Bearer <token>", or "" when the header is not that.
std::string_view BearerToken(std::string_view header) {
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size()) return {};
  for (size_t i = 0; i < kScheme.size(); i++) {
    char c = header[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kScheme[i]) return {};
  }
  std::string_view token = header.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

bool IsPrintableId(std::string_view s, size_t bytes_max) {
  if (s.empty() || s.size() > bytes_max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// Idempotency: the event id of a call is a hash of its request id, so a
// retry after any delay maps to the same event id.
EventId CallEventId(std::string_view request_id) {
  Hash h = HashBytes(std::string("call\0", 5) + std::string(request_id));
  EventId id;
  std::copy_n(h.begin(), id.size(), id.begin());
  return id;
}

bool IsSecretChar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Whether the '_' at text[underscore] ends a secret's prefix: "klk_",
// "klw_" or "klo_" in any case (c | 0x20 lower-cases exactly the letters
// compared here).
bool SecretPrefixEndsAt(std::string_view text, size_t underscore) {
  if (underscore < 3) return false;
  const char k = static_cast<char>(text[underscore - 3] | 0x20);
  const char l = static_cast<char>(text[underscore - 2] | 0x20);
  const char kind = static_cast<char>(text[underscore - 1] | 0x20);
  return k == 'k' && l == 'l' && (kind == 'k' || kind == 'w' || kind == 'o');
}

// Replaces the secret after every prefix (see SecretPrefixEndsAt) in `text`
// with [REDACTED], in one pass. A secret's run of letters and digits ends
// where another prefix begins, so secrets written back to back are each
// redacted whole.
void RedactSecrets(std::string* text) {
  const std::string_view in = *text;
  size_t underscore = in.find('_');
  if (underscore == std::string_view::npos) return;  // the common case: nothing to do
  std::string out;
  size_t copied = 0;
  for (; underscore != std::string_view::npos; underscore = in.find('_', underscore + 1)) {
    if (!SecretPrefixEndsAt(in, underscore)) continue;
    const size_t start = underscore + 1;
    size_t end = start;
    while (end < in.size() && IsSecretChar(in[end]) &&
           !(end + 3 < in.size() && in[end + 3] == '_' && SecretPrefixEndsAt(in, end + 3))) {
      end++;
    }
    if (end == start) continue;
    out.append(in.substr(copied, start - copied));
    out += kRedacted;
    copied = end;
    underscore = end - 1;  // the search goes on after the secret
  }
  if (copied == 0) return;  // no secret found (a redaction sets copied > 0)
  out.append(in.substr(copied));
  *text = std::move(out);
}

// Cuts `text` to at most `bytes_max` bytes, not inside a UTF-8 sequence.
void CutAtCharBoundary(std::string* text, size_t bytes_max) {
  if (text->size() <= bytes_max) return;
  size_t cut = bytes_max;
  while (cut > 0 && (static_cast<unsigned char>((*text)[cut]) & 0xC0) == 0x80) cut--;
  text->resize(cut);
}

// The ledger names an event it refuses as "events[i]"; the caller knows
// calls. Returns `s` with the call's field, or `s` as it is.
Status CallOfEventError(const Status& s, const std::vector<size_t>& call_of_event) {
  constexpr std::string_view kPrefix = "events[";
  const std::string& field = s.field();
  size_t event = 0;
  if (s.code() != Code::kInvalidArgument || !field.starts_with(kPrefix) ||
      std::from_chars(field.data() + kPrefix.size(), field.data() + field.size(), event).ec !=
          std::errc() ||
      event >= call_of_event.size()) {
    return s;
  }
  return Status::InvalidArgument(
      "the call is over " + std::to_string(kEventBytesMax) +
          " bytes once recorded (its headers and body excerpts, after redaction)",
      "calls[" + std::to_string(call_of_event[event]) + "]");
}

Status ValidateCall(const CallReport& report, size_t i, int64_t now_us,
                    const DataPlaneOptions& o) {
  const ApiCallRecorded& c = report.call;
  auto field = [i](const char* name) {
    return "calls[" + std::to_string(i) + "]." + name;
  };
  if (!IsPrintableId(c.request_id, kRequestIdBytesMax)) {
    return Status::InvalidArgument("request_id is required: 1..128 printable ASCII bytes",
                                   field("request_id"));
  }
  if (c.key_id.empty()) return Status::InvalidArgument("key_id is required", field("key_id"));
  if (c.occurred_at_us == 0) {
    return Status::InvalidArgument("occurred_at is required", field("occurred_at"));
  }
  if (c.occurred_at_us < now_us - o.max_lateness_us) {
    return Status::InvalidArgument("occurred_at is older than the maximum lateness",
                                   field("occurred_at"));
  }
  if (c.occurred_at_us > now_us + o.max_lead_us) {
    return Status::InvalidArgument("occurred_at is more than 5 minutes in the future",
                                   field("occurred_at"));
  }
  if (c.status < 100 || c.status > 599) {
    return Status::InvalidArgument("status must be an HTTP status 100..599", field("status"));
  }
  if (report.units && *report.units > kCallUnitsMax) {
    return Status::InvalidArgument(
        "units must be between 0 and " + std::to_string(kCallUnitsMax), field("units"));
  }
  if (c.method.size() > kCallMethodBytesMax) return Status::InvalidArgument("too long", field("method"));
  if (c.path.size() > kCallPathBytesMax) return Status::InvalidArgument("too long", field("path"));
  if (c.origin.size() > kCallOriginBytesMax) {
    return Status::InvalidArgument("too long", field("origin"));
  }
  if (c.client_ip.size() > kCallClientIpBytesMax) {
    return Status::InvalidArgument("too long", field("client_ip"));
  }
  for (const auto& [excerpt, name] :
       {std::pair{&c.request, "request.headers"}, std::pair{&c.response, "response.headers"}}) {
    if (excerpt->headers.size() > kExcerptHeadersMax) {
      return Status::InvalidArgument(
          "at most " + std::to_string(kExcerptHeadersMax) + " headers", field(name));
    }
    for (const HttpHeader& h : excerpt->headers) {
      // Redaction goes by name: "Authorization " must not pass as another header.
      if (h.name.empty() || !std::all_of(h.name.begin(), h.name.end(), IsHttpTokenChar)) {
        return Status::InvalidArgument("header names are HTTP tokens (RFC 9110)",
                                       field(name));
      }
    }
  }
  return Status::Ok();
}

// After RedactExcerpt, which may lengthen the text: a secret cut in two by
// the limit is then redacted already.
void TrimExcerpt(HttpExcerpt* e) {
  CutAtCharBoundary(&e->body_excerpt, kBodyExcerptBytesMax);
  for (auto& h : e->headers) CutAtCharBoundary(&h.value, kHeaderValueBytesMax);
}

}  // namespace

void RedactExcerpt(HttpExcerpt* excerpt) {
  static const std::unordered_set<std::string> kSecretHeaders = {
      "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"};
  for (auto& h : excerpt->headers) {
    if (kSecretHeaders.count(AsciiLower(h.name))) {
      h.value = kRedacted;
    } else {
      RedactSecrets(&h.value);
    }
  }
  RedactSecrets(&excerpt->body_excerpt);
}

namespace {

// `options` with a shard seed from `random` (RateLimiterOptions::shard_seed).
RateLimiterOptions WithShardSeed(RateLimiterOptions options, RandomSource* random) {
  random->Fill(reinterpret_cast<uint8_t*>(&options.shard_seed), sizeof(options.shard_seed));
  return options;
}

}  // namespace

DataPlane::DataPlane(Ledger* ledger, const KeyState* key_state, const Clock* clock,
                     RandomSource* random, DataPlaneOptions options)
    : ledger_(ledger),
      key_state_(key_state),
      clock_(clock),
      random_(random),
      options_(options),
      limiter_(WithShardSeed(options.rate_limiter, random)) {
  assert(ledger_ && key_state_ && clock_ && random_);
  flusher_ = std::thread([this] {
    NameThisThread("kl-dp-flush");
    FlushLoop();
  });
}

DataPlane::~DataPlane() { Stop(); }

void DataPlane::Stop() {
  {
    std::lock_guard<std::mutex> lock(denial_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  Status calls = FlushCalls();
  if (!calls.ok()) std::fprintf(stderr, "keyledger: final call flush: %s\n", calls.ToString().c_str());
  Status last = FlushDenials();
  if (!last.ok()) std::fprintf(stderr, "keyledger: final denial flush: %s\n", last.ToString().c_str());
}

void DataPlane::FlushLoop() {
  const auto tick = std::chrono::microseconds(
      std::min(options_.denial_flush_interval_us, options_.call_flush_interval_us));
  auto last_denial_flush = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(denial_mu_);
  while (!stopping_) {
    stop_cv_.wait_for(lock, tick);
    if (stopping_) break;
    lock.unlock();
    if (calls_pending() > 0) {
      Status s = FlushCalls();
      if (!s.ok()) std::fprintf(stderr, "keyledger: call flush: %s\n", s.ToString().c_str());
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_denial_flush >= std::chrono::microseconds(options_.denial_flush_interval_us)) {
      last_denial_flush = now;
      Status s = FlushDenials();
      if (!s.ok()) std::fprintf(stderr, "keyledger: denial flush: %s\n", s.ToString().c_str());
    }
    lock.lock();
  }
}

bool DataPlane::ReserveCall() {
  std::lock_guard<std::mutex> lock(calls_mu_);
  if (reserved_calls_ >= options_.queued_calls_max) return false;
  reserved_calls_++;
  return true;
}

void DataPlane::CancelReservedCall() {
  std::lock_guard<std::mutex> lock(calls_mu_);
  assert(reserved_calls_ > queued_calls_.size() && "CancelReservedCall without a reservation");
  reserved_calls_--;
}

void DataPlane::QueueReservedCall(CallReport report) {
  bool batch_full = false;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    assert(reserved_calls_ > queued_calls_.size() && "QueueReservedCall without a reservation");
    queued_calls_.push_back(std::move(report));
    batch_full = queued_calls_.size() >= options_.calls_per_batch_max;
  }
  if (batch_full) stop_cv_.notify_all();  // wakes the flusher early (it re-checks stopping_)
}

size_t DataPlane::calls_pending() const {
  std::lock_guard<std::mutex> lock(calls_mu_);
  return reserved_calls_;
}

Status DataPlane::FlushCalls() {
  std::lock_guard<std::mutex> flushing(flush_calls_mu_);
  for (;;) {
    std::vector<CallReport> batch;
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      const auto n = static_cast<ptrdiff_t>(std::min(queued_calls_.size(), options_.calls_per_batch_max));
      if (n == 0) return Status::Ok();
      batch.assign(std::make_move_iterator(queued_calls_.begin()),
                   std::make_move_iterator(queued_calls_.begin() + n));
      queued_calls_.erase(queued_calls_.begin(), queued_calls_.begin() + n);
    }
    size_t done = 0;
    Status appended = AppendQueuedCalls(batch, &done);
    std::lock_guard<std::mutex> lock(calls_mu_);
    assert(done <= batch.size() && reserved_calls_ >= done);
    reserved_calls_ -= done;
    if (!appended.ok()) {
      // What was not appended stays first in line, in order, for the next flush.
      queued_calls_.insert(queued_calls_.begin(),
                           std::make_move_iterator(batch.begin() + static_cast<ptrdiff_t>(done)),
                           std::make_move_iterator(batch.end()));
      return appended;
    }
  }
}

Status DataPlane::AppendQueuedCalls(const std::vector<CallReport>& batch, size_t* done) {
  *done = 0;
  auto recorded = RecordCalls(batch);
  if (recorded.ok()) {
    *done = batch.size();
    return Status::Ok();
  }
  if (recorded.status().code() != Code::kInvalidArgument) return recorded.status();
  // One call that can never be appended must not hold up the rest.
  for (const CallReport& call : batch) {
    auto one = RecordCalls({call});
    if (!one.ok() && one.status().code() != Code::kInvalidArgument) return one.status();
    if (!one.ok()) {
      calls_dropped_.fetch_add(1, std::memory_order_relaxed);
      std::fprintf(stderr, "keyledger: gateway call %s not recorded: %s\n",
                   call.call.request_id.c_str(), one.status().ToString().c_str());
    }
    ++*done;
  }
  return Status::Ok();
}

AuthorizeDecision DataPlane::Authorize(const AuthorizeRequest& request) {
  AuthorizeDecision d;
  auto ip = ParseIpAddress(request.client_ip);
  if (!ip.ok()) {
    d.outcome = AuthorizeOutcome::kInvalidArgument;
    d.message = "client_ip is not an IPv4 or IPv6 address";
    return d;
  }
  std::string_view secret = BearerToken(request.authorization);
  if (secret.empty()) {
    d.reason = DenialReason::kMalformedCredentials;
    d.message = "missing or malformed Authorization: Bearer <api key>";
    QueueDenial(d, request);
    return d;
  }
  // Keys are found by the hash of the secret: every lookup costs the same
  // hash and one hash-table probe, whether or not the key exists.
  const Hash hash = HashBytes(secret);
  bool found = key_state_->VisitSecret(hash, [&](const AuthView& v) {
    d.key_id = v.key.id;
    d.workspace_id = v.key.workspace_id;
    d.logging = v.key.logging;
    if (v.is_old_secret && request.now_us >= v.key.old_secret_valid_until_us) {
      d.outcome = AuthorizeOutcome::kUnauthenticated;
      d.reason = DenialReason::kRevokedSecret;  // recorded; the answer is an unknown key's
      d.message = kUnknownKeyMessage;
      return;
    }
    if (v.rules == nullptr || !v.rules->AllowsIp(*ip)) {
      d.outcome = AuthorizeOutcome::kForbidden;
      d.reason = DenialReason::kIpNotAllowed;
      d.message = "client_ip is outside the key's security group";
      return;
    }
    if (!v.rules->AllowsOrigin(request.origin)) {
      d.outcome = AuthorizeOutcome::kForbidden;
      d.reason = DenialReason::kOriginNotAllowed;
      d.message = "origin is not allowed by the key's security group";
      return;
    }
    const uint32_t limit = std::clamp<uint32_t>(v.workspace.tps_limit, 1, kTpsLimitMax);
    d.rate_checked = true;
    d.rate = limiter_.Admit(v.key.id, limit, request.rate_now_us);
    if (d.rate.allowed && options_.workspace_cap) {
      // Workspace ids ("ws_…") never collide with key ids ("key_…") as bucket names.
      RateDecision ws = limiter_.Admit(v.workspace.id, limit, request.rate_now_us);
      if (!ws.allowed) d.rate = ws;
    }
    if (!d.rate.allowed) {
      d.outcome = AuthorizeOutcome::kRateLimited;
      d.reason = DenialReason::kRateLimited;
      d.message = "over the TPS limit of " + std::to_string(limit);
      return;
    }
    d.outcome = AuthorizeOutcome::kAllowed;
  });
  if (!found) {
    d.outcome = AuthorizeOutcome::kUnauthenticated;
    d.reason = DenialReason::kUnknownKey;
    d.message = kUnknownKeyMessage;
  }
  if (d.outcome != AuthorizeOutcome::kAllowed) QueueDenial(d, request);
  return d;
}

void DataPlane::QueueDenial(const AuthorizeDecision& d, const AuthorizeRequest& r) {
  std::lock_guard<std::mutex> lock(denial_mu_);
  // The metrics' own minute, floored (for times before 1970 too).
  const int64_t minute =
      r.now_us - ((r.now_us % kMetricsMinuteUs) + kMetricsMinuteUs) % kMetricsMinuteUs;
  DenialGroup key(d.workspace_id, d.key_id, d.reason, minute);
  auto it = denials_.find(key);
  if (it == denials_.end()) {
    if (denials_.size() >= options_.denial_entries_max) {
      // Too many distinct keys refused at once: count them without attribution.
      key = DenialGroup(std::string(), std::string(), d.reason, minute);
    }
    it = denials_.try_emplace(key).first;
  }
  Pending& p = it->second;
  if (p.count == 0) {
    p.first_at_us = r.now_us;
    // Samples only for attributable denials: unknown-key floods keep no
    // per-request data at all, so they cannot fill the disk.
    if (!std::get<1>(key).empty()) {
      p.client_ip.assign(r.client_ip.substr(0, 64));
      p.origin.assign(r.origin.substr(0, 256));
    }
  }
  p.count++;
}

Status DataPlane::FlushDenials() {
  std::map<DenialGroup, Pending> pending;
  {
    std::lock_guard<std::mutex> lock(denial_mu_);
    pending.swap(denials_);
  }
  if (pending.empty()) return Status::Ok();
  std::vector<NewEvent> events;
  for (const auto& [key, p] : pending) {
    const auto& [ws, key_id, reason, minute] = key;
    AuthorizationDenied denied;
    denied.workspace_id = ws;
    denied.key_id = key_id;
    denied.occurred_at_us = p.first_at_us;
    denied.reason = reason;
    denied.client_ip = p.client_ip;
    denied.origin = p.origin;
    denied.count = p.count;
    NewEvent e;
    random_->Fill(e.event_id.data(), e.event_id.size());
    e.stream_id = key_id.empty() ? std::string(kUnattributedDenialStream) : CallStream(key_id);
    e.actor = "gateway";
    e.body = std::move(denied);
    events.push_back(std::move(e));
    if (events.size() == kAppendEventsMax) break;  // the rest waits for the next flush
  }
  // Puts the entries of `pending` after the first `appended` back, for the
  // next flush. Counts merge; the earlier refusal keeps its time and samples,
  // since a denial event lands in the minute of its first refusal.
  auto put_back = [&](size_t appended) {
    std::lock_guard<std::mutex> lock(denial_mu_);
    size_t i = 0;
    for (auto& [key, p] : pending) {
      if (i++ < appended) continue;
      Pending& q = denials_[key];
      if (q.count != 0 && q.first_at_us <= p.first_at_us) {
        q.count += p.count;
        continue;
      }
      p.count += q.count;
      q = std::move(p);
    }
  };
  AppendOptions ao;
  ao.durability = Durability::kSync;
  auto appended = ledger_->Append(events, ao);
  if (!appended.ok()) {
    put_back(0);  // the next flush retries them
    return appended.status();
  }
  denial_events_appended_ += events.size();
  if (events.size() < pending.size()) put_back(events.size());
  return Status::Ok();
}

Result<RecordResult> DataPlane::RecordCalls(std::vector<CallReport> calls) {
  if (calls.empty()) return Status::InvalidArgument("calls must not be empty", "calls");
  if (calls.size() > options_.calls_per_batch_max) {
    return CallBatchTooLarge(options_.calls_per_batch_max);
  }
  const int64_t now_us = clock_->NowUs();
  std::vector<NewEvent> events;
  events.reserve(calls.size());
  std::vector<size_t> call_of_event;  // the index in `calls` of each event
  call_of_event.reserve(calls.size());
  // Views of the request ids inside `events`, whose reserved storage never
  // moves in this loop.
  std::unordered_set<std::string_view> request_ids;
  request_ids.reserve(calls.size());
  size_t in_batch_duplicates = 0;
  for (size_t i = 0; i < calls.size(); i++) {
    ApiCallRecorded& call = calls[i].call;
    KL_RETURN_IF_ERROR(ValidateCall(calls[i], i, now_us, options_));
    auto key = key_state_->FindKey(call.key_id);
    if (!key) {
      return Status::InvalidArgument("unknown key " + call.key_id,
                                     "calls[" + std::to_string(i) + "].key_id");
    }
    if (request_ids.contains(call.request_id)) {
      in_batch_duplicates++;
      continue;
    }
    call.workspace_id = key->workspace_id;
    call.units = calls[i].units.value_or(call.status >= 200 && call.status < 300 ? 1 : 0);
    // A secret pasted into a query string must not reach the ledger either.
    for (std::string* text : {&call.path, &call.origin, &call.method, &call.client_ip}) {
      RedactSecrets(text);
    }
    CutAtCharBoundary(&call.path, kCallPathBytesMax);
    CutAtCharBoundary(&call.method, kCallMethodBytesMax);
    CutAtCharBoundary(&call.origin, kCallOriginBytesMax);
    // Request and response data are kept only for a call made while logging
    // was on, and while it is on still.
    const bool made_while_on = calls[i].logging_when_made.value_or(
        call.occurred_at_us >= key->logging_switched_at_us);
    call.logged = key->logging && made_while_on;
    if (call.logged) {
      RedactExcerpt(&call.request);
      RedactExcerpt(&call.response);
      TrimExcerpt(&call.request);
      TrimExcerpt(&call.response);
    } else {
      call.request = HttpExcerpt{};
      call.response = HttpExcerpt{};
    }
    call_of_event.push_back(i);
    NewEvent& e = events.emplace_back();
    e.event_id = CallEventId(call.request_id);
    e.stream_id = CallStream(call.key_id);
    e.actor = "gateway";
    const ApiCallRecorded& stored = e.body.emplace<ApiCallRecorded>(std::move(call));
    request_ids.insert(stored.request_id);
  }
  AppendOptions ao;
  ao.durability = Durability::kSync;  // acknowledged only when durable
  const auto start = std::chrono::steady_clock::now();
  auto append = ledger_->Append(events, ao);
  if (!append.ok()) return CallOfEventError(append.status(), call_of_event);
  AppendResult& appended = *append;
  append_latency_.Observe(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start)
          .count()));
  RecordResult result;
  result.duplicates = appended.duplicates + in_batch_duplicates;
  result.recorded = events.size() - appended.duplicates;
  return result;
}

}  // namespace keyledger
