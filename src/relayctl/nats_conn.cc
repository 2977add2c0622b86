// NATS connections for relayctl ship and fetch (nats_conn.h).
#include "relayctl/nats_conn.h"

#include <cstdio>
#include <cstring>
#include <vector>

namespace relayctl {
namespace {

void on_disconnected(natsConnection* nc, void*) {
  // Our own close disconnects too: say nothing then.
  if (natsConnection_IsClosed(nc)) return;
  std::fprintf(stderr, "\nrelayctl: NATS: disconnected; reconnecting\n");
}

void on_reconnected(natsConnection* nc, void*) {
  char url[256] = {};
  natsConnection_GetConnectedUrl(nc, url, sizeof url);
  std::fprintf(stderr, "\nrelayctl: NATS: reconnected to %s\n", url);
}

}  // namespace

bool nats_conn_option(int c, const char* arg, NatsConnOptions* o) {
  switch (c) {
    case kOptCreds: o->creds = arg; return true;
    case kOptTlsCa: o->tls_ca = arg; return true;
    case kOptTlsCert: o->tls_cert = arg; return true;
    case kOptTlsKey: o->tls_key = arg; return true;
    default: return false;
  }
}

std::string check_nats_urls(const std::string& urls) {
  if (urls.empty()) return "empty server URL";
  size_t at = 0;
  for (;;) {
    const size_t comma = urls.find(',', at);
    std::string url = urls.substr(at, comma == std::string::npos ? comma : comma - at);
    const std::string whole = url;
    const size_t scheme = url.find("://");
    if (scheme != std::string::npos) {
      const std::string s = url.substr(0, scheme);
      if (s != "nats" && s != "tls")
        return "'" + whole + "': unknown scheme '" + s + "' (nats:// or tls://)";
      url = url.substr(scheme + 3);
    }
    const size_t cred = url.rfind('@');
    if (cred != std::string::npos) url = url.substr(cred + 1);
    if (!url.empty() && url.back() == '/') url.pop_back();
    std::string hostpart = url, port;
    if (!url.empty() && url[0] == '[') {  // [IPv6]:port
      const size_t close = url.find(']');
      if (close == std::string::npos) return "'" + whole + "': unclosed '['";
      hostpart = url.substr(1, close - 1);
      if (close + 1 < url.size()) {
        if (url[close + 1] != ':') return "'" + whole + "': junk after ']'";
        port = url.substr(close + 2);
        if (port.empty()) return "'" + whole + "': empty port";
      }
    } else if (const size_t colon = url.rfind(':'); colon != std::string::npos) {
      hostpart = url.substr(0, colon);
      port = url.substr(colon + 1);
      if (port.empty()) return "'" + whole + "': empty port";
    }
    if (hostpart.empty()) return "'" + whole + "': no host";
    if (hostpart.find_first_of("/ \t?#") != std::string::npos)
      return "'" + whole + "': not a host name";
    if (!port.empty()) {
      if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
          std::stoul(port) == 0 || std::stoul(port) > 65535)
        return "'" + whole + "': bad port '" + port + "'";
    }
    if (comma == std::string::npos) return "";
    at = comma + 1;
  }
}

std::string nats_error(const std::string& what, natsStatus s) {
  std::string out = what + ": " + natsStatus_GetText(s);
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  if (detail && *detail && std::strcmp(detail, natsStatus_GetText(s)) != 0)
    out += std::string(" (") + detail + ")";
  return out;
}

NatsConn::~NatsConn() {
  if (js_) jsCtx_Destroy(js_);
  if (nc_) {
    natsConnection_Close(nc_);
    natsConnection_Destroy(nc_);
  }
  if (opts_) natsOptions_Destroy(opts_);
}

int NatsConn::connect(const std::string& urls, const NatsConnOptions& o, jsOptions* jo,
                      std::string* error) {
  if (std::string bad = check_nats_urls(urls); !bad.empty()) {
    *error = "malformed server URL " + bad;
    return -1;
  }
  std::vector<std::string> list;
  for (size_t at = 0;;) {
    const size_t comma = urls.find(',', at);
    list.push_back(urls.substr(at, comma == std::string::npos ? comma : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  std::vector<const char*> servers;
  for (const auto& u : list) servers.push_back(u.c_str());
  natsStatus s = natsOptions_Create(&opts_);
  if (s == NATS_OK)
    s = natsOptions_SetServers(opts_, servers.data(), static_cast<int>(servers.size()));
  if (s == NATS_OK) s = natsOptions_SetName(opts_, "relayctl");
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts_, 5000);
  // Once connected, never give up: a cluster node, or all of them, may come back.
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts_, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts_, 250);
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts_, 64 << 20);
  if (s == NATS_OK && !o.quiet) s = natsOptions_SetDisconnectedCB(opts_, on_disconnected, nullptr);
  if (s == NATS_OK && !o.quiet) s = natsOptions_SetReconnectedCB(opts_, on_reconnected, nullptr);
  if (s != NATS_OK) {
    *error = nats_error("NATS options", s);
    return -1;
  }
  if (!o.creds.empty() &&
      (s = natsOptions_SetUserCredentialsFromFiles(opts_, o.creds.c_str(), nullptr)) != NATS_OK) {
    *error = nats_error(o.creds, s);
    return -1;
  }
  const bool tls = !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty();
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    *error = "--tls-cert and --tls-key go together";
    return -1;
  }
  if (tls && (s = natsOptions_SetSecure(opts_, true)) != NATS_OK) {
    *error = nats_error("TLS", s);
    return -1;
  }
  if (!o.tls_ca.empty() &&
      (s = natsOptions_LoadCATrustedCertificates(opts_, o.tls_ca.c_str())) != NATS_OK) {
    *error = nats_error(o.tls_ca, s);
    return -1;
  }
  if (!o.tls_cert.empty() && (s = natsOptions_LoadCertificatesChain(
                                  opts_, o.tls_cert.c_str(), o.tls_key.c_str())) != NATS_OK) {
    *error = nats_error(o.tls_cert, s);
    return -1;
  }
  s = natsConnection_Connect(&nc_, opts_);
  if (s != NATS_OK) {
    nc_ = nullptr;
    const char* why = s == NATS_NO_SERVER         ? "cannot reach any NATS server"
                      : s == NATS_NOT_PERMITTED   ? "the NATS server refused the credentials"
                      : s == NATS_CONNECTION_AUTH_FAILED ? "the NATS server refused the credentials"
                                                         : "cannot connect to NATS";
    *error = nats_error(std::string(why) + " at " + urls, s);
    return -1;
  }
  s = natsConnection_JetStream(&js_, nc_, jo);
  if (s != NATS_OK) {
    js_ = nullptr;
    *error = nats_error("JetStream context", s);
    return -1;
  }
  return 0;
}

}  // namespace relayctl
