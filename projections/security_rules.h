// Security rules of an API key's security group: which client IP ranges and
// which browser origins may use the key. This module is pure: it parses and
// canonicalises the rule text a workspace stores (SecurityGroupState::ip_allow
// and ::origin_allow) and answers the two questions asked on the authorize hot
// path, without I/O, locks or allocation.
//
// Addresses. Every address is held as 16 bytes of IPv6; an IPv4 address a.b.c.d
// is held as the IPv4-mapped address ::ffff:a.b.c.d. A client connecting over
// IPv6 with a mapped address (a dual-stack socket) is therefore the same
// IpAddress as the plain IPv4 client and matches IPv4 CIDRs.
//
// Families are kept apart, as in cloud firewalls: an IPv4 CIDR matches only
// IPv4 clients (plain or mapped) and an IPv6 CIDR matches only non-mapped IPv6
// clients. "::/0" therefore means "every IPv6 client" and does NOT admit IPv4
// clients; write "0.0.0.0/0" as well to admit everyone. A CIDR written in mapped
// form with a prefix of at least 96 ("::ffff:10.0.0.0/104") is an IPv4 CIDR and
// canonicalises to IPv4 form ("10.0.0.0/8"). Other IPv4 embeddings (NAT64
// 64:ff9b::/96, 6to4, the deprecated ::a.b.c.d) are plain IPv6.
//
// Origins. An origin pattern is "scheme://host[:port]" where scheme is http or
// https, as a browser sends in the Origin request header. The leftmost label of
// the host may be "*", which stands for one or more labels: "*.example.com"
// matches "app.example.com" and "a.b.example.com" but not "example.com".
//
// Thread safety: IpAddress, Cidr and OriginPattern are immutable values after
// construction; their const methods may be called concurrently. SecurityRules is
// immutable after Compile(); any number of threads may call its const methods on
// one object concurrently without synchronization. Free functions are stateless.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/status.h"

namespace keyledger {

// ---- Limits ------------------------------------------------------------------

// At most this many CIDRs in one security group.
inline constexpr size_t kIpAllowEntriesMax = 100;
// At most this many origin patterns in one security group.
inline constexpr size_t kOriginAllowEntriesMax = 100;
// Longest textual IP address: a full IPv6 address with an embedded IPv4 tail,
// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" (INET6_ADDRSTRLEN - 1).
inline constexpr size_t kIpAddressBytesMax = 45;
// Longest CIDR text: the longest address plus "/128".
inline constexpr size_t kCidrBytesMax = kIpAddressBytesMax + 4;
// Longest host in an origin pattern, "*." included: the DNS limit on a name.
inline constexpr size_t kOriginHostBytesMax = 253;
// Longest label of a host name (RFC 1035).
inline constexpr size_t kOriginLabelBytesMax = 63;
// Longest origin pattern, and longest Origin header value that can match:
// "https://" + host + ":65535" = 8 + 253 + 6 = 267.
inline constexpr size_t kOriginPatternBytesMax = 8 + kOriginHostBytesMax + 6;

// ---- IP addresses ------------------------------------------------------------

// An IPv4 or IPv6 address, always stored as IPv6 in network byte order.
// Invariant: is_v4 == (bytes lie in ::ffff:0:0/96). Build values with
// ParseIpAddress(), FromV4() or FromV6(), which keep the invariant.
//
// Thread safety: a plain value.
struct IpAddress {
  std::array<uint8_t, 16> bytes{};
  bool is_v4 = false;

  // Returns ::ffff:a.b.c.d for `v4` = {a, b, c, d}.
  static IpAddress FromV4(const std::array<uint8_t, 4>& v4);
  // Returns the address with `v6` as its bytes; is_v4 is set when `v6` is a
  // mapped IPv4 address, so sockets that report ::ffff:a.b.c.d need no special case.
  static IpAddress FromV6(const std::array<uint8_t, 16>& v6);

  // Returns dotted-quad text for IPv4 ("10.0.0.1") and RFC 5952 text for IPv6
  // ("2001:db8::1", lower-case, longest run of two or more zero groups
  // compressed, never a dotted-quad tail). ParseIpAddress(ToString()) returns an
  // equal value. REQUIRES: the IpAddress invariant holds.
  std::string ToString() const;

