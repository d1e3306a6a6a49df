import { load } from './lib/load.js';
import { ServerChild } from './lib/processes.js';

const up = await ServerChild.start('upstream');
for (let i = 0; i < 3; i++)
  for (const m of ['GET', 'POST'] as const) {
    const r = await load({
      url: `${up.url}/x`,
      connections: 50,
      duration: 3,
      method: m,
      ...(m === 'POST' ? { body: Buffer.alloc(1024, 'x') } : {}),
    });
    console.log(m, Math.round(r.rps), r.p50.toFixed(2), r.p99.toFixed(2), r.errors);
  }
await up.stop();
