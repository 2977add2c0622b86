// relayctl's side of NATS (nats_conn.h).
#include "relayctl/nats_conn.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "relayctl/relayctl.h"

namespace relayctl::nats {
namespace {

// getopt_long values of the connection options: above any character a subcommand uses.
enum : int { kOptCreds = 0x1000, kOptTlsCa, kOptTlsCert, kOptTlsKey };

constexpr int kConnectTimeoutMs = 2000;  // per server, at the first connection
constexpr int kReconnectWaitMs = 1000;   // between two attempts at the same server
constexpr int kRequestWaitMs = 5000;     // a JetStream API request

// One URL of the list, taken apart: what connect() needs of it.
struct Url {
  bool tls = false;
  std::string text;  // as given
};

bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

// "" if host[:port] (after any user info) is well formed, else why not.
std::string check_host_port(const std::string& hp) {
  std::string host, port;
  bool has_port = false;
  if (!hp.empty() && hp[0] == '[') {
    const size_t close = hp.find(']');
    if (close == std::string::npos) return "no ']' after the IPv6 address";
    host = hp.substr(1, close - 1);
    if (host.empty() || host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos)
      return "'" + host + "' is not an IPv6 address";
    const std::string rest = hp.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return "'" + rest + "' after the IPv6 address";
      has_port = true;
      port = rest.substr(1);
    }
  } else {
    const size_t colon = hp.find(':');
    if (colon != std::string::npos && hp.find(':', colon + 1) != std::string::npos)
      return "more than one ':' (an IPv6 address goes in [ ])";
    host = hp.substr(0, colon);
    if (colon != std::string::npos) {
      has_port = true;
      port = hp.substr(colon + 1);
    }
    if (host.empty()) return "no host";
    if (host.size() > 253) return "the host name is longer than 253 characters";
    for (char c : host)
      if (!host_char(c)) return "'" + host + "' is not a host name or address";
  }
  if (has_port) {
    if (port.empty()) return "no port after ':'";
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) < 1 || std::stoi(port) > 65535)
      return "port '" + port + "' is not a number from 1 to 65535";
  }
  return "";
}

// Parses one URL of the list into *out; "" or why it is malformed.
std::string parse_url(const std::string& text, Url* out) {
  out->text = text;
  if (text.empty()) return "an empty URL in the list";
  for (char c : text)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return "a space or control character";
  std::string rest = text;
  if (const size_t sep = text.find("://"); sep != std::string::npos) {
    const std::string scheme = text.substr(0, sep);
    if (scheme == "tls")
      out->tls = true;
    else if (scheme != "nats")
      return "unknown scheme '" + scheme + "://' (nats:// or tls://)";
    rest = text.substr(sep + 3);
  }
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find('/') != std::string::npos) return "a path after the host (nothing may follow)";
  if (const size_t at = rest.rfind('@'); at != std::string::npos) {
    if (at == 0 || rest[0] == ':') return "an empty user name before '@'";
    rest = rest.substr(at + 1);
  }
  return check_host_port(rest);
}

// text without any "user:password@" password: "user:***@".
std::string redact_one(const std::string& text) {
  const size_t scheme = text.find("://");
  const size_t from = scheme == std::string::npos ? 0 : scheme + 3;
  const size_t at = text.rfind('@');
  if (at == std::string::npos || at < from) return text;
  const size_t colon = text.find(':', from);
  if (colon == std::string::npos || colon > at) return text;
  return text.substr(0, colon + 1) + "***" + text.substr(at);
}

