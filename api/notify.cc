#include "api/notify.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <date/date.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <array>
#include <cassert>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>

namespace keyledger {
namespace {

// ---- base64 and HMAC (libsodium) ----------------------------------------------------

void SodiumInitOnce() {
  // Idempotent and thread-safe. A -1 (no entropy source) is ignored here on
  // purpose: HMAC and base64 do not use the RNG, and NewWebhookSecret draws
  // from the injected RandomSource, whose SecureRandom checks it itself.
  static const int kInit = sodium_init();
  (void)kInit;
}

std::string EncodeBase64(const unsigned char* data, size_t size) {
  std::string out(sodium_base64_ENCODED_LEN(size, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), data, size, sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));  // drop the terminating NUL sodium writes
  return out;
}

// Returns the decoded bytes, or nullopt unless all of `b64` is standard padded base64.
std::optional<std::string> DecodeBase64(std::string_view b64) {
  std::string out(b64.size() / 4 * 3 + 3, '\0');
  size_t size = 0;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), b64.data(),
                        b64.size(), nullptr, &size, nullptr,
                        sodium_base64_VARIANT_ORIGINAL) != 0) {
    return std::nullopt;
  }
  out.resize(size);
  return out;
}

// The HMAC key of a Standard Webhooks secret; see WebhookSignature.
std::string WebhookKey(std::string_view secret) {
  if (secret.starts_with(kWebhookSecretPrefix)) {
    std::optional<std::string> key = DecodeBase64(secret.substr(kWebhookSecretPrefix.size()));
    if (key.has_value() && !key->empty()) return *std::move(key);
  }
  return std::string(secret);
}

void HmacUpdate(crypto_auth_hmacsha256_state* state, std::string_view part) {
  crypto_auth_hmacsha256_update(state, reinterpret_cast<const unsigned char*>(part.data()),
                                part.size());
}

}  // namespace

std::string WebhookSignature(std::string_view secret, std::string_view msg_id,
                             int64_t timestamp_s, std::string_view body) {
  SodiumInitOnce();
  std::string key = WebhookKey(secret);
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(key.data()),
                              key.size());
  HmacUpdate(&state, msg_id);
  HmacUpdate(&state, ".");
  HmacUpdate(&state, std::to_string(timestamp_s));
  HmacUpdate(&state, ".");
  HmacUpdate(&state, body);
  std::array<unsigned char, crypto_auth_hmacsha256_BYTES> mac;
  crypto_auth_hmacsha256_final(&state, mac.data());
  sodium_memzero(key.data(), key.size());
  return "v1," + EncodeBase64(mac.data(), mac.size());
}

std::string NewWebhookSecret(RandomSource& random) {
  SodiumInitOnce();
  std::array<uint8_t, kWebhookSecretKeyBytes> key;
  random.Fill(key.data(), key.size());
  std::string secret = std::string(kWebhookSecretPrefix) + EncodeBase64(key.data(), key.size());
  sodium_memzero(key.data(), key.size());
  return secret;
}

// ---- address policy ------------------------------------------------------------------

