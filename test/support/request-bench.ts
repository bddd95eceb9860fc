/**
 * Fake functions (vendor 0x1234, device 0x0001) with INTx, DMA that records its mappings, a device-request channel
 * each (unless `noRequest`), an error channel each with the kernel's AER counts in `aer`, and a reset method (unless
 * `noReset`), for the host's tests of the kernel's channels and of hot-plug; and `req-test`, the driver they run.
 */
import { map } from 'rxjs';
import { fromEventObservable, setup } from 'xstate';
import { defineDriver, type DriverInput, type DriverVector } from '../../drivers/contract.js';
import { ManagedIommuDomain } from '../../kernel/linux/iommu-dma.js';
import type { PciAddress } from '../../kernel/pci-address.js';
import type { InterruptEvent } from '../../pci/intr.js';
import { FakeChannel } from './fake-device.js';
import type { PcieErrorCount } from '../../kernel/port.js';
import { FakeIntxBench } from './fake-intx-bench.js';

export class RequestBench extends FakeIntxBench {
  readonly mapped = new Map<string, number>();
  readonly requests = new Map<string, FakeChannel>();
  readonly errors = new Map<string, FakeChannel>();
  readonly aer = new Map<string, PcieErrorCount[]>();

  constructor(private readonly noRequest: readonly string[] = [], private readonly noReset: readonly string[] = []) {
    super();
  }

  /** The kernel counts one more `name` error of `severity` for the device, then signals its error channel, as AER and vfio-pci do. */
  pcieError(address: string, name: string, severity: PcieErrorCount['severity']): void {
    const counts = this.aer.get(address) ?? [];
    const entry = counts.find((c) => c.name === name && c.severity === severity);
    this.aer.set(address, [...counts.filter((c) => c !== entry), { name, severity, count: (entry?.count ?? 0) + 1 }]);
    this.errors.get(address)!.fire();
  }

  private state(address: string): string {
    return `bus master ${this.busMaster(address) ? 'on' : 'off'}, vectors ${this.intxFds.has(address) ? 'on' : 'off'}, ${this.mapped.get(address) ?? 0} mapping(s)`;
  }

  /** Addresses where no device is (open fails NO_DEVICE), as after a hot-unplug. */
  readonly absent = new Set<string>();

  protected deviceId(address: PciAddress): number | undefined {
    return this.absent.has(address) ? undefined : 0x0001;
  }

  protected parts(address: PciAddress) {
    const request = this.requests.get(address) ?? new FakeChannel('request');
    this.requests.set(address, request);
    const error = this.errors.get(address) ?? new FakeChannel('error');
    this.errors.set(address, error);
    const dma = new ManagedIommuDomain({
      iovaRanges: [{ start: 0n, end: (1n << 39n) - 1n }], pageSizes: 0x1000n, availableMappings: () => undefined,
      map: () => void this.mapped.set(address, (this.mapped.get(address) ?? 0) + 1),
      unmap: (_iova, size) => {
        this.calls.push(`${address} unmap (${this.state(address)})`);
        this.mapped.set(address, (this.mapped.get(address) ?? 0) - 1);
        return size;
      },
    });
    return {
      dma,
      enableChannel: (channel: 'request' | 'error') => (channel === 'error' ? error.enable() : this.noRequest.includes(address) ? undefined : request.enable()),
      uncorrectableErrors: () => this.aer.get(address) ?? [],
      canReset: !this.noReset.includes(address),
      reset: () => void this.calls.push(`${address} reset (${this.state(address)})`),
      vectorsOff: () => this.calls.push(`${address} vectors off (${this.state(address)})`),
      close: () => {
        this.calls.push(`${address} close (${this.state(address)})`);
        request.closed();
        error.closed();
      },
    };
  }
}

type In = DriverInput<{ dmaBytes: number; attachDelayMs: number }, { readonly vector: DriverVector }>;

/** At attach: DMA memory, bus mastering on, INTx; then acks every interrupt. */
export const requestTestDriver = defineDriver({
  name: 'req-test',
  description: 'device-request unit-test driver',
  match: [{ vendor: 0x1234, device: 0x0001 }],
  options: {
    dmaBytes: { type: 'integer', min: 1, default: 4096, doc: 'DMA memory to allocate at attach' },
    attachDelayMs: { type: 'integer', min: 0, default: 0, doc: 'how long the attach takes' },
  } as const,
  attach: async (bus, options) => {
    if (options.attachDelayMs > 0) await new Promise((r) => setTimeout(r, options.attachDelayMs));
    const dma = bus.dma();
    dma.createTag({}).allocMemory(options.dmaBytes);
    dma.enableBusMaster();
    return { vector: bus.establishInterrupts({ type: 'intx' }).vectors[0]! };
  },
  machine: setup({
    types: { input: {} as In, context: {} as In, events: {} as { type: 'irq'; event: InterruptEvent } },
    actors: {
      irqs: fromEventObservable(({ input }: { input: DriverVector }) => input.events.pipe(map((event) => ({ type: 'irq' as const, event })))),
    },
  }).createMachine({
    context: ({ input }) => input,
    invoke: { src: 'irqs', input: ({ context }) => context.resources.vector },
    on: { irq: { actions: ({ event }) => event.event.ack() } },
  }),
});
export const requestRegistry = new Map([[requestTestDriver.name, requestTestDriver]]);
