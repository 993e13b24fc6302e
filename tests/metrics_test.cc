// Tests for projections/latency_histogram.h and projections/metrics_fold.h:
// table cases for bucketing, the rank rule, error classes and limits, and
// rapidcheck properties for the percentile error bound, merging,
// serialization, corruption handling, rollups and order independence.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <deque>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ledger/varint.h"
#include "projections/flat_index.h"
#include "projections/latency_histogram.h"
#include "projections/metrics_fold.h"

namespace keyledger {
namespace {

constexpr int64_t kT0Us = 1'700'006'400'000'000;  // 2023-11-15T00:00:00Z, a UTC day boundary
constexpr int64_t kMinuteUs = kMetricsMinuteUs;
constexpr int64_t kHourUs = kMetricsHourUs;
constexpr int64_t kDayUs = kMetricsDayUs;

static_assert(kT0Us % kDayUs == 0);

// ---- Helpers ------------------------------------------------------------------------

LatencyHistogram HistogramOf(const std::vector<uint64_t>& values) {
  LatencyHistogram h;
  for (uint64_t v : values) h.Record(v);
  return h;
}

// The k-th smallest value by the documented rank rule.
uint64_t ExactPercentile(std::vector<uint64_t> values, uint32_t per_mille) {
  std::sort(values.begin(), values.end());
  const uint64_t n = values.size();
  uint64_t rank = (n * per_mille + 999) / 1000;
  rank = std::clamp<uint64_t>(rank, 1, n);
  return values[rank - 1];
}

// True when y is within the documented bound of the exact value x.
bool WithinBound(uint64_t y, uint64_t x) {
  if (x < 128) return y == x;
  const uint64_t diff = y > x ? y - x : x - y;
  return diff * 128 < x;
}

// Latencies spread over every octave of the tracked range, with ties.
rc::Gen<uint64_t> LatencyGen() {
  return rc::gen::oneOf(
      rc::gen::inRange<uint64_t>(0, 300),
      rc::gen::inRange<uint64_t>(0, kLatencyTrackedUsMax + 1),
      rc::gen::map(rc::gen::pair(rc::gen::inRange<uint32_t>(0, 32),
                                 rc::gen::inRange<uint64_t>(0, uint64_t{1} << 32)),
                   [](std::pair<uint32_t, uint64_t> p) {
                     const uint64_t top = uint64_t{1} << p.first;
                     return top + p.second % top;  // in [2^e, 2^(e+1))
                   }),
      rc::gen::element<uint64_t>(1000, 1000, 25'000, 1'000'000));
}

MetricsBucket EmptyBucket(int64_t start_us) {
  MetricsBucket b;
  b.start_us = start_us;
  return b;
}

ApiCallRecorded Call(std::string ws, std::string key, int64_t at_us, uint16_t status,
                     uint64_t latency_us, uint64_t units) {
  ApiCallRecorded c;
  c.workspace_id = std::move(ws);
  c.key_id = std::move(key);
  c.occurred_at_us = at_us;
  c.status = status;
  c.latency_us = latency_us;
  c.units = units;
  return c;
}

AuthorizationDenied Denial(std::string ws, std::string key, int64_t at_us, DenialReason reason,
                           uint64_t count) {
  AuthorizationDenied d;
  d.workspace_id = std::move(ws);
  d.key_id = std::move(key);
  d.occurred_at_us = at_us;
  d.reason = reason;
  d.count = count;
  return d;
}

MetricsBucket TotalsOrDie(const MetricsFold& fold, MetricsScope scope, std::string_view id,
                          int64_t from_us, int64_t to_us) {
  auto r = fold.Totals(scope, id, from_us, to_us);
  EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
  return r.ok() ? *r : MetricsBucket{};
}

std::vector<MetricsBucket> QueryOrDie(const MetricsFold& fold, MetricsScope scope,
                                      std::string_view id, int64_t from_us, int64_t to_us,
                                      int64_t step_us) {
  auto r = fold.Query(scope, id, from_us, to_us, step_us);
  EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
  return r.ok() ? *r : std::vector<MetricsBucket>{};
}

// ---- LatencyHistogram: table tests -------------------------------------------------

TEST(LatencyHistogramTest, BucketsTileTheRangeWithBoundedWidth) {
  for (uint64_t v = 0; v < 128; ++v) EXPECT_EQ(LatencyHistogram::BucketIndex(v), v);
  for (size_t i = 0; i < kLatencyBucketCount; ++i) {
    const uint64_t lo = LatencyHistogram::BucketLowest(i);
    const uint64_t hi = LatencyHistogram::BucketHighest(i);
    ASSERT_EQ(LatencyHistogram::BucketIndex(lo), i);
    ASSERT_EQ(LatencyHistogram::BucketIndex(hi), i);
    if (i > 0) {
      ASSERT_EQ(LatencyHistogram::BucketHighest(i - 1) + 1, lo);
    }
    ASSERT_LE((hi - lo + 1) * 64, std::max<uint64_t>(lo, 64)) << i;  // width <= lowest / 64
  }
  EXPECT_EQ(LatencyHistogram::BucketHighest(kLatencyBucketCount - 1), kLatencyTrackedUsMax);
  EXPECT_EQ(LatencyHistogram::BucketIndex(kLatencyTrackedUsMax + 1), kLatencyBucketCount - 1);
  EXPECT_EQ(LatencyHistogram::BucketIndex(std::numeric_limits<uint64_t>::max()),
            kLatencyBucketCount - 1);
}

TEST(LatencyHistogramTest, EmptyReportsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.min(), 0u);
  EXPECT_EQ(h.max(), 0u);
  EXPECT_EQ(h.Percentile(500), 0u);
  EXPECT_EQ(h.Percentile(1000), 0u);
  auto back = LatencyHistogram::Deserialize(h.Serialize());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, h);
}

TEST(LatencyHistogramTest, NearestRankRule) {
  std::vector<uint64_t> values;
  for (uint64_t v = 1; v <= 100; ++v) values.push_back(v);
  const LatencyHistogram h = HistogramOf(values);
  EXPECT_EQ(h.Percentile(0), 1u);     // rank clamped to 1
  EXPECT_EQ(h.Percentile(1), 1u);     // ceil(0.1) = 1
  EXPECT_EQ(h.Percentile(500), 50u);  // ceil(50) = 50
  EXPECT_EQ(h.Percentile(501), 51u);  // ceil(50.1) = 51
  EXPECT_EQ(h.Percentile(950), 95u);
  EXPECT_EQ(h.Percentile(990), 99u);
  EXPECT_EQ(h.Percentile(1000), 100u);
}

TEST(LatencyHistogramTest, MinAndMaxAreExactAndClampedValuesKeepMax) {
  LatencyHistogram h;
  h.Record(uint64_t{1} << 40);
  h.Record(123'456'789, 3);
  EXPECT_EQ(h.count(), 4u);
  EXPECT_EQ(h.max(), uint64_t{1} << 40);
  EXPECT_EQ(h.min(), 123'456'789u);
  EXPECT_EQ(h.Percentile(1000), uint64_t{1} << 40);
  EXPECT_EQ(h.Percentile(0), 123'456'789u);
  EXPECT_TRUE(WithinBound(h.Percentile(500), 123'456'789));
  EXPECT_EQ(h.bucket_count(kLatencyBucketCount - 1), 1u);
  h.Record(7, 0);  // no-op
  EXPECT_EQ(h.count(), 4u);
}

TEST(LatencyHistogramTest, RepresentativeStaysInsideMinMax) {
  LatencyHistogram h;
  h.Record(1'000'000, 10);  // one bucket, one value
  EXPECT_EQ(h.Percentile(500), 1'000'000u);
  EXPECT_EQ(h.Percentile(990), 1'000'000u);
}

TEST(LatencyHistogramTest, DeserializeRejectsBadBytes) {
  LatencyHistogram h;
  h.Record(5);
  h.Record(1000, 2);
  const std::string good = h.Serialize();
  // version 1, 2 buckets, min 5, max 1000, gap 5 count 1, gap ... count 2
  ASSERT_EQ(static_cast<uint8_t>(good[0]), 1);
  ASSERT_TRUE(LatencyHistogram::Deserialize(good).ok());

  const std::vector<std::string> bad = {
      std::string(),                                 // empty
      std::string("\x02\x00", 2),                    // unknown version
      std::string("\x01", 1),                        // truncated count
      std::string("\x01\x00\x00", 3),                // trailing byte after empty
      good.substr(0, good.size() - 1),               // truncated bucket
      good + std::string("\x00", 1),                 // trailing byte
      std::string("\x01\x01\x05\x05\x05\x00", 6),    // zero count
      std::string("\x01\x01\x05\x05\xc0\x0d\x01", 7),  // index 1728: out of range
      std::string("\x01\x01\x06\x05\x05\x01", 6),    // min > max
      std::string("\x01\x01\x04\x05\x05\x01", 6),    // min outside its bucket
      std::string("\x01\x01\x04\x05\x05\x02", 6),    // min outside its bucket, 2 values
      std::string("\x01\x01\x85\x00\x05\x05\x01", 7),  // non-minimal varint
      std::string("\x01\x01\x05\x05\x05\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 15),  // > 64 bits
      std::string("\x01\x02\x05\x05\x05\x01\x00\x01", 8),  // max outside last bucket
      std::string("\x01\x01\xc8\x01\xc9\x01\xa4\x01\x01", 9),  // one value, min != max
      std::string("\x01\x02\x05\x06\x05\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x01",
                  17),                               // count total overflows
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = LatencyHistogram::Deserialize(bad[i]);
    ASSERT_FALSE(r.ok()) << "case " << i;
    EXPECT_EQ(r.status().code(), Code::kCorruption) << "case " << i;
  }
}

// ---- LatencyHistogram: properties ---------------------------------------------------

RC_GTEST_PROP(LatencyHistogramProp, PercentileWithinStatedBound, ()) {
  const auto values = *rc::gen::nonEmpty(rc::gen::container<std::vector<uint64_t>>(LatencyGen()));
  const LatencyHistogram h = HistogramOf(values);
  RC_ASSERT(h.count() == values.size());
  RC_ASSERT(h.max() == *std::max_element(values.begin(), values.end()));
  RC_ASSERT(h.min() == *std::min_element(values.begin(), values.end()));
  const uint32_t random_pm = *rc::gen::inRange<uint32_t>(0, 1001);
  for (uint32_t pm : {0u, 1u, 500u, 950u, 990u, 999u, 1000u, random_pm}) {
    const uint64_t exact = ExactPercentile(values, pm);
    const uint64_t got = h.Percentile(pm);
    RC_ASSERT(WithinBound(got, exact));
  }
}

RC_GTEST_PROP(LatencyHistogramProp, MergeEqualsHistogramOfConcatenation, ()) {
  const auto a = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  const auto b = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  std::vector<uint64_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  LatencyHistogram ab = HistogramOf(a);
  ab.Merge(HistogramOf(b));
  LatencyHistogram ba = HistogramOf(b);
  ba.Merge(HistogramOf(a));
  RC_ASSERT(ab == HistogramOf(both));
  RC_ASSERT(ba == ab);
}

RC_GTEST_PROP(LatencyHistogramProp, RecordWithCountEqualsRepeatedRecord, ()) {
  const uint64_t v = *LatencyGen();
  const auto n = *rc::gen::inRange<uint64_t>(0, 50);
  LatencyHistogram once;
  once.Record(v, n);
  LatencyHistogram many;
  for (uint64_t i = 0; i < n; ++i) many.Record(v);
  RC_ASSERT(once == many);
}

RC_GTEST_PROP(LatencyHistogramProp, CompactMatchesDense, ()) {
  const auto values = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  CompactLatencyHistogram compact;
  for (uint64_t v : values) compact.Record(v);
  RC_ASSERT(compact.count() == values.size());
  LatencyHistogram dense;
  compact.MergeInto(&dense);
  RC_ASSERT(dense == HistogramOf(values));
}

RC_GTEST_PROP(LatencyHistogramProp, CompactMergeEqualsConcatenation, ()) {
  const auto a = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  const auto b = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  CompactLatencyHistogram ca;
  for (uint64_t v : a) ca.Record(v);
  CompactLatencyHistogram cb;
  for (uint64_t v : b) cb.Record(v);
  ca.Merge(cb);
  RC_ASSERT(ca.count() == a.size() + b.size());
  for (uint64_t v : b) ca.Record(v);  // Record after Merge keeps entries sorted
  LatencyHistogram dense;
  ca.MergeInto(&dense);
  std::vector<uint64_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  all.insert(all.end(), b.begin(), b.end());
  RC_ASSERT(dense == HistogramOf(all));
  std::vector<uint64_t> distinct_buckets;
  for (uint64_t v : all) distinct_buckets.push_back(LatencyHistogram::BucketIndex(v));
  std::sort(distinct_buckets.begin(), distinct_buckets.end());
  distinct_buckets.erase(std::unique(distinct_buckets.begin(), distinct_buckets.end()),
                         distinct_buckets.end());
  RC_ASSERT(ca.entry_count() == distinct_buckets.size());
}

// Merges across the entry maximum (2^32 - 1 per entry): counts near half of
// it make the in-place merge give way to the allocating one, and counts above
// it are held as runs of entries. Every path must give the canonical entries.
RC_GTEST_PROP(LatencyHistogramProp, CompactMergeOfLargeCountsEqualsDense, ()) {
  const auto count_gen = rc::gen::oneOf(rc::gen::inRange<uint64_t>(1, 4),
                                        rc::gen::inRange<uint64_t>((uint64_t{1} << 31) - 2,
                                                                   (uint64_t{1} << 31) + 2),
                                        rc::gen::inRange<uint64_t>(1, uint64_t{1} << 34));
  const auto recorded_gen = rc::gen::container<std::vector<std::pair<uint64_t, uint64_t>>>(
      rc::gen::pair(LatencyGen(), count_gen));
  const auto a = *recorded_gen;
  const auto b = *recorded_gen;
  LatencyHistogram dense_a;
  for (const auto& [v, n] : a) dense_a.Record(v, n);
  LatencyHistogram dense_b;
  for (const auto& [v, n] : b) dense_b.Record(v, n);
  auto ca = CompactLatencyHistogram::Deserialize(dense_a.Serialize());
  auto cb = CompactLatencyHistogram::Deserialize(dense_b.Serialize());
  RC_ASSERT(ca.ok() && cb.ok());
  ca->Merge(*cb);
  LatencyHistogram expected = dense_a;
  expected.Merge(dense_b);
  LatencyHistogram got;
  ca->MergeInto(&got);
  RC_ASSERT(got == expected);
  RC_ASSERT(ca->Serialize() == expected.Serialize());
  // Canonical: decoding the merged encoding gives the same entries back.
  auto again = CompactLatencyHistogram::Deserialize(ca->Serialize());
  RC_ASSERT(again.ok() && again->entry_count() == ca->entry_count());
}

RC_GTEST_PROP(LatencyHistogramProp, SerializeRoundTripsCanonically, ()) {
  const auto values = *rc::gen::container<std::vector<uint64_t>>(LatencyGen());
  const LatencyHistogram h = HistogramOf(values);
  const std::string bytes = h.Serialize();
  RC_ASSERT(bytes.size() <= kLatencySerializedBytesMax);
  auto back = LatencyHistogram::Deserialize(bytes);
  RC_ASSERT(back.ok());
  RC_ASSERT(*back == h);
  RC_ASSERT(back->Serialize() == bytes);
}

// Any bytes: Corruption or a histogram that re-encodes to the same bytes.
RC_GTEST_PROP(LatencyHistogramProp, ArbitraryBytesNeverCrash, (const std::string& junk)) {
  auto r = LatencyHistogram::Deserialize(junk);
  if (r.ok()) {
    RC_ASSERT(r->Serialize() == junk);
  } else {
    RC_ASSERT(r.status().code() == Code::kCorruption);
  }
}

// Valid encodings with one byte changed, cut or added.
RC_GTEST_PROP(LatencyHistogramProp, MutatedBytesAreCorruptionOrCanonical, ()) {
  const auto values =
      *rc::gen::nonEmpty(rc::gen::container<std::vector<uint64_t>>(LatencyGen()));
  std::string bytes = HistogramOf(values).Serialize();
  const size_t pos = *rc::gen::inRange<size_t>(0, bytes.size());
  const int how = *rc::gen::inRange(0, 3);
  if (how == 0) bytes[pos] = *rc::gen::arbitrary<char>();
  if (how == 1) bytes.resize(pos);
  if (how == 2) bytes.insert(pos, 1, *rc::gen::arbitrary<char>());
  auto r = LatencyHistogram::Deserialize(bytes);
  if (r.ok()) {
    RC_ASSERT(r->Serialize() == bytes);
  } else {
    RC_ASSERT(r.status().code() == Code::kCorruption);
  }
}

// ---- MetricsFold: table tests ---------------------------------------------------------

TEST(MetricsFoldTest, ErrorClasses) {
  MetricsFold fold;
  const int64_t t = kT0Us + 10 * kMinuteUs;
  for (uint16_t status : {200, 201, 302, 0, 600, 400, 404, 429, 499, 500, 503, 599}) {
    fold.ApplyCall(Call("ws_a", "key_a", t, status, 1000, status == 200 ? 2 : 0));
  }
  fold.ApplyDenial(Denial("ws_a", "key_a", t, DenialReason::kRateLimited, 5));
  fold.ApplyDenial(Denial("ws_a", "key_a", t, DenialReason::kIpNotAllowed, 3));
  fold.ApplyDenial(Denial("ws_a", "key_a", t, DenialReason::kRevokedSecret, 0));  // no-op

  const MetricsBucket b = TotalsOrDie(fold, MetricsScope::kKey, "key_a", kT0Us, kT0Us + kDayUs);
  EXPECT_EQ(b.start_us, kT0Us);
  EXPECT_EQ(b.calls, 12u);
  EXPECT_EQ(b.errors_4xx, 4u);           // 400, 404, 429, 499
  EXPECT_EQ(b.errors_5xx, 3u);           // 500, 503, 599
  EXPECT_EQ(b.rate_limited, 1u + 5u);    // the 429 call + kRateLimited refusals
  EXPECT_EQ(b.auth_denied, 8u);
  EXPECT_EQ(b.units, 2u);
  EXPECT_EQ(b.requests(), 20u);
  EXPECT_EQ(b.errors(), 15u);
  EXPECT_EQ(b.error_rate_ppm(), 750'000u);
  EXPECT_EQ(b.latency.count(), 12u);
  EXPECT_EQ(b.latency.Percentile(500), 1000u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kWorkspace, "ws_a", kT0Us, kT0Us + kDayUs), b);
}

TEST(MetricsFoldTest, ErrorRateRoundsDown) {
  MetricsBucket b;
  EXPECT_EQ(b.error_rate_ppm(), 0u);
  b.calls = 3;
  b.errors_5xx = 1;
  EXPECT_EQ(b.error_rate_ppm(), 333'333u);
  b.calls = std::numeric_limits<uint64_t>::max() / 2;
  b.errors_5xx = b.calls;
  EXPECT_EQ(b.error_rate_ppm(), 1'000'000u);  // no overflow
}

TEST(MetricsFoldTest, SeriesAttribution) {
  MetricsFold fold;
  const int64_t t = kT0Us + kHourUs;
  fold.ApplyCall(Call("ws_a", "key_a", t, 200, 10, 1));
  fold.ApplyDenial(Denial("ws_a", "", t, DenialReason::kUnknownKey, 2));       // workspace only
  fold.ApplyDenial(Denial("", "", t, DenialReason::kMalformedCredentials, 7));  // unattributed
  const int64_t to = kT0Us + kDayUs;
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kKey, "key_a", kT0Us, to).requests(), 1u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kWorkspace, "ws_a", kT0Us, to).requests(), 3u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kWorkspace, "", kT0Us, to).auth_denied, 7u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kKey, "", kT0Us, to).requests(), 0u);
  // Scopes are separate namespaces: a key id is not a workspace id.
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kWorkspace, "key_a", kT0Us, to).requests(), 0u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kKey, "nobody", kT0Us, to), EmptyBucket(kT0Us));
}

