// A minimal io_uring for passthrough commands (IORING_OP_URING_CMD), the one
// thing upci's ublk export needs from io_uring that koffi cannot give: the
// rings are shared memory the kernel reads and writes under acquire/release
// ordering, and no Node binding exists. Raw syscalls (io_uring_setup,
// io_uring_enter, io_uring_register) on the UAPI header; no liburing.
//
// What a command means (ublk's control and I/O commands, their structs and
// opcodes) is TypeScript's business (kernel/linux/ublk-abi.ts): this file
// only queues an SQE with the caller's fd, cmd_op, user_data and command
// bytes, submits, and hands back completions. Completion is signalled on an
// eventfd registered with the ring, which the caller watches through its own
// event loop (workers/interrupt-watcher.ts), so nothing here blocks or runs
// a thread.
//
// A ring is named by a small integer and belongs to the env (thread) that
// made it (env_table.h): ublk wants every command of a queue issued by one
// task, and that task is the thread that created the ring.

#include <node_api.h>

#include <linux/io_uring.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "env_table.h"
#include "stay_loaded.h"

namespace {

struct Ring {
  napi_env env;
  uint32_t id = 0;
  int ring_fd = -1;
  int event_fd = -1;
  bool sqe128 = false;
  uint32_t entries = 0;
  void* sq_map = nullptr;
  size_t sq_map_size = 0;
  void* cq_map = nullptr;  // == sq_map with IORING_FEAT_SINGLE_MMAP
  size_t cq_map_size = 0;
  void* sqes = nullptr;
  size_t sqes_size = 0;
  std::atomic<uint32_t>* sq_head;
  std::atomic<uint32_t>* sq_tail;
  uint32_t sq_mask;
  uint32_t* sq_array;
  std::atomic<uint32_t>* cq_head;
  std::atomic<uint32_t>* cq_tail;
  uint32_t cq_mask;
  io_uring_cqe* cqes;
  // SQEs queued since the last submit.
  uint32_t queued = 0;
};

upci::EnvTable<Ring> table;

napi_value ThrowErrno(napi_env env, const char* what, int err) {
  std::string message = std::string(what) + ": " + std::strerror(err) +
                        " (errno " + std::to_string(err) + ")";
  napi_value text, error, code;
  napi_create_string_utf8(env, message.c_str(), NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, nullptr, text, &error);
  napi_create_int32(env, err, &code);
  napi_set_named_property(env, error, "errno", code);
  napi_throw(env, error);
  return nullptr;
}

napi_value Throw(napi_env env, const char* message) {
  napi_throw_error(env, "ERR_UPCI_URING", message);
  return nullptr;
}

void Release(Ring* ring) {
  if (ring->sqes != nullptr) munmap(ring->sqes, ring->sqes_size);
  if (ring->cq_map != nullptr && ring->cq_map != ring->sq_map)
    munmap(ring->cq_map, ring->cq_map_size);
  if (ring->sq_map != nullptr) munmap(ring->sq_map, ring->sq_map_size);
  // Closing the ring fd cancels what is still in flight (ublk then aborts
  // the queue's requests, or holds them for user recovery).
  if (ring->ring_fd >= 0) close(ring->ring_fd);
  if (ring->event_fd >= 0) close(ring->event_fd);
  delete ring;
}

template <typename T>
T* At(void* base, uint32_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// open(entries, sqe128) -> [id, eventfd]
napi_value Open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  uint32_t entries;
  bool sqe128;
  if (napi_get_cb_info(env, info, &argc, args, nullptr, nullptr) != napi_ok ||
      argc != 2 || napi_get_value_uint32(env, args[0], &entries) != napi_ok ||
      napi_get_value_bool(env, args[1], &sqe128) != napi_ok || entries == 0 ||
      entries > 4096)
    return Throw(env, "open(entries 1..4096, sqe128): bad arguments");
  io_uring_params params{};
  if (sqe128) params.flags |= IORING_SETUP_SQE128;
  auto* ring = new Ring{};
  ring->env = env;
  ring->sqe128 = sqe128;
  ring->ring_fd = static_cast<int>(syscall(__NR_io_uring_setup, entries, &params));
  if (ring->ring_fd < 0) {
    int err = errno;
    Release(ring);
    return ThrowErrno(env, "io_uring_setup", err);
  }
  ring->entries = params.sq_entries;
  ring->sq_map_size = params.sq_off.array + params.sq_entries * sizeof(uint32_t);
  ring->cq_map_size = params.cq_off.cqes + params.cq_entries * sizeof(io_uring_cqe);
  bool single = (params.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && ring->cq_map_size > ring->sq_map_size) ring->sq_map_size = ring->cq_map_size;
  ring->sq_map = mmap(nullptr, ring->sq_map_size, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, ring->ring_fd, IORING_OFF_SQ_RING);
  if (ring->sq_map == MAP_FAILED) {
    int err = errno;
    ring->sq_map = nullptr;
    Release(ring);
    return ThrowErrno(env, "mmap of the submission ring", err);
  }
  if (single) {
    ring->cq_map = ring->sq_map;
  } else {
    ring->cq_map = mmap(nullptr, ring->cq_map_size, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_POPULATE, ring->ring_fd, IORING_OFF_CQ_RING);
    if (ring->cq_map == MAP_FAILED) {
      int err = errno;
      ring->cq_map = nullptr;
      Release(ring);
      return ThrowErrno(env, "mmap of the completion ring", err);
    }
  }
  ring->sqes_size = params.sq_entries * sizeof(io_uring_sqe) * (sqe128 ? 2 : 1);
  ring->sqes = mmap(nullptr, ring->sqes_size, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, ring->ring_fd, IORING_OFF_SQES);
  if (ring->sqes == MAP_FAILED) {
    int err = errno;
    ring->sqes = nullptr;
    Release(ring);
    return ThrowErrno(env, "mmap of the submission entries", err);
  }
  ring->sq_head = At<std::atomic<uint32_t>>(ring->sq_map, params.sq_off.head);
  ring->sq_tail = At<std::atomic<uint32_t>>(ring->sq_map, params.sq_off.tail);
  ring->sq_mask = *At<uint32_t>(ring->sq_map, params.sq_off.ring_mask);
  ring->sq_array = At<uint32_t>(ring->sq_map, params.sq_off.array);
  ring->cq_head = At<std::atomic<uint32_t>>(ring->cq_map, params.cq_off.head);
  ring->cq_tail = At<std::atomic<uint32_t>>(ring->cq_map, params.cq_off.tail);
  ring->cq_mask = *At<uint32_t>(ring->cq_map, params.cq_off.ring_mask);
  ring->cqes = At<io_uring_cqe>(ring->cq_map, params.cq_off.cqes);

  ring->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ring->event_fd < 0) {
    int err = errno;
    Release(ring);
    return ThrowErrno(env, "eventfd", err);
  }
  if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_EVENTFD,
              &ring->event_fd, 1) < 0) {
    int err = errno;
    Release(ring);
    return ThrowErrno(env, "io_uring_register(EVENTFD)", err);
  }
  uint32_t id = table.Add(ring);
  ring->id = id;
  napi_value result, value;
  napi_create_array_with_length(env, 2, &result);
  napi_create_uint32(env, id, &value);
  napi_set_element(env, result, 0, value);
  napi_create_int32(env, ring->event_fd, &value);
  napi_set_element(env, result, 1, value);
  return result;
}

