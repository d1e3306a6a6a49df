/**
 * A raw node:http client for what autocannon cannot do: fire many requests at the same instant
 * (one connection each) and keep them open.
 */
import { Agent, type ClientRequest, request } from 'node:http';
import { performance } from 'node:perf_hooks';

export interface Outcome {
  status: number;
  ms: number;
}

/** Sends `n` GETs at once, each on its own connection; resolves when all have answered. */
export function burst(url: string, n: number): Promise<Outcome[]> {
  const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const all: Promise<Outcome>[] = [];
  for (let i = 0; i < n; i++) {
    all.push(
      new Promise((resolve) => {
        const start = performance.now();
        const req = request(`${url}/bench/${i}`, { agent }, (res) => {
          res.resume();
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, ms: performance.now() - start }),
          );
        });
        req.on('error', () => resolve({ status: 0, ms: performance.now() - start }));
        req.end();
      }),
    );
  }
  return Promise.all(all).finally(() => agent.destroy());
}

/**
 * Opens `n` GETs that stay pending (the proxy queues them), in batches so that the listen
 * backlog is not overrun. Returns the requests so the caller can abort them.
 */
export async function openMany(url: string, n: number, batch = 500): Promise<ClientRequest[]> {
  const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const reqs: ClientRequest[] = [];
  for (let i = 0; i < n; i++) {
    const req = request(`${url}/queued/${i}`, { agent }, (res) => res.resume());
    req.on('error', () => {});
    req.end();
    reqs.push(req);
    if (i % batch === batch - 1) await new Promise((r) => setTimeout(r, 20));
  }
  return reqs;
}