TEST(MetricsFoldTest, LateCallLandsInItsMinute) {
  MetricsFold fold;
  fold.ApplyCall(Call("ws_a", "key_a", kT0Us + 5 * kMinuteUs, 200, 100, 1));
  fold.ApplyCall(Call("ws_a", "key_a", kT0Us + 2 * kDayUs, 200, 100, 1));  // much later
  // Late: 1 min 59.999999 s after t0, applied after both.
  fold.ApplyCall(Call("ws_a", "key_a", kT0Us + 2 * kMinuteUs - 1, 500, 777, 3));
  const auto minutes =
      QueryOrDie(fold, MetricsScope::kKey, "key_a", kT0Us, kT0Us + 10 * kMinuteUs, kMinuteUs);
  ASSERT_EQ(minutes.size(), 10u);
  for (size_t i = 0; i < minutes.size(); ++i) {
    EXPECT_EQ(minutes[i].start_us, kT0Us + static_cast<int64_t>(i) * kMinuteUs);
    EXPECT_EQ(minutes[i].calls, i == 1 || i == 5 ? 1u : 0u) << i;
  }
  EXPECT_EQ(minutes[1].errors_5xx, 1u);
  EXPECT_EQ(minutes[1].units, 3u);
  EXPECT_EQ(minutes[1].latency.max(), 777u);
  const auto days = QueryOrDie(fold, MetricsScope::kKey, "key_a", kT0Us, kT0Us + 3 * kDayUs, kDayUs);
  ASSERT_EQ(days.size(), 3u);
  EXPECT_EQ(days[0].calls, 2u);
  EXPECT_EQ(days[1].calls, 0u);
  EXPECT_EQ(days[2].calls, 1u);
}

