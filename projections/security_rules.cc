#include "projections/security_rules.h"

#include <arpa/inet.h>

#include <cassert>
#include <cstdio>
#include <cstring>

namespace keyledger {

// The parts of an Origin header value that matching needs: the host is copied
// in lower case into a fixed buffer (no allocation), so that every pattern can
// compare it with memcmp; `ipv6` is filled instead for bracketed hosts.
struct OriginParts {
  bool https = false;
  uint16_t port = 0;
  bool is_ipv6 = false;
  size_t host_size = 0;
  char host_lower[kOriginHostBytesMax];
  std::array<uint8_t, 16> ipv6{};

  std::string_view host() const { return std::string_view(host_lower, host_size); }
};

namespace {

constexpr uint16_t kHttpPortDefault = 80;
constexpr uint16_t kHttpsPortDefault = 443;
constexpr size_t kIpv4PrefixMax = 32;
constexpr size_t kIpv6PrefixMax = 128;
constexpr int kMappedPrefix = 96;  // bits of ::ffff:0:0/96
constexpr size_t kPortDigitsMax = 5;
constexpr size_t kPrefixDigitsMax = 3;

uint64_t LoadBigEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

bool IsMappedWords(uint64_t hi, uint64_t lo) { return hi == 0 && (lo >> 32) == 0xffff; }

bool IsMapped(const std::array<uint8_t, 16>& bytes) {
  return IsMappedWords(LoadBigEndian64(bytes.data()), LoadBigEndian64(bytes.data() + 8));
}

char ToLowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool IsAlnum(char c) {
  char l = ToLowerAscii(c);
  return IsDigit(c) || (l >= 'a' && l <= 'z');
}

// Returns true iff `text` equals `lower` ignoring ASCII case.
// REQUIRES: `lower` has no upper-case letters.
bool EqualsIgnoreCase(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (ToLowerAscii(text[i]) != lower[i]) return false;
  }
  return true;
}

// Parses 1 to `digits_max` decimal digits without sign or leading zeros ("0"
// itself is fine). Returns false on anything else.
bool ParseDecimal(std::string_view text, size_t digits_max, uint32_t* out) {
  if (text.empty() || text.size() > digits_max) return false;
  if (text.size() > 1 && text[0] == '0') return false;
  uint32_t value = 0;
  for (char c : text) {
    if (!IsDigit(c)) return false;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  *out = value;
  return true;
}

// Parses a port, 1-65535. Returns false on anything else.
bool ParsePort(std::string_view text, uint16_t* out) {
  uint32_t value = 0;
  if (!ParseDecimal(text, kPortDigitsMax, &value) || value == 0 || value > 65535) return false;
  *out = static_cast<uint16_t>(value);
  return true;
}

// Parses an address with inet_pton without allocating; see ParseIpAddress.
// Returns false on any input ParseIpAddress refuses.
bool ParseIpBytes(std::string_view text, std::array<uint8_t, 16>* out) {
  if (text.empty() || text.size() > kIpAddressBytesMax) return false;
  char buf[kIpAddressBytesMax + 1];
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\0' || text[i] == '%') return false;  // inet_pton stops at NUL
    buf[i] = text[i];
  }
  buf[text.size()] = '\0';
  if (text.find(':') != std::string_view::npos) return inet_pton(AF_INET6, buf, out->data()) == 1;
  std::array<uint8_t, 4> v4{};
  if (inet_pton(AF_INET, buf, v4.data()) != 1) return false;
  *out = IpAddress::FromV4(v4).bytes;
  return true;
}

// Returns RFC 5952 text: lower-case hex, no leading zeros in a group, the first
// longest run of two or more zero groups written as "::". Never dotted-quad.
std::string FormatIpv6(const std::array<uint8_t, 16>& bytes) {
  uint16_t words[8];
  for (int i = 0; i < 8; ++i) words[i] = static_cast<uint16_t>((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  int best = -1;
  int best_len = 1;  // a run must be longer than this to be compressed
  for (int i = 0; i < 8;) {
    int j = i;
    while (j < 8 && words[j] == 0) ++j;
    if (j - i > best_len) {
      best = i;
      best_len = j - i;
    }
    i = (j == i) ? i + 1 : j;
  }
  std::string out;
  char group[8];
  for (int i = 0; i < 8; ++i) {
    if (i == best) {
      out += "::";
      i += best_len - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out += ':';
    std::snprintf(group, sizeof(group), "%x", static_cast<unsigned>(words[i]));
    out += group;
  }
  return out;
}

std::string FieldName(const char* list, size_t index) {
  return std::string(list) + "[" + std::to_string(index) + "]";
}

// Splits "http://" or "https://" (any case) off `text`. Returns false if neither.
bool SplitScheme(std::string_view text, bool* https, std::string_view* rest) {
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) return false;
  std::string_view scheme = text.substr(0, sep);
  if (EqualsIgnoreCase(scheme, "https")) {
    *https = true;
  } else if (EqualsIgnoreCase(scheme, "http")) {
    *https = false;
  } else {
    return false;
  }
  *rest = text.substr(sep + 3);
  return true;
}

// Splits "host[:port]" or "[v6][:port]". Sets `port_text` to what follows the
// host, ":" included, or empty. Returns false on an unclosed '['.
bool SplitHostPort(std::string_view rest, std::string_view* host, std::string_view* port_text,
                   bool* bracketed) {
  *bracketed = !rest.empty() && rest[0] == '[';
  if (*bracketed) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return false;
    *host = rest.substr(1, close - 1);
    *port_text = rest.substr(close + 1);
    return true;
  }
  size_t colon = rest.find(':');
  *host = rest.substr(0, colon);
  *port_text = colon == std::string_view::npos ? std::string_view() : rest.substr(colon);
  return true;
}

// Copies `host` in lower case into `out`. Returns false unless `host` is
// non-empty dot-separated non-empty labels of letters, digits and '-' (any
// case). Looser than pattern hosts on purpose: a request host is only compared.
bool CopyRequestHostName(std::string_view host, OriginParts* out) {
  if (host.empty() || host.size() > kOriginHostBytesMax) return false;
  char prev = '.';
  for (size_t i = 0; i < host.size(); ++i) {
    char c = host[i];
    if (c == '.' && prev == '.') return false;
    if (c != '.' && c != '-' && !IsAlnum(c)) return false;
    out->host_lower[i] = ToLowerAscii(c);
    prev = c;
  }
  out->host_size = host.size();
  return prev != '.';
}

// Parses an Origin header value. Returns false if it is not an origin this
// module could match. Does not allocate.
bool ParseOriginParts(std::string_view origin, OriginParts* out) {
  if (origin.empty() || origin.size() > kOriginPatternBytesMax) return false;
  std::string_view rest, host, port_text;
  bool bracketed = false;
  if (!SplitScheme(origin, &out->https, &rest)) return false;
  if (!SplitHostPort(rest, &host, &port_text, &bracketed)) return false;
  out->port = out->https ? kHttpsPortDefault : kHttpPortDefault;
  if (!port_text.empty()) {
    if (port_text[0] != ':' || !ParsePort(port_text.substr(1), &out->port)) return false;
  }
  out->is_ipv6 = bracketed;
  if (bracketed) return host.find(':') != std::string_view::npos && ParseIpBytes(host, &out->ipv6);
  return CopyRequestHostName(host, out);
}

// Checks one label of a pattern host. Returns an empty string or the problem.
const char* CheckPatternLabel(std::string_view label) {
  if (label.empty()) return "host has an empty label; check for '..' or a leading or trailing '.'";
  static_assert(kOriginLabelBytesMax == 63, "update the message below");
  if (label.size() > kOriginLabelBytesMax) return "host label is longer than 63 bytes";
  for (char c : label) {
    if (c != '-' && !IsAlnum(c)) return "host may contain only letters, digits, '-' and '.'";
  }
  if (label.front() == '-' || label.back() == '-') return "host label must not start or end with '-'";
  return "";
}

// Checks every label of a DNS name. Sets `labels` to their count and
// `numeric_tail` to whether the last label is all digits.
Status CheckPatternHostName(std::string_view name, size_t* labels, bool* numeric_tail) {
  *labels = 0;
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    std::string_view label = name.substr(start, dot == std::string_view::npos ? dot : dot - start);
    const char* problem = CheckPatternLabel(label);
    if (*problem != '\0') return Status::InvalidArgument(problem);
    ++*labels;
    if (dot == std::string_view::npos) {
      *numeric_tail = true;
      for (char c : label) *numeric_tail = *numeric_tail && IsDigit(c);
      return Status::Ok();
    }
    start = dot + 1;
  }
}

// Refuses a path, query, fragment or user info after "scheme://".
Status CheckNoPath(std::string_view rest) {
  size_t bad = rest.find_first_of("/?#");
  if (bad != std::string_view::npos && bad + 1 == rest.size() && rest[bad] == '/') {
    return Status::InvalidArgument("origin pattern must not end with '/'; an origin has no path");
  }
  if (bad != std::string_view::npos) {
    return Status::InvalidArgument("origin pattern must not have a path, query or fragment");
  }
  if (rest.find('@') != std::string_view::npos) {
    return Status::InvalidArgument("origin pattern must not have user info ('@')");
  }
  return Status::Ok();
}

}  // namespace

