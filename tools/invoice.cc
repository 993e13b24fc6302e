// keyledger invoice run|export: finance's monthly invoice run and exports,
// against a running server (--server, over HTTP with libcurl) or a stopped
// data directory (--data, in process).
#include <curl/curl.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "api/service.h"
#include "billing/invoicing.h"
#include "tools/commands.h"
#include "tools/local_stack.h"

namespace keyledger::tools {
namespace {

using Json = nlohmann::json;
using Transport = std::function<HttpResponse(const HttpRequest&)>;

constexpr long kHttpTimeoutS = 600;  // an invoice run over many workspaces may take a while

size_t AppendBody(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

// Sends one request with libcurl. Transport errors become a 503 JSON error.
HttpResponse SendOverHttp(const std::string& server, const std::string& token,
                          const HttpRequest& req) {
  CURL* curl = curl_easy_init();
  HttpResponse resp;
  std::string url = server + req.target;
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, kHttpTimeoutS);
  if (!req.body.empty()) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req.body.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp.body);
  CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    resp = JsonError(503, "unavailable", std::string("cannot reach ") + server + ": " +
                                             curl_easy_strerror(rc));
  } else {
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    resp.status = static_cast<int>(status);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return resp;
}

// Chooses --server or --data; returns the transport or prints why not.
Result<Transport> MakeTransport(const InvoiceOptions& o, std::unique_ptr<LocalStack>* local) {
  if (o.server.empty() == o.data_dir.empty()) {
    return Status::InvalidArgument("give exactly one of --server URL or --data DIR", "server");
  }
  if (!o.server.empty()) {
    const char* env = std::getenv("KEYLEDGER_ADMIN_TOKEN");
    std::string token = !o.token.empty() ? o.token : (env ? env : "");
    if (token.empty()) {
      return Status::InvalidArgument("--server needs --token or KEYLEDGER_ADMIN_TOKEN", "token");
    }
    return Transport([server = o.server, token](const HttpRequest& r) {
      return SendOverHttp(server, token, r);
    });
  }
  *local = std::make_unique<LocalStack>();
  KL_RETURN_IF_ERROR((*local)->Open(o.data_dir, /*create=*/false));
  Service* service = (*local)->service.get();
  return Transport([service](const HttpRequest& r) { return service->HandleAsOperator(r); });
}

HttpRequest Request(std::string method, std::string target, std::string body = "") {
  HttpRequest r;
  r.method = std::move(method);
  r.target = std::move(target);
  r.body = std::move(body);
  return r;
}

int Fail(const char* command, const std::string& message) {
  std::fprintf(stderr, "keyledger invoice %s: %s\n", command, message.c_str());
  return 1;
}

// Why no transport: bad flags exit 2; a data directory a server holds gets
// a hint, since RocksDB's own words ("While lock file") do not say so.
int TransportFailure(const char* command, const Status& s) {
  if (s.code() == Code::kInvalidArgument) {
    std::fprintf(stderr, "keyledger invoice %s: %s\n", command, s.message().c_str());
    return 2;
  }
  std::string message = s.ToString();
  if (s.code() == Code::kIOError && message.find("lock") != std::string::npos) {
    message += " (is a server running on this directory? then use --server URL)";
  }
  return Fail(command, message);
}

}  // namespace

int RunInvoiceRun(const InvoiceOptions& options) {
  std::unique_ptr<LocalStack> local;
  auto transport = MakeTransport(options, &local);
  if (!transport.ok()) return TransportFailure("run", transport.status());
  Json body = {{"month", options.month}, {"grace_hours", options.grace_hours}};
  HttpResponse r = (*transport)(Request("POST", "/v1/invoice-runs", body.dump()));
  if (r.status != 200) return Fail("run", std::to_string(r.status) + " " + r.body);
  Json result = Json::parse(r.body, nullptr, false);
  std::printf("%s\n", r.body.c_str());
  std::fprintf(stderr, "month %s: %zu issued, %zu already issued, %zu not yet due, %zu failed\n",
               options.month.c_str(), result["issued"].size(), result["already_issued"].size(),
               result["not_due"].size(), result["failed"].size());
  // A workspace over a billing limit got no invoice: finance must see it.
  for (const Json& f : result["failed"]) {
    std::fprintf(stderr, "keyledger invoice run: no invoice for %s: %s\n",
                 f["workspace_id"].get<std::string>().c_str(),
                 f["error"]["message"].get<std::string>().c_str());
  }
  return result["failed"].empty() ? 0 : 1;
}

// Workspaces per listing request of an export: the API's largest page.
constexpr size_t kWorkspacePageSize = 1000;

int RunInvoiceExport(const InvoiceOptions& options) {
  std::unique_ptr<LocalStack> local;
  auto transport = MakeTransport(options, &local);
  if (!transport.ok()) return TransportFailure("export", transport.status());
  std::vector<std::string> ids;
  if (!options.workspace.empty()) {
    HttpResponse one = (*transport)(Request("GET", "/v1/workspaces/" + options.workspace));
    if (one.status == 404) return Fail("export", "no workspace " + options.workspace);
    if (one.status != 200) return Fail("export", std::to_string(one.status) + " " + one.body);
    ids.push_back(options.workspace);
  } else {
    // Every workspace, a page at a time (the listing is paginated).
    std::string cursor;
    do {
      HttpResponse page = (*transport)(Request(
          "GET", "/v1/workspaces?limit=" + std::to_string(kWorkspacePageSize) + "&cursor=" + cursor));
      if (page.status != 200) return Fail("export", std::to_string(page.status) + " " + page.body);
      Json body = Json::parse(page.body, nullptr, false);
      for (const Json& ws : body["workspaces"]) ids.push_back(ws["id"]);
      cursor = body["next_cursor"].is_string() ? body["next_cursor"].get<std::string>() : "";
    } while (!cursor.empty());
  }
  Json all = Json::array();
  bool header_written = false;
  for (const std::string& id : ids) {
    std::string target = "/v1/workspaces/" + id + "/invoices/" + options.month +
                         (options.format == "csv" ? "?format=csv" : "");
    HttpResponse r = (*transport)(Request("GET", target));
    if (r.status == 404) continue;  // no invoice for this workspace and month
    if (r.status != 200) return Fail("export", std::to_string(r.status) + " " + r.body);
    if (options.format == "json") {
      all.push_back(Json::parse(r.body, nullptr, false));
      continue;
    }
    // One CSV for finance: the header row once, then every invoice's rows.
    std::string_view csv = r.body;
    if (header_written) csv.remove_prefix(std::min(csv.size(), csv.find("\r\n") + 2));
    std::fwrite(csv.data(), 1, csv.size(), stdout);
    header_written = true;
  }
  if (options.format == "json") std::printf("%s\n", all.dump(2).c_str());
  // No invoice this month: still a CSV, the header row alone.
  if (options.format == "csv" && !header_written) std::fputs(InvoiceCsvHeader().c_str(), stdout);
  return 0;
}

}  // namespace keyledger::tools