TEST(MetricsFoldTest, OutOfRangeTimesAreClamped) {
  MetricsFold fold;
  fold.ApplyCall(Call("ws_a", "key_a", std::numeric_limits<int64_t>::min(), 200, 1, 1));
  fold.ApplyCall(Call("ws_a", "key_a", std::numeric_limits<int64_t>::max(), 200, 1, 1));
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kKey, "key_a", 0, kMinuteUs).calls, 1u);
  EXPECT_EQ(TotalsOrDie(fold, MetricsScope::kKey, "key_a", kMetricsTimeUsLimit - kMinuteUs,
                        kMetricsTimeUsLimit)
                .calls,
            1u);
}

void ExpectInvalid(const Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_EQ(s.field(), field) << s.ToString();
}

TEST(MetricsFoldTest, QueryLimits) {
  MetricsFold fold;
  auto q = [&](int64_t from, int64_t to, int64_t step) {
    return fold.Query(MetricsScope::kKey, "key_a", from, to, step).ToStatus();
  };
  const int64_t t = kT0Us;
  for (int64_t step : {int64_t{0}, int64_t{-kMinuteUs}, kMinuteUs - 1, kMinuteUs + 1,
                       7 * kMinuteUs, 2 * kDayUs, 7 * kDayUs}) {
    ExpectInvalid(q(t, t + 14 * kDayUs, step), "step");
  }
  ExpectInvalid(q(t, t + (kQueryPointsMax + 1) * kMinuteUs, kMinuteUs), "step");
  EXPECT_TRUE(q(t, t + kQueryPointsMax * kMinuteUs, kMinuteUs).ok());
  ExpectInvalid(q(t + kMinuteUs, t + kDayUs, kHourUs), "from");  // not aligned
  ExpectInvalid(q(-kDayUs, kDayUs, kDayUs), "from");
  ExpectInvalid(q(kMetricsTimeUsLimit, kMetricsTimeUsLimit + kDayUs, kDayUs), "from");
  ExpectInvalid(q(t, t, kMinuteUs), "to");
  ExpectInvalid(q(t, t - kDayUs, kDayUs), "to");
  ExpectInvalid(q(t, t + kDayUs + kMinuteUs, kHourUs), "to");  // not aligned
  ExpectInvalid(q(kMetricsTimeUsLimit - kDayUs, kMetricsTimeUsLimit + kDayUs, kDayUs), "to");
  ExpectInvalid(q(t, t + kQueryRangeUsMax + kDayUs, kDayUs), "to");
  EXPECT_TRUE(q(t, t + kQueryRangeUsMax, kDayUs).ok());
  // Steps that divide a day are all accepted.
  for (int64_t minutes : {1, 2, 5, 15, 45, 60, 90, 120, 360, 1440}) {
    EXPECT_TRUE(q(t, t + kDayUs, minutes * kMinuteUs).ok()) << minutes;
  }

  ExpectInvalid(fold.Totals(MetricsScope::kKey, "k", t + 1, t + kDayUs).ToStatus(), "from");
  ExpectInvalid(fold.Totals(MetricsScope::kKey, "k", t, t + kDayUs + 1).ToStatus(), "to");
  ExpectInvalid(fold.Totals(MetricsScope::kKey, "k", t, t).ToStatus(), "to");
  ExpectInvalid(
      fold.Totals(MetricsScope::kKey, "k", t, t + kQueryRangeUsMax + kMinuteUs).ToStatus(), "to");
  EXPECT_TRUE(fold.Totals(MetricsScope::kKey, "k", t, t + kQueryRangeUsMax).ok());
  EXPECT_TRUE(fold.Totals(MetricsScope::kKey, "k", t + kMinuteUs, t + 2 * kMinuteUs).ok());
}