  bool operator==(const IpAddress&) const = default;
};

// Parses dotted-quad IPv4 ("192.0.2.1"; no leading zeros, exactly four parts) or
// any IPv6 text accepted by inet_pton(AF_INET6), including "::ffff:192.0.2.1".
// Returns InvalidArgument (no field) when `text` is empty, longer than
// kIpAddressBytesMax, carries a zone id ("fe80::1%eth0"), surrounding spaces or
// any other character inet_pton refuses.
Result<IpAddress> ParseIpAddress(std::string_view text);

// ---- CIDRs -------------------------------------------------------------------

// An IP range: a network address and a prefix length, with all host bits zero.
//
// Thread safety: an immutable value; const methods may be called concurrently.
class Cidr {
 public:
  // Returns the CIDR of `network`/`prefix_length`, the prefix counted in bits of
  // the network's own family (0-32 for IPv4, 0-128 for IPv6).
  // Returns InvalidArgument (no field) when the prefix is out of range, or when
  // `network` has a bit set beyond the prefix; the message then names the
  // corrected network ("host bits set; did you mean 10.0.0.0/8?").
  // REQUIRES: `network` keeps the IpAddress invariant.
  static Result<Cidr> Make(const IpAddress& network, int prefix_length);

  // The network address; its bits beyond prefix_length() are zero.
  const IpAddress& network() const { return network_; }
  // 0-32 for an IPv4 CIDR, 0-128 for an IPv6 CIDR.
  int prefix_length() const { return is_v4() ? prefix128_ - 96 : prefix128_; }
  bool is_v4() const { return network_.is_v4; }

  // Returns true iff `address` is of this CIDR's family and its first
  // prefix_length() bits (counted in that family) equal the network's.
  // Does not allocate.
  // REQUIRES: `address` keeps the IpAddress invariant.
  bool Contains(const IpAddress& address) const;

  // Returns the canonical form "network/prefix", always with the prefix:
  // "10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "::/0".
  // ParseCidr(ToString()) returns an equal value.
  std::string ToString() const;

  bool operator==(const Cidr&) const = default;

 private:
  friend class SecurityRules;
  friend Result<Cidr> ParseCidr(std::string_view text);
  // Like Make(), with the prefix counted in the 128-bit mapped representation.
  // REQUIRES: 0 <= prefix128 <= 128.
  static Result<Cidr> MakeFrom128(const std::array<uint8_t, 16>& bytes, int prefix128);
  // REQUIRES: `network` has no bit set beyond prefix128.
  Cidr(const IpAddress& network, int prefix128);
  // Contains() on an address already loaded as two big-endian words.
  bool ContainsWords(uint64_t hi, uint64_t lo) const;

  IpAddress network_;
  int prefix128_ = 0;  // prefix counted in the 128-bit mapped representation
  uint64_t network_hi_ = 0;
  uint64_t network_lo_ = 0;
  uint64_t mask_hi_ = 0;
  uint64_t mask_lo_ = 0;
};

// Parses "address/prefix" or a bare address, which means /32 (IPv4) or /128
// (IPv6). The prefix is decimal without sign or leading zeros; for an address
// written in IPv6 syntax it counts IPv6 bits, so "::ffff:10.0.0.0/104" is the
// IPv4 CIDR 10.0.0.0/8.
// Returns InvalidArgument (no field) when the text is longer than kCidrBytesMax,
// the address is invalid (see ParseIpAddress), the prefix is malformed or out of
// range, or host bits are set (see Cidr::Make).
Result<Cidr> ParseCidr(std::string_view text);

// ---- Origin patterns ---------------------------------------------------------

struct OriginParts;  // a parsed Origin header value; internal to the .cc file

// A pattern over browser origins. Scheme and host are held in lower case; the
// port is held as the effective port (443 for https and 80 for http when absent).
//
// Thread safety: an immutable value; const methods may be called concurrently.
class OriginPattern {
 public:
  // Returns true iff `origin` (an Origin header value, e.g.
  // "https://app.example.com:8443") is "scheme://host[:port]" with the same
  // scheme, the same effective port and a matching host. Scheme and host
  // compare case-insensitively; "https://x.com:443" equals "https://x.com". A
  // wildcard pattern matches hosts with one or more labels in place of "*".
  // Returns false for anything that is not such an origin: "", "null", values
  // with a path, query, fragment, user info, trailing dot or a malformed port.
  // Does not allocate.
  bool Matches(std::string_view origin) const;

  // Returns the canonical form: lower case, default port omitted, IPv6 hosts in
  // brackets as browsers serialise them (RFC 5952, but never with a dotted-quad
  // tail: "[::ffff:102:304]"): "https://*.example.com", "http://[::1]:8080".
  // ParseOriginPattern(ToString()) returns an equal value.
  std::string ToString() const;

  bool is_wildcard() const { return wildcard_; }

