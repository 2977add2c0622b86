// relayctl top: in a real terminal (tmux, a server of the test's own on a private socket, a
// detached session of a fixed size), against a mount where two channels are written at steady,
// different rates, one of them dropping records: the rows, their order, rates, fill and losses;
// the keys; the window's size; q, which must leave the terminal as it found it. Then --batch,
// standard output that is no terminal, channels that come and go while top reads them, and
// usage errors.
#include <atomic>

#include "relayctl/tool.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

// A record of the producer's: 100 bytes.
const std::string kRecord(99, 'r');

// Two global channels in DIR/app, written from one thread every 10 ms: "fast" 20 records a tick
// (200 KB/s), drained by a reader thread as it goes; "slow" 2 (20 KB/s), never read (its fill
// grows), and one record a tick larger than its sub-buffers, dropped (lost_too_big: DROPS/s
// about 100).
struct Producers {
  explicit Producers(const Mount& m) {
    REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
    fast = open_global(m.path("app"), "fast", 64 * 1024, 64);  // 4 MiB: 20 s to fill unread
    slow = open_global(m.path("app"), "slow", 4096, 256);      // 1 MiB: 50 s
    writer = std::thread([this] {
      const std::string too_big(5000, 'x');
      while (!stop.load()) {
        for (int i = 0; i < 20; ++i) relay_write(fast, kRecord.data(), kRecord.size());
        for (int i = 0; i < 2; ++i) relay_write(slow, kRecord.data(), kRecord.size());
        relay_write(slow, too_big.data(), too_big.size());  // fails: counted in lost_too_big
        std::this_thread::sleep_for(10ms);
      }
    });
    const std::string file = m.path("app/fast0");
    reader = std::thread([this, file] {
      const int fd = ::open(file.c_str(), O_RDONLY);
      if (fd < 0) return;
      char buf[65536];
      while (!stop.load())
        if (::read(fd, buf, sizeof buf) <= 0) std::this_thread::sleep_for(1ms);
      ::close(fd);
    });
  }
  ~Producers() {
    stop = true;
    writer.join();
    reader.join();
    relay_close(fast);
    relay_close(slow);
  }
  rchan* fast;
  rchan* slow;
  std::atomic<bool> stop{false};
  std::thread writer, reader;
};

// The words of each row of a view (the lines after the column titles), and its header lines.
struct Table {
  std::vector<std::string> header;             // the lines before the titles
  std::vector<std::string> titles;             // the titles' words
  std::vector<std::vector<std::string>> rows;  // WRITE READ FILL DROPS LOST NAME
  // The row whose last word is name; empty if none is.
  std::vector<std::string> row(const std::string& name) const {
    for (const auto& r : rows)
      if (!r.empty() && r.back() == name) return r;
    return {};
  }
  // Column i of that row; "" if there is none.
  std::string cell(const std::string& name, size_t i) const {
    const auto r = row(name);
    return i < r.size() ? r[i] : "";
  }
  // Its place from the top; -1 if none.
  int place(const std::string& name) const {
    for (size_t i = 0; i < rows.size(); ++i)
      if (!rows[i].empty() && rows[i].back() == name) return static_cast<int>(i);
    return -1;
  }
};

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
}

// The views in text (a screen, or a batch's snapshots): each begins at a "relayctl top - " line.
std::vector<Table> tables(const std::string& text) {
  std::vector<Table> out;
  std::istringstream in(text);
  bool in_rows = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("relayctl top - ", 0) == 0) {
      out.emplace_back();
      in_rows = false;
    }
    if (out.empty()) continue;
    const auto w = words(line);
    if (!in_rows && !w.empty() && w[0] == "WRITE/s") {
      out.back().titles = w;
      in_rows = true;
    } else if (in_rows && !w.empty()) {
      out.back().rows.push_back(w);
    } else if (!in_rows) {
      out.back().header.push_back(line);
    }
  }
  return out;
}

bool zero(const std::string& v) {
  return v == "0" || v == "0B" || v == "0.0%";
}
bool known(const std::string& v) {
  return !v.empty() && v != "-";
}

