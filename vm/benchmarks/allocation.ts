/**
 * What a hot path allocates on this thread's JavaScript heap, for the
 * benchmarks' "bytes per packet" columns. Counting collections (the old
 * "minor GCs" column) says nothing below a young generation's worth of
 * allocation; this counts bytes: the heap's growth over the window plus
 * what each collection inside it freed (v8.GCProfiler's before/after
 * statistics). With `sites`, V8's sampling heap profiler also says where
 * (objects already collected included), one sample per `SAMPLE_BYTES` on
 * average. Start and stop are synchronous, so a window can open and close
 * inside a frame callback; the main thread's inspector session answers
 * synchronously.
 */
import { Session } from 'node:inspector';
import { GCProfiler, getHeapStatistics } from 'node:v8';

export interface AllocationSite {
  /** function (file:line), of the JavaScript frame that allocated. */
  readonly where: string;
  readonly bytes: number;
}

export interface Allocation {
  readonly bytes: number;
  readonly collections: number;
  /** Largest first; empty unless sites were asked for. */
  readonly sites: readonly AllocationSite[];
}

const SAMPLE_BYTES = 512;

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

function post<T>(session: Session, method: string, params?: object): T {
  let result: { error: Error | null; value?: T } | undefined;
  session.post(method, params, (error, value) => {
    result = { error, value: value as T | undefined };
  });
  if (result === undefined) throw new Error(`allocation meter: the inspector did not answer ${method} synchronously (not the main thread?)`);
  if (result.error) throw result.error;
  return result.value!;
}

function frameName({ callFrame: { functionName, url, lineNumber } }: ProfileNode): string {
  return url === '' ? `${functionName || '(anonymous)'} (builtin)` : `${functionName || '(anonymous)'} (${url.replace(/^.*\/dist\//, '')}:${lineNumber + 1})`;
}

/** Bytes by allocating function; a builtin (an iterator's next, subarray) is named with the JavaScript function that called it. */
function sitesOf(head: ProfileNode): AllocationSite[] {
  const bytes = new Map<string, number>();
  const visit = (node: ProfileNode, caller: string) => {
    const name = frameName(node);
    const where = node.callFrame.url === '' && caller !== '' ? `${name} from ${caller}` : name;
    if (node.selfSize > 0) bytes.set(where, (bytes.get(where) ?? 0) + node.selfSize);
    for (const child of node.children) visit(child, node.callFrame.url === '' ? caller : name);
  };
  visit(head, '');
  return [...bytes].map(([where, n]) => ({ where, bytes: n })).sort((a, b) => b.bytes - a.bytes);
}

/** Opens a measuring window; the function it returns closes it. */
export function startAllocationMeter(sites = false): () => Allocation {
  const session = sites ? new Session() : undefined;
  if (session) {
    session.connect();
    post(session, 'HeapProfiler.enable');
    post(session, 'HeapProfiler.startSampling', { samplingInterval: SAMPLE_BYTES, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  }
  const profiler = new GCProfiler();
  profiler.start();
  const before = getHeapStatistics().used_heap_size;
  return () => {
    const after = getHeapStatistics().used_heap_size;
    const { statistics } = profiler.stop();
    const freed = statistics.reduce((n, gc) => n + gc.beforeGC.heapStatistics.usedHeapSize - gc.afterGC.heapStatistics.usedHeapSize, 0);
    let found: AllocationSite[] = [];
    if (session) {
      found = sitesOf(post<{ profile: { head: ProfileNode } }>(session, 'HeapProfiler.stopSampling').profile.head);
      session.disconnect();
    }
    return { bytes: Math.max(0, after - before + freed), collections: statistics.length, sites: found };
  };
}
