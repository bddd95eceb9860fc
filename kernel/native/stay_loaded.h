// Keeps an addon's code mapped until the process exits.
//
// Node unloads an addon when the last env (main thread or worker) that loaded
// it is torn down, but code in it can still be called after that: a
// SharedArrayBuffer's deleter runs in whatever thread drops the last
// reference, and libuv runs a closed handle's callback after the env's cleanup
// hooks. Call this once from NAPI_MODULE_INIT / NODE_MODULE_INIT.
#ifndef UPCI_STAY_LOADED_H
#define UPCI_STAY_LOADED_H

#include <dlfcn.h>

#include <mutex>

namespace upci {

inline void StayLoaded(const void* any_symbol_of_the_addon) {
  static std::once_flag once;
  std::call_once(once, [any_symbol_of_the_addon] {
    Dl_info self;
    if (dladdr(any_symbol_of_the_addon, &self) != 0)
      dlopen(self.dli_fname, RTLD_NOW | RTLD_NODELETE);
  });
}

}  // namespace upci

#endif
