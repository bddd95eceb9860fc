/**
 * One incarnation of the e1000e driver: the device brought up from reset
 * (station address, PHY, filters, rings, interrupt routing), serviced by
 * its interrupt vectors or by polling, and stopped cleanly. It offers its
 * packet port through DriverBus.providePacketPort (drivers/packet.ts):
 * received frames by reference, transmit buffers the consumer fills.
 */
import type { BusSpace } from '../../pci/bus-space.js';
import type { InterruptEvent } from '../../pci/intr.js';
import type { DriverBus, DriverInterrupts, OptionsOf } from '../contract.js';
import { formatMac, type Mac, type PortInfo } from '../packet.js';
import { NicPort } from '../kit/nic-port.js';
import { Poller } from '../kit/poller.js';
import { VectorService } from '../kit/vectors.js';
import { e1000eTag } from './ring.js';
import { accumulateStats, globalReset, HARDWARE_COUNTERS, phyId, readLink, readMac, receiveControl, setMulticast, setReceiveAddress } from './mac.js';
import { CTRL_EXT, INT, IVAR, REG, RFCTL, TCTL } from './registers.js';
import { RxRing } from './rx-ring.js';
import { TxRing } from './tx-ring.js';
import type { e1000eOptions } from './options.js';

export type E1000eOptions = OptionsOf<typeof e1000eOptions>;

/** MSI-X vector roles, in IVAR order. */
const RX_VECTOR = 0;
const TX_VECTOR = 1;
const OTHER_VECTOR = 2;
/** The "other" causes this driver enables: link change and receive overrun. */
const OTHER_CAUSES = INT.LSC | INT.RXO;
/** Causes of the single MSI or INTx vector. */
const SINGLE_CAUSES = INT.RXT0 | INT.RXDMT0 | INT.TXDW | OTHER_CAUSES;
/** Frames delivered per RX poll before the ring is refilled. */
const RX_BUDGET = 64;
const POLL_LINK_MS = 50;

/** EITR/ITR hold the minimum interval between interrupts in 256 ns units. */
function throttleInterval(perSecond: number): number {
  return perSecond === 0 ? 0 : Math.min(0xffff, Math.max(1, Math.round(1e9 / (perSecond * 256))));
}

export class E1000e extends NicPort<TxRing> {
  private readonly rx: RxRing;
  private interrupts: DriverInterrupts | undefined;
  /** The vectors' handlers; a throw is the driver's fault (fail). */
  private readonly vectors = new VectorService<E1000e>(this, (e) => this.fail(e));
  /** interrupt "poll": the poller that runs the polled mode (kit/poller.ts). */
  private poller: Poller | undefined;
  info!: PortInfo;
  readonly hardwareCounters = HARDWARE_COUNTERS;

  constructor(
    bus: DriverBus,
    private readonly regs: BusSpace,
    private readonly options: E1000eOptions,
  ) {
    const tag = e1000eTag(bus.dma());
    const rx = new RxRing(regs, tag, options.rxRing, options.rxBuffers);
    super(bus, new TxRing(regs, tag, options.txRing), options.rxBuffers);
    this.rx = rx;
  }

  /** No interrupts: the machine runs the polling loop. */
  get polled(): boolean {
    return this.options.interrupt === 'poll';
  }

  static attach(bus: DriverBus, options: E1000eOptions): E1000e {
    for (const [name, n] of [['rxRing', options.rxRing], ['txRing', options.txRing]] as const) {
      if (n % 8 !== 0) throw new Error(`e1000e: ${name} ${n} is not a multiple of 8 (the ring length must be a multiple of 128 bytes)`);
    }
    if (options.rxBuffers < options.rxRing) throw new Error(`e1000e: rxBuffers ${options.rxBuffers} is less than rxRing ${options.rxRing}: the ring could never be filled`);
    return new E1000e(bus, bus.mapBar(0), options);
  }

