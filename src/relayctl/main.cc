// relayctl: write standard input into a relay channel, show buffers' counters, record a channel
// to disk, read a NATS JetStream stream back into files, flush/reset/close a channel from outside
// (relayctl(1)). main() only dispatches to the subcommand.
#include <cstdio>
#include <cstring>

#include "relayctl/relayctl.h"

namespace {

constexpr const char* kUsage =
    "Usage: relayctl COMMAND [OPTIONS] ARGS...\n"
    "       relayctl COMMAND --help\n"
    "\n"
    "Commands:\n"
    "  write [OPTIONS] PATH          write standard input into channel PATH as records\n"
    "                                (one per line, or --record-size bytes each)\n"
    "  stat [--json] PATH...         the counters of every buffer of a file, a channel or a\n"
    "                                directory tree\n"
    "  stat --users [--json] PATH    each user's channels, connections and memory in the\n"
    "                                mount that holds PATH, and its limits\n"
    "  record [OPTIONS] PATH OUTDIR  drain channel PATH to files in OUTDIR until stopped\n"
    "                                (SIGINT, SIGTERM) or until the channel closes\n"
    "  ship [OPTIONS] PATH URL       carry channel PATH (or every channel under a directory) to\n"
    "                                a NATS JetStream stream, consuming only what it acknowledged\n"
    "  fetch [OPTIONS] URL OUTDIR    read a NATS JetStream stream that ship fills back into\n"
    "                                files, one per host, channel and CPU\n"
    "  flush PATH...                 ask the producer to flush, reset or close the channel,\n"
    "  reset PATH...                 if it allows outside control (RELAY_CONTROL,\n"
    "  close PATH...                 relayctl write --control)\n"
    "\n"
    "PATH names a channel by its base name in a mounted relayfs: /mnt/relay/app/log is the\n"
    "channel whose buffers are the files log0, log1, ... in /mnt/relay/app.\n"
    "Exit status: 0 success, 1 failure, 2 bad arguments. See relayctl(1).\n";

struct Command {
  const char* name;
  int (*run)(int, char**);
};

constexpr Command kCommands[] = {
    {"write", relayctl::cmd_write},
    {"stat", relayctl::cmd_stat},
    {"record", relayctl::cmd_record},
    {"ship", relayctl::cmd_ship},
    {"fetch", relayctl::cmd_fetch},
    {"flush", relayctl::cmd_flush},
    {"reset", relayctl::cmd_reset},
    {"close", relayctl::cmd_close},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return relayctl::kExitUsage;
  }
  const char* cmd = argv[1];
  if (std::strcmp(cmd, "--help") == 0 || std::strcmp(cmd, "-h") == 0 ||
      std::strcmp(cmd, "help") == 0) {
    std::fputs(kUsage, stdout);
    return relayctl::kExitOk;
  }
  for (const Command& c : kCommands)
    if (std::strcmp(cmd, c.name) == 0) return c.run(argc - 1, argv + 1);
  return relayctl::usage_error(nullptr, std::string("unknown command '") + cmd + "'");
}