namespace {

struct Prefix {
  std::array<uint8_t, 16> bytes;
  int bits;
};

bool InPrefix(const uint8_t* address, const Prefix& prefix) {
  int full = prefix.bits / 8;
  if (std::memcmp(address, prefix.bytes.data(), full) != 0) return false;
  int rest = prefix.bits % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (address[full] & mask) == (prefix.bytes[full] & mask);
}

bool IsPublicIpv4(const uint8_t* a) {
  static constexpr Prefix kBlocked[] = {
      {{0}, 8},          // "this network", incl. 0.0.0.0
      {{10}, 8},         // private
      {{100, 64}, 10},   // shared address space (carrier-grade NAT)
      {{127}, 8},        // loopback
      {{169, 254}, 16},  // link-local, incl. cloud metadata 169.254.169.254
      {{172, 16}, 12},   // private
      {{192, 168}, 16},  // private
      {{224}, 4},        // multicast
      {{240}, 4},        // reserved, incl. broadcast 255.255.255.255
  };
  for (const Prefix& p : kBlocked) {
    if (InPrefix(a, p)) return false;
  }
  return true;
}

bool IsPublicIpv6(const uint8_t* a) {
  // Forms that carry an IPv4 address are judged by that address, so
  // ::ffff:127.0.0.1 is as private as 127.0.0.1.
  static constexpr Prefix kEmbedsIpv4Last[] = {
      {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96},  // IPv4-mapped
      {{0}, 96},                                         // IPv4-compatible, incl. :: and ::1
      {{0x00, 0x64, 0xff, 0x9b}, 96},                    // NAT64
  };
  for (const Prefix& p : kEmbedsIpv4Last) {
    if (InPrefix(a, p)) return IsPublicIpv4(a + 12);
  }
  if (InPrefix(a, {{0x20, 0x02}, 16})) return IsPublicIpv4(a + 2);  // 6to4
  static constexpr Prefix kBlocked[] = {
      {{0xfc}, 7},        // unique local
      {{0xfe, 0x80}, 10},  // link-local
      {{0xfe, 0xc0}, 10},  // site-local (deprecated, still routable inside sites)
      {{0xff}, 8},        // multicast
  };
  for (const Prefix& p : kBlocked) {
    if (InPrefix(a, p)) return false;
  }
  return true;
}

// The socket-level check: anything other than a public IPv4/IPv6 is refused.
bool IsPublicSockaddr(const sockaddr* address, size_t size) {
  if (address->sa_family == AF_INET && size >= sizeof(sockaddr_in)) {
    sockaddr_in in;
    std::memcpy(&in, address, sizeof(in));
    return IsPublicIpv4(reinterpret_cast<const uint8_t*>(&in.sin_addr));
  }
  if (address->sa_family == AF_INET6 && size >= sizeof(sockaddr_in6)) {
    sockaddr_in6 in6;
    std::memcpy(&in6, address, sizeof(in6));
    return IsPublicIpv6(in6.sin6_addr.s6_addr);
  }
  return false;
}

}  // namespace

bool IsPublicAddress(std::string_view ip_literal) {
  // inet_pton needs a terminated string; literals are short.
  if (ip_literal.size() >= INET6_ADDRSTRLEN) return false;
  char text[INET6_ADDRSTRLEN] = {};
  std::memcpy(text, ip_literal.data(), ip_literal.size());
  std::array<uint8_t, 16> bytes{};
  if (inet_pton(AF_INET, text, bytes.data()) == 1) return IsPublicIpv4(bytes.data());
  if (inet_pton(AF_INET6, text, bytes.data()) == 1) return IsPublicIpv6(bytes.data());
  return false;
}

// ---- e-mail composition --------------------------------------------------------------

