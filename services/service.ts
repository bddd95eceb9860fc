/**
 * Services: what a driver offers other code (a block device, a packet
 * port), usable from every thread of the host, whichever thread the driver
 * runs in. One mechanism for every kind of service:
 *
 * - A kind (ServiceKind) says how to export its local object to one
 *   consumer in another thread (serve(): shared-memory rings and ports, in
 *   the provider's thread) and how to use such an export there (proxy(): an
 *   object of the same interface, in the consumer's thread). A kind is a
 *   plain object passed to provide()/consume(); nothing else registers it.
 * - Every thread that provides or consumes services has a ThreadServices
 *   (this module): a driver thread one of its own, the main thread one for
 *   the host's programs and the drivers that run there. Each is linked by a
 *   MessagePort to the main thread's ServiceRegistry
 *   (services/service-registry.ts), which knows who provides what.
 * - A consumer asks for (kind, name); the registry asks the provider's
 *   thread for a NEW export (rings are single-producer, single-consumer: one
 *   export per consumer thread), relays its setup, and from then on the two
 *   threads talk through the rings directly: per I/O nothing goes through
 *   the main thread, and no message at all.
 * - A service provided in the consumer's own thread is the local object
 *   itself (no export).
 * - A consumer may also run code beside the provider (serveBeside()): a
 *   module it names is imported in the provider's thread and serves the
 *   local object there (an OS export served where the data is, with no
 *   thread hop per request); the consumer gets what that code hands back
 *   (ports, a setup) and is told when the provider is gone.
 * - When the provider's device is taken back (stop, crash, hang, reload),
 *   every export of it ends: each consumer's proxy is closed (pending and
 *   new requests fail, for blocks with BlockGoneError) and leaves the
 *   consumer's cache, so the consumer's next consume() waits for the next
 *   incarnation's. When a consumer's thread is taken back, the provider
 *   stops the exports it served to it.
 */
import { UpciError } from '../kernel/errors.js';
import type { MessagePort, TransferListItem } from 'node:worker_threads';

/** One export of a local object to one consumer: what to hand over, and how to stop serving it. */
export interface ServiceExport<S> {
  readonly setup: S;
  /** What the setup holds that must be transferred, not cloned (MessagePorts). */
  readonly transfer: readonly TransferListItem[];
  stop(): void;
}

/** The consumer's side of an export: the service's own interface, and close() for when its provider is gone. */
export type ServiceProxy<T> = T & { close(reason: string): void };

