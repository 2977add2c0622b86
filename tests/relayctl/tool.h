// What the relayctl tests share: running relayctl (in the foreground with its status and
// output, or in the background to be signalled), temporary output directories, and files.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fs/helpers.h"

namespace relayfs::test {

inline std::string relayctl_path() {
  const char* p = std::getenv("RELAYCTL");
  REQUIRE_MESSAGE(p != nullptr, "RELAYCTL is not set");
  return p;
}

inline void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  REQUIRE(out.good());
}

// The lines of text whose first word is `first`, each split into its words.
inline std::vector<std::vector<std::string>> lines_starting(const std::string& text,
                                                            const std::string& first) {
  std::vector<std::vector<std::string>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> w;
    for (std::string s; f >> s;) w.push_back(s);
    if (!w.empty() && w[0] == first) out.push_back(w);
  }
  return out;
}

struct Outcome {
  int status = -1;  // exit status, or -1 if it did not exit normally
  std::string out, err;
};

// Runs `relayctl ARGS` through the shell (args are shell words; stdin may be redirected in
// them), with a 60 s limit.
inline Outcome relayctl(const std::string& args) {
  TempDir t;
  const std::string cmd = "timeout -s KILL 60 '" + relayctl_path() + "' " + args + " >'" +
                          t.path("out") + "' 2>'" + t.path("err") + "'";
  Outcome o;
  o.status = run(cmd);
  o.out = read_file(t.path("out"));
  o.err = read_file(t.path("err"));
  return o;
}

// Who runs relayctl, and where: uid/gid (no supplementary groups) unless uid is -1, in cwd
// unless it is empty.
struct RunAs {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = 0;
  std::string cwd;
};

// relayctl(args) as another user or in another directory. The output files are opened before
// the child drops to that user, who could not open them in this test's private directory.
inline Outcome relayctl(const std::string& args, const RunAs& as) {
  TempDir t;
  const std::string cmd = "exec timeout -s KILL 60 '" + relayctl_path() + "' " + args;
  const std::string out = t.path("out"), err = t.path("err");
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o < 0 || e < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0) ::_exit(126);
    if (!as.cwd.empty() && ::chdir(as.cwd.c_str()) != 0) ::_exit(126);
    if (as.uid != static_cast<uid_t>(-1) &&
        (::setgroups(0, nullptr) != 0 || ::setgid(as.gid) != 0 || ::setuid(as.uid) != 0))
      ::_exit(126);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  bool killed;
  const int st = wait_or_kill(pid, std::chrono::seconds(90), &killed);
  Outcome o;
  o.status = !killed && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  o.out = read_file(out);
  o.err = read_file(err);
  return o;
}

// relayctl in the background, stderr to err_file, stdout to /dev/null: for record.
inline pid_t spawn_relayctl(const std::vector<std::string>& args, const std::string& err_file) {
  const std::string prog = relayctl_path();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(err, 2);
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    std::vector<char*> argv{const_cast<char*>(prog.c_str())};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits up to limit for pid to exit; kills it if it does not. Returns its exit status, or -1
// (and fails the test) if it had to be killed or died of a signal.
inline int wait_exit(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  bool killed;
  const int st = wait_or_kill(pid, limit, &killed);
  if (killed) {
    FAIL_CHECK("relayctl did not exit in time");
    return -1;
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace relayfs::test
