#include "projections/security_rules.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

// Counts heap allocations while `g_count_allocations` is set, to check that the
// hot-path matchers never allocate.
namespace {
std::atomic<bool> g_count_allocations{false};
std::atomic<size_t> g_allocations{0};
}  // namespace

void* operator new(size_t size) {
  if (g_count_allocations.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// The default operator delete calls free(), which matches the malloc() above.

namespace keyledger {
namespace {

IpAddress Ip(std::string_view text) {
  Result<IpAddress> r = ParseIpAddress(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.ToStatus().ToString();
  return r.ok() ? *r : IpAddress{};
}

// ---- IP addresses ------------------------------------------------------------

struct AddressCase {
  std::string text;
  std::string canonical;
  bool is_v4;
};

TEST(ParseIpAddress, ValidAddresses) {
  const std::vector<AddressCase> cases = {
      {"0.0.0.0", "0.0.0.0", true},
      {"255.255.255.255", "255.255.255.255", true},
      {"192.0.2.1", "192.0.2.1", true},
      {"10.0.0.1", "10.0.0.1", true},
      {"::ffff:1.2.3.4", "1.2.3.4", true},  // mapped: is IPv4
      {"::FFFF:102:304", "1.2.3.4", true},
      {"0:0:0:0:0:ffff:0102:0304", "1.2.3.4", true},
      {"::", "::", false},
      {"::1", "::1", false},
      {"2001:DB8::1", "2001:db8::1", false},
      {"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1", false},
      {"1:0:0:2:0:0:0:3", "1:0:0:2::3", false},    // longest run compressed
      {"1:0:0:1:0:0:1:1", "1::1:0:0:1:1", false},  // first of equal runs
      {"1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7", false},  // a single zero stays
      {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0", false},
      {"fe80::1:2", "fe80::1:2", false},
      {"::1.2.3.4", "::102:304", false},  // deprecated compatible form: plain IPv6
      {"::fffe:1.2.3.4", "::fffe:102:304", false},
      {"1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304", false},
      {"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
       false},
  };
  for (const AddressCase& c : cases) {
    Result<IpAddress> r = ParseIpAddress(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.ToStatus().ToString();
    EXPECT_EQ(r->is_v4, c.is_v4) << c.text;
    EXPECT_EQ(r->ToString(), c.canonical) << c.text;
    EXPECT_EQ(*ParseIpAddress(c.canonical), *r) << c.text;
  }
}

TEST(ParseIpAddress, MappedEqualsPlainIpv4) {
  IpAddress plain = Ip("1.2.3.4");
  EXPECT_EQ(Ip("::ffff:1.2.3.4"), plain);
  EXPECT_EQ(IpAddress::FromV4({1, 2, 3, 4}), plain);
  std::array<uint8_t, 16> v6{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4};
  EXPECT_EQ(IpAddress::FromV6(v6), plain);
  EXPECT_TRUE(IpAddress::FromV6(v6).is_v4);
  v6[11] = 0xfe;
  EXPECT_FALSE(IpAddress::FromV6(v6).is_v4);
}

struct InvalidCase {
  std::string text;
  std::string message_part;
};

TEST(ParseIpAddress, InvalidAddresses) {
  const std::vector<InvalidCase> cases = {
      {"", "empty"},
      {" 1.2.3.4", "spaces"},
      {"1.2.3.4 ", "spaces"},
      {" ::1", "spaces"},
      {"1.2.3", "IPv4"},
      {"1.2.3.4.5", "IPv4"},
      {"256.0.0.1", "IPv4"},
      {"01.2.3.4", "leading zeros"},
      {"1.2.3.04", "leading zeros"},
      {"0x7f.0.0.1", "IPv4"},
      {"1.2.3.4/8", "IPv4"},
      {"localhost", "IPv4 a.b.c.d"},
      {"-1.2.3.4", "IPv4"},
      {"1.2.3.4\n", "IPv4"},
      {std::string("1.2.3.4\0", 8), "IPv4"},
      {std::string("::1\0", 4), "IPv6"},
      {"fe80::1%eth0", "zone id"},
      {"fe80::1%25eth0", "zone id"},
      {"1::2::3", "IPv6"},
      {":::", "IPv6"},
      {"1:2:3:4:5:6:7:8:9", "IPv6"},
      {"12345::", "IPv6"},
      {"g::", "IPv6"},
      {"[::1]", "IPv6"},
      {"::ffff:01.2.3.4", "IPv6"},
      {"::ffff:1.2.3", "IPv6"},
      {std::string(46, '1'), "longer than 45"},
  };
  for (const InvalidCase& c : cases) {
    Result<IpAddress> r = ParseIpAddress(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.text;
    EXPECT_NE(r.status().message().find(c.message_part), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
}

// ---- CIDRs -------------------------------------------------------------------

struct CidrCase {
  std::string text;
  std::string canonical;
  bool is_v4;
  int prefix_length;
};

TEST(ParseCidr, ValidCidrs) {
  const std::vector<CidrCase> cases = {
      {"10.0.0.0/8", "10.0.0.0/8", true, 8},
      {"0.0.0.0/0", "0.0.0.0/0", true, 0},
      {"128.0.0.0/1", "128.0.0.0/1", true, 1},
      {"1.2.3.4", "1.2.3.4/32", true, 32},
      {"1.2.3.4/32", "1.2.3.4/32", true, 32},
      {"1.2.3.254/31", "1.2.3.254/31", true, 31},
      {"::/0", "::/0", false, 0},
      {"8000::/1", "8000::/1", false, 1},
      {"::1", "::1/128", false, 128},
      {"::1/128", "::1/128", false, 128},
      {"2001:DB8::/32", "2001:db8::/32", false, 32},
      {"2001:db8::1/128", "2001:db8::1/128", false, 128},
      {"2001:db8:0:0:1::/80", "2001:db8:0:0:1::/80", false, 80},
      {"::ffff:1.2.3.4", "1.2.3.4/32", true, 32},
      {"::ffff:10.0.0.0/104", "10.0.0.0/8", true, 8},
      {"::ffff:0:0/96", "0.0.0.0/0", true, 0},
      {"::fffe:0:0/95", "::fffe:0:0/95", false, 95},
      {"::/96", "::/96", false, 96},
  };
  for (const CidrCase& c : cases) {
    Result<Cidr> r = ParseCidr(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.ToStatus().ToString();
    EXPECT_EQ(r->ToString(), c.canonical) << c.text;
    EXPECT_EQ(r->is_v4(), c.is_v4) << c.text;
    EXPECT_EQ(r->prefix_length(), c.prefix_length) << c.text;
    EXPECT_EQ(*ParseCidr(c.canonical), *r) << c.text;
  }
}

TEST(ParseCidr, InvalidCidrs) {
  const std::vector<InvalidCase> cases = {
      {"10.1.2.3/8", "host bits set; did you mean 10.0.0.0/8?"},
      {"0.0.0.1/0", "host bits set; did you mean 0.0.0.0/0?"},
      {"1.2.3.255/31", "did you mean 1.2.3.254/31?"},
      {"2001:db8::1/32", "host bits set; did you mean 2001:db8::/32?"},
      {"::1/0", "did you mean ::/0?"},
      {"::ffff:10.1.0.0/104", "did you mean 10.0.0.0/8?"},
      {"::ffff:0:0/80", "did you mean ::/80?"},  // not all-IPv4: an IPv6 range
      {"1.2.3.4/33", "0 to 32"},
      {"::/129", "0 to 128"},
      {"::ffff:1.2.3.4/129", "0 to 128"},
      {"10.0.0.0/", "prefix length"},
      {"10.0.0.0/-1", "prefix length"},
      {"10.0.0.0/+8", "prefix length"},
      {"10.0.0.0/08", "prefix length"},
      {"10.0.0.0/8/8", "prefix length"},
      {"10.0.0.0/ 8", "prefix length"},
      {"10.0.0.0/8 ", "prefix length"},
      {"10.0.0.0/1000", "prefix length"},
      {"10.0.0.0 /8", "spaces"},
      {"/8", "empty"},
      {"", "empty"},
      {"10.0.0/8", "IPv4"},
      {"fe80::%eth0/64", "zone id"},
      {std::string(50, '1'), "longer than 49"},
  };
  for (const InvalidCase& c : cases) {
    Result<Cidr> r = ParseCidr(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.text;
    EXPECT_NE(r.status().message().find(c.message_part), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
}

TEST(CidrMake, ChecksPrefixRangeAndHostBits) {
  EXPECT_TRUE(Cidr::Make(Ip("10.0.0.0"), 8).ok());
  EXPECT_FALSE(Cidr::Make(Ip("10.0.0.0"), 33).ok());
  EXPECT_FALSE(Cidr::Make(Ip("10.0.0.0"), -1).ok());
  EXPECT_TRUE(Cidr::Make(Ip("::"), 128).ok());
  EXPECT_FALSE(Cidr::Make(Ip("::"), 129).ok());
  Result<Cidr> r = Cidr::Make(Ip("10.0.0.1"), 8);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "host bits set; did you mean 10.0.0.0/8?");
}

struct ContainsCase {
  std::string cidr;
  std::string address;
  bool contains;
};

TEST(Cidr, Contains) {
  const std::vector<ContainsCase> cases = {
      {"10.0.0.0/8", "10.0.0.0", true},
      {"10.0.0.0/8", "10.255.255.255", true},
      {"10.0.0.0/8", "::ffff:10.1.2.3", true},  // mapped client, IPv4 rule
      {"10.0.0.0/8", "9.255.255.255", false},
      {"10.0.0.0/8", "11.0.0.0", false},
      {"10.0.0.0/8", "::a00:1", false},  // ::10.0.0.1 compatible form is IPv6
      {"10.0.0.0/8", "a00::", false},
      {"0.0.0.0/0", "1.2.3.4", true},
      {"0.0.0.0/0", "::ffff:255.255.255.255", true},
      {"0.0.0.0/0", "::1", false},
      {"0.0.0.0/0", "::", false},
      {"::/0", "::", true},
      {"::/0", "::1", true},
      {"::/0", "2001:db8::1", true},
      {"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"::/0", "1.2.3.4", false},  // families are kept apart
      {"::/0", "::ffff:1.2.3.4", false},
      {"::/0", "::fffe:1.2.3.4", true},
      {"::/80", "::ffff:1.2.3.4", false},
      {"::/96", "::1.2.3.4", true},
      {"::fffe:0:0/95", "::fffe:1:2", true},
      {"::fffe:0:0/95", "::ffff:1.2.3.4", false},
      {"1.2.3.4/32", "1.2.3.4", true},
      {"1.2.3.4/32", "1.2.3.5", false},
      {"1.2.3.4", "1.2.3.4", true},
      {"128.0.0.0/1", "128.0.0.0", true},
      {"128.0.0.0/1", "255.255.255.255", true},
      {"128.0.0.0/1", "127.255.255.255", false},
      {"2001:db8::/32", "2001:db8:ffff:ffff::1", true},
      {"2001:db8::/32", "2001:db9::", false},
      {"2001:db8::/32", "2001:db7:ffff::", false},
      {"2001:db8::/64", "2001:db8::ffff:ffff:ffff:ffff", true},
      {"2001:db8::/64", "2001:db8:0:1::", false},
      {"2001:db8::/65", "2001:db8::7fff:ffff:ffff:ffff", true},
      {"2001:db8::/65", "2001:db8::8000:0:0:0", false},
      {"::1/128", "::1", true},
      {"::1/128", "::2", false},
      {"::1", "0:0:0:0:0:0:0:1", true},
  };
  for (const ContainsCase& c : cases) {
    Result<Cidr> cidr = ParseCidr(c.cidr);
    ASSERT_TRUE(cidr.ok()) << c.cidr;
    EXPECT_EQ(cidr->Contains(Ip(c.address)), c.contains) << c.cidr << " ? " << c.address;
  }
}

// ---- Origin patterns ---------------------------------------------------------

struct PatternCase {
  std::string text;
  std::string canonical;
};

TEST(ParseOriginPattern, ValidPatterns) {
  const std::vector<PatternCase> cases = {
      {"https://example.com", "https://example.com"},
      {"HTTPS://EXAMPLE.COM", "https://example.com"},
      {"Http://Example.Com", "http://example.com"},
      {"https://example.com:443", "https://example.com"},
      {"http://example.com:80", "http://example.com"},
      {"http://example.com:443", "http://example.com:443"},
      {"https://example.com:80", "https://example.com:80"},
      {"https://example.com:8443", "https://example.com:8443"},
      {"https://example.com:1", "https://example.com:1"},
      {"https://example.com:65535", "https://example.com:65535"},
      {"https://*.example.com", "https://*.example.com"},
      {"https://*.EXAMPLE.com:8443", "https://*.example.com:8443"},
      {"https://*.a.b.example.com", "https://*.a.b.example.com"},
      {"http://localhost:3000", "http://localhost:3000"},
      {"http://localhost", "http://localhost"},
      {"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
      {"http://[::1]:8080", "http://[::1]:8080"},
      {"http://[0:0:0:0:0:0:0:1]", "http://[::1]"},
      {"https://[2001:DB8::1]:443", "https://[2001:db8::1]"},
      {"http://[::ffff:1.2.3.4]", "http://[::ffff:102:304]"},  // as browsers serialise it
      {"https://xn--bcher-kva.example", "https://xn--bcher-kva.example"},
      {"https://a-b.c--d.example", "https://a-b.c--d.example"},
      {"https://1a.example.com", "https://1a.example.com"},
      {"https://123.example.com", "https://123.example.com"},
      {"https://example.123a", "https://example.123a"},
      {"https://" + std::string(63, 'a') + ".com", "https://" + std::string(63, 'a') + ".com"},
  };
  for (const PatternCase& c : cases) {
    Result<OriginPattern> r = ParseOriginPattern(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.ToStatus().ToString();
    EXPECT_EQ(r->ToString(), c.canonical) << c.text;
    EXPECT_EQ(*ParseOriginPattern(c.canonical), *r) << c.text;
  }
}

std::string LongHost(size_t bytes) {
  std::string host;
  while (host.size() < bytes) host += host.empty() ? "a" : ".a";
  host.resize(bytes);
  if (host.back() == '.') host.back() = 'b';
  return host;
}

TEST(ParseOriginPattern, InvalidPatterns) {
  const std::vector<InvalidCase> cases = {
      {"", "empty"},
      {"*", "every website"},
      {"https://*", "every website"},
      {"http://*:8080", "every website"},
      {"*://example.com", "http:// or https://"},
      {"ftp://example.com", "http:// or https://"},
      {"ws://example.com", "http:// or https://"},
      {"example.com", "http:// or https://"},
      {"//example.com", "http:// or https://"},
      {"https:/example.com", "http:// or https://"},
      {"https://example.com/", "must not end with '/'"},
      {"https://example.com/path", "path"},
      {"https://example.com//", "path"},
      {"https://example.com?x=1", "query"},
      {"https://example.com#top", "fragment"},
      {"https://user@example.com", "user info"},
      {"https://user:pw@example.com", "user info"},
      {"https://*.com", "at least two labels"},
      {"https://*.localhost", "at least two labels"},
      {"https://*.example.*", "whole leftmost label"},
      {"https://a.*.example.com", "whole leftmost label"},
      {"https://*example.com", "whole leftmost label"},
      {"https://**.example.com", "whole leftmost label"},
      {"https://*.*.example.com", "whole leftmost label"},
      {"https://app*.example.com", "whole leftmost label"},
      {"https://*.1.2.3", "IP address"},
      {"https://example.com:", "port"},
      {"https://example.com:0", "port"},
      {"https://example.com:65536", "port"},
      {"https://example.com:080", "port"},
      {"https://example.com:abc", "port"},
      {"https://example.com:-1", "port"},
      {"https://example.com:*", "port"},
      {"https://example.com:443:443", "brackets"},
      {"https://2001:db8::1", "brackets"},
      {"https://[::1", "'['"},
      {"https://[::1]x", "port"},
      {"https://[1.2.3.4]", "IPv6"},
      {"https://[fe80::1%25eth0]", "IPv6"},
      {"https://[]", "IPv6"},
      {"https://", "no host"},
      {"https://:443", "no host"},
      {"https://exa_mple.com", "letters, digits"},
      {"https://exa mple.com", "letters, digits"},
      {"https:// example.com", "letters, digits"},
      {"https://ex\xc3\xa4mple.com", "letters, digits"},
      {"https://-a.example.com", "'-'"},
      {"https://a-.example.com", "'-'"},
      {"https://example..com", "empty label"},
      {"https://.example.com", "empty label"},
      {"https://example.com.", "empty label"},
      {"https://*..example.com", "empty label"},
      {"https://01.2.3.4", "IPv4"},
      {"https://1.2.3", "IPv4"},
      {"https://256.1.1.1", "IPv4"},
      {"https://example.123", "IPv4"},
      {"https://" + std::string(64, 'a') + ".com", "longer than 63"},
      {"https://" + LongHost(254), "longer than 253"},
      {"https://" + LongHost(260) + ":8443", "longer than 267"},
  };
  for (const InvalidCase& c : cases) {
    Result<OriginPattern> r = ParseOriginPattern(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.text;
    EXPECT_NE(r.status().message().find(c.message_part), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
  // The longest legal host still fits the pattern limit.
  EXPECT_TRUE(ParseOriginPattern("https://" + LongHost(253) + ":65535").ok());
}

struct MatchCase {
  std::string pattern;
  std::string origin;
  bool matches;
};

TEST(OriginPattern, Matches) {
  const std::vector<MatchCase> cases = {
      {"https://example.com", "https://example.com", true},
      {"https://example.com", "https://EXAMPLE.com", true},
      {"https://example.com", "HTTPS://example.com", true},
      {"https://example.com", "https://example.com:443", true},
      {"https://example.com", "http://example.com", false},
      {"https://example.com", "https://example.com:8443", false},
      {"https://example.com", "https://example.com:80", false},
      {"https://example.com", "https://app.example.com", false},
      {"https://example.com", "https://example.com/", false},
      {"https://example.com", "https://example.com.", false},
      {"https://example.com", "https://example.comx", false},
      {"https://example.com", "https://xexample.com", false},
      {"https://example.com", "https://example.com:0443", false},
      {"https://example.com", "https://example.com:", false},
      {"https://example.com", "https://user@example.com", false},
      {"https://example.com", "https://example.com@evil.com", false},
      {"https://example.com", " https://example.com", false},
      {"https://example.com", "https://example.com ", false},
      {"https://example.com", "", false},
      {"https://example.com", "null", false},
      {"https://example.com", "example.com", false},
      {"https://*.example.com", "https://app.example.com", true},
      {"https://*.example.com", "https://a.b.example.com", true},
      {"https://*.example.com", "https://APP.Example.COM", true},
      {"https://*.example.com", "https://app.example.com:443", true},
      {"https://*.example.com", "https://example.com", false},
      {"https://*.example.com", "https://.example.com", false},
      {"https://*.example.com", "https://..example.com", false},
      {"https://*.example.com", "https://evilexample.com", false},
      {"https://*.example.com", "https://app.example.com:8443", false},
      {"https://*.example.com", "http://app.example.com", false},
      {"https://*.example.com", "https://app.example.com.evil.com", false},
      {"https://*.example.com", "https://evil.com/.example.com", false},
      {"https://*.example.com", "https://evil.com?.example.com", false},
      {"https://*.example.com", "https://evil.com#.example.com", false},
      {"https://*.example.com", "https://x@app.example.com", false},
      {"https://*.example.com", "https://evil.com:1.example.com", false},
      {"https://*.example.com", "https://[::1]", false},
      {"https://*.example.com:8443", "https://a.example.com:8443", true},
      {"https://*.example.com:8443", "https://a.example.com", false},
      {"http://example.com", "http://example.com:80", true},
      {"http://example.com:8080", "http://example.com:8080", true},
      {"http://example.com:8080", "http://example.com", false},
      {"http://127.0.0.1:3000", "http://127.0.0.1:3000", true},
      {"http://127.0.0.1:3000", "http://127.0.0.2:3000", false},
      {"http://127.0.0.1:3000", "http://[::ffff:127.0.0.1]:3000", false},
      {"http://[::1]:8080", "http://[::1]:8080", true},
      {"http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080", true},
      {"http://[::1]:8080", "http://[::2]:8080", false},
      {"http://[::1]:8080", "http://[::1]", false},
      {"http://[::1]:8080", "http://localhost:8080", false},
      {"http://[::1]:8080", "http://[::1%25lo]:8080", false},
      {"http://[2001:db8::1]", "http://[2001:DB8::1]", true},
  };
  for (const MatchCase& c : cases) {
    Result<OriginPattern> p = ParseOriginPattern(c.pattern);
    ASSERT_TRUE(p.ok()) << c.pattern;
    EXPECT_EQ(p->Matches(c.origin), c.matches) << c.pattern << " ? " << c.origin;
  }
}

// ---- SecurityRules -----------------------------------------------------------

TEST(SecurityRules, EmptyListsAllowEverything) {
  SecurityRules rules = *SecurityRules::Compile({}, {});
  EXPECT_FALSE(rules.ip_restricted());
  EXPECT_FALSE(rules.origin_restricted());
  EXPECT_TRUE(rules.AllowsIp(Ip("1.2.3.4")));
  EXPECT_TRUE(rules.AllowsIp(Ip("::1")));
  EXPECT_TRUE(rules.AllowsOrigin(""));
  EXPECT_TRUE(rules.AllowsOrigin("null"));
  EXPECT_TRUE(rules.AllowsOrigin("https://anything.example"));
  EXPECT_TRUE(SecurityRules().AllowsOrigin(""));
  EXPECT_TRUE(SecurityRules().AllowsIp(Ip("::")));
}

TEST(SecurityRules, OriginListRefusesRequestsWithoutOrigin) {
  SecurityRules rules = *SecurityRules::Compile({}, {"https://app.example.com"});
  EXPECT_TRUE(rules.AllowsOrigin("https://app.example.com"));
  EXPECT_FALSE(rules.AllowsOrigin(""));
  EXPECT_FALSE(rules.AllowsOrigin("null"));
  EXPECT_FALSE(rules.AllowsOrigin("https://other.example.com"));
  EXPECT_TRUE(rules.AllowsIp(Ip("203.0.113.9")));  // no IP list: any address
}

TEST(SecurityRules, IpListAllowsOnlyListedRanges) {
  SecurityRules rules = *SecurityRules::Compile({"10.0.0.0/8", "2001:db8::/32"}, {});
  EXPECT_TRUE(rules.AllowsIp(Ip("10.1.2.3")));
  EXPECT_TRUE(rules.AllowsIp(Ip("::ffff:10.1.2.3")));
  EXPECT_TRUE(rules.AllowsIp(Ip("2001:db8::5")));
  EXPECT_FALSE(rules.AllowsIp(Ip("11.0.0.1")));
  EXPECT_FALSE(rules.AllowsIp(Ip("2001:db9::5")));
  EXPECT_TRUE(rules.AllowsOrigin(""));  // no origin list: no restriction
}

TEST(SecurityRules, CanonicalListsKeepInputOrder) {
  SecurityRules rules =
      *SecurityRules::Compile({"2001:DB8::/32", "::ffff:10.0.0.0/104", "1.2.3.4"},
                              {"HTTPS://*.Example.com:443", "http://[0::1]:8080"});
  EXPECT_EQ(rules.canonical_ip_allow(),
            (std::vector<std::string>{"2001:db8::/32", "10.0.0.0/8", "1.2.3.4/32"}));
  EXPECT_EQ(rules.canonical_origin_allow(),
            (std::vector<std::string>{"https://*.example.com", "http://[::1]:8080"}));
  SecurityRules again =
      *SecurityRules::Compile(rules.canonical_ip_allow(), rules.canonical_origin_allow());
  EXPECT_EQ(again.canonical_ip_allow(), rules.canonical_ip_allow());
  EXPECT_EQ(again.canonical_origin_allow(), rules.canonical_origin_allow());
}

struct CompileErrorCase {
  std::vector<std::string> ip_allow;
  std::vector<std::string> origin_allow;
  std::string field;
  std::string message_part;
};

TEST(SecurityRules, CompileErrorsNameTheField) {
  const std::vector<CompileErrorCase> cases = {
      {{"10.0.0.0/8", "::/0", "bad"}, {}, "ip_allow[2]", "IPv4"},
      {{"10.1.0.0/8"}, {}, "ip_allow[0]", "did you mean 10.0.0.0/8?"},
      {{}, {"ftp://x.example"}, "origin_allow[0]", "http:// or https://"},
      {{}, {"https://a.example", "*"}, "origin_allow[1]", "every website"},
      {{"10.0.0.0/8", "::ffff:10.0.0.0/104"}, {}, "ip_allow[1]", "duplicate of ip_allow[0]"},
      {{"1.2.3.4", "5.6.7.8", "1.2.3.4/32"}, {}, "ip_allow[2]", "both are 1.2.3.4/32"},
      {{}, {"https://a.com", "HTTPS://A.COM:443"}, "origin_allow[1]",
       "duplicate of origin_allow[0] (both are https://a.com)"},
      {{}, {"http://[::1]", "http://[0:0::1]:80"}, "origin_allow[1]", "duplicate"},
      {{"bad"}, {"bad"}, "ip_allow[0]", ""},  // IP errors are reported first
      {std::vector<std::string>(101, "1.2.3.4"), {}, "ip_allow", "at most 100"},
      {{}, std::vector<std::string>(101, "https://a.com"), "origin_allow", "at most 100"},
  };
  for (const CompileErrorCase& c : cases) {
    Result<SecurityRules> r = SecurityRules::Compile(c.ip_allow, c.origin_allow);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << c.field;
    EXPECT_EQ(r.status().field(), c.field);
    EXPECT_NE(r.status().message().find(c.message_part), std::string::npos)
        << c.field << " -> " << r.status().message();
  }
}

TEST(SecurityRules, AcceptsExactlyTheLimit) {
  std::vector<std::string> ips, origins;
  for (size_t i = 0; i < kIpAllowEntriesMax; ++i) ips.push_back("10.0." + std::to_string(i) + ".0/24");
  for (size_t i = 0; i < kOriginAllowEntriesMax; ++i) {
    origins.push_back("https://app" + std::to_string(i) + ".example.com");
  }
  Result<SecurityRules> r = SecurityRules::Compile(ips, origins);
  ASSERT_TRUE(r.ok()) << r.ToStatus().ToString();
  EXPECT_TRUE(r->AllowsIp(Ip("10.0.99.7")));
  EXPECT_FALSE(r->AllowsIp(Ip("10.0.100.7")));
  EXPECT_TRUE(r->AllowsOrigin("https://app99.example.com"));
  EXPECT_FALSE(r->AllowsOrigin("https://app100.example.com"));
}

TEST(SecurityRules, OverlappingEntriesAreAccepted) {
  Result<SecurityRules> r = SecurityRules::Compile(
      {"10.0.0.0/8", "10.1.0.0/16"}, {"https://*.example.com", "https://app.example.com"});
  EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
}

TEST(SecurityRules, MatchingDoesNotAllocate) {
  std::vector<std::string> ips, origins;
  for (size_t i = 0; i < kIpAllowEntriesMax; ++i) ips.push_back("10.0." + std::to_string(i) + ".0/24");
  for (size_t i = 0; i < kOriginAllowEntriesMax; ++i) {
    origins.push_back("https://*.app" + std::to_string(i) + ".example.com");
  }
  SecurityRules rules = *SecurityRules::Compile(ips, origins);
  IpAddress denied = Ip("192.0.2.1"), allowed = Ip("10.0.99.1");
  const std::string long_junk(1000, 'x');
  size_t hits = 0;
  g_allocations = 0;
  g_count_allocations = true;
  hits += rules.AllowsIp(denied);
  hits += rules.AllowsIp(allowed);
  hits += rules.AllowsOrigin("https://x.app99.example.com");
  hits += rules.AllowsOrigin("https://x.app100.example.com");
  hits += rules.AllowsOrigin("http://[2001:db8::1]:8080");
  hits += rules.AllowsOrigin("http://[zzz]:8080");
  hits += rules.AllowsOrigin(long_junk);
  hits += rules.AllowsOrigin("");
  g_count_allocations = false;
  EXPECT_EQ(g_allocations.load(), 0u);
  EXPECT_EQ(hits, 2u);
}

// ---- Properties --------------------------------------------------------------

bool Bit(const std::array<uint8_t, 16>& bytes, int i) { return (bytes[i / 8] >> (7 - i % 8)) & 1; }

// The model: same family, and the first `prefix` bits of the family's own
// representation (the last 32 bits for IPv4) are equal, compared one by one.
bool ModelContains(const IpAddress& network, int prefix, const IpAddress& address) {
  if (network.is_v4 != address.is_v4) return false;
  int offset = network.is_v4 ? 96 : 0;
  for (int i = 0; i < prefix; ++i) {
    if (Bit(network.bytes, offset + i) != Bit(address.bytes, offset + i)) return false;
  }
  return true;
}

// Clears every bit at native position >= prefix.
IpAddress ClearHostBits(IpAddress a, int prefix) {
  int offset = a.is_v4 ? 96 : 0;
  for (int i = offset + prefix; i < 128; ++i) a.bytes[i / 8] &= static_cast<uint8_t>(~(0x80 >> (i % 8)));
  return a;
}

std::array<uint8_t, 16> RandomBytes16() {
  // Half the time mostly zero, so short IPv6 prefixes cover the mapped range.
  bool sparse = *rc::gen::arbitrary<bool>();
  auto v = *rc::gen::container<std::vector<uint8_t>>(16, rc::gen::arbitrary<uint8_t>());
  std::array<uint8_t, 16> out{};
  for (int i = 0; i < 16; ++i) out[i] = (sparse && i < 12) ? 0 : v[i];
  return out;
}

IpAddress RandomAddress() {
  auto b = RandomBytes16();
  if (*rc::gen::arbitrary<bool>()) return IpAddress::FromV4({b[12], b[13], b[14], b[15]});
  return IpAddress::FromV6(b);
}

Cidr RandomCidr() {
  IpAddress a = RandomAddress();
  int prefix = *rc::gen::inRange(0, (a.is_v4 ? 32 : 128) + 1);
  Result<Cidr> c = Cidr::Make(ClearHostBits(a, prefix), prefix);
  RC_ASSERT(c.ok());
  return *c;
}

// An address that shares the network's first `k` native bits, the rest random.
IpAddress NearAddress(const Cidr& cidr) {
  IpAddress noise = IpAddress::FromV6(RandomBytes16());
  int offset = cidr.is_v4() ? 96 : 0;
  int k = offset + *rc::gen::inRange(0, 128 - offset + 1);
  std::array<uint8_t, 16> b = cidr.network().bytes;
  for (int i = k; i < 128; ++i) {
    uint8_t m = static_cast<uint8_t>(0x80 >> (i % 8));
    b[i / 8] = static_cast<uint8_t>((b[i / 8] & ~m) | (noise.bytes[i / 8] & m));
  }
  return IpAddress::FromV6(b);
}

RC_GTEST_PROP(SecurityRulesProperty, CidrContainsIffPrefixBitsEqual, ()) {
  Cidr cidr = RandomCidr();
  IpAddress address = *rc::gen::arbitrary<bool>() ? RandomAddress() : NearAddress(cidr);
  bool expected = ModelContains(cidr.network(), cidr.prefix_length(), address);
  RC_CLASSIFY(expected);
  RC_ASSERT(cidr.Contains(address) == expected);
  SecurityRules rules = *SecurityRules::Compile({cidr.ToString()}, {});
  RC_ASSERT(rules.AllowsIp(address) == expected);
}

RC_GTEST_PROP(SecurityRulesProperty, CidrToStringParsesBack, ()) {
  Cidr cidr = RandomCidr();
  std::string text = cidr.ToString();
  Result<Cidr> back = ParseCidr(text);
  RC_ASSERT(back.ok());
  RC_ASSERT(*back == cidr);
  RC_ASSERT(back->ToString() == text);
}

RC_GTEST_PROP(SecurityRulesProperty, AddressToStringParsesBackAndAgreesWithInetNtop, ()) {
  // Words are zero half the time so that zero runs of every length occur.
  std::array<uint8_t, 16> b{};
  for (int i = 0; i < 8; ++i) {
    if (*rc::gen::arbitrary<bool>()) continue;
    uint16_t w = *rc::gen::arbitrary<uint16_t>();
    b[2 * i] = static_cast<uint8_t>(w >> 8);
    b[2 * i + 1] = static_cast<uint8_t>(w);
  }
  IpAddress a = IpAddress::FromV6(b);
  std::string text = a.ToString();
  Result<IpAddress> back = ParseIpAddress(text);
  RC_ASSERT(back.ok());
  RC_ASSERT(*back == a);
  // glibc prints mapped and ::a.b.c.d addresses dotted; otherwise both are RFC 5952.
  bool first_six_zero = true;
  for (int i = 0; i < 12; ++i) first_six_zero = first_six_zero && b[i] == 0;
  if (!a.is_v4 && !(first_six_zero && (b[12] | b[13]) != 0)) {
    char buf[INET6_ADDRSTRLEN];
    RC_ASSERT(inet_ntop(AF_INET6, b.data(), buf, sizeof(buf)) != nullptr);
    RC_ASSERT(text == std::string(buf));
  }
}

std::string RandomLabel(bool allow_all_digits) {
  const std::string alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  size_t length = *rc::gen::inRange<size_t>(1, 12);
  std::string label;
  bool has_letter = false;
  for (size_t i = 0; i < length; ++i) {
    bool hyphen = i > 0 && i + 1 < length && *rc::gen::inRange(0, 6) == 0;
    char c = hyphen ? '-' : alnum[*rc::gen::inRange<size_t>(0, alnum.size())];
    has_letter = has_letter || !(c >= '0' && c <= '9');
    label.push_back(c);
  }
  if (!allow_all_digits && !has_letter) label.push_back('x');
  return label;
}

struct GeneratedPattern {
  std::string text;
  bool wildcard = false;
};

GeneratedPattern RandomPatternText() {
  GeneratedPattern g;
  g.text = *rc::gen::element<std::string>("http://", "https://", "HTTP://", "HtTpS://");
  int kind = *rc::gen::inRange(0, 4);
  if (kind == 0) {
    auto b = RandomBytes16();
    g.text += IpAddress::FromV4({b[12], b[13], b[14], b[15]}).ToString();
  } else if (kind == 1) {
    IpAddress a = IpAddress::FromV6(RandomBytes16());
    g.text += "[" + a.ToString() + "]";
    if (a.is_v4) g.text = g.text.substr(0, g.text.find('[')) + "[::ffff:" + a.ToString() + "]";
  } else {
    g.wildcard = *rc::gen::arbitrary<bool>();
    size_t labels = *rc::gen::inRange<size_t>(g.wildcard ? 2 : 1, 5);
    if (g.wildcard) g.text += "*.";
    for (size_t i = 0; i < labels; ++i) {
      if (i > 0) g.text += ".";
      g.text += RandomLabel(/*allow_all_digits=*/i + 1 < labels);
    }
  }
  if (*rc::gen::arbitrary<bool>()) g.text += ":" + std::to_string(*rc::gen::inRange(1, 65536));
  return g;
}

RC_GTEST_PROP(SecurityRulesProperty, OriginPatternToStringParsesBack, ()) {
  GeneratedPattern g = RandomPatternText();
  Result<OriginPattern> p = ParseOriginPattern(g.text);
  RC_ASSERT(p.ok());
  std::string canonical = p->ToString();
  Result<OriginPattern> back = ParseOriginPattern(canonical);
  RC_ASSERT(back.ok());
  RC_ASSERT(*back == *p);
  RC_ASSERT(back->ToString() == canonical);
  if (g.wildcard) {
    // "*" stands for one or more labels, never for none.
    size_t star = canonical.find('*');
    std::string apex = canonical.substr(0, star) + canonical.substr(star + 2);
    RC_ASSERT(!p->Matches(apex));
    RC_ASSERT(p->Matches(canonical.substr(0, star) + "a" + canonical.substr(star + 1)));
    RC_ASSERT(p->Matches(canonical.substr(0, star) + "a.B" + canonical.substr(star + 1)));
  } else {
    // A concrete pattern's canonical text is an origin it matches, as is the input.
    RC_ASSERT(p->Matches(canonical));
    RC_ASSERT(p->Matches(g.text));
  }
}

// Returns true iff `r` holds a value or an InvalidArgument error. (RC_ASSERT
// decomposes its expression, so `||` inside it would not short-circuit.)
template <typename T>
bool OkOrInvalidArgument(const Result<T>& r) {
  return r.ok() || r.status().code() == Code::kInvalidArgument;
}

void CheckJunk(const std::string& junk) {
  Result<IpAddress> ip = ParseIpAddress(junk);
  RC_ASSERT(OkOrInvalidArgument(ip));
  if (ip.ok()) RC_ASSERT(*ParseIpAddress(ip->ToString()) == *ip);
  Result<Cidr> cidr = ParseCidr(junk);
  RC_ASSERT(OkOrInvalidArgument(cidr));
  if (cidr.ok()) RC_ASSERT(*ParseCidr(cidr->ToString()) == *cidr);
  Result<OriginPattern> pattern = ParseOriginPattern(junk);
  RC_ASSERT(OkOrInvalidArgument(pattern));
  if (pattern.ok()) RC_ASSERT(*ParseOriginPattern(pattern->ToString()) == *pattern);
  static const SecurityRules rules =
      *SecurityRules::Compile({}, {"https://*.example.com", "http://[::1]:8080", "http://1.2.3.4"});
  (void)rules.AllowsOrigin(junk);
  Result<SecurityRules> compiled = SecurityRules::Compile({junk}, {junk});
  RC_ASSERT(OkOrInvalidArgument(compiled));
}

RC_GTEST_PROP(SecurityRulesProperty, ArbitraryJunkNeverCrashes, (const std::string& junk)) {
  CheckJunk(junk);
}

RC_GTEST_PROP(SecurityRulesProperty, NearMissJunkNeverCrashes, ()) {
  // Strings from the characters these grammars care about reach deeper paths.
  static const char kAlphabet[] = "0123456789abcdefABCDEF:./[]*%-@?#hHtTpPsSx\0 ";
  const std::string alphabet(kAlphabet, sizeof(kAlphabet) - 1);  // keeps the NUL
  std::string junk = *rc::gen::element<std::string>("", "http://", "https://", "https://*.", "::ffff:");
  size_t length = *rc::gen::inRange<size_t>(0, 48);
  for (size_t i = 0; i < length; ++i) junk.push_back(alphabet[*rc::gen::inRange<size_t>(0, alphabet.size())]);
  CheckJunk(junk);
}

// An origin or pattern text built from few labels, schemes and ports, so
// that matches and near misses are both common.
std::string NearOriginText(bool pattern) {
  std::string text = *rc::gen::element<std::string>("http://", "https://", "HTTPS://");
  const size_t kind = *rc::gen::inRange<size_t>(0, 8);
  if (kind == 0) {
    text += *rc::gen::element<std::string>("[::1]", "[0:0::1]", "[2001:db8::1]", "[::ffff:1.2.3.4]");
  } else if (kind == 1) {
    text += *rc::gen::element<std::string>("1.2.3.4", "10.0.0.1");
  } else {
    if (pattern && *rc::gen::arbitrary<bool>()) text += "*.";
    const size_t labels = *rc::gen::inRange<size_t>(1, 5);
    for (size_t i = 0; i < labels; ++i) {
      if (i > 0) text += '.';
      text += *rc::gen::element<std::string>("a", "B", "example", "com", "x-1");
    }
  }
  text += *rc::gen::element<std::string>("", "", ":443", ":80", ":8080", "/", ".");
  return text;
}

RC_GTEST_PROP(SecurityRulesProperty, APatternMatchesIffItsCanonicalFormIsACandidate, ()) {
  Result<OriginPattern> pattern = ParseOriginPattern(NearOriginText(true));
  RC_PRE(pattern.ok());
  const std::string origin = NearOriginText(false);
  const std::vector<std::string> candidates = CandidateOriginPatterns(origin);
  const bool listed =
      std::find(candidates.begin(), candidates.end(), pattern->ToString()) != candidates.end();
  RC_ASSERT(pattern->Matches(origin) == listed);
}

TEST(SecurityRulesTest, CandidateOriginPatternsNameTheOriginAndEachWildcardOverASuffix) {
  EXPECT_EQ(CandidateOriginPatterns("HTTPS://App.Example.com:443"),
            (std::vector<std::string>{"https://app.example.com", "https://*.example.com",
                                      "https://*.com"}));
  EXPECT_EQ(CandidateOriginPatterns("http://[0:0::1]:8080"),
            (std::vector<std::string>{"http://[::1]:8080"}));
  EXPECT_EQ(CandidateOriginPatterns("http://localhost"),
            (std::vector<std::string>{"http://localhost"}));
  EXPECT_TRUE(CandidateOriginPatterns("null").empty());
  EXPECT_TRUE(CandidateOriginPatterns("https://a.example.com/").empty());
}

}  // namespace
}  // namespace keyledger