// A tmux server of the test's own: its socket in a private directory, no configuration file,
// one detached session "top" of cols x rows running command. The destructor kills the server
// (kill-server, then SIGKILL to its pid if it is still there), and so whatever runs in it.
class Tmux {
 public:
  Tmux(const std::string& command, int cols, int rows) {
    REQUIRE(run(tmux("new-session -d -s top -x " + std::to_string(cols) + " -y " +
                     std::to_string(rows) + " " + quote(command))) == 0);
    server_ = std::atoi(format("#{pid}").c_str());
    REQUIRE(server_ > 0);
  }
  ~Tmux() {
    run(tmux("kill-server") + " 2>/dev/null");
    const auto until = Clock::now() + 3s;
    while (running() && Clock::now() < until) std::this_thread::sleep_for(10ms);
    if (running()) ::kill(server_, SIGKILL);
  }
  Tmux(const Tmux&) = delete;
  Tmux& operator=(const Tmux&) = delete;

  std::string screen() const { return capture(tmux("capture-pane -p -t top")); }
  // A tmux format about the pane, e.g. "#{alternate_on}".
  std::string format(const std::string& f) const {
    std::string s = capture(tmux("display-message -p -t top " + quote(f)));
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  void keys(const std::string& k) const { CHECK(run(tmux("send-keys -t top " + k)) == 0); }
  void resize(int cols, int rows) const {
    CHECK(run(tmux("resize-window -t top -x " + std::to_string(cols) + " -y " +
                   std::to_string(rows))) == 0);
  }
  // Waits up to limit for the screen to satisfy pred; returns the last screen read.
  template <typename P>
  std::string wait_screen(P pred, std::chrono::milliseconds limit = 10s) const {
    std::string s;
    wait_for([&] { return pred(s = screen()); }, limit);
    return s;
  }

 private:
  static std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  }
  std::string tmux(const std::string& args) const {
    return "env -u TMUX tmux -f /dev/null -S '" + dir_.path("sock") + "' " + args;
  }
  // The server is no child of the test (tmux daemonizes): its pid is checked to still be a
  // tmux before any signal.
  bool running() const {
    return read_file("/proc/" + std::to_string(server_) + "/comm").rfind("tmux", 0) == 0;
  }
  TempDir dir_;
  pid_t server_ = -1;
};

// Without tmux the terminal tests are skipped, with a message (scripts/deps installs it).
bool have_tmux() {
  if (run("command -v tmux >/dev/null 2>&1") == 0) return true;
  MESSAGE("skipped: tmux is not installed (scripts/deps installs it)");
  return false;
}

}  // namespace

