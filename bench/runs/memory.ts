/**
 * Run 5, memory: m2m-proxy's RSS (VmRSS) at idle after a warm-up, with 10,000 requests waiting
 * in its queue (pacing at 1/s, one connection per request), and while one 1 GiB POST body
 * streams through it to an upstream that drains it, and while 1000 clients each send a 64 KiB
 * body that the proxy keeps for a replay after a 401 (bounded by `limits.replayBytes`). Each part
 * uses a fresh proxy and reports its growth over its own idle figure.
 */
import { Agent, request } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openMany } from '../lib/client.js';
import { type Ctx, pick, round, sleep, type TargetCheck } from '../lib/context.js';
import { load } from '../lib/load.js';
import { M2mProxy } from '../lib/m2m.js';
import { capture, ServerChild } from '../lib/processes.js';
import { rssMiB, sampleRss } from '../lib/rss.js';
import { median, metricValue } from '../lib/stats.js';

export interface MemoryResult {
  idleMiB: number;
  queued: {
    requested: number;
    queued: number | undefined;
    note: string | undefined;
    rssMiB: number;
    addedMiB: number;
    /** Queue length a few seconds after every queued client disconnected. */
    queueAfterDisconnect: number | undefined;
    /** The same number of open requests held by a bare node:http server (the floor). */
    bareNodeAddedMiB: number;
  };
  /** Many clients sending a full-size replayable body at once: the peak under limits.replayBytes. */
  replay: {
    clients: number;
    bodyBytes: number;
    /** Answered 429 while the others waited (the replay budget or the queue was full). */
    refused: number;
    idleMiB: number;
    maxMiB: number;
    addedMiB: number;
  };
  streaming: {
    bytes: number;
    received: number;
    seconds: number;
    mibPerSecond: number;
    /** The same upload straight to the upstream, for scale. */
    directMibPerSecond: number;
    idleMiB: number;
    maxMiB: number;
    addedMiB: number;
  };
}

async function idleRss(pid: number): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    await sleep(200);
    samples.push(rssMiB(pid) ?? Number.NaN);
  }
  return median(samples);
}

/** How many sockets this process and the proxy may open, from the soft RLIMIT_NOFILE. */
async function fileLimit(): Promise<number> {
  try {
    return Number(await capture('sh', ['-c', 'ulimit -n']));
  } catch {
    return 1024;
  }
}

