/**
 * The driver's machine is type-checked against its resources and options
 * (defineDriver, drivers/contract.ts): the `@ts-expect-error` lines below
 * are checked by tsc when the tests are built, and each fails the build if
 * the line compiles (a machine that expects other resources or options
 * than its attach gives would then be accepted). The runtime test starts
 * the well-typed driver's machine on what its attach returned.
 */
import test from 'ava';
import { createActor, setup, toPromise } from 'xstate';
import { defineDriver, type DriverBus, type DriverInput, type OptionsOf } from '../../drivers/contract.js';

const options = { depth: { type: 'integer', min: 1, default: 8, doc: 'queue depth' } } as const;
type Options = OptionsOf<typeof options>;
interface Rings { readonly depth: number; readonly name: string }
interface Other { readonly vectors: number }

/** A machine that ends with what it was given: its output is its input's resources and options. */
function machineFor<O, R>() {
  return setup({ types: { input: {} as DriverInput<O, R>, context: {} as DriverInput<O, R>, output: {} as { resources: R; options: O } } })
    .createMachine({ context: ({ input }) => input, initial: 'done', states: { done: { type: 'final' } }, output: ({ context }) => ({ resources: context.resources, options: context.options }) });
}

const attach = (bus: DriverBus, opts: Options): Rings => ({ depth: opts.depth, name: bus.name });
const base = { name: 'typed', description: 'type test', match: [], options, attach };

const typed = defineDriver({ ...base, machine: machineFor<Options, Rings>() });

// A machine for other resources than attach returns:
// @ts-expect-error Other is not Rings
defineDriver({ ...base, machine: machineFor<Options, Other>() });

// A machine that expects more of the resources than attach gives:
// @ts-expect-error Rings lacks `vectors`
defineDriver({ ...base, machine: machineFor<Options, Rings & Other>() });

// A machine for other options:
// @ts-expect-error the options have no `queues`
defineDriver({ ...base, machine: machineFor<{ readonly queues: number }, Rings>() });

// An async attach's resources are what the promise resolves to:
defineDriver({ ...base, attach: async (bus: DriverBus, opts: Options) => attach(bus, opts), machine: machineFor<Options, Rings>() });
// @ts-expect-error the promise resolves to Rings, not Other
defineDriver({ ...base, attach: async (bus: DriverBus, opts: Options) => attach(bus, opts), machine: machineFor<Options, Other>() });

test('the well-typed driver\'s machine starts on what its attach returned and the options', async (t) => {
  const bus = { name: 'typed0' } as DriverBus;
  const resources = typed.attach(bus, { depth: 8 }) as Rings;
  const actor = createActor(typed.machine, { input: { bus, options: { depth: 8 }, resources } });
  actor.start();
  t.deepEqual(await toPromise(actor), { resources: { depth: 8, name: 'typed0' }, options: { depth: 8 } });
});
