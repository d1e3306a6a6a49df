/**
 * The part of autocannon's API the bench uses (autocannon ships no types and @types/autocannon
 * would be one more dev dependency for a dozen lines).
 */
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events';

  export interface Options {
    url: string;
    connections?: number;
    /** Seconds. */
    duration?: number;
    /** Stop after this many requests instead of after `duration`. */
    amount?: number;
    method?: string;
    body?: string | Buffer;
    headers?: Record<string, string>;
    /** Requests per second across all connections (a fixed-rate run). */
    overallRate?: number;
    /** Seconds before a request counts as timed out. */
    timeout?: number;
    pipelining?: number;
  }

  export interface Result {
    /** Seconds the run actually lasted. */
    duration: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    resets: number;
    statusCodeStats: Record<string, { count: number }>;
    requests: { average: number; total: number; sent: number };
  }

  /** Emits `response(client, statusCode, bytes, responseTimeMs)` for every response. */
  export interface Instance extends EventEmitter {
    stop(): void;
  }

  export default function autocannon(
    opts: Options,
    cb: (err: Error | null, result: Result) => void,
  ): Instance;
}
