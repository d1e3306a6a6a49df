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
    // Real timers: each queued request holds a real deadline timer, as in production. One start
    // per 1000 s and a deadline far enough away that the head's slot is granted: everyone
    // else stays queued behind it.
    const { pacer } = setup({ perSecond: 0.001, queueMax: QUEUED + 1 });
    // The client's signals belong to the handler, not the pacer: made before the baseline.
    const clients = Array.from({ length: QUEUED }, () => new AbortController());
    const settled: Promise<unknown>[] = [];
    const deadline = Date.now() + 100_000_000;
    await pacer.acquire({ deadline }); // takes the free slot, so that all 10,000 below wait
    const before = heapUsed();
    for (const client of clients) {
      settled.push(pacer.acquire({ deadline, signal: client.signal }).catch(() => undefined));
    }
    await new Promise((resolve) => setImmediate(resolve));
    expect(pacer.waiting).toBe(QUEUED);
    const after = heapUsed();
    const bytes = after - before;
    console.log(
      `pacing memory: ${QUEUED} queued requests = ${(bytes / 1024 / 1024).toFixed(2)} MB (${Math.round(bytes / QUEUED)} bytes each)`,
    );
    // Generous: a request holding a buffer or a closure over large state would exceed it.
    expect(bytes).toBeLessThan(50 * 1024 * 1024);
    expect(bytes).toBeGreaterThan(0);

    await pacer.close();
    await Promise.all(settled);
    expect(pacer.waiting).toBe(0);
    // After close everything is released (no leak through listeners on the client signals).
    const released = heapUsed();
    expect(released - before).toBeLessThan(bytes / 4);
  });
});