  bool operator==(const OriginPattern&) const = default;

 private:
  friend class SecurityRules;
  friend Result<OriginPattern> ParseOriginPattern(std::string_view text);
  enum class HostKind : uint8_t { kName, kIpv4, kIpv6 };

  friend std::vector<std::string> CandidateOriginPatterns(std::string_view origin);
  OriginPattern() = default;
  bool MatchesParts(const OriginParts& origin) const;

  bool https_ = true;
  bool wildcard_ = false;  // host_ is the suffix after "*."
  HostKind host_kind_ = HostKind::kName;
  std::string host_;  // lower case; IPv6 without brackets
  std::array<uint8_t, 16> ipv6_{};  // the address, when host_kind_ == kIpv6
  uint16_t port_ = 443;  // effective port
};

// Parses an origin pattern: "http" or "https" (any case), "://", a host, and an
// optional ":port" (1-65535, no leading zeros). The host is one of
//   - a DNS name: labels of letters, digits and '-' (not first or last), 1 to
//     kOriginLabelBytesMax bytes each, separated by '.', at most
//     kOriginHostBytesMax bytes, whose last label is not all digits;
//   - a dotted-quad IPv4 address;
//   - an IPv6 address in brackets, "[2001:db8::1]";
//   - "*." followed by a DNS name of at least two labels ("*.example.com").
// Returns InvalidArgument (no field), with a message saying what to change, when
// the text is empty or longer than kOriginPatternBytesMax; is "*" or has "*" as
// its whole host (these would admit every website); has another scheme; has a
// path (a trailing "/" included), query, fragment or user info; has a wildcard
// anywhere but as the whole leftmost label, on an IP address, or over fewer than
// two labels ("*.com" would admit every .com site); or has a malformed host or port.
Result<OriginPattern> ParseOriginPattern(std::string_view text);

// Returns the canonical form (OriginPattern::ToString) of every pattern that
// could match `origin`: the origin itself and, for a host name, each "*."
// pattern over one of its suffixes, longest suffix first. So a pattern p
// matches `origin` iff p.ToString() is in the result, and an index of
// patterns by canonical form answers "does any pattern match" with at most
// 127 lookups (a host has at most 127 dots). Empty when `origin` is not an
// origin any pattern matches ("", "null", a path, ...).
std::vector<std::string> CandidateOriginPatterns(std::string_view origin);

// ---- Security rules ----------------------------------------------------------

// The compiled rules of one security group.
//
// An empty ip_allow list puts no restriction on client addresses. An empty
// origin_allow list puts no restriction on origins. A non-empty origin_allow
// list admits only requests whose Origin header matches one of its patterns; a
// request without an Origin header (pass "") or with "null" is then REFUSED:
// a group that names browser origins is for browsers only. Servers that need
// to call with such a key should use a key in another security group.
//
// Thread safety: immutable after Compile(); safe to share between threads.
class SecurityRules {
 public:
  // No restrictions: every address and every origin (or none) is allowed.
  SecurityRules() = default;

  // Parses and canonicalises both lists (see ParseCidr and ParseOriginPattern).
  // Returns InvalidArgument with field "ip_allow" or "origin_allow" when a list
  // has more than kIpAllowEntriesMax or kOriginAllowEntriesMax entries; with field
  // "ip_allow[i]" or "origin_allow[i]" naming the first bad entry when it does
  // not parse, or when it equals an earlier entry after canonicalisation (the
  // field names the later one). Overlapping but different entries are accepted.
  static Result<SecurityRules> Compile(const std::vector<std::string>& ip_allow,
                                       const std::vector<std::string>& origin_allow);

  // Returns the canonical CIDR strings in input order, for storage.
  std::vector<std::string> canonical_ip_allow() const;
  // Returns the canonical origin patterns in input order, for storage.
  std::vector<std::string> canonical_origin_allow() const;

  // Returns true iff ip_allow is empty or a CIDR in it contains `address`.
  // Does not allocate. REQUIRES: `address` keeps the IpAddress invariant.
  bool AllowsIp(const IpAddress& address) const;

  // Returns true iff origin_allow is empty, or `origin` (the Origin header value,
  // "" when absent) matches a pattern in it. See the class comment: with a
  // non-empty list, "" and "null" are refused. Does not allocate.
  bool AllowsOrigin(std::string_view origin) const;

  bool ip_restricted() const { return !cidrs_.empty(); }
  bool origin_restricted() const { return !origins_.empty(); }

 private:
  std::vector<Cidr> cidrs_;
  std::vector<OriginPattern> origins_;
};

}  // namespace keyledger
