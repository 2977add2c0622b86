#include "nats/stream_reader.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <set>
#include <stdexcept>

#include "nats/connection.h"

namespace relayfs::test {

namespace {

using Clock = std::chrono::steady_clock;

template <typename T>
std::optional<T> parse_number(const std::string& s) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::string header(const StreamMessage& m, const char* key) {
  const auto it = m.headers.find(key);
  return it == m.headers.end() ? std::string() : it->second;
}

StreamMessage to_message(natsMsg* msg, uint64_t seq) {
  StreamMessage m;
  m.seq = seq;
  m.subject = natsMsg_GetSubject(msg);
  const char** keys = nullptr;
  int count = 0;
  if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
    for (int k = 0; k < count; ++k) {
      const char* value = nullptr;
      if (natsMsgHeader_Get(msg, keys[k], &value) == NATS_OK && value != nullptr)
        m.headers.emplace(keys[k], value);
    }
    free(static_cast<void*>(keys));
  }
  m.host = header(m, "Relayfs-Host");
  m.channel = header(m, "Relayfs-Channel");
  m.cpu = parse_number<int>(header(m, "Relayfs-Cpu"));
  m.subbuf = parse_number<uint64_t>(header(m, "Relayfs-Subbuf"));
  m.generation = header(m, "Relayfs-Generation");
  m.msg_id = header(m, "Nats-Msg-Id");
  if (const char* data = natsMsg_GetData(msg); data != nullptr)
    m.payload.assign(data, static_cast<size_t>(natsMsg_GetDataLength(msg)));
  return m;
}

struct StreamBounds {
  uint64_t first = 0, last = 0, msgs = 0;
  std::vector<std::string> subjects;
};

StreamBounds bounds_of(NatsConnection& conn, const std::string& stream) {
  jsStreamInfo* si = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  nats_check(js_GetStreamInfo(&si, conn.js(), stream.c_str(), nullptr, &code),
             "stream info of " + stream, code);
  StreamBounds b{si->State.FirstSeq, si->State.LastSeq, si->State.Msgs, {}};
  for (int i = 0; si->Config != nullptr && i < si->Config->SubjectsLen; ++i)
    b.subjects.emplace_back(si->Config->Subjects[i]);
  jsStreamInfo_Destroy(si);
  return b;
}

void read_ordered(NatsConnection& conn, const std::string& stream, const StreamBounds& b,
                  const StreamReadOptions& options, Clock::time_point deadline,
                  std::vector<StreamMessage>& out) {
  std::string subject = options.subject_filter;
  if (subject.empty()) {
    if (b.subjects.size() != 1)
      throw std::runtime_error("read_stream: stream " + stream +
                               " has several subjects: give a subject_filter or read by sequence");
    subject = b.subjects[0];
  }
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream.c_str();
  so.Ordered = true;
  natsSubscription* sub = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  nats_check(js_SubscribeSync(&sub, conn.js(), subject.c_str(), nullptr, &so, &code),
             "ordered consumer on " + stream, code);
  // The ephemeral consumer goes with the subscription (Unsubscribe deletes it; since nats.c
  // 3.4 Destroy alone would not).
  struct SubGuard {
    natsSubscription* s;
    ~SubGuard() {
      natsSubscription_Unsubscribe(s);
      natsSubscription_Destroy(s);
    }
  } guard{sub};
  uint64_t seq = 0;
  // Up to the last sequence, or as many messages as the stream had (its last may be deleted).
  while (seq < b.last && out.size() < b.msgs) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw std::runtime_error("read_stream: " + stream + " read up to seq " + std::to_string(seq) +
                               " of " + std::to_string(b.last) + " in time");
    natsMsg* msg = nullptr;
    const natsStatus s = natsSubscription_NextMsg(&msg, sub, left.count());
    if (s == NATS_TIMEOUT) continue;
    nats_check(s, "next message of " + stream);
    jsMsgMetaData* meta = nullptr;
    const natsStatus ms = natsMsg_GetMetaData(&meta, msg);
    if (ms != NATS_OK) {
      natsMsg_Destroy(msg);
      nats_check(ms, "metadata of a message of " + stream);
    }
    seq = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
    if (seq <= b.last) out.push_back(to_message(msg, seq));
    natsMsg_Destroy(msg);
  }
}

