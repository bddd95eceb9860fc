/**
 * A driver's block device, used from another thread than the driver's.
 *
 * In the driver's thread, serveBlockDevice() exports a BlockDevice through
 * two shared-memory rings (shm/ring.ts): requests in, completions out. One
 * setup message hands the other thread the rings, the geometry and a
 * MessagePort; there BlockProxy implements the same BlockDevice over them.
 * Per I/O there is a ring slot each way and no message:
 *
 * - Data over a SharedArrayBuffer goes by reference: the first time the
 *   proxy sees a SharedArrayBuffer it posts it once over the port, then
 *   names it by id in the slot (buffer id, offset, length). The driver side
 *   registers it with the device when it arrives (BlockDevice.register: one
 *   DMA mapping, kept), so a request on it reaches the device with no map
 *   and no copy. When the caller's buffer is collected, the driver side
 *   unregisters it (one more message).
 * - Any other buffer is copied through a shared bounce area, registered
 *   with the device once at the export's start, one bounce slot per request
 *   tag; a request larger than a slot is split.
 * - BlockProxy.register() gives the consumer a RegisteredBuffer over the
 *   same ids: its read()/write() take a ring slot and post it, and the
 *   completion slot ends it on its `ends` (a Fanout), with no promise and
 *   no allocation on either side; in the driver's thread such a request is
 *   a request on the device's own registration (RegisteredBuffer.read).
 * - A wake-up per batch, not per request: each side stages what it posts
 *   while draining the other ring (a completion the device made inside
 *   the call, a request started from `ends`) and publishes it at the
 *   drain's end. A wake-up costs heap (Atomics.waitAsync's promise, about
 *   560 B); a slot costs none (test/unit/registered-heap.test.ts).
 *
 * Requests are checked in the proxy's thread (checkRequest) as the driver
 * would, so a bad one never reaches the ring. A failure in the driver's
 * thread arrives as the same error class with the same fields (the error's
 * name and fields as JSON in the tag's error area: the service's own
 * classes, and those the drivers registered with crossesThreads). When the
 * host takes the device back, close() fails whatever is pending with
 * BlockGoneError and refuses anything new; the next incarnation provides a
 * new proxy.
 *
 * One proxy per export (a ring has one producer): another thread that wants
 * the device needs its own export. blockService is this pair as a service
 * kind (services/service.ts), which makes one export per consumer thread on
 * demand and hands its setup over.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import {
  BlockDeviceBase, BlockGoneError, BlockRequestError, RegisteredMemory, checkRequest, crossingErrors,
  type BlockDevice, type ErrorCodec, type BlockGeometry, type BlockOperation, type RegisteredBuffer,
} from '../drivers/block.js';
import { UpciError, type UpciErrorCode } from '../kernel/errors.js';
import { allocShared } from '../shm/mapping.js';
import { createRing, RingConsumer, RingProducer } from '../shm/ring.js';
import type { ServiceExport, ServiceKind } from './service.js';

/** Requests in flight at once per export (each holds a tag, a bounce slot and an error area). */
const TAGS = 64;
/** A bounce slot's size: at most this much of a copied request per tag. */
const BOUNCE_MAX = 128 * 1024;
/** JSON of one failure, per tag. */
const ERROR_BYTES = 2048;

// Request slot: op, tag, LBA (low, high), blocks, buffer id, offset, length.
const REQUEST_WORDS = 8;
// Completion slot: tag, bytes of error JSON (0: success).
const COMPLETION_WORDS = 2;
/**
 * The proxy frees a tag (and may post its next request) while it handles
 * the tag's completion, before that slot is given back: one slot more than
 * the tags, rounded to a power of two.
 */
const COMPLETION_SLOTS = 2 * TAGS;

const OPS: readonly BlockOperation[] = ['read', 'write', 'flush', 'discard'];
const READ = 0;
const WRITE = 1;
/** Buffer id of the shared bounce area; 0 is no data. */
const NO_DATA = 0;
const BOUNCE = 1;

