/** Where webhooks may go: public addresses only unless the operator allows more, checked on the address connected to. */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebhookRefusedError, WebhookTargets } from "./webhook-target.js";

let receiver: http.Server;
let hits = 0;
let port = 0;

beforeAll(async () => {
  receiver = http.createServer((req, res) => {
    hits++;
    req.resume();
    res.writeHead(204).end();
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  port = (receiver.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((resolve) => receiver.close(() => resolve())));

describe("webhook targets", () => {
  it("allow public addresses and refuse loopback, private, link-local and mapped ones by default", () => {
    const t = new WebhookTargets();
    for (const ip of ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]) expect(t.allows(ip), ip).toBe(true);
    for (const ip of ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1", "not an ip"]) expect(t.allows(ip), ip).toBe(false);
  });

  it("allow what the operator lists: CIDR blocks, or every non-public range", () => {
    const some = new WebhookTargets(["127.0.0.0/8"]);
    expect(some.allows("127.0.0.1")).toBe(true);
    expect(some.allows("10.0.0.1")).toBe(false);
    const all = new WebhookTargets(["private"]);
    for (const ip of ["127.0.0.1", "10.0.0.1", "::1", "169.254.169.254"]) expect(all.allows(ip), ip).toBe(true);
    expect(() => new WebhookTargets(["10.0.0.0"])).toThrow(/not a CIDR block/);
    expect(() => new WebhookTargets(["10.0.0.0/40"])).toThrow(/not a CIDR block/);
  });

  it("never connect to a refused address, by IP or by a name that resolves to one", async () => {
    const t = new WebhookTargets();
    const signal = new AbortController().signal;
    await expect(t.post(`http://127.0.0.1:${port}/hook`, {}, "{}", signal)).rejects.toBeInstanceOf(WebhookRefusedError);
    await expect(t.post(`http://localhost:${port}/hook`, {}, "{}", signal)).rejects.toThrow(/localhost resolves to .*not a public address/);
    await expect(t.post(`http://[::ffff:127.0.0.1]:${port}/hook`, {}, "{}", signal)).rejects.toBeInstanceOf(WebhookRefusedError);
    expect(hits).toBe(0);
    // Allowed by the operator, the same target is reached.
    expect(await new WebhookTargets(["127.0.0.0/8"]).post(`http://localhost:${port}/hook`, {}, "{}", signal)).toBe(204);
    expect(hits).toBe(1);
  });
});