// ---- IpAddress ---------------------------------------------------------------

IpAddress IpAddress::FromV4(const std::array<uint8_t, 4>& v4) {
  IpAddress a;
  a.bytes[10] = 0xff;
  a.bytes[11] = 0xff;
  std::memcpy(a.bytes.data() + 12, v4.data(), 4);
  a.is_v4 = true;
  return a;
}

IpAddress IpAddress::FromV6(const std::array<uint8_t, 16>& v6) {
  IpAddress a;
  a.bytes = v6;
  a.is_v4 = IsMapped(v6);
  return a;
}

std::string IpAddress::ToString() const {
  assert(is_v4 == IsMapped(bytes));
  if (!is_v4) return FormatIpv6(bytes);
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%u.%u.%u.%u", bytes[12], bytes[13], bytes[14], bytes[15]);
  return buf;
}

Result<IpAddress> ParseIpAddress(std::string_view text) {
  if (text.empty()) return Status::InvalidArgument("IP address is empty");
  if (text.size() > kIpAddressBytesMax) {
    return Status::InvalidArgument("IP address is longer than " +
                                   std::to_string(kIpAddressBytesMax) + " bytes");
  }
  if (text.find('%') != std::string_view::npos) {
    return Status::InvalidArgument("IP address must not have a zone id (the part from '%')");
  }
  if (text.front() == ' ' || text.back() == ' ') {
    return Status::InvalidArgument("IP address must not have surrounding spaces");
  }
  std::array<uint8_t, 16> bytes{};
  if (!ParseIpBytes(text, &bytes)) {
    if (text.find(':') != std::string_view::npos) {
      return Status::InvalidArgument("not a valid IPv6 address");
    }
    return Status::InvalidArgument(
        "not a valid IP address; expected IPv4 a.b.c.d, each 0-255 without leading zeros, "
        "or IPv6");
  }
  return IpAddress::FromV6(bytes);
}