/** The one message from the driver's thread: everything the proxy needs. */
export interface BlockServiceSetup extends BlockGeometry {
  readonly requests: SharedArrayBuffer;
  readonly completions: SharedArrayBuffer;
  readonly bounce: SharedArrayBuffer;
  readonly bounceBytes: number;
  readonly errors: SharedArrayBuffer;
  /** Registrations of the caller's SharedArrayBuffers (transferred with the setup). */
  readonly port: MessagePort;
}

type PortMessage =
  | { readonly type: 'buffer'; readonly id: number; readonly buffer: SharedArrayBuffer }
  | { readonly type: 'forget'; readonly id: number };

const fix = (e: UpciError) => e.fix ?? '';
/** An UpciError's message without the fix line its constructor appends. */
const bare = (e: UpciError) => (e.fix === undefined ? e.message : e.message.slice(0, e.message.length - `\n  fix: ${e.fix}`.length));

/** The service's own error classes that cross as themselves (first match wins, so subclasses come first). */
const OWN: ReadonlyMap<string, ErrorCodec> = new Map<string, ErrorCodec>([
  ['BlockGoneError', { is: (e): e is BlockGoneError => e instanceof BlockGoneError, fields: () => [], make: () => new BlockGoneError() }],
  ['BlockRequestError', {
    is: (e): e is BlockRequestError => e instanceof BlockRequestError,
    fields: (e) => [bare(e as BlockRequestError), fix(e as BlockRequestError)],
    make: ([message, fixLine]) => new BlockRequestError(message as string, fixLine as string),
  }],
  ['UpciError', {
    is: (e): e is UpciError => e instanceof UpciError,
    fields: (e) => [(e as UpciError).code, bare(e as UpciError), (e as UpciError).fix],
    make: ([code, message, fixLine]) => new UpciError(code as UpciErrorCode, message as string, fixLine as string | undefined),
  }],
]);

/** The codec of `error`: the drivers' registered classes (subclasses of the service's own) first. */
function codecOf(error: Error): [string, ErrorCodec] | undefined {
  for (const entry of crossingErrors) if (entry[1].is(error)) return entry;
  for (const entry of OWN) if (entry[1].is(error)) return entry;
  return undefined;
}

