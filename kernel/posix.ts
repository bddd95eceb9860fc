/**
 * The POSIX calls every kernel port makes, bound through koffi to the OS's
 * libc on first use (so importing a port for another OS costs nothing). Only
 * the library name and the OS's constant values differ between ports.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { SyscallError } from './errors.js';

export interface PosixConstants {
  readonly O_CLOEXEC: number;
  readonly EAGAIN: number;
  readonly EINTR: number;
}

/** What a failed call was doing, for its error; a function when building the text would cost a hot path. */
export type Operation = string | (() => string);

const describe = (what: Operation): string => (typeof what === 'string' ? what : what());

export function posix(libraryName: string, k: PosixConstants) {
  let library: LibraryHandle | undefined;
  let bound: ReturnType<typeof bind> | undefined;

  function bind(lib: LibraryHandle) {
    return {
      open: lib.func('int open(const char *path, int flags, int mode)'),
      close: lib.func('int close(int fd)'),
      // Two fixed prototypes rather than koffi's variadic call, which parses its argument types on every call.
      ioctlPointer: lib.func('int ioctl(int fd, unsigned long request, uint8_t *arg)'),
      ioctlInteger: lib.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
      pread: lib.func('intptr_t pread(int fd, _Out_ uint8_t *buf, size_t count, int64_t offset)'),
      pwrite: lib.func('intptr_t pwrite(int fd, const uint8_t *buf, size_t count, int64_t offset)'),
      read: lib.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)'),
      write: lib.func('intptr_t write(int fd, const uint8_t *buf, size_t count)'),
      pipe2: lib.func('int pipe2(_Out_ uint8_t *fds, int flags)'),
    };
  }

  const lib = (): LibraryHandle => (library ??= koffi.load(libraryName));
  const c = () => (bound ??= bind(lib()));
  const errno = (): number => koffi.errno();

  return {
    /** The loaded libc, for the calls only one OS has (Linux's eventfd). */
    library: lib,
    errno,

    /** open(2), always close-on-exec; throws SyscallError with errno (callers map it to advice). */
    open(path: string, flags: number): number {
      const fd = c().open(path, flags | k.O_CLOEXEC, 0) as number;
      if (fd < 0) throw new SyscallError(`open ${path}`, errno());
      return fd;
    },

    close(fd: number): void {
      c().close(fd);
    },

    /** ioctl(2) with an argument struct in `arg` (read and written in place). */
    ioctlBuffer(fd: number, request: number, arg: Buffer, what: Operation): number {
      const rc = c().ioctlPointer(fd, request, arg) as number;
      if (rc < 0) throw new SyscallError(describe(what), errno());
      return rc;
    },

    /** ioctl(2) whose argument is an integer (0 for none). */
    ioctlValue(fd: number, request: number, value: number, what: Operation): number {
      const rc = c().ioctlInteger(fd, request, value) as number;
      if (rc < 0) throw new SyscallError(describe(what), errno());
      return rc;
    },

    preadExact(fd: number, buf: Buffer, offset: number, what: Operation): void {
      const n = c().pread(fd, buf, buf.length, offset) as number;
      if (n !== buf.length) throw new SyscallError(`${describe(what)} (read ${n} of ${buf.length} bytes)`, n < 0 ? errno() : 5);
    },

    pwriteExact(fd: number, buf: Buffer, offset: number, what: Operation): void {
      const n = c().pwrite(fd, buf, buf.length, offset) as number;
      if (n !== buf.length) throw new SyscallError(`${describe(what)} (wrote ${n} of ${buf.length} bytes)`, n < 0 ? errno() : 5);
    },

    /** read(2): bytes read, or -1 when a non-blocking fd has nothing to read (EAGAIN). */
    readSome(fd: number, buf: Buffer, what: Operation): number {
      const n = c().read(fd, buf, buf.length) as number;
      if (n >= 0) return n;
      const e = errno();
      if (e === k.EAGAIN) return -1;
      throw new SyscallError(describe(what), e);
    },

    /** pipe2(2), always close-on-exec: [read end, write end]. `flags` adds the OS's O_NONBLOCK, say. */
    pipe(flags: number): [number, number] {
      const fds = Buffer.alloc(8);
      if ((c().pipe2(fds, flags | k.O_CLOEXEC) as number) < 0) throw new SyscallError('pipe2', errno());
      return [fds.readInt32LE(0), fds.readInt32LE(4)];
    },

    writeAll(fd: number, buf: Buffer, what: Operation): void {
      const n = c().write(fd, buf, buf.length) as number;
      if (n !== buf.length) throw new SyscallError(describe(what), n < 0 ? errno() : 5);
    },
  };
}