// ---- MetricsFold: properties -----------------------------------------------------------

constexpr int64_t kSpanDays = 2;  // events fall in [kT0Us, kT0Us + kSpanDays days)

struct Ev {
  bool is_call = true;
  ApiCallRecorded call;
  AuthorizationDenied denial;
};

rc::Gen<Ev> EventGen() {
  using rc::gen::element;
  using rc::gen::inRange;
  // Times cluster near hour and day boundaries half of the time.
  auto at = rc::gen::oneOf(
      inRange<int64_t>(kT0Us, kT0Us + kSpanDays * kDayUs),
      rc::gen::map(rc::gen::pair(inRange<int64_t>(1, kSpanDays * 24),
                                 inRange<int64_t>(-kMinuteUs, kMinuteUs)),
                   [](std::pair<int64_t, int64_t> p) { return kT0Us + p.first * kHourUs + p.second; }));
  return rc::gen::apply(
      [](bool is_call, std::string ws, std::string key, int64_t t, uint16_t status,
         uint64_t latency, uint64_t units, uint8_t reason, uint64_t count) {
        Ev e;
        e.is_call = is_call;
        if (is_call) {
          e.call = Call(ws, key, t, status, latency, units);
        } else {
          e.denial = Denial(ws, key, t, static_cast<DenialReason>(reason), count);
        }
        return e;
      },
      rc::gen::weightedElement<bool>({{4, true}, {1, false}}),
      element<std::string>("ws_a", "ws_b", ""), element<std::string>("key_a", "key_b", ""),
      at, element<uint16_t>(200, 201, 204, 301, 400, 401, 404, 429, 500, 502, 503, 0, 600),
      LatencyGen(), inRange<uint64_t>(0, 10), inRange<uint8_t>(0, 6), inRange<uint64_t>(0, 5));
}

