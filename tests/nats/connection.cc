#include "nats/connection.h"

#include <vector>

namespace relayfs::test {

NatsError::NatsError(const std::string& what, natsStatus status, jsErrCode code)
    : std::runtime_error([&] {
        std::string m = what + ": " + natsStatus_GetText(status);
        if (code != 0) m += " (JetStream error " + std::to_string(code) + ")";
        if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0')
          m += std::string(" [") + last + "]";
        return m;
      }()),
      status(status),
      code(code) {}

void nats_check(natsStatus s, const std::string& what, jsErrCode code) {
  if (s != NATS_OK) throw NatsError(what, s, code);
}

NatsConnection::NatsConnection(const std::string& urls, std::chrono::milliseconds wait,
                               const jsOptions* js_options) {
  std::vector<std::string> list;
  for (size_t at = 0; at <= urls.size();) {
    size_t comma = urls.find(',', at);
    if (comma == std::string::npos) comma = urls.size();
    if (comma > at) list.push_back(urls.substr(at, comma - at));
    at = comma + 1;
  }
  std::vector<const char*> servers;
  for (const auto& u : list) servers.push_back(u.c_str());

  natsOptions* opts = nullptr;
  nats_check(natsOptions_Create(&opts), "natsOptions_Create");
  natsStatus s = natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size()));
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 2000);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 100);
  // Publishes made while reconnecting wait in the client (up to 64 MiB) instead of failing.
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, 64 << 20);
  if (s == NATS_OK) s = natsConnection_Connect(&nc_, opts);
  natsOptions_Destroy(opts);
  nats_check(s, "connect to " + urls);

  jsOptions jo;
  if (js_options != nullptr)
    jo = *js_options;
  else
    jsOptions_Init(&jo);
  jo.Wait = wait.count();
  s = natsConnection_JetStream(&js_, nc_, &jo);
  if (s != NATS_OK) {
    natsConnection_Destroy(nc_);
    nats_check(s, "natsConnection_JetStream");
  }
}

NatsConnection::~NatsConnection() {
  jsCtx_Destroy(js_);
  natsConnection_Destroy(nc_);
}

void add_stream(jsCtx* js, const std::string& name, const std::string& subject, int replicas,
                bool memory) {
  const char* subjects[] = {subject.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Replicas = replicas;
  cfg.Storage = memory ? js_MemoryStorage : js_FileStorage;
  cfg.Duplicates = std::chrono::nanoseconds(std::chrono::minutes(2)).count();
  jsErrCode code = static_cast<jsErrCode>(0);
  nats_check(js_AddStream(nullptr, js, &cfg, nullptr, &code),
             "create stream " + name + " (R" + std::to_string(replicas) + ")", code);
}

}  // namespace relayfs::test
