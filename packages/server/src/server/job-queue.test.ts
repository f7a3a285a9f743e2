import { describe, expect, it } from "vitest";
import { JobQueue } from "./job-queue.js";

describe("JobQueue", () => {
  it("keeps one first-in-first-out line per model, with positions and removal", () => {
    const q = new JobQueue();
    expect(q.push("a", "1")).toBe(0);
    expect(q.push("a", "2")).toBe(1);
    expect(q.push("b", "3")).toBe(0);
    expect(q.push("a", "4")).toBe(2);
    expect(() => q.push("a", "1")).toThrow(/already queued/);
    expect(q.position("4")).toBe(2);
    expect(q.remove("2")).toBe("a");
    expect(q.remove("2")).toBeUndefined();
    expect(q.position("4")).toBe(1);
    expect(q.shift("a")).toBe("1");
    expect(q.shift("a")).toBe("4");
    expect(q.shift("a")).toBeUndefined();
    expect(q.length("b")).toBe(1);
    expect(q.all()).toEqual(["3"]);
    expect(q.position("1")).toBeUndefined();
  });
});