interface EncodedError {
  readonly codec: string | undefined;
  readonly name: string;
  readonly message: string;
  readonly fields: readonly unknown[];
  readonly stack: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Writes `e` into the error area at `offset`; returns the bytes written (at least 1). */
function encodeError(e: unknown, area: Uint8Array): number {
  const error = e instanceof Error ? e : new Error(String(e));
  const codec = codecOf(error);
  const encoded: EncodedError = {
    codec: codec?.[0],
    name: error.name,
    message: error.message,
    fields: codec === undefined ? [] : codec[1].fields(error),
    stack: error.stack ?? '',
  };
  let json = JSON.stringify(encoded);
  // A long stack is cut first, then the message; the class and its fields always cross.
  if (encoder.encode(json).length > area.length) json = JSON.stringify({ ...encoded, stack: '' });
  if (encoder.encode(json).length > area.length) json = JSON.stringify({ ...encoded, stack: '', message: error.message.slice(0, area.length / 4) });
  return encoder.encodeInto(json, area).written;
}

function decodeError(bytes: Uint8Array): Error {
  const encoded = JSON.parse(decoder.decode(bytes)) as EncodedError;
  const codec = encoded.codec === undefined ? undefined : crossingErrors.get(encoded.codec) ?? OWN.get(encoded.codec);
  const error = codec === undefined ? new Error() : codec.make(encoded.fields);
  error.message = encoded.message;
  if (codec === undefined && error.name !== encoded.name) Object.defineProperty(error, 'name', { value: encoded.name });
  error.stack = `${encoded.stack}\n    (in the driver's thread; reported through its block service)`;
  return error;
}

/** A buffer the consumer named by id, and the device's registration of it (undefined: the device could not register it). */
interface Named {
  readonly buffer: SharedArrayBuffer;
  readonly registration: RegisteredBuffer | undefined;
  /** Requests on it in flight in the device. */
  inFlight: number;
  /** Forgotten by the consumer (or the export stopped): unregistered at its last end. */
  forgotten: boolean;
}

/** Serves `device` (in its driver's thread) to one BlockProxy in another thread. */
export function serveBlockDevice(device: BlockDevice): ServiceExport<BlockServiceSetup> {
  const requestRing = createRing(TAGS, REQUEST_WORDS);
  const completionRing = createRing(COMPLETION_SLOTS, COMPLETION_WORDS);
  const bounceBytes = Math.min(device.maxTransferBytes, BOUNCE_MAX);
  const bounce = allocShared(TAGS * bounceBytes);
  const errors = new SharedArrayBuffer(TAGS * ERROR_BYTES);
  const channel = new MessageChannel();
  const requests = RingConsumer.claim(requestRing);
  const completions = RingProducer.claim(completionRing);
  const buffers = new Map<number, Named>();
  /** Per tag: the buffer its request is on (for the in-flight count), or undefined. */
  const onBuffer: (Named | undefined)[] = new Array<Named | undefined>(TAGS).fill(undefined);
  let stopped = false;
  /**
   * While the request ring is being drained: completions made meanwhile (a
   * device that ends a request inside the call) are staged and published
   * together at the drain's end, one wake-up of the proxy per batch.
   */
  let batching = false;

  const complete = (tag: number, error: unknown) => {
    const named = onBuffer[tag];
    if (named !== undefined) {
      onBuffer[tag] = undefined;
      if (--named.inFlight === 0 && named.forgotten) named.registration?.unregister();
    }
    if (stopped) return;
    const length = error === undefined ? 0 : encodeError(error, new Uint8Array(errors, tag * ERROR_BYTES, ERROR_BYTES));
    const at = completions.reserve();
    // Never: no more requests are in flight than tags (see COMPLETION_SLOTS).
    if (at < 0) throw new Error(`${device.name}: the completion ring is full`);
    completions.words[at] = tag;
    completions.words[at + 1] = length;
    if (batching) completions.stage();
    else completions.publish();
  };
  const endBatch = () => {
    batching = false;
    completions.flush();
  };

  /** The device's registration of `buffer`, its ends completing ring tags; undefined when the device cannot reach the memory (its requests then go through the promise API, which bounces them). */
  const registered = (buffer: SharedArrayBuffer): Named => {
    let registration: RegisteredBuffer | undefined;
    try {
      registration = device.register(buffer);
      registration.ends.subscribe((end) => complete(end.tag, end.error));
    } catch {
      registration = undefined;
    }
    return { buffer, registration, inFlight: 0, forgotten: false };
  };
  const forget = (named: Named) => {
    named.forgotten = true;
    if (named.inFlight === 0) named.registration?.unregister();
  };
  const bounceArea = registered(bounce);
  buffers.set(BOUNCE, bounceArea);

  channel.port1.on('message', (m: PortMessage) => {
    if (m.type === 'buffer') {
      buffers.set(m.id, registered(m.buffer));
      requests.resume();
    } else {
      const named = buffers.get(m.id);
      buffers.delete(m.id);
      if (named !== undefined) forget(named);
    }
  });

  requests.start((w, at) => {
    batching = true;
    const opIndex = w[at]!;
    const tag = w[at + 1]!;
    const lba = (w[at + 2]! >>> 0) + (w[at + 3]! >>> 0) * 2 ** 32;
    const blocks = w[at + 4]!;
    const id = w[at + 5]!;
    // A bounce part's offset is into the caller's data (the proxy's side); here it is its tag's bounce slot.
    const offset = id === BOUNCE ? tag * bounceBytes : w[at + 6]!;
    const length = w[at + 7]!;
    let named: Named | undefined;
    if (id !== NO_DATA) {
      named = buffers.get(id);
      // Its registration is still on its way: wait for it (requests stay in order).
      if (named === undefined) {
        endBatch();
        return false;
      }
      const registration = named.registration;
      // One device command on registered memory: no promise, no allocation (its end comes through the registration's ends).
      if (registration !== undefined && opIndex <= 1 && offset % 4 === 0 && length <= device.maxTransferBytes && length === blocks * device.blockSize) {
        // Counted before the call: a device may end the request inside it.
        named.inFlight++;
        onBuffer[tag] = named;
        try {
          if (opIndex === 0 ? registration.read(lba, blocks, offset, tag) : registration.write(lba, blocks, offset, tag)) return true;
          // The device has no room now: the promise API below waits in its queue.
          named.inFlight--;
          onBuffer[tag] = undefined;
        } catch (e) {
          complete(tag, e);
          return true;
        }
      }
    }
    const op = OPS[opIndex]!;
    const data = named === undefined ? undefined : new Uint8Array(named.buffer, offset, length);
    let work: Promise<unknown>;
    try {
      work = op === 'read' ? device.read(lba, blocks, data)
        : op === 'write' ? device.write(lba, data!)
          : op === 'flush' ? device.flush()
            : device.discard(lba, blocks);
    } catch (e) {
      work = Promise.reject(e);
    }
    if (named !== undefined) {
      named.inFlight++;
      onBuffer[tag] = named;
    }
    work.then(() => complete(tag, undefined), (e: unknown) => complete(tag, e));
    return true;
  }, endBatch);

  return {
    setup: {
      name: device.name,
      blockSize: device.blockSize,
      blockCount: device.blockCount,
      canDiscard: device.canDiscard,
      maxTransferBytes: device.maxTransferBytes,
      requests: requestRing,
      completions: completionRing,
      bounce,
      bounceBytes,
      errors,
      port: channel.port2,
    },
    transfer: [channel.port2],
    stop: () => {
      if (stopped) return;
      stopped = true;
      requests.stop();
      completions.release();
      channel.port1.close();
      // Requests still in the device keep their memory registered until they end.
      for (const named of buffers.values()) forget(named);
      buffers.clear();
    },
  };
}

/** One request of a caller. */
interface Request {
  readonly op: BlockOperation;
  readonly lba: number;
  readonly blocks: number;
  readonly started: number;
  /** The caller's data when it is copied through the bounce area (a read copies back into it). */
  readonly copied: Uint8Array | undefined;
  parts: number;
  failure: Error | undefined;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
}

/** What one ring slot carries: all of a request, or a bounce slot's share of a copied one. */
interface Part {
  readonly request: Request;
  readonly lba: number;
  readonly blocks: number;
  readonly buffer: number;
  /** Into the registered buffer, or into the caller's data when copied. */
  readonly offset: number;
  readonly length: number;
}

let nextBufferId = BOUNCE + 1;

/** A consumer's registration through a proxy: requests on it take a ring slot each, named by the memory's id. */
class ProxyRegistration extends RegisteredMemory {
  active = true;

