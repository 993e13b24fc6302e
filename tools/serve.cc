#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>

#include "api/http_server.h"
#include "api/service.h"
#include "ledger/ledger.h"
#include "projections/key_state_store.h"
#include "tools/commands.h"
#include "tools/local_stack.h"

namespace keyledger::tools {
namespace {

// Splits "host:port" or "[v6]:port". Returns false on bad input.
bool SplitListen(const std::string& listen, std::string* host, uint16_t* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string h = listen.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  char* end = nullptr;
  long p = std::strtol(listen.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || p < 0 || p > 65535) return false;
  *host = h;
  *port = static_cast<uint16_t>(p);
  return true;
}

// Returns Ok if a listening socket can be bound to host:port (an IP
// literal) right now, else the reason; the socket is closed again. Checked
// before the data directory is created or changed, so that a taken port
// fails a start that has touched nothing (the server binds for real later:
// a race with another process remains possible, and is reported then).
Status ProbeListen(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;  // never a lookup
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) {
    return Status::InvalidArgument("HOST must be an IP address such as 127.0.0.1, 0.0.0.0 or "
                                   "[::1], got \"" + host + "\"",
                                   "--listen");
  }
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(found);
    return Status::IOError(std::string("socket: ") + std::strerror(errno));
  }
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as the server binds
  const bool bound = ::bind(fd, found->ai_addr, found->ai_addrlen) == 0;
  const int bind_errno = errno;
  ::close(fd);
  ::freeaddrinfo(found);
  if (!bound) return Status::IOError(std::string("bind: ") + std::strerror(bind_errno));
  return Status::Ok();
}

// Parses "http://HOST:PORT" (HOST a name, an IPv4 literal or [IPv6]) and
// resolves HOST once, now. Returns InvalidArgument (field "--upstream") on a
// malformed URL or a name that does not resolve.
Status ParseUpstream(const std::string& url, std::string* address, uint16_t* port) {
  constexpr std::string_view kScheme = "http://";
  std::string_view rest(url);
  if (!rest.starts_with(kScheme)) {
    return Status::InvalidArgument("must be http://HOST:PORT (https is not relayed)", "--upstream");
  }
  rest.remove_prefix(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string host;
  if (!SplitListen(std::string(rest), &host, port) || host.empty() || *port == 0) {
    return Status::InvalidArgument("must be http://HOST:PORT with a port 1..65535", "--upstream");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) {
    return Status::InvalidArgument("host " + host + " does not resolve", "--upstream");
  }
  char text[INET6_ADDRSTRLEN] = {};
  const void* raw = found->ai_family == AF_INET6
                        ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr)
                        : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr);
  inet_ntop(found->ai_family, raw, text, sizeof(text));
  freeaddrinfo(found);
  *address = text;
  return Status::Ok();
}

int Fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "keyledger serve: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

// A flag's value is wrong: nothing was opened or created.
int Usage(const std::string& flag, const std::string& message) {
  std::fprintf(stderr, "keyledger serve: %s: %s\n", flag.c_str(), message.c_str());
  return 2;
}

}  // namespace

int DefaultServeIoThreads() {
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency() / 2));
}