namespace {

constexpr size_t kLineBytesMax = 998;        // RFC 5322 2.1.1, without the CRLF
constexpr size_t kBodyBreakBytesMin = 990;   // break long lines at a character start from here
constexpr size_t kSubjectRawBytesMax = 66;   // "Subject: " + this stays within 78 columns
constexpr size_t kSubjectWordBytesMax = 39;  // 52 base64 chars: an encoded word of 64 columns
constexpr int64_t kEmailDateUsMax = 253402300800LL * 1000000;  // 10000-01-01T00:00:00Z

bool IsAtext(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c != '\0' && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr;
}

// Checks "left@right" where both sides are dot-atoms of atext: the shape of
// an addr-spec without quoting and of a msg-id without brackets.
Status CheckDotAtomPair(std::string_view value, size_t bytes_max, const char* field) {
  auto fail = [&](const std::string& why) {
    return Status::InvalidArgument(std::string(field) + " " + why, field);
  };
  if (value.empty() || value.size() > bytes_max) {
    return fail("must be 1.." + std::to_string(bytes_max) + " bytes");
  }
  size_t at = value.find('@');
  if (at == 0 || at == std::string_view::npos || at + 1 == value.size() ||
      value.find('@', at + 1) != std::string_view::npos) {
    return fail("must look like local@domain");
  }
  for (char c : value) {
    if (c != '@' && c != '.' && !IsAtext(c)) {
      return fail("may hold only letters, digits, '.', '@' and !#$%&'*+-/=?^_`{|}~");
    }
  }
  return Status::Ok();
}

Status CheckSubject(std::string_view subject) {
  if (subject.size() > kEmailSubjectBytesMax) {
    return Status::InvalidArgument("subject is too long", "subject");
  }
  if (subject.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
    return Status::InvalidArgument("subject must not contain CR, LF or NUL", "subject");
  }
  return Status::Ok();
}

Status CheckBody(std::string_view body) {
  if (body.size() > kEmailBodyBytesMax) {
    return Status::InvalidArgument("text_body is too long", "text_body");
  }
  if (body.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("text_body must not contain NUL", "text_body");
  }
  return Status::Ok();
}

// "Thu, 26 Nov 2026 12:00:00 +0000". English names regardless of the process
// locale, as RFC 5322 requires; date does the calendar arithmetic.
std::string FormatRfc5322Date(int64_t utc_us) {
  static constexpr const char* kWeekdays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  using std::chrono::microseconds;
  using std::chrono::seconds;
  auto t = date::floor<seconds>(date::sys_time<microseconds>(microseconds(utc_us)));
  auto day = date::floor<date::days>(t);
  date::year_month_day ymd(day);
  date::hh_mm_ss<seconds> hms(t - day);
  char out[64];
  std::snprintf(out, sizeof(out), "%s, %02u %s %04d %02d:%02d:%02d +0000",
                kWeekdays[date::weekday(day).c_encoding()], static_cast<unsigned>(ymd.day()),
                kMonths[static_cast<unsigned>(ymd.month()) - 1], static_cast<int>(ymd.year()),
                static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                static_cast<int>(hms.seconds().count()));
  return out;
}

bool IsPlainSubject(std::string_view subject) {
  if (subject.size() > kSubjectRawBytesMax) return false;
  if (subject.find("=?") != std::string_view::npos) return false;  // would read as encoded words
  for (char c : subject) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// RFC 2047 encoded words, split at UTF-8 character starts, one per folded line.
std::string EncodeSubject(std::string_view subject) {
  std::string out;
  size_t pos = 0;
  while (pos < subject.size()) {
    size_t end = std::min(subject.size(), pos + kSubjectWordBytesMax);
    while (end < subject.size() && end > pos + 1 &&
           (static_cast<uint8_t>(subject[end]) & 0xc0) == 0x80) {
      end--;  // do not split a multi-byte character between words
    }
    if (!out.empty()) out += "\r\n ";
    out += "=?UTF-8?B?";
    out += EncodeBase64(reinterpret_cast<const unsigned char*>(subject.data() + pos), end - pos);
    out += "?=";
    pos = end;
  }
  return out;
}

// The body with every line ending as CRLF and no line over kLineBytesMax.
std::string NormalizeBody(std::string_view body) {
  std::string out;
  out.reserve(body.size() + body.size() / 32 + 2);
  size_t line_bytes = 0;
  for (size_t i = 0; i < body.size(); i++) {
    char c = body[i];
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < body.size() && body[i + 1] == '\n') i++;
      out += "\r\n";
      line_bytes = 0;
      continue;
    }
    bool starts_char = (static_cast<uint8_t>(c) & 0xc0) != 0x80;
    if (line_bytes >= kLineBytesMax || (line_bytes >= kBodyBreakBytesMin && starts_char)) {
      out += "\r\n";
      line_bytes = 0;
    }
    out += c;
    line_bytes++;
  }
  if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
  return out;
}

}  // namespace

Status CheckEmailAddress(std::string_view address, const std::string& field) {
  Status checked = CheckDotAtomPair(address, kEmailAddressBytesMax, "address");
  if (checked.ok()) return checked;
  return Status::InvalidArgument(checked.message(), field);
}

Result<std::string> ComposeEmail(const EmailMessage& message, std::string_view from) {
  KL_RETURN_IF_ERROR(CheckDotAtomPair(message.to, kEmailAddressBytesMax, "to"));
  KL_RETURN_IF_ERROR(CheckDotAtomPair(from, kEmailAddressBytesMax, "from"));
  KL_RETURN_IF_ERROR(CheckDotAtomPair(message.message_id, kEmailMessageIdBytesMax, "message_id"));
  KL_RETURN_IF_ERROR(CheckSubject(message.subject));
  KL_RETURN_IF_ERROR(CheckBody(message.text_body));
  if (message.date_us < 0 || message.date_us >= kEmailDateUsMax) {
    return Status::InvalidArgument("date_us must lie in the years 1970..9999", "date_us");
  }
  std::string subject =
      IsPlainSubject(message.subject) ? message.subject : EncodeSubject(message.subject);
  std::string out;
  out += "Date: " + FormatRfc5322Date(message.date_us) + "\r\n";
  out += "From: " + std::string(from) + "\r\n";
  out += "To: " + message.to + "\r\n";
  out += "Subject: " + subject + "\r\n";
  out += "Message-ID: <" + message.message_id + ">\r\n";
  out += "MIME-Version: 1.0\r\n";
  out += "Content-Type: text/plain; charset=utf-8\r\n";
  out += "Content-Transfer-Encoding: 8bit\r\n";
  out += "\r\n";
  out += NormalizeBody(message.text_body);
  return out;
}

