import { parseDuration } from './duration.js';

/**
 * A tiny schema language: one declaration gives both the TypeScript type (`Infer`) and the
 * validation, and reports every problem with its dotted key instead of stopping at the first.
 * (A general library would add a dependency for the five node kinds the configuration needs.)
 */

/** One problem found in the configuration, located by its key path. */
export interface Issue {
  path: readonly string[];
  message: string;
}

/** A schema node that turns raw YAML/env input into a typed value, collecting issues. */
export interface Node<T> {
  /**
   * `scalar` nodes can be overridden from the environment; `record` entries cannot; `list` items
   * only where the loader knows how to name them (routes, by their name).
   */
  readonly kind: 'scalar' | 'object' | 'record' | 'list';
  readonly optional: boolean;
  readonly defaultValue: T | undefined;
  /** Only for objects: the child nodes, so the environment loader can walk the tree. */
  readonly fields?: Readonly<Record<string, Node<unknown>>>;
  decode(raw: unknown, path: readonly string[], issues: Issue[]): T | undefined;
}

export type Infer<N> = N extends Node<infer T> ? T : never;

type Shape = Record<string, Node<unknown>>;
/** Keys always present in the decoded value: required ones and those with a default. */
type RequiredKeys<S extends Shape> = {
  [K in keyof S]: S[K] extends { readonly optional: true; readonly defaulted: false } ? never : K;
}[keyof S];
type OptionalKeys<S extends Shape> = Exclude<keyof S, RequiredKeys<S>>;
type ObjectOf<S extends Shape> = {
  readonly [K in RequiredKeys<S>]: Infer<S[K]>;
} & { readonly [K in OptionalKeys<S>]?: Infer<S[K]> };

/** What a converter returns for a value it refuses: the message after the dotted key. */
class Invalid {
  constructor(readonly message: string) {}
}
const fail = (message: string) => new Invalid(message);

function scalar<T>(convert: (raw: unknown) => T | Invalid): ScalarNode<T> {
  return new ScalarNode(convert, false, undefined, false);
}

class ScalarNode<T, O extends boolean = false, D extends boolean = false> implements Node<T> {
  readonly kind = 'scalar' as const;
  readonly #convert: (raw: unknown) => T | Invalid;

  constructor(
    convert: (raw: unknown) => T | Invalid,
    readonly optional: O,
    readonly defaultValue: T | undefined,
    readonly defaulted: D,
  ) {
    this.#convert = convert;
  }

  decode(raw: unknown, path: readonly string[], issues: Issue[]): T | undefined {
    const out = this.#convert(raw);
    if (out instanceof Invalid) {
      issues.push({ path, message: out.message });
      return undefined;
    }
    return out;
  }

