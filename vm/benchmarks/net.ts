// Network benchmark: upci's e1000e driver against the guest kernel's e1000e.ko on a second,
// identical e1000e in the same VM run (vm/benchmarks/packet-rates.ts says how each row is
// measured; the kernel side with AF_PACKET, vm/net/peer.c, the C reference).
//
//   npm run bench:net [-- --quick] [-- --allocations]
import { defaultDevices, guestAddress } from '../bench.js';
import { benchmarkMain } from './harness.js';
import { packetRates } from './packet-rates.js';

const nics = defaultDevices.filter((d) => d.model === 'e1000e');

await benchmarkMain({ name: 'net', reference: '../net/peer.c', script: 'net.js', cpus: 2 }, async (peerBinary, quick) => {
  console.log(await packetRates({
    driver: 'e1000e',
    options: { rxRing: 4096, rxBuffers: 8192 },
    address: guestAddress(nics.find((d) => d.bind === 'vfio-pci')!),
    kernelAddress: guestAddress(nics.find((d) => d.bind === 'e1000e')!),
    peerBinary,
    count: quick ? 20_000 : 100_000,
    sites: process.argv.includes('--allocations'),
  }));
  return 0;
});
