import { type Clock, MAX_TIMER_MS, type Timer } from './clock.js';

/** An item of a `Deadlines` list: its deadline, and the two links the list keeps in it. */
export interface Timed<T> {
  /** Clock ms; `Infinity` never expires. */
  readonly deadline: number;
  /** The neighbours in deadline order, owned by the `Deadlines` the item is in. */
  earlier: T | undefined;
  later: T | undefined;
}

/**
 * Items ordered by deadline, with one timer for all of them: when it fires, the items due are
 * taken out and passed to `expire`. A timer per item costs a `Timeout` and a closure (≈ 0.2 kB),
 * and up to `queue.max` requests wait at once; here an item costs the two links it carries.
 *
 * The links live in the items (an intrusive doubly-linked list), so `delete` is O(1). `add` walks
 * from the latest deadline back: deadlines are `arrival + queue.timeout`, so items nearly always
 * come in deadline order and the walk stops at once (a request whose body or token took longer
 * comes a few places early).
 *
 * The timer is armed for the earliest deadline. Deleting the earliest item does not re-arm it
 * (that would cost a `clearTimeout` and a `setTimeout` at every start of the pacer): the timer
 * then fires early, finds nothing due, and is armed for the new earliest.
 */
export class Deadlines<T extends Timed<T>> {
  #first: T | undefined;
  #last: T | undefined;
  #timer: Timer | undefined;
  /** Clock ms at which `#timer` fires. */
  #firesAt = Number.POSITIVE_INFINITY;
  readonly #fire = (): void => this.#expireDue();

  readonly #clock: Clock;
  readonly #expire: (item: T) => void;

  /** `expire` receives each item whose deadline passed, after taking it out. */
  constructor(clock: Clock, expire: (item: T) => void) {
    this.#clock = clock;
    this.#expire = expire;
  }

  /** Adds an item that is in no list; equal deadlines keep the order of `add`. */
  add(item: T): void {
    let before = this.#last;
    while (before !== undefined && before.deadline > item.deadline) before = before.earlier;
    const after = before === undefined ? this.#first : before.later;
    item.earlier = before;
    item.later = after;
    if (before === undefined) this.#first = item;
    else before.later = item;
    if (after === undefined) this.#last = item;
    else after.earlier = item;
    if (this.#first === item) this.#arm();
  }

  /** Takes the item out; does nothing if it is not in the list. */
  delete(item: T): void {
    const { earlier, later } = item;
    if (earlier === undefined && this.#first !== item) return;
    if (earlier === undefined) this.#first = later;
    else earlier.later = later;
    if (later === undefined) this.#last = earlier;
    else later.earlier = earlier;
    item.earlier = undefined;
    item.later = undefined;
    if (this.#first === undefined) this.#disarm();
  }

  /** Takes every item out, earliest deadline first, and stops the timer. */
  drain(): T[] {
    const items: T[] = [];
    for (let item = this.#first; item !== undefined; item = this.#first) {
      this.delete(item);
      items.push(item);
    }
    return items;
  }

  /** Arms the timer for the earliest deadline unless it already fires no later. */
  #arm(): void {
    const first = this.#first;
    if (first === undefined || !Number.isFinite(first.deadline)) return;
    if (this.#timer !== undefined && this.#firesAt <= first.deadline) return;
    this.#disarm();
    const now = this.#clock.now();
    const ms = Math.min(Math.max(0, first.deadline - now), MAX_TIMER_MS);
    this.#firesAt = now + ms;
    this.#timer = this.#clock.setTimeout(this.#fire, ms);
  }

  #disarm(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#firesAt = Number.POSITIVE_INFINITY;
  }

  #expireDue(): void {
    this.#timer = undefined;
    this.#firesAt = Number.POSITIVE_INFINITY;
    const now = this.#clock.now();
    // `expire` may add or delete items: read the earliest afresh each time.
    for (let item = this.#first; item !== undefined && item.deadline <= now; item = this.#first) {
      this.delete(item);
      this.#expire(item);
    }
    // Past Node's timer limit, or a timer that fired before the clock reached the deadline.
    this.#arm();
  }
}