/** A kind of service: how its objects cross threads. */
export interface ServiceKind<T, S> {
  /** The kind's name on the wire ('block'). */
  readonly kind: string;
  /** What a user calls one ("block device"), for messages. */
  readonly noun: string;
  /** In the provider's thread: a new export of `local` for one consumer. */
  serve(local: T): ServiceExport<S>;
  /** In the consumer's thread: the object over an export's setup. */
  proxy(setup: S): ServiceProxy<T>;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyKind = ServiceKind<any, any>;

/**
 * Code a consumer runs beside a provider, in the provider's thread: `module`
 * (an absolute file URL, loaded there) exports `serveBeside(local, args)`
 * returning a ServiceExport. Only the host's own code names modules: a
 * thread never imports a module a peer chose.
 */
export interface BesideTask<A> {
  readonly module: string;
  readonly args: A;
}

/** What a module named by a BesideTask exports. */
export type ServeBeside<T, A, S> = (local: T, args: A) => ServiceExport<S> | Promise<ServiceExport<S>>;

/** The consumer's hold on code running beside a provider. */
export interface BesideHandle<S> {
  /** What the code handed back (e.g. a MessagePort to talk to it). */
  readonly setup: S;
  /** Resolves with the reason when the provider is gone (the code stopped with it); the handle is then spent. */
  readonly gone: Promise<string>;
  /** Stops the code (in the provider's thread). Idempotent. */
  stop(): void;
}

/**
 * The consumer's handle over a beside task's `setup`, and `end(reason)`:
 * whichever comes first, end() (its provider gone) or the handle's stop(),
 * runs `release` once and settles `gone`.
 */
function besideHandle<S>(setup: S, release: () => void): { readonly handle: BesideHandle<S>; end(reason: string): void } {
  let ended = false;
  let settle!: (reason: string) => void;
  const gone = new Promise<string>((resolve) => (settle = resolve));
  const end = (reason: string) => {
    if (ended) return;
    ended = true;
    release();
    settle(reason);
  };
  return { handle: { setup, gone, stop: () => end('stopped by its consumer') }, end };
}

/** Runs a BesideTask on `local` in this thread. */
async function serveBesideHere(task: BesideTask<unknown>, local: unknown): Promise<ServiceExport<unknown>> {
  const module = await import(task.module) as { serveBeside?: ServeBeside<unknown, unknown, unknown> };
  if (typeof module.serveBeside !== 'function') throw new Error(`${task.module} exports no serveBeside()`);
  return module.serveBeside(local, task.args);
}

/** What a DriverBus (and the host) reaches services through, in whichever thread it runs. */
export interface ServiceAccess {
  /** Offers `local` as (kind, name) until the returned function withdraws it. */
  provide<T, S>(kind: ServiceKind<T, S>, name: string, local: T): () => void;
  /**
   * The service (kind, name), once it is provided (waiting up to
   * `timeoutMs`); the same object again until its provider is taken back,
   * then a new one from the next incarnation.
   */
  consume<T, S>(kind: ServiceKind<T, S>, name: string, timeoutMs: number): Promise<T>;
  /**
   * This thread is done with (kind, name): its proxy is closed with
   * `reason` and its export stopped in the provider's thread (a service
   * with one consumer at a time, a packet port, is then free for another).
   * Nothing for the local object of this thread's own provider.
   */
  release<T, S>(kind: ServiceKind<T, S>, name: string, reason: string): void;
}

/** From a thread's ThreadServices to the registry. */
export type ToRegistry =
  | { readonly type: 'provide'; readonly kind: string; readonly name: string }
  | { readonly type: 'withdraw'; readonly kind: string; readonly name: string }
  | {
    readonly type: 'want'; readonly want: number; readonly kind: string; readonly noun: string; readonly name: string; readonly timeoutMs: number;
    /** Not the object across threads: this code run beside it. */
    readonly beside?: BesideTask<unknown>;
  }
  | { readonly type: 'exported'; readonly export: number; readonly setup: unknown; readonly transfer: readonly TransferListItem[] }
  | { readonly type: 'export-failed'; readonly export: number; readonly message: string }
  /** The consumer is done with an export it was granted: stop it. */
  | { readonly type: 'release'; readonly export: number };

/** From the registry to a thread's ThreadServices. */
export type ToThread =
  /** Serve a new export of your (kind, name). */
  | { readonly type: 'export'; readonly export: number; readonly kind: string; readonly name: string; readonly beside?: BesideTask<unknown> }
  /** Its consumer is gone: stop serving it. */
  | { readonly type: 'stop-export'; readonly export: number }
  | { readonly type: 'granted'; readonly want: number; readonly export: number; readonly setup: unknown; readonly transfer: readonly TransferListItem[] }
  /** `final`: it will not be provided (its device was released), so asking again is pointless. */
  | { readonly type: 'refused'; readonly want: number; readonly message: string; readonly final?: boolean }
  /** What you asked for is provided in your own thread now: use the object itself. */
  | { readonly type: 'own'; readonly want: number }
  /** The provider of an export you consume was taken back. */
  | { readonly type: 'gone'; readonly export: number; readonly reason: string };

export const serviceKey = (kind: string, name: string) => `${kind}:${name}`;

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

interface Consumed {
  readonly key: string;
  readonly proxy: Promise<unknown>;
  /** The export it came through (undefined: still asked for, or the local object). */
  export: number | undefined;
  close(reason: string): void;
}

/** One thread's services: what it provides (and the exports it serves of them), and what it consumes. */
export class ThreadServices implements ServiceAccess {
  private readonly provided = new Map<string, { readonly kind: AnyKind; readonly local: unknown }>();
  private readonly served = new Map<number, { readonly key: string; readonly stop: () => void }>();
  private readonly wants = new Map<number, {
    readonly kind: AnyKind; readonly name: string; readonly timeoutMs: number; readonly consumed: Consumed;
    resolve(proxy: unknown): void; reject(e: Error): void;
  }>();
  private readonly consumed = new Map<string, Consumed>();
  /** serveBeside() asks, by want, and then by the export granted. */
  private readonly besideWants = new Map<number, { readonly task: BesideTask<unknown>; readonly key: string; resolve(h: BesideHandle<unknown>): void; reject(e: Error): void }>();
  private readonly besides = new Map<number, (reason: string) => void>();
  /** Tasks run beside this thread's own provisions, told when one is withdrawn. */
  private readonly localBesides = new Set<(key: string, reason: string) => void>();
  private nextWant = 1;

