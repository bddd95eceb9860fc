/**
 * The host side of the guest's access to QEMU's human monitor: the guest
 * drops a command file into the results share (vm/monitor.ts), the host
 * sees it (inotify on its own directory), sends the command over the
 * monitor's unix socket and writes the answer back next to it. Only the
 * commands vm/monitor.ts lets through reach QEMU.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MONITOR_DIR = 'monitor';
const PROMPT = '(qemu) ';

export class MonitorRelay {
  private socket: Socket | undefined;
  private buffered = '';
  private queue: Promise<void> = Promise.resolve();
  private readonly done = new Set<string>();

  private constructor(
    private readonly dir: string,
    private readonly socketDir: string,
    private readonly watcher: FSWatcher,
  ) {}

  get socketPath(): string {
    return join(this.socketDir, 'monitor.sock');
  }

  static async start(outDir: string): Promise<MonitorRelay> {
    const dir = join(outDir, MONITOR_DIR);
    await mkdir(dir);
    // Not in outDir: the guest's 9p view of it should hold no socket.
    const socketDir = await mkdtemp(join(tmpdir(), 'upci-monitor-'));
    let relay: MonitorRelay | undefined;
    const watcher = watch(dir, (_event, name) => {
      if (name?.endsWith('.cmd')) relay?.pick(name);
    });
    relay = new MonitorRelay(dir, socketDir, watcher);
    return relay;
  }

  private pick(name: string): void {
    if (this.done.has(name)) return;
    this.done.add(name);
    this.queue = this.queue.then(async () => {
      let answer: string;
      try {
        const command = (await readFile(join(this.dir, name), 'utf8')).trim();
        answer = await this.run(command);
      } catch (e) {
        answer = `relay error: ${(e as Error).message}`;
      }
      const out = join(this.dir, name.replace(/\.cmd$/, '.out'));
      await writeFile(`${out}.tmp`, answer);
      await rename(`${out}.tmp`, out);
    });
  }

  private async connected(): Promise<Socket> {
    if (this.socket) return this.socket;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(this.socketPath, () => resolve(s));
      s.once('error', reject);
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffered += chunk;
      this.wakeReader?.();
    });
    this.socket = socket;
    await this.untilPrompt();
    return socket;
  }

  private wakeReader: (() => void) | undefined;

  private async untilPrompt(): Promise<string> {
    const deadline = Date.now() + 10_000;
    while (!this.buffered.endsWith(PROMPT)) {
      if (Date.now() > deadline) throw new Error(`QEMU's monitor gave no prompt within 10 s (got ${JSON.stringify(this.buffered.slice(-200))})`);
      await new Promise<void>((resolve) => {
        this.wakeReader = resolve;
        setTimeout(resolve, 100);
      });
    }
    const text = this.buffered.slice(0, -PROMPT.length);
    this.buffered = '';
    return text;
  }

  private async run(command: string): Promise<string> {
    const socket = await this.connected();
    socket.write(`${command}\n`);
    // HMP echoes the command line, then prints its answer and the next prompt.
    const text = await this.untilPrompt();
    const lines = text.replace(/\r/g, '').split('\n');
    return lines.filter((l) => !l.includes(command) && !/\x1b\[/.test(l)).join('\n').trim();
  }

  async close(): Promise<void> {
    this.watcher.close();
    await this.queue.catch(() => undefined);
    this.socket?.destroy();
    await rm(this.socketDir, { recursive: true, force: true });
  }
}
