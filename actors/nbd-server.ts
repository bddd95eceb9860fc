/**
 * Exports a block device to the OS as an NBD server on a unix socket: the
 * kernel's nbd client (`nbd-client -unix SOCKET /dev/nbd0 -N NAME`) turns it
 * into /dev/nbdN, so mkfs, mount and fsck run on a userland driver. Fixed
 * newstyle negotiation (NBD_OPT_GO / INFO / EXPORT_NAME / LIST / ABORT),
 * then simple replies: READ, WRITE, FLUSH, TRIM (when the device discards),
 * DISC. Requests are served concurrently; a client that disconnects, or
 * sends garbage, ends only its own connection.
 *
 * Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import type { BlockDevice } from '../drivers/block.js';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const CLIENT_FLAG_NO_ZEROES = 1 << 1;

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const;
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_UNKNOWN: 0x80000006 } as const;
const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;

const TX = { HAS_FLAGS: 1 << 0, SEND_FLUSH: 1 << 2, SEND_TRIM: 1 << 5, CAN_MULTI_CONN: 1 << 8 } as const;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4 } as const;
const ERRNO = { EIO: 5, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95 } as const;

/** Largest request served (the kernel's nbd sends at most max_sectors, 128 KiB..a few MiB). */
const MAX_REQUEST = 32 * 1024 * 1024;

export interface NbdExport {
  readonly name: string;
  readonly device: BlockDevice;
}

export interface NbdServerStats {
  connections: number;
  requests: number;
  errors: number;
}

/** Reads exactly n bytes from a socket, in order, however they arrive. */
class Reader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  constructor(socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.pump();
    });
    const end = (e?: Error) => {
      this.ended ??= e ?? new Error('the client closed the connection');
      this.pump();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (e) => end(e));
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    const want = this.want;
    if (want === undefined) return;
    if (this.buffered >= want.n) {
      this.want = undefined;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const out = all.subarray(0, want.n);
      const rest = all.subarray(want.n);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      want.resolve(out);
    } else if (this.ended !== undefined) {
      this.want = undefined;
      want.reject(this.ended);
    }
  }
}