export async function runMemory(
  ctx: Ctx,
  tokenEndpoint: ServerChild,
): Promise<{ result?: MemoryResult; checks: TargetCheck[] }> {
  const absent = 'not measured (m2m-proxy absent)';
  const checks: TargetCheck[] = [
    { target: 'idle RSS', goal: '≤ 60 MB', measured: absent, pass: null },
    {
      target: 'RSS added by 10,000 queued requests (beyond their sockets)',
      goal: '≤ 50 MB',
      measured: absent,
      pass: null,
    },
    { target: 'RSS added while streaming 1 GB', goal: '≤ 30 MB', measured: absent, pass: null },
  ];
  if (!ctx.m2mAvailable) return { checks };
  if (rssMiB(process.pid) === undefined) {
    for (const c of checks) c.measured = 'not measured (no /proc on this system)';
    return { checks };
  }
  await tokenEndpoint.call('reset', { expiresIn: 3600, delayMs: 0 });
  const upstream = await ServerChild.start('upstream');
  const tokenUrl = `${tokenEndpoint.url}/token`;
  try {
    const requested_ = await queuedCount(ctx);
    const floor = await bareNodeFloor(requested_.count);
    ctx.log(
      `  floor: a bare node:http server holding ${requested_.count} open requests grows ${floor} MiB`,
    );

    // (a) idle, then 10,000 queued requests.
    const proxy = await M2mProxy.start({
      upstreamUrl: upstream.url,
      tokenUrl,
      rateLimit: {
        perSecond: 1,
        burst: 1,
        window: { max: 0 },
        queue: { max: 100_000, timeout: '600s' },
      },
      // One connection per queued request: above the default of 1024 open connections.
      limits: { connections: 20_000 },
    });
    let queued: MemoryResult['queued'];
    let idle: number;
    try {
      await load({ url: `${proxy.url}/warm`, connections: 1, amount: 2 });
      idle = await idleRss(proxy.pid);
      const { count: requested, note } = requested_;
      const reqs = await openMany(proxy.url, requested);
      let length: number | undefined;
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        length = metricValue(await proxy.metrics(), 'm2m_proxy_queue_length');
        if (length !== undefined && length >= requested - 60) break;
        if (length === undefined) await sleep(3000);
        await sleep(250);
      }
      const rssSamples: number[] = [];
      for (let i = 0; i < 5; i++) {
        rssSamples.push(rssMiB(proxy.pid) ?? Number.NaN);
        await sleep(200);
      }
      const rss = Math.max(...rssSamples);
      for (const r of reqs) r.destroy();
      await sleep(pick(ctx, 3000, 1500));
      queued = {
        requested,
        queued: length,
        note,
        rssMiB: round(rss, 1),
        addedMiB: round(rss - idle, 1),
        queueAfterDisconnect: metricValue(await proxy.metrics(), 'm2m_proxy_queue_length'),
        bareNodeAddedMiB: floor,
      };
    } finally {
      await proxy.stop();
    }
    ctx.log(
      `  idle ${round(idle, 1)} MiB; ${queued.queued ?? '?'} queued → ${queued.rssMiB} MiB (+${queued.addedMiB}); queue after disconnect: ${queued.queueAfterDisconnect ?? 'n/a'}`,
    );

    // (b) bodies kept for a replay: 1000 clients (the default queue.max) send 64 KiB at once.
    const replay = await replayPeak(upstream.url, tokenUrl);
    ctx.log(
      `  replay bodies: ${replay.clients} × ${replay.bodyBytes / 1024} KiB at once (${replay.refused} refused with 429), RSS ${replay.idleMiB} → max ${replay.maxMiB} MiB (+${replay.addedMiB})`,
    );

    // (c) one large body streamed through.
    const bytes = pick(ctx, 1024 ** 3, 256 * 1024 ** 2);
    const directStart = performance.now();
    await postStream(`${upstream.url}/upload`, bytes);
    const directSeconds = (performance.now() - directStart) / 1000;
    const streamProxy = await M2mProxy.start({ upstreamUrl: upstream.url, tokenUrl });
    let streaming: MemoryResult['streaming'];
    try {
      await load({ url: `${streamProxy.url}/warm`, connections: 4, amount: 200 });
      await load({
        url: `${streamProxy.url}/warm`,
        connections: 4,
        amount: 200,
        method: 'POST',
        body: Buffer.alloc(64 * 1024),
      });
      const streamIdle = await idleRss(streamProxy.pid);
      const sampler = sampleRss(streamProxy.pid, 100);
      const start = performance.now();
      const received = await postStream(`${streamProxy.url}/upload`, bytes);
      const seconds = (performance.now() - start) / 1000;
      const samples = sampler.stop();
      const max = Math.max(...samples);
      streaming = {
        bytes,
        received,
        seconds: round(seconds),
        mibPerSecond: round(bytes / 1024 ** 2 / seconds, 0),
        directMibPerSecond: round(bytes / 1024 ** 2 / directSeconds, 0),
        idleMiB: round(streamIdle, 1),
        maxMiB: round(max, 1),
        addedMiB: round(max - streamIdle, 1),
      };
    } finally {
      await streamProxy.stop();
    }
    ctx.log(
      `  streaming ${bytes / 1024 ** 2} MiB: ${streaming.seconds} s (${streaming.mibPerSecond} MiB/s; direct ${streaming.directMibPerSecond} MiB/s), RSS ${streaming.idleMiB} → max ${streaming.maxMiB} MiB (+${streaming.addedMiB}); upstream received ${streaming.received} bytes`,
    );

    const [idleCheck, queuedCheck, streamCheck] = checks as [TargetCheck, TargetCheck, TargetCheck];
    idleCheck.measured = `${round(idle, 1)} MB`;
    idleCheck.pass = idle <= 60;
    // The queue's own cost is what m2m-proxy adds over a bare node:http server holding the same
    // open requests: their sockets and HTTP parsers (the floor) are the clients', not the queue's,
    // and no proxy can hold 10,000 requests without them. Both figures are printed.
    const own = round(queued.addedMiB - queued.bareNodeAddedMiB, 1);
    queuedCheck.measured = `+${own} MB over the floor (+${queued.addedMiB} MB in all; ${queued.queued ?? '?'} queued; bare node:http holding as many: +${queued.bareNodeAddedMiB} MB${queued.note ? `; ${queued.note}` : ''})`;
    queuedCheck.pass =
      own <= 50 && queued.requested === 10_000 && (queued.queued ?? 0) >= queued.requested - 60;
    streamCheck.measured = `+${streaming.addedMiB} MB (${streaming.bytes / 1024 ** 2} MiB at ${streaming.mibPerSecond} MiB/s)`;
    streamCheck.pass = streaming.addedMiB <= 30 && streaming.received === bytes;
    // Idle RSS on other Node binaries (BENCH_NODES), e.g. the Node 24 the image runs.
    for (const node of (process.env.BENCH_NODES ?? '').split(',').filter(Boolean)) {
      const version = (await capture(node, ['--version'])).trim();
      const other = await M2mProxy.start({ upstreamUrl: upstream.url, tokenUrl, node });
      try {
        await load({ url: `${other.url}/warm`, connections: 1, amount: 20 });
        await sleep(5000);
        const rss = await idleRss(other.pid);
        ctx.log(`  idle on Node ${version}: ${round(rss, 1)} MiB`);
        checks.push({
          target: `idle RSS on Node ${version}`,
          goal: '≤ 60 MB',
          measured: `${round(rss, 1)} MB`,
          pass: rss <= 60,
        });
      } finally {
        await other.stop();
      }
    }
    return { result: { idleMiB: round(idle, 1), queued, replay, streaming }, checks };
  } finally {
    await upstream.stop();
  }
}

