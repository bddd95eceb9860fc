/**
 * Runs one incarnation's driver machine, in whichever thread it runs (the
 * driver's own, driver-thread-body.ts, or the host's, incarnation.ts), and
 * funnels its end into one promise: resolved when the machine reaches a
 * final state (the driver is done with the device); rejected when the
 * driver reports a fault through its bus (DriverBus.fault) or the machine
 * fails (an invoked actor that rejects, an action that throws). Either
 * rejection is the driver's crash to the host's supervision. At a fault the
 * machine is stopped first, so its invoked actors' cleanups run and it
 * stops touching the device before the host takes it back.
 */
import { createActor, type InspectionEvent, type Observer } from 'xstate';
import type { AnyDriver } from '../drivers/contract.js';
import type { AttachedBus } from './driver-bus.js';

export interface RunningMachine {
  readonly ended: Promise<void>;
  /** The host stops it (a clean stop, a take-back): `ended` then never settles. */
  stop(): void;
}

export function runDriverMachine(
  driver: AnyDriver, bus: AttachedBus, options: unknown, resources: unknown,
  inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void),
): RunningMachine {
  const actor = createActor(driver.machine, {
    input: { bus, options, resources },
    ...(inspect === undefined ? {} : { inspect }),
  });
  let fail!: (error: unknown) => void;
  const ended = new Promise<void>((resolve, reject) => {
    fail = reject;
    actor.subscribe({ complete: resolve, error: reject });
  });
  actor.start();
  // After start (a stopped actor would start again): a fault reported during attach ends the machine at once.
  bus.onFault((error) => {
    fail(error);
    // Not inside the action or handler that reported it: XState stops an actor between transitions.
    queueMicrotask(() => actor.stop());
  });
  return { ended, stop: () => actor.stop() };
}
