// relayctl: the command-line tool for relayfs (relayctl(1)). One file per subcommand
// (write.cc, stat.cc and users.cc for stat --users, record.cc and its disk side record_disk.cc,
// control.cc for flush/reset/close; cli.cc parses and dispatches); this header holds what they
// share: exit statuses, error messages, number parsing and how a PATH names relay files.
//
// Two kinds of int, kept apart (issue 14, the errno rule of src/client/common.h):
// - Exit statuses (kExitOk, kExitError, kExitUsage) come only from main, the subcommands (cmd_*,
//   stat_users), the reporting helpers (usage_error, option_error, sys_error; control.cc's
//   explain, record.cc's create_error and Recorder::fail) and the steps of a subcommand that
//   report their own failures (write.cc's and record.cc's parse, record.cc's setup, control.cc's
//   run, stat.cc's walk and collect). Those are not errnos.
// - Every other function returning int returns 0 (or a count) on success and -errno on failure,
//   and passes such a value on as it is: users.cc's mount_root and read_usage, stat.cc's
//   read_row, write.cc's pump, record.cc's Recorder::receive and Recorder::start, report, and
//   record_disk.h's OutputDir and OutputFile. A positive errno appears only where errno is read,
//   right after the failed call (compared there, or negated at once); the reporting helpers
//   take -errno and call strerror(-err) themselves.
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
int cmd_ship(int argc, char** argv);
int cmd_fetch(int argc, char** argv);
int cmd_flush(int argc, char** argv);
int cmd_reset(int argc, char** argv);
int cmd_close(int argc, char** argv);
// stat --users PATH (users.cc): the usage and limits of the mount that holds PATH.
int stat_users(const std::string& path, bool json);

// "relayctl: " + message on stderr. usage_error adds "Try 'relayctl CMD --help'." and returns
// kExitUsage. sys_error prints "PATH: WHAT: strerror(-err)" ("PATH: strerror(-err)" if what is
// empty), err being -errno, and returns kExitError; report prints the same and returns err, for
// a function that reports its own failure and passes the -errno on.
int usage_error(const char* cmd, const std::string& message);
int sys_error(const std::string& path, const std::string& what, int err);
int report(const std::string& path, const std::string& what, int err);
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

// "12.3 MiB", "45.6 KiB" or "789 B", for progress lines: small amounts do not show as 0.0 MiB.
std::string amount(double bytes);
// The head of a progress line: "12.3 MiB in 4.5 s, 2.7 MiB/s".
std::string amount_and_rate(double bytes, double seconds);

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
