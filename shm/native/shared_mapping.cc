// SharedArrayBuffers over mmap(2), one of upci's two addons (the other is
// workers/native/interrupt_watcher.cc).
//
// koffi can map memory but only hands out plain ArrayBuffers, which
// postMessage copies; a BAR or a DMA buffer must be the same memory in every
// thread, so the backing store has to be created through V8 directly.
// Everything else (ioctls, eventfds, policy) lives in TypeScript.

#include <node.h>
#include <v8.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

#include "stay_loaded.h"

namespace {

using v8::BigInt;
using v8::Context;
using v8::FunctionCallbackInfo;
using v8::Isolate;
using v8::Local;
using v8::Object;
using v8::SharedArrayBuffer;
using v8::Value;

void Throw(Isolate* isolate, const std::string& message) {
  isolate->ThrowException(v8::Exception::Error(
      v8::String::NewFromUtf8(isolate, message.c_str()).ToLocalChecked()));
}

// The error carries `errno`, so that callers can turn the ones a user can fix
// (ENOMEM) into an UpciError without parsing the message.
void ThrowErrno(Isolate* isolate, const char* what, int err) {
  std::string message = std::string(what) + ": " + std::strerror(err) +
                        " (errno " + std::to_string(err) + ")";
  Local<v8::Context> context = isolate->GetCurrentContext();
  Local<Value> error = v8::Exception::Error(
      v8::String::NewFromUtf8(isolate, message.c_str()).ToLocalChecked());
  error.As<Object>()
      ->Set(context, v8::String::NewFromUtf8Literal(isolate, "errno"),
            v8::Integer::New(isolate, err))
      .Check();
  isolate->ThrowException(error);
}

// The mapping is released with the last reference to the buffer, in whatever
// thread drops it; munmap is thread-safe.
void Unmap(void* data, size_t length, void*) {
  if (data != nullptr && length != 0) munmap(data, length);
}

Local<SharedArrayBuffer> Wrap(Isolate* isolate, void* data, size_t length) {
  auto store = SharedArrayBuffer::NewBackingStore(data, length, Unmap, nullptr);
  return SharedArrayBuffer::New(isolate, std::move(store));
}

bool ToU64(Local<Value> value, uint64_t* out) {
  if (value->IsBigInt()) {
    bool lossless = true;
    *out = value.As<BigInt>()->Uint64Value(&lossless);
    return lossless;
  }
  if (value->IsNumber()) {
    double d = value.As<v8::Number>()->Value();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<uint64_t>(d))
      return false;
    *out = static_cast<uint64_t>(d);
    return true;
  }
  return false;
}

// mapFile(fd, offset, length, writable) -> SharedArrayBuffer over
// mmap(MAP_SHARED) of a device file region (a BAR, a DMA buffer).
void MapFile(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  uint64_t fd, offset, length;
  if (args.Length() != 4 || !ToU64(args[0], &fd) || !ToU64(args[1], &offset) ||
      !ToU64(args[2], &length) || !args[3]->IsBoolean()) {
    Throw(isolate, "mapFile(fd, offset, length, writable): bad arguments");
    return;
  }
  if (length == 0 || length % sysconf(_SC_PAGESIZE) != 0) {
    Throw(isolate, "mapFile: length must be a non-zero multiple of the page size");
    return;
  }
  int prot = PROT_READ | (args[3].As<v8::Boolean>()->Value() ? PROT_WRITE : 0);
  void* data = mmap(nullptr, length, prot, MAP_SHARED, static_cast<int>(fd),
                    static_cast<off_t>(offset));
  if (data == MAP_FAILED) {
    ThrowErrno(isolate, "mmap of device region", errno);
    return;
  }
  args.GetReturnValue().Set(Wrap(isolate, data, length));
}

// allocAnonymous(length) -> zeroed, page-aligned, populated shared memory
// (DMA memory before the kernel pins it).
void AllocAnonymous(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  uint64_t length;
  if (args.Length() != 1 || !ToU64(args[0], &length) || length == 0 ||
      length % sysconf(_SC_PAGESIZE) != 0) {
    Throw(isolate, "allocAnonymous(length): length must be a non-zero multiple of the page size");
    return;
  }
  void* data = mmap(nullptr, length, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (data == MAP_FAILED) {
    ThrowErrno(isolate, "mmap of anonymous memory", errno);
    return;
  }
  args.GetReturnValue().Set(Wrap(isolate, data, length));
}

// revoke(sab) atomically replaces the pages under a mapping with private
// anonymous memory that reads as all-ones (a master abort), so a stale view in
// any thread can neither reach the device nor fault with SIGBUS once the
// device is gone.
void Revoke(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() != 1 || !args[0]->IsSharedArrayBuffer()) {
    Throw(isolate, "revoke(sharedArrayBuffer): bad arguments");
    return;
  }
  auto store = args[0].As<SharedArrayBuffer>()->GetBackingStore();
  void* data = store->Data();
  size_t length = store->ByteLength();
  void* again = mmap(data, length, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (again == MAP_FAILED) {
    ThrowErrno(isolate, "mmap over revoked region", errno);
    return;
  }
  std::memset(data, 0xff, length);
}

// address(sab) -> the buffer's virtual address, as the kernel needs it for
// DMA mapping (VFIO_IOMMU_MAP_DMA vaddr).
void Address(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() != 1 || !args[0]->IsSharedArrayBuffer()) {
    Throw(isolate, "address(sharedArrayBuffer): bad arguments");
    return;
  }
  auto data = args[0].As<SharedArrayBuffer>()->GetBackingStore()->Data();
  args.GetReturnValue().Set(
      BigInt::NewFromUnsigned(isolate, reinterpret_cast<uintptr_t>(data)));
}

}  // namespace

NODE_MODULE_INIT(/* exports, module, context */) {
  // Unmap must outlive a worker that made a buffer and exited.
  upci::StayLoaded(reinterpret_cast<const void*>(&Unmap));
  NODE_SET_METHOD(exports, "mapFile", MapFile);
  NODE_SET_METHOD(exports, "allocAnonymous", AllocAnonymous);
  NODE_SET_METHOD(exports, "revoke", Revoke);
  NODE_SET_METHOD(exports, "address", Address);
  (void)module;
  (void)context;
}
