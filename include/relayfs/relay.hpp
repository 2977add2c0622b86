// A thin RAII wrapper over the relayfs C API (relay.h). Errors throw std::system_error; the
// hot path (write, reserve, commit) returns like the C functions, so callers choose.
#pragma once

#include <relayfs/relay.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace relayfs {

class Channel {
 public:
  // relay_open; throws std::system_error with the errno on failure.
  Channel(const std::string& base_filename, const char* parent, size_t subbuf_size,
          size_t n_subbufs, const rchan_callbacks* cb = nullptr, void* private_data = nullptr)
      : chan_(relay_open(base_filename.c_str(), parent, subbuf_size, n_subbufs, cb, private_data)) {
    if (!chan_)
      throw std::system_error(errno, std::generic_category(), "relay_open " + base_filename);
  }
  // relay_open_opts: with RELAY_OVERWRITE or RELAY_BLOCKING.
  Channel(const std::string& base_filename, const char* parent, size_t subbuf_size,
          size_t n_subbufs, const relay_options& opts, const rchan_callbacks* cb = nullptr,
          void* private_data = nullptr)
      : chan_(relay_open_opts(base_filename.c_str(), parent, subbuf_size, n_subbufs, cb,
                              private_data, &opts)) {
    if (!chan_)
      throw std::system_error(errno, std::generic_category(), "relay_open " + base_filename);
  }
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  Channel(Channel&& o) noexcept : chan_(std::exchange(o.chan_, nullptr)) {}
  Channel& operator=(Channel&& o) noexcept {
    if (this != &o) {
      close();
      chan_ = std::exchange(o.chan_, nullptr);
    }
    return *this;
  }
  ~Channel() { close(); }

  // relay_write: true if the record was written; false if dropped (errno says why).
  bool write(const void* data, size_t length) noexcept {
    return relay_write(chan_, data, length) == 0;
  }
  void* reserve(size_t length) noexcept { return relay_reserve(chan_, length); }
  void commit(void* reserved, size_t count) noexcept { relay_commit(chan_, reserved, count); }
  void flush() { check(relay_flush(chan_), "relay_flush"); }
  void reset() { check(relay_reset(chan_), "relay_reset"); }

  // relay_close; a channel closed twice is closed once.
  void close() noexcept {
    if (chan_) relay_close(std::exchange(chan_, nullptr));
  }

  rchan* get() const noexcept { return chan_; }

  // relay_buf_stats of buffer i.
  relay_stats stats(unsigned i) const {
    relay_stats st{};
    if (i >= chan_->n_buffers) throw std::out_of_range("relayfs::Channel::stats");
    check(relay_buf_stats(chan_->buf[i], &st), "relay_buf_stats");
    return st;
  }

 private:
  static void check(int rc, const char* what) {
    if (rc != 0) throw std::system_error(errno, std::generic_category(), what);
  }
  rchan* chan_;
};

// An mmap reader (relay_reader_open); closed by the destructor.
class Reader {
 public:
  explicit Reader(const std::string& path) : r_(relay_reader_open(path.c_str())) {
    if (!r_) throw std::system_error(errno, std::generic_category(), "relay_reader_open " + path);
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  Reader(Reader&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
  Reader& operator=(Reader&& o) noexcept {
    if (this != &o) {
      if (r_) relay_reader_close(r_);
      r_ = std::exchange(o.r_, nullptr);
    }
    return *this;
  }
  ~Reader() {
    if (r_) relay_reader_close(r_);
  }

  // relay_reader_next: true and *sb filled if a whole sub-buffer is ready.
  bool next(relay_subbuf* sb) {
    const int rc = relay_reader_next(r_, sb);
    if (rc < 0) throw std::system_error(errno, std::generic_category(), "relay_reader_next");
    return rc == 1;
  }
  bool valid(const relay_subbuf& sb) noexcept { return relay_reader_valid(r_, &sb) == 1; }
  void consumed(size_t n) {
    if (relay_reader_consumed(r_, n) != 0)
      throw std::system_error(errno, std::generic_category(), "relay_reader_consumed");
  }
  int fd() const noexcept { return r_->fd; }
  relay_reader* get() const noexcept { return r_; }

 private:
  relay_reader* r_;
};

}  // namespace relayfs
