/** ByteBudget: a key's event stream bytes come out of a bucket that refills; a key in debt opens no new stream. */
import { describe, expect, it } from "vitest";
import { ApiError } from "./api-error.js";
import { ByteBudget } from "./byte-budget.js";

describe("ByteBudget", () => {
  it("lets a key be sent its burst at once, then refuses new streams until it is out of debt, per key", () => {
    let now = 0;
    const budget = new ByteBudget("event streams", 1000, 4000, () => now);
    budget.admit("k");
    budget.spend("k", 3000);
    budget.admit("k"); // 1000 left
    // A stream is never cut: it may take the bucket below empty.
    budget.spend("k", 2500);
    expect(budget.balance("k")).toBe(-1500);
    let refused: unknown;
    try {
      budget.admit("k");
    } catch (e) {
      refused = e;
    }
    expect(refused).toBeInstanceOf(ApiError);
    expect(refused).toMatchObject({ status: 429, info: { retryable: true }, headers: { "retry-after": "2" } });
    expect((refused as Error).message).toMatch(/sent event streams faster than the 1000 bytes a second it may be on average \(after 4000 at once\): it may open another in 2 s; resume a stream after the last event it got/);
    // Another key has its own bucket.
    budget.admit("other");
    now = 1000;
    expect(() => budget.admit("k")).toThrow(ApiError); // -500
    now = 1600;
    budget.admit("k"); // +100
    // Refilled at most to the burst.
    now = 60_000;
    expect(budget.balance("k")).toBe(4000);
  });

  it("forgets keys whose buckets have refilled once many are held", () => {
    let now = 0;
    const budget = new ByteBudget("event streams", 1000, 4000, () => now);
    for (let i = 0; i < 1024; i++) budget.spend(`k${i}`, 10);
    budget.spend("in-debt", 10_000);
    now = 1000;
    budget.spend("new", 1);
    const held = (budget as unknown as { buckets: Map<string, unknown> }).buckets;
    expect([...held.keys()].sort()).toEqual(["in-debt", "new"]);
    expect(() => budget.admit("in-debt")).toThrow(ApiError);
  });
});