void ApplyAll(const std::vector<Ev>& events, MetricsFold* fold) {
  for (const Ev& e : events) {
    if (e.is_call) {
      fold->ApplyCall(e.call);
    } else {
      fold->ApplyDenial(e.denial);
    }
  }
}

using SeriesId = std::pair<MetricsScope, std::string>;

// The reference model: one MetricsBucket per (series, minute), built naively.
std::map<std::pair<SeriesId, int64_t>, MetricsBucket> ModelMinutes(const std::vector<Ev>& events) {
  std::map<std::pair<SeriesId, int64_t>, MetricsBucket> m;
  for (const Ev& e : events) {
    const std::string& ws = e.is_call ? e.call.workspace_id : e.denial.workspace_id;
    const std::string& key = e.is_call ? e.call.key_id : e.denial.key_id;
    const int64_t t = e.is_call ? e.call.occurred_at_us : e.denial.occurred_at_us;
    MetricsBucket d;
    d.start_us = t - t % kMinuteUs;
    if (e.is_call) {
      d.calls = 1;
      d.units = e.call.units;
      d.errors_4xx = e.call.status / 100 == 4 ? 1 : 0;
      d.errors_5xx = e.call.status / 100 == 5 ? 1 : 0;
      d.rate_limited = e.call.status == 429 ? 1 : 0;
      d.latency.Record(e.call.latency_us);
    } else {
      d.auth_denied = e.denial.count;
      d.rate_limited = e.denial.reason == DenialReason::kRateLimited ? e.denial.count : 0;
    }
    std::vector<SeriesId> ids = {{MetricsScope::kWorkspace, ws}};
    if (!key.empty()) ids.push_back({MetricsScope::kKey, key});
    for (const SeriesId& id : ids) {
      MetricsBucket& b = m[{id, d.start_us}];
      b.start_us = d.start_us;
      b.Merge(d);
    }
  }
  return m;
}

