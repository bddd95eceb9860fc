/**
 * Exports a block device to the OS as an NBD server on a unix socket: the
 * kernel's nbd client (`nbd-client -unix SOCKET /dev/nbd0 -N NAME`) turns it
 * into /dev/nbdN, so mkfs, mount and fsck run on a userland driver. Fixed
 * newstyle negotiation (NBD_OPT_GO / INFO / EXPORT_NAME / LIST / ABORT),
 * then simple replies: READ, WRITE, FLUSH, TRIM (when the device discards),
 * DISC. Requests are served concurrently.
 *
 * The peer is untrusted (anything that can open the socket). A connection
 * that breaks the protocol is closed, and only it:
 *  - unknown client flags at the handshake: closed (the protocol's MUST);
 *  - a WRITE announcing more than MAX_REQUEST bytes: answered EINVAL and
 *    closed at once, its payload never read (the stream cannot resync
 *    without reading it, and the protocol allows a hard disconnect on a
 *    payload large enough to be a denial of service);
 *  - a bad magic, a malformed option: closed;
 *  - unknown command flags or commands, a READ over MAX_REQUEST, a
 *    misaligned or out-of-range request: answered EINVAL (ENOSPC for a
 *    WRITE past the end), the connection goes on (the protocol's SHOULD).
 *
 * Memory. Each connection stops reading its socket (socket.pause(): the
 * kernel's socket buffer fills and the client's writes block) while it has
 * `maxInFlight` requests at the device, or while the bytes it holds for its
 * requests (READ lengths and WRITE payloads of requests not yet answered,
 * reserved before a WRITE's payload is read) plus the replies its socket
 * has not yet taken (socket.writableLength) would pass `maxConnectionBytes`;
 * it reads again when requests complete or the socket drains. A request is
 * always admitted when the connection holds nothing, so one of up to
 * MAX_REQUEST bytes goes through whatever the budget. The reader holds less
 * than READ_AHEAD plus one socket read (64 KiB) beyond what it was asked
 * for, and Node's stream buffer at most its 16 KiB high-water mark plus one
 * read. So one connection holds at most
 *     max(maxConnectionBytes, MAX_REQUEST)
 *     + 16 B of reply header and about 1 KiB of objects per request in flight
 *       (promises, closures: 0.7 KiB measured)
 *     + READ_AHEAD + 144 KiB of read buffers
 * which is about 32.4 MiB with the defaults (32 MiB + 130 KiB + 208 KiB),
 * and the server at most `maxConnections` times that (8 × 32.4 MiB, about
 * 260 MiB), plus each export's 8 MiB of registered slots (Slots), made once
 * and shared by its connections. A WRITE's payload is read into memory of its own, so a small one
 * held at the device does not pin the 64 KiB socket read it came in.
 * A connection counts against `maxConnections` until its socket closed AND
 * its last request settled (a hung device keeps a closed connection's
 * requests, and their buffers, alive); connections past the cap are closed
 * at accept. A connection that has not chosen an export within
 * `handshakeTimeoutMs` is closed. The cap is a memory bound, not fairness:
 * a peer that may open the socket can still use up the connection slots,
 * which is why the socket is owner-only by default.
 *
 * Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
 */
import { createServer, type Server, type Socket } from 'node:net';
import { listenPrivately, removeIfOurs, socketMode, type SocketFile } from './unix-socket.js';
import type { BlockDevice, RegisteredBuffer } from '../drivers/block.js';
import { UpciError } from '../kernel/errors.js';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
const CLIENT_FLAG_NO_ZEROES = 1 << 1;
/** Every client flag this server knows (and advertised): any other bit closes the connection. */
const CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const;
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 } as const;
const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;

const TX = { HAS_FLAGS: 1 << 0, SEND_FLUSH: 1 << 2, SEND_TRIM: 1 << 5, CAN_MULTI_CONN: 1 << 8 } as const;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4 } as const;
const ERRNO = { EIO: 5, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95 } as const;

