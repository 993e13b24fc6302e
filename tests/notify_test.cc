// Tests for api/notify.h: Standard Webhooks signatures, e-mail composition,
// and the libcurl notifier against the local webhook receiver and SMTP sink.

#include "api/notify.h"

#include <gtest/gtest.h>
#include <sodium.h>

#include <array>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/smtp_sink.h"
#include "tests/support/webhook_receiver.h"

namespace keyledger {
namespace {

using testing::ReceivedEmail;
using testing::ReceivedRequest;
using testing::SmtpSink;
using testing::WebhookReceiver;

constexpr int64_t kWaitMs = 5000;       // generous: the machine is shared
constexpr int64_t kQuietWaitMs = 300;   // how long "nothing arrives" is watched

// ---- helpers that use libsodium directly, independent of api/notify.cc ---------

std::string Base64(const std::string& bytes) {
  std::vector<char> out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL));
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  return out.data();
}

std::string Unbase64(const std::string& b64) {
  std::string out(b64.size(), '\0');
  size_t size = 0;
  EXPECT_EQ(sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(),
                              b64.data(), b64.size(), nullptr, &size, nullptr,
                              sodium_base64_VARIANT_ORIGINAL),
            0);
  out.resize(size);
  return out;
}

std::string ExpectedSignature(const std::string& key, const std::string& signed_content) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, reinterpret_cast<const unsigned char*>(key.data()),
                              key.size());
  crypto_auth_hmacsha256_update(
      &state, reinterpret_cast<const unsigned char*>(signed_content.data()),
      signed_content.size());
  std::string mac(crypto_auth_hmacsha256_BYTES, '\0');
  crypto_auth_hmacsha256_final(&state, reinterpret_cast<unsigned char*>(mac.data()));
  return "v1," + Base64(mac);
}

// ---- signatures ----------------------------------------------------------------