/** How many requests to queue: 10,000 unless the open-file limit cannot hold them. */
async function queuedCount(ctx: Ctx): Promise<{ count: number; note: string | undefined }> {
  // Each queued request holds a socket in the bench and one in the proxy.
  const limit = await fileLimit();
  if (limit >= 10_000 + 200) return { count: 10_000, note: undefined };
  const count = Math.max(100, limit - 200);
  const note = `ulimit -n is ${limit}: ${count} queued requests instead of 10,000 (raise it with ulimit -n 20000)`;
  ctx.log(`  ${note}`);
  return { count, note };
}

/** RSS growth of a bare node:http server holding `count` open requests (bench/servers/hold.ts). */
async function bareNodeFloor(count: number): Promise<number> {
  const hold = await ServerChild.start('hold');
  try {
    await load({ url: `${hold.url}/warm`, connections: 1, amount: 2 });
    const idle = await idleRss(hold.pid);
    const reqs = await openMany(hold.url, count);
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && (await hold.call<number>('held')) < count - 60)
      await sleep(250);
    const samples: number[] = [];
    for (let i = 0; i < 5; i++) {
      samples.push(rssMiB(hold.pid) ?? Number.NaN);
      await sleep(200);
    }
    for (const r of reqs) r.destroy();
    return round(Math.max(...samples) - idle, 1);
  } finally {
    await hold.stop();
  }
}

/**
 * Peak RSS while `clients` POSTs, each with a 64 KiB body (the largest the proxy keeps for a
 * replay), arrive at once at a proxy with the default limits, paced at 1/s so they wait.
 */
async function replayPeak(upstreamUrl: string, tokenUrl: string): Promise<MemoryResult['replay']> {
  const clients = 1000;
  const bodyBytes = 64 * 1024;
  const proxy = await M2mProxy.start({
    upstreamUrl,
    tokenUrl,
    rateLimit: {
      perSecond: 1,
      burst: 1,
      window: { max: 0 },
      queue: { max: clients, timeout: '60s' },
    },
  });
  try {
    await load({ url: `${proxy.url}/warm`, connections: 1, amount: 2 });
    const idle = await idleRss(proxy.pid);
    const sampler = sampleRss(proxy.pid, 100);
    const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
    const body = Buffer.alloc(bodyBytes, 'r');
    let refused = 0;
    const reqs = [];
    for (let i = 0; i < clients; i++) {
      const req = request(
        `${proxy.url}/replay/${i}`,
        {
          method: 'POST',
          agent,
          headers: { 'content-type': 'application/json', 'content-length': String(bodyBytes) },
        },
        (res) => {
          if (res.statusCode === 429) refused++;
          res.resume();
        },
      );
      req.on('error', () => {});
      req.end(body);
      reqs.push(req);
      if (i % 200 === 199) await sleep(20);
    }
    await sleep(5000);
    const samples = sampler.stop();
    for (const r of reqs) r.destroy();
    agent.destroy();
    const max = Math.max(...samples);
    return {
      clients,
      bodyBytes,
      refused,
      idleMiB: round(idle, 1),
      maxMiB: round(max, 1),
      addedMiB: round(max - idle, 1),
    };
  } finally {
    await proxy.stop();
  }
}

/** POSTs `bytes` of generated data (one 64 KiB buffer, reused) and returns the upstream's count. */
async function postStream(url: string, bytes: number): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 'm');
  let sent = 0;
  const source = new Readable({
    read() {
      if (sent >= bytes) {
        this.push(null);
        return;
      }
      const n = Math.min(chunk.length, bytes - sent);
      sent += n;
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n));
    },
  });
  return new Promise<number>((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => {
          try {
            resolve(Number((JSON.parse(text) as { received?: number }).received ?? 0));
          } catch {
            reject(new Error(`upload answered ${res.statusCode}: ${text.slice(0, 200)}`));
          }
        });
      },
    );
    req.on('error', reject);
    pipeline(source, req).catch(reject);
  });
}
