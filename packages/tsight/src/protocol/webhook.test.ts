/** Webhook signatures: made as the server makes them, checked as a receiver checks them (against node:crypto). */
import { createHmac } from "node:crypto";
import { describe, expect, test } from "vitest";
import { verifyWebhook, webhookSignature, WebhookVerificationError } from "./webhook.js";

const secret = "whsec_0123456789abcdef";
const body = JSON.stringify({ id: "job1", status: "COMPLETED", model: "LanguageModel:{}", kind: "trace" });
const t = 1_700_000_000;
const now = t * 1000 + 5_000;

const reason = async (p: Promise<unknown>) => {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(WebhookVerificationError);
  return (e as WebhookVerificationError).reason;
};

describe("webhook signatures", () => {
  test("sign HMAC-SHA256(secret, '<t>.<body>') in hex, and verify to the parsed payload", async () => {
    const header = await webhookSignature(body, secret, t);
    expect(header).toBe(`t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`);
    expect(await verifyWebhook(body, header, secret, { now })).toEqual(JSON.parse(body));
    expect(await webhookSignature(body, undefined, t)).toBe(`t=${t}`);
  });

  test("refuse a changed body, another secret, a missing or malformed header, and an unsigned delivery", async () => {
    const header = await webhookSignature(body, secret, t);
    expect(await reason(verifyWebhook(body.replace("COMPLETED", "ERROR"), header, secret, { now }))).toBe("mismatch");
    expect(await reason(verifyWebhook(body, header, "whsec_another_secret_here", { now }))).toBe("mismatch");
    // The time is signed too: moving it breaks the signature.
    expect(await reason(verifyWebhook(body, header.replace(`t=${t}`, `t=${t + 1}`), secret, { now }))).toBe("mismatch");
    expect(await reason(verifyWebhook(body, undefined, secret, { now }))).toBe("malformed");
    expect(await reason(verifyWebhook(body, "v1=abc", secret, { now }))).toBe("malformed");
    expect(await reason(verifyWebhook(body, `t=${t},v1=xyz`, secret, { now }))).toBe("malformed");
    expect(await reason(verifyWebhook(body, `t=${t}`, secret, { now }))).toBe("unsigned");
  });

  test("accept any matching v1 (a rotated secret), with spaces", async () => {
    const good = (await webhookSignature(body, secret, t)).split(",v1=")[1]!;
    expect(await verifyWebhook(body, `t=${t}, v1=${"0".repeat(64)}, v1=${good}`, secret, { now })).toMatchObject({ id: "job1" });
  });

  test("refuse timestamps outside the tolerance, either way", async () => {
    const header = await webhookSignature(body, secret, t);
    expect(await reason(verifyWebhook(body, header, secret, { now: t * 1000 + 301_000 }))).toBe("stale");
    expect(await reason(verifyWebhook(body, header, secret, { now: t * 1000 - 301_000 }))).toBe("stale");
    expect(await verifyWebhook(body, header, secret, { now: t * 1000 + 3_599_000, toleranceSeconds: 3600 })).toMatchObject({ status: "COMPLETED" });
    await expect(verifyWebhook(body, header, secret, { now: t * 1000 + 301_000 })).rejects.toThrow(/signed 301 s ago, more than the 300 s allowed/);
  });
});
