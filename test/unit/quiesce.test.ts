import test from 'ava';
import { quiesce } from '../../pci/teardown.js';

test('quiesce runs bus mastering, interrupts, DMA and BARs in that order whatever the caller lists first, with `first` before and `last` after', (t) => {
  const order: string[] = [];
  const step = (name: string) => () => void order.push(name);
  quiesce('test', {
    bars: [step('bar0'), step('bar2')],
    dma: [step('dma')],
    interrupts: [step('msi')],
    busMaster: step('bus master off'),
  }, { last: [step('close')], first: [step('driver hook')] });
  t.deepEqual(order, ['driver hook', 'bus master off', 'msi', 'dma', 'bar0', 'bar2', 'close']);
});

test('every quiesce step runs when earlier ones throw, and the failures are thrown together', (t) => {
  const order: string[] = [];
  const error = t.throws(() => quiesce('stopping x', {
    busMaster: () => { throw new Error('config write failed'); },
    dma: [() => { throw new Error('unmap failed'); }],
    bars: [() => void order.push('bars')],
  }, { last: [() => void order.push('close')] }));
  t.true(error instanceof AggregateError);
  t.is(error!.message, 'stopping x: 2 steps failed');
  t.deepEqual(order, ['bars', 'close']);
});