// ---- the libcurl notifier ------------------------------------------------------------

namespace {

constexpr const char* kUserAgent = "keyledger";

CURLcode GlobalInitOnce() {
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return result;
}

struct EasyDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};
using EasyHandle = std::unique_ptr<CURL, EasyDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

// Appends `line`; returns false (list unchanged) if libcurl is out of memory.
bool Append(Slist* list, const std::string& line) {
  curl_slist* grown = curl_slist_append(list->get(), line.c_str());
  if (grown == nullptr) return false;
  (void)list->release();  // `grown` owns the old nodes now
  list->reset(grown);
  return true;
}

DeliveryResult Failed(std::string error, uint32_t http_status = 0) {
  DeliveryResult r;
  r.http_status = http_status;
  r.error = std::move(error);
  return r;
}

bool HasControlChars(std::string_view s) {
  for (char c : s) {
    if (static_cast<uint8_t>(c) < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// State shared with libcurl's callbacks during one webhook transfer.
struct WebhookTransfer {
  bool allow_private_addresses = false;
  size_t response_bytes_max = 0;
  size_t response_bytes = 0;
  bool refused_address = false;  // a resolved address was not public
  bool response_cut = false;     // the body passed response_bytes_max
};

// CURLOPT_OPENSOCKETFUNCTION: runs for every address libcurl is about to
// connect to, after DNS, so a name that re-resolves to a private address is
// still refused.
curl_socket_t OpenCheckedSocket(void* clientp, curlsocktype purpose, curl_sockaddr* address) {
  auto* transfer = static_cast<WebhookTransfer*>(clientp);
  if (!transfer->allow_private_addresses && !IsPublicSockaddr(&address->addr, address->addrlen)) {
    transfer->refused_address = true;
    return CURL_SOCKET_BAD;
  }
  return ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

// CURLOPT_WRITEFUNCTION: the body is not used; returning less than given
// aborts the transfer once it passes the limit (the status is known by then).
size_t CountResponse(char* data, size_t size, size_t count, void* userdata) {
  auto* transfer = static_cast<WebhookTransfer*>(userdata);
  size_t bytes = size * count;
  transfer->response_bytes += bytes;
  if (transfer->response_bytes > transfer->response_bytes_max) {
    transfer->response_cut = true;
    return 0;
  }
  return bytes;
}

// The upload of one composed e-mail.
struct UploadSource {
  std::string_view data;
  size_t pos = 0;
};

size_t ReadUpload(char* buffer, size_t size, size_t count, void* userdata) {
  auto* source = static_cast<UploadSource*>(userdata);
  size_t bytes = std::min(size * count, source->data.size() - source->pos);
  std::memcpy(buffer, source->data.data() + source->pos, bytes);
  source->pos += bytes;
  return bytes;
}

// Runs setopt calls in order and stops at the first failure; security
// options must not be skipped silently.
class Setup {
 public:
  explicit Setup(CURL* curl) : curl_(curl) {}
  template <typename T>
  Setup& Set(CURLoption option, T value) {
    if (result_ == CURLE_OK) result_ = curl_easy_setopt(curl_, option, value);
    return *this;
  }
  CURLcode result() const { return result_; }

 private:
  CURL* curl_;
  CURLcode result_ = CURLE_OK;
};

// Options every transfer shares: timeouts, no signals (thread safety), no
// proxy from the environment (it would bypass the address check).
void SetCommon(Setup& s, const NotifierOptions& o) {
  s.Set(CURLOPT_NOSIGNAL, 1L)
      .Set(CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout_ms))
      .Set(CURLOPT_TIMEOUT_MS, static_cast<long>(o.request_timeout_ms))
      .Set(CURLOPT_PROXY, "");
}

std::string CurlError(const char* what, CURLcode rc) {
  if (rc == CURLE_OPERATION_TIMEDOUT) return std::string(what) + " timed out";
  return std::string(what) + " failed: " + curl_easy_strerror(rc);
}

class CurlNotifier final : public Notifier {
 public:
  explicit CurlNotifier(const NotifierOptions& options) : options_(options) {}

  DeliveryResult SendWebhook(const WebhookMessage& message) override {
    try {
      return Webhook(message);
    } catch (const std::exception&) {  // allocation failure; nothing escapes
      return Failed("webhook: internal error");
    }
  }

  DeliveryResult SendEmail(const EmailMessage& message) override {
    try {
      return Email(message);
    } catch (const std::exception&) {
      return Failed("e-mail: internal error");
    }
  }

 private:
  DeliveryResult Webhook(const WebhookMessage& m) const;
  DeliveryResult Email(const EmailMessage& m) const;
  // Returns the headers of `m`, or nullopt if libcurl is out of memory.
  static std::optional<Slist> WebhookHeaders(const WebhookMessage& m);

  const NotifierOptions options_;
};

std::optional<Slist> CurlNotifier::WebhookHeaders(const WebhookMessage& m) {
  Slist headers;
  bool ok = Append(&headers, "content-type: application/json") &&
            Append(&headers, "webhook-id: " + m.id) &&
            Append(&headers, "webhook-timestamp: " + std::to_string(m.timestamp_s)) &&
            Append(&headers, "webhook-signature: " +
                                 WebhookSignature(m.secret, m.id, m.timestamp_s, m.body_json)) &&
            Append(&headers, std::string("user-agent: ") + kUserAgent) &&
            // Without this libcurl may wait for "100 Continue" on larger bodies.
            Append(&headers, "expect:");
  if (!ok) return std::nullopt;
  return headers;
}

DeliveryResult CurlNotifier::Webhook(const WebhookMessage& m) const {
  if (m.id.empty() || HasControlChars(m.id)) {
    return Failed("webhook id must be non-empty without control characters");
  }
  if (HasControlChars(m.url)) return Failed("webhook url must not contain control characters");
  if (GlobalInitOnce() != CURLE_OK) return Failed("webhook: libcurl failed to initialize");
  EasyHandle curl(curl_easy_init());
  std::optional<Slist> headers = WebhookHeaders(m);
  if (!curl || !headers) return Failed("webhook: out of memory");
  WebhookTransfer transfer;
  transfer.allow_private_addresses = options_.allow_private_addresses;
  transfer.response_bytes_max = options_.response_bytes_max;
  Setup s(curl.get());
  SetCommon(s, options_);
  s.Set(CURLOPT_URL, m.url.c_str())
      .Set(CURLOPT_PROTOCOLS_STR, "http,https")
      .Set(CURLOPT_FOLLOWLOCATION, 0L)
      .Set(CURLOPT_OPENSOCKETFUNCTION, &OpenCheckedSocket)
      .Set(CURLOPT_OPENSOCKETDATA, &transfer)
      .Set(CURLOPT_POST, 1L)
      .Set(CURLOPT_POSTFIELDS, m.body_json.c_str())
      .Set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(m.body_json.size()))
      .Set(CURLOPT_HTTPHEADER, headers->get())
      .Set(CURLOPT_WRITEFUNCTION, &CountResponse)
      .Set(CURLOPT_WRITEDATA, &transfer);
  if (s.result() != CURLE_OK) return Failed(CurlError("webhook setup", s.result()));
  CURLcode rc = curl_easy_perform(curl.get());
  long status = 0;
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
  // A host with public addresses besides the refused ones may have been
  // reached on one of those: then what happened there decides, not the
  // refusal. Without a connection (no primary IP) the refusal is the cause.
  const char* primary_ip = nullptr;
  curl_easy_getinfo(curl.get(), CURLINFO_PRIMARY_IP, &primary_ip);
  const bool connected = primary_ip != nullptr && primary_ip[0] != '\0';
  if (transfer.refused_address && rc != CURLE_OK && !connected) {
    return Failed("webhook refused: the host resolves to a non-public address");
  }
  if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && transfer.response_cut)) {
    return Failed(CurlError("webhook", rc), static_cast<uint32_t>(status));
  }
  if (status < 200 || status > 299) {  // remote input: no assertion on its range
    std::string error = "webhook answered http " + std::to_string(status);
    if (status >= 300 && status <= 399) error += " (redirects are not followed)";
    return Failed(std::move(error), static_cast<uint32_t>(status));
  }
  DeliveryResult delivered;
  delivered.delivered = true;
  delivered.http_status = static_cast<uint32_t>(status);
  return delivered;
}

