/** PerKeyLimit: a key's open responses are counted until read to their end or cancelled; past the limit, a 429. */
import { describe, expect, it } from "vitest";
import { ApiError } from "./api-error.js";
import { PerKeyLimit } from "./per-key-limit.js";

const bytes = (n: number) => new Response(new Uint8Array(n).fill(7));

describe("PerKeyLimit", () => {
  it("counts bodies until they are read or cancelled, per key, and passes them on whole", async () => {
    const limit = new PerKeyLimit("result downloads", 2, "read");
    const a = limit.count("k", bytes(100_000));
    const b = limit.count("k", bytes(10));
    expect(() => limit.count("k", bytes(1))).toThrow(ApiError);
    expect(() => limit.count("k", bytes(1))).toThrow(/this key has 2 result downloads open, the most it may/);
    // Another key has its own count.
    await limit.count("other", bytes(5)).arrayBuffer();
    // Read to its end: room again, and every byte came through.
    const got = new Uint8Array(await a.arrayBuffer());
    expect(got.length).toBe(100_000);
    expect(got.every((v) => v === 7)).toBe(true);
    const c = limit.count("k", bytes(3));
    expect(() => limit.count("k", bytes(1))).toThrow(ApiError);
    // Cancelled (a client that went away): room again.
    await b.body!.cancel();
    await c.body!.cancel();
    expect((await limit.count("k", bytes(4)).arrayBuffer()).byteLength).toBe(4);
  });
});

describe("PerKeyLimit.counted", () => {
  it("counts before the response is made (a 429 makes nothing), lets go when making fails, and holds until Node's response closes", async () => {
    const { EventEmitter } = await import("node:events");
    const limit = new PerKeyLimit("result downloads", 1, "read");
    const end = new EventEmitter();
    let made = 0;
    const make = () => (made++, bytes(10));
    const held = await limit.counted("k", [end], make);
    // Read to its end, but its bytes have not left the process: still counted, and the next is refused unmade.
    expect((await held.arrayBuffer()).byteLength).toBe(10);
    await expect(limit.counted("k", [new EventEmitter()], make)).rejects.toThrow(/this key has 1 result downloads open/);
    expect(made).toBe(1);
    end.emit("close");
    await expect(limit.counted("k", undefined, () => Promise.reject(new Error("no such result")))).rejects.toThrow("no such result");
    expect((await (await limit.counted("k", undefined, make)).arrayBuffer()).byteLength).toBe(10);
    expect(made).toBe(2);
    // Ended by its response, it leaves no listener on the connection's socket, which serves the next ones.
    const socket = new EventEmitter();
    for (let i = 0; i < 20; i++) {
      const response = new EventEmitter();
      await limit.counted("k", [response, socket], make);
      response.emit("close");
    }
    expect(socket.listenerCount("close")).toBe(0);
    // Ended by its connection, the same.
    const response = new EventEmitter();
    await limit.counted("k", [response, socket], make);
    socket.emit("close");
    expect(response.listenerCount("close")).toBe(0);
    expect((await (await limit.counted("k", undefined, make)).arrayBuffer()).byteLength).toBe(10);
  });
});
