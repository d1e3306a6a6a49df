/**
 * The one base of every error class m2m-proxy defines. Each subclass has a `name` (its class
 * name, set here so no subclass can forget it) and a stable `code` that logs, metrics and tests
 * may rely on; the message is for people and may change. Only `proxy/` turns errors into HTTP
 * responses (`proxy/errors.ts`); the modules below it throw their own classes.
 */
export abstract class M2mError extends Error {
  /** A stable, machine-readable identifier of the failure (snake_case). */
  abstract readonly code: string;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
  }
}