DeliveryResult CurlNotifier::Email(const EmailMessage& m) const {
  const NotifierOptions& o = options_;
  if (o.smtp_host_port.empty()) {
    return Failed("e-mail delivery is not configured: no SMTP host (smtp_host_port)");
  }
  if (Status relay = CheckSmtpHostPort(o.smtp_host_port, "smtp_host_port"); !relay.ok()) {
    return Failed("smtp_host_port " + relay.message());
  }
  Result<std::string> composed = ComposeEmail(m, o.smtp_from);
  if (!composed.ok()) return Failed("e-mail refused: " + composed.status().message());
  if (GlobalInitOnce() != CURLE_OK) return Failed("e-mail: libcurl failed to initialize");
  EasyHandle curl(curl_easy_init());
  Slist recipients;
  if (!curl || !Append(&recipients, "<" + m.to + ">")) return Failed("e-mail: out of memory");
  std::string url = "smtp://" + o.smtp_host_port;
  std::string mail_from = "<" + o.smtp_from + ">";
  UploadSource source{*composed};
  Setup s(curl.get());
  SetCommon(s, o);
  s.Set(CURLOPT_URL, url.c_str())
      .Set(CURLOPT_PROTOCOLS_STR, "smtp")
      .Set(CURLOPT_MAIL_FROM, mail_from.c_str())
      .Set(CURLOPT_MAIL_RCPT, recipients.get())
      .Set(CURLOPT_UPLOAD, 1L)
      .Set(CURLOPT_READFUNCTION, &ReadUpload)
      .Set(CURLOPT_READDATA, &source)
      .Set(CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(composed->size()));
  if (o.smtp_starttls) s.Set(CURLOPT_USE_SSL, static_cast<long>(CURLUSESSL_ALL));
  if (!o.smtp_username.empty()) {
    s.Set(CURLOPT_USERNAME, o.smtp_username.c_str()).Set(CURLOPT_PASSWORD, o.smtp_password.c_str());
  }
  if (s.result() != CURLE_OK) return Failed(CurlError("e-mail setup", s.result()));
  CURLcode rc = curl_easy_perform(curl.get());
  if (rc == CURLE_OK) {
    DeliveryResult delivered;
    delivered.delivered = true;
    return delivered;
  }
  if (rc == CURLE_USE_SSL_FAILED) return Failed("e-mail refused: the SMTP server offers no STARTTLS");
  long smtp_code = 0;
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &smtp_code);
  std::string error = CurlError("e-mail", rc);
  if (smtp_code != 0) error += " (smtp " + std::to_string(smtp_code) + ")";
  return Failed(std::move(error));
}

}  // namespace

std::unique_ptr<Notifier> NewCurlNotifier(const NotifierOptions& options) {
  assert(options.connect_timeout_ms > 0);
  assert(options.request_timeout_ms > 0);
  assert(options.response_bytes_max > 0);
  (void)GlobalInitOnce();  // early, while the caller is likely still single-threaded
  return std::make_unique<CurlNotifier>(options);
}

Status CheckSmtpHostPort(std::string_view host_port, const std::string& field) {
  const size_t colon = host_port.rfind(':');
  const std::string_view host = host_port.substr(0, colon == std::string_view::npos ? 0 : colon);
  const std::string_view port =
      colon == std::string_view::npos ? std::string_view() : host_port.substr(colon + 1);
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  const bool port_ok = !port.empty() && ec == std::errc() && end == port.data() + port.size() &&
                       value >= 1 && value <= 65535;
  const bool host_ok = !host.empty() && !HasControlChars(host) &&
                       host.find_first_of("/@?# ") == std::string_view::npos;
  if (host_ok && port_ok) return Status::Ok();
  return Status::InvalidArgument("must be HOST:PORT (port 1-65535), got \"" +
                                     std::string(host_port) + "\"",
                                 field);
}

}  // namespace keyledger