  /**
   * Reset and bring-up. The port is provided once the device is set up but
   * before it receives or interrupts; everything after the reset runs in one
   * turn of the event loop, so no request of the consumer's comes before the
   * rings are programmed.
   */
  async start(): Promise<void> {
    const r = this.regs;
    await globalReset(r, this.bus.timers());
    const { mac, source } = readMac(r);
    setReceiveAddress(r, 0, mac);
    const phy = phyId(r);
    // The consumer's filters come with its first message (PacketBinding.applyFilters).
    this.applyFilters([], []);
    r.write4(REG.RFCTL, RFCTL.ACK_DIS);
    // No receive/transmit interrupt delays: throttling is ITR's job.
    for (const reg of [REG.RDTR, REG.RADV, REG.TIDV, REG.TADV]) r.write4(reg, 0);
    this.info = {
      mac: formatMac(mac), macSource: source, phyId: phy,
      interrupt: this.options.interrupt,
      incarnation: this.bus.incarnation,
      rxRing: this.options.rxRing, txRing: this.options.txRing,
    };
    const endpoint = this.provide(this.options.failAfterRxFrames);
    this.rx.start(endpoint.counters.rx);
    this.tx.start(endpoint.counters.tx, (buffer) => endpoint.transmitted(buffer));
    r.write4(REG.TCTL, TCTL.EN | TCTL.PSP | (0x0f << TCTL.CT_SHIFT) | (0x3f << TCTL.COLD_SHIFT));
    this.bus.dma().enableBusMaster();
    this.setUpInterrupts();
    r.write4(REG.RCTL, receiveControl(this.options));
    const link = readLink(r);
    endpoint.setLink(link);
    this.bus.note(`up: ${formatMac(mac)} (${source}), PHY ${phy}, ${this.interrupts?.type ?? 'polled'}, link ${link.up ? 'up' : 'down'}, rings ${this.options.rxRing}/${this.options.txRing}`);
  }

  private setUpInterrupts(): void {
    const r = this.regs;
    const mode = this.options.interrupt;
    if (mode === 'poll') return;
    const interval = throttleInterval(this.options.maxInterruptsPerSecond);
    if (mode === 'msix') {
      this.interrupts = this.bus.establishInterrupts({ type: 'msix', vectors: 3 });
      r.write4(REG.IVAR, ((IVAR.VALID | RX_VECTOR) << IVAR.RXQ0_SHIFT) | ((IVAR.VALID | TX_VECTOR) << IVAR.TXQ0_SHIFT) | ((IVAR.VALID | OTHER_VECTOR) << IVAR.OTHER_SHIFT));
      // Each vector's cause is cleared in ICR and masked in IMS as the message is sent; the handler unmasks it when done.
      r.write4(REG.EIAC, INT.RXQ0 | INT.TXQ0 | INT.OTHER);
      r.write4(REG.CTRL_EXT, (r.read4(REG.CTRL_EXT) & ~CTRL_EXT.IAME) | CTRL_EXT.PBA_CLR);
      for (let v = 0; v < 3; v++) r.write4(REG.EITR0 + 4 * v, interval);
      this.vectors.serve(this.interrupts.vectors, [this.onRx, this.onTx, this.onOther]);
      r.write4(REG.IMS, INT.RXQ0 | INT.TXQ0 | INT.OTHER | OTHER_CAUSES);
      return;
    }
    this.interrupts = this.bus.establishInterrupts({ type: mode });
    r.write4(REG.IVAR, 0);
    r.write4(REG.ITR, interval);
    this.vectors.serve(this.interrupts.vectors, [this.onShared]);
    r.write4(REG.IMS, SINGLE_CAUSES);
  }

