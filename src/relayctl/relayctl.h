// relayctl: the command-line tool for relayfs (relayctl(1)). One file per subcommand
// (write.cc, stat.cc, record.cc and its disk side record_disk.cc); this header holds what they
// share: exit statuses, error messages, number parsing and how a PATH names relay files.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace relayctl {

// Exit statuses (relayctl(1) EXIT STATUS).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the command ran and failed: I/O, daemon, disk
inline constexpr int kExitUsage = 2;  // bad arguments: nothing was done

// The subcommands: each gets argv with argv[0] the subcommand's name and returns an exit status.
int cmd_write(int argc, char** argv);
int cmd_stat(int argc, char** argv);
int cmd_record(int argc, char** argv);
int cmd_flush(int argc, char** argv);
int cmd_reset(int argc, char** argv);
int cmd_close(int argc, char** argv);
// stat --users PATH (users.cc): the usage and limits of the mount that holds PATH.
int stat_users(const std::string& path, bool json);

// "relayctl: " + message on stderr. usage_error adds "Try 'relayctl CMD --help'." and returns
// kExitUsage; sys_error names the path and strerror(err) and returns kExitError.
int usage_error(const char* cmd, const std::string& message);
int sys_error(const std::string& path, const std::string& what, int err);
void note(const std::string& message);

// Before a subcommand's getopt_long loop: starts over at argv[1], messages our own (opterr 0).
void start_options();
// The usage error for what getopt_long returned, c: ':' a missing argument, else an unknown
// option. Call only in the loop (uses optind).
int option_error(const char* cmd, int c, char** argv);

// Parses a size: decimal digits with an optional K, M or G suffix (powers of 1024). False if
// the text is not such a number, or it overflows or is 0 and !allow_zero.
bool parse_size(const char* text, unsigned long long* out, bool allow_zero = false);
// Parses a decimal integer in [lo, hi].
bool parse_int(const char* text, long long lo, long long hi, long long* out);

// PATH split at its last '/': directory ("." if none) and file name. False if the name is
// empty (a trailing '/').
bool split_path(const std::string& path, std::string* dir, std::string* name);

// The buffer files of channel `name` in dir: name0 .. nameN-1, sorted by number, each one whose
// user.relayfs.channel attribute says `name` (not another channel's files that merely begin so).
// Empty if dir has none. Reading that attribute needs read permission on the file: when none
// was found and a candidate's attribute could not be read for EACCES, *denied (if given) is set:
// the channel may well be there, only not for the caller, who must not then take DIR/NAME for a
// single file (it would be the merged view, and the daemon refuses to record that: EINVAL).
std::vector<std::string> channel_buffers(const std::string& dir, const std::string& name,
                                         bool* denied = nullptr);

}  // namespace relayctl