// ---- Cidr --------------------------------------------------------------------

Cidr::Cidr(const IpAddress& network, int prefix128) : network_(network), prefix128_(prefix128) {
  assert(prefix128 >= 0 && prefix128 <= 128);
  assert(network.is_v4 == IsMapped(network.bytes));
  assert(!network.is_v4 || prefix128 >= kMappedPrefix);
  if (prefix128 >= 64) {
    mask_hi_ = ~uint64_t{0};
    mask_lo_ = prefix128 == 64 ? 0 : ~uint64_t{0} << (128 - prefix128);
  } else {
    mask_hi_ = prefix128 == 0 ? 0 : ~uint64_t{0} << (64 - prefix128);
    mask_lo_ = 0;
  }
  network_hi_ = LoadBigEndian64(network.bytes.data());
  network_lo_ = LoadBigEndian64(network.bytes.data() + 8);
  assert((network_hi_ & ~mask_hi_) == 0 && (network_lo_ & ~mask_lo_) == 0);
}

Result<Cidr> Cidr::MakeFrom128(const std::array<uint8_t, 16>& bytes, int prefix128) {
  assert(prefix128 >= 0 && prefix128 <= 128);
  std::array<uint8_t, 16> masked = bytes;
  for (int i = 0; i < 16; ++i) {
    int keep = prefix128 - 8 * i;  // bits of byte i inside the prefix
    if (keep <= 0) {
      masked[i] = 0;
    } else if (keep < 8) {
      masked[i] = static_cast<uint8_t>(masked[i] & (0xff << (8 - keep)));
    }
  }
  // Only a prefix of at least 96 keeps the ::ffff of a mapped address, so a
  // mapped network is always an IPv4 CIDR (the constructor asserts it).
  Cidr cidr(IpAddress::FromV6(masked), prefix128);
  if (masked != bytes) {
    return Status::InvalidArgument("host bits set; did you mean " + cidr.ToString() + "?");
  }
  return cidr;
}

