/**
 * The body of an NBD export's own thread. The export's server runs here, not in the main thread, and its block
 * device comes straight from the provider's thread over the service layer's shared-memory rings: per request nothing
 * goes through the main thread, whose event loop the host, the other exports and the programs share. The thread
 * outlives the provider's incarnations: the server serves a FollowingBlockDevice, so a connected client's
 * requests wait for the next incarnation and are issued to it again when the provider is restarted.
 *
 * The host (actors/exports.ts) starts it with a link to its service registry and tells it when the provider was given
 * up (`gone`) and when to close; it reports when the export opened, each incarnation followed, and its close.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { blockService } from '../services/block-service.js';
import { firstProvided } from './first-provided.js';
import { FollowingBlockDevice } from './following-block-device.js';
import { NbdServer } from './nbd-server.js';
import { ThreadServices } from '../services/service.js';

export interface NbdThreadData {
  /** The thread's end of its service-registry link (ServiceRegistry.link). */
  readonly link: MessagePort;
  /** The block device's service name ("nvme0n1"). */
  readonly service: string;
  readonly socket: string;
  readonly mode: number;
  /** How long a request waits for the provider's next incarnation (FollowingBlockDevice). */
  readonly waitMs: number;
  /** Requests waiting for an incarnation at once, at most. */
  readonly maxWaiting: number;
}

export type ToNbdThread =
  /** The provider was released for good: what waits for its next incarnation fails now. */
  | { readonly type: 'gone'; readonly reason: string }
  | { readonly type: 'close' };

export type FromNbdThread =
  | { readonly type: 'open'; readonly detail: string }
  | { readonly type: 'failed'; readonly message: string }
  | { readonly type: 'followed'; readonly detail: string }
  | { readonly type: 'closed' };

const port = parentPort!;
const data = workerData as NbdThreadData;
const post = (m: FromNbdThread) => port.postMessage(m);
const services = new ThreadServices(data.link);
const ask = (timeoutMs: number) => services.consume(blockService, data.service, timeoutMs);

let close!: () => void;
/** Resolves at the host's 'close': a wait for the first incarnation gives up. */
const closing = new Promise<void>((resolve) => (close = resolve));
let device: FollowingBlockDevice | undefined;
let server: NbdServer | undefined;

async function open(): Promise<void> {
  const first = await firstProvided(closing, ask);
  if (first === undefined) return;
  device = new FollowingBlockDevice(first, ask, { waitMs: data.waitMs, maxWaiting: data.maxWaiting }, (stats) =>
    post({ type: 'followed', detail: `incarnation ${stats.incarnations} of its driver; ${stats.waiting} request(s) waited for it` }));
  mkdirSync(dirname(data.socket), { recursive: true, mode: 0o755 });
  server = await NbdServer.listen(data.socket, [{ name: data.service, device }], { mode: data.mode });
  post({ type: 'open', detail: `${device.blockCount} blocks of ${device.blockSize} B, mode 0${data.mode.toString(8)}, served in a thread of its own` });
}

const opening = open().catch((e: unknown) => post({ type: 'failed', message: e instanceof Error ? e.message : String(e) }));

async function shutDown(): Promise<void> {
  close();
  // A listen under way ends first, so that its socket file is the one removed.
  await opening;
  if (server !== undefined) {
    rmSync(data.socket, { force: true });
    await server.close();
  }
  device?.close('the export was closed');
  services.release(blockService, data.service, 'the export was closed');
  post({ type: 'closed' });
  port.close();
  data.link.close();
}

port.on('message', (m: ToNbdThread) => {
  if (m.type === 'gone') device?.close(m.reason);
  else void shutDown();
});