  constructor(
    private readonly proxy: BlockProxy,
    readonly id: number,
    memory: SharedArrayBuffer,
  ) {
    super(new Uint8Array(memory));
  }

  read(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.proxy.postRegistered(this, READ, lba, blocks, offset, tag);
  }

  write(lba: number, blocks: number, offset: number, tag: number): boolean {
    return this.proxy.postRegistered(this, WRITE, lba, blocks, offset, tag);
  }

  /** Requests on it are refused from now on; the driver side keeps the memory registered until it is collected here (the id's 'forget'). */
  unregister(): void {
    this.active = false;
  }
}

/** The block device of a driver in another thread, over its export's rings. */
export class BlockProxy extends BlockDeviceBase {
  /** Ring slots posted so far. */
  posted = 0;
  private readonly requests: RingProducer;
  private readonly replies: RingConsumer;
  private readonly bounce: Uint8Array;
  private readonly bounceBytes: number;
  private readonly errors: Uint8Array;
  private readonly port: MessagePort;
  private readonly free: number[] = [];
  private readonly inFlight: (Part | undefined)[] = new Array<Part | undefined>(TAGS).fill(undefined);
  /** Per ring tag, a request on registered memory: its registration, the caller's tag and what `completions` reports. */
  private readonly onRegistered: (ProxyRegistration | undefined)[] = new Array<ProxyRegistration | undefined>(TAGS).fill(undefined);
  private readonly callerTag = new Int32Array(TAGS);
  private readonly registeredOp = new Uint8Array(TAGS);
  private readonly registeredLba = new Float64Array(TAGS);
  private readonly registeredBlocks = new Int32Array(TAGS);
  private readonly registeredStarted = new Float64Array(TAGS);
  private readonly waiting: Part[] = [];
  private readonly ids = new WeakMap<SharedArrayBuffer, number>();
  /** Tells the driver side to drop a caller's buffer once it is collected here. */
  private readonly forget = new FinalizationRegistry<number>((id) => {
    if (this.gone === undefined) this.port.postMessage({ type: 'forget', id } satisfies PortMessage);
  });
  private gone: string | undefined;
  /**
   * While the completion ring is being drained: requests posted meanwhile
   * (a caller starting its next request from `ends`) are staged and
   * published together at the drain's end, one wake-up of the driver side
   * per batch instead of one per request.
   */
  private batching = false;
  private readonly endBatch = (): void => {
    this.batching = false;
    this.requests.flush();
  };

