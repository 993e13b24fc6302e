// Notification delivery for alarms (issue #8): Standard Webhooks signing
// (https://www.standardwebhooks.com/), RFC 5322 e-mail composition, and a
// Notifier that delivers both with libcurl (HTTP(S) POST and SMTP).
//
// Delivery is one attempt per call; retries, backoff and recording delivery
// outcomes as events belong to the caller.
//
// Thread safety: the free functions are stateless and safe to call
// concurrently. Notifier implementations are thread-safe (see NewCurlNotifier).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "ledger/random.h"
#include "ledger/status.h"

namespace keyledger {

// ---- Standard Webhooks signing ----------------------------------------------------

// The prefix of secrets in the Standard Webhooks format: "whsec_" + base64(key).
inline constexpr std::string_view kWebhookSecretPrefix = "whsec_";
// Random key bytes in a secret made by NewWebhookSecret (192 bits).
inline constexpr size_t kWebhookSecretKeyBytes = 24;

// Returns "v1,<base64 HMAC-SHA256(key, msg_id + "." + timestamp_s + "." + body)>",
// the value of the `webhook-signature` header, timestamp_s in decimal.
// The key: if `secret` starts with "whsec_", the rest decoded as standard
// base64 with padding; if there is no such prefix, or the rest does not
// decode, or decodes to no bytes, the raw bytes of `secret` (prefix included)
// are the key, so a secret from any other system still signs consistently.
std::string WebhookSignature(std::string_view secret, std::string_view msg_id,
                             int64_t timestamp_s, std::string_view body);

// Returns a new secret: "whsec_" + base64 (standard, padded) of
// kWebhookSecretKeyBytes bytes from `random` (32 base64 characters).
std::string NewWebhookSecret(RandomSource& random);

// Returns true if `ip_literal` is a numeric IPv4 or IPv6 address that a
// webhook may connect to: false for loopback, private (RFC 1918, fc00::/7),
// shared (100.64/10), link-local (169.254/16 incl. cloud metadata, fe80::/10),
// unspecified/"this network" (0/8, ::), multicast, reserved (240/4, broadcast),
// site-local (fec0::/10), and for IPv6 forms that embed such an IPv4 address
// (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96,
// 6to4 2002::/16). Also false for anything that is not an address literal.
bool IsPublicAddress(std::string_view ip_literal);

// ---- Messages and the delivery interface ----------------------------------------

struct WebhookMessage {
  std::string url;        // http:// or https://
  std::string secret;     // see WebhookSignature
  std::string id;         // webhook-id; the receiver's idempotency key
  int64_t timestamp_s = 0;  // webhook-timestamp, Unix seconds
  std::string body_json;  // sent as is
};

struct EmailMessage {
  std::string to;          // one addr-spec, e.g. "ops@example.com"
  std::string subject;     // UTF-8, no CR/LF
  std::string text_body;   // UTF-8; any line ending becomes CRLF
  std::string message_id;  // "left@right" without angle brackets
  int64_t date_us = 0;     // the Date header, UTC microseconds since the epoch
};

struct DeliveryResult {
  bool delivered = false;
  uint32_t http_status = 0;  // 0: no HTTP response, or not HTTP (e-mail)
  std::string error;         // empty when delivered; short, never holds secrets or URLs
};

// Delivers notifications. Each call makes one attempt and reports its outcome;
// it never throws.
//
// Thread safety: implementations are thread-safe.
class Notifier {
 public:
  virtual ~Notifier() = default;
  // Returns delivered=true iff the receiver answered 2xx.
  virtual DeliveryResult SendWebhook(const WebhookMessage& message) = 0;
  // Returns delivered=true iff the SMTP server accepted the message.
  virtual DeliveryResult SendEmail(const EmailMessage& message) = 0;
};

struct NotifierOptions {
  int64_t connect_timeout_ms = 5000;   // > 0
  int64_t request_timeout_ms = 10000;  // > 0; the whole attempt, connect included
  // Webhook response bytes read before the transfer is cut off (the status
  // decides delivery; the body is never used), > 0.
  size_t response_bytes_max = 64 * 1024;
  // false: webhooks refuse to connect to any address IsPublicAddress rejects,
  // checked on the resolved address at socket-open time (so DNS rebinding
  // cannot slip past a check made earlier). true only for tests and trusted setups.
  bool allow_private_addresses = false;
  std::string smtp_host_port;  // "host:port"; "" -> SendEmail fails with a clear error
  std::string smtp_username;   // "" -> no SMTP AUTH
  std::string smtp_password;
  bool smtp_starttls = false;  // true: STARTTLS is required, delivery fails without it
  std::string smtp_from = "keyledger@localhost";  // addr-spec for MAIL FROM and From
};

// Returns a Notifier over libcurl. Initializes libcurl globally once per
// process (std::call_once) on first use. Thread-safe: every call uses its own
// easy handle and no signals (CURLOPT_NOSIGNAL); the options are copied.
// Webhooks: POST with content-type application/json and the webhook-id,
// webhook-timestamp, webhook-signature headers; http/https only; redirects are
// never followed (a 3xx is not delivered); proxies from the environment are
// ignored. E-mail: SMTP to smtp://smtp_host_port (smtp only).
// REQUIRES: connect_timeout_ms > 0, request_timeout_ms > 0, response_bytes_max > 0.
std::unique_ptr<Notifier> NewCurlNotifier(const NotifierOptions& options);

// ---- E-mail composition -----------------------------------------------------------

// Limits of ComposeEmail's inputs, in bytes.
inline constexpr size_t kEmailAddressBytesMax = 254;     // RFC 5321 path limit
inline constexpr size_t kEmailMessageIdBytesMax = 250;
inline constexpr size_t kEmailSubjectBytesMax = 2000;
inline constexpr size_t kEmailBodyBytesMax = 1024 * 1024;

// Returns an RFC 5322 message with CRLF line endings: headers Date (e.g.
// "Thu, 26 Nov 2026 12:00:00 +0000"), From, To, Subject, Message-ID
// ("<message_id>"), MIME-Version, Content-Type text/plain; charset=utf-8,
// Content-Transfer-Encoding 8bit, a blank line, and the body. A subject that
// is not plain printable ASCII or is long becomes RFC 2047 encoded words
// (UTF-8, base64), folded. Body lines longer than 998 bytes (the RFC 5322
// limit) are broken with a CRLF. SMTP dot-stuffing is left to the transport.
// Errors: InvalidArgument naming the field ("to", "from", "subject",
// "message_id", "text_body", "date_us") for CR or LF in a header value
// (header injection), NUL bytes, an address that is not one printable-ASCII
// addr-spec with an '@' and without spaces or angle brackets, a message id of
// the same kind, a date outside years 1970..9999, or an input over its limit.
Result<std::string> ComposeEmail(const EmailMessage& message, std::string_view from);

// Checks an address as ComposeEmail checks `to`: one printable-ASCII
// dot-atom addr-spec "local@domain" of 1..kEmailAddressBytesMax bytes.
// Returns InvalidArgument naming `field`, for callers that accept addresses
// long before anything is sent (alarm channels).
Status CheckEmailAddress(std::string_view address, const std::string& field);

// Checks an SMTP relay's "host:port" (a name or IPv4 address, or [IPv6], and
// a port 1..65535; nothing a URL could read as more: no '/', '@', '?', '#',
// spaces or control characters). Returns InvalidArgument naming `field`.
Status CheckSmtpHostPort(std::string_view host_port, const std::string& field);

}  // namespace keyledger