Ring* Find(napi_env env, napi_value value) {
  uint32_t id;
  if (napi_get_value_uint32(env, value, &id) != napi_ok) return nullptr;
  return table.Owned(id, env);
}

// command(id, fd, cmdOp, userData, cmd: Uint8Array) -> false when the
// submission ring is full (submit first). Queued, not submitted.
napi_value Command(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value args[5];
  int32_t fd;
  uint32_t cmd_op;
  int64_t user_data;
  napi_typedarray_type type;
  size_t length;
  void* data;
  if (napi_get_cb_info(env, info, &argc, args, nullptr, nullptr) != napi_ok || argc != 5)
    return Throw(env, "command(ring, fd, cmdOp, userData, cmd): bad arguments");
  Ring* ring = Find(env, args[0]);
  if (ring == nullptr) return Throw(env, "command: no such ring in this thread");
  if (napi_get_value_int32(env, args[1], &fd) != napi_ok || fd < 0 ||
      napi_get_value_uint32(env, args[2], &cmd_op) != napi_ok ||
      napi_get_value_int64(env, args[3], &user_data) != napi_ok || user_data < 0 ||
      napi_get_typedarray_info(env, args[4], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array)
    return Throw(env, "command(ring, fd, cmdOp, userData, cmd: Uint8Array): bad arguments");
  // The command area: 16 bytes of a 64-byte SQE, 80 of a 128-byte one.
  size_t room = ring->sqe128 ? 80 : 16;
  if (length > room) return Throw(env, "command: the command does not fit the SQE");
  uint32_t tail = ring->sq_tail->load(std::memory_order_relaxed);
  uint32_t head = ring->sq_head->load(std::memory_order_acquire);
  napi_value ok;
  if (tail - head >= ring->entries) {
    napi_get_boolean(env, false, &ok);
    return ok;
  }
  uint32_t index = tail & ring->sq_mask;
  auto* sqe = reinterpret_cast<io_uring_sqe*>(static_cast<char*>(ring->sqes) +
                                              index * sizeof(io_uring_sqe) * (ring->sqe128 ? 2 : 1));
  std::memset(sqe, 0, sizeof(io_uring_sqe) * (ring->sqe128 ? 2 : 1));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  // cmd_op shares the union with `off`: its low 32 bits.
  sqe->off = cmd_op;
  sqe->user_data = static_cast<uint64_t>(user_data);
  std::memcpy(reinterpret_cast<char*>(sqe) + offsetof(io_uring_sqe, addr3), data, length);
  ring->sq_array[index] = index;
  ring->sq_tail->store(tail + 1, std::memory_order_release);
  ring->queued++;
  napi_get_boolean(env, true, &ok);
  return ok;
}

// submit(id) -> SQEs the kernel took. Never waits for completions.
napi_value Submit(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, result;
  if (napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr) != napi_ok || argc != 1)
    return Throw(env, "submit(ring): bad arguments");
  Ring* ring = Find(env, arg);
  if (ring == nullptr) return Throw(env, "submit: no such ring in this thread");
  uint32_t taken = 0;
  while (ring->queued > 0) {
    long n = syscall(__NR_io_uring_enter, ring->ring_fd, ring->queued, 0, 0, nullptr, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ThrowErrno(env, "io_uring_enter", errno);
    }
    if (n == 0) break;
    ring->queued -= static_cast<uint32_t>(n);
    taken += static_cast<uint32_t>(n);
  }
  napi_create_uint32(env, taken, &result);
  return result;
}

