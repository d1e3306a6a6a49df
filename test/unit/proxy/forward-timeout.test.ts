import type { ServerResponse } from 'node:http';
import { type Dispatcher, errors } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/clock.js';
import { Cancellation } from '../../../src/proxy/cancellation.js';
import { ProxyError } from '../../../src/proxy/errors.js';
import { Forwarder, type Outgoing } from '../../../src/proxy/forward.js';

/**
 * A dispatcher that connects at once and then fails the way undici does when its own header or
 * body timer fires: the race at `upstream.timeout` that must not decide the answer's class.
 */
function failingDispatcher(fail: () => Error, afterMs: number): Dispatcher {
  return {
    dispatch(_options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) {
      handler.onConnect?.(() => {});
      setTimeout(() => handler.onError?.(fail()), afterMs);
      return true;
    },
    close: async () => {},
  } as unknown as Dispatcher;
}

const outgoing = (): Outgoing => ({
  method: 'GET',
  path: '/slow',
  headers: [],
  body: null,
  replayOn401: undefined,
  onWire: () => true,
});
const res = {} as ServerResponse; // never written to: no response headers arrive

const UPSTREAM = { url: 'http://upstream.test/api', timeout: 2000 };

async function classify(dispatcher: Dispatcher, advance: number): Promise<unknown> {
  const forwarder = new Forwarder({ config: UPSTREAM, clock: systemClock, dispatcher });
  const result = forwarder.send(outgoing(), res, new Cancellation()).catch((e: unknown) => e);
  await vi.advanceTimersByTimeAsync(advance);
  return result;
}

describe('the class of an upstream failure at the timeout boundary', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it.each([
    ['headers', () => new errors.HeadersTimeoutError()],
    ['body', () => new errors.BodyTimeoutError()],
  ])("is 504 upstream_timeout when undici's %s timer fires first", async (_, fail) => {
    vi.useFakeTimers();
    // Undici's timer at exactly upstream.timeout, a tick before the forwarder's own.
    const err = await classify(failingDispatcher(fail, 1999), 2000);
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe('upstream_timeout');
  });

  it("is 504 upstream_timeout when the forwarder's timer fires first", async () => {
    vi.useFakeTimers();
    const err = await classify(
      failingDispatcher(() => new errors.HeadersTimeoutError(), 5000),
      2000,
    );
    expect((err as ProxyError).code).toBe('upstream_timeout');
  });

  it('stays 502 upstream_unreachable for a reset before the answer', async () => {
    vi.useFakeTimers();
    const reset = () => Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    const err = await classify(failingDispatcher(reset, 1999), 2000);
    expect((err as ProxyError).code).toBe('upstream_unreachable');
  });
});
