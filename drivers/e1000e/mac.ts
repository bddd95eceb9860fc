/**
 * The MAC side of the 82574: global reset, the station address (RAL/RAH,
 * else the NVM), the PHY over MDIC, link state, receive filters and the
 * statistics registers.
 */
import type { BusSpace } from '../../pci/bus-space.js';
import type { DriverTimers } from '../kit/timers.js';
import type { LinkState, Mac } from '../packet.js';
import { CTRL, EERD, INT, MDIC, PHY, RAH, RCTL, REG, STATS, STATS_64, STATUS, TCTL } from './registers.js';

/**
 * Global reset (Linux e1000_reset_hw_82571): interrupts masked, receive
 * and transmit stopped, CTRL.RST. QEMU 7.2's CTRL.RST only reloads the
 * station address, so every register the driver relies on is written
 * again by its setup, never assumed to be at its reset value.
 */
export async function globalReset(regs: BusSpace, timers: DriverTimers): Promise<void> {
  regs.write4(REG.IMC, INT.ALL);
  regs.write4(REG.RCTL, 0);
  regs.write4(REG.TCTL, TCTL.PSP);
  regs.read4(REG.STATUS);
  await timers.sleep(10);
  regs.write4(REG.CTRL, regs.read4(REG.CTRL) | CTRL.RST);
  const deadline = Date.now() + 100;
  while ((regs.read4(REG.CTRL) & CTRL.RST) !== 0) {
    if (Date.now() > deadline) throw new Error('e1000e: the reset bit clearing did not happen within 100 ms');
    await timers.sleep(1);
  }
  regs.write4(REG.IMC, INT.ALL);
  regs.read4(REG.ICR);
  // Set link up; speed and duplex come from autonegotiation.
  regs.write4(REG.CTRL, (regs.read4(REG.CTRL) | CTRL.SLU) & ~(CTRL.FRCSPD | CTRL.FRCDPX));
}

/** Reads `reg` until `ready(value)` (EERD and MDIC finish within a few reads); throws naming `what` if it never does. */
function pollRegister(regs: BusSpace, reg: number, ready: (value: number) => boolean, what: string): number {
  for (let i = 0; i < 10_000; i++) {
    const v = regs.read4(reg);
    if (ready(v)) return v;
  }
  throw new Error(`e1000e: ${what} never completed`);
}

function eepromWord(regs: BusSpace, word: number): number {
  regs.write4(REG.EERD, (word << EERD.ADDR_SHIFT) | EERD.START);
  return pollRegister(regs, REG.EERD, (v) => (v & EERD.DONE) !== 0, `EEPROM read of word ${word} (EERD.DONE stayed clear)`) >>> EERD.DATA_SHIFT;
}

/** The station address: RAL0/RAH0 when valid (loaded from the NVM at reset), else NVM words 0..2. */
export function readMac(regs: BusSpace): { mac: Mac; source: 'RAL/RAH' | 'EEPROM' } {
  const rah = regs.read4(REG.RAH0);
  if (rah & RAH.AV) {
    const ral = regs.read4(REG.RAL0);
    return { mac: [ral & 0xff, (ral >>> 8) & 0xff, (ral >>> 16) & 0xff, ral >>> 24, rah & 0xff, (rah >>> 8) & 0xff], source: 'RAL/RAH' };
  }
  const w = [0, 1, 2].map((i) => eepromWord(regs, i));
  return { mac: [w[0]! & 0xff, w[0]! >>> 8, w[1]! & 0xff, w[1]! >>> 8, w[2]! & 0xff, w[2]! >>> 8], source: 'EEPROM' };
}

/** Receive address entry `index` (0..15) matches `mac`. */
export function setReceiveAddress(regs: BusSpace, index: number, mac: Mac | undefined): void {
  if (mac === undefined) {
    regs.write4(REG.RAH0 + index * 8, 0);
    return;
  }
  regs.write4(REG.RAL0 + index * 8, (mac[0] | (mac[1] << 8) | (mac[2] << 16) | (mac[3] << 24)) >>> 0);
  regs.write4(REG.RAH0 + index * 8, (mac[4] | (mac[5] << 8) | RAH.AV) >>> 0);
}

/** The multicast table: with RCTL.MO = 0, the hash is bits 47:36 of the address. */
export function setMulticast(regs: BusSpace, groups: readonly Mac[]): void {
  const table = new Uint32Array(128);
  for (const g of groups) {
    const hash = (((g[5] << 8) | g[4]) >>> 4) & 0xfff;
    table[hash >>> 5]! |= 1 << (hash & 0x1f);
  }
  for (let i = 0; i < 128; i++) regs.write4(REG.MTA + i * 4, table[i]!);
}

export interface FilterOptions {
  readonly promiscuous: boolean;
  readonly allMulticast: boolean;
}

export function receiveControl(f: FilterOptions): number {
  return RCTL.EN | RCTL.BAM | RCTL.SECRC | RCTL.BSIZE_2048 | (f.promiscuous ? RCTL.UPE | RCTL.MPE : 0) | (f.allMulticast ? RCTL.MPE : 0);
}

export function readPhy(regs: BusSpace, reg: number): number {
  regs.write4(REG.MDIC, (reg << MDIC.REG_SHIFT) | (MDIC.PHY_ADDRESS << MDIC.PHY_SHIFT) | MDIC.OP_READ);
  const v = pollRegister(regs, REG.MDIC, (value) => (value & (MDIC.READY | MDIC.ERROR)) !== 0, `PHY register ${reg} read (MDIC.R stayed clear)`);
  if (v & MDIC.ERROR) throw new Error(`e1000e: PHY register ${reg} read failed (MDIC.E set)`);
  return v & 0xffff;
}

export function readLink(regs: BusSpace): LinkState {
  const status = regs.read4(REG.STATUS);
  const phy = readPhy(regs, PHY.STATUS);
  const up = (status & STATUS.LU) !== 0;
  const speed = ([10, 100, 1000, 1000] as const)[(status & STATUS.SPEED_MASK) >>> STATUS.SPEED_SHIFT]!;
  return {
    up,
    speedMbps: up ? speed : undefined,
    fullDuplex: (status & STATUS.FD) !== 0,
    phyLink: (phy & PHY.STATUS_LINK) !== 0,
    autonegComplete: (phy & PHY.STATUS_AUTONEG_DONE) !== 0,
  };
}

export function phyId(regs: BusSpace): string {
  return `${readPhy(regs, PHY.ID1).toString(16).padStart(4, '0')}:${readPhy(regs, PHY.ID2).toString(16).padStart(4, '0')}`;
}

/** The statistics counters' names, for the port's shared counters (PacketBinding.hardwareCounters). */
export const HARDWARE_COUNTERS = Object.keys(STATS) as readonly (keyof typeof STATS)[];

/** Adds what the device counted since the last read (the read clears the registers) to the counters of those names. */
export function accumulateStats(regs: BusSpace, c: Record<string, number>): void {
  for (const name of HARDWARE_COUNTERS) {
    const reg = STATS[name];
    // Low half first (operands go left to right): reading the high half clears both.
    c[name] = c[name]! + regs.read4(reg) + (STATS_64.includes(reg) ? regs.read4(reg + 4) * 2 ** 32 : 0);
  }
}
