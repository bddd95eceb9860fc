/**
 * The host's event stream for an administrator, as JSON lines on a unix socket (`upci run --events PATH`, read by
 * `upci status PATH`), so what a running host holds can be seen without its terminal: each connection first gets
 * one line `{"type":"snapshot","events":[...]}` (the latest state, fault, stats and export event of every device),
 * then every event as one line as it happens.
 *
 * The peer is untrusted. Nothing it sends is parsed: more than MAX_INPUT bytes of it close the connection. A peer
 * that does not read is dropped once MAX_BEHIND bytes wait for it, so it costs at most that, and never slows the
 * host or the other peers; at most MAX_PEERS are served at once. The socket file is its owner's only unless `mode`
 * says otherwise (exports/unix-socket.ts: no window with wider permissions).
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Observable, Subscription } from 'rxjs';
import type { HostEvent } from './events.js';
import { listenPrivately, removeIfOurs, socketMode, type SocketFile } from '../exports/unix-socket.js';

const MAX_INPUT = 4096;
/** Bytes queued for one peer before it is dropped: a few seconds of events of a busy host. */
const MAX_BEHIND = 1 << 20;
const MAX_PEERS = 16;

/** One line of the stream. */
const line = (value: unknown) => `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`;

export interface EventSocketStats {
  /** Peers served now. */
  peers: number;
  /** Peers closed for sending, for not reading, or for coming past MAX_PEERS. */
  dropped: number;
}

export class EventSocket {
  private readonly peers = new Set<Socket>();
  /** The latest event of each kind of each device (and of each export), for a new peer's snapshot. */
  private readonly latest = new Map<string, HostEvent>();
  private readonly subscription: Subscription;
  private file: SocketFile | undefined;
  readonly stats: EventSocketStats = { peers: 0, dropped: 0 };

  private constructor(events: Observable<HostEvent>, private readonly server: Server) {
    this.subscription = events.subscribe((e) => this.publish(e));
  }

  /** Serves `events` at `path` with the socket file's permissions `mode` (default 0600: owner only). */
  static async listen(events: Observable<HostEvent>, path: string, mode: number | string = 0o600): Promise<EventSocket> {
    const bits = socketMode(mode, 'events');
    let socket: EventSocket | undefined;
    const server = createServer((peer) => socket?.serve(peer));
    socket = new EventSocket(events, server);
    try {
      socket.file = await listenPrivately(server, path, bits, 'events');
    } catch (e) {
      socket.subscription.unsubscribe();
      throw e;
    }
    return socket;
  }

  /** Stops serving: every peer closed, the socket file removed (if still this one's). */
  async close(): Promise<void> {
    this.subscription.unsubscribe();
    for (const peer of this.peers) peer.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.unref();
    removeIfOurs(this.file);
  }

  private publish(e: HostEvent): void {
    const key = e.type === 'export' ? `export ${e.kind} ${e.service}` : 'address' in e ? `${e.type} ${e.address}` : e.type;
    if (e.type === 'state' || e.type === 'fault' || e.type === 'stats' || e.type === 'export' || e.type === 'host' || e.type === 'released') this.latest.set(key, e);
    if (this.peers.size === 0) return;
    const text = line(e);
    for (const peer of this.peers) this.send(peer, text);
  }

  private serve(peer: Socket): void {
    if (this.peers.size >= MAX_PEERS) {
      this.drop(peer);
      return;
    }
    this.peers.add(peer);
    this.stats.peers = this.peers.size;
    let input = 0;
    peer.on('data', (chunk: Buffer) => {
      input += chunk.length;
      if (input > MAX_INPUT) this.drop(peer);
    });
    peer.on('error', () => peer.destroy());
    peer.on('close', () => {
      this.peers.delete(peer);
      this.stats.peers = this.peers.size;
    });
    this.send(peer, line({ type: 'snapshot', at: Date.now(), events: [...this.latest.values()] }));
  }

  private send(peer: Socket, text: string): void {
    if (peer.destroyed) return;
    if (peer.writableLength + text.length > MAX_BEHIND) {
      this.drop(peer);
      return;
    }
    peer.write(text);
  }

  private drop(peer: Socket): void {
    if (peer.destroyed) return;
    this.stats.dropped++;
    peer.destroy();
  }
}
