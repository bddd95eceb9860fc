/**
 * One hostile NBD client, as a process of its own (so its memory is not the
 * server's): `node nbd-hostile-client.js MODE SOCKET [EXPORT]`. It prints
 * what it did as one JSON line when it ends, and exits 0 when the server
 * did what a server must to it, 1 when not.
 *
 *  huge-write     a WRITE announcing 2 GiB, then its payload streamed a MiB at a
 *                 time: the server must close before 512 MiB went
 *  never-read     20,000 pipelined 128 KiB READs, replies never read; runs until killed
 *  junk           4 KiB of junk after the handshake: the server must close
 *  early-close    a WRITE of 1 MiB announced, 4 KiB of it sent, then the socket closed
 *  unknown-flags  client flags with an unknown bit: the server must close
 */
import { ByteStream, NBD, connectTo, go, greet, request } from '../support/nbd-client.js';

const MiB = 1024 * 1024;
const [mode, path, name = 'a'] = process.argv.slice(2);
if (path === undefined) throw new Error('usage: nbd-hostile-client.js MODE SOCKET [EXPORT]');

const report = (ok: boolean, what: Record<string, unknown>) => {
  console.log(JSON.stringify({ mode, ok, ...what }));
  process.exit(ok ? 0 : 1);
};

const stream = new ByteStream(await connectTo(path));
if (mode === 'unknown-flags') {
  await greet(stream, NBD.CLIENT_FIXED_NEWSTYLE | 4);
  await stream.closed;
  report(true, {});
}
await greet(stream);
await go(stream, name);
switch (mode) {
  case 'huge-write': {
    stream.socket.write(request(NBD.CMD.WRITE, 7n, 0, 2 ** 31));
    const chunk = Buffer.alloc(MiB, 0x5a);
    let sent = 0;
    while (sent < 512 * MiB && !stream.ended) {
      if (!stream.socket.write(chunk)) await Promise.race([new Promise((resolve) => stream.socket.once('drain', resolve)), stream.closed]);
      sent += MiB;
    }
    await Promise.race([stream.closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    report(stream.ended && sent < 512 * MiB, { sentMiB: sent / MiB, closed: stream.ended });
    break;
  }
  case 'never-read':
    stream.socket.pause();
    stream.socket.write(Buffer.concat(Array.from({ length: 20_000 }, (_, i) => request(NBD.CMD.READ, BigInt(i), 0, 128 * 1024))));
    // Until the test kills it.
    await stream.closed;
    report(false, { closed: true });
    break;
  case 'junk': {
    const junk = Buffer.alloc(4096);
    for (let i = 0; i < junk.length; i++) junk[i] = (i * 151 + 89) & 0xff;
    stream.socket.write(junk);
    await stream.closed;
    report(true, {});
    break;
  }
  case 'early-close':
    stream.socket.write(request(NBD.CMD.WRITE, 1n, 0, MiB));
    stream.socket.end(Buffer.alloc(4096));
    await stream.closed;
    report(true, {});
    break;
  default:
    throw new Error(`unknown mode ${mode}`);
}