  /** The key may be absent. */
  optionalKey(): ScalarNode<T, true, false> {
    return new ScalarNode(this.#convert, true, undefined, false);
  }

  /** The key may be absent; then `value` is used. */
  default(value: T): ScalarNode<T, true, true> {
    return new ScalarNode(this.#convert, true, value, true);
  }
}

/** Environment values arrive as strings: numbers are accepted in either form. */
function toNumber(raw: unknown): number | undefined {
  if (typeof raw === 'number') return raw;
  if (typeof raw === 'string' && raw.trim() !== '' && Number.isFinite(Number(raw)))
    return Number(raw);
  return undefined;
}

/** A non-empty string. */
export const string = () =>
  scalar<string>((raw) => {
    if (typeof raw === 'number') return String(raw);
    return typeof raw === 'string' && raw !== '' ? raw : fail('must be a non-empty string');
  });

/** A number within bounds; `integer` refuses fractions. */
export const number = (
  opts: { min?: number; max?: number; integer?: boolean; positive?: boolean } = {},
) =>
  scalar<number>((raw) => {
    const n = toNumber(raw);
    const kind = opts.integer ? 'integer' : 'number';
    const what = opts.positive ? `a positive ${kind}` : opts.integer ? 'an integer' : 'a number';
    const range =
      opts.min !== undefined && opts.max !== undefined
        ? ` between ${opts.min} and ${opts.max}`
        : opts.min !== undefined
          ? ` of at least ${opts.min}`
          : opts.max !== undefined
            ? ` of at most ${opts.max}`
            : '';
    const message = `must be ${what}${range}`;
    if (n === undefined) return fail(message);
    if (opts.integer && !Number.isInteger(n)) return fail(message);
    if (opts.positive && n <= 0) return fail(message);
    if (opts.min !== undefined && n < opts.min) return fail(message);
    if (opts.max !== undefined && n > opts.max) return fail(message);
    return n;
  });

/** A string matching `pattern`; `describe` completes "must be …" (e.g. `a lower-case name`). */
export const matching = (pattern: RegExp, describe: string) =>
  scalar<string>((raw) =>
    typeof raw === 'string' && pattern.test(raw) ? raw : fail(`must be ${describe}`),
  );

/** `true` or `false` (environment values arrive as the strings `true` and `false`). */
export const boolean = () =>
  scalar<boolean>((raw) => {
    if (raw === true || raw === 'true') return true;
    if (raw === false || raw === 'false') return false;
    return fail('must be true or false');
  });

/** One of a fixed set of strings. */
export const oneOf = <const V extends readonly string[]>(values: V) =>
  scalar<V[number]>((raw) =>
    typeof raw === 'string' && values.includes(raw)
      ? raw
      : fail(`must be one of ${values.join(', ')}`),
  );

/** A duration string with a unit (`500ms`, `30s`, `5m`, `6h`), decoded to milliseconds. */
export const duration = (opts: { positive?: boolean } = {}) =>
  scalar<number>((raw) => {
    const ms = typeof raw === 'string' ? parseDuration(raw) : undefined;
    if (ms === undefined) return fail('must be a duration with a unit, like 500ms, 30s, 5m or 6h');
    if (opts.positive && ms <= 0) return fail('must be a duration greater than zero');
    return ms;
  });

/** An absolute URL with one of the given protocols (e.g. `['http:', 'https:']`). */
export const url = (protocols: readonly string[]) =>
  scalar<string>((raw) => {
    const message = `must be an absolute ${protocols.map((p) => p.slice(0, -1)).join(' or ')} URL`;
    if (typeof raw !== 'string') return fail(message);
    try {
      const u = new URL(raw);
      return protocols.includes(u.protocol) ? raw : fail(message);
    } catch {
      return fail(message);
    }
  });

class ObjectNode<S extends Shape, O extends boolean = false> implements Node<ObjectOf<S>> {
  readonly kind = 'object' as const;
  readonly defaultValue = undefined;
  /** A required section is always present (decoded from `{}` when absent). */
  readonly defaulted = false as const;
  constructor(
    readonly fields: S,
    readonly optional: O,
  ) {}

  decode(raw: unknown, path: readonly string[], issues: Issue[]): ObjectOf<S> | undefined {
    if (raw === undefined || raw === null) raw = {};
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      issues.push({ path, message: 'must be a mapping of keys to values' });
      return undefined;
    }
    const input = raw as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(input)) {
      if (!Object.hasOwn(this.fields, key)) {
        issues.push({
          path: [...path, key],
          message: `unknown key (expected one of ${Object.keys(this.fields).join(', ')})`,
        });
      }
    }
    for (const [key, node] of Object.entries(this.fields)) {
      const value = input[key];
      if ((value === undefined || value === null) && node.kind === 'object' && !node.optional) {
        // An absent required section is an empty one: its own defaults and required keys apply.
        const decoded = node.decode({}, [...path, key], issues);
        if (decoded !== undefined) out[key] = decoded;
        continue;
      }
      if (value === undefined || value === null) {
        if (node.defaultValue !== undefined) out[key] = node.defaultValue;
        else if (!node.optional) issues.push({ path: [...path, key], message: 'is required' });
        continue;
      }
      const decoded = node.decode(value, [...path, key], issues);
      if (decoded !== undefined) out[key] = decoded;
    }
    return out as ObjectOf<S>;
  }

  /** The whole section may be absent; then it is absent from the result too. */
  optionalKey(): ObjectNode<S, true> {
    return new ObjectNode(this.fields, true);
  }
}

/** A mapping with a fixed set of keys; absent keys take their defaults. */
export const object = <S extends Shape>(fields: S) => new ObjectNode(fields, false);

class RecordNode<O extends boolean = true> implements Node<Readonly<Record<string, string>>> {
  readonly kind = 'record' as const;
  readonly defaultValue = {};
  readonly defaulted = true as const;
  constructor(readonly optional: O) {}
  decode(
    raw: unknown,
    path: readonly string[],
    issues: Issue[],
  ): Record<string, string> | undefined {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      issues.push({ path, message: 'must be a mapping of names to strings' });
      return undefined;
    }
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(raw)) {
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')
        out[k] = String(v);
      else issues.push({ path: [...path, k], message: 'must be a string' });
    }
    return out;
  }
}

/** A free-form mapping of strings (e.g. extra form parameters). Entries are not env-overridable. */
export const stringRecord = () => new RecordNode(true);

class ListNode<T> implements Node<readonly T[]> {
  readonly kind = 'list' as const;
  readonly defaultValue = undefined;
  readonly defaulted = false as const;
  constructor(
    readonly item: Node<T>,
    readonly optional: boolean,
  ) {}

  decode(raw: unknown, path: readonly string[], issues: Issue[]): readonly T[] | undefined {
    if (!Array.isArray(raw) || raw.length === 0) {
      issues.push({ path, message: 'must be a non-empty list' });
      return undefined;
    }
    const out: T[] = [];
    raw.forEach((value, i) => {
      const decoded = this.item.decode(value ?? {}, [...path, String(i)], issues);
      if (decoded !== undefined) out.push(decoded);
    });
    return out;
  }
}

/**
 * A non-empty list of `item`s. Issues inside an item carry its index as a path segment (`'1'`),
 * which the loader prints as `routes[1].listen.port`.
 */
export const list = <T>(item: Node<T>) => new ListNode(item, true);