void read_by_sequence(NatsConnection& conn, const std::string& stream, const StreamBounds& b,
                      Clock::time_point deadline, std::vector<StreamMessage>& out) {
  for (uint64_t seq = b.first; seq != 0 && seq <= b.last; ++seq) {
    if (Clock::now() > deadline)
      throw std::runtime_error("read_stream: " + stream + " read up to seq " + std::to_string(seq) +
                               " of " + std::to_string(b.last) + " in time");
    natsMsg* msg = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetMsg(&msg, conn.js(), stream.c_str(), seq, nullptr, &code);
    if (s == NATS_NOT_FOUND || code == JSNoMessageFoundErr) continue;  // deleted
    nats_check(s, "message " + std::to_string(seq) + " of " + stream, code);
    out.push_back(to_message(msg, seq));
    natsMsg_Destroy(msg);
  }
}

std::string describe(const StreamGroupKey& k) {
  return k.channel + " cpu " + std::to_string(k.cpu) + " gen " + k.generation +
         (k.host.empty() ? "" : " host " + k.host);
}

}  // namespace

std::vector<StreamMessage> read_stream(const std::string& urls, const std::string& stream,
                                       const StreamReadOptions& options) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(options.timeout_ms);
  NatsConnection conn(urls);
  const StreamBounds b = bounds_of(conn, stream);
  std::vector<StreamMessage> out;
  if (b.msgs == 0) return out;
  out.reserve(b.msgs);
  if (options.method == StreamReadMethod::ordered_consumer)
    read_ordered(conn, stream, b, options, deadline, out);
  else
    read_by_sequence(conn, stream, b, deadline, out);
  return out;
}

StreamReport group_stream(const std::vector<StreamMessage>& messages) {
  StreamReport report;
  struct Seen {
    uint64_t subbuf, seq;
    size_t index;  // this message's position among its group's messages in stream order
    const StreamMessage* m;
  };
  std::map<StreamGroupKey, std::vector<Seen>> by_group;
  std::map<std::string, uint64_t> ids;  // Nats-Msg-Id -> first seq
  for (const StreamMessage& m : messages) {
    if (!m.msg_id.empty()) {
      const auto [it, fresh] = ids.emplace(m.msg_id, m.seq);
      if (!fresh) {
        report.duplicates.push_back("seq " + std::to_string(m.seq) + ": Nats-Msg-Id " + m.msg_id +
                                    ", as seq " + std::to_string(it->second));
        continue;
      }
    }
    if (!m.cpu || !m.subbuf) {
      report.unlabelled.push_back(m.seq);
      continue;
    }
    auto& seen = by_group[{m.host, m.channel, *m.cpu, m.generation}];
    seen.push_back({*m.subbuf, m.seq, seen.size(), &m});
  }
  for (auto& [key, seen] : by_group) {
    std::stable_sort(seen.begin(), seen.end(),
                     [](const Seen& a, const Seen& b) { return a.subbuf < b.subbuf; });
    StreamGroup& g = report.groups[key];
    for (size_t i = 0; i < seen.size(); ++i) {
      if (!g.subbufs.empty() && g.subbufs.back() == seen[i].subbuf) {
        report.duplicates.push_back("seq " + std::to_string(seen[i].seq) + ": subbuf " +
                                    std::to_string(seen[i].subbuf) + " of " + describe(key) +
                                    ", as seq " + std::to_string(g.seqs.back()));
        continue;
      }
      if (!g.subbufs.empty()) g.gaps += seen[i].subbuf - g.subbufs.back() - 1;
      // Its place in stream order less its place in Relayfs-Subbuf order: how many later
      // messages of the group came before it (counting repeats of earlier ones, if any).
      if (seen[i].index > g.subbufs.size())
        g.max_delay = std::max<uint64_t>(g.max_delay, seen[i].index - g.subbufs.size());
      g.subbufs.push_back(seen[i].subbuf);
      g.seqs.push_back(seen[i].seq);
      g.bytes += seen[i].m->payload;
    }
  }
  return report;
}

}  // namespace relayfs::test
