/**
 * RedisResultStore: the result envelopes of completed jobs as binary values in Redis, so any API process can
 * answer GET /result whichever worker ran the job, sealed with their checksum (result-check.ts). Each expires with
 * the retention (Redis deletes it; no sweeper).
 */
import type { Redis } from "ioredis";
import { openResult, sealResult } from "../result-check.js";
import type { RedisLayout } from "./connection.js";

export class RedisResultStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisLayout,
  ) {}

  async write(id: string, bytes: Uint8Array, retentionMs: number): Promise<void> {
    await this.redis.set(this.keys.result(id), sealResult(bytes), "PX", Math.max(1, Math.ceil(retentionMs)));
  }

  /** The result's bytes (checked against their checksum), or undefined when there are none. */
  async read(id: string): Promise<Uint8Array | undefined> {
    const b = await this.redis.getBuffer(this.keys.result(id));
    return b ? openResult(id, new Uint8Array(b.buffer, b.byteOffset, b.byteLength)) : undefined;
  }

  async remove(id: string): Promise<void> {
    await this.redis.del(this.keys.result(id));
  }
}
