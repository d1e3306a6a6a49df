import { inspect } from 'node:util';

const REDACTED = '[redacted]';

/**
 * A value that must never be printed. `JSON.stringify`, `util.inspect`, template strings and pino
 * all see `[redacted]`; only `reveal()` gives the value, and only the token client and the proxy
 * handler call it, at the moment the value goes on the wire.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  /** The secret itself, for the wire only. */
  reveal(): string {
    return this.#value;
  }

  /** True when both hold the same value (no timing concerns: used to detect file changes). */
  equals(other: Secret | undefined): boolean {
    return other !== undefined && other.#value === this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}