  constructor(private readonly port: MessagePort) {
    port.on('message', (m: ToThread) => this.onMessage(m));
  }

  /** Exports this thread serves now (one per consumer thread of each service it provides). */
  get liveExports(): number {
    return this.served.size;
  }

  provide<T, S>(kind: ServiceKind<T, S>, name: string, local: T): () => void {
    const key = serviceKey(kind.kind, name);
    // A second object under the same name replaces the first: its exports end.
    this.withdraw(kind, name);
    this.provided.set(key, { kind, local });
    this.post({ type: 'provide', kind: kind.kind, name });
    return () => {
      if (this.provided.get(key)?.local === local) this.withdraw(kind, name);
    };
  }

  private withdraw(kind: AnyKind, name: string): void {
    const key = serviceKey(kind.kind, name);
    if (!this.provided.delete(key)) return;
    for (const [id, served] of this.served) {
      if (served.key !== key) continue;
      this.served.delete(id);
      served.stop();
    }
    for (const onWithdraw of [...this.localBesides]) onWithdraw(key, `${name} was withdrawn`);
    this.post({ type: 'withdraw', kind: kind.kind, name });
  }

  consume<T, S>(kind: ServiceKind<T, S>, name: string, timeoutMs: number): Promise<T> {
    const key = serviceKey(kind.kind, name);
    const own = this.provided.get(key);
    if (own !== undefined) return Promise.resolve(own.local as T);
    const known = this.consumed.get(key);
    if (known !== undefined) return known.proxy as Promise<T>;
    const want = this.nextWant++;
    let settle!: { resolve(proxy: unknown): void; reject(e: Error): void };
    const proxy = new Promise<unknown>((resolve, reject) => (settle = { resolve, reject }));
    const consumed: Consumed = { key, proxy, export: undefined, close: () => {} };
    this.consumed.set(key, consumed);
    proxy.catch(() => this.forget(consumed));
    this.wants.set(want, { kind, name, timeoutMs, consumed, ...settle });
    this.post({ type: 'want', want, kind: kind.kind, noun: kind.noun, name, timeoutMs });
    return proxy as Promise<T>;
  }

  release<T, S>(kind: ServiceKind<T, S>, name: string, reason: string): void {
    const consumed = this.consumed.get(serviceKey(kind.kind, name));
    if (consumed === undefined) return;
    this.forget(consumed);
    if (consumed.export === undefined) {
      // Still asked for: the proxy, when it comes, is closed at once and its export stopped.
      void consumed.proxy.then((proxy) => {
        if (consumed.export === undefined) return;
        (proxy as ServiceProxy<unknown>).close(reason);
        this.post({ type: 'release', export: consumed.export });
      }, () => {});
      return;
    }
    consumed.close(reason);
    this.post({ type: 'release', export: consumed.export });
  }

  /**
   * Runs `task` beside (kind, name)'s provider, in its thread, once it is
   * provided (waiting up to `timeoutMs`); each call runs it anew. It stops
   * when the provider is taken back (`gone`) or stop() is called. The
   * host's, not a driver's (DriverBus offers ServiceAccess only).
   */
  serveBeside<T, S, A, R>(kind: ServiceKind<T, S>, name: string, task: BesideTask<A>, timeoutMs: number): Promise<BesideHandle<R>> {
    const key = serviceKey(kind.kind, name);
    const own = this.provided.get(key);
    if (own !== undefined) return this.besideHere(task, own.local, key) as Promise<BesideHandle<R>>;
    const want = this.nextWant++;
    return new Promise<BesideHandle<R>>((resolve, reject) => {
      this.besideWants.set(want, { task, key, resolve: resolve as (h: BesideHandle<unknown>) => void, reject });
      this.post({ type: 'want', want, kind: kind.kind, noun: kind.noun, name, timeoutMs, beside: task });
    });
  }

