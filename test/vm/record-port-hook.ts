/**
 * Loaded with `node --import` into a `upci run` child by test/vm/host.test.ts:
 * every device the child opens through VFIO records its teardown calls (with
 * the command register read from sysfs while the fd is still open) on
 * stderr, one `upci-port-record: ...` line each. Test-only: upci itself has
 * no such hook.
 */
import { VfioPort } from '../../kernel/linux/vfio.js';
import { recordingFile } from '../support/recording-port.js';
import { sysfsBusMaster } from './devices.js';

const open = VfioPort.prototype.open;
VfioPort.prototype.open = function recordedOpen(this: VfioPort, address) {
  return recordingFile(open.call(this, address), (record) => process.stderr.write(`upci-port-record: ${record}\n`), (file) => sysfsBusMaster(file.address));
};
