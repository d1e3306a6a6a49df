import * as prom from 'prom-client';
import { describe, expect, it } from 'vitest';
import { collectDefaultMetrics, Registry } from '../../../src/metrics/prom-client.js';

/** Each metric's name and type, as a registry would export them. */
async function names(registry: prom.Registry): Promise<string[]> {
  return (await registry.getMetricsAsJSON()).map((m) => `${m.name} ${m.type}`).sort();
}

/** The CPU counters from one scrape. */
async function cpu(registry: prom.Registry): Promise<Record<'user' | 'system' | 'total', number>> {
  const json = await registry.getMetricsAsJSON();
  const read = (name: string) => json.find((m) => m.name === name)?.values[0]?.value ?? Number.NaN;
  return {
    user: read('process_cpu_user_seconds_total'),
    system: read('process_cpu_system_seconds_total'),
    total: read('process_cpu_seconds_total'),
  };
}

describe("the proxy's default process metrics", () => {
  it("are prom-client's own: the same names and types as its collectDefaultMetrics", async () => {
    const ours = new Registry();
    collectDefaultMetrics(ours);
    const theirs = new prom.Registry();
    prom.collectDefaultMetrics({ register: theirs });
    expect(await names(ours)).toEqual(await names(theirs));
    expect((await names(ours)).length).toBeGreaterThan(20);
  });

  it('count CPU seconds: total = user + system, growing with the work done', async () => {
    const registry = new Registry();
    collectDefaultMetrics(registry);
    const before = await cpu(registry);
    const until = performance.now() + 60;
    while (performance.now() < until); // 60 ms of CPU
    const after = await cpu(registry);
    expect(after.total - before.total).toBeGreaterThanOrEqual(0.05);
    expect(after.total).toBeCloseTo(after.user + after.system, 9);
    const usage = process.cpuUsage();
    expect(after.total).toBeLessThanOrEqual((usage.user + usage.system) / 1e6);
  });
});
