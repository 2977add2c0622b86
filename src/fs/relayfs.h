// The relayfs daemon's state: the tree, the channels, the control connections, and the io_uring
// event loop that serves them. FUSE callbacks (ops.cc) run on libfuse's worker threads; control
// messages, doorbells and parked reads are handled on the loop thread (loop.cc, control.cc).
#pragma once

#include <fuse_lowlevel.h>
#include <liburing.h>

#include <atomic>
#include <boost/lockfree/queue.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/fd.h"
#include "proto/wire.h"
#include "fs/channel.h"
#include "fs/forget.h"
#include "fs/quota.h"
#include "fs/record.h"
#include "fs/tree.h"

namespace relayfs::fs {

struct Options {
  std::string fsname = "relayfs";  // SOURCE, shown in /proc/mounts
  bool blocking = false;           // -o blocking: an empty read waits for data
  bool allow_other = false;        // -o allow_other: users other than the mounter may use it
  bool read_only = false;          // -o ro: no new channels (EROFS), as no new files
  uint32_t readahead = 0;          // -o readahead=SIZE: the kernel's page-cache read-ahead
  uint32_t orphan_timeout = 0;     // -o orphan_timeout=S: free finalized channels unread after S
                                   // seconds (0: never)
  Limits limits = default_limits();  // -o user_memory, users_memory, user_channels, ...
};

// What a FUSE worker hands to the loop thread.
struct LoopEvent {
  enum Kind : uint32_t { kPark, kInterrupt, kFree } kind;
  uint64_t id;       // kInterrupt: parked read id; kFree: channel id
  ParkedRead* read;  // kPark
};

// A control connection from one producer process.
struct Connection {
  uint64_t id = 0;
  core::UniqueFd fd;
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::vector<gid_t> groups;
  bool refused = false;  // another user, and the mount has no allow_other: every request fails
  Charge charge;         // its user's connection count (quota.h), given back when it closes
  std::mutex send_mu;    // FUSE workers send buf_mapped events; the loop sends replies
  // The buffer this connection's reader mapped (relay_reader_open), if any. Loop thread only.
  std::shared_ptr<RelayBuffer> mapped;
  // Messages that must reach the peer but found its socket full (recordings' end events),
  // sent when it has room (RelayFs::send_queued). Guarded by send_mu; loop thread only.
  std::deque<std::vector<char>> outq;
  bool out_armed = false;  // a POLLOUT poll is pending
};

// The name the xattr on every directory gives: how a producer finds this daemon.
inline constexpr const char* kControlXattr = "user.relayfs.control";
// The root directory's: each user's channels, memory and connections, and the limits (quota.h).
inline constexpr const char* kUsersXattr = "user.relayfs.users";

class RelayFs {
 public:
  explicit RelayFs(const Options& o);
  ~RelayFs();

  // Creates the control socket and the ring and starts the loop thread. Returns 0 or -errno.
  int start();
  // Stops the loop thread; parked reads are answered with EOF. Call after the FUSE session ends.
  void stop();

  const std::string& control_name() const { return control_name_; }
  void set_session(fuse_session* se) { se_ = se; }

  Tree tree;