const std::vector<SeriesId> kAllSeries = {
    {MetricsScope::kWorkspace, "ws_a"}, {MetricsScope::kWorkspace, "ws_b"},
    {MetricsScope::kWorkspace, ""},     {MetricsScope::kKey, "key_a"},
    {MetricsScope::kKey, "key_b"},      {MetricsScope::kKey, ""}};

using Model = std::map<std::pair<SeriesId, int64_t>, MetricsBucket>;

// The model's sum over the minutes of `series` in [from_us, to_us).
MetricsBucket ModelRange(const Model& model, const SeriesId& series, int64_t from_us,
                         int64_t to_us) {
  MetricsBucket out = EmptyBucket(from_us);
  for (auto it = model.lower_bound({series, from_us});
       it != model.end() && it->first.first == series && it->first.second < to_us; ++it) {
    out.Merge(it->second);
  }
  return out;
}

// Checks every step window of Query(series, from, to, step) against the model.
void CheckQueryAgainstModel(const MetricsFold& fold, const Model& model, const SeriesId& series,
                            int64_t from_us, int64_t to_us, int64_t step_us) {
  const auto got = QueryOrDie(fold, series.first, series.second, from_us, to_us, step_us);
  RC_ASSERT(got.size() == static_cast<size_t>((to_us - from_us) / step_us));
  for (size_t i = 0; i < got.size(); ++i) {
    const int64_t start = from_us + static_cast<int64_t>(i) * step_us;
    RC_ASSERT(got[i] == ModelRange(model, series, start, start + step_us));
  }
}