// reap(id, out: Float64Array) -> completions written as (userData, res)
// pairs, at most out.length / 2; the rest stay for the next call.
napi_value Reap(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2], result;
  napi_typedarray_type type;
  size_t length;
  void* data;
  if (napi_get_cb_info(env, info, &argc, args, nullptr, nullptr) != napi_ok || argc != 2)
    return Throw(env, "reap(ring, out): bad arguments");
  Ring* ring = Find(env, args[0]);
  if (ring == nullptr) return Throw(env, "reap: no such ring in this thread");
  if (napi_get_typedarray_info(env, args[1], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_float64_array)
    return Throw(env, "reap(ring, out: Float64Array): bad arguments");
  auto* out = static_cast<double*>(data);
  uint32_t head = ring->cq_head->load(std::memory_order_relaxed);
  uint32_t tail = ring->cq_tail->load(std::memory_order_acquire);
  uint32_t n = 0;
  while (head != tail && (n + 1) * 2 <= length) {
    const io_uring_cqe& cqe = ring->cqes[head & ring->cq_mask];
    out[2 * n] = static_cast<double>(cqe.user_data);
    out[2 * n + 1] = cqe.res;
    head++;
    n++;
  }
  ring->cq_head->store(head, std::memory_order_release);
  napi_create_uint32(env, n, &result);
  return result;
}

// close(id): by the thread that opened it. Closing twice does nothing.
napi_value Close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  if (napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr) != napi_ok || argc != 1)
    return Throw(env, "close(ring): bad arguments");
  Ring* ring = Find(env, arg);
  if (ring == nullptr) return nullptr;
  table.Remove(ring->id);
  Release(ring);
  return nullptr;
}

void CloseAll(void* data) {
  for (Ring* ring : table.OwnedBy(static_cast<napi_env>(data))) {
    table.Remove(ring->id);
    Release(ring);
  }
}

}  // namespace

NAPI_MODULE_INIT() {
  upci::StayLoaded(reinterpret_cast<const void*>(&Open));
  napi_property_descriptor functions[] = {
      {"open", nullptr, Open, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"command", nullptr, Command, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"submit", nullptr, Submit, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"reap", nullptr, Reap, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"close", nullptr, Close, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, 5, functions);
  napi_add_env_cleanup_hook(env, CloseAll, env);
  return exports;
}