  /** Runs the polled mode: one pass per turn of the event loop, receive, transmit reclaim and (every POLL_LINK_MS) the link; a throw is the driver's fault. */
  runPolling(): void {
    let lastLink = Date.now();
    this.poller = new Poller({
      timers: this.bus.timers(),
      fault: (e) => this.fail(e),
      pass: () => {
        this.receive();
        this.tx.reclaim();
        const now = Date.now();
        if (now - lastLink >= POLL_LINK_MS) {
          lastLink = now;
          this.endpoint!.setLink(readLink(this.regs));
        }
        // Never idle: frames arrive without a kick.
        return !this.stopped;
      },
    });
    this.poller.kick();
  }

  /** The driver's fault (an interrupt handler's or a polling pass's throw): the device stopped, then the bus's fault funnel. */
  private fail(e: unknown): void {
    this.stop();
    this.bus.fault(e);
  }

  private receive(): void {
    while (this.rx.poll(this.deliver, RX_BUDGET) === RX_BUDGET);
  }

  private onRx(e: InterruptEvent): void {
    this.counters.vectors.rx++;
    this.receive();
    e.ack();
    this.regs.write4(REG.IMS, INT.RXQ0);
  }

  private onTx(e: InterruptEvent): void {
    this.counters.vectors.tx++;
    this.tx.reclaim();
    e.ack();
    this.regs.write4(REG.IMS, INT.TXQ0);
  }

  private onOther(e: InterruptEvent): void {
    this.counters.vectors.other++;
    const icr = this.regs.read4(REG.ICR);
    // Only the other causes: RXQ0/TXQ0 set while their vectors are masked must stay pending for them.
    this.regs.write4(REG.ICR, (icr & OTHER_CAUSES) | INT.OTHER);
    this.otherCauses(icr);
    if ((icr & OTHER_CAUSES) === 0) this.counters.vectors.misrouted++;
    e.ack();
    this.regs.write4(REG.IMS, INT.OTHER | OTHER_CAUSES);
  }

  private otherCauses(icr: number): void {
    if (icr & INT.RXO) this.counters.rx.overruns++;
    if (icr & INT.LSC) this.endpoint!.setLink(readLink(this.regs));
  }

  private onShared(e: InterruptEvent): void {
    this.counters.vectors.shared++;
    const icr = this.regs.read4(REG.ICR);
    if ((icr & SINGLE_CAUSES) === 0) {
      e.ack(false);
      return;
    }
    this.regs.write4(REG.ICR, icr);
    this.otherCauses(icr);
    this.receive();
    this.tx.reclaim();
    e.ack();
  }

  readStats(into: Record<string, number>): void {
    if (!this.stopped) accumulateStats(this.regs, into);
  }

  applyFilters(unicast: readonly Mac[], multicast: readonly Mac[]): void {
    if (this.stopped) return;
    const r = this.regs;
    for (let i = 1; i < 16; i++) setReceiveAddress(r, i, unicast[i - 1]);
    setMulticast(r, multicast);
  }

  /**
   * Clean stop: interrupts masked, receive off, transmit drained (a bounded
   * wait on TDH) then off, counters read, and whatever the rings still held
   * counted as lost. Synchronous: it runs as the driver machine stops, right
   * before the host quiesces the device, at a crash as at a clean stop.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.poller?.stop();
    this.vectors.stop();
    this.regs.write4(REG.IMC, INT.ALL);
    this.regs.write4(REG.RCTL, 0);
    // QEMU sends at the TDT write; real hardware needs a few microseconds per frame.
    for (let i = 0; i < 10_000 && this.tx.unsent() > 0; i++);
    // Stopped during bring-up, before the port was provided: nothing was sent or received.
    if (this.endpoint === undefined) return;
    const { rx, tx, hardware } = this.counters;
    tx.lostInRestart += this.tx.unsent();
    this.regs.write4(REG.TCTL, TCTL.PSP);
    rx.lostInRestart += this.rx.pendingCompleted();
    accumulateStats(this.regs, hardware);
    this.rx.close();
    this.endpoint.unbind();
  }
}