Result<Cidr> Cidr::Make(const IpAddress& network, int prefix_length) {
  assert(network.is_v4 == IsMapped(network.bytes));
  if (network.is_v4 && (prefix_length < 0 || prefix_length > static_cast<int>(kIpv4PrefixMax))) {
    return Status::InvalidArgument("prefix length must be 0-32 for an IPv4 address");
  }
  if (!network.is_v4 && (prefix_length < 0 || prefix_length > static_cast<int>(kIpv6PrefixMax))) {
    return Status::InvalidArgument("prefix length must be 0-128 for an IPv6 address");
  }
  return MakeFrom128(network.bytes, network.is_v4 ? kMappedPrefix + prefix_length : prefix_length);
}

bool Cidr::ContainsWords(uint64_t hi, uint64_t lo) const {
  if ((((hi ^ network_hi_) & mask_hi_) | ((lo ^ network_lo_) & mask_lo_)) != 0) return false;
  // An IPv4 CIDR's mask covers the mapped prefix; an IPv6 one must skip IPv4.
  return is_v4() || !IsMappedWords(hi, lo);
}

bool Cidr::Contains(const IpAddress& address) const {
  assert(address.is_v4 == IsMapped(address.bytes));
  return ContainsWords(LoadBigEndian64(address.bytes.data()),
                       LoadBigEndian64(address.bytes.data() + 8));
}

std::string Cidr::ToString() const {
  return network_.ToString() + "/" + std::to_string(prefix_length());
}

Result<Cidr> ParseCidr(std::string_view text) {
  if (text.size() > kCidrBytesMax) {
    return Status::InvalidArgument("CIDR is longer than " + std::to_string(kCidrBytesMax) +
                                   " bytes");
  }
  size_t slash = text.find('/');
  std::string_view address_text = text.substr(0, slash);
  KL_ASSIGN_OR_RETURN(IpAddress address, ParseIpAddress(address_text));
  bool written_v6 = address_text.find(':') != std::string_view::npos;
  if (slash == std::string_view::npos) return Cidr::MakeFrom128(address.bytes, 128);
  uint32_t prefix = 0;
  size_t prefix_max = written_v6 ? kIpv6PrefixMax : kIpv4PrefixMax;
  if (!ParseDecimal(text.substr(slash + 1), kPrefixDigitsMax, &prefix) || prefix > prefix_max) {
    return Status::InvalidArgument(written_v6
                                       ? "prefix length must be a number from 0 to 128 for IPv6"
                                       : "prefix length must be a number from 0 to 32 for IPv4");
  }
  int prefix128 = static_cast<int>(prefix) + (written_v6 ? 0 : kMappedPrefix);
  return Cidr::MakeFrom128(address.bytes, prefix128);
}

// ---- OriginPattern -----------------------------------------------------------

bool OriginPattern::MatchesParts(const OriginParts& origin) const {
  if (origin.https != https_ || origin.port != port_) return false;
  if (host_kind_ == HostKind::kIpv6) return origin.is_ipv6 && origin.ipv6 == ipv6_;
  if (origin.is_ipv6) return false;
  std::string_view host = origin.host();
  if (!wildcard_) return host == host_;
  // "*" stands for one or more labels: the origin needs "x." before the suffix.
  if (host.size() < host_.size() + 2) return false;
  size_t cut = host.size() - host_.size();
  return host[cut - 1] == '.' && host.substr(cut) == host_;
}

bool OriginPattern::Matches(std::string_view origin) const {
  OriginParts parts;
  return ParseOriginParts(origin, &parts) && MatchesParts(parts);
}

std::string OriginPattern::ToString() const {
  std::string out = https_ ? "https://" : "http://";
  if (wildcard_) out += "*.";
  bool bracketed = host_kind_ == HostKind::kIpv6;
  if (bracketed) out += '[';
  out += host_;
  if (bracketed) out += ']';
  if (port_ != (https_ ? kHttpsPortDefault : kHttpPortDefault)) {
    out += ':';
    out += std::to_string(port_);
  }
  return out;
}

