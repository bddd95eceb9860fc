// Native handles named by small integers, process-wide, each belonging to the
// Node env (main thread or worker) that made it: another thread may name a
// handle (a worker waking the main thread), only its own env may close it,
// and an env torn down closes what it still has (its cleanup hook).
#ifndef UPCI_ENV_TABLE_H
#define UPCI_ENV_TABLE_H

#include <node_api.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace upci {

// T has a member `napi_env env`.
template <typename T>
class EnvTable {
 public:
  uint32_t Add(T* item) {
    std::lock_guard<std::mutex> guard(lock_);
    uint32_t id = next_id_++;
    items_.emplace(id, item);
    return id;
  }

  void Remove(uint32_t id) {
    std::lock_guard<std::mutex> guard(lock_);
    items_.erase(id);
  }

  // The handle `id` if `env` made it, else nullptr.
  T* Owned(uint32_t id, napi_env env) {
    std::lock_guard<std::mutex> guard(lock_);
    auto found = items_.find(id);
    return found != items_.end() && found->second->env == env ? found->second
                                                               : nullptr;
  }

  // Runs use(item) with the table locked, so that the handle cannot be
  // removed meanwhile; nothing runs when there is no such handle.
  template <typename Use>
  void With(uint32_t id, Use use) {
    std::lock_guard<std::mutex> guard(lock_);
    auto found = items_.find(id);
    if (found != items_.end()) use(found->second);
  }

  std::vector<T*> OwnedBy(napi_env env) {
    std::lock_guard<std::mutex> guard(lock_);
    std::vector<T*> mine;
    for (auto& [id, item] : items_)
      if (item->env == env) mine.push_back(item);
    return mine;
  }

 private:
  std::mutex lock_;
  std::unordered_map<uint32_t, T*> items_;
  uint32_t next_id_ = 1;
};

}  // namespace upci

#endif
