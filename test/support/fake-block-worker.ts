/**
 * A worker thread serving a fake block device (test/support/fake-block-device.ts)
 * through services/block-service.ts directly, for the proxy's unit tests. It
 * counts the messages it posts; {type:'stats'} gets the count back, with
 * its rings' wake-up counts and the fake's registrations; {type:'meter'}
 * opens an allocation meter (vm/benchmarks/allocation.ts) on this thread
 * and the next one closes it and answers what this thread allocated.
 */
import { MessagePort, parentPort } from 'node:worker_threads';
import { serveBlockDevice } from '../../services/block-service.js';
import { ringWakeUps } from '../../shm/ring.js';
import { startAllocationMeter, type Allocation } from '../../vm/benchmarks/allocation.js';
import { fakeBlockDevice } from './fake-block-device.js';

let posted = 0;
const post = MessagePort.prototype.postMessage;
MessagePort.prototype.postMessage = function (this: MessagePort, ...args: Parameters<MessagePort['postMessage']>) {
  posted++;
  return post.apply(this, args);
};

const { device, sharedSeen, registrations } = fakeBlockDevice();
const served = serveBlockDevice(device);
parentPort!.postMessage({ type: 'setup', setup: served.setup }, [...served.transfer]);
let meter: (() => Allocation) | undefined;
parentPort!.on('message', (m: { type: 'stats' } | { type: 'stop' } | { type: 'meter' }) => {
  if (m.type === 'stop') {
    served.stop();
    parentPort!.close();
    return;
  }
  if (m.type === 'meter') {
    if (meter === undefined) {
      meter = startAllocationMeter(true);
      parentPort!.postMessage({ type: 'meter' });
    } else {
      const allocation = meter();
      meter = undefined;
      parentPort!.postMessage({ type: 'meter', allocation, wakeUps: ringWakeUps() });
    }
    return;
  }
  parentPort!.postMessage({ type: 'stats', posted: posted + 1, sharedSeen, registrations, wakeUps: ringWakeUps() });
});