  /** The task run here, on this thread's own provider: gone when this thread withdraws it. */
  private async besideHere(task: BesideTask<unknown>, local: unknown, key: string): Promise<BesideHandle<unknown>> {
    const served = await serveBesideHere(task, local);
    const onWithdraw = (withdrawn: string, reason: string) => {
      if (withdrawn === key) end(reason);
    };
    const { handle, end } = besideHandle(served.setup, () => {
      this.localBesides.delete(onWithdraw);
      served.stop();
    });
    this.localBesides.add(onWithdraw);
    return handle;
  }

  private forget(consumed: Consumed): void {
    if (this.consumed.get(consumed.key) === consumed) this.consumed.delete(consumed.key);
  }

  private post(m: ToRegistry, transfer?: readonly TransferListItem[]): void {
    this.port.postMessage(m, transfer);
  }

  private onMessage(m: ToThread): void {
    switch (m.type) {
      case 'export': {
        const key = serviceKey(m.kind, m.name);
        const provided = this.provided.get(key);
        if (provided === undefined) return this.post({ type: 'export-failed', export: m.export, message: `${m.name} is no longer provided here` });
        const exported = (served: ServiceExport<unknown>) => {
          if (this.provided.get(key) !== provided) {
            // Withdrawn while a beside task was loading: it never served.
            served.stop();
            return this.post({ type: 'export-failed', export: m.export, message: `${m.name} was withdrawn` });
          }
          this.served.set(m.export, { key, stop: () => served.stop() });
          this.post({ type: 'exported', export: m.export, setup: served.setup, transfer: served.transfer }, served.transfer);
        };
        const failed = (e: unknown) => this.post({ type: 'export-failed', export: m.export, message: message(e) });
        if (m.beside !== undefined) {
          serveBesideHere(m.beside, provided.local).then(exported, failed);
          return;
        }
        try {
          return exported(provided.kind.serve(provided.local));
        } catch (e) {
          return failed(e);
        }
      }
      case 'stop-export': {
        const served = this.served.get(m.export);
        this.served.delete(m.export);
        return served?.stop();
      }
      case 'granted': {
        const beside = this.besideWants.get(m.want);
        if (beside !== undefined) {
          this.besideWants.delete(m.want);
          // Stopped by its consumer, the export is released; ended by 'gone', it is already.
          const { handle, end } = besideHandle(m.setup, () => {
            if (this.besides.delete(m.export)) this.post({ type: 'release', export: m.export });
          });
          this.besides.set(m.export, end);
          return beside.resolve(handle);
        }
        const want = this.wants.get(m.want);
        this.wants.delete(m.want);
        // Never: a want is granted once; the registry stops exports whose want ended.
        if (want === undefined) throw new Error(`service export ${m.export} granted to a want (${m.want}) this thread does not have`);
        const proxy = want.kind.proxy(m.setup);
        want.consumed.export = m.export;
        want.consumed.close = (reason) => proxy.close(reason);
        return want.resolve(proxy);
      }
      case 'own': {
        const beside = this.besideWants.get(m.want);
        if (beside !== undefined) {
          this.besideWants.delete(m.want);
          const own = this.provided.get(beside.key);
          if (own === undefined) return beside.reject(new Error(`${beside.key} was withdrawn here before its task could run`));
          return void this.besideHere(beside.task, own.local, beside.key).then(beside.resolve, beside.reject);
        }
        const want = this.wants.get(m.want);
        this.wants.delete(m.want);
        if (want === undefined) return;
        this.forget(want.consumed);
        const own = this.provided.get(want.consumed.key);
        // Withdrawn again since: ask anew.
        return want.resolve(own !== undefined ? own.local : this.consume(want.kind, want.name, want.timeoutMs));
      }
      case 'refused': {
        const refusal = m.final === true ? new UpciError('RELEASED', m.message, 'see the host\'s events for why its device was released') : new Error(m.message);
        const beside = this.besideWants.get(m.want);
        this.besideWants.delete(m.want);
        beside?.reject(refusal);
        const want = this.wants.get(m.want);
        this.wants.delete(m.want);
        return want?.reject(refusal);
      }
      case 'gone': {
        const beside = this.besides.get(m.export);
        if (beside !== undefined) {
          this.besides.delete(m.export);
          return beside(m.reason);
        }
        const consumed = [...this.consumed.values()].find((c) => c.export === m.export);
        if (consumed === undefined) return;
        this.forget(consumed);
        return consumed.close(m.reason);
      }
    }
  }
}
