/**
 * Redis for tests: the machine's Redis (TSIGHT_TEST_REDIS, default redis://127.0.0.1:6379), a key prefix of the
 * test run's own, and its keys deleted afterwards. A Redis that does not answer fails the tests that need it, with a
 * message saying so: they are never skipped.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { clearPrefix, connectRedis } from "../../packages/server/src/server/redis/connection.js";

export const TEST_REDIS = process.env.TSIGHT_TEST_REDIS ?? "redis://127.0.0.1:6379";

export async function testRedis(): Promise<Redis> {
  try {
    return await connectRedis(TEST_REDIS, 3000);
  } catch (e) {
    throw new Error(`these tests need a Redis server at ${TEST_REDIS} (set TSIGHT_TEST_REDIS to use another): ${(e as Error).message}`);
  }
}

/** A key prefix no other run uses. */
export function uniquePrefix(name: string): string {
  return `tsight-test-${name}-${process.pid}-${randomBytes(4).toString("hex")}`;
}

export { clearPrefix };