TEST_CASE("top: in a terminal, the channels by write rate with fill and losses; q restores it") {
  if (!have_tmux()) return;
  Mount m;
  Producers p(m);
  const std::string fast = m.path("app/fast"), slow = m.path("app/slow");
  // The shell around relayctl notes the terminal's modes before and says whether they are the
  // same after, and how relayctl exited, on the main screen.
  Tmux t("printf 'before top\\n'; s=$(stty -g); '" + relayctl_path() + "' top '" + m.dir +
             "'; rc=$?; [ \"$(stty -g)\" = \"$s\" ] && echo 'terminal modes restored'; "
             "echo \"relayctl exited $rc\"; exec sleep 600",
         160, 40);

  // Rates need two readings: wait for a view that has them for both channels, well into the
  // steady stream.
  std::this_thread::sleep_for(1500ms);
  const std::string screen = t.wait_screen([&](const std::string& s) {
    const auto v = tables(s);
    return v.size() == 1 && known(v[0].cell(fast, 0)) && known(v[0].cell(slow, 0));
  });
  INFO("the screen:\n" << screen);
  CHECK(t.format("#{alternate_on}") == "1");
  CHECK(screen.find("before top") == std::string::npos);  // the main screen is not shown
  const auto v = tables(screen);
  REQUIRE(v.size() == 1);
  CHECK(v[0].header.at(0).find("2 channels, 2 buffers") != std::string::npos);
  CHECK(v[0].header.at(1).rfind("Total: write ", 0) == 0);
  CHECK(v[0].titles ==
        std::vector<std::string>{"WRITE/s", "READ/s", "FILL", "DROPS/s", "LOST/s", "CHANNEL"});
  const auto f = v[0].row(fast), s = v[0].row(slow);
  REQUIRE(f.size() == 6);
  REQUIRE(s.size() == 6);
  CHECK(v[0].place(fast) == 0);  // the faster writer first
  CHECK(v[0].place(slow) == 1);
  CHECK(v[0].rows.size() == 2);
  CHECK_FALSE(zero(f[0]));  // WRITE/s
  CHECK_FALSE(zero(s[0]));
  CHECK_FALSE(zero(f[1]));  // READ/s: fast has a reader
  CHECK(zero(s[1]));        // slow has none
  CHECK(s[2].back() == '%');
  CHECK_FALSE(zero(s[2]));  // FILL: slow is never read
  CHECK(zero(f[3]));        // DROPS/s
  CHECK_FALSE(zero(s[3]));  // slow drops its too-big records
  CHECK(zero(f[4]));        // LOST/s: no bytes lost
  CHECK(zero(s[4]));

  // p: a row per buffer; a narrower window (SIGWINCH) cuts the lines.
  {
    t.keys("p");
    const std::string per_buffer = t.wait_screen([&](const std::string& sc) {
      const auto w = tables(sc);
      return w.size() == 1 && w[0].titles.size() == 6 && w[0].titles[5] == "BUFFER";
    });
    INFO("per buffer:\n" << per_buffer);
    const auto b = tables(per_buffer);
    REQUIRE(b.size() == 1);
    CHECK(b[0].place(fast + "0") == 0);
    CHECK(b[0].place(slow + "0") == 1);
    t.resize(60, 20);  // SIGWINCH
    const std::string narrow = t.wait_screen([&](const std::string& sc) {
      return sc.find(fast + "0") == std::string::npos && sc.find("BUFF") != std::string::npos;
    });
    INFO("60 columns:\n" << narrow);
    std::istringstream in(narrow);
    size_t lines = 0;
    for (std::string line; std::getline(in, line); ++lines) CHECK(line.size() <= 60);
    CHECK(lines <= 20);
    CHECK(narrow.rfind("relayctl top - ", 0) == 0);
  }

  // q: relayctl exits 0, the main screen is back as it was, and the terminal's modes.
  t.keys("q");
  const std::string after = t.wait_screen(
      [](const std::string& sc) { return sc.find("relayctl exited") != std::string::npos; });
  INFO("after q:\n" << after);
  CHECK(after.find("relayctl exited 0") != std::string::npos);
  CHECK(after.find("terminal modes restored") != std::string::npos);
  CHECK(after.rfind("before top", 0) == 0);
  CHECK(after.find("WRITE/s") == std::string::npos);
  CHECK(t.format("#{alternate_on}") == "0");
  CHECK(t.format("#{cursor_flag}") == "1");
}

TEST_CASE("top: Ctrl-Z gives the terminal back until SIGCONT; SIGTERM ends it, restored") {
  if (!have_tmux()) return;
  Mount m;
  Producers p(m);
  // A shell without job control: it waits on while relayctl is stopped.
  Tmux t("printf 'before top\\n'; '" + relayctl_path() + "' top '" + m.dir +
             "'; echo \"relayctl exited $?\"; exec sleep 600",
         120, 30);
  auto on_screen = [](const char* text) {
    return [text](const std::string& sc) { return sc.find(text) != std::string::npos; };
  };
  t.wait_screen(on_screen("CHANNEL"));
  CHECK(t.format("#{alternate_on}") == "1");
  // The relayctl in the pane: the shell's child.
  std::string pid = capture("pgrep -P " + t.format("#{pane_pid}") + " -x relayctl | head -1");
  while (!pid.empty() && pid.back() == '\n') pid.pop_back();
  REQUIRE_FALSE(pid.empty());

  t.keys("C-z");  // SIGTSTP: the main screen and the cursor back, then stopped
  CHECK(wait_for([&] { return proc_state("/proc/" + pid) == 'T'; }));
  const std::string stopped = t.wait_screen(on_screen("before top"));
  CHECK(stopped.find("CHANNEL") == std::string::npos);
  CHECK(t.format("#{alternate_on}") == "0");
  CHECK(t.format("#{cursor_flag}") == "1");
  CHECK(run("kill -CONT " + pid) == 0);  // as fg would: the view again
  CHECK(wait_for([&] { return t.format("#{alternate_on}") == "1"; }));
  t.wait_screen(on_screen("CHANNEL"));
  CHECK(t.format("#{cursor_flag}") == "0");

  CHECK(run("kill -TERM " + pid) == 0);
  const std::string after = t.wait_screen(on_screen("relayctl exited"));
  INFO(after);
  CHECK(after.find("relayctl exited 0") != std::string::npos);
  CHECK(after.rfind("before top", 0) == 0);
  CHECK(t.format("#{alternate_on}") == "0");
}