  constructor(setup: BlockServiceSetup) {
    super(setup);
    this.requests = RingProducer.claim(setup.requests);
    this.replies = RingConsumer.claim(setup.completions);
    this.bounce = new Uint8Array(setup.bounce);
    this.bounceBytes = setup.bounceBytes;
    this.errors = new Uint8Array(setup.errors);
    this.port = setup.port;
    for (let tag = TAGS - 1; tag >= 0; tag--) this.free.push(tag);
    this.replies.start((w, at) => {
      this.batching = true;
      this.completed(w[at]!, w[at + 1]!);
    }, this.endBatch);
  }

  /** Completions in the ring not yet handled (this thread has not looked since the driver side wrote them). */
  get completionsWaiting(): number {
    return this.replies.used;
  }

  read(lba: number, blocks: number, into?: Uint8Array): Promise<Uint8Array> {
    return this.request('read', lba, blocks, () => checkRequest.read(this, lba, blocks, into), into ?? new Uint8Array(blocks * this.blockSize))
      .then((data) => data!);
  }

  write(lba: number, data: Uint8Array): Promise<void> {
    return this.request('write', lba, data?.length / this.blockSize, () => checkRequest.write(this, lba, data), data).then(() => undefined);
  }

  flush(): Promise<void> {
    return this.request('flush', 0, 0, () => {}, undefined).then(() => undefined);
  }

  discard(lba: number, blocks: number): Promise<void> {
    return this.request('discard', lba, blocks, () => checkRequest.discard(this, lba, blocks), undefined).then(() => undefined);
  }

  /**
   * Registers `memory` with the device in the driver's thread (posted once
   * per memory, as any SharedArrayBuffer the proxy sees; the driver side
   * maps it there). A request on it posted before that registration arrived
   * waits in the ring for it. Memory the device cannot reach is bounced by
   * the driver's promise path instead; use allocShared() or allocBuffer().
   */
  register(memory: SharedArrayBuffer): RegisteredBuffer {
    if (!(memory instanceof SharedArrayBuffer)) throw new BlockRequestError(`${this.name}: only a SharedArrayBuffer can be registered`, 'allocate the memory with allocShared() or allocBuffer()');
    if (this.gone !== undefined) throw new BlockGoneError(`${this.name}: ${this.gone}`);
    return new ProxyRegistration(this, this.idOf(memory), memory);
  }