int RunServe(const ServeOptions& options) {
  HttpServerOptions http;
  // Every flag is checked before the data directory is opened or created.
  if (!SplitListen(options.listen, &http.host, &http.port)) {
    return Usage("--listen", "must be HOST:PORT, got \"" + options.listen + "\"");
  }
  if (Status listen = ProbeListen(http.host, http.port); !listen.ok()) {
    if (listen.code() == Code::kInvalidArgument) return Usage("--listen", listen.message());
    return Fail("listen on " + options.listen, listen);
  }
  std::optional<HttpProxyOptions> proxy;
  if (!options.upstream.empty()) {
    proxy.emplace();
    Status parsed = ParseUpstream(options.upstream, &proxy->upstream_host, &proxy->upstream_port);
    if (!parsed.ok()) return Usage("--upstream", parsed.message());
    proxy->response_header_timeout_ms = options.upstream_timeout_ms;
    proxy->request_body_bytes_max = options.proxy_body_bytes_max;
  }
  http.threads = options.threads;
  http.worker_threads = options.worker_threads;
  http.runs_inline = &Service::IsQuickRequest;
  http.body_bytes_max = options.body_bytes_max;

  constexpr int64_t kDayUs = 24LL * 3600 * 1'000'000;
  ServiceOptions service_options;
  service_options.data_plane.workspace_cap = options.workspace_tps_cap;
  service_options.data_plane.max_lateness_us = options.max_lateness_days * kDayUs;
  service_options.allow_private_webhooks = options.allow_private_webhooks;
  if (!options.trusted_proxies.empty()) {
    if (options.upstream.empty()) return Usage("--trusted-proxy", "applies only with --upstream");
    auto trusted = SecurityRules::Compile(options.trusted_proxies, {});
    // Compile names its own field (ip_allow[i]); the user typed a flag.
    if (!trusted.ok()) return Usage("--trusted-proxy", trusted.status().message());
    service_options.trusted_proxies =
        std::make_shared<const SecurityRules>(std::move(trusted).value());
  }
  service_options.alarms.evaluation_interval_us = options.alarm_interval_ms * 1000;
  service_options.alarms.settle_us = options.alarm_settle_seconds * 1'000'000;
  service_options.alarms.retry_base_us = options.notification_retry_base_ms * 1000;
  // The mail settings are checked now rather than failing every alarm e-mail
  // for a day of retries.
  if (!options.smtp.empty()) {
    if (Status relay = CheckSmtpHostPort(options.smtp, "--smtp"); !relay.ok()) {
      return Usage("--smtp", relay.message());
    }
  }
  if (Status from = CheckEmailAddress(options.smtp_from, "--smtp-from"); !from.ok()) {
    return Usage("--smtp-from", from.message());
  }
  if (!options.smtp_user.empty() && !options.smtp_starttls) {
    return Usage("--smtp-user", "needs --smtp-starttls: AUTH would send the password in clear");
  }
  NotifierOptions notifier;
  notifier.allow_private_addresses = options.allow_private_webhooks;
  notifier.smtp_host_port = options.smtp;
  notifier.smtp_username = options.smtp_user;
  if (const char* password = std::getenv("KEYLEDGER_SMTP_PASSWORD")) notifier.smtp_password = password;
  notifier.smtp_starttls = options.smtp_starttls;
  notifier.smtp_from = options.smtp_from;
  CallProjectionsOptions call_options;
  call_options.log_retention_us = options.log_retention_days * kDayUs;
  // Small batches keep the fold's exclusive lock short for concurrent queries.
  call_options.fold_batch_events_max = 4096;
  const char* env_token = std::getenv("KEYLEDGER_ADMIN_TOKEN");
  if (env_token != nullptr && std::strlen(env_token) < kOperatorTokenBytesMin) {
    return Usage("KEYLEDGER_ADMIN_TOKEN", "must be at least " +
                                              std::to_string(kOperatorTokenBytesMin) + " bytes");
  }
  LocalStack stack;
  stack.notifier = NewCurlNotifier(notifier);
  stack.ledger_wal_prefill_bytes = options.wal_prefill_mib << 20;
  Status opened = stack.Open(options.data_dir, /*create=*/true, service_options, call_options);
  if (!opened.ok()) return Fail("open " + options.data_dir, opened);
  stack.calls->Start();
  Service& service = *stack.service;
  auto generated = service.BootstrapOperatorToken(
      env_token ? std::optional<std::string>(env_token) : std::nullopt);
  if (!generated.ok()) return Fail("operator token", generated.status());
  if (!generated->empty()) {
    // Printed once: only its hash is stored.
    std::printf("Generated operator token (shown once, store it safely): %s\n",
                generated->c_str());
  }

  service.StartAlarmLoops();

  if (proxy) proxy->hooks = service.GatewayHooks();
  auto server = HttpServer::Start(
      http, [&service](const HttpRequest& r) { return service.Handle(r); }, std::move(proxy));
  if (!server.ok()) return Fail("listen on " + options.listen, server.status());
  service.AttachHttpServer(server->get());
  std::printf("keyledger serving on %s:%u (data %s, ledger head %llu)\n", http.host.c_str(),
              (*server)->port(), options.data_dir.c_str(),
              static_cast<unsigned long long>(stack.ledger->head().sequence));
  if (!options.upstream.empty()) {
    std::printf("gateway mode: relaying to %s\n", options.upstream.c_str());
  }
  std::fflush(stdout);
  (*server)->WaitForSignal();  // stops accepting, drains in-flight requests
  service.AttachHttpServer(nullptr);
  stack.Stop();                // flushes denials, stops the projections, closes the ledger
  std::printf("keyledger stopped\n");
  return 0;
}

}  // namespace keyledger::tools
