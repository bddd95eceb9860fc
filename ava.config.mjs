// One ava config for both suites: the VM bench sets UPCI_VM=1 in the guest,
// where the device tests run one file at a time (they share the devices).
const inVm = process.env.UPCI_VM === '1';

export default {
  files: inVm ? ['dist/test/vm/**/*.test.js'] : ['dist/test/unit/**/*.test.js'],
  concurrency: inVm ? 1 : 2,
  serial: inVm,
  timeout: inVm ? '300s' : '60s',
  workerThreads: false,
};
