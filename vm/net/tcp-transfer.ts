/** TCP through a TAP, IPv6 link-local only: a sink for the kernel's side (run in the link partner's namespace) and a sender of counting words (e1000e.test, exports.test, bench:export). */
import { createHash } from 'node:crypto';
import { connect } from 'node:net';

export const TCP_PORT = 5201;

/** A node one-liner for the kernel side: accept one connection on every address, print its byte count and SHA-256. */
export function tcpSinkScript(): string[] {
  return ['-e', `
    const net = require('node:net'); const crypto = require('node:crypto');
    const server = net.createServer((s) => {
      const h = crypto.createHash('sha256'); let bytes = 0;
      s.on('data', (c) => { h.update(c); bytes += c.length; });
      s.on('end', () => { console.log(JSON.stringify({ bytes, sha256: h.digest('hex') })); server.close(); });
    });
    server.listen(${TCP_PORT}, '::', () => console.log('listening'));
  `];
}

/**
 * Connects to `host` (an IPv6 link-local address with its %interface) on
 * TCP_PORT and sends `total` bytes of counting words; resolves with their
 * SHA-256 once the connection closed.
 */
export function sendOverTcp(host: string, total: number): Promise<string> {
  const expected = createHash('sha256');
  return new Promise<string>((resolve, reject) => {
    const socket = connect({ host, port: TCP_PORT }, () => {
      let written = 0;
      const more = () => {
        while (written < total) {
          // A new chunk each time: a write the socket queues keeps the buffer itself, not a copy.
          const chunk = Buffer.alloc(64 * 1024);
          for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((written + i) >>> 2, i);
          expected.update(chunk);
          written += chunk.length;
          if (!socket.write(chunk)) return socket.once('drain', more);
        }
        socket.end();
      };
      more();
    });
    socket.once('error', reject);
    socket.once('close', () => resolve(expected.digest('hex')));
  });
}