TEST_CASE("top --batch -n 2: two plain snapshots with rates, the faster writer first") {
  Mount m;
  Producers p(m);
  const std::string fast = m.path("app/fast"), slow = m.path("app/slow");
  std::this_thread::sleep_for(300ms);
  SUBCASE("--batch") {
    const Outcome o = relayctl("top --batch -n 2 -d 0.5 " + m.dir);
    INFO(o.out << o.err);
    CHECK(o.status == 0);
    CHECK(o.err.empty());
    CHECK(o.out.find('\033') == std::string::npos);  // no escape sequence
    const auto v = tables(o.out);
    REQUIRE(v.size() == 2);
    for (const Table& s : v) {
      CHECK(s.place(fast) == 0);
      CHECK(s.place(slow) == 1);
      CHECK(s.rows.size() == 2);
      REQUIRE(s.row(fast).size() == 6);
      REQUIRE(s.row(slow).size() == 6);
      CHECK_FALSE(zero(s.cell(fast, 0)));  // WRITE/s
      CHECK(known(s.cell(fast, 0)));
      CHECK_FALSE(zero(s.cell(slow, 3)));  // DROPS/s
      CHECK(known(s.cell(slow, 3)));
    }
  }
  SUBCASE("standard output no terminal, no PATH: every relayfs mount, a row per buffer") {
    const Outcome o = relayctl("top -n 1 -d 0.3 --per-buffer");
    INFO(o.out << o.err);
    CHECK(o.status == 0);
    const auto v = tables(o.out);
    REQUIRE(v.size() == 1);
    CHECK(v[0].titles.back() == "BUFFER");
    CHECK(v[0].place(fast + "0") >= 0);
    CHECK(v[0].place(slow + "0") > v[0].place(fast + "0"));
  }
}

TEST_CASE("top: channels that come and go between and during readings are no error") {
  Mount m;
  REQUIRE(::mkdir(m.path("churn").c_str(), 0755) == 0);
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    // Per-CPU channels, opened and closed without a pause: their files appear and go while
    // top lists and reads them.
    for (int i = 0; !stop.load(); ++i) {
      const std::string name = "c" + std::to_string(i % 4);
      rchan* c = relay_open(name.c_str(), m.path("churn").c_str(), 4096, 2, nullptr, nullptr);
      if (c) relay_close(c);
    }
  });
  const Outcome o = relayctl("top -b -n 4 -d 0.2 " + m.dir);
  stop = true;
  churn.join();
  INFO(o.out << o.err);
  CHECK(o.status == 0);
  CHECK(o.err.empty());
  CHECK(tables(o.out).size() == 4);
}

TEST_CASE("top: usage errors and a PATH that is not there") {
  Mount m;
  CHECK(relayctl("top --delay 0 " + m.dir).status == 2);
  CHECK(relayctl("top --delay x " + m.dir).status == 2);
  CHECK(relayctl("top -n 0 " + m.dir).status == 2);
  CHECK(relayctl("top --bogus").status == 2);
  const Outcome missing = relayctl("top -b -n 1 " + m.path("nothing"));
  CHECK(missing.status == 1);
  CHECK(missing.err.find("nothing: No such file or directory") != std::string::npos);
  const Outcome help = relayctl("top --help");
  CHECK(help.status == 0);
  CHECK(help.out.find("--batch") != std::string::npos);
}