/**
 * Largest READ or WRITE served: 2^25, what the protocol says no server
 * should take for a denial of service (the kernel's nbd allows
 * max_hw_sectors of 32 MiB, whatever the server advertises).
 */
const MAX_REQUEST = 32 * 1024 * 1024;
/** Largest option payload (a name is at most 4096 bytes, plus info requests). */
const MAX_OPTION = 65536;
/** Bytes the reader takes ahead of what was asked for before it pauses the socket. */
const READ_AHEAD = 64 * 1024;
/** One slot of an export's registered memory (Slots): the kernel's nbd client sends at most 128 KiB per request by default. */
const SLOT_BYTES = 128 * 1024;
/** Slots per export: 8 MiB registered with its device, shared by its connections. */
const SLOTS = 64;

export interface NbdExport {
  readonly name: string;
  readonly device: BlockDevice;
}

/** Limits and permissions of one server; every field optional (the module comment gives the memory bound they make). */
export interface NbdServerOptions {
  /**
   * Permission bits of the socket file: who may connect (connecting needs
   * write permission). Default 0o600, the owner only; e.g. 0o660 lets the
   * socket's group in. A number, or a string of octal digits ("0660").
   */
  readonly mode?: number | string;
  /** Connections held at once (default 8); more are closed at accept. */
  readonly maxConnections?: number;
  /** Requests one connection may have at the device at once (default 128, the Linux client's queue depth). */
  readonly maxInFlight?: number;
  /** Bytes one connection may hold in request payloads and unsent replies before it stops reading (default 32 MiB). */
  readonly maxConnectionBytes?: number;
  /** Time a connection has to choose an export (default 30 s). */
  readonly handshakeTimeoutMs?: number;
}

const DEFAULTS = {
  mode: 0o600,
  maxConnections: 8,
  maxInFlight: 128,
  maxConnectionBytes: 32 * 1024 * 1024,
  handshakeTimeoutMs: 30_000,
} as const;

type Limits = { readonly [K in keyof typeof DEFAULTS]: number };

export interface NbdServerStats {
  /** Connections accepted (refused ones not included). */
  connections: number;
  requests: number;
  /** Requests answered with an error. */
  errors: number;
  /** Connections held now (socket open, or requests still at the device). */
  open: number;
  /** Connections closed at accept: `maxConnections` were held. */
  refused: number;
  /** Connections the server closed for breaking the protocol or the handshake timeout. */
  dropped: number;
  /** Requests at the device now, over every connection. */
  inFlight: number;
  /** Connections not reading now because they are at `maxInFlight` or `maxConnectionBytes`. */
  throttled: number;
  /** The most bytes one connection held (payloads, unsent replies, read buffer), sampled whenever it grew. */
  peakConnectionBytes: number;
}

/** Why the server closes a connection: the peer broke the protocol (or took too long to choose an export). */
class ProtocolError extends Error {}

/** The peer went away. */
class ClientGone extends Error {}