export class NbdServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  readonly stats: NbdServerStats = { connections: 0, requests: 0, errors: 0 };
  /** Why the last connection ended, for logs and tests. */
  lastDisconnect: string | undefined;

  private constructor(
    readonly socketPath: string,
    private readonly exports: ReadonlyMap<string, BlockDevice>,
  ) {
    this.server = createServer((socket) => this.serve(socket));
  }

  /** Listens on `socketPath` (a stale socket file there is replaced). */
  static async listen(socketPath: string, exports: readonly NbdExport[]): Promise<NbdServer> {
    const s = new NbdServer(socketPath, new Map(exports.map((e) => [e.name, e.device])));
    rmSync(socketPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(socketPath, () => resolve());
    });
    return s;
  }

  closed = false;

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Closed: nothing of it may keep the process alive, whatever its handle's state.
    this.server.unref();
    rmSync(this.socketPath, { force: true });
  }

  private serve(socket: Socket): void {
    this.stats.connections++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    const reader = new Reader(socket);
    this.session(socket, reader).then(
      (why) => {
        this.lastDisconnect = why;
        socket.end();
      },
      (e: unknown) => {
        this.lastDisconnect = e instanceof Error ? e.message : String(e);
        socket.destroy();
      },
    );
  }

  private async session(socket: Socket, reader: Reader): Promise<string> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    socket.write(hello);
    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    const device = await this.negotiate(socket, reader, (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0);
    if (device === undefined) return 'the client aborted the negotiation';
    return this.transmit(socket, reader, device);
  }

  private reply(socket: Socket, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(REPLY_MAGIC, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(type, 12);
    head.writeUInt32BE(data.length, 16);
    socket.write(Buffer.concat([head, data]));
  }

  private flagsOf(device: BlockDevice): number {
    return TX.HAS_FLAGS | TX.SEND_FLUSH | (device.canDiscard ? TX.SEND_TRIM : 0);
  }

  /** Option haggling until an export is chosen (GO or EXPORT_NAME); undefined on ABORT. */
  private async negotiate(socket: Socket, reader: Reader, noZeroes: boolean): Promise<BlockDevice | undefined> {
    for (;;) {
      const head = await reader.read(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new Error('nbd: option without IHAVEOPT magic');
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > 65536) throw new Error(`nbd: option data of ${length} bytes`);
      const data = await reader.read(length);
      if (option === OPT.ABORT) {
        this.reply(socket, option, REP.ACK);
        return undefined;
      }
      if (option === OPT.EXPORT_NAME) {
        const device = this.lookup(data.toString('utf8'));
        if (device === undefined) throw new Error(`nbd: no export named ${JSON.stringify(data.toString('utf8'))}`);
        const out = Buffer.alloc(noZeroes ? 10 : 134);
        out.writeBigUInt64BE(BigInt(device.blockCount * device.blockSize), 0);
        out.writeUInt16BE(this.flagsOf(device), 8);
        socket.write(out);
        return device;
      }
      if (option === OPT.LIST) {
        for (const name of this.exports.keys()) {
          const n = Buffer.from(name, 'utf8');
          const body = Buffer.alloc(4 + n.length);
          body.writeUInt32BE(n.length, 0);
          n.copy(body, 4);
          this.reply(socket, option, REP.SERVER, body);
        }
        this.reply(socket, option, REP.ACK);
        continue;
      }
      if (option === OPT.INFO || option === OPT.GO) {
        const nameLength = data.readUInt32BE(0);
        const device = this.lookup(data.subarray(4, 4 + nameLength).toString('utf8'));
        if (device === undefined) {
          this.reply(socket, option, REP.ERR_UNKNOWN, Buffer.from('no such export', 'utf8'));
          continue;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(INFO_EXPORT, 0);
        info.writeBigUInt64BE(BigInt(device.blockCount * device.blockSize), 2);
        info.writeUInt16BE(this.flagsOf(device), 10);
        this.reply(socket, option, REP.INFO, info);
        const sizes = Buffer.alloc(14);
        sizes.writeUInt16BE(INFO_BLOCK_SIZE, 0);
        sizes.writeUInt32BE(device.blockSize, 2); // minimum
        sizes.writeUInt32BE(device.blockSize, 6); // preferred
        sizes.writeUInt32BE(Math.min(device.maxTransferBytes * 8, MAX_REQUEST), 10); // maximum
        this.reply(socket, option, REP.INFO, sizes);
        this.reply(socket, option, REP.ACK);
        if (option === OPT.GO) return device;
        continue;
      }
      this.reply(socket, option, REP.ERR_UNSUP);
    }
  }

  /** The empty name is the default export (the only one, or the first). */
  private lookup(name: string): BlockDevice | undefined {
    return name === '' ? this.exports.values().next().value : this.exports.get(name);
  }

  private async transmit(socket: Socket, reader: Reader, device: BlockDevice): Promise<string> {
    const bs = device.blockSize;
    const size = device.blockCount * bs;
    const pending = new Set<Promise<void>>();
    const answer = (handle: Buffer, error: number, data?: Uint8Array) => {
      const head = Buffer.alloc(16);
      head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      head.writeUInt32BE(error, 4);
      handle.copy(head, 8);
      if (error !== 0) this.stats.errors++;
      socket.write(data === undefined || error !== 0 ? head : Buffer.concat([head, data]));
    };
    for (;;) {
      const req = await reader.read(28);
      if (req.readUInt32BE(0) !== REQUEST_MAGIC) throw new Error('nbd: request without the request magic');
      const type = req.readUInt16BE(6);
      const handle = Buffer.from(req.subarray(8, 16));
      const offset = Number(req.readBigUInt64BE(16));
      const length = req.readUInt32BE(24);
      this.stats.requests++;
      if (type === CMD.DISC) {
        await Promise.allSettled(pending);
        return 'the client disconnected (NBD_CMD_DISC)';
      }
      const payload = type === CMD.WRITE ? await reader.read(length) : undefined;
      // TRIM carries no payload: only reads and writes are bounded in size.
      const bad = offset % bs !== 0 || length % bs !== 0 || (type !== CMD.TRIM && length > MAX_REQUEST);
      const outside = offset + length > size;
      let work: Promise<void>;
      if ((type === CMD.READ || type === CMD.WRITE || type === CMD.TRIM) && (bad || outside)) {
        answer(handle, bad ? ERRNO.EINVAL : ERRNO.ENOSPC);
        continue;
      }
      if (type === CMD.READ) {
        work = length === 0 ? Promise.resolve(answer(handle, 0)) : device.read(offset / bs, length / bs).then((data) => answer(handle, 0, data));
      } else if (type === CMD.WRITE) {
        work = length === 0 ? Promise.resolve(answer(handle, 0)) : device.write(offset / bs, payload!).then(() => answer(handle, 0));
      } else if (type === CMD.FLUSH) {
        work = device.flush().then(() => answer(handle, 0));
      } else if (type === CMD.TRIM) {
        work = !device.canDiscard || length === 0 ? Promise.resolve(answer(handle, device.canDiscard ? 0 : ERRNO.ENOTSUP)) : device.discard(offset / bs, length / bs).then(() => answer(handle, 0));
      } else {
        answer(handle, ERRNO.EINVAL);
        continue;
      }
      const tracked: Promise<void> = work.catch(() => answer(handle, ERRNO.EIO)).finally(() => pending.delete(tracked));
      pending.add(tracked);
    }
  }
}