  // ---- FUSE side (ops.cc); each replies exactly once.
  void init(fuse_conn_info* conn);
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void forget(fuse_ino_t ino, uint64_t n);
  void getattr(fuse_req_t req, fuse_ino_t ino);
  void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set);
  void mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  void rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  void releasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  void release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void poll(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, fuse_pollhandle* ph);
  void ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, fuse_file_info* fi, unsigned flags);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
  void statfs(fuse_req_t req, fuse_ino_t ino);

  // Interrupt callback of a parked read (libfuse worker thread).
  void interrupt(uint64_t read_id);

  // ---- loop side (loop.cc, control.cc)
  size_t channel_count();
  size_t fixed_buffers_registered() const;

 private:
  int do_lookup(fuse_ino_t parent, const char* name, fuse_entry_param* e);
  // The text of kUsersXattr. Any thread; takes no tree lock (it lists /proc/self/fd).
  std::string usage_report() const;
  int node_stat(Node* n, struct stat* st);
  void post(const LoopEvent& ev);
  void park(fuse_req_t req, size_t size, std::shared_ptr<Source> b);
  void page_read(fuse_req_t req, void* file_handle, size_t size, off_t off);
  void notify_owner(const Source& s, bool mapped) noexcept;
  void maybe_remove(uint32_t channel_id) noexcept;
  void remove_drained(uint32_t channel_id);

  // Loop thread.
  void loop_main();
  void dispatch(uint64_t ud, int res);
  void on_accept();
  void on_connection(const std::shared_ptr<Connection>& c);
  void on_message(Connection& c, proto::Received& r);
  void close_connection(uint64_t id);
  // Says on stderr that a user was refused for limit `why`; at most once per 10 s. Loop thread.
  void note_refusal(uid_t uid, const char* what, const char* why);
  void handle_open(Connection& c, uint32_t seq, const char* payload, size_t len);
  void handle_close(Connection& c, uint32_t seq, const char* payload, size_t len);
  void handle_consumed(Connection& c, const char* payload, size_t len);
  void handle_reader_open(Connection& c, uint32_t seq, const char* payload, size_t len);
  // The buffer of relay file ino, if c may read it: 0, ENOENT, EINVAL (the merged view), EACCES.
  int readable_buffer(const Connection& c, uint64_t ino, std::shared_ptr<RelayBuffer>* out);
  void handle_reader_consumed(Connection& c, uint32_t seq, const char* payload, size_t len);
  void handle_control(Connection& c, uint32_t seq, const char* payload, size_t len);
  void handle_control_done(Connection& c, uint32_t seq, const char* payload, size_t len);
  struct PendingControl {
    uint64_t requester = 0;  // connection that asked
    uint32_t seq = 0;        // its request's seq, echoed in the reply
    uint64_t producer = 0;   // connection that was asked
  };
  void answer_control(const PendingControl& p, int status);
  // Recording to disk (record.cc).
  void handle_record(Connection& c, proto::Received& r);
  void handle_record_stop(Connection& c);
  void record_step(Recording& r);
  void submit_record_write(Recording& r);
  void on_record_write(uint64_t id, int res);
  void finish_record_extent(Recording& r);
  void submit_index_write(Recording& r);
  void resubmit_index_write(Recording& r);
  void on_index_write(uint64_t id, int res);
  void on_index_deadline(uint64_t id);
  void send_record_event(Recording& r, proto::RecordKind kind);
  void end_recording(Recording& r, RecordEnd how, int err);
  void drop_recordings(uint64_t conn_id);
  void stop_recordings(uint64_t conn_id, bool forget);
  void end_after_write(Recording& r, int res, RecordEnd how);
  void reap_recordings();
  // The control connection with this id, if it is still there. Any thread.
  std::shared_ptr<Connection> connection(uint64_t id);
  // Has the loop call on_conn_writable when c's socket has room. Loop thread, c.send_mu held.
  void arm_out(Connection& c);
  // Sends msg on c; if the socket is full, queues it when must, else drops it. Loop thread.
  void send_queued(Connection& c, std::vector<char> msg, bool must);
  void on_conn_writable(uint64_t conn_id);
  // Closes fd through the ring: a filesystem's flush on close runs on a kernel worker, not here.
  void close_later(core::UniqueFd fd);
  // Cancels the request with user_data ud, if still pending.
  void cancel(uint64_t ud);
  void drop_controls(uint64_t conn_id);
  void finalize_channel(const std::shared_ptr<Channel>& ch);
  void free_channel(uint32_t id);
  void on_doorbell(uint32_t channel_id);
  // -o orphan_timeout (expire.cc): the loop's timer, and what it frees when it fires.
  void arm_expiry();
  void expire_orphans();
  void drain_events();
  void service(const std::shared_ptr<Source>& s);
  void finish_read(ParkedRead* pr, const char* data, ssize_t n);
  int register_buffer(RelayBuffer& b);
  void unregister_buffer(RelayBuffer& b);
  io_uring_sqe* sqe();
  void watch(int fd, uint64_t user_data);
  void retire(uint64_t user_data);

  Options opts_;
  // Declared before the channels and connections whose charges it holds, so it outlives them.
  Quota quota_;
  FdBudget fds_;                                               // loop thread
  std::chrono::steady_clock::time_point next_refusal_note_{};  // loop thread
  uint64_t refusals_unsaid_ = 0;                               // loop thread
  fuse_session* se_ = nullptr;
  std::string control_name_;
  core::UniqueFd listen_fd_;
  core::UniqueFd notify_fd_;  // eventfd: FUSE workers wake the loop
  io_uring ring_{};
  bool ring_ok_ = false;
  std::thread loop_;
  std::atomic<bool> stopping_{false};
  boost::lockfree::queue<LoopEvent> events_{1024};
  std::atomic<uint64_t> next_read_id_{1};

  // Guarded by tree.mu.
  std::map<uint32_t, std::shared_ptr<Channel>> channels_;
  uint32_t next_channel_id_ = 1;

  // Loop thread only.
  std::unordered_map<uint64_t, ParkedRead*> parked_;
  std::unordered_map<uint32_t, PendingControl> pending_controls_;  // by the seq sent to the producer
  uint32_t next_control_seq_ = 1;
  std::vector<bool> fixed_used_;
  std::unordered_map<uint64_t, std::unique_ptr<Recording>> recordings_;
  std::vector<uint64_t> reap_;  // ended recordings, freed at the end of the loop's pass
  __kernel_timespec expiry_tick_{};  // the expiry timer's period: read by the kernel while armed
  uint64_t next_recording_id_ = 1;

  // Tells the kernel which relay files left the tree, so that it forgets them and their
  // buffers can be freed (forget.h).
  Forgetter forgetter_;

  // Open relay files (FileHandle*, ops.cc): the kernel sends no RELEASE for those still open
  // when the session ends, so the destructor frees them.
  std::mutex handles_mu_;
  std::unordered_set<void*> open_handles_;
  void free_handles() noexcept;

  std::mutex conns_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> conns_;
  uint64_t next_conn_id_ = 1;
};

}  // namespace relayfs::fs