std::vector<std::string> split_urls(const std::string& urls) {
  std::vector<std::string> out;
  size_t at = 0;
  for (;;) {
    const size_t comma = urls.find(',', at);
    out.push_back(urls.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

// nats.c calls these from its own thread when the connection is lost and when it is back.
// "\r\033[K" on a terminal, where the line may hold a subcommand's progress.
const char* clear_line() {
  return ::isatty(2) ? "\r\033[K" : "";
}

void on_disconnected(natsConnection* nc, void* name) {
  if (natsConnection_IsClosed(nc)) return;  // closed by relayctl itself: nothing to say
  std::fprintf(stderr, "%s%s: connection to NATS lost; reconnecting\n", clear_line(),
               static_cast<const char*>(name));
}

void on_reconnected(natsConnection* nc, void* name) {
  char url[256] = "";
  natsConnection_GetConnectedUrl(nc, url, sizeof url);
  std::fprintf(stderr, "%s%s: reconnected to %s\n", clear_line(), static_cast<const char*>(name),
               redact_one(url).c_str());
}

// The options for opts' servers (each URL checked first). Returns kExitOk with *out set, or
// kExitError after reporting.
int make_options(const ConnectOptions& opts, const char* name, const Tuning& tuning,
                 OptionsPtr* out) {
  const std::string shown = redact(opts.urls);
  auto fail = [&](const std::string& why) {
    note(shown + ": " + why);
    return kExitError;
  };
  std::vector<Url> urls;
  bool tls = !opts.tls_ca.empty() || !opts.tls_cert.empty() || !opts.tls_key.empty();
  for (const std::string& text : split_urls(opts.urls)) {
    Url u;
    if (std::string why = parse_url(text, &u); !why.empty()) {
      note("malformed URL '" + redact_one(text) + "': " + why);
      return kExitError;
    }
    tls = tls || u.tls;
    urls.push_back(u);
  }
  if (opts.tls_cert.empty() != opts.tls_key.empty())
    return fail("--tls-cert and --tls-key go together");
  natsOptions* raw = nullptr;
  if (natsStatus s = natsOptions_Create(&raw); s != NATS_OK) return fail(describe(s));
  out->reset(raw);
  std::vector<const char*> servers;
  for (const Url& u : urls) servers.push_back(u.text.c_str());
  natsStatus s = natsOptions_SetServers(raw, servers.data(), static_cast<int>(servers.size()));
  // In the order given: the first URL is the one tried first.
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(raw, true);
  if (s == NATS_OK) s = natsOptions_SetName(raw, name);
  if (s == NATS_OK) s = natsOptions_SetTimeout(raw, kConnectTimeoutMs);
  // Forever (a negative count), kReconnectWaitMs apart, once the first connection was made.
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(raw, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(raw, kReconnectWaitMs);
  if (s == NATS_OK && tuning.reconnect_buffer > 0)
    s = natsOptions_SetReconnectBufSize(raw, tuning.reconnect_buffer);
  if (s == NATS_OK)
    s = natsOptions_SetDisconnectedCB(raw, on_disconnected, const_cast<char*>(name));
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(raw, on_reconnected, const_cast<char*>(name));
  if (s != NATS_OK) return fail(describe(s));
  // Each file is read now (nats.c reads the credentials only when it connects): a file that
  // is missing or unreadable is named here.
  for (const auto& [option, file] : {std::pair{"--creds", &opts.creds},
                                     {"--tls-ca", &opts.tls_ca},
                                     {"--tls-cert", &opts.tls_cert},
                                     {"--tls-key", &opts.tls_key}})
    if (!file->empty() && ::access(file->c_str(), R_OK) != 0)
      return fail(std::string(option) + " " + *file + ": " + std::strerror(errno));
  if (!opts.creds.empty() &&
      (s = natsOptions_SetUserCredentialsFromFiles(raw, opts.creds.c_str(), nullptr)) != NATS_OK)
    return fail("--creds " + opts.creds + ": " + describe(s));
  if (tls && (s = natsOptions_SetSecure(raw, true)) != NATS_OK) return fail("TLS: " + describe(s));
  if (!opts.tls_ca.empty() &&
      (s = natsOptions_LoadCATrustedCertificates(raw, opts.tls_ca.c_str())) != NATS_OK)
    return fail("--tls-ca " + opts.tls_ca + ": " + describe(s));
  if (!opts.tls_cert.empty() && (s = natsOptions_LoadCertificatesChain(
                                     raw, opts.tls_cert.c_str(), opts.tls_key.c_str())) != NATS_OK)
    return fail("--tls-cert " + opts.tls_cert + ", --tls-key " + opts.tls_key + ": " + describe(s));
  return kExitOk;
}

}  // namespace

const char kOptionsHelp[] =
    "      --creds FILE     authenticate with this NATS credentials file (JWT and NKey seed);\n"
    "                       or give USER:PASSWORD@ in a URL\n"
    "      --tls-ca FILE    verify the servers with these CA certificates (PEM); TLS, as a\n"
    "                       tls:// URL also asks\n"
    "      --tls-cert FILE  the client certificate chain (PEM), with --tls-key FILE its key\n"
    "      --tls-key FILE\n";

std::vector<option> long_options(std::initializer_list<option> own) {
  std::vector<option> out(own);
  out.push_back({"creds", required_argument, nullptr, kOptCreds});
  out.push_back({"tls-ca", required_argument, nullptr, kOptTlsCa});
  out.push_back({"tls-cert", required_argument, nullptr, kOptTlsCert});
  out.push_back({"tls-key", required_argument, nullptr, kOptTlsKey});
  out.push_back({nullptr, 0, nullptr, 0});
  return out;
}

bool take_option(int c, const char* arg, ConnectOptions* out) {
  switch (c) {
    case kOptCreds:
      out->creds = arg;
      return true;
    case kOptTlsCa:
      out->tls_ca = arg;
      return true;
    case kOptTlsCert:
      out->tls_cert = arg;
      return true;
    case kOptTlsKey:
      out->tls_key = arg;
      return true;
    default:
      return false;
  }
}

int connect(const ConnectOptions& opts, const char* name, Connection* out, const Tuning& tuning) {
  OptionsPtr options;
  if (int rc = make_options(opts, name, tuning, &options); rc != kExitOk) return rc;
  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_Connect(&nc, options.get());
  if (s != NATS_OK) {
    note(redact(opts.urls) + ": " + describe(s));
    return kExitError;
  }
  out->nc.reset(nc);
  jsOptions jo;
  if (tuning.js != nullptr)
    jo = *tuning.js;
  else
    jsOptions_Init(&jo);
  if (jo.Wait == 0) jo.Wait = kRequestWaitMs;
  jsCtx* js = nullptr;
  if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK) {
    note(redact(opts.urls) + ": JetStream: " + describe(s));
    out->nc.reset();
    return kExitError;
  }
  out->js.reset(js);
  return kExitOk;
}

std::string describe(natsStatus s, jsErrCode code) {
  std::string out;
  switch (s) {
    case NATS_NO_SERVER:
      out = "no server answers (connection refused or timed out)";
      break;
    case NATS_CONNECTION_AUTH_FAILED:
      out = "authorization failed (user, password or credentials)";
      break;
    case NATS_NOT_PERMITTED:
      out = "not permitted";
      break;
    case NATS_SECURE_CONNECTION_REQUIRED:
      out = "the server requires TLS (a tls:// URL, or --tls-ca)";
      break;
    case NATS_SECURE_CONNECTION_WANTED:
      out = "TLS was asked for, but the server does not offer it";
      break;
    case NATS_SSL_ERROR:
      out = "TLS failed";
      break;
    case NATS_TIMEOUT:
      out = "timed out";
      break;
    case NATS_NO_RESPONDERS:
      out = "nobody answers (JetStream not enabled, or no leader at the moment)";
      break;
    case NATS_CONNECTION_CLOSED:
      out = "the connection is closed";
      break;
    case NATS_CONNECTION_DISCONNECTED:
      out = "disconnected (reconnecting)";
      break;
    default:
      out = natsStatus_GetText(s);
      break;
  }
  // The JetStream errors a user meets first, in words; the others with the server's text.
  const char* js_text = code == JSNotEnabledErr ? "JetStream is not enabled on the server"
                        : code == JSNotEnabledForAccountErr
                            ? "JetStream is not enabled for this account"
                        : code == JSStreamNotFoundErr   ? "stream not found"
                        : code == JSConsumerNotFoundErr ? "consumer not found"
                                                        : nullptr;
  const bool generic = s == NATS_ERR;  // "Error": nats.c's text below says it all
  if (js_text != nullptr) {
    out = js_text;
    // nats.c's own words, when they say more (the server's -ERR text, a file name, ...).
  } else if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0') {
    std::string text = last;
    // nats.c puts where it failed first: "(conn.c:2088): No server available ...".
    if (text[0] == '(')
      if (const size_t end = text.find("): "); end != std::string::npos) text.erase(0, end + 3);
    for (char& c : text)
      if (c == '\n' || c == '\r') c = ' ';
    if (generic && !text.empty())
      out = text;
    else if (!text.empty() && text != natsStatus_GetText(s) && s != NATS_NO_SERVER)
      out += ": " + text;
  }
  if (code != 0) out += " (JetStream error " + std::to_string(code) + ")";
  return out;
}

std::string redact(const std::string& urls) {
  std::string out;
  for (const std::string& u : split_urls(urls)) out += (out.empty() ? "" : ",") + redact_one(u);
  return out;
}

}  // namespace relayctl::nats