  /** @internal ProxyRegistration: one request in one ring slot, with nothing allocated; false when every tag is in flight. */
  postRegistered(registration: ProxyRegistration, op: number, lba: number, blocks: number, offset: number, tag: number): boolean {
    if (!checkRequest.registeredOk(this, lba, blocks, offset, registration.bytes.length)) {
      this.refused++;
      checkRequest.registered(this, lba, blocks, offset, registration.bytes.length);
    }
    if (this.gone !== undefined) throw new BlockGoneError(`${this.name}: ${this.gone}`);
    if (!registration.active) {
      this.refused++;
      throw new BlockRequestError(`${this.name}: the memory is no longer registered`, 'register it again');
    }
    const ringTag = this.free.pop();
    if (ringTag === undefined) return false;
    const at = this.requests.reserve();
    // Never: the ring has a slot per tag.
    if (at < 0) throw new Error(`${this.name}: the request ring is full with a tag free`);
    this.onRegistered[ringTag] = registration;
    this.callerTag[ringTag] = tag;
    this.registeredOp[ringTag] = op;
    this.registeredLba[ringTag] = lba;
    this.registeredBlocks[ringTag] = blocks;
    this.registeredStarted[ringTag] = this.reporting ? performance.now() : 0;
    const w = this.requests.words;
    w[at] = op;
    w[at + 1] = ringTag;
    w[at + 2] = lba >>> 0;
    w[at + 3] = Math.floor(lba / 2 ** 32);
    w[at + 4] = blocks;
    w[at + 5] = registration.id;
    w[at + 6] = offset;
    w[at + 7] = blocks * this.blockSize;
    if (this.batching) this.requests.stage();
    else this.requests.publish();
    this.posted++;
    return true;
  }

  /**
   * The host took the device back (the driver stopped, crashed or hung):
   * the completions already in the ring are delivered, everything else
   * pending fails with BlockGoneError naming `reason`, and every later
   * request too.
   */
  close(reason: string): void {
    if (this.gone !== undefined) return;
    // What the driver completed before the take-back counts: the device did it. Nothing new is posted meanwhile.
    this.gone = reason;
    this.replies.drain((w, at) => this.completed(w[at]!, w[at + 1]!));
    this.replies.stop();
    this.requests.release();
    const error = new BlockGoneError(`${this.name}: ${reason}`);
    const requests = new Set([...this.inFlight, ...this.waiting].filter((p) => p !== undefined).map((p) => p.request));
    this.inFlight.fill(undefined);
    this.waiting.length = 0;
    for (const request of requests) this.finish(request, error);
    for (let tag = 0; tag < TAGS; tag++) if (this.onRegistered[tag] !== undefined) this.registeredEnded(tag, error);
    this.port.close();
  }

  private request(op: BlockOperation, lba: number, blocks: number, check: () => void, data: Uint8Array | undefined): Promise<Uint8Array | undefined> {
    if (this.gone !== undefined) return Promise.reject(new BlockGoneError(`${this.name}: ${this.gone}`));
    const refused = this.refusal(check);
    if (refused !== undefined) return Promise.reject(refused);
    const shared = data !== undefined && data.buffer instanceof SharedArrayBuffer ? data.buffer : undefined;
    const copied = data !== undefined && shared === undefined ? data : undefined;
    return new Promise<Uint8Array | undefined>((resolve, reject) => {
      const request: Request = {
        op, lba, blocks, started: performance.now(), copied, parts: 0, failure: undefined,
        resolve: () => resolve(data), reject,
      };
      if (shared !== undefined) {
        this.enqueue({ request, lba, blocks, buffer: this.idOf(shared), offset: data!.byteOffset, length: data!.length });
      } else if (copied !== undefined) {
        const blocksPerPart = Math.floor(this.bounceBytes / this.blockSize);
        for (let first = 0; first < blocks; first += blocksPerPart) {
          const n = Math.min(blocksPerPart, blocks - first);
          this.enqueue({ request, lba: lba + first, blocks: n, buffer: BOUNCE, offset: first * this.blockSize, length: n * this.blockSize });
        }
      } else {
        this.enqueue({ request, lba, blocks, buffer: NO_DATA, offset: 0, length: 0 });
      }
    });
  }