// Minute cells equal the model (so they are the sum of their events); hour,
// day and odd-step rollups equal the model's sum of their minutes; Totals over
// any minute-aligned range equal the model's sum.
RC_GTEST_PROP(MetricsFoldProp, MinutesMatchModelAndRollupsSumMinutes, ()) {
  const auto events = *rc::gen::container<std::vector<Ev>>(EventGen());
  MetricsFold fold;
  ApplyAll(events, &fold);
  const Model model = ModelMinutes(events);
  const int64_t end = kT0Us + kSpanDays * kDayUs;
  // Every non-empty model minute, one by one.
  for (const auto& [where, bucket] : model) {
    const auto& [series, minute] = where;
    RC_ASSERT(TotalsOrDie(fold, series.first, series.second, minute, minute + kMinuteUs) ==
              bucket);
  }
  for (const SeriesId& series : kAllSeries) {
    // Nothing anywhere else: the whole span equals the model's total.
    RC_ASSERT(TotalsOrDie(fold, series.first, series.second, kT0Us, end) ==
              ModelRange(model, series, kT0Us, end));
    for (int64_t step_minutes : {60, 1440, 90, 45, 120}) {
      CheckQueryAgainstModel(fold, model, series, kT0Us, end, step_minutes * kMinuteUs);
    }
    // Minute step over a random 3-hour window (empty minutes included).
    const int64_t from = kT0Us + *rc::gen::inRange<int64_t>(0, kSpanDays * 1440 - 180) * kMinuteUs;
    CheckQueryAgainstModel(fold, model, series, from, from + 180 * kMinuteUs, kMinuteUs);
    // Totals over a random minute-aligned range (mixes minute, hour and day cells).
    const auto lo = *rc::gen::inRange<int64_t>(0, kSpanDays * 1440);
    const auto hi = *rc::gen::inRange<int64_t>(lo + 1, kSpanDays * 1440 + 1);
    RC_ASSERT(TotalsOrDie(fold, series.first, series.second, kT0Us + lo * kMinuteUs,
                          kT0Us + hi * kMinuteUs) ==
              ModelRange(model, series, kT0Us + lo * kMinuteUs, kT0Us + hi * kMinuteUs));
  }
}

RC_GTEST_PROP(MetricsFoldProp, TotalsCountEveryCallAndUnit, ()) {
  const auto events = *rc::gen::container<std::vector<Ev>>(EventGen());
  MetricsFold fold;
  ApplyAll(events, &fold);
  uint64_t calls = 0, units = 0, denied = 0;
  for (const Ev& e : events) {
    if (e.is_call) {
      ++calls;
      units += e.call.units;
    } else {
      denied += e.denial.count;
    }
  }
  MetricsBucket all;
  for (const char* ws : {"ws_a", "ws_b", ""}) {
    all.Merge(TotalsOrDie(fold, MetricsScope::kWorkspace, ws, kT0Us, kT0Us + kSpanDays * kDayUs));
  }
  RC_ASSERT(all.calls == calls);
  RC_ASSERT(all.units == units);
  RC_ASSERT(all.auth_denied == denied);
  RC_ASSERT(all.latency.count() == calls);
  RC_ASSERT(all.errors() <= all.requests());
}

// The fold depends only on the multiset of events, not their order.
RC_GTEST_PROP(MetricsFoldProp, OrderDoesNotMatter, ()) {
  const auto events = *rc::gen::container<std::vector<Ev>>(EventGen());
  auto shuffled = events;
  std::mt19937_64 rng(*rc::gen::arbitrary<uint64_t>());
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  MetricsFold a;
  MetricsFold b;
  ApplyAll(events, &a);
  ApplyAll(shuffled, &b);
  RC_ASSERT(a.cell_count() == b.cell_count());
  const int64_t end = kT0Us + kSpanDays * kDayUs;
  for (const auto& [scope, id] : kAllSeries) {
    RC_ASSERT(QueryOrDie(a, scope, id, kT0Us, end, kHourUs) ==
              QueryOrDie(b, scope, id, kT0Us, end, kHourUs));
  }
  for (const Ev& e : events) {  // every minute with an event, at minute step
    const int64_t t = e.is_call ? e.call.occurred_at_us : e.denial.occurred_at_us;
    const int64_t minute = t - t % kMinuteUs;
    for (const auto& [scope, id] : kAllSeries) {
      RC_ASSERT(TotalsOrDie(a, scope, id, minute, minute + kMinuteUs) ==
                TotalsOrDie(b, scope, id, minute, minute + kMinuteUs));
    }
  }
}

