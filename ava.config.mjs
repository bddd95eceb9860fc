// One ava config for every suite: the VM bench sets UPCI_VM=1 in the guest,
// where the device tests run one file at a time (they share the devices);
// UPCI_SUITE=trace picks the suite that needs QEMU's MMIO trace.
const inVm = process.env.UPCI_VM === '1';
const suite = inVm ? (process.env.UPCI_SUITE === 'trace' ? 'vm-trace' : 'vm') : 'unit';

export default {
  files: [`dist/test/${suite}/**/*.test.js`],
  concurrency: inVm ? 1 : 2,
  serial: inVm,
  timeout: inVm ? '300s' : '60s',
  workerThreads: false,
};
