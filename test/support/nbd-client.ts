/**
 * An NBD client for the NBD server's unit tests, over a real unix socket:
 * a well-behaved one (fixed newstyle, NBD_OPT_GO, simple replies, requests
 * pipelined and matched by handle) and the raw pieces a hostile one is made
 * of (the handshake alone, request headers, reading exact byte counts).
 */
import { connect, type Socket } from 'node:net';
import { within } from './bounded.js';

export const NBD = {
  NBDMAGIC: 0x4e42444d41474943n,
  IHAVEOPT: 0x49484156454f5054n,
  REPLY_MAGIC: 0x3e889045565a9n,
  REQUEST_MAGIC: 0x25609513,
  SIMPLE_REPLY_MAGIC: 0x67446698,
  CLIENT_FIXED_NEWSTYLE: 1,
  CLIENT_NO_ZEROES: 2,
  OPT: { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 },
  REP: { ACK: 1, SERVER: 2, INFO: 3 },
  CMD: { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4 },
  FLAG_FUA: 1,
  EINVAL: 22,
  ENOSPC: 28,
} as const;

/** Bytes from a socket, read exactly n at a time; `closed` resolves when the peer is gone. */
export class ByteStream {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: (() => void) | undefined;
  ended = false;
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.waiting?.();
    });
    // A hostile client's writes may fail once the server closed: that is the expected end, not the test's error.
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.on('close', () => {
      this.ended = true;
      this.waiting?.();
      resolve();
    }));
  }

  /** The next n bytes; rejects if the peer closed before they came. */
  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    while (this.buffered < n) {
      if (this.ended) throw new Error(`the server closed the connection (${this.buffered} of ${n} bytes came)`);
      await new Promise<void>((resolve) => (this.waiting = resolve));
      this.waiting = undefined;
    }
    const all = this.chunks[0]!.length >= n ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all === this.chunks[0] ? [all.subarray(n), ...this.chunks.slice(1)] : [all.subarray(n)];
    this.buffered -= n;
    return all.subarray(0, n);
  }
}

export function connectTo(path: string): Promise<Socket> {
  return within(10_000, new Promise<Socket>((resolve, reject) => {
    const s = connect(path, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  }), `a connection to ${path}`);
}

/** Reads the server's greeting and sends `clientFlags`. */
export async function greet(stream: ByteStream, clientFlags: number = NBD.CLIENT_FIXED_NEWSTYLE | NBD.CLIENT_NO_ZEROES): Promise<void> {
  const hello = await stream.read(18);
  if (hello.readBigUInt64BE(0) !== NBD.NBDMAGIC || hello.readBigUInt64BE(8) !== NBD.IHAVEOPT) throw new Error('not an NBD newstyle server');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(clientFlags >>> 0);
  stream.socket.write(flags);
}

export function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16);
  head.writeBigUInt64BE(NBD.IHAVEOPT, 0);
  head.writeUInt32BE(opt, 8);
  head.writeUInt32BE(data.length, 12);
  return Buffer.concat([head, data]);
}

/** NBD_OPT_GO for `name` (no info requests); resolves with the export's size once the server ACKed. */
export async function go(stream: ByteStream, name: string): Promise<number> {
  const n = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + n.length + 2);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  stream.socket.write(option(NBD.OPT.GO, data));
  let size = -1;
  for (;;) {
    const head = await stream.read(20);
    if (head.readBigUInt64BE(0) !== NBD.REPLY_MAGIC) throw new Error('an option reply without its magic');
    const type = head.readUInt32BE(12);
    const body = await stream.read(head.readUInt32BE(16));
    if (type === NBD.REP.ACK) return size;
    if (type !== NBD.REP.INFO) throw new Error(`NBD_OPT_GO ${name}: reply 0x${type.toString(16)} (${body.toString('utf8')})`);
    if (body.readUInt16BE(0) === 0) size = Number(body.readBigUInt64BE(2));
  }
}

/** A request header (28 bytes). */
export function request(type: number, handle: bigint, offset: bigint | number, length: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(NBD.REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

export interface Reply {
  readonly error: number;
  readonly data: Buffer | undefined;
}

/** A well-behaved client: requests pipelined, replies matched by handle (a READ's data read only when it succeeded). */
export class NbdClient {
  private next = 1n;
  private readonly pending = new Map<bigint, { readLength: number; resolve: (r: Reply) => void; reject: (e: Error) => void }>();

  private constructor(readonly stream: ByteStream, readonly size: number) {
    void this.receive();
  }

  static async open(path: string, name: string): Promise<NbdClient> {
    const stream = new ByteStream(await connectTo(path));
    await within(10_000, greet(stream), 'the server\'s greeting');
    const size = await within(10_000, go(stream, name), `NBD_OPT_GO ${name}`);
    return new NbdClient(stream, size);
  }

  /** Sends one request (with its payload, if any) and resolves with its reply. */
  send(type: number, offset: bigint | number, length: number, payload?: Uint8Array, flags = 0): Promise<Reply> {
    const handle = this.next++;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(handle, { readLength: type === NBD.CMD.READ ? length : 0, resolve, reject });
      this.stream.socket.write(request(type, handle, offset, length, flags));
      if (payload !== undefined) this.stream.socket.write(payload);
    });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const r = await within(10_000, this.send(NBD.CMD.READ, offset, length), `READ ${length} at ${offset}`);
    if (r.error !== 0) throw new Error(`READ ${length} at ${offset}: error ${r.error}`);
    return r.data!;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const r = await within(10_000, this.send(NBD.CMD.WRITE, offset, data.length, data), `WRITE ${data.length} at ${offset}`);
    if (r.error !== 0) throw new Error(`WRITE ${data.length} at ${offset}: error ${r.error}`);
  }

  /** NBD_CMD_DISC, then waits for the server to close. */
  async disconnect(): Promise<void> {
    this.stream.socket.write(request(NBD.CMD.DISC, 0n, 0, 0));
    await within(10_000, this.stream.closed, 'the server to close after NBD_CMD_DISC');
  }

  private async receive(): Promise<void> {
    try {
      for (;;) {
        const head = await this.stream.read(16);
        if (head.readUInt32BE(0) !== NBD.SIMPLE_REPLY_MAGIC) throw new Error('a reply without the simple reply magic');
        const error = head.readUInt32BE(4);
        const handle = head.readBigUInt64BE(8);
        const p = this.pending.get(handle);
        if (p === undefined) throw new Error(`a reply for handle ${handle}, which is not pending`);
        this.pending.delete(handle);
        p.resolve({ error, data: error === 0 && p.readLength > 0 ? Buffer.from(await this.stream.read(p.readLength)) : undefined });
      }
    } catch (e) {
      for (const p of this.pending.values()) p.reject(e as Error);
      this.pending.clear();
    }
  }
}
