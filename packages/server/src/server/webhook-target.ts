/**
 * Where webhooks may go. By default only to public addresses: a key holder must not be able to make the server
 * POST to its own network (loopback, private, link-local ranges) and read in the job's log what answered there.
 * The operator can allow more (`webhookAllow`: CIDR blocks, or "private" for all of those ranges). The check is
 * made on the address actually connected to, after DNS (a name that resolves to a private address is refused too).
 */
import dns from "node:dns";
import http from "node:http";
import https from "node:https";
import net from "node:net";

/** Ranges that are not public: the default refuses them all. */
const NOT_PUBLIC: readonly [string, number, "ipv4" | "ipv6"][] = [
  ["0.0.0.0", 8, "ipv4"],
  ["10.0.0.0", 8, "ipv4"],
  ["100.64.0.0", 10, "ipv4"],
  ["127.0.0.0", 8, "ipv4"],
  ["169.254.0.0", 16, "ipv4"],
  ["172.16.0.0", 12, "ipv4"],
  ["192.0.0.0", 24, "ipv4"],
  ["192.168.0.0", 16, "ipv4"],
  ["198.18.0.0", 15, "ipv4"],
  ["224.0.0.0", 4, "ipv4"],
  ["240.0.0.0", 4, "ipv4"],
  ["::", 128, "ipv6"],
  ["::1", 128, "ipv6"],
  ["fc00::", 7, "ipv6"],
  ["fe80::", 10, "ipv6"],
  ["ff00::", 8, "ipv6"],
];

/** A webhook to an address this server does not allow. */
export class WebhookRefusedError extends Error {
  override readonly name = "WebhookRefusedError";
}

/** Decides which addresses a webhook may connect to. */
export class WebhookTargets {
  private readonly notPublic = new net.BlockList();
  private readonly allowed = new net.BlockList();

  /** `allow`: CIDR blocks ("127.0.0.0/8", "fd00::/8") or "private" (every range that is not public). */
  constructor(allow: readonly string[] = []) {
    for (const [addr, prefix, type] of NOT_PUBLIC) this.notPublic.addSubnet(addr, prefix, type);
    for (const entry of allow) {
      if (entry === "private") {
        for (const [addr, prefix, type] of NOT_PUBLIC) this.allowed.addSubnet(addr, prefix, type);
        continue;
      }
      const m = /^([^/]+)\/(\d{1,3})$/.exec(entry.trim());
      const type = m && net.isIP(m[1]!) === 6 ? "ipv6" : "ipv4";
      if (!m || !net.isIP(m[1]!) || Number(m[2]) > (type === "ipv6" ? 128 : 32)) throw new RangeError(`webhook allow-list entry "${entry}" is not a CIDR block (like 10.0.0.0/8) or "private"`);
      this.allowed.addSubnet(m[1]!, Number(m[2]), type);
    }
  }

  /** Whether a webhook may connect to `address` (an IP). */
  allows(address: string): boolean {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
    const ip = mapped ?? address;
    const type = net.isIP(ip) === 6 ? "ipv6" : "ipv4";
    if (!net.isIP(ip)) return false;
    return !this.notPublic.check(ip, type) || this.allowed.check(ip, type);
  }

  /** Why a URL's host may not be reached, or null when it may (an IP literal is checked here; a name when it resolves). */
  refusal(url: URL): string | null {
    const host = url.hostname.replace(/^\[|\]$/g, "");
    if (net.isIP(host) && !this.allows(host)) return `${host} is not a public address, and this server does not allow webhooks to it`;
    return null;
  }

  /** A DNS lookup that refuses names resolving to addresses webhooks may not reach. */
  readonly lookup: net.LookupFunction = (hostname, options, callback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return (callback as (e: Error | null, a: unknown, f?: number) => void)(err, undefined);
      const list = addresses as dns.LookupAddress[];
      const ok = list.filter((a) => this.allows(a.address));
      if (ok.length === 0) return (callback as (e: Error | null, a: unknown, f?: number) => void)(new WebhookRefusedError(`${hostname} resolves to ${list.map((a) => a.address).join(", ")}, not a public address, and this server does not allow webhooks to it`), undefined);
      if ((options as dns.LookupOptions).all) return (callback as (e: null, a: dns.LookupAddress[]) => void)(null, ok);
      (callback as (e: null, a: string, f: number) => void)(null, ok[0]!.address, ok[0]!.family);
    });
  };

  /** POSTs `body` to `url` if it may be reached; resolves with the status (the answer's body is not read). */
  post(url: string, headers: Record<string, string>, body: string, signal: AbortSignal): Promise<number> {
    const target = new URL(url);
    const refused = this.refusal(target);
    if (refused) return Promise.reject(new WebhookRefusedError(refused));
    const request = target.protocol === "https:" ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = request(target, { method: "POST", headers: { ...headers, "content-length": String(Buffer.byteLength(body)) }, signal, lookup: this.lookup }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
      req.end(body);
    });
  }
}