namespace {

// Parses a pattern host that is not in brackets: sets `wildcard`, `is_ipv4`
// and `lower` (the host in lower case, without "*."). Returns InvalidArgument
// saying what is wrong.
Status ParsePatternHostName(std::string_view host, bool* wildcard, bool* is_ipv4,
                            std::string* lower) {
  if (host.empty()) return Status::InvalidArgument("origin pattern has no host");
  if (host == "*") {
    return Status::InvalidArgument(
        "a host of \"*\" would allow every website; name the site, as in https://*.example.com");
  }
  *wildcard = host.substr(0, 2) == "*.";
  std::string_view name = *wildcard ? host.substr(2) : host;
  if (name.find('*') != std::string_view::npos) {
    return Status::InvalidArgument(
        "a wildcard must be the whole leftmost label, as in https://*.example.com");
  }
  if (host.size() > kOriginHostBytesMax) {
    return Status::InvalidArgument("host is longer than " + std::to_string(kOriginHostBytesMax) +
                                   " bytes");
  }
  size_t labels = 0;
  bool numeric_tail = false;
  KL_RETURN_IF_ERROR(CheckPatternHostName(name, &labels, &numeric_tail));
  *is_ipv4 = numeric_tail;
  if (numeric_tail && *wildcard) {
    return Status::InvalidArgument("a wildcard cannot be used with an IP address");
  }
  std::array<uint8_t, 16> ignored{};
  if (numeric_tail && !ParseIpBytes(name, &ignored)) {
    return Status::InvalidArgument(
        "host looks like an IPv4 address but is not one; expected a.b.c.d, each 0-255 without "
        "leading zeros");
  }
  if (*wildcard && labels < 2) {
    return Status::InvalidArgument(
        "a wildcard needs at least two labels after it, as in https://*.example.com; "
        "\"*.com\" would allow every site under a top-level domain");
  }
  lower->clear();
  for (char c : name) lower->push_back(ToLowerAscii(c));
  return Status::Ok();
}

}  // namespace

Result<OriginPattern> ParseOriginPattern(std::string_view text) {
  if (text.empty()) return Status::InvalidArgument("origin pattern is empty");
  if (text.size() > kOriginPatternBytesMax) {
    return Status::InvalidArgument("origin pattern is longer than " +
                                   std::to_string(kOriginPatternBytesMax) + " bytes");
  }
  if (text == "*") {
    return Status::InvalidArgument(
        "\"*\" would allow every website; list origins such as https://app.example.com or "
        "https://*.example.com");
  }
  OriginPattern p;
  std::string_view rest, host, port_text;
  bool bracketed = false;
  if (!SplitScheme(text, &p.https_, &rest)) {
    return Status::InvalidArgument("origin pattern must start with http:// or https://");
  }
  KL_RETURN_IF_ERROR(CheckNoPath(rest));
  if (!SplitHostPort(rest, &host, &port_text, &bracketed)) {
    return Status::InvalidArgument("IPv6 host has '[' without ']'");
  }
  if (!bracketed && port_text.find(':', 1) != std::string_view::npos) {
    return Status::InvalidArgument(
        "host may be followed by one ':port'; IPv6 hosts go in brackets, as in "
        "http://[::1]:8080");
  }
  p.port_ = p.https_ ? kHttpsPortDefault : kHttpPortDefault;
  if (!port_text.empty() && (port_text[0] != ':' || !ParsePort(port_text.substr(1), &p.port_))) {
    return Status::InvalidArgument(
        "port must be ':' and a number from 1 to 65535 without leading zeros");
  }
  if (bracketed) {
    if (host.find(':') == std::string_view::npos || !ParseIpBytes(host, &p.ipv6_)) {
      return Status::InvalidArgument("host in brackets must be an IPv6 address without zone id");
    }
    p.host_kind_ = OriginPattern::HostKind::kIpv6;
    p.host_ = FormatIpv6(p.ipv6_);
    return p;
  }
  bool is_ipv4 = false;
  KL_RETURN_IF_ERROR(ParsePatternHostName(host, &p.wildcard_, &is_ipv4, &p.host_));
  p.host_kind_ = is_ipv4 ? OriginPattern::HostKind::kIpv4 : OriginPattern::HostKind::kName;
  return p;
}

