/**
 * Doubt added per millisecond of a sample's age: clocks drift (tens of ppm), and a server may be
 * replaced by one with another clock. At 1e-4 a 0.2 ms sample gives way to a 0.5 ms one after
 * 3 s and to a 2 ms one after 18 s.
 */
const AGEING = 1e-4;

/**
 * `remote clock − local clock` from request/response round trips, the NTP way: the remote
 * reading was taken somewhere between sending and receiving, so the midpoint errs by at most
 * half the round trip. The sample with the smallest bound (aged by `AGEING`) is kept, so one slow
 * round trip does not move the estimate.
 */
export class ClockOffset {
  #offsetMs = 0;
  #boundMs = Number.POSITIVE_INFINITY;
  #at = 0;

  /**
   * Adds one round trip (local times of sending and receiving, and the remote clock's reading
   * during it, all in ms), then returns the local time by which the remote clock has certainly
   * reached `remoteAt`: the estimate moved by its error bound, so a start is never released early.
   */
  localTimeOf(remoteAt: number, sentAt: number, receivedAt: number, reading: number): number {
    this.#add(sentAt, receivedAt, reading);
    // This round trip alone bounds it too: the reading was taken before the answer arrived. The
    // smaller of two bounds that are both never early (a start Redis granted "now" is due now).
    return Math.min(receivedAt + (remoteAt - reading), remoteAt - this.#offsetMs + this.#boundMs);
  }

  /**
   * The local time before which the remote clock had certainly not reached `remoteAt`, from the
   * estimate after the latest `localTimeOf` and from that round trip (`sentAt`, `reading`): the
   * other end of the interval `localTimeOf` bounds from above. Their difference is how early a
   * start released at `localTimeOf` may really be relative to the remote instant.
   */
  earliestLocalTimeOf(remoteAt: number, sentAt: number, reading: number): number {
    return Math.max(sentAt + (remoteAt - reading), remoteAt - this.#offsetMs - this.#boundMs);
  }

  /** Adds one round trip (local send and receive times, the remote reading during it, ms). */
  sample(sentAt: number, receivedAt: number, reading: number): void {
    this.#add(sentAt, receivedAt, reading);
  }

  #add(sentAt: number, receivedAt: number, remoteAt: number): void {
    const boundMs = (receivedAt - sentAt) / 2;
    if (boundMs <= this.#boundMs + (receivedAt - this.#at) * AGEING) {
      this.#offsetMs = remoteAt - (sentAt + receivedAt) / 2;
      this.#boundMs = boundMs;
      this.#at = receivedAt;
    }
  }
}
