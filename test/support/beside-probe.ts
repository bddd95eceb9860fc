/**
 * A BesideTask module for the service layer's tests (services.test.ts): run
 * beside a block device's provider, it reports the thread it runs in and
 * what it read from the object it was given there, and hands back a port
 * that it closes when it is stopped.
 */
import { MessageChannel, threadId, type MessagePort } from 'node:worker_threads';
import type { BlockDevice } from '../../drivers/block.js';
import type { ServeBeside } from '../../services/service.js';

export interface BesideProbeSetup {
  readonly threadId: number;
  /** The first byte of block `lba`, read through the object the task was given. */
  readonly byte: number;
  /** The object's class: the provider's own device, not a cross-thread proxy. */
  readonly kind: string;
  readonly port: MessagePort;
}

export const serveBeside: ServeBeside<BlockDevice, { lba: number }, BesideProbeSetup> = async (device, args) => {
  const block = await device.read(args.lba, 1);
  const { port1, port2 } = new MessageChannel();
  return {
    setup: { threadId, byte: block[0]!, kind: device.constructor.name, port: port2 },
    transfer: [port2],
    stop: () => port1.close(),
  };
};