TEST(WebhookSignatureTest, MatchesTheStandardWebhooksKnownAnswer) {
  EXPECT_EQ(WebhookSignature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                             "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                             R"({"test": 2432232314})"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(WebhookSignatureTest, SecretsThatDoNotDecodeSignWithTheirRawBytes) {
  const std::string signed_content = "id.42.{}";
  for (std::string secret : {"plain-secret", "whsec_not*base64!", "whsec_", "whsec_YQ"}) {
    EXPECT_EQ(WebhookSignature(secret, "id", 42, "{}"), ExpectedSignature(secret, signed_content))
        << secret;
  }
  // With the prefix and valid base64, the decoded bytes are the key.
  EXPECT_EQ(WebhookSignature("whsec_" + Base64("key bytes"), "id", 42, "{}"),
            ExpectedSignature("key bytes", signed_content));
}

TEST(WebhookSignatureTest, NewSecretsHaveTheStandardFormAndVerify) {
  SecureRandom random;
  std::string a = NewWebhookSecret(random);
  std::string b = NewWebhookSecret(random);
  EXPECT_NE(a, b);
  ASSERT_TRUE(a.starts_with("whsec_"));
  EXPECT_EQ(a.size(), 6u + 32u);
  std::string key = Unbase64(a.substr(6));
  EXPECT_EQ(key.size(), kWebhookSecretKeyBytes);
  EXPECT_EQ(WebhookSignature(a, "msg_1", 1700000000, R"({"a":1})"),
            ExpectedSignature(key, R"(msg_1.1700000000.{"a":1})"));

  SeededRandom seeded1(7), seeded2(7);
  EXPECT_EQ(NewWebhookSecret(seeded1), NewWebhookSecret(seeded2));  // the source decides
}

TEST(AddressPolicyTest, OnlyPublicUnicastAddressesPass) {
  for (const char* ip : {"93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                         "2a00:1450:4001:80b::200e", "172.32.0.1", "100.128.0.1"}) {
    EXPECT_TRUE(IsPublicAddress(ip)) << ip;
  }
  for (const char* ip :
       {"127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
        "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1", "255.255.255.255", "::",
        "::1", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a9fe:a9fe",
        "2002:7f00:0001::1", "localhost", "", "not an ip", "1.2.3.4.5"}) {
    EXPECT_FALSE(IsPublicAddress(ip)) << ip;
  }
  EXPECT_TRUE(IsPublicAddress("::ffff:8.8.8.8"));
  EXPECT_TRUE(IsPublicAddress("2002:0808:0808::1"));
}

// ---- e-mail composition ----------------------------------------------------------

EmailMessage SampleEmail() {
  EmailMessage m;
  m.to = "ops@example.com";
  m.subject = "Alarm: error rate above 5%";
  m.text_body = "Key k_1 crossed its threshold.\nSee the dashboard.\n";
  m.message_id = "alarm_01@keyledger";
  m.date_us = 1795694400LL * 1000000 + 123456;  // 2026-11-26T12:00:00.123456Z
  return m;
}

TEST(ComposeEmailTest, WritesTheHeadersAndBodyWithCrlf) {
  auto composed = ComposeEmail(SampleEmail(), "keyledger@localhost");
  ASSERT_TRUE(composed.ok()) << composed.status().ToString();
  EXPECT_EQ(*composed,
            "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
            "From: keyledger@localhost\r\n"
            "To: ops@example.com\r\n"
            "Subject: Alarm: error rate above 5%\r\n"
            "Message-ID: <alarm_01@keyledger>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "\r\n"
            "Key k_1 crossed its threshold.\r\n"
            "See the dashboard.\r\n");
}

TEST(ComposeEmailTest, NormalizesLineEndingsAndBreaksOverlongLines) {
  EmailMessage m = SampleEmail();
  m.text_body = "a\rb\r\nc\nd" + std::string(2000, 'x');
  auto composed = ComposeEmail(m, "keyledger@localhost");
  ASSERT_TRUE(composed.ok());
  std::string body = composed->substr(composed->find("\r\n\r\n") + 4);
  EXPECT_TRUE(body.starts_with("a\r\nb\r\nc\r\nd"));
  EXPECT_TRUE(body.ends_with("\r\n"));
  size_t line_start = 0;
  for (size_t i = 0; i < body.size(); i++) {
    if (body[i] == '\n') {
      ASSERT_GT(i, 0u);
      EXPECT_EQ(body[i - 1], '\r') << "bare LF at " << i;
      EXPECT_LE(i - 1 - line_start, 998u);
      line_start = i + 1;
    }
    if (body[i] == '\r') {
      EXPECT_EQ(body[i + 1], '\n') << "bare CR at " << i;
    }
  }
}

TEST(ComposeEmailTest, EncodesNonAsciiSubjectsAsFoldedEncodedWords) {
  EmailMessage m = SampleEmail();
  m.subject = "경보: 키 k_1의 오류율이 임계값을 넘었습니다 (error rate above threshold)";
  auto composed = ComposeEmail(m, "keyledger@localhost");
  ASSERT_TRUE(composed.ok());
  size_t start = composed->find("Subject: ") + 9;
  size_t end = composed->find("\r\nMessage-ID:");
  std::string subject = composed->substr(start, end - start);
  // Decode every encoded word and check the bytes come back whole.
  std::string decoded;
  size_t pos = 0;
  while ((pos = subject.find("=?UTF-8?B?", pos)) != std::string::npos) {
    size_t close = subject.find("?=", pos + 10);
    ASSERT_NE(close, std::string::npos);
    std::string word = subject.substr(pos + 10, close - pos - 10);
    decoded += Unbase64(word);
    EXPECT_LE(close + 2 - pos, 75u);  // RFC 2047 word limit
    pos = close + 2;
  }
  EXPECT_EQ(decoded, m.subject);
  EXPECT_NE(subject.find("\r\n "), std::string::npos);  // folded
}

TEST(ComposeEmailTest, RefusesHeaderInjectionAndMalformedInputs) {
  struct Case {
    const char* field;
    void (*mutate)(EmailMessage*);
  };
  const Case cases[] = {
      {"to", [](EmailMessage* m) { m->to = "ops@example.com\r\nBcc: evil@example.com"; }},
      {"to", [](EmailMessage* m) { m->to = "ops@example.com\nBcc: evil@example.com"; }},
      {"to", [](EmailMessage* m) { m->to = "a@b.com, c@d.com"; }},
      {"to", [](EmailMessage* m) { m->to = "<ops@example.com>"; }},
      {"to", [](EmailMessage* m) { m->to = "nobody"; }},
      {"to", [](EmailMessage* m) { m->to = ""; }},
      {"subject", [](EmailMessage* m) { m->subject = "hi\r\nBcc: evil@example.com"; }},
      {"subject", [](EmailMessage* m) { m->subject = "hi\nthere"; }},
      {"subject", [](EmailMessage* m) { m->subject = "hi\rthere"; }},
      {"message_id", [](EmailMessage* m) { m->message_id = "a>\r\nX: y<b@c"; }},
      {"message_id", [](EmailMessage* m) { m->message_id = "no-at-sign"; }},
      {"text_body", [](EmailMessage* m) { m->text_body = std::string("a\0b", 3); }},
      {"date_us", [](EmailMessage* m) { m->date_us = -1; }},
  };
  for (const Case& c : cases) {
    EmailMessage m = SampleEmail();
    c.mutate(&m);
    auto composed = ComposeEmail(m, "keyledger@localhost");
    ASSERT_FALSE(composed.ok()) << c.field;
    EXPECT_EQ(composed.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(composed.status().field(), c.field);
  }
  auto bad_from = ComposeEmail(SampleEmail(), "keyledger@localhost\r\nBcc: x@y.z");
  ASSERT_FALSE(bad_from.ok());
  EXPECT_EQ(bad_from.status().field(), "from");
}

// ---- the libcurl notifier: webhooks ---------------------------------------------

std::unique_ptr<WebhookReceiver> StartReceiver() {
  auto receiver = WebhookReceiver::Start();
  EXPECT_TRUE(receiver.ok()) << receiver.ToStatus().ToString();
  return std::move(receiver).value();
}

NotifierOptions LocalOptions() {
  NotifierOptions o;
  o.allow_private_addresses = true;
  return o;
}

WebhookMessage SampleWebhook(const std::string& url) {
  WebhookMessage m;
  m.url = url;
  m.secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  m.id = "msg_alarm_1";
  m.timestamp_s = 1795694400;
  m.body_json = R"({"type":"alarm.fired","key_id":"k_1"})";
  return m;
}

TEST(CurlNotifierTest, PostsASignedWebhook) {
  auto receiver = StartReceiver();
  auto notifier = NewCurlNotifier(LocalOptions());
  WebhookMessage m = SampleWebhook(receiver->Url("/hooks/alarm"));
  DeliveryResult r = notifier->SendWebhook(m);
  EXPECT_TRUE(r.delivered) << r.error;
  EXPECT_EQ(r.http_status, 200u);
  EXPECT_EQ(r.error, "");
  ASSERT_EQ(receiver->RequestCount(), 1u);
  ReceivedRequest req = receiver->Requests()[0];
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.target, "/hooks/alarm");
  EXPECT_EQ(req.body, m.body_json);
  EXPECT_EQ(req.Header("content-type"), "application/json");
  EXPECT_EQ(req.Header("user-agent"), "keyledger");
  EXPECT_EQ(req.Header("webhook-id"), "msg_alarm_1");
  EXPECT_EQ(req.Header("webhook-timestamp"), "1795694400");
  std::string key = Unbase64("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  EXPECT_EQ(req.Header("webhook-signature"),
            ExpectedSignature(key, req.Header("webhook-id") + "." +
                                       req.Header("webhook-timestamp") + "." + req.body));
  EXPECT_EQ(req.Header("expect"), "");
}

TEST(CurlNotifierTest, Non2xxIsNotDelivered) {
  auto receiver = StartReceiver();
  receiver->FailNext(1, 500);
  auto notifier = NewCurlNotifier(LocalOptions());
  DeliveryResult r = notifier->SendWebhook(SampleWebhook(receiver->Url()));
  EXPECT_FALSE(r.delivered);
  EXPECT_EQ(r.http_status, 500u);
  EXPECT_NE(r.error.find("500"), std::string::npos) << r.error;
  // The script is spent: the next attempt is delivered.
  EXPECT_TRUE(notifier->SendWebhook(SampleWebhook(receiver->Url())).delivered);
}

TEST(CurlNotifierTest, RedirectsAreNotFollowed) {
  auto receiver = StartReceiver();
  receiver->FailNext(1, 302);
  auto notifier = NewCurlNotifier(LocalOptions());
  DeliveryResult r = notifier->SendWebhook(SampleWebhook(receiver->Url()));
  EXPECT_FALSE(r.delivered);
  EXPECT_EQ(r.http_status, 302u);
  EXPECT_FALSE(receiver->WaitForRequests(2, kQuietWaitMs));
  EXPECT_EQ(receiver->Requests()[0].target, "/hook");
}

TEST(CurlNotifierTest, ConnectionRefusedIsAnError) {
  uint16_t port = StartReceiver()->port();  // the receiver is gone: nothing listens there
  auto notifier = NewCurlNotifier(LocalOptions());
  DeliveryResult r =
      notifier->SendWebhook(SampleWebhook("http://127.0.0.1:" + std::to_string(port) + "/"));
  EXPECT_FALSE(r.delivered);
  EXPECT_EQ(r.http_status, 0u);
  EXPECT_FALSE(r.error.empty());
}

TEST(CurlNotifierTest, TheRequestTimeoutIsRespected) {
  auto receiver = StartReceiver();
  receiver->SetStallMs(10000);
  NotifierOptions o = LocalOptions();
  o.request_timeout_ms = 300;
  auto notifier = NewCurlNotifier(o);
  auto start = std::chrono::steady_clock::now();
  DeliveryResult r = notifier->SendWebhook(SampleWebhook(receiver->Url()));
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_FALSE(r.delivered);
  EXPECT_EQ(r.http_status, 0u);
  EXPECT_NE(r.error.find("timed out"), std::string::npos) << r.error;
  EXPECT_LT(elapsed, std::chrono::milliseconds(3000));
  EXPECT_EQ(receiver->RequestCount(), 1u);  // it arrived; the answer did not
}

TEST(CurlNotifierTest, PrivateAddressesAreRefusedBeforeConnecting) {
  auto receiver = StartReceiver();
  auto notifier = NewCurlNotifier(NotifierOptions{});  // allow_private_addresses = false
  for (std::string host : {"127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]"}) {
    std::string url = "http://" + host + ":" + std::to_string(receiver->port()) + "/hook";
    DeliveryResult r = notifier->SendWebhook(SampleWebhook(url));
    EXPECT_FALSE(r.delivered) << host;
    EXPECT_EQ(r.http_status, 0u) << host;
    EXPECT_NE(r.error.find("non-public"), std::string::npos) << host << ": " << r.error;
  }
  EXPECT_FALSE(receiver->WaitForRequests(1, kQuietWaitMs));
  EXPECT_EQ(receiver->ConnectionCount(), 0u);
}

TEST(CurlNotifierTest, OnlyHttpAndHttpsAreSpoken) {
  auto notifier = NewCurlNotifier(LocalOptions());
  for (const char* url : {"file:///etc/passwd", "ftp://127.0.0.1/", "gopher://127.0.0.1/",
                          "smtp://127.0.0.1/"}) {
    DeliveryResult r = notifier->SendWebhook(SampleWebhook(url));
    EXPECT_FALSE(r.delivered) << url;
    EXPECT_FALSE(r.error.empty()) << url;
  }
}

TEST(CurlNotifierTest, ControlCharactersInTheIdAreRefusedUnsent) {
  auto receiver = StartReceiver();
  auto notifier = NewCurlNotifier(LocalOptions());
  WebhookMessage m = SampleWebhook(receiver->Url());
  m.id = "msg_1\r\nx-injected: yes";
  DeliveryResult r = notifier->SendWebhook(m);
  EXPECT_FALSE(r.delivered);
  EXPECT_FALSE(r.error.empty());
  EXPECT_EQ(receiver->ConnectionCount(), 0u);
}

TEST(CurlNotifierTest, LargeResponsesAreCutOffButStillDelivered) {
  auto receiver = StartReceiver();
  receiver->SetResponseBody(std::string(512 * 1024, 'x'));
  NotifierOptions o = LocalOptions();
  o.response_bytes_max = 1024;
  auto notifier = NewCurlNotifier(o);
  DeliveryResult r = notifier->SendWebhook(SampleWebhook(receiver->Url()));
  EXPECT_TRUE(r.delivered) << r.error;
  EXPECT_EQ(r.http_status, 200u);
}

TEST(CurlNotifierTest, ConcurrentSendsAreSafe) {
  auto receiver = StartReceiver();
  auto notifier = NewCurlNotifier(LocalOptions());
  constexpr int kThreads = 4;
  constexpr int kSendsPerThread = 3;
  std::atomic<int> delivered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kSendsPerThread; i++) {
        WebhookMessage m = SampleWebhook(receiver->Url());
        m.id = "msg_" + std::to_string(t) + "_" + std::to_string(i);
        if (notifier->SendWebhook(m).delivered) delivered++;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(delivered.load(), kThreads * kSendsPerThread);
  EXPECT_EQ(receiver->RequestCount(), static_cast<size_t>(kThreads * kSendsPerThread));
}

// ---- the libcurl notifier: e-mail -------------------------------------------------

std::unique_ptr<SmtpSink> StartSink() {
  auto sink = SmtpSink::Start();
  EXPECT_TRUE(sink.ok()) << sink.ToStatus().ToString();
  return std::move(sink).value();
}

TEST(CurlNotifierTest, SendsEmailOverSmtp) {
  auto sink = StartSink();
  NotifierOptions o = LocalOptions();
  o.smtp_host_port = sink->HostPort();
  o.smtp_from = "alarms@keyledger.test";
  auto notifier = NewCurlNotifier(o);
  EmailMessage m = SampleEmail();
  m.text_body = "first line\n.a line that starts with a dot\n.\nlast line";
  DeliveryResult r = notifier->SendEmail(m);
  EXPECT_TRUE(r.delivered) << r.error;
  EXPECT_EQ(r.http_status, 0u);
  ASSERT_TRUE(sink->WaitForMessages(1, kWaitMs));
  ReceivedEmail got = sink->Messages()[0];
  EXPECT_EQ(got.from, "alarms@keyledger.test");
  EXPECT_EQ(got.recipients, std::vector<std::string>{"ops@example.com"});
  auto expected = ComposeEmail(m, "alarms@keyledger.test");
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(got.data, *expected);  // dot-stuffing round-trips through curl and the sink
  for (const char* header :
       {"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n", "From: alarms@keyledger.test\r\n",
        "To: ops@example.com\r\n", "Subject: Alarm: error rate above 5%\r\n",
        "Message-ID: <alarm_01@keyledger>\r\n", "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n"}) {
    EXPECT_NE(got.data.find(header), std::string::npos) << header;
  }
  EXPECT_NE(got.data.find("\r\n.a line that starts with a dot\r\n.\r\nlast line\r\n"),
            std::string::npos);
}

TEST(CurlNotifierTest, EmailWithoutSmtpHostFailsClearly) {
  auto notifier = NewCurlNotifier(LocalOptions());
  DeliveryResult r = notifier->SendEmail(SampleEmail());
  EXPECT_FALSE(r.delivered);
  EXPECT_NE(r.error.find("SMTP"), std::string::npos) << r.error;
}

TEST(CurlNotifierTest, EmailHeaderInjectionIsRefusedUnsent) {
  auto sink = StartSink();
  NotifierOptions o = LocalOptions();
  o.smtp_host_port = sink->HostPort();
  auto notifier = NewCurlNotifier(o);
  EmailMessage to = SampleEmail();
  to.to = "ops@example.com\r\nBcc: evil@example.com";
  EmailMessage subject = SampleEmail();
  subject.subject = "hello\nBcc: evil@example.com";
  for (const EmailMessage& m : {to, subject}) {
    DeliveryResult r = notifier->SendEmail(m);
    EXPECT_FALSE(r.delivered);
    EXPECT_NE(r.error.find("refused"), std::string::npos) << r.error;
  }
  EXPECT_EQ(sink->SessionCount(), 0u);
}

TEST(CurlNotifierTest, RejectedRecipientIsNotDelivered) {
  auto sink = StartSink();
  sink->RejectNextRecipients(1);
  NotifierOptions o = LocalOptions();
  o.smtp_host_port = sink->HostPort();
  auto notifier = NewCurlNotifier(o);
  DeliveryResult r = notifier->SendEmail(SampleEmail());
  EXPECT_FALSE(r.delivered);
  EXPECT_NE(r.error.find("550"), std::string::npos) << r.error;
  EXPECT_FALSE(sink->WaitForMessages(1, kQuietWaitMs));
}

TEST(CurlNotifierTest, RequiredStarttlsFailsAgainstAPlainServer) {
  auto sink = StartSink();
  NotifierOptions o = LocalOptions();
  o.smtp_host_port = sink->HostPort();
  o.smtp_starttls = true;
  auto notifier = NewCurlNotifier(o);
  DeliveryResult r = notifier->SendEmail(SampleEmail());
  EXPECT_FALSE(r.delivered);
  EXPECT_NE(r.error.find("STARTTLS"), std::string::npos) << r.error;
  EXPECT_FALSE(sink->WaitForMessages(1, kQuietWaitMs));
}

}  // namespace
}  // namespace keyledger
