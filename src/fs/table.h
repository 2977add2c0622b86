// A table of shared objects by id under a lock of its own: the channel registry and the control
// connections. The lock is a leaf: nothing else is taken while it is held (registry.h).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace relayfs::fs {

template <typename Id, typename T>
class Table {
 public:
  void add(Id id, std::shared_ptr<T> v) {
    std::lock_guard lk(mu_);
    items_.emplace(id, std::move(v));
  }
  std::shared_ptr<T> find(Id id) {
    std::lock_guard lk(mu_);
    auto it = items_.find(id);
    return it == items_.end() ? nullptr : it->second;
  }
  // Takes it out of the table; its last reference frees it.
  std::shared_ptr<T> take(Id id) {
    std::lock_guard lk(mu_);
    auto it = items_.find(id);
    if (it == items_.end()) return nullptr;
    auto v = std::move(it->second);
    items_.erase(it);
    return v;
  }
  // Those for which keep(item) is true, in id order.
  template <typename Pred>
  std::vector<std::shared_ptr<T>> select(Pred keep) {
    std::lock_guard lk(mu_);
    std::vector<std::shared_ptr<T>> out;
    for (auto& [id, v] : items_)
      if (keep(*v)) out.push_back(v);
    return out;
  }
  // A fresh id, never given before.
  Id next_id() {
    std::lock_guard lk(mu_);
    return next_id_++;
  }

 private:
  std::mutex mu_;
  std::map<Id, std::shared_ptr<T>> items_;
  Id next_id_ = 1;
};

}  // namespace relayfs::fs