std::vector<std::string> CandidateOriginPatterns(std::string_view origin) {
  std::vector<std::string> out;
  OriginParts parts;
  if (!ParseOriginParts(origin, &parts)) return out;
  OriginPattern p;
  p.https_ = parts.https;
  p.port_ = parts.port;
  if (parts.is_ipv6) {
    p.host_kind_ = OriginPattern::HostKind::kIpv6;
    p.ipv6_ = parts.ipv6;
    p.host_ = FormatIpv6(parts.ipv6);
    out.push_back(p.ToString());
    return out;
  }
  // MatchesParts compares a name or IPv4 host as text, whatever its kind.
  const std::string_view host = parts.host();
  p.host_ = std::string(host);
  out.push_back(p.ToString());
  p.wildcard_ = true;  // "*." stands for the labels before a dot
  for (size_t dot = host.find('.'); dot != std::string_view::npos; dot = host.find('.', dot + 1)) {
    if (dot == 0 || dot + 1 == host.size()) continue;
    p.host_ = std::string(host.substr(dot + 1));
    out.push_back(p.ToString());
  }
  return out;
}

// ---- SecurityRules -----------------------------------------------------------

namespace {

// Parses every entry of the list named `list` with `parse` into `out`.
// Returns InvalidArgument naming the list when it has more than `entries_max`
// entries, or naming the first entry that does not parse or that equals an
// earlier one.
template <typename T>
Status CompileList(const std::vector<std::string>& texts, const char* list, size_t entries_max,
                   Result<T> (*parse)(std::string_view), std::vector<T>* out) {
  if (texts.size() > entries_max) {
    return Status::InvalidArgument("at most " + std::to_string(entries_max) +
                                       " entries are allowed, got " + std::to_string(texts.size()),
                                   list);
  }
  out->reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    Result<T> entry = parse(texts[i]);
    if (!entry.ok()) return Status::InvalidArgument(entry.status().message(), FieldName(list, i));
    for (size_t j = 0; j < i; ++j) {
      if ((*out)[j] == *entry) {
        return Status::InvalidArgument(
            "duplicate of " + FieldName(list, j) + " (both are " + entry->ToString() + ")",
            FieldName(list, i));
      }
    }
    out->push_back(std::move(entry).value());
  }
  return Status::Ok();
}

}  // namespace

Result<SecurityRules> SecurityRules::Compile(const std::vector<std::string>& ip_allow,
                                             const std::vector<std::string>& origin_allow) {
  SecurityRules rules;
  KL_RETURN_IF_ERROR(
      CompileList(ip_allow, "ip_allow", kIpAllowEntriesMax, &ParseCidr, &rules.cidrs_));
  KL_RETURN_IF_ERROR(CompileList(origin_allow, "origin_allow", kOriginAllowEntriesMax,
                                 &ParseOriginPattern, &rules.origins_));
  assert(rules.cidrs_.size() == ip_allow.size() && rules.cidrs_.size() <= kIpAllowEntriesMax);
  assert(rules.origins_.size() == origin_allow.size() &&
         rules.origins_.size() <= kOriginAllowEntriesMax);
  return rules;
}

std::vector<std::string> SecurityRules::canonical_ip_allow() const {
  std::vector<std::string> out;
  out.reserve(cidrs_.size());
  for (const Cidr& c : cidrs_) out.push_back(c.ToString());
  return out;
}

std::vector<std::string> SecurityRules::canonical_origin_allow() const {
  std::vector<std::string> out;
  out.reserve(origins_.size());
  for (const OriginPattern& p : origins_) out.push_back(p.ToString());
  return out;
}

bool SecurityRules::AllowsIp(const IpAddress& address) const {
  if (cidrs_.empty()) return true;
  assert(address.is_v4 == IsMapped(address.bytes));
  uint64_t hi = LoadBigEndian64(address.bytes.data());
  uint64_t lo = LoadBigEndian64(address.bytes.data() + 8);
  for (const Cidr& c : cidrs_) {
    if (c.ContainsWords(hi, lo)) return true;
  }
  return false;
}

bool SecurityRules::AllowsOrigin(std::string_view origin) const {
  if (origins_.empty()) return true;
  OriginParts parts;
  if (!ParseOriginParts(origin, &parts)) return false;  // "" and "null" land here
  for (const OriginPattern& p : origins_) {
    if (p.MatchesParts(parts)) return true;
  }
  return false;
}

}  // namespace keyledger
