// What relayctl stat reads, shared with relayctl top (top.cc): the buffers a PATH names and each
// buffer's attributes (relay(7) "Attributes"), read from the user.relayfs.* extended attributes.
// Its int functions return exit statuses, as the steps of a subcommand do (relayctl.h), except
// read_row, which returns -errno.
#pragma once

#include <string>
#include <vector>

#include "proto/names.h"

namespace relayctl {

// A buffer's attributes, by their index in proto/names.h, as the daemon shows them (text).
struct Row {
  std::string path;
  std::string values[relayfs::proto::kAttrCount];
  const std::string& operator[](const char* name) const {
    return values[relayfs::proto::attr_index(name)];
  }
};

// Reads every attribute of path. Returns 0 or -errno (-ENODATA / -ENOTSUP: not a relay file).
int read_row(const std::string& path, Row* row);

// Adds the buffers PATH names to rows: a directory's (recursively, without merged views), a
// channel's (DIR/BASE: BASE0, BASE1, ...) or a single relay file's. Files and directories gone
// meanwhile are passed over. Returns an exit status; each failure is reported on stderr, or,
// with failures given, appended to it as the message (relayctl.h's error_text) instead.
int collect(const std::string& path, std::vector<Row>* rows,
            std::vector<std::string>* failures = nullptr);

}  // namespace relayctl
