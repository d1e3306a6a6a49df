/**
 * Arrival times as a WAF in front of the upstream would see them: the kernel's timestamps of the
 * request packets on the loopback interface, from tcpdump. The upstream's own record (its
 * request handler's clock) also contains the upstream process's scheduling delays: on a shared
 * 2-core machine one late handler makes its successor look early, although both packets came
 * on time. Optional: without tcpdump (`apt-get install tcpdump`, run as root) the runs fall
 * back to the handler's record and say so.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { stopProcess } from './processes.js';

const TCPDUMP = process.env.BENCH_TCPDUMP ?? '/usr/bin/tcpdump';

export class WireCapture {
  private out = '';

  private constructor(private readonly child: ChildProcess) {
    child.stdout?.on('data', (d: Buffer) => {
      this.out += d.toString();
    });
  }

  /**
   * Starts capturing data-carrying packets (PSH) towards `port` on loopback; one GET request is
   * one such packet. Resolves once tcpdump listens, or to `undefined` when it cannot run.
   */
  static async start(port: number): Promise<WireCapture | undefined> {
    if (!existsSync(TCPDUMP)) return undefined;
    const filter = `tcp dst port ${port} and (tcp[tcpflags] & tcp-push != 0)`;
    const child = spawn(TCPDUMP, ['-i', 'lo', '-n', '-tt', '-l', '-q', filter], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const listening = await new Promise<boolean>((resolve) => {
      let err = '';
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        if (err.includes('listening on')) resolve(true);
      });
      child.once('error', () => resolve(false));
      child.once('exit', () => resolve(false));
    });
    if (!listening) {
      await stopProcess(child);
      return undefined;
    }
    return new WireCapture(child);
  }

  /** Stops and returns the packet times (epoch ms, sorted). */
  async stop(): Promise<number[]> {
    this.child.kill('SIGINT');
    await stopProcess(this.child);
    const times: number[] = [];
    for (const line of this.out.split('\n')) {
      const t = Number(line.split(' ', 1)[0]);
      if (line.includes(' > ') && Number.isFinite(t)) times.push(t * 1000);
    }
    return times.sort((a, b) => a - b);
  }
}

/** Where the arrival times in a result were taken. */
export type MeasuredAt = 'wire' | 'upstream handler';

/**
 * The packet times when there is one per request the upstream recorded, else the upstream's own
 * record (a different count means the filter caught other traffic or missed some).
 */
export function preferWire(
  packets: number[] | undefined,
  handler: number[],
  log: (line: string) => void,
): { times: number[]; measuredAt: MeasuredAt } {
  if (packets && packets.length === handler.length) return { times: packets, measuredAt: 'wire' };
  if (packets)
    log(`  tcpdump saw ${packets.length} packets for ${handler.length} requests: not used`);
  else log('  tcpdump not available: arrivals are taken from the upstream handler');
  return { times: handler, measuredAt: 'upstream handler' };
}
