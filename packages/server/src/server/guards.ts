/**
 * The checks in front of every /v1 route: the protocol version (426 with the versions spoken) and the API key
 * (401). The caller they establish is the `caller` context variable.
 */
import type { MiddlewareHandler } from "hono";
import type { HttpBindings } from "@hono/node-server";
import { PROTOCOL_HEADER, SUPPORTED_PROTOCOLS } from "tsight/protocol";
import { ApiError } from "./api-error.js";
import type { KeyVerifier } from "./contracts.js";
import type { Caller } from "./key-store.js";

/** What a route has: the caller, and Node's request and response when served over HTTP (absent in process). */
export type AppEnv = { Variables: { caller: Caller }; Bindings: Partial<HttpBindings> | undefined };

export const requireProtocol: MiddlewareHandler = async (c, next) => {
  const asked = c.req.header(PROTOCOL_HEADER)?.trim();
  if (asked === undefined || !/^\d+$/.test(asked) || !SUPPORTED_PROTOCOLS.includes(Number(asked))) {
    const speaks = SUPPORTED_PROTOCOLS.join(", ");
    const message = asked === undefined ? `send the header "${PROTOCOL_HEADER}: ${SUPPORTED_PROTOCOLS.at(-1)}"; this server speaks tsight protocol ${speaks}` : `this server speaks tsight protocol ${speaks}, not "${asked.length > 40 ? `${asked.slice(0, 40)}...` : asked}"; update the client or the server`;
    throw new ApiError(426, "PROTOCOL", message, { extra: { supported: [...SUPPORTED_PROTOCOLS] } });
  }
  await next();
};

const challenge = { "www-authenticate": 'Bearer realm="tsight"' };

export function requireKey(keys: KeyVerifier): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const header = c.req.header("authorization");
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) throw new ApiError(401, "AUTH", 'send "Authorization: Bearer <api key>"; the server\'s operator makes keys with `tsight keys create`', { headers: challenge });
    const check = await keys.verify(m[1]!);
    if (!check.ok) throw new ApiError(401, "AUTH", check.reason === "revoked" ? "this API key was revoked" : "this API key is not known to the server", { headers: challenge });
    c.set("caller", check.caller);
    await next();
  };
}