// Prefetching is a hint: a fold given any prefetches, for its own events'
// ids and for ids it never saw, at every stage, equals one given none.
RC_GTEST_PROP(MetricsFoldProp, PrefetchingChangesNothing, ()) {
  const auto events = *rc::gen::container<std::vector<Ev>>(EventGen());
  MetricsFold plain;
  MetricsFold prefetched;
  ApplyAll(events, &plain);
  for (const Ev& e : events) {
    const std::string& ws = e.is_call ? e.call.workspace_id : e.denial.workspace_id;
    const std::string& key = e.is_call ? e.call.key_id : e.denial.key_id;
    for (int stage = 0; stage < MetricsFold::kPrefetchStages; ++stage) {
      prefetched.PrefetchSeries(MetricsFold::HashIds(ws, key), stage);
      prefetched.PrefetchSeries(MetricsFold::HashIds("ws_never", "key_never"), stage);
    }
    ApplyAll({e}, &prefetched);
  }
  std::vector<std::string> a;
  std::vector<std::string> b;
  auto into = [](std::vector<std::string>* out) {
    return [out](const MetricsFold::CellRef& c, std::string_view encoded) {
      out->push_back(std::to_string(static_cast<int>(c.scope)) + "/" + std::string(c.id) + "/" +
                     std::to_string(c.width_us) + "/" + std::to_string(c.start_us) + "/" +
                     std::string(encoded));
    };
  };
  plain.ForEachCell(into(&a));
  prefetched.ForEachCell(into(&b));
  RC_ASSERT(a == b);
}

// ForEachCell visits cells in the byte order of store keys laid out as
// scope, varint(id size), id, width ('d' < 'h' < 'm'), big-endian start, ids
// of 128 bytes and more included; TakeChangedCells the changed ones in the
// same order.
RC_GTEST_PROP(MetricsFoldProp, CellsComeInKeyOrder, ()) {
  const auto ids = *rc::gen::container<std::vector<std::string>>(rc::gen::oneOf(
      rc::gen::container<std::string>(rc::gen::inRange<char>('a', 'd')),
      // Around 128 and 256 bytes, where varint(size) order and size order part.
      rc::gen::map(rc::gen::oneOf(rc::gen::inRange<size_t>(120, 140),
                                  rc::gen::inRange<size_t>(250, 262)),
                   [](size_t n) { return std::string(n, 'k'); })));
  RC_PRE(!ids.empty());
  const auto times = *rc::gen::container<std::vector<int64_t>>(
      ids.size(), rc::gen::inRange<int64_t>(kT0Us, kT0Us + 3 * kDayUs));
  MetricsFold fold;
  fold.TrackChanges();
  for (size_t i = 0; i < ids.size(); ++i) {
    fold.ApplyCall(Call("ws_" + std::to_string(i % 3), ids[i], times[i], 200, 1000, 1));
  }
  auto key_of = [](const MetricsFold::CellRef& c) {
    std::string key(1, static_cast<char>(c.scope));
    PutVarint(c.id.size(), &key);
    key += c.id;
    key.push_back(c.width_us == kMinuteUs ? 'm' : c.width_us == kHourUs ? 'h' : 'd');
    for (int shift = 56; shift >= 0; shift -= 8) {  // big-endian
      key.push_back(static_cast<char>(static_cast<uint64_t>(c.start_us) >> shift));
    }
    return key;
  };
  std::vector<std::string> visited;
  fold.ForEachCell([&](const MetricsFold::CellRef& c, std::string_view) { visited.push_back(key_of(c)); });
  RC_ASSERT(visited.size() == fold.cell_count());
  RC_ASSERT(std::is_sorted(visited.begin(), visited.end()));
  RC_ASSERT(std::adjacent_find(visited.begin(), visited.end()) == visited.end());
  std::vector<std::string> taken;
  fold.TakeChangedCells([&](const MetricsFold::CellRef& c, std::string_view) { taken.push_back(key_of(c)); });
  RC_ASSERT(taken == visited);  // every cell changed once
}

// FlatIndex equals a map from (hash, value) to value, with hashes that
// collide often; Guess returns a value indexed under the hash, or nullptr
// when none is.
RC_GTEST_PROP(FlatIndexProp, FindsWhatAMapFinds, ()) {
  const auto names = *rc::gen::container<std::vector<std::string>>(
      rc::gen::container<std::string>(rc::gen::inRange<char>('a', 'e')));
  std::deque<std::string> values;  // never move
  FlatIndex<std::string> index;
  std::map<std::string, const std::string*> model;
  auto weak_hash = [](const std::string& s) { return s.size() % 5 * 1'000'003; };
  for (const std::string& name : names) {
    auto same = [&](const std::string& v) { return v == name; };
    std::string* found = index.Find(weak_hash(name), same);
    auto it = model.find(name);
    RC_ASSERT((found == nullptr) == (it == model.end()));
    if (found != nullptr) {
      RC_ASSERT(found == it->second);
      continue;
    }
    std::string* added = &values.emplace_back(name);
    index.Insert(weak_hash(name), added);
    model.emplace(name, added);
    index.PrefetchSlot(weak_hash(name));
  }
  RC_ASSERT(index.size() == model.size());
  for (size_t length = 0; length < 12; ++length) {
    const std::string probe(length, 'z');
    const std::string* guess = index.Guess(weak_hash(probe));
    const bool any = std::any_of(model.begin(), model.end(), [&](const auto& entry) {
      return weak_hash(entry.first) == weak_hash(probe);
    });
    RC_ASSERT((guess != nullptr) == any);
    if (guess != nullptr) RC_ASSERT(weak_hash(*guess) == weak_hash(probe));
  }
}

}  // namespace
}  // namespace keyledger
