import test from 'ava';
import { spawnSync } from 'node:child_process';

const module = (path: string) => JSON.stringify(new URL(`../../${path}`, import.meta.url).href);

/**
 * Runs `script` in a fresh process whose main thread never loads the addon
 * itself: only a worker does, and the worker exits first. Node then unloads
 * the addon while code in it can still be called.
 */
function runAfterWorkerExit(workerScript: string, mainScript: string) {
  const script = `
    const { Worker } = await import('node:worker_threads');
    const worker = new Worker(${JSON.stringify(workerScript)}, { eval: true });
    let message;
    worker.once('message', (m) => { message = m; });
    await new Promise((resolve) => worker.once('exit', resolve));
    ${mainScript}`;
  return spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { timeout: 20_000, encoding: 'utf8' });
}

test('a SharedArrayBuffer made by a worker that has exited can still be dropped (its unmap code stays loaded)', (t) => {
  const run = runAfterWorkerExit(
    `const { allocShared } = await import(${module('shm/mapping.js')});
     (await import('node:worker_threads')).parentPort.postMessage(allocShared(4096));`,
    `new Uint8Array(message)[0] = 1;
     globalThis.gc();
     await new Promise((resolve) => setTimeout(resolve, 50));
     console.log('dropped ' + message.byteLength);`,
  );
  t.is(run.signal, null, `the process died of ${run.signal}`);
  t.is(run.status, 0, run.stderr);
  t.is(run.stdout.trim(), 'dropped 4096');
});

test('DMA memory beyond what the machine can give is an UpciError naming the size, with a fix, not a plain mmap Error', async (t) => {
  const { allocShared } = await import('../../shm/mapping.js');
  const size = 2 ** 48; // past the user address space: refused whatever the overcommit policy
  const error = t.throws(() => allocShared(size), { code: 'NO_MEMORY', message: new RegExp(`cannot allocate ${size} bytes.*ENOMEM`) } as never);
  t.regex((error as unknown as { fix: string }).fix, /allocate less.*bytes free/);
  t.is(((error as Error).cause as { errno: number }).errno, 12, 'the kernel\'s errno travels with the cause');
});