  /** The id the driver side knows `buffer` by; registered (one message) the first time. */
  private idOf(buffer: SharedArrayBuffer): number {
    let id = this.ids.get(buffer);
    if (id === undefined) {
      id = nextBufferId++;
      this.ids.set(buffer, id);
      this.port.postMessage({ type: 'buffer', id, buffer } satisfies PortMessage);
      this.forget.register(buffer, id);
    }
    return id;
  }

  private enqueue(part: Part): void {
    part.request.parts++;
    if (this.waiting.length > 0 || !this.post(part)) this.waiting.push(part);
  }

  /** Puts `part` in the request ring under a free tag; false when every tag is in flight. */
  private post(part: Part): boolean {
    const tag = this.free.pop();
    if (tag === undefined) return false;
    const at = this.requests.reserve();
    // Never: the ring has a slot per tag.
    if (at < 0) throw new Error(`${this.name}: the request ring is full with a tag free`);
    if (part.buffer === BOUNCE && part.request.op === 'write') {
      this.bounce.set(part.request.copied!.subarray(part.offset, part.offset + part.length), tag * this.bounceBytes);
    }
    this.inFlight[tag] = part;
    const w = this.requests.words;
    w[at] = OPS.indexOf(part.request.op);
    w[at + 1] = tag;
    w[at + 2] = part.lba >>> 0;
    w[at + 3] = Math.floor(part.lba / 2 ** 32);
    w[at + 4] = part.blocks;
    w[at + 5] = part.buffer;
    w[at + 6] = part.offset;
    w[at + 7] = part.length;
    if (this.batching) this.requests.stage();
    else this.requests.publish();
    this.posted++;
    return true;
  }

  /** A request on registered memory ended: its tag is free again, and the caller hears of it on the registration's ends. */
  private registeredEnded(tag: number, error: Error | undefined): void {
    const registration = this.onRegistered[tag]!;
    this.onRegistered[tag] = undefined;
    this.free.push(tag);
    if (this.reporting) this.report(OPS[this.registeredOp[tag]!]!, this.registeredLba[tag]!, this.registeredBlocks[tag]!, error, this.registeredStarted[tag]!);
    registration.emitEnd(this.callerTag[tag]!, error);
  }

  private completed(tag: number, errorBytes: number): void {
    if (this.onRegistered[tag] !== undefined) {
      this.registeredEnded(tag, errorBytes > 0 ? decodeError(this.errors.subarray(tag * ERROR_BYTES, tag * ERROR_BYTES + errorBytes)) : undefined);
      while (this.gone === undefined && this.waiting.length > 0 && this.post(this.waiting[0]!)) this.waiting.shift();
      return;
    }
    const part = this.inFlight[tag];
    if (part === undefined) return;
    this.inFlight[tag] = undefined;
    const { request } = part;
    if (errorBytes > 0) {
      request.failure ??= decodeError(this.errors.subarray(tag * ERROR_BYTES, tag * ERROR_BYTES + errorBytes));
    } else if (part.buffer === BOUNCE && request.op === 'read') {
      const from = tag * this.bounceBytes;
      request.copied!.set(this.bounce.subarray(from, from + part.length), part.offset);
    }
    this.free.push(tag);
    while (this.gone === undefined && this.waiting.length > 0 && this.post(this.waiting[0]!)) this.waiting.shift();
    if (--request.parts === 0) this.finish(request, request.failure);
  }

  private finish(request: Request, error: Error | undefined): void {
    this.report(request.op, request.lba, request.blocks, error, request.started);
    if (error === undefined) request.resolve();
    else request.reject(error);
  }
}

/** Block devices as a service kind: DriverBus.provideBlockDevice and blockDevice, DriverHost.blockDevice. */
export const blockService: ServiceKind<BlockDevice, BlockServiceSetup> = {
  kind: 'block',
  noun: 'block device',
  serve: serveBlockDevice,
  proxy: (setup) => new BlockProxy(setup),
};
