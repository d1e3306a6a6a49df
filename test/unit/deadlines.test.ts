import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../src/clock.js';
import { Deadlines, type Timed } from '../../src/deadlines.js';

const T0 = 1_700_000_000_000;

class Item implements Timed<Item> {
  earlier: Item | undefined = undefined;
  later: Item | undefined = undefined;
  constructor(
    readonly name: string,
    readonly deadline: number,
  ) {}
}

/** A list that records each expiry as `name@ms after T0`. */
function setup() {
  const expired: string[] = [];
  const list = new Deadlines<Item>(systemClock, (item) =>
    expired.push(`${item.name}@${Date.now() - T0}`),
  );
  return { list, expired };
}

beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('Deadlines', () => {
  it('expires each item at its deadline, in deadline order whatever the order of add', () => {
    const { list, expired } = setup();
    for (const [name, ms] of [
      ['c', 300],
      ['a', 100],
      ['d', 300],
      ['b', 200],
    ] as const) {
      list.add(new Item(name, T0 + ms));
    }
    vi.advanceTimersByTime(299);
    expect(expired).toEqual(['a@100', 'b@200']);
    vi.advanceTimersByTime(1);
    // Equal deadlines keep the order of add.
    expect(expired).toEqual(['a@100', 'b@200', 'c@300', 'd@300']);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('uses one timer for all items', () => {
    const { list } = setup();
    for (let i = 0; i < 1000; i++) list.add(new Item(String(i), T0 + 1000 + i));
    expect(vi.getTimerCount()).toBe(1);
  });

  it('never expires a deleted item, and stops its timer when the list empties', () => {
    const { list, expired } = setup();
    const a = new Item('a', T0 + 100);
    const b = new Item('b', T0 + 200);
    list.add(a);
    list.add(b);
    list.delete(a); // the earliest: the timer fires early, finds nothing due, and re-arms
    list.delete(a); // not in the list: nothing happens
    vi.advanceTimersByTime(150);
    expect(expired).toEqual([]);
    list.delete(b);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(1000);
    expect(expired).toEqual([]);
  });

  it('re-arms for an item added with an earlier deadline than the earliest', () => {
    const { list, expired } = setup();
    list.add(new Item('late', T0 + 1000));
    list.add(new Item('early', T0 + 10));
    vi.advanceTimersByTime(10);
    expect(expired).toEqual(['early@10']);
  });

  it('waits past Node’s timer limit, and never expires an infinite deadline', () => {
    const { list, expired } = setup();
    const far = 3 * 2 ** 31;
    list.add(new Item('never', Number.POSITIVE_INFINITY));
    list.add(new Item('far', T0 + far));
    vi.advanceTimersByTime(far - 1);
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual([`far@${far}`]);
    expect(vi.getTimerCount()).toBe(0);
    expect(list.drain().map((item) => item.name)).toEqual(['never']);
  });

  it('drain takes every item out, earliest first, and stops the timer', () => {
    const { list, expired } = setup();
    list.add(new Item('b', T0 + 200));
    list.add(new Item('a', T0 + 100));
    expect(list.drain().map((item) => item.name)).toEqual(['a', 'b']);
    expect(list.drain()).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(1000);
    expect(expired).toEqual([]);
  });
});
