// Wakes a Node.js main thread from any other thread with one uv_async_send:
// the main thread's event loop runs a JS callback, with no V8 task posting
// and no promise in between. Atomics.waitAsync and postMessage both reach
// the event loop through a libuv async handle too, but through V8's task
// queue and a promise first: in the TCG bench that detour was a fifth to a
// third of a wake-up (BENCHMARKS.md).
//
// A waker is created by the thread whose loop it wakes and named by a small
// integer, so that a worker (another V8 isolate, the same process) can wake
// it: the table is process-wide and a wake of a closed waker does nothing.

#include <node_api.h>
#include <uv.h>

#include <cstdint>

#include "env_table.h"
#include "stay_loaded.h"

namespace {

struct Waker {
  uv_async_t async;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  uint32_t id;
};

upci::EnvTable<Waker> table;

napi_value Throw(napi_env env, const char* message) {
  napi_throw_error(env, "ERR_UPCI_WAKER", message);
  return nullptr;
}

void Run(uv_async_t* async) {
  auto* waker = reinterpret_cast<Waker*>(async->data);
  napi_env env = waker->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, receiver, result;
  // make_callback, not call_function: the promise jobs and nextTicks the
  // callback queues run before the loop goes back to sleep.
  if (napi_get_reference_value(env, waker->callback, &callback) == napi_ok &&
      napi_get_global(env, &receiver) == napi_ok)
    napi_make_callback(env, waker->context, receiver, callback, 0, nullptr,
                       &result);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_fatal_exception(env, error);
  }
  napi_close_handle_scope(env, scope);
}

// Unlisted first, so that no other thread can send to a handle being closed;
// the memory goes once libuv is done with the handle. When the thread's env is
// being torn down (the cleanup hook), no JS may run any more, so the async
// context (whose destroy hook is JS) and the reference are left to the env.
void Close(Waker* waker, bool env_alive) {
  table.Remove(waker->id);
  if (env_alive) {
    napi_delete_reference(waker->env, waker->callback);
    napi_async_destroy(waker->env, waker->context);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&waker->async), [](uv_handle_t* handle) {
    delete reinterpret_cast<Waker*>(handle->data);
  });
}

bool Argument(napi_env env, napi_callback_info info, napi_value* value) {
  size_t argc = 1;
  return napi_get_cb_info(env, info, &argc, value, nullptr, nullptr) ==
             napi_ok &&
         argc == 1;
}

bool Id(napi_env env, napi_callback_info info, uint32_t* id) {
  napi_value value;
  return Argument(env, info, &value) &&
         napi_get_value_uint32(env, value, id) == napi_ok;
}

// create(callback): id. The handle does not keep the loop alive.
napi_value Create(napi_env env, napi_callback_info info) {
  napi_value callback, name;
  napi_valuetype type;
  if (!Argument(env, info, &callback) ||
      napi_typeof(env, callback, &type) != napi_ok || type != napi_function)
    return Throw(env, "create(callback): callback must be a function");
  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok)
    return Throw(env, "create(callback): this thread has no event loop");
  auto* waker = new Waker{};
  waker->env = env;
  if (uv_async_init(loop, &waker->async, Run) != 0) {
    delete waker;
    return Throw(env, "create(callback): uv_async_init failed");
  }
  waker->async.data = waker;
  uv_unref(reinterpret_cast<uv_handle_t*>(&waker->async));
  napi_create_reference(env, callback, 1, &waker->callback);
  napi_create_string_utf8(env, "upci:interrupt-wake", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, nullptr, name, &waker->context);
  waker->id = table.Add(waker);
  napi_value id;
  napi_create_uint32(env, waker->id, &id);
  return id;
}

// wake(id): from any thread; wakes that coalesce run the callback once.
napi_value Wake(napi_env env, napi_callback_info info) {
  uint32_t id;
  if (!Id(env, info, &id)) return Throw(env, "wake(id): id must be a number");
  table.With(id, [](Waker* waker) { uv_async_send(&waker->async); });
  return nullptr;
}

// close(id): by the thread that created it; closing twice does nothing.
napi_value CloseWaker(napi_env env, napi_callback_info info) {
  uint32_t id;
  if (!Id(env, info, &id)) return Throw(env, "close(id): id must be a number");
  Waker* waker = table.Owned(id, env);
  if (waker != nullptr) Close(waker, true);
  return nullptr;
}

// A thread that exits with wakers open (a worker's env torn down) closes them.
void CloseAll(void* data) {
  for (Waker* waker : table.OwnedBy(static_cast<napi_env>(data)))
    Close(waker, false);
}

}  // namespace

NAPI_MODULE_INIT() {
  upci::StayLoaded(reinterpret_cast<const void*>(&Create));
  napi_property_descriptor functions[] = {
      {"create", nullptr, Create, nullptr, nullptr, nullptr, napi_default,
       nullptr},
      {"wake", nullptr, Wake, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"close", nullptr, CloseWaker, nullptr, nullptr, nullptr, napi_default,
       nullptr},
  };
  napi_define_properties(env, exports, 3, functions);
  napi_add_env_cleanup_hook(env, CloseAll, env);
  return exports;
}
