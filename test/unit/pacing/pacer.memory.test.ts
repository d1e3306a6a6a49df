import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { setup } from './helpers.js';

// Measuring heap needs a full collection before each reading.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function heapUsed(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

const QUEUED = 10_000;

describe('QueuePacer memory', () => {
  it(`holds ${QUEUED} queued requests in a bounded, measured amount of heap`, async () => {
    // Real timers, as in production (one timer serves every queued deadline). One start per
    // 1000 s and a deadline far enough away that the head's slot is granted: everyone else stays
    // queued behind it.
    const { pacer } = setup({ perSecond: 0.001, queueMax: QUEUED + 1 });
    // The client's signals belong to the handler, not the pacer: made before the baseline
    // (`AbortController` makes its signal on first access, ≈ 0.7 kB each).
    const clients = Array.from({ length: QUEUED }, () => new AbortController());
    const signals = clients.map((client) => client.signal);
    const gone = new Error('gone'); // one reason for all: the signals keep it
    const settled: Promise<unknown>[] = [];
    const deadline = Date.now() + 100_000_000;
    await pacer.acquire({ deadline }); // takes the free slot, so that all 10,000 below wait
    const before = heapUsed();
    for (const signal of signals) {
      settled.push(pacer.acquire({ deadline, signal }).catch(() => undefined));
    }
    await new Promise((resolve) => setImmediate(resolve));
    expect(pacer.waiting).toBe(QUEUED);
    const after = heapUsed();
    const bytes = after - before;
    console.log(
      `pacing memory: ${QUEUED} queued requests = ${(bytes / 1024 / 1024).toFixed(2)} MB (${Math.round(bytes / QUEUED)} bytes each)`,
    );
    // About twice the measured ≈ 1.8 kB: p-queue's task with its listener on the client's signal
    // (≈ 1.3 kB of it), the entry, its promise, the task's two closures, and this test's own
    // `catch`. A timer, a buffer or a closure over large state per request would exceed it.
    expect(bytes / QUEUED).toBeLessThan(3500);
    expect(bytes).toBeGreaterThan(0);

    // A request whose client aborts leaves p-queue at once: half of them gone, about half the
    // heap (≈ 0.55: the signals keep what their listeners made). A task left in p-queue until
    // its turn would keep nearly all of it.
    for (let i = 0; i < QUEUED; i += 2) clients[i]?.abort(gone);
    await new Promise((resolve) => setImmediate(resolve));
    expect(pacer.waiting).toBe(QUEUED / 2);
    const halved = heapUsed();
    expect(halved - before).toBeLessThan(bytes * 0.7);

    await pacer.close();
    await Promise.all(settled);
    expect(pacer.waiting).toBe(0);
    // After close everything is released (no leak through listeners on the client signals).
    const released = heapUsed();
    expect(released - before).toBeLessThan(bytes / 4);
  });
});
