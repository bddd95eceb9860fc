/** The e1000e driver's options (upci run configs and DriverHost). */
export const e1000eOptions = {
  interrupt: {
    type: 'enum', values: ['msix', 'msi', 'intx', 'poll'], default: 'msix',
    doc: '"msix": receive, transmit and other causes (link, overrun) on vectors 0, 1, 2 through IVAR; "msi"/"intx": one vector for all; "poll": no interrupts, the driver polls its rings and the link',
  },
  maxInterruptsPerSecond: {
    type: 'integer', min: 0, max: 1_000_000, default: 0,
    doc: 'interrupt throttling (ITR, or EITR per MSI-X vector); 0 leaves it to the device (QEMU 7.2 never goes below 500 x 256 ns, about 7,800 per second)',
  },
  rxRing: { type: 'integer', min: 8, max: 4096, default: 512, doc: 'receive descriptors (a multiple of 8)' },
  txRing: { type: 'integer', min: 8, max: 4096, default: 256, doc: 'transmit descriptors (a multiple of 8)' },
  rxBuffers: { type: 'integer', min: 8, max: 65_536, default: 1024, doc: 'receive buffers of 2 KiB, at least rxRing: the surplus is what consumers may hold unreleased while the ring stays full' },
  promiscuous: { type: 'boolean', default: false, doc: 'accept every unicast and multicast frame' },
  allMulticast: { type: 'boolean', default: false, doc: 'accept every multicast frame (IPv6 neighbour discovery needs its groups, or this)' },
  failAfterRxFrames: {
    type: 'integer', min: 1,
    doc: 'test/fault injection: the receive handler throws after N frames of the first incarnation (restarts run clean)',
  },
} as const;
