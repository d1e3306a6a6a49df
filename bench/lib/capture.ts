/**
 * The bench's side of the wire capture (`fixtures/capture.ts`): which tcpdump, and whether a
 * run's arrival times come from the wire or from the upstream handler's record.
 */
import { WireCapture } from '../../fixtures/capture.js';

const TCPDUMP = process.env.BENCH_TCPDUMP ?? '/usr/bin/tcpdump';

/** Starts a capture of the requests towards `port` with the tcpdump of `BENCH_TCPDUMP`. */
export function captureWire(port: number): Promise<WireCapture | undefined> {
  return WireCapture.start(port, TCPDUMP);
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
