// The tests' own reader of a JetStream stream, written against nats.c and nothing of relayfs
// (not relayctl fetch): every message with its stream sequence, subject, the headers of the
// ship contract (/tmp/spec/ship-contract.md, relayctl(1)) and payload; and a check of the
// contract's promises over them: one group per (host, channel, cpu, generation), each message
// once, what was duplicated, and each group's bytes in Relayfs-Subbuf order.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace relayfs::test {

struct StreamMessage {
  uint64_t seq = 0;  // stream sequence
  std::string subject;
  std::map<std::string, std::string> headers;  // every header (its first value)
  // The contract's headers; empty or nullopt where the message lacks one or it does not parse.
  std::string host;                // Relayfs-Host
  std::string channel;             // Relayfs-Channel
  std::optional<int> cpu;          // Relayfs-Cpu
  std::optional<uint64_t> subbuf;  // Relayfs-Subbuf
  std::string generation;          // Relayfs-Generation
  std::string msg_id;              // Nats-Msg-Id
  std::string payload;             // the bytes, as stored
};

enum class StreamReadMethod {
  // An ordered push consumer (ephemeral, flow-controlled): one pass, fast. Needs a stream with
  // one subject (or a filter), which it subscribes to.
  ordered_consumer,
  // js_GetMsg for each sequence from the first to the last: a request per message, slow, but
  // no consumer; sequences deleted from the stream are skipped.
  get_by_sequence,
};

struct StreamReadOptions {
  StreamReadMethod method = StreamReadMethod::ordered_consumer;
  std::string subject_filter;  // ordered_consumer: "" = the stream's only subject
  int timeout_ms = 30000;      // for the whole read
};

// Every message of `stream` up to its last sequence when the read began, in stream order, from
// the servers at urls ("nats://h:p,..."). Throws NatsError / std::runtime_error on failure or
// when the read does not complete within the timeout.
std::vector<StreamMessage> read_stream(const std::string& urls, const std::string& stream,
                                       const StreamReadOptions& options = {});

struct StreamGroupKey {
  std::string host, channel;
  int cpu = -1;
  std::string generation;
  auto operator<=>(const StreamGroupKey&) const = default;
};

struct StreamGroup {
  std::vector<uint64_t> subbufs;  // sorted, each once
  std::vector<uint64_t> seqs;     // the stream sequence of each, in the same order
  std::string bytes;              // the payloads concatenated in that order
  uint64_t gaps = 0;              // sub-buffer numbers missing between the first and the last
  // The most later messages of the group that a message came after in the stream (0: stream
  // order is Relayfs-Subbuf order; the contract allows WINDOW-1 after a failover).
  uint64_t max_delay = 0;
};

struct StreamReport {
  std::map<StreamGroupKey, StreamGroup> groups;
  // One line per message seen before: the same group and Relayfs-Subbuf, or the same
  // Nats-Msg-Id, as an earlier message ("seq 12: subbuf 3 of app/log cpu 0 gen g, as seq 9").
  // Its payload is not in the group's bytes.
  std::vector<std::string> duplicates;
  std::vector<uint64_t> unlabelled;  // messages without Relayfs-Cpu or Relayfs-Subbuf
  bool clean() const { return duplicates.empty() && unlabelled.empty(); }
};

StreamReport group_stream(const std::vector<StreamMessage>& messages);

}  // namespace relayfs::test
