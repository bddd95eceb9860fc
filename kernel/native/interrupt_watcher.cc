// Interrupt fds watched by the event loop of the thread that handles them:
// a uv_poll_t per fd (epoll on Linux, kqueue on BSD, libuv's own backend),
// so a driver's interrupts reach its handler in its own thread with no other
// thread in between. For an eventfd ("counter") the count is read here and
// passed to the callback; for other fds the callback is told the fd is
// readable and reads it itself.
//
// A watcher is named by a small integer and belongs to the env (thread) that
// created it. unwatch() stops the poll before it returns, so the caller may
// close the fd right after; a thread torn down with watchers open (a worker
// terminated) stops and closes them in its cleanup hook, leaving the fds to
// whoever owns them.

#include <node_api.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <unistd.h>

#include "env_table.h"
#include "stay_loaded.h"

namespace {

struct Watcher {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int fd;
  bool counter;
  uint32_t id;
};

upci::EnvTable<Watcher> table;

napi_value Throw(napi_env env, const char* message) {
  napi_throw_error(env, "ERR_UPCI_INTERRUPT_WATCHER", message);
  return nullptr;
}

void Call(Watcher* watcher, double count) {
  napi_env env = watcher->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, receiver, argument, result;
  napi_create_double(env, count, &argument);
  // make_callback, not call_function: the promise jobs and nextTicks the
  // handler queues (RxJS, XState) run before the loop polls again.
  if (napi_get_reference_value(env, watcher->callback, &callback) == napi_ok &&
      napi_get_global(env, &receiver) == napi_ok)
    napi_make_callback(env, watcher->context, receiver, callback, 1, &argument,
                       &result);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_fatal_exception(env, error);
  }
  napi_close_handle_scope(env, scope);
}

void Readable(uv_poll_t* poll, int status, int events) {
  auto* watcher = reinterpret_cast<Watcher*>(poll->data);
  if (status < 0 || (events & UV_READABLE) == 0) return;
  if (!watcher->counter) return Call(watcher, 0);
  uint64_t count = 0;
  ssize_t n = read(watcher->fd, &count, sizeof count);
  // EAGAIN: another reader won the race; nothing to deliver.
  if (n != static_cast<ssize_t>(sizeof count) || count == 0) return;
  Call(watcher, static_cast<double>(count));
}

// The memory goes once libuv is done with the handle. When the thread's env
// is being torn down (the cleanup hook), no JS may run any more, so the async
// context (whose destroy hook is JS) and the reference are left to the env.
void Close(Watcher* watcher, bool env_alive) {
  table.Remove(watcher->id);
  uv_poll_stop(&watcher->poll);
  if (env_alive) {
    napi_delete_reference(watcher->env, watcher->callback);
    napi_async_destroy(watcher->env, watcher->context);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&watcher->poll), [](uv_handle_t* handle) {
    delete reinterpret_cast<Watcher*>(handle->data);
  });
}

// watch(fd, counter, callback): id. Like an open socket, a watched fd keeps
// the loop alive until unwatched.
napi_value Watch(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value args[3], name;
  napi_valuetype type;
  int32_t fd;
  bool counter;
  if (napi_get_cb_info(env, info, &argc, args, nullptr, nullptr) != napi_ok ||
      argc != 3 || napi_get_value_int32(env, args[0], &fd) != napi_ok ||
      fd < 0 || napi_get_value_bool(env, args[1], &counter) != napi_ok ||
      napi_typeof(env, args[2], &type) != napi_ok || type != napi_function)
    return Throw(env, "watch(fd, counter, callback): bad arguments");
  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok)
    return Throw(env, "watch: this thread has no event loop");
  auto* watcher = new Watcher{};
  watcher->env = env;
  watcher->fd = fd;
  watcher->counter = counter;
  int err = uv_poll_init(loop, &watcher->poll, fd);
  if (err != 0) {
    delete watcher;
    return Throw(env, uv_strerror(err));
  }
  watcher->poll.data = watcher;
  err = uv_poll_start(&watcher->poll, UV_READABLE, Readable);
  if (err != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&watcher->poll), [](uv_handle_t* handle) {
      delete reinterpret_cast<Watcher*>(handle->data);
    });
    return Throw(env, uv_strerror(err));
  }
  napi_create_reference(env, args[2], 1, &watcher->callback);
  napi_create_string_utf8(env, "upci:interrupt", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, nullptr, name, &watcher->context);
  watcher->id = table.Add(watcher);
  napi_value id;
  napi_create_uint32(env, watcher->id, &id);
  return id;
}

// unwatch(id): by the thread that created it; the fd is no longer polled when
// this returns. Unwatching twice does nothing.
napi_value Unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value value;
  uint32_t id;
  if (napi_get_cb_info(env, info, &argc, &value, nullptr, nullptr) != napi_ok ||
      argc != 1 || napi_get_value_uint32(env, value, &id) != napi_ok)
    return Throw(env, "unwatch(id): id must be a number");
  Watcher* watcher = table.Owned(id, env);
  if (watcher != nullptr) Close(watcher, true);
  return nullptr;
}

void CloseAll(void* data) {
  for (Watcher* watcher : table.OwnedBy(static_cast<napi_env>(data)))
    Close(watcher, false);
}

}  // namespace

NAPI_MODULE_INIT() {
  upci::StayLoaded(reinterpret_cast<const void*>(&Watch));
  napi_property_descriptor functions[] = {
      {"watch", nullptr, Watch, nullptr, nullptr, nullptr, napi_default,
       nullptr},
      {"unwatch", nullptr, Unwatch, nullptr, nullptr, nullptr, napi_default,
       nullptr},
  };
  napi_define_properties(env, exports, 2, functions);
  napi_add_env_cleanup_hook(env, CloseAll, env);
  return exports;
}