/** Reads exactly n bytes at a time from a socket, in order, however they arrive, holding at most READ_AHEAD bytes nobody asked for. */
class Reader {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already taken. */
  private head = 0;
  buffered = 0;
  private want: { n: number; own: boolean; into: Uint8Array | undefined; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  constructor(private readonly socket: Socket, onData: () => void) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.pump();
      // Paused, the socket stops reading once Node's own buffer is full: the client's writes then block in its kernel.
      if (this.want === undefined && this.buffered >= READ_AHEAD) socket.pause();
      onData();
    });
    const end = (e?: Error) => {
      this.ended ??= e ?? new ClientGone('the client closed the connection');
      this.pump();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (e) => end(e));
  }

  /**
   * The next n bytes. `own`: a buffer that keeps no other memory alive (a
   * WRITE's payload held until the device completes it must not pin the
   * whole socket read it arrived in).
   */
  read(n: number, own = false): Promise<Buffer> {
    return this.readInto(n, own, undefined);
  }

  /** The next `into.length` bytes, copied into `into` (a WRITE's payload gathered where the device reaches it). */
  fill(into: Uint8Array): Promise<Buffer> {
    return this.readInto(into.length, true, into);
  }

  private readInto(n: number, own: boolean, into: Uint8Array | undefined): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, own, into, resolve, reject };
      this.pump();
      if (this.want !== undefined) this.socket.resume();
    });
  }

  private pump(): void {
    const want = this.want;
    if (want === undefined) return;
    if (this.buffered >= want.n) {
      this.want = undefined;
      want.resolve(this.take(want.n, want.own, want.into));
    } else if (this.ended !== undefined) {
      this.want = undefined;
      want.reject(this.ended);
    }
  }

  private take(n: number, own: boolean, into: Uint8Array | undefined): Buffer {
    const first = this.chunks[0];
    if (into === undefined && first !== undefined && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      if (!own || view.byteLength === view.buffer.byteLength) {
        this.skip(n);
        return view;
      }
    }
    // One copy, into memory of its own (not Buffer's shared pool, whose slab it would pin), or the caller's.
    const out = into === undefined ? Buffer.allocUnsafeSlow(n) : Buffer.from(into.buffer, into.byteOffset, n);
    let at = 0;
    while (at < n) {
      const chunk = this.chunks[0]!;
      const part = Math.min(chunk.length - this.head, n - at);
      chunk.copy(out, at, this.head, this.head + part);
      at += part;
      this.skip(part);
    }
    return out;
  }

  /** Drops n bytes from the front (n within chunks[0]). */
  private skip(n: number): void {
    this.buffered -= n;
    this.head += n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

/**
 * An export's slots of memory registered with its device (allocBuffer): a
 * READ's data lands in one and a WRITE's payload is gathered into one, so
 * the device DMAs them directly, with no bounce copy and nothing allocated
 * for the data. Shared by the export's connections; a request larger than a
 * slot, or finding none free (a client that does not read its replies holds
 * its own), takes the plain path.
 */
class Slots {
  private readonly free: number[] = [];

  private constructor(private readonly memory: RegisteredBuffer) {
    for (let slot = SLOTS - 1; slot >= 0; slot--) this.free.push(slot);
  }

  /** The device's slots; undefined for a device that registers no memory (its requests all take the plain path). */
  static of(device: BlockDevice): Slots | undefined {
    try {
      return new Slots(device.allocBuffer(SLOT_BYTES * SLOTS));
    } catch {
      return undefined;
    }
  }

  /** A free slot for `length` bytes, or -1. */
  take(length: number): number {
    return length <= SLOT_BYTES ? this.free.pop() ?? -1 : -1;
  }

  view(slot: number, length: number): Uint8Array {
    return this.memory.bytes.subarray(slot * SLOT_BYTES, slot * SLOT_BYTES + length);
  }

  give(slot: number): void {
    this.free.push(slot);
  }

  close(): void {
    this.memory.unregister();
  }
}

/** One client's socket, its reader, and what it holds: the admission that bounds it. */
class Connection {
  readonly reader: Reader;
  /** Payload bytes reserved by requests not yet answered. */
  private reserved = 0;
  inFlight = 0;
  /** What the session waits for (one thing at a time: it is one sequential loop). */
  private waiter: { fits: () => boolean; throttles: boolean; resolve: () => void; reject: (e: Error) => void } | undefined;
  private gone = false;
  /** Called after each write reached the kernel: the socket's unsent bytes went down. */
  readonly flushed = () => this.recheck();

  constructor(
    readonly socket: Socket,
    private readonly limits: Limits,
    private readonly stats: NbdServerStats,
    private readonly released: () => void,
  ) {
    this.reader = new Reader(socket, () => this.note());
    socket.on('drain', this.flushed);
    socket.on('close', () => {
      this.gone = true;
      this.take()?.reject(new ClientGone('the client closed the connection'));
      this.releaseIfDone();
    });
  }

  /** Bytes this connection holds now. */
  get held(): number {
    return this.reserved + this.socket.writableLength + this.reader.buffered;
  }

  /** Waits until a request costing `cost` payload bytes may go to the device, then counts it in flight. */
  async admit(cost: number): Promise<void> {
    const fits = () => this.inFlight < this.limits.maxInFlight && (this.reserved + this.socket.writableLength === 0 || this.reserved + this.socket.writableLength + cost <= this.limits.maxConnectionBytes);
    if (!fits()) await this.until(fits, true);
    this.reserved += cost;
    this.inFlight++;
    this.stats.inFlight++;
    this.note();
  }

  /** The request admitted with `cost` is answered (or failed): its reservation goes. */
  settle(cost: number): void {
    this.reserved -= cost;
    this.inFlight--;
    this.stats.inFlight--;
    this.recheck();
    this.releaseIfDone();
  }

  /** Resolves when no request is in flight. */
  async idle(): Promise<void> {
    if (this.inFlight > 0) await this.until(() => this.inFlight === 0, false);
  }

  /** Waits for replies to drain below the budget: option haggling's admission (nothing goes to the device). */
  async drained(): Promise<void> {
    const fits = () => this.socket.writableLength <= this.limits.maxConnectionBytes;
    if (!fits()) await this.until(fits, true);
  }

  /** Writes a reply (header, then data if any) unless the socket is gone. */
  /** Sends a reply; `sent` runs once the kernel took its data (or the socket is gone): then `data` may be used again. */
  send(head: Buffer, data?: Uint8Array, sent?: () => void): void {
    if (!this.socket.writable) {
      sent?.();
      return;
    }
    if (data === undefined) {
      this.socket.write(head, this.flushed);
      sent?.();
    } else {
      // One writev, no copy of the data.
      this.socket.cork();
      this.socket.write(head);
      this.socket.write(data, sent === undefined ? this.flushed : () => {
        sent();
        this.flushed();
      });
      this.socket.uncork();
    }
    this.note();
  }

  private until(fits: () => boolean, throttles: boolean): Promise<void> {
    if (this.gone) return Promise.reject(new ClientGone('the client closed the connection'));
    if (throttles) this.stats.throttled++;
    return new Promise((resolve, reject) => (this.waiter = { fits, throttles, resolve, reject }));
  }

  /** The waiter, no longer waiting. */
  private take(): typeof this.waiter {
    const w = this.waiter;
    this.waiter = undefined;
    if (w?.throttles) this.stats.throttled--;
    return w;
  }

  private recheck(): void {
    if (this.waiter?.fits()) this.take()!.resolve();
  }

  private note(): void {
    const held = this.held;
    if (held > this.stats.peakConnectionBytes) this.stats.peakConnectionBytes = held;
  }

  private releaseIfDone(): void {
    if (this.gone && this.inFlight === 0) this.released();
  }
}

function limitsOf(options: NbdServerOptions): Limits {
  const positive = (key: Exclude<keyof NbdServerOptions, 'mode'>): number => {
    const v = options[key];
    if (v === undefined) return DEFAULTS[key];
    if (!Number.isSafeInteger(v) || v <= 0) throw new UpciError('BAD_CONFIG', `nbd: ${key} is ${String(v)}, not a positive integer`, `give ${key} a whole number above 0, or leave it out (default ${DEFAULTS[key]})`);
    return v;
  };
  return {
    mode: socketMode(options.mode ?? DEFAULTS.mode, 'nbd'),
    maxConnections: positive('maxConnections'),
    maxInFlight: positive('maxInFlight'),
    maxConnectionBytes: positive('maxConnectionBytes'),
    handshakeTimeoutMs: positive('handshakeTimeoutMs'),
  };
}

export class NbdServer {
  private readonly server: Server;
  private readonly live = new Set<Connection>();
  /** Each export's registered slots, made at its first transmission. */
  private readonly slots = new Map<BlockDevice, Slots | undefined>();
  private limits: Limits = DEFAULTS;
  /** The socket file this server put at socketPath (close() removes it only if it is still this one). */
  private file: SocketFile | undefined;
  readonly stats: NbdServerStats = { connections: 0, requests: 0, errors: 0, open: 0, refused: 0, dropped: 0, inFlight: 0, throttled: 0, peakConnectionBytes: 0 };
  /** Why the last connection ended, for logs and tests. */
  lastDisconnect: string | undefined;

  private constructor(
    readonly socketPath: string,
    private readonly exports: ReadonlyMap<string, BlockDevice>,
  ) {
    this.server = createServer((socket) => this.serve(socket));
  }

  /**
   * Listens on `socketPath` (a stale socket there is replaced; any other
   * kind of file is refused) with the socket file's permissions
   * `options.mode` (default 0o600).
   */
  static async listen(socketPath: string, exports: readonly NbdExport[], options: NbdServerOptions = {}): Promise<NbdServer> {
    const s = new NbdServer(socketPath, new Map(exports.map((e) => [e.name, e.device])));
    s.limits = limitsOf(options);
    s.file = await listenPrivately(s.server, socketPath, s.limits.mode, 'nbd');
    return s;
  }

  closed = false;

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.live) c.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    // The device lets go of the memory once its last request on it ended.
    for (const slots of this.slots.values()) slots?.close();
    // Closed: nothing of it may keep the process alive, whatever its handle's state.
    this.server.unref();
    removeIfOurs(this.file);
  }

  private serve(socket: Socket): void {
    if (this.live.size >= this.limits.maxConnections) {
      this.stats.refused++;
      socket.destroy();
      return;
    }
    this.stats.connections++;
    this.stats.open++;
    const conn = new Connection(socket, this.limits, this.stats, () => {
      if (this.live.delete(conn)) this.stats.open--;
    });
    this.live.add(conn);
    const timer = setTimeout(() => {
      socket.destroy(new ProtocolError(`nbd: no export chosen within ${this.limits.handshakeTimeoutMs} ms`));
    }, this.limits.handshakeTimeoutMs);
    timer.unref();
    this.session(conn, () => clearTimeout(timer)).then(
      (why) => {
        clearTimeout(timer);
        this.lastDisconnect = why;
        socket.end();
      },
      (e: unknown) => {
        clearTimeout(timer);
        // Anything else (ECONNRESET, EPIPE, a close mid-message) is the client going away.
        if (e instanceof ProtocolError) this.stats.dropped++;
        this.lastDisconnect = e instanceof Error ? e.message : String(e);
        socket.destroy();
      },
    );
  }

  private async session(conn: Connection, negotiated: () => void): Promise<string> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    conn.send(hello);
    const clientFlags = (await conn.reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~CLIENT_FLAGS) !== 0) throw new ProtocolError(`nbd: unknown client flags 0x${clientFlags.toString(16)} (known: 0x${CLIENT_FLAGS.toString(16)})`);
    const device = await this.negotiate(conn, (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0);
    if (device === undefined) return 'the client aborted the negotiation';
    negotiated();
    return this.transmit(conn, device);
  }

  private reply(conn: Connection, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(REPLY_MAGIC, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(type, 12);
    head.writeUInt32BE(data.length, 16);
    conn.send(head, data.length > 0 ? data : undefined);
  }

  private flagsOf(device: BlockDevice): number {
    return TX.HAS_FLAGS | TX.SEND_FLUSH | (device.canDiscard ? TX.SEND_TRIM : 0);
  }

  /** Option haggling until an export is chosen (GO or EXPORT_NAME); undefined on ABORT. */
  private async negotiate(conn: Connection, noZeroes: boolean): Promise<BlockDevice | undefined> {
    for (;;) {
      // A client that sends options and never reads the replies stops being read.
      await conn.drained();
      const head = await conn.reader.read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('nbd: option without IHAVEOPT magic');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION) throw new ProtocolError(`nbd: option data of ${length} bytes`);
      const data = await conn.reader.read(length);
      if (option === OPT.ABORT) {
        this.reply(conn, option, REP.ACK);
        return undefined;
      }
      if (option === OPT.EXPORT_NAME) {
        const device = this.lookup(data.toString('utf8'));
        if (device === undefined) throw new ProtocolError(`nbd: no export named ${JSON.stringify(data.toString('utf8'))}`);
        const out = Buffer.alloc(noZeroes ? 10 : 134);
        out.writeBigUInt64BE(BigInt(device.blockCount * device.blockSize), 0);
        out.writeUInt16BE(this.flagsOf(device), 8);
        conn.send(out);
        return device;
      }
      if (option === OPT.LIST) {
        for (const name of this.exports.keys()) {
          const n = Buffer.from(name, 'utf8');
          const body = Buffer.alloc(4 + n.length);
          body.writeUInt32BE(n.length, 0);
          n.copy(body, 4);
          this.reply(conn, option, REP.SERVER, body);
        }
        this.reply(conn, option, REP.ACK);
        continue;
      }
      if (option === OPT.INFO || option === OPT.GO) {
        // Name length, name, number of info requests (2 bytes each).
        const nameLength = data.length >= 4 ? data.readUInt32BE(0) : -1;
        if (nameLength < 0 || 4 + nameLength + 2 > data.length || 4 + nameLength + 2 + 2 * data.readUInt16BE(4 + nameLength) !== data.length) {
          this.reply(conn, option, REP.ERR_INVALID, Buffer.from('malformed option data', 'utf8'));
          continue;
        }
        const device = this.lookup(data.subarray(4, 4 + nameLength).toString('utf8'));
        if (device === undefined) {
          this.reply(conn, option, REP.ERR_UNKNOWN, Buffer.from('no such export', 'utf8'));
          continue;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(INFO_EXPORT, 0);
        info.writeBigUInt64BE(BigInt(device.blockCount * device.blockSize), 2);
        info.writeUInt16BE(this.flagsOf(device), 10);
        this.reply(conn, option, REP.INFO, info);
        const sizes = Buffer.alloc(14);
        sizes.writeUInt16BE(INFO_BLOCK_SIZE, 0);
        sizes.writeUInt32BE(device.blockSize, 2); // minimum
        sizes.writeUInt32BE(device.blockSize, 6); // preferred
        sizes.writeUInt32BE(Math.min(device.maxTransferBytes * 8, MAX_REQUEST), 10); // maximum
        this.reply(conn, option, REP.INFO, sizes);
        this.reply(conn, option, REP.ACK);
        if (option === OPT.GO) return device;
        continue;
      }
      this.reply(conn, option, REP.ERR_UNSUP);
    }
  }

  /** The empty name is the default export (the only one, or the first). */
  private lookup(name: string): BlockDevice | undefined {
    return name === '' ? this.exports.values().next().value : this.exports.get(name);
  }

  private async transmit(conn: Connection, device: BlockDevice): Promise<string> {
    const bs = device.blockSize;
    const size = device.blockCount * bs;
    if (!this.slots.has(device)) this.slots.set(device, Slots.of(device));
    const slots = this.slots.get(device);
    const answer = (handle: Buffer, error: number, data?: Uint8Array, sent?: () => void) => {
      const head = Buffer.allocUnsafe(16);
      head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      head.writeUInt32BE(error, 4);
      handle.copy(head, 8);
      if (error !== 0) this.stats.errors++;
      conn.send(head, error === 0 ? data : undefined, sent);
    };
    for (;;) {
      const req = await conn.reader.read(28);
      if (req.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('nbd: request without the request magic');
      const flags = req.readUInt16BE(4);
      const type = req.readUInt16BE(6);
      const handle = Buffer.from(req.subarray(8, 16));
      const offset = Number(req.readBigUInt64BE(16));
      const length = req.readUInt32BE(24);
      this.stats.requests++;
      if (type === CMD.DISC) {
        await conn.idle();
        return 'the client disconnected (NBD_CMD_DISC)';
      }
      if (type === CMD.WRITE && length > MAX_REQUEST) {
        // Its payload follows, and the stream resyncs only past it: refuse and close without reading it.
        answer(handle, ERRNO.EINVAL);
        throw new ProtocolError(`nbd: a WRITE of ${length} bytes, more than the ${MAX_REQUEST} served (closed without reading its payload)`);
      }
      // What the request holds until answered: its data, either way. Every request is admitted, even one refused
      // at once: its reply is memory too, and a client that never reads its replies must stop being read.
      const cost = type === CMD.READ || type === CMD.WRITE ? Math.min(length, MAX_REQUEST) : 0;
      await conn.admit(cost);
      // The request's slot of registered memory (-1: none, the plain path), given back once its data is done with.
      const slot = slots !== undefined && (type === CMD.READ || type === CMD.WRITE) && length > 0 ? slots.take(length) : -1;
      const giveBack = slot < 0 ? undefined : () => slots!.give(slot);
      // A WRITE's payload is read whatever its flags or range: the next request starts after it.
      let payload: Buffer | undefined;
      try {
        payload = type !== CMD.WRITE ? undefined : slot < 0 ? await conn.reader.read(length, true) : await conn.reader.fill(slots!.view(slot, length));
      } catch (e) {
        giveBack?.();
        conn.settle(cost);
        throw e;
      }
      const refusal = this.refusal(flags, type, offset, length, bs, size);
      let work: Promise<void>;
      try {
        if (refusal !== 0) {
          work = Promise.resolve(answer(handle, refusal, undefined, giveBack));
        } else if (type === CMD.READ) {
          const into = slot < 0 ? undefined : slots!.view(slot, length);
          work = length === 0 ? Promise.resolve(answer(handle, 0)) : device.read(offset / bs, length / bs, into).then((data) => answer(handle, 0, data, giveBack));
        } else if (type === CMD.WRITE) {
          work = length === 0 ? Promise.resolve(answer(handle, 0)) : device.write(offset / bs, payload!).then(() => answer(handle, 0, undefined, giveBack));
        } else if (type === CMD.FLUSH) {
          work = device.flush().then(() => answer(handle, 0));
        } else {
          work = !device.canDiscard || length === 0 ? Promise.resolve(answer(handle, device.canDiscard ? 0 : ERRNO.ENOTSUP)) : device.discard(offset / bs, length / bs).then(() => answer(handle, 0));
        }
      } catch (e) {
        // A device that throws instead of rejecting fails this request, not the connection.
        work = Promise.reject(e);
      }
      void work.catch(() => answer(handle, ERRNO.EIO, undefined, giveBack)).finally(() => conn.settle(cost));
    }
  }

  /** The error a request gets without reaching the device (0: none), as the protocol asks for each case. */
  private refusal(flags: number, type: number, offset: number, length: number, bs: number, size: number): number {
    // No command flag is negotiated (no FUA, DF, ...): any is unknown here, and the protocol's answer is EINVAL.
    if (flags !== 0) return ERRNO.EINVAL;
    if (type !== CMD.READ && type !== CMD.WRITE && type !== CMD.FLUSH && type !== CMD.TRIM) return ERRNO.EINVAL;
    if (type === CMD.FLUSH) return 0;
    // TRIM carries no payload: only reads and writes are bounded in size.
    if (offset % bs !== 0 || length % bs !== 0 || (type === CMD.READ && length > MAX_REQUEST)) return ERRNO.EINVAL;
    if (offset + length > size) return type === CMD.WRITE ? ERRNO.ENOSPC : ERRNO.EINVAL;
    return 0;
  }
}
